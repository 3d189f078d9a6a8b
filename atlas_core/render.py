"""Pictures people would rather see than read: reconstructions and loss curves (PNG bytes)."""

from __future__ import annotations

import io

import numpy as np

from atlas_core.meshing import PatchMesh, patch_colors


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg")  # no display on workers
    import matplotlib.pyplot as plt

    return plt.figure(figsize=(width, height), dpi=100)


def _to_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _equal_axes(ax, points: np.ndarray) -> None:
    center = (points.max(0) + points.min(0)) / 2
    radius = float((points.max(0) - points.min(0)).max()) / 2 or 1.0
    for setter, c in zip((ax.set_xlim, ax.set_ylim, ax.set_zlim), center):
        setter(c - radius, c + radius)
    ax.set_box_aspect((1, 1, 1))
    ax.set_axis_off()


def _shading(triangles: np.ndarray) -> np.ndarray:
    """Lambert-like brightness per face so surfaces read as 3D (two-sided: patches are open).

    triangles: (F, 3, 3) -> (F,) in [0.35, 1]
    """
    normals = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
    light = np.array([0.4, -0.6, 0.7]) / np.linalg.norm([0.4, -0.6, 0.7])
    return 0.35 + 0.65 * np.abs(normals @ light)


def render_reconstruction(
    input_points: np.ndarray, mesh: PatchMesh, title: str = "", max_faces: int = 20000
) -> bytes:
    """Input cloud beside the reconstruction with patches coloured.

    input_points: (N, 3); mesh in the same frame.
    """
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    fig = _figure(10, 5)
    view = dict(elev=20, azim=-60)
    ax = fig.add_subplot(1, 2, 1, projection="3d")
    sub = input_points[:: max(1, len(input_points) // 4000)]
    ax.scatter(sub[:, 0], sub[:, 2], sub[:, 1], s=1, c="0.35", depthshade=True)
    ax.view_init(**view)
    ax.set_title("input")
    _equal_axes(ax, sub[:, [0, 2, 1]])

    ax = fig.add_subplot(1, 2, 2, projection="3d")
    faces = mesh.faces[:: max(1, len(mesh.faces) // max_faces)]
    verts = mesh.vertices[:, [0, 2, 1]]  # y up
    colors = patch_colors(mesh.patch_ids)[faces[:, 0]] / 255.0
    colors[:, :3] *= _shading(verts[faces])[:, None]
    ax.add_collection3d(Poly3DCollection(verts[faces], facecolors=colors, linewidths=0))
    ax.view_init(**view)
    ax.set_title(f"reconstruction ({int(mesh.patch_ids.max()) + 1} patches)")
    _equal_axes(ax, verts)
    if title:
        fig.suptitle(title)
    return _to_png(fig)


def render_loss_curves(history: list[dict[str, float]], title: str = "") -> bytes:
    """Train loss and validation Chamfer per epoch, log scale."""
    fig = _figure(6, 4)
    ax = fig.add_subplot(1, 1, 1)
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], label="train Chamfer")
    ax.plot(epochs, [h["val_chamfer"] for h in history], label="validation Chamfer")
    ax.set_xlabel("epoch")
    ax.set_ylabel("Chamfer (squared, unit ball)")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title(title or "loss curves")
    return _to_png(fig)


def render_evaluation(per_shape: list[dict[str, float]], title: str = "") -> bytes:
    """Per-shape Chamfer of the model against the retrieval baseline (below the line: model wins)."""
    fig = _figure(5, 5)
    ax = fig.add_subplot(1, 1, 1)
    model = np.array([r["chamfer"] for r in per_shape])
    retrieval = np.array([r["retrieval_chamfer"] for r in per_shape])
    wins = model < retrieval
    ax.scatter(retrieval[wins], model[wins], s=12, c="tab:green", label=f"model better ({wins.sum()})")
    ax.scatter(retrieval[~wins], model[~wins], s=12, c="tab:red",
               label=f"retrieval better ({(~wins).sum()})")
    lo = float(min(model.min(), retrieval.min())) * 0.8
    hi = float(max(model.max(), retrieval.max())) * 1.25
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("retrieval Chamfer (nearest training shape) x1e3")
    ax.set_ylabel("model Chamfer x1e3")
    ax.legend(loc="lower right")
    ax.grid(True, alpha=0.3)
    ax.set_title(title or "evaluation")
    return _to_png(fig)
