"""Mesh ingestion: read a user's mesh file, check it has a usable surface, normalise, sample.

Everything a user can hand us goes through :func:`load_mesh`, which either returns one clean
``trimesh.Trimesh`` or raises :class:`MeshError` with a one-line reason the user can act on.
No other exception escapes it, because the callers (CLI, workers) turn ``MeshError`` into the
"name the file and the reason" message that the design asks for, and anything else would reach
the user as a traceback.

Conventions:
    * point and normal arrays are ``(N, 3)``; ``center`` is ``(3,)``; ``scale`` a positive float.
    * "normalised" means ``(p - center) / scale`` with ``center`` the area-weighted surface
      centroid and ``scale`` the largest distance from it to a surface vertex, so every point of
      the surface lies in the unit ball.

This module uses numpy and trimesh only (no torch), so that the CLI and data tools can import it
cheaply.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import importlib.util
import io
import json
import logging
import lzma
import os
import re
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import trimesh

from atlas_core.config import INFER

__all__ = [
    "MeshError",
    "Limits",
    "SUPPORTED_SUFFIXES",
    "MESH_SUFFIXES",
    "COMPRESSION_SUFFIXES",
    "is_mesh_file",
    "load_mesh",
    "validate_mesh",
    "unit_ball",
    "normalise_points",
    "denormalise_points",
    "sample_surface",
    "Shape",
    "shape_from_mesh",
    "ingest_file",
]


class MeshError(ValueError):
    """A mesh file (or mesh) without a usable surface.

    ``str(err)`` is a one-line reason a user can act on, without the path, e.g.
    ``"no faces: the file holds only points (a point cloud), rodin needs a surface mesh"``;
    ``err.reason`` is the same text and ``err.path`` the offending path (or ``None``).
    """

    def __init__(self, reason: str, path: str | os.PathLike | None = None):
        # Callers print "<path>: <reason>" on one line, so the reason must never span lines.
        reason = " ".join(str(reason).split()) or "unusable mesh"
        super().__init__(reason)
        self.reason: str = reason
        self.path: str | None = None if path is None else os.fspath(path)


@dataclass(frozen=True)
class Limits:
    """What one mesh file may cost to ingest. The defaults are those of rodin's settings
    (`orchestrator.settings.Settings`, which this torch-free, settings-free module cannot
    import); each refusal names the environment variable that raises the limit."""

    #: Bytes of the file as it is on disk (RODIN_MAX_FILE_BYTES).
    max_file_bytes: int = 512 * 1024 * 1024
    #: Bytes of a compressed file (.bz2, .gz, .xz) once decompressed (RODIN_MAX_INFLATED_BYTES).
    max_inflated_bytes: int = 1024 * 1024 * 1024
    #: Triangles over every part and instance of the mesh (RODIN_MAX_FACES).
    max_faces: int = 20_000_000


# Base formats we hand to trimesh, mapped to trimesh's file_type names.
MESH_SUFFIXES: tuple[str, ...] = (".obj", ".stl", ".ply", ".off", ".glb", ".gltf")
#: Streaming readers, so that decompression stops at the limit instead of inflating a bomb whole.
_DECOMPRESSORS: dict[str, Callable[[IO[bytes]], io.BufferedIOBase]] = {
    ".bz2": lambda fh: bz2.BZ2File(fh),
    ".gz": lambda fh: gzip.GzipFile(fileobj=fh),
    ".xz": lambda fh: lzma.LZMAFile(fh),
}
#: Bytes per read while decompressing.
_CHUNK = 1 << 20
COMPRESSION_SUFFIXES: tuple[str, ...] = tuple(_DECOMPRESSORS)
# Compound suffixes such as ".obj.bz2" are listed too; use is_mesh_file() rather than comparing
# Path.suffix, which only sees the last one.
SUPPORTED_SUFFIXES: tuple[str, ...] = MESH_SUFFIXES + tuple(
    base + comp for base in MESH_SUFFIXES for comp in COMPRESSION_SUFFIXES
)

_LFS_MAGIC = b"version https://git-lfs.github.com/spec/"
# Relative to the squared bounding-box diagonal: below this a surface is numerically flat dust.
_MIN_RELATIVE_AREA = 1e-12
_MAX_MESSAGE = 160


def _split_suffix(path: str | os.PathLike) -> tuple[str, str, str | None]:
    """Split a file name into (stem, mesh suffix, compression suffix), suffixes lower-case.

    ``"rock.obj.bz2"`` -> ``("rock", ".obj", ".bz2")``;
    ``"cube.OBJ"`` -> ``("cube", ".obj", None)``.
    The mesh suffix is ``""`` when the name has none that we know.
    """
    name = Path(path).name
    lower = name.lower()
    compression = None
    for comp in COMPRESSION_SUFFIXES:
        if lower.endswith(comp):
            compression = comp
            name, lower = name[: -len(comp)], lower[: -len(comp)]
            break
    for suffix in MESH_SUFFIXES:
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return name[: -len(suffix)], suffix, compression
    return Path(name).stem, Path(lower).suffix, compression


def is_mesh_file(path: str | os.PathLike) -> bool:
    """True when the file name has a supported mesh suffix (case-insensitive), optionally
    followed by a compression suffix, e.g. ``bunny.ply``, ``cube.OBJ``, ``rock.obj.bz2``.
    Looks at the name only, never at the contents."""
    _, suffix, _ = _split_suffix(path)
    return suffix in MESH_SUFFIXES


# --------------------------------------------------------------------------------------------
# Quiet loading: trimesh logs some parser hiccups with exc_info=True, which prints a traceback
# under any logging config that shows warnings. A user must never see one, so while *we* load
# (tracked per thread) the traceback is folded into the one-line message.


class _NoTracebackFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(_loading, "active", False) and record.exc_info:
            exc = record.exc_info[1]
            try:
                message = record.getMessage()
            except Exception:  # a malformed log call inside trimesh must not break loading
                message = str(record.msg)
            if exc is not None:
                message = f"{message} ({type(exc).__name__}: {_short(exc)})"
            record.msg, record.args = message, ()
            record.exc_info, record.exc_text = None, None
        return True


_loading = threading.local()
_filter = _NoTracebackFilter()
_filter_lock = threading.Lock()


def _install_filter() -> None:
    # Filters on a logger do not apply to records of its children, and trimesh logs through one
    # logger per module, so every trimesh logger gets the filter (new ones appear on lazy imports).
    with _filter_lock:
        for name, logger in list(logging.Logger.manager.loggerDict.items()):
            ours = name == "trimesh" or name.startswith("trimesh.")
            if ours and isinstance(logger, logging.Logger) and _filter not in logger.filters:
                logger.addFilter(_filter)


@contextmanager
def _quiet_trimesh() -> Iterator[None]:
    _install_filter()
    previous = getattr(_loading, "active", False)
    _loading.active = True
    try:
        with np.errstate(all="ignore"):
            yield
    finally:
        _loading.active = previous


def _short(exc: BaseException) -> str:
    """One short line describing an exception raised by a parser."""
    text = " ".join(str(exc).split()).strip(" '\"") or type(exc).__name__
    if len(text) > _MAX_MESSAGE:
        text = text[: _MAX_MESSAGE - 3] + "..."
    return text


# --------------------------------------------------------------------------------------------
# Validation


def _check_arrays(vertices: np.ndarray, faces: np.ndarray) -> None:
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
        area = float(_face_areas(vertices, faces).sum())
    if not (np.isfinite(area) and np.isfinite(diag2)):
        raise MeshError("vertex coordinates are too large to compute the surface area")
    if area <= _MIN_RELATIVE_AREA * diag2:
        raise MeshError(
            "zero surface area: every face is degenerate (its vertices are collinear "
            "or coincident), rodin needs a surface with area"
        )


def _face_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Areas (F,) float64 of the triangles ``faces`` (F, 3) over ``vertices`` (V, 3)."""
    return 0.5 * np.linalg.norm(_face_cross(vertices, faces), axis=1)


