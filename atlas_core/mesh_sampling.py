"""From a clean mesh to a :class:`Shape`: unit-ball normalisation and area-weighted sampling.

"Normalised" means ``(p - center) / scale`` with ``center`` the area-weighted surface centroid
and ``scale`` the largest distance from it to a surface vertex, so every point of the surface
lies in the unit ball. Point arrays are ``(N, 3)``; ``center`` is ``(3,)``; ``scale`` a positive
float.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import trimesh

from atlas_core.mesh_errors import MeshError
from atlas_core.mesh_surface import check_arrays, face_areas, face_cross, mesh_arrays

__all__ = [
    "unit_ball",
    "normalise_points",
    "denormalise_points",
    "sample_surface",
    "Shape",
    "shape_from_mesh",
]

# --------------------------------------------------------------------------------------------
# Normalisation and sampling


def unit_ball(mesh: trimesh.Trimesh) -> tuple[np.ndarray, float]:
    """Center (3,) float64 and scale that map the surface into the unit ball.

    ``center`` is the area-weighted centroid of the surface (not of the vertices, whose density
    depends on how the mesh was tessellated); ``scale`` is the largest distance from ``center`` to
    a vertex referenced by a face, so every point of the surface lies within ``scale``.
    Raises :class:`MeshError` for a mesh without a usable surface.
    """
    vertices, faces = mesh_arrays(mesh)
    check_arrays(vertices, faces)
    tri = vertices[faces]
    areas = face_areas(vertices, faces)
    center = (areas[:, None] * tri.mean(axis=1)).sum(axis=0) / areas.sum()
    used = vertices[np.unique(faces)]
    scale = float(np.linalg.norm(used - center, axis=1).max())
    if not (np.isfinite(scale) and scale > 0.0):
        raise MeshError("cannot normalise: the surface has no extent")
    return center, scale


def _float_dtype(points: np.ndarray) -> np.dtype:
    return points.dtype if np.issubdtype(points.dtype, np.floating) else np.dtype(np.float64)


def normalise_points(points: np.ndarray, center: np.ndarray, scale: float) -> np.ndarray:
    """Map points (N, 3) from original coordinates to the unit ball: ``(points - center) / scale``.

    Computed in float64; the result keeps the input's float dtype (float64 for integer input).
    """
    points = np.asarray(points)
    out = (points.astype(np.float64) - np.asarray(center, dtype=np.float64)) / float(scale)
    return out.astype(_float_dtype(points), copy=False)


def denormalise_points(points: np.ndarray, center: np.ndarray, scale: float) -> np.ndarray:
    """Inverse of :func:`normalise_points`: ``points * scale + center`` for points (N, 3)."""
    points = np.asarray(points)
    out = points.astype(np.float64) * float(scale) + np.asarray(center, dtype=np.float64)
    return out.astype(_float_dtype(points), copy=False)


def _sample(
    vertices: np.ndarray, faces: np.ndarray, n: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Area-weighted uniform samples: points (n, 3) float64 and unit face normals (n, 3) float64."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    cross = face_cross(vertices, faces)
    double_area = np.linalg.norm(cross, axis=1)
    cdf = np.cumsum(double_area)
    total = cdf[-1] if len(cdf) else 0.0
    if not (np.isfinite(total) and total > 0.0):
        raise MeshError("zero surface area: nothing to sample")
    rng = np.random.default_rng(seed)
    draws = rng.random((n, 3))
    # side="right" never lands on a zero-area face: its cdf interval is empty.
    face = np.searchsorted(cdf, draws[:, 0] * total, side="right")
    np.minimum(face, len(faces) - 1, out=face)
    # Reflect (u, v) beyond the diagonal back into the triangle: uniform over its area.
    u, v = draws[:, 1], draws[:, 2]
    outside = u + v > 1.0
    u = np.where(outside, 1.0 - u, u)
    v = np.where(outside, 1.0 - v, v)
    tri = vertices[faces[face]]
    points = tri[:, 0] + u[:, None] * (tri[:, 1] - tri[:, 0]) + v[:, None] * (tri[:, 2] - tri[:, 0])
    normals = cross[face] / double_area[face][:, None]
    return points, normals


def sample_surface(mesh: trimesh.Trimesh, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``n`` points uniformly by area over the surface of ``mesh``.

    Returns points (n, 3) float32 in the mesh's coordinates and unit normals (n, 3) float32 (the
    normal of the face each point was drawn from, oriented by its winding). The same ``seed``
    gives the same samples. Raises :class:`MeshError` for a mesh without a usable surface.
    """
    vertices, faces = mesh_arrays(mesh)
    check_arrays(vertices, faces)
    points, normals = _sample(vertices, faces, int(n), seed)
    return points.astype(np.float32), normals.astype(np.float32)


# --------------------------------------------------------------------------------------------
# Shapes


@dataclass
class Shape:
    """One ingested shape, ready for training.

    Attributes:
        name: file stem, e.g. ``"bunny"`` for ``bunny.ply`` or ``"rock"`` for ``rock.obj.bz2``.
        points: (n, 3) float32 surface samples, normalised to the unit ball.
        normals: (n, 3) float32 unit normals at ``points``.
        center: (3,) float64, the normalisation center in the original coordinates.
        scale: the normalisation scale; original = points * scale + center.
        source_sha256: sha256 of the file bytes, or of the mesh arrays when not from a file.
    """

    name: str
    points: np.ndarray
    normals: np.ndarray
    center: np.ndarray
    scale: float
    source_sha256: str


def _mesh_sha256(vertices: np.ndarray, faces: np.ndarray) -> str:
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(vertices, dtype="<f8").tobytes())
    digest.update(np.ascontiguousarray(faces, dtype="<i8").tobytes())
    return digest.hexdigest()


def shape_from_mesh(
    mesh: trimesh.Trimesh,
    name: str,
    n_points: int,
    seed: int,
    source_sha256: str | None = None,
) -> Shape:
    """Validate, normalise and sample ``mesh`` into a :class:`Shape` of ``n_points`` points.

    Sampling happens in the original float64 coordinates before normalising, so large offsets
    do not cost float32 precision. ``source_sha256`` defaults to a hash of the mesh arrays.
    Raises :class:`MeshError` for a mesh without a usable surface.
    """
    vertices, faces = mesh_arrays(mesh)
    check_arrays(vertices, faces)
    center, scale = unit_ball(mesh)
    points, normals = _sample(vertices, faces, int(n_points), seed)
    return Shape(
        name=name,
        points=normalise_points(points, center, scale).astype(np.float32),
        normals=normals.astype(np.float32),
        center=np.asarray(center, dtype=np.float64),
        scale=float(scale),
        source_sha256=source_sha256 or _mesh_sha256(vertices, faces),
    )

