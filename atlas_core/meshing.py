"""Turning a trained AtlasNet into meshes: every patch's regular template through its decoder."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from atlas_core.config import INFER
from atlas_core.model import AtlasNet


@dataclass
class PatchMesh:
    """One reconstructed shape: K patch meshes merged, each vertex tagged with its patch."""

    vertices: np.ndarray  # (V, 3) float32
    faces: np.ndarray  # (F, 3) int64
    patch_ids: np.ndarray  # (V,) int64 in [0, K)

    def transformed(self, center: np.ndarray, scale: float) -> PatchMesh:
        """Undo unit-ball normalisation: back to the input's own coordinates."""
        return PatchMesh(
            (self.vertices * scale + center).astype(np.float32), self.faces, self.patch_ids
        )


def patch_colors(patch_ids: np.ndarray) -> np.ndarray:
    """RGBA uint8 colour per vertex, one hue per patch.

    Hues step by the golden ratio so that neighbouring patch ids never look alike, whatever K.
    patch_ids: (V,) -> (V, 4)
    """
    from matplotlib.colors import hsv_to_rgb

    hue = (patch_ids * 0.6180339887) % 1.0
    hsv = np.stack([hue, np.full_like(hue, 0.65), np.full_like(hue, 0.95)], axis=-1)
    rgba = np.concatenate([hsv_to_rgb(hsv), np.ones((len(hue), 1))], axis=-1)
    return (rgba * 255).round().astype(np.uint8)


@torch.no_grad()
def reconstruct(
    model: AtlasNet, points: torch.Tensor, n_vertices: int = INFER.mesh_vertices
) -> list[PatchMesh]:
    """Encode normalised clouds and mesh every patch.

    points: (B, N, 3) in the unit ball, on the model's device -> B meshes of about n_vertices
    vertices each, in the same normalised frame.
    """
    model.eval()
    latent = model.encode(points)
    vertices, faces, patch_ids = model.mesh_vertices(latent, n_vertices)
    faces_np = np.asarray(faces, dtype=np.int64)
    ids = patch_ids.cpu().numpy().astype(np.int64)
    return [PatchMesh(v.cpu().numpy().astype(np.float32), faces_np, ids) for v in vertices]


def to_ply_bytes(mesh: PatchMesh) -> bytes:
    """Binary PLY with per-vertex patch colours."""
    import trimesh

    tm = trimesh.Trimesh(
        vertices=mesh.vertices,
        faces=mesh.faces,
        vertex_colors=patch_colors(mesh.patch_ids),
        process=False,
    )
    data = tm.export(file_type="ply")
    if not isinstance(data, bytes):  # trimesh types export() for every format at once
        raise TypeError(f"PLY export gave {type(data).__name__}, not bytes")
    return data
