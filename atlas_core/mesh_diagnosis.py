"""Why a mesh file cannot be used, in words about the file.

When a parser fails, its exception names its own internals ("not enough values to unpack", a
numpy message). :func:`diagnose` looks at the text formats (OBJ, OFF, ASCII PLY and STL) the way
a person would and says what is wrong with the file, with its line number;
:func:`parse_failure` turns what the parser raised into one line when no diagnosis is found;
:func:`describe_missing_surface` says what a parsed file holds instead of a surface.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import trimesh

from atlas_core.mesh_errors import short_reason

__all__ = ["diagnose", "parse_failure", "describe_missing_surface"]

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


def diagnose(data: bytes, file_type: str) -> str | None:
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


def parse_failure(file_type: str, exc: Exception) -> str:
    """The one-line reason for an exception raised by trimesh's parser."""
    name = file_type.upper()
    if isinstance(exc, ImportError):
        missing = getattr(exc, "name", None) or short_reason(exc)
        return f"could not parse as {name}: it needs the optional Python package {missing!r}"
    if file_type == "gltf" and isinstance(exc, (KeyError, FileNotFoundError)):
        return (
            f"could not parse as GLTF: a file it references is missing ({short_reason(exc)}); "
            "keep the .gltf beside its .bin and texture files, or export a single .glb"
        )
    if isinstance(exc, IndexError):
        return f"could not parse as {name}: a face references a vertex that does not exist"
    if isinstance(exc, MemoryError):
        return f"could not parse as {name}: the file is too large for the available memory"
    return f"could not parse as {name}: {short_reason(exc)}"


def describe_missing_surface(scene: trimesh.Scene, data: bytes, file_type: str) -> str | None:
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