def _face_cross(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unnormalised face normals (F, 3) float64: (b - a) x (c - a), length twice the area."""
    tri = np.asarray(vertices, dtype=np.float64)[faces]
    return np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])


def _arrays(mesh: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray]:
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
        vertices, faces = _arrays(mesh)
    except MeshError:
        raise
    except Exception as exc:  # e.g. a ragged face list that numpy cannot shape
        raise MeshError(f"malformed mesh arrays: {_short(exc)}") from None
    _check_arrays(vertices, faces)


# --------------------------------------------------------------------------------------------
# Loading


def _size(n: int) -> str:
    """`1073741824` -> `1.0 GiB`: limits as people write them."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _read_at_most(stream: io.BufferedIOBase, limit: int) -> bytes | None:
    """All of `stream` if it holds at most `limit` bytes, else None (having read limit + 1)."""
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = stream.read(min(_CHUNK, limit + 1 - total))
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limit:
            return None
        chunks.append(chunk)


def _too_large(limit: int) -> str:
    return (f"the file is larger than {_size(limit)} (RODIN_MAX_FILE_BYTES); raise that limit "
            "if the file is genuine")


def _read(path: Path, limit: int) -> bytes:
    try:
        if path.stat().st_size > limit:  # refused before a byte is read
            raise MeshError(_too_large(limit), path)
        with path.open("rb") as fh:
            data = _read_at_most(fh, limit)  # the size a pipe or special file reports is no bound
    except FileNotFoundError:
        raise MeshError("file not found", path) from None
    except IsADirectoryError:
        raise MeshError("is a directory, not a mesh file", path) from None
    except PermissionError:
        raise MeshError("permission denied: the file cannot be read", path) from None
    except OSError as exc:
        raise MeshError(f"cannot read the file: {exc.strerror or _short(exc)}", path) from None
    if data is None:
        raise MeshError(_too_large(limit), path)
    return data


def _decompress(raw: bytes, compression: str, limit: int, path: Path) -> bytes:
    """Inflate `raw` a chunk at a time, stopping as soon as it passes `limit` bytes: a small
    file that inflates to gigabytes (a decompression bomb) costs only the limit."""
    try:
        with _DECOMPRESSORS[compression](io.BytesIO(raw)) as stream:
            data = _read_at_most(stream, limit)
    except Exception as exc:
        raise MeshError(f"could not decompress the {compression} file: {_short(exc)}", path) from None
    if data is None:
        raise MeshError(
            f"the {compression} file inflates to more than {_size(limit)} (RODIN_MAX_INFLATED_BYTES); "
            "raise that limit if the file is genuine",
            path,
        )
    return data


def _check_not_placeholder(data: bytes, path: Path, what: str = "file") -> None:
    if not data.strip():
        raise MeshError(f"empty {what}: it holds no mesh data ({len(data)} bytes)", path)
    if data[:256].lstrip().startswith(_LFS_MAGIC):
        raise MeshError("is a git-lfs pointer file, not a mesh: run `git lfs pull`", path)


#: Byte-order marks of text files, longest first (UTF-32 LE starts with UTF-16 LE's mark).
_BOMS = (
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xef\xbb\xbf", "utf-8"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)


def _as_utf8(data: bytes) -> bytes:
    """Text formats as UTF-8 bytes without a byte-order mark. A file that starts with a BOM is
    decoded as it says (Windows tools write UTF-16 OBJ files). Files written with a legacy 8-bit
    encoding (a Latin-1 group name or comment) are re-encoded, because trimesh would otherwise
    need an optional charset-detection package to read them and fail without it."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            text = data[len(bom):].decode(encoding, errors="replace")
            return text.encode("utf-8")
    try:
        data.decode("utf-8")
        return data
    except UnicodeDecodeError:
        return data.decode("latin-1").encode("utf-8")


def _starts_with_text_bom(data: bytes) -> bool:
    return any(data.startswith(bom) for bom, _ in _BOMS)


def _prepare(data: bytes, file_type: str, path: Path) -> bytes:
    """Fix up the bytes of a file before trimesh parses them, or refuse them early with a
    clearer reason than the parser would give."""
    if file_type in ("obj", "off"):
        return _as_utf8(data)
    if file_type == "stl":
        if len(data) >= 84:
            n_triangles = int.from_bytes(data[80:84], "little")
            if len(data) == 84 + 50 * n_triangles:
                return data  # binary STL, even when its header happens to start with "solid"
        if _starts_with_text_bom(data):
            return _as_utf8(data)  # an ASCII STL saved as UTF-16 holds NUL bytes but is text
        if data.lstrip()[:5].lower() == b"solid" and b"\x00" not in data[:4096]:
            return _as_utf8(data)
        if b"\x00" in data[:4096]:
            if len(data) < 84:
                raise MeshError(
                    f"truncated binary STL: {len(data)} bytes, shorter than its 84-byte header",
                    path,
                )
            raise MeshError(
                f"truncated or corrupt binary STL: its header promises {n_triangles} triangles "
                f"({84 + 50 * n_triangles} bytes) but the file has {len(data)} bytes",
                path,
            )
        return _as_utf8(data)
    return data


# --------------------------------------------------------------------------------------------
# glTF with Draco mesh compression: the geometry of such a primitive is one compressed blob that
# only the optional DracoPy package decodes (trimesh uses it when it is installed). Without it
# trimesh fills the primitive with zeros, so the file would be refused for the wrong reason, or a
# scene with a plain part too would be registered with the Draco part silently missing.

_DRACO = "KHR_draco_mesh_compression"
_DRACO_MISSING = (
    f"uses Draco mesh compression ({_DRACO}); install DracoPy (pip install DracoPy) "
    "or export without Draco"
)


def _gltf_json(data: bytes, file_type: str) -> dict[str, Any] | None:
    """The glTF JSON of a .glb (its first chunk) or of a .gltf; None when it cannot be read
    (the parser then says what is wrong with the file)."""
    try:
        if file_type == "glb":
            if data[:4] != b"glTF":
                return None
            length, kind = struct.unpack_from("<I4s", data, 12)
            if kind != b"JSON":
                return None
            doc = json.loads(data[20:20 + length])
        else:
            doc = json.loads(data)
    except (ValueError, struct.error, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def _as_list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _uses_draco(doc: dict[str, Any]) -> bool:
    """Whether the glTF declares Draco, at the top or on any primitive."""
    if _DRACO in _as_list(doc.get("extensionsUsed")) + _as_list(doc.get("extensionsRequired")):
        return True
    for mesh in _as_list(doc.get("meshes")):
        for primitive in _as_list(mesh.get("primitives") if isinstance(mesh, dict) else None):
            extensions = primitive.get("extensions") if isinstance(primitive, dict) else None
            if isinstance(extensions, dict) and _DRACO in extensions:
                return True
    return False


def _draco_available() -> bool:
    return importlib.util.find_spec("DracoPy") is not None


def _check_draco_decoded(scene: trimesh.Scene) -> None:
    """With DracoPy installed, a primitive it could not decode is left as zeros by trimesh:
    refuse the file rather than register the shape without that part."""
    for geometry in scene.geometry.values():
        if isinstance(geometry, trimesh.Trimesh):
            vertices, _ = _arrays(geometry)
            if len(vertices) == 0 or not np.ptp(vertices, axis=0).any():
                raise MeshError(f"a Draco-compressed part ({_DRACO}) could not be decoded: "
                                "the file is corrupt, or export it without Draco")


# --------------------------------------------------------------------------------------------
# Face limit: estimated from the bytes before parsing where a format says its size, so that the
# parser never builds a huge mesh; counted exactly (over every instance) once parsed.


def _too_many_faces(limit: int) -> str:
    return (f"the mesh has more than {limit:,} faces (RODIN_MAX_FACES); simplify it or raise "
            "that limit")


def _estimated_faces(data: bytes, file_type: str) -> int:
    """A cheap lower bound on the triangles a file holds, from its bytes (0 when unknown)."""
    if file_type == "obj":
        return data.count(b"\nf ") + data.count(b"\nf\t")
    if file_type == "stl":
        if len(data) >= 84 and len(data) == 84 + 50 * int.from_bytes(data[80:84], "little"):
            return int.from_bytes(data[80:84], "little")
        return data.count(b"endfacet")
    if file_type == "ply":
        match = re.search(rb"^element[ \t]+face[ \t]+(\d{1,20})", data[:65536], re.MULTILINE)
        return int(match[1]) if match else 0
    if file_type == "off":
        match = re.match(rb"\s*[CN]*OFF\s*(\d{1,20})\s+(\d{1,20})", data)
        return int(match[2]) if match else 0
    return 0


def _counted_faces(scene: trimesh.Scene) -> int:
    """Triangles the flattened scene will hold: each geometry counted once per instance."""
    names = [scene.graph[node][1] for node in scene.graph.nodes_geometry] or list(scene.geometry)
    total = 0
    for name in names:
        geometry = scene.geometry.get(name)
        if isinstance(geometry, trimesh.Trimesh):
            total += len(geometry.faces)
    return total


# --------------------------------------------------------------------------------------------
# Diagnosis: when a parser fails, its exception names its own internals ("not enough values to
# unpack", a numpy message). These look at the text formats the way a person would and say what
# is wrong with the file, with its line number.

_FLOAT = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$|^[-+]?(?:nan|inf|infinity)$", re.IGNORECASE)


def _is_number(token: str) -> bool:
    return bool(_FLOAT.match(token))


def _is_count(token: str) -> bool:
    return token.isascii() and token.isdigit()


_COMMENT = re.compile(r"(?:^|\s)#.*$")


def _text_lines(data: bytes) -> list[tuple[int, str]]:
    """(line number, text) of the non-empty lines, comments stripped: a `#` that starts a word
    (`1.0#2` is a broken number, not a number and a comment)."""
    text = data.decode("utf-8", errors="replace")
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        line = _COMMENT.sub("", line).strip()
        if line:
            lines.append((number, line))
    return lines


def _shown(line: str) -> str:
    return repr(line if len(line) <= 40 else line[:37] + "...")


def _diagnose_off(data: bytes) -> str | None:
    lines = _text_lines(data)
    if not lines or not re.match(r"^[A-Z]*OFF", lines[0][1]):
        return "no OFF header: an OFF file starts with the line OFF (or COFF), then its counts"
    first_number, first = lines[0]
    rest = first[first.index("OFF") + 3:].split()
    if rest:  # the counts may follow the keyword on its line
        lines[0] = (first_number, " ".join(rest))
    else:
        lines = lines[1:]
    if not lines:
        return "the OFF header has no counts line (VERTICES FACES EDGES)"
    number, counts = lines[0]
    tokens = counts.split()
    if len(tokens) < 2 or not all(_is_count(t) for t in tokens[:3]):
        return (f"line {number}: the counts line must be whole numbers VERTICES FACES EDGES, "
                f"not {_shown(counts)}")
    if len(tokens) > 3:
        return (f"line {number}: the counts line holds more than VERTICES FACES EDGES; "
                "write each vertex and each face on a line of its own")
    n_vertices, n_faces = int(tokens[0]), int(tokens[1])
    body = lines[1:]
    if len(body) < n_vertices:
        return (f"the header promises {n_vertices:,} vertices but the file has only "
                f"{len(body):,} line{'s' if len(body) != 1 else ''} after it (truncated?)")
    for number, line in body[:n_vertices]:
        values = line.split()
        if len(values) < 3 or not all(_is_number(v) for v in values[:3]):
            return f"line {number}: a vertex needs three numbers x y z, not {_shown(line)}"
    for number, line in body[n_vertices:n_vertices + n_faces]:
        values = line.split()
        if not _is_count(values[0]) or int(values[0]) < 3:
            return (f"line {number}: a face starts with its number of corners, a whole number of "
                    f"at least 3, not {_shown(line)}")
        corners = values[1:int(values[0]) + 1]
        if len(corners) < int(values[0]) or not all(_is_count(c) for c in corners):
            return (f"line {number}: a face of {values[0]} corners needs {values[0]} vertex "
                    f"indices (whole numbers from 0) after the count, not {_shown(line)}")
        if any(int(c) >= n_vertices for c in corners):
            return f"line {number}: a face uses a vertex beyond the {n_vertices:,} the file has"
    return None


#: Statements of the OBJ format (geometry, grouping, display and free-form attributes).
_OBJ_KEYWORDS = {
    "v", "vt", "vn", "vp", "f", "l", "p", "o", "g", "s", "mg", "usemtl", "mtllib", "usemap",
    "maplib", "cstype", "deg", "bmat", "step", "curv", "curv2", "surf", "parm", "trim", "hole",
    "scrv", "sp", "end", "con", "bevel", "c_interp", "d_interp", "lod", "shadow_obj",
    "trace_obj", "ctech", "stech", "call", "csh",
}


def _diagnose_obj(data: bytes) -> str | None:
    lines = _text_lines(data)
    return _diagnose_obj_values(lines) or next(
        (f"line {number}: {_shown(line)} is not an OBJ statement" for number, line in lines
         if line.split()[0] not in _OBJ_KEYWORDS), None)


def _diagnose_obj_values(lines: list[tuple[int, str]]) -> str | None:
    for number, line in lines:
        keyword, *values = line.split()
        if keyword == "v" and (len(values) < 3 or not all(_is_number(v) for v in values)):
            return f"line {number}: a vertex needs three numbers x y z (then colours), not {_shown(line)}"
        if keyword == "vn" and (len(values) != 3 or not all(_is_number(v) for v in values)):
            return f"line {number}: a normal needs three numbers, not {_shown(line)}"
        if keyword == "vt" and not (1 <= len(values) <= 3 and all(_is_number(v) for v in values)):
            return f"line {number}: a texture coordinate needs one to three numbers, not {_shown(line)}"
        if keyword == "f":
            if len(values) < 3:
                return f"line {number}: a face needs at least three corners, not {_shown(line)}"
            # Each corner is v, v/vt, v//vn or v/vt/vn with integer (possibly negative) indices.
            for corner in values:
                parts = corner.split("/")
                if len(parts) > 3 or not all(re.fullmatch(r"-?\d+", p) or (i > 0 and p == "")
                                             for i, p in enumerate(parts)):
                    return (f"line {number}: a face lists vertex indices (v, v/vt, v//vn or "
                            f"v/vt/vn), not {_shown(line)}")
    return None


_STL_KEYWORDS = {"solid", "facet", "outer", "vertex", "endloop", "endfacet", "endsolid"}


def _diagnose_stl(data: bytes) -> str | None:
    corners = 0
    for number, line in _text_lines(data):
        keyword, *values = line.split()
        keyword = keyword.lower()
        if keyword not in _STL_KEYWORDS:
            return f"line {number}: {_shown(line)} is not an ASCII STL statement"
        if keyword == "vertex":
            corners += 1
            if len(values) != 3 or not all(_is_number(v) for v in values):
                return f"line {number}: a vertex needs three numbers x y z, not {_shown(line)}"
        elif keyword == "facet":
            corners = 0
        elif keyword == "endfacet" and corners != 3:
            return f"line {number}: a facet has {corners} vertices, an STL facet needs exactly 3"
    return None


_PLY_TYPES = {"char", "uchar", "short", "ushort", "int", "uint", "float", "double", "int8",
              "uint8", "int16", "uint16", "int32", "uint32", "float32", "float64"}


@dataclass
class _PlyElement:
    name: str
    count: int
    lists: list[bool]  # per property: a list (count, then values) or one scalar


_PLY_KEYWORDS = {"ply", "format", "comment", "obj_info", "element", "property", "end_header", ""}


def _ply_header(header: list[str]) -> tuple[list[_PlyElement], bool] | str:
    """The elements of a PLY header and whether it is ASCII, or the reason it is malformed."""
    elements: list[_PlyElement] = []
    ascii_format = False
    for number, line in enumerate(header, 1):
        keyword, *values = line.split() or [""]
        if keyword not in _PLY_KEYWORDS:
            return f"header line {number}: {_shown(line)} is not a PLY header line"
        if keyword == "format":
            if len(values) != 2 or values[0] not in ("ascii", "binary_little_endian", "binary_big_endian"):
                return f"header line {number}: format must be ascii or binary_*_endian and a version, not {_shown(line)}"
            ascii_format = values[0] == "ascii"
        if keyword == "element":
            if len(values) != 2 or not _is_count(values[1]):
                return f"header line {number}: an element needs a name and a count, not {_shown(line)}"
            elements.append(_PlyElement(values[0], int(values[1]), []))
        if keyword == "property":
            is_list = values[:1] == ["list"]
            types = values[1:3] if is_list else values[:1]
            if not elements or len(values) != (4 if is_list else 2) or not all(t in _PLY_TYPES for t in types):
                return f"header line {number}: a property needs a known type and a name, not {_shown(line)}"
            elements[-1].lists.append(is_list)
    return elements, ascii_format


def _diagnose_ply(data: bytes) -> str | None:
    end = data.find(b"end_header")
    if end < 0:
        return "the PLY header has no end_header line"
    header = data[:end].decode("ascii", errors="replace").splitlines()
    parsed = _ply_header(header)
    if isinstance(parsed, str):
        return parsed
    elements, ascii_format = parsed
    axes = {line.split()[-1] for line in header if line.startswith("property")}
    vertex = next((e for e in elements if e.name == "vertex"), None)
    if vertex is not None and not {"x", "y", "z"} <= axes:
        missing = [axis for axis in "xyz" if axis not in axes]
        return f"the PLY vertices have no {', '.join(missing)} propert{'ies' if len(missing) > 1 else 'y'}"
    if ascii_format:
        return _diagnose_ply_body(data[end:].decode("utf-8", errors="replace").splitlines()[1:], elements)
    return None


def _ply_row_ok(values: list[str], lists: list[bool]) -> bool:
    """Whether one ASCII PLY line holds the values of its element's properties."""
    position = 0
    for is_list in lists:
        length = 1
        if is_list:
            if position >= len(values) or not _is_count(values[position]):
                return False
            length = int(values[position])
            position += 1
        chunk = values[position:position + length]
        if len(chunk) < length or not all(_is_number(v) for v in chunk):
            return False
        position += length
    return position == len(values)


def _diagnose_ply_body(lines: list[str], elements: list[_PlyElement]) -> str | None:
    """ASCII PLY data: one line per item of each element, its values as the header declares."""
    rows = iter([line.split() for line in lines if line.strip()])
    for element in elements:
        for index in range(element.count):
            values = next(rows, None)
            if values is None:
                return (f"the header promises {element.count:,} {element.name} items but the "
                        f"file ends at item {index:,} (truncated?)")
            if not _ply_row_ok(values, element.lists):
                return (f"{element.name} {index:,} holds {_shown(' '.join(values))}, not the "
                        "values its header declares")
    if next(rows, None) is not None:
        return "the file has more data lines than its header declares"
    return None


_DIAGNOSES: dict[str, Callable[[bytes], str | None]] = {
    "off": _diagnose_off, "obj": _diagnose_obj, "ply": _diagnose_ply,
}


def _diagnose(data: bytes, file_type: str) -> str | None:
    """What is wrong with a file the parser failed on, or None when nothing is found."""
    diagnose = _DIAGNOSES.get(file_type)
    if file_type == "stl" and b"\x00" not in data[:4096]:
        diagnose = _diagnose_stl
    if diagnose is None:
        return None
    try:
        reason = diagnose(data)
    except Exception:  # a diagnosis must never hide the parser's own reason
        return None
    return None if reason is None else f"could not parse as {file_type.upper()}: {reason}"


def _parse_failure(file_type: str, exc: Exception) -> str:
    """The one-line reason for an exception raised by trimesh's parser."""
    name = file_type.upper()
    if isinstance(exc, ImportError):
        missing = getattr(exc, "name", None) or _short(exc)
        return f"could not parse as {name}: it needs the optional Python package {missing!r}"
    if file_type == "gltf" and isinstance(exc, (KeyError, FileNotFoundError)):
        return (
            f"could not parse as GLTF: a file it references is missing ({_short(exc)}); "
            "keep the .gltf beside its .bin and texture files, or export a single .glb"
        )
    if isinstance(exc, IndexError):
        return f"could not parse as {name}: a face references a vertex that does not exist"
    if isinstance(exc, MemoryError):
        return f"could not parse as {name}: the file is too large for the available memory"
    return f"could not parse as {name}: {_short(exc)}"


def _describe_missing_surface(scene: trimesh.Scene, data: bytes, file_type: str) -> str | None:
    """A reason when the parsed scene holds no triangle with vertices, else None."""
    n_points = 0
    has_lines = False
    has_faces = False
    for geometry in scene.geometry.values():
        if isinstance(geometry, trimesh.Trimesh):
            if len(geometry.faces):
                has_faces = True
            n_points += len(geometry.vertices)
        elif isinstance(geometry, trimesh.PointCloud):
            n_points += len(geometry.vertices)
        elif isinstance(geometry, trimesh.path.path.Path):
            has_lines = True
    if has_faces:
        return None
    # trimesh's OBJ reader keeps line elements ("l a b") only as their vertices.
    if file_type == "obj" and re.search(rb"^[ \t]*l[ \t]", data, re.MULTILINE):
        has_lines = True
    if has_lines:
        return (
            "no faces: the file holds only lines (a wireframe), rodin needs a surface mesh "
            "with faces"
        )
    if n_points:
        return (
            f"no faces: the file holds only points (a point cloud of {n_points} "
            f"point{'s' if n_points != 1 else ''}), "
            "rodin needs a surface mesh"
        )
    return "no geometry: the file holds no vertices or faces (only a header or empty elements)"


def _flatten(scene: trimesh.Scene) -> tuple[np.ndarray, np.ndarray]:
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
        v, f = _arrays(geometry)
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


def _clean(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop what carries no surface: unused vertices, exact duplicate vertices (merged, so split
    normals/UV seams become shared edges), faces with repeated corners or exactly zero area, and
    repeated faces (which would double the sampling density there).

    Expects arrays that passed :func:`_check_arrays`; returns (V', 3) float64, (F', 3) int64.
    """
    used, faces = np.unique(faces, return_inverse=True)
    faces = faces.reshape(-1, 3)
    # "+ 0.0" turns -0.0 into 0.0 so that both spellings of a coordinate merge.
    vertices, inverse = np.unique(vertices[used] + 0.0, axis=0, return_inverse=True)
    faces = inverse.reshape(-1)[faces]

    a, b, c = faces.T
    keep = (a != b) & (b != c) & (a != c) & (_face_areas(vertices, faces) > 0.0)
    faces = faces[keep]
    _, first = np.unique(np.sort(faces, axis=1), axis=0, return_index=True)
    faces = faces[np.sort(first)]

    used, faces = np.unique(faces, return_inverse=True)
    return vertices[used], faces.reshape(-1, 3)


def _load(path: str | os.PathLike, limits: Limits) -> tuple[trimesh.Trimesh, str]:
    """Load ``path`` into one clean Trimesh; also return the sha256 of the file bytes."""
    path = Path(path)
    _, suffix, compression = _split_suffix(path)
    if suffix not in MESH_SUFFIXES:
        shown = "".join(Path(path.name.lower()).suffixes) or "(none)"
        raise MeshError(
            f"unsupported file type {shown}: rodin reads {', '.join(MESH_SUFFIXES)} "
            f"(optionally compressed {', '.join(COMPRESSION_SUFFIXES)})",
            path,
        )
    raw = _read(path, limits.max_file_bytes)
    sha256 = hashlib.sha256(raw).hexdigest()
    _check_not_placeholder(raw, path)
    data = raw
    if compression is not None:
        data = _decompress(raw, compression, limits.max_inflated_bytes, path)
        _check_not_placeholder(data, path, what=f"file once decompressed ({compression})")

    file_type = suffix.lstrip(".")
    data = _prepare(data, file_type, path)
    if _estimated_faces(data, file_type) > limits.max_faces:
        raise MeshError(_too_many_faces(limits.max_faces), path)
    draco = False
    if file_type in ("glb", "gltf"):
        doc = _gltf_json(data, file_type)
        draco = doc is not None and _uses_draco(doc)
        if draco and not _draco_available():
            raise MeshError(_DRACO_MISSING, path)
    kwargs: dict = {"process": False}
    if file_type == "obj":
        # Materials and textures carry nothing we use, and a missing .mtl must not matter.
        kwargs["skip_materials"] = True
    if file_type == "gltf":
        # A .gltf names its buffers as sibling files, so the parser needs the folder.
        kwargs["resolver"] = trimesh.resolvers.FilePathResolver(str(path.resolve()))

    with _quiet_trimesh():
        try:
            scene = trimesh.load_scene(io.BytesIO(data), file_type=file_type, **kwargs)
        except Exception as exc:
            raise MeshError(_diagnose(data, file_type) or _parse_failure(file_type, exc), path) from None
        try:
            if _counted_faces(scene) > limits.max_faces:
                raise MeshError(_too_many_faces(limits.max_faces))
            if draco:
                _check_draco_decoded(scene)
            missing = _describe_missing_surface(scene, data, file_type)
            if missing is not None:
                raise MeshError(missing, path)
            vertices, faces = _flatten(scene)
            _check_arrays(vertices, faces)
            vertices, faces = _clean(vertices, faces)
            _check_arrays(vertices, faces)
        except MeshError as exc:
            raise MeshError(exc.reason, path) from None
        except Exception as exc:
            reason = _diagnose(data, file_type)
            raise MeshError(
                reason or f"could not read the mesh from the {file_type.upper()} file: {_short(exc)}", path
            ) from None
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, process=False)
    mesh.metadata["file_name"] = path.name
    return mesh, sha256


def load_mesh(path: str | os.PathLike, limits: Limits | None = None) -> trimesh.Trimesh:
    """Load a mesh file as ONE triangle mesh, or raise :class:`MeshError`.

    Handles ``.obj .stl .ply .off .glb .gltf`` (suffix case-insensitive), optionally compressed
    as ``.bz2 .gz .xz``. Scenes are flattened with each node's transform applied; point clouds and
    lines inside a scene are dropped; unused and duplicate vertices, degenerate and repeated faces
    are removed; the result is validated with :func:`validate_mesh`. Git-lfs pointer files, empty
    files and parser failures all become ``MeshError(reason, path)``; no other exception escapes.
    The returned mesh has only geometry (no colours, UVs or materials). ``limits`` bounds the
    file's size, its size once decompressed and its faces (default: :class:`Limits`()).
    Text formats with a byte-order mark (UTF-8, UTF-16, UTF-32) are decoded as it says. A glTF
    that uses Draco mesh compression needs the optional DracoPy package, and is refused without.
    """
    try:
        return _load(path, limits or Limits())[0]
    except MeshError:
        raise
    except Exception as exc:  # the promise to callers: one kind of error, always one line
        raise MeshError(f"could not load the mesh: {_short(exc)}", path) from None


# --------------------------------------------------------------------------------------------
# Normalisation and sampling


def unit_ball(mesh: trimesh.Trimesh) -> tuple[np.ndarray, float]:
    """Center (3,) float64 and scale that map the surface into the unit ball.

    ``center`` is the area-weighted centroid of the surface (not of the vertices, whose density
    depends on how the mesh was tessellated); ``scale`` is the largest distance from ``center`` to
    a vertex referenced by a face, so every point of the surface lies within ``scale``.
    Raises :class:`MeshError` for a mesh without a usable surface.
    """
    vertices, faces = _arrays(mesh)
    _check_arrays(vertices, faces)
    tri = vertices[faces]
    areas = _face_areas(vertices, faces)
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
    cross = _face_cross(vertices, faces)
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
    vertices, faces = _arrays(mesh)
    _check_arrays(vertices, faces)
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
    vertices, faces = _arrays(mesh)
    _check_arrays(vertices, faces)
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


def ingest_file(path: str | os.PathLike, n_points: int = INFER.input_points, seed: int = 0,
                limits: Limits | None = None) -> Shape:
    """Load, validate, normalise and sample a mesh file; raises :class:`MeshError` (only).
    ``limits`` as for :func:`load_mesh`."""
    if n_points < 0:
        raise ValueError(f"n_points must be >= 0, got {n_points}")
    try:
        mesh, sha256 = _load(path, limits or Limits())
        stem, _, _ = _split_suffix(path)
        return shape_from_mesh(mesh, stem, n_points, seed, source_sha256=sha256)
    except MeshError as exc:
        if exc.path is None:
            raise MeshError(exc.reason, path) from None
        raise
    except Exception as exc:
        raise MeshError(f"could not ingest the mesh: {_short(exc)}", path) from None
