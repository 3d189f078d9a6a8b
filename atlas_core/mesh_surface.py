"""What a usable surface is, and how one is made from a parsed file: every triangle instance of
a scene flattened into one pair of arrays, then cleaned of what carries no surface.

Arrays are vertices ``(V, 3)`` float64 and faces ``(F, 3)`` int64.
"""

from __future__ import annotations

import numpy as np
import trimesh

from atlas_core.mesh_errors import MeshError, short_reason

__all__ = [
    "validate_mesh",
    "check_arrays",
    "mesh_arrays",
    "face_areas",
    "face_cross",
    "flatten_scene",
    "clean_surface",
]

# Relative to the squared bounding-box diagonal: below this a surface is numerically flat dust.
_MIN_RELATIVE_AREA = 1e-12


def check_arrays(vertices: np.ndarray, faces: np.ndarray) -> None:
    """Raise MeshError unless ``vertices`` (V, 3) and ``faces`` (F, 3) form a surface with area."""
    if vertices.ndim != 2 or vertices.shape[0] == 0:
        raise MeshError("no vertices: the mesh holds no geometry")
    if vertices.shape[1] != 3:
        raise MeshError(f"vertices must have 3 coordinates, got {vertices.shape[1]}")
    if faces.ndim != 2 or faces.shape[0] == 0:
        raise MeshError(
            "no faces: the mesh holds only points (a point cloud), rodin needs a surface mesh"
        )
    if faces.shape[1] != 3:
        raise MeshError(f"faces must be triangles, got {faces.shape[1]} indices per face")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise MeshError("faces reference vertices that do not exist (index out of range)")

    used = vertices[np.unique(faces)]
    bad = ~np.isfinite(used).all(axis=1)
    if bad.any():
        raise MeshError(
            f"non-finite vertex coordinates (NaN or infinity) in {int(bad.sum())} of "
            f"{len(used)} vertices used by faces"
        )
    extent = np.ptp(used, axis=0)
    if not extent.any():
        raise MeshError("all vertices are at the same point: the surface has no extent")
    with np.errstate(all="ignore"):
        diag2 = float(np.dot(extent, extent))
        area = float(face_areas(vertices, faces).sum())
    if not (np.isfinite(area) and np.isfinite(diag2)):
        raise MeshError("vertex coordinates are too large to compute the surface area")
    if area <= _MIN_RELATIVE_AREA * diag2:
        raise MeshError(
            "zero surface area: every face is degenerate (its vertices are collinear "
            "or coincident), rodin needs a surface with area"
        )


def face_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Areas (F,) float64 of the triangles ``faces`` (F, 3) over ``vertices`` (V, 3)."""
    return 0.5 * np.linalg.norm(face_cross(vertices, faces), axis=1)


def face_cross(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unnormalised face normals (F, 3) float64: (b - a) x (c - a), length twice the area."""
    tri = np.asarray(vertices, dtype=np.float64)[faces]
    return np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])


def mesh_arrays(mesh: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray]:
    """The raw (V, 3) float64 vertices and (F, 3) int64 faces of a mesh, without trimesh caching."""
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    vertices = vertices.reshape(-1, 3) if vertices.size else vertices.reshape(0, 3)
    faces = np.asarray(mesh.faces)
    faces = faces.astype(np.int64) if faces.size else np.zeros((0, 3), dtype=np.int64)
    return vertices, faces


def validate_mesh(mesh: trimesh.Trimesh) -> None:
    """Raise :class:`MeshError` unless ``mesh`` has a usable surface.

    Refused: no vertices; no faces (points or lines only); faces indexing missing vertices;
    non-finite coordinates on vertices used by faces (unused stray vertices are tolerated);
    all used vertices identical; total area zero or below 1e-12 of the squared bounding-box
    diagonal. Returns ``None`` on success.
    """
    try:
        vertices, faces = mesh_arrays(mesh)
    except MeshError:
        raise
    except Exception as exc:  # e.g. a ragged face list that numpy cannot shape
        raise MeshError(f"malformed mesh arrays: {short_reason(exc)}") from None
    check_arrays(vertices, faces)


def flatten_scene(scene: trimesh.Scene) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate every triangle mesh instance of ``scene`` in world coordinates.

    Returns vertices (V, 3) float64 and faces (F, 3) int64. Each graph node's transform is
    applied; mirrored instances get their winding reversed so face normals still point outwards.
    Point clouds and paths are left out (they carry no surface).
    """
    vertices: list[np.ndarray] = []
    faces: list[np.ndarray] = []
    offset = 0
    instances = []
    for node in scene.graph.nodes_geometry:
        transform, name = scene.graph[node]
        instances.append((np.asarray(transform, dtype=np.float64), scene.geometry.get(name)))
    if not instances:  # a scene built without a graph: take the geometry as it is
        instances = [(np.eye(4), g) for g in scene.geometry.values()]
    for transform, geometry in instances:
        if not isinstance(geometry, trimesh.Trimesh) or len(geometry.faces) == 0:
            continue
        v, f = mesh_arrays(geometry)
        linear = transform[:3, :3]
        v = v @ linear.T + transform[:3, 3]
        if np.linalg.det(linear) < 0:
            f = f[:, ::-1]
        vertices.append(v)
        faces.append(f + offset)
        offset += len(v)
    if not vertices:
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    return np.concatenate(vertices), np.concatenate(faces)


def clean_surface(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop what carries no surface: unused vertices, exact duplicate vertices (merged, so split
    normals/UV seams become shared edges), faces with repeated corners or exactly zero area, and
    repeated faces (which would double the sampling density there).

    Expects arrays that passed :func:`check_arrays`; returns (V', 3) float64, (F', 3) int64.
    """
    used, faces = np.unique(faces, return_inverse=True)
    faces = faces.reshape(-1, 3)
    # "+ 0.0" turns -0.0 into 0.0 so that both spellings of a coordinate merge.
    vertices, inverse = np.unique(vertices[used] + 0.0, axis=0, return_inverse=True)
    faces = inverse.reshape(-1)[faces]

    a, b, c = faces.T
    keep = (a != b) & (b != c) & (a != c) & (face_areas(vertices, faces) > 0.0)
    faces = faces[keep]
    _, first = np.unique(np.sort(faces, axis=1), axis=0, return_index=True)
    faces = faces[np.sort(first)]

    used, faces = np.unique(faces, return_inverse=True)
    return vertices[used], faces.reshape(-1, 3)

