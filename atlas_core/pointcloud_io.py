"""Point-cloud ingestion: scans and exports that hold points only, as the same `Shape` as a mesh.

    shape = ingest_point_cloud("scan.xyz", n_points=10000)       # a points-only file
    shape = ingest_input("sword.obj", n_points=10000)             # a mesh, or else its points

Formats (suffix case-insensitive):
    .ply  vertices only (binary or ASCII); `nx ny nz` vertex properties are used when present
    .obj  `v x y z` lines (extra colour columns ignored); `vn` lines are used when there is one
          per `v` line (a points-only OBJ has no faces to pair them otherwise)
    .xyz  one point per line: `x y z` or `x y z nx ny nz`, separated by spaces, tabs or commas;
          blank lines and lines starting with `#` are skipped

Normalisation is the mesh one (see `atlas_core.mesh_io`): `(p - center) / scale`, every point in
the unit ball. A mesh's `center` is its area-weighted surface centroid; a cloud has no area, so
its `center` is the mean of its points, which is the same thing when the points are a uniform
surface sample (scanners oversample near surfaces and miss occluded parts: the centre then
moves towards the dense side, as it would for a mesh with the same parts missing). `scale` is
the largest distance from `center` to a point, as for a mesh's vertices.

Normals, when the file has none, are estimated: the direction of least variance of each point's
k nearest neighbours (PCA; k = 16), flipped to point away from the cloud's centre. That sign is
only a guess (wrong in concavities); nothing in rodin depends on it, because AtlasNet's patches
are unoriented and normal consistency compares |n . n'|.

Every failure is a `PointCloudError` (a `MeshError`, so callers that already turn a MeshError
into "<path>: <reason>" on one line need nothing new).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path

import numpy as np

from atlas_core.config import INFER
from atlas_core.mesh_io import Limits, MeshError, Shape, ingest_file, normalise_points

__all__ = [
    "PointCloudError",
    "POINT_CLOUD_SUFFIXES",
    "MIN_POINTS",
    "NORMAL_NEIGHBOURS",
    "is_point_cloud_file",
    "read_point_cloud",
    "estimate_normals",
    "shape_from_points",
    "ingest_point_cloud",
    "ingest_input",
]

POINT_CLOUD_SUFFIXES: tuple[str, ...] = (".ply", ".obj", ".xyz")
#: Fewer points than this carry too little of a surface to encode or to fit patches to.
MIN_POINTS = 100
#: Neighbours per point for PCA normals: enough to average out sampling noise on a few thousand
#: points, few enough to stay on one side of a thin part (a blade is ~1% of the unit ball thick).
NORMAL_NEIGHBOURS = 16


class PointCloudError(MeshError):
    """A point-cloud file without usable points; `str(err)` is one line, `err.path` the file."""


class _HasFaces(PointCloudError):
    """The file holds a mesh: `ingest_input` then reports the mesh reader's reason instead."""


def is_point_cloud_file(path: str | os.PathLike) -> bool:
    """True when the name ends with a point-cloud suffix (.ply .obj .xyz, any case)."""
    return Path(path).suffix.lower() in POINT_CLOUD_SUFFIXES


# -----------------------------------------------------------------------------
# Readers: bytes -> points (N, 3) float64 and normals (N, 3) float64 or None


def _floats(rows: list[list[str]], what: str, path: Path) -> np.ndarray:
    """Rows of number strings, at least 3 each -> (N, 3) float64 (extra columns dropped)."""
    try:
        return np.asarray([[float(v) for v in row[:3]] for row in rows], dtype=np.float64).reshape(-1, 3)
    except ValueError as exc:
        raise PointCloudError(f"could not read the {what} coordinates: {exc}", path) from None


