"""A mesh file's bytes: which names are mesh files, reading them within their size limits
(decompressing a chunk at a time, so that a bomb costs only the limit), refusing placeholders
(empty files, git-lfs pointers), and fixing up text encodings before trimesh parses them.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO

from atlas_core.mesh_errors import MeshError, short_reason

__all__ = [
    "MESH_SUFFIXES",
    "COMPRESSION_SUFFIXES",
    "SUPPORTED_SUFFIXES",
    "split_suffix",
    "is_mesh_file",
    "read_file",
    "decompress",
    "check_not_placeholder",
    "prepare_for_parser",
]

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


def split_suffix(path: str | os.PathLike) -> tuple[str, str, str | None]:
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
    _, suffix, _ = split_suffix(path)
    return suffix in MESH_SUFFIXES


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


def read_file(path: Path, limit: int) -> bytes:
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
        raise MeshError(f"cannot read the file: {exc.strerror or short_reason(exc)}", path) from None
    if data is None:
        raise MeshError(_too_large(limit), path)
    return data


def decompress(raw: bytes, compression: str, limit: int, path: Path) -> bytes:
    """Inflate `raw` a chunk at a time, stopping as soon as it passes `limit` bytes: a small
    file that inflates to gigabytes (a decompression bomb) costs only the limit."""
    try:
        with _DECOMPRESSORS[compression](io.BytesIO(raw)) as stream:
            data = _read_at_most(stream, limit)
    except Exception as exc:
        raise MeshError(f"could not decompress the {compression} file: {short_reason(exc)}", path) from None
    if data is None:
        raise MeshError(
            f"the {compression} file inflates to more than {_size(limit)} (RODIN_MAX_INFLATED_BYTES); "
            "raise that limit if the file is genuine",
            path,
        )
    return data


def check_not_placeholder(data: bytes, path: Path, what: str = "file") -> None:
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


def prepare_for_parser(data: bytes, file_type: str, path: Path) -> bytes:
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


