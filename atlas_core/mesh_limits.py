"""What one mesh file may cost to ingest (:class:`Limits`), and the face count that is held
to ``Limits.max_faces``: estimated from the bytes before parsing where a format says its size,
so that the parser never builds a huge mesh, and counted exactly (over every instance) once
parsed. The byte limits are applied where the file is read (:mod:`atlas_core.mesh_files`).
The memory a parse will take is estimated the same way, from the counts a file states
(:func:`estimated_memory_bytes`), so that a reader process with bounded memory refuses a file
it could not hold before it starts building it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import trimesh

__all__ = ["Limits", "counted_faces", "estimated_faces", "estimated_memory_bytes", "too_many_faces",
           "too_much_memory"]


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
    #: Bytes of memory the reading process may use in all (RODIN_INGEST_MEMORY_BYTES, applied by
    #: `rodin datasets add`'s reader processes); 0: not checked (a caller that bounds no process).
    max_memory_bytes: int = 0
    #: Bytes that process already holds before it reads a file (its interpreter and libraries).
    memory_in_use: int = 0


def too_many_faces(limit: int) -> str:
    return (f"the mesh has more than {limit:,} faces (RODIN_MAX_FACES); simplify it or raise "
            "that limit")


def too_much_memory(need: int, limits: Limits) -> str:
    return (f"reading it would take about {size_text(need)} of memory, more than the "
            f"{size_text(limits.max_memory_bytes)} each ingest process may use "
            "(RODIN_INGEST_MEMORY_BYTES); raise that setting (and use fewer --jobs) if the file is genuine")


def size_text(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


#: Peak bytes a parse adds (the file's bytes, trimesh's arrays and text, the clean-up and the
#: sampling) per face and per vertex that the file states. Measured once (trimesh 4, numpy 2,
#: Linux, Python 3.11) as the growth of VmPeak (/proc/self/status) over `mesh_io.ingest_file` of
#: a 7- and 8-times subdivided icosphere (327,680 and 1,310,720 faces, V = F/2) and of the same
#: surface as a triangle soup (V = 3F) written by trimesh in each format, solved for the two
#: terms, then raised by about 10%. Formats trimesh reads as text cost more (OFF most).
#: glTF/GLB are not estimated (0): their buffers are bounded by the file size limits alone.
_BYTES_PER_FACE = {"obj": 470, "ply": 440, "off": 1750, "stl": 720}
_BYTES_PER_VERTEX = {"obj": 130, "ply": 65, "off": 80, "stl": 0}


def estimated_vertices(data: bytes, file_type: str) -> int:
    """The vertices a file states (0 when unknown; STL states none)."""
    if file_type == "obj":
        return data.count(b"\nv ") + data.count(b"\nv\t") + int(data[:2] in (b"v ", b"v\t"))
    if file_type == "ply":
        match = re.search(rb"^element[ \t]+vertex[ \t]+(\d{1,20})", data[:65536], re.MULTILINE)
        return int(match[1]) if match else 0
    if file_type == "off":
        match = re.match(rb"\s*[CN]*OFF\s*(\d{1,20})\s+(\d{1,20})", data)
        return int(match[1]) if match else 0
    return 0


def estimated_memory_bytes(data: bytes, file_type: str) -> int:
    """Bytes of memory that parsing and sampling `data` will add at their peak, from the faces
    and vertices the file states (0 when the format says nothing). Counted before parsing: a
    reader with bounded memory refuses a file it cannot hold instead of failing half-way."""
    faces = estimated_faces(data, file_type)
    if not faces:
        return 0
    return (_BYTES_PER_FACE.get(file_type, 0) * faces
            + _BYTES_PER_VERTEX.get(file_type, 0) * estimated_vertices(data, file_type))


def estimated_faces(data: bytes, file_type: str) -> int:
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


def counted_faces(scene: trimesh.Scene) -> int:
    """Triangles the flattened scene will hold: each geometry counted once per instance."""
    names = [scene.graph[node][1] for node in scene.graph.nodes_geometry] or list(scene.geometry)
    total = 0
    for name in names:
        geometry = scene.geometry.get(name)
        if isinstance(geometry, trimesh.Trimesh):
            total += len(geometry.faces)
    return total
