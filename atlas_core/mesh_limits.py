"""What one mesh file may cost to ingest (:class:`Limits`), and the face count that is held
to ``Limits.max_faces``: estimated from the bytes before parsing where a format says its size,
so that the parser never builds a huge mesh, and counted exactly (over every instance) once
parsed. The byte limits are applied where the file is read (:mod:`atlas_core.mesh_files`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import trimesh

__all__ = ["Limits", "counted_faces", "estimated_faces", "too_many_faces"]


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


def too_many_faces(limit: int) -> str:
    return (f"the mesh has more than {limit:,} faces (RODIN_MAX_FACES); simplify it or raise "
            "that limit")


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