def _read_xyz(data: bytes, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    rows = []
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = re.split(r"[\s,;]+", line)
        if len(fields) < 3:
            raise PointCloudError(f"line {number} has {len(fields)} values; XYZ needs x y z "
                                  "(optionally nx ny nz) per line", path)
        rows.append(fields)
    points = _floats(rows, "XYZ", path)
    # Normals only when every line has them: x y z nx ny nz. Other layouts (x y z r g b
    # intensity ...) are common too, so six columns are taken as normals only if they are
    # unit vectors.
    if rows and all(len(r) >= 6 for r in rows):
        try:
            normals = np.asarray([[float(v) for v in r[3:6]] for r in rows], dtype=np.float64)
        except ValueError:
            return points, None
        length = np.linalg.norm(normals, axis=1)
        if np.all(np.isfinite(length)) and np.allclose(length, 1.0, atol=1e-2):
            return points, normals
    return points, None


def _read_obj(data: bytes, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    vs, vns, faces = [], [], 0
    for line in data.decode("utf-8", errors="replace").splitlines():
        fields = line.split()
        if not fields:
            continue
        if fields[0] == "v":
            vs.append(fields[1:])
        elif fields[0] == "vn":
            vns.append(fields[1:])
        elif fields[0] == "f":
            faces += 1
    if faces:
        raise _HasFaces(f"holds a mesh ({faces} faces), not a point cloud: load it as a mesh", path)
    if any(len(v) < 3 for v in vs):
        raise PointCloudError("a `v` line has fewer than 3 coordinates", path)
    points = _floats(vs, "OBJ vertex", path)
    normals = _floats(vns, "OBJ normal", path) if len(vns) == len(vs) and vs else None
    return points, normals


def _read_ply(data: bytes, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    import trimesh

    try:
        with np.errstate(all="ignore"):
            loaded = trimesh.load(io.BytesIO(data), file_type="ply", process=False)
    except Exception as exc:  # noqa: BLE001 - any parser failure is "not a readable PLY"
        raise PointCloudError(f"could not parse as PLY: {' '.join(str(exc).split())[:160]}", path) from None
    if isinstance(loaded, trimesh.Trimesh) and len(loaded.faces):
        raise _HasFaces(f"holds a mesh ({len(loaded.faces)} faces), not a point cloud: load it as a "
                        "mesh", path)
    vertices = getattr(loaded, "vertices", None)
    if vertices is None:
        raise PointCloudError("no vertex element: the PLY holds no points", path)
    points = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    # trimesh keeps a PLY's raw vertex properties here; a point cloud object has no normals.
    # (a dict of columns from an ASCII file, a structured array from a binary one).
    raw = loaded.metadata.get("_ply_raw", {}).get("vertex", {}).get("data", {})
    names = set(raw.dtype.names or ()) if isinstance(raw, np.ndarray) else set(raw)
    normals = None
    if {"nx", "ny", "nz"} <= names:
        normals = np.concatenate([np.asarray(raw[k], np.float64).reshape(-1, 1) for k in ("nx", "ny", "nz")], 1)
        if normals.shape != points.shape:
            normals = None
    return points, normals


_READERS = {".xyz": _read_xyz, ".obj": _read_obj, ".ply": _read_ply}


def read_point_cloud(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Points (N, 3) float64, normals (N, 3) float64 unit length or None, sha256 of the bytes.

    The points are in the file's own coordinates; unusable files raise PointCloudError:
    unknown suffix, unreadable, a mesh (faces), fewer than MIN_POINTS points, non-finite
    coordinates, all points on one line.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _READERS:
        raise PointCloudError(f"unsupported point-cloud file type {suffix or '(none)'}: rodin reads "
                              f"{', '.join(POINT_CLOUD_SUFFIXES)}", path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PointCloudError(f"cannot read the file: {exc.strerror or type(exc).__name__}", path) from None
    if not data.strip():
        raise PointCloudError("empty file: it holds no points", path)
    points, normals = _READERS[suffix](data, path)
    _check_points(points, path)
    if normals is not None:
        length = np.linalg.norm(normals, axis=1, keepdims=True)
        # A file's zero or broken normals are worth less than estimated ones.
        normals = normals / length if np.all(np.isfinite(length)) and np.all(length > 0) else None
    return points, normals, hashlib.sha256(data).hexdigest()


def _check_points(points: np.ndarray, path: Path | None) -> None:
    if len(points) < MIN_POINTS:
        raise PointCloudError(f"too few points: {len(points)}, rodin needs at least {MIN_POINTS} "
                              "to see a surface", path)
    bad = ~np.isfinite(points).all(axis=1)
    if bad.any():
        raise PointCloudError(f"non-finite coordinates (NaN or infinity) in {int(bad.sum())} of "
                              f"{len(points)} points: remove those points", path)
    centred = points - points.mean(0)
    # Singular values of the centred cloud: a second one near zero means a line (or a point).
    s = np.linalg.svd(centred[:: max(1, len(points) // 20000)], compute_uv=False)
    if s[0] == 0 or s[1] <= 1e-9 * s[0]:
        raise PointCloudError("all points lie on one line or at one point: no surface to fit", path)


# -----------------------------------------------------------------------------
# Normals and shapes


def estimate_normals(points: np.ndarray, at: np.ndarray | None = None,
                     k: int = NORMAL_NEIGHBOURS) -> np.ndarray:
    """Unit normals (Q, 3) float64 at the points `at` (Q, 3) (default: all of `points` (N, 3)),
    by PCA over each one's k nearest neighbours among `points`.

    The normal is the eigenvector of the neighbourhood's covariance with the least eigenvalue;
    its sign is chosen to point away from the cloud's mean (a guess; see the module docstring).
    """
    from scipy.spatial import cKDTree

    points = np.asarray(points, dtype=np.float64)
    at = points if at is None else np.asarray(at, dtype=np.float64)
    k = min(k, len(points))
    _, idx = cKDTree(points).query(at, k=k)
    neighbours = points[idx] - points[idx].mean(axis=1, keepdims=True)  # (Q, k, 3)
    cov = np.einsum("nki,nkj->nij", neighbours, neighbours)
    _, vectors = np.linalg.eigh(cov)  # eigenvalues ascending
    normals = vectors[:, :, 0]
    inward = np.einsum("ni,ni->n", normals, at - points.mean(0)) < 0
    normals[inward] *= -1
    return normals


def shape_from_points(points: np.ndarray, normals: np.ndarray | None, name: str, n_points: int,
                      seed: int, source_sha256: str | None = None) -> Shape:
    """A `Shape` from points (M, 3) in any coordinates, normals (M, 3) or None (estimated).

    Keeps a seeded random n_points of them (all when M <= n_points: points are never invented),
    normalised to the unit ball as described in the module docstring. Raises PointCloudError.
    """
    points = np.asarray(points, dtype=np.float64)
    _check_points(points, None)
    if normals is not None and np.shape(normals) != points.shape:
        raise PointCloudError(f"normals {np.shape(normals)} do not match points {points.shape}")
    center = points.mean(0)
    scale = float(np.linalg.norm(points - center, axis=1).max())
    keep = np.arange(len(points))
    if len(points) > n_points:
        keep = np.sort(np.random.default_rng(seed).permutation(len(points))[:n_points])
    if normals is None:
        # At the kept points, but from neighbourhoods among all of them: what the scanner saw.
        normals = estimate_normals(points, at=points[keep])
    else:
        normals = np.asarray(normals)[keep]
    all_points, points = points, points[keep]
    if source_sha256 is None:
        source_sha256 = hashlib.sha256(np.ascontiguousarray(all_points, dtype="<f8").tobytes()).hexdigest()
    return Shape(
        name=name,
        points=normalise_points(points, center, scale).astype(np.float32),
        normals=np.asarray(normals, dtype=np.float32),
        center=center,
        scale=scale,
        source_sha256=source_sha256,
    )


def ingest_point_cloud(path: str | os.PathLike, n_points: int = INFER.input_points, seed: int = 0) -> Shape:
    """Read, check, normalise and subsample a point-cloud file; raises PointCloudError only."""
    if n_points < 1:
        raise ValueError(f"n_points must be >= 1, got {n_points}")
    points, normals, sha256 = read_point_cloud(path)
    try:
        return shape_from_points(points, normals, Path(path).stem, n_points, seed, sha256)
    except MeshError as exc:
        raise PointCloudError(exc.reason, path) from None


def ingest_input(path: str | os.PathLike, n_points: int = INFER.input_points, seed: int = 0,
                 limits: Limits | None = None) -> Shape:
    """A reconstruction input: a mesh (`mesh_io.ingest_file`), or, for a .ply/.obj/.xyz file
    without faces, its points. Raises MeshError (a PointCloudError for point-cloud files) only.

    A mesh is sampled uniformly over its area; a point cloud keeps its own points.
    """
    if Path(path).suffix.lower() == ".xyz":
        return ingest_point_cloud(path, n_points, seed)
    try:
        return ingest_file(path, n_points=n_points, seed=seed, limits=limits)
    except MeshError as mesh_error:
        if not is_point_cloud_file(path):
            raise
        try:
            return ingest_point_cloud(path, n_points, seed)
        except _HasFaces:
            raise mesh_error from None  # a broken mesh: the mesh reader's reason is the one
