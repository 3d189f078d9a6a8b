"""glTF with Draco mesh compression: the geometry of such a primitive is one compressed blob
that only the optional DracoPy package decodes (trimesh uses it when it is installed). Without it
trimesh fills the primitive with zeros, so the file would be refused for the wrong reason, or a
scene with a plain part too would be registered with the Draco part silently missing.
"""

from __future__ import annotations

import importlib.util
import json
import struct
from typing import Any

import numpy as np
import trimesh

from atlas_core.mesh_errors import MeshError
from atlas_core.mesh_surface import mesh_arrays

__all__ = ["DRACO", "DRACO_MISSING", "gltf_json", "uses_draco", "draco_available", "check_draco_decoded"]

DRACO = "KHR_draco_mesh_compression"
DRACO_MISSING = (
    f"uses Draco mesh compression ({DRACO}); install DracoPy (pip install DracoPy) "
    "or export without Draco"
)


def gltf_json(data: bytes, file_type: str) -> dict[str, Any] | None:
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


def uses_draco(doc: dict[str, Any]) -> bool:
    """Whether the glTF declares Draco, at the top or on any primitive."""
    if DRACO in _as_list(doc.get("extensionsUsed")) + _as_list(doc.get("extensionsRequired")):
        return True
    for mesh in _as_list(doc.get("meshes")):
        for primitive in _as_list(mesh.get("primitives") if isinstance(mesh, dict) else None):
            extensions = primitive.get("extensions") if isinstance(primitive, dict) else None
            if isinstance(extensions, dict) and DRACO in extensions:
                return True
    return False


def draco_available() -> bool:
    return importlib.util.find_spec("DracoPy") is not None


def check_draco_decoded(scene: trimesh.Scene) -> None:
    """With DracoPy installed, a primitive it could not decode is left as zeros by trimesh:
    refuse the file rather than register the shape without that part."""
    for geometry in scene.geometry.values():
        if isinstance(geometry, trimesh.Trimesh):
            vertices, _ = mesh_arrays(geometry)
            if len(vertices) == 0 or not np.ptp(vertices, axis=0).any():
                raise MeshError(f"a Draco-compressed part ({DRACO}) could not be decoded: "
                                "the file is corrupt, or export it without Draco")
