"""Mesh ingestion: read a user's mesh file into one clean surface, or say in one line why not.

Everything a user can hand us goes through :func:`load_mesh`, which either returns one clean
``trimesh.Trimesh`` or raises :class:`MeshError` with a one-line reason the user can act on.
No other exception escapes it, because the callers (CLI, workers) turn ``MeshError`` into the
"name the file and the reason" message that the design asks for, and anything else would reach
the user as a traceback. :func:`ingest_file` goes on to a normalised, sampled :class:`Shape`.

This module is the pipeline and the one import for callers: its parts live beside it and their
public names are offered here too.

    mesh_errors     MeshError and the one-line reasons
    mesh_limits     Limits; the face count held to them
    mesh_files      which files are meshes; their bytes, read within the limits; text encodings
    mesh_draco      glTF with Draco compression (the optional DracoPy)
    mesh_diagnosis  per format, what is wrong with a file the parser failed on
    mesh_surface    what a usable surface is; a scene flattened and cleaned into one
    mesh_sampling   normalisation into the unit ball, surface sampling, Shape

These modules use numpy and trimesh only (no torch), so that the CLI and data tools can import
them cheaply.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import trimesh

from atlas_core import mesh_draco
from atlas_core.config import INFER
from atlas_core.mesh_diagnosis import describe_missing_surface, diagnose, parse_failure
from atlas_core.mesh_errors import MeshError, short_reason
from atlas_core.mesh_files import (
    COMPRESSION_SUFFIXES,
    MESH_SUFFIXES,
    SUPPORTED_SUFFIXES,
    check_not_placeholder,
    decompress,
    is_mesh_file,
    prepare_for_parser,
    read_file,
    split_suffix,
)
from atlas_core.mesh_limits import (
    Limits,
    counted_faces,
    estimated_faces,
    estimated_memory_bytes,
    too_many_faces,
    too_much_memory,
)
from atlas_core.mesh_sampling import (
    Shape,
    denormalise_points,
    normalise_points,
    sample_surface,
    shape_from_mesh,
    unit_ball,
)
from atlas_core.mesh_surface import check_arrays, clean_surface, flatten_scene, validate_mesh

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
                message = f"{message} ({type(exc).__name__}: {short_reason(exc)})"
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


# --------------------------------------------------------------------------------------------
# Loading


def _load(path: str | os.PathLike, limits: Limits) -> tuple[trimesh.Trimesh, str]:
    """Load ``path`` into one clean Trimesh; also return the sha256 of the file bytes."""
    path = Path(path)
    _, suffix, compression = split_suffix(path)
    if suffix not in MESH_SUFFIXES:
        shown = "".join(Path(path.name.lower()).suffixes) or "(none)"
        raise MeshError(
            f"unsupported file type {shown}: rodin reads {', '.join(MESH_SUFFIXES)} "
            f"(optionally compressed {', '.join(COMPRESSION_SUFFIXES)})",
            path,
        )
    raw = read_file(path, limits.max_file_bytes)
    sha256 = hashlib.sha256(raw).hexdigest()
    check_not_placeholder(raw, path)
    data = raw
    if compression is not None:
        data = decompress(raw, compression, limits.max_inflated_bytes, path)
        check_not_placeholder(data, path, what=f"file once decompressed ({compression})")

    file_type = suffix.lstrip(".")
    data = prepare_for_parser(data, file_type, path)
    if estimated_faces(data, file_type) > limits.max_faces:
        raise MeshError(too_many_faces(limits.max_faces), path)
    if limits.max_memory_bytes:  # counted before the parse, which could not be stopped half-way
        need = limits.memory_in_use + estimated_memory_bytes(data, file_type)
        if need > limits.max_memory_bytes:
            raise MeshError(too_much_memory(need, limits), path)
    draco = False
    if file_type in ("glb", "gltf"):
        doc = mesh_draco.gltf_json(data, file_type)
        draco = doc is not None and mesh_draco.uses_draco(doc)
        if draco and not mesh_draco.draco_available():
            raise MeshError(mesh_draco.DRACO_MISSING, path)
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
            raise MeshError(diagnose(data, file_type) or parse_failure(file_type, exc), path) from None
        try:
            if counted_faces(scene) > limits.max_faces:
                raise MeshError(too_many_faces(limits.max_faces))
            if draco:
                mesh_draco.check_draco_decoded(scene)
            missing = describe_missing_surface(scene, data, file_type)
            if missing is not None:
                raise MeshError(missing, path)
            vertices, faces = flatten_scene(scene)
            check_arrays(vertices, faces)
            vertices, faces = clean_surface(vertices, faces)
            check_arrays(vertices, faces)
        except MeshError as exc:
            raise MeshError(exc.reason, path) from None
        except Exception as exc:
            reason = diagnose(data, file_type)
            raise MeshError(
                reason or f"could not read the mesh from the {file_type.upper()} file: {short_reason(exc)}", path
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
        raise MeshError(f"could not load the mesh: {short_reason(exc)}", path) from None


def ingest_file(path: str | os.PathLike, n_points: int = INFER.input_points, seed: int = 0,
                limits: Limits | None = None) -> Shape:
    """Load, validate, normalise and sample a mesh file; raises :class:`MeshError` (only).
    ``limits`` as for :func:`load_mesh`."""
    if n_points < 0:
        raise ValueError(f"n_points must be >= 0, got {n_points}")
    try:
        mesh, sha256 = _load(path, limits or Limits())
        stem, _, _ = split_suffix(path)
        return shape_from_mesh(mesh, stem, n_points, seed, source_sha256=sha256)
    except MeshError as exc:
        if exc.path is None:
            raise MeshError(exc.reason, path) from None
        raise
    except Exception as exc:
        raise MeshError(f"could not ingest the mesh: {short_reason(exc)}", path) from None
