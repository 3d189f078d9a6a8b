"""Pictures people would rather see than read: reconstructions, loss curves, datasets (PNG bytes).

numpy and matplotlib only at import time: the client (`rodin datasets show --plots`) draws
datasets without loading torch; the reconstruction picture imports `atlas_core.meshing` (torch)
when it is called.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from atlas_core.meshing import PatchMesh


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

    from atlas_core.meshing import patch_colors

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


#: Thumbnails on one dataset sheet, and points drawn per thumbnail.
MAX_THUMBNAILS = 100
THUMBNAIL_POINTS = 400


def _view_rotation(elev_deg: float = 20.0, azim_deg: float = 35.0) -> np.ndarray:
    """(3, 3) rotation from data coordinates (Y up) to view coordinates: x right, y up, z
    towards the viewer; the camera turned `azim_deg` about Y and looking down `elev_deg`."""
    a, e = math.radians(azim_deg), math.radians(elev_deg)
    about_y = np.array([[math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0], [-math.sin(a), 0.0, math.cos(a)]])
    about_x = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(e), -math.sin(e)], [0.0, math.sin(e), math.cos(e)]])
    return about_x @ about_y


def _shorten(name: str, max_chars: int) -> str:
    """`name` in at most `max_chars` characters, its middle elided: the start and the end (where
    a de-duplicating hash suffix goes) both stay readable. Control characters become '?'."""
    name = "".join(c if c.isprintable() else "?" for c in name)
    if len(name) <= max_chars:
        return name
    keep = max(max_chars - 1, 1)
    head = (keep + 1) // 2
    tail = keep - head
    return f"{name[:head]}…{name[len(name) - tail:]}" if tail else f"{name[:head]}…"


def _point_colors(view_points: np.ndarray, view_normals: np.ndarray | None) -> np.ndarray:
    """RGB (N, 3) in [0, 1] for points (N, 3) in view coordinates: two-sided Lambert shading
    when normals (N, 3) are given, lighter with distance either way, so the cloud reads as 3D."""
    base = np.array([0.16, 0.36, 0.70])
    if view_normals is not None:
        light = np.array([-0.4, 0.6, 0.7]) / np.linalg.norm([-0.4, 0.6, 0.7])
        shade = 0.3 + 0.7 * np.abs(view_normals @ light)
    else:
        shade = np.full(len(view_points), 0.85)
    far = np.clip((1.0 - view_points[:, 2]) / 2.0, 0.0, 1.0)[:, None] * 0.5  # z in [-1, 1]
    rgb = base[None, :] * (0.25 + 0.75 * shade[:, None]) + 0.35 * shade[:, None] ** 4
    return np.clip(rgb * (1.0 - far) + far, 0.0, 1.0)


def render_shape_sheet(
    points: np.ndarray,
    names: Sequence[str],
    title: str = "",
    normals: np.ndarray | None = None,
    max_shapes: int = MAX_THUMBNAILS,
    points_per_thumbnail: int = THUMBNAIL_POINTS,
) -> bytes:
    """A contact sheet of a dataset: one small point render per shape in a grid, its name under it.

    points: (S, P, 3), each shape normalised into the unit ball, Y up (as `PointCloudSet.points`);
    names: S names; normals: (S, P, 3) or None (then depth alone shades the points).
    Draws the first `max_shapes` shapes (the title says so when there are more), each from a
    fixed subset of `points_per_thumbnail` of its points seen from the same camera, so shapes
    compare at a glance; sizes are not comparable here (every shape fills its cell).
    """
    points = np.asarray(points)
    if points.ndim != 3 or points.shape[2] != 3:
        raise ValueError(f"points must be (S, P, 3), got {points.shape}")
    total = len(points)
    if len(names) != total:
        raise ValueError(f"{len(names)} names for {total} shapes")
    if total == 0:
        raise ValueError("no shapes to draw")
    count = min(total, max_shapes)
    cols = min(10, math.ceil(math.sqrt(count)))
    rows = math.ceil(count / cols)
    zoom = min(2.0, max(1.0, 4.0 / (cols * 1.3)))  # a few shapes get bigger cells
    cell_w, cell_h, font = 1.3 * zoom, 1.55 * zoom, 7.0 * min(zoom, 1.3)  # inches, points
    width, height = cols * cell_w, rows * cell_h + 0.5
    max_chars = int(cell_w * 72 / (font * 0.62))

    n_points = points.shape[1]
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(n_points, min(n_points, points_per_thumbnail), replace=False))
    rotation = _view_rotation()
    xy, colors = [], []
    for i in range(count):
        view = points[i, idx].astype(np.float64) @ rotation.T
        view_normals = None if normals is None else np.asarray(normals[i, idx], np.float64) @ rotation.T
        order = np.argsort(view[:, 2])  # far first, so near points are drawn over them
        row, col = divmod(i, cols)
        offset = np.array([col * 2.6, -row * 3.1])  # a cell: the unit disc and a line for the name
        xy.append(view[order, :2] + offset)
        colors.append(_point_colors(view[order], None if view_normals is None else view_normals[order]))

    fig = _figure(width, height)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0 - 0.45 / height))  # the title above the grid
    ax.scatter(np.concatenate(xy)[:, 0], np.concatenate(xy)[:, 1], s=2.0 * zoom**2, c=np.concatenate(colors),
               linewidths=0, rasterized=True)
    for i in range(count):
        row, col = divmod(i, cols)
        ax.text(col * 2.6, -row * 3.1 - 1.15, _shorten(names[i], max_chars), ha="center", va="top",
                fontsize=font, color="0.15", parse_math=False)
    ax.set_xlim(-1.3, (cols - 1) * 2.6 + 1.3)
    ax.set_ylim(-(rows - 1) * 3.1 - 1.75, 1.2)
    ax.set_aspect("equal")
    ax.set_axis_off()
    heading = _shorten(title or "shapes", 60)
    shown = f"first {count} of {total} shapes" if count < total else f"{total} shape{'s' * (total != 1)}"
    fig.suptitle(f"{heading}: {shown}", fontsize=11, parse_math=False)
    with warnings.catch_warnings():  # a glyph missing from the font is drawn as a box, not said
        warnings.simplefilter("ignore")
        return _to_png(fig)


def render_size_histogram(scales: np.ndarray, title: str = "") -> bytes:
    """Histogram of the shapes' sizes in their source units, before normalisation.

    scales: (S,) each shape's original-coordinates radius (`PointCloudSet.scales`: the largest
    distance from its surface centroid); the size drawn is the diameter 2 * scale. The x axis is
    logarithmic when the sizes span more than two decades.
    """
    sizes = 2.0 * np.asarray(scales, dtype=np.float64).reshape(-1)
    sizes = sizes[np.isfinite(sizes) & (sizes > 0)]
    if len(sizes) == 0:
        raise ValueError("no finite, positive sizes to draw")
    lo, hi = float(sizes.min()), float(sizes.max())
    log_x = hi / lo > 100.0
    n_bins = int(min(40, max(5, math.ceil(math.sqrt(len(sizes)) * 2))))
    if lo == hi:
        edges = np.linspace(lo * 0.9, hi * 1.1, 6)
    elif log_x:
        edges = np.geomspace(lo, hi, n_bins + 1)
    else:
        edges = np.linspace(lo, hi, n_bins + 1)

    fig = _figure(6, 4)
    ax = fig.add_subplot(1, 1, 1)
    ax.hist(sizes, bins=edges, color="tab:blue", alpha=0.85, edgecolor="white", linewidth=0.5)
    median = float(np.median(sizes))
    ax.axvline(median, color="k", ls="--", lw=1, label=f"median {median:.3g}")
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel("size: 2 × largest distance from the centroid (source units)")
    ax.set_ylabel("shapes")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    span = f"{lo:.3g} to {hi:.3g}" if lo != hi else f"all {lo:.3g}"
    ax.set_title(f"{_shorten(title or 'shapes', 40)}: sizes before normalisation\n"
                 f"{len(sizes)} shape{'s' * (len(sizes) != 1)}, {span}", fontsize=11, parse_math=False)
    return _to_png(fig)
