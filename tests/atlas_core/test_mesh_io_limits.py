"""Hostile mesh files: decompression bombs and size limits, Draco glTF, text encodings, and
malformed files whose reason must say what is wrong with the file."""

from __future__ import annotations

import bz2
import gzip
import json
import resource
import struct
from pathlib import Path

import numpy as np
import pytest
import trimesh

from atlas_core import mesh_draco
from atlas_core.mesh_io import Limits, MeshError, ingest_file, load_mesh

CUBE_OBJ = (
    "v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nv 0 0 1\nv 1 0 1\nv 1 1 1\nv 0 1 1\n"
    "f 1 4 3\nf 1 3 2\nf 5 6 7\nf 5 7 8\nf 1 2 6\nf 1 6 5\n"
    "f 2 3 7\nf 2 7 6\nf 3 4 8\nf 3 8 7\nf 4 1 5\nf 4 5 8\n"
)


def _one_line(err: pytest.ExceptionInfo[MeshError], path: Path) -> str:
    text = str(err.value)
    assert "\n" not in text and str(path) not in text and err.value.path == str(path)
    return text


# --------------------------------------------------------------------------------------------
# Limits


def test_defaults_equal_the_settings_defaults() -> None:
    from orchestrator.settings import Settings

    settings, limits = Settings(), Limits()
    assert (limits.max_file_bytes, limits.max_inflated_bytes, limits.max_faces) == (
        settings.max_file_bytes, settings.max_inflated_bytes, settings.max_faces)


@pytest.mark.parametrize("suffix, compress", [(".bz2", bz2.compress), (".gz", gzip.compress)])
def test_a_decompression_bomb_stops_at_the_limit(tmp_path: Path, suffix: str, compress) -> None:  # type: ignore[no-untyped-def]
    bomb = tmp_path / f"bomb.obj{suffix}"
    bomb.write_bytes(compress(b"\0" * (50 << 20)))  # 50 MiB of zeros in a few kilobytes
    assert bomb.stat().st_size < 100_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(MeshError) as err:
        load_mesh(bomb, Limits(max_inflated_bytes=4 << 20))
    text = _one_line(err, bomb)
    assert f"the {suffix} file inflates to more than 4.0 MiB (RODIN_MAX_INFLATED_BYTES)" in text
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 30_000, f"decompression was not bounded: peak grew by {grown_kib} KiB"


def test_a_compressed_file_within_the_limit_still_loads(tmp_path: Path) -> None:
    packed = tmp_path / "cube.obj.gz"
    packed.write_bytes(gzip.compress(CUBE_OBJ.encode()) + gzip.compress(b"# a second gzip member\n"))
    assert len(load_mesh(packed, Limits(max_inflated_bytes=len(CUBE_OBJ) + 100)).faces) == 12


def test_file_size_limit(tmp_path: Path) -> None:
    path = tmp_path / "cube.obj"
    path.write_text(CUBE_OBJ)
    with pytest.raises(MeshError) as err:
        ingest_file(path, n_points=10, limits=Limits(max_file_bytes=100))
    assert "the file is larger than 100 bytes (RODIN_MAX_FILE_BYTES)" in _one_line(err, path)
    assert len(load_mesh(path, Limits(max_file_bytes=len(CUBE_OBJ))).faces) == 12


def test_face_limit_before_and_after_parsing(tmp_path: Path) -> None:
    path = tmp_path / "cube.obj"
    path.write_text(CUBE_OBJ)
    with pytest.raises(MeshError) as err:
        load_mesh(path, Limits(max_faces=11))
    assert "more than 11 faces (RODIN_MAX_FACES)" in _one_line(err, path)
    assert len(load_mesh(path, Limits(max_faces=12)).faces) == 12

    # A small file that instances one cube many times: counted per instance, before flattening.
    scene = trimesh.Scene()
    cube = trimesh.creation.box()
    for i in range(50):
        scene.add_geometry(cube, geom_name="cube", transform=trimesh.transformations.translation_matrix([3 * i, 0, 0]))
    glb = tmp_path / "many.glb"
    glb.write_bytes(scene.export(file_type="glb"))
    assert len(load_mesh(glb, Limits(max_faces=600)).faces) == 600
    with pytest.raises(MeshError, match="more than 599 faces"):
        load_mesh(glb, Limits(max_faces=599))


# --------------------------------------------------------------------------------------------
# Draco-compressed glTF: decoded with DracoPy, else refused by name; never a part missing

TETRA = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
TETRA_FACES = np.array([[0, 2, 1], [0, 1, 3], [1, 2, 3], [0, 3, 2]], dtype=np.uint32)


def _glb(draco_parts: int, plain_parts: int, declare: bool = True) -> bytes:
    """A GLB written by hand: `plain_parts` tetrahedra stored plainly, and `draco_parts`
    primitives that declare Draco compression (with bytes that are not real Draco data)."""
    binary = TETRA.tobytes() + TETRA_FACES.tobytes() + b"DRACO\0\0\0"
    views = [{"buffer": 0, "byteOffset": 0, "byteLength": 48},
             {"buffer": 0, "byteOffset": 48, "byteLength": 48},
             {"buffer": 0, "byteOffset": 96, "byteLength": 8}]
    accessors = [
        {"bufferView": 0, "componentType": 5126, "count": 4, "type": "VEC3", "min": [0, 0, 0], "max": [1, 1, 1]},
        {"bufferView": 1, "componentType": 5125, "count": 12, "type": "SCALAR"},
        # Draco primitives' accessors have no bufferView: their data is in the compressed blob.
        {"componentType": 5126, "count": 4, "type": "VEC3", "min": [0, 0, 0], "max": [1, 1, 1]},
        {"componentType": 5125, "count": 12, "type": "SCALAR"},
    ]
    plain = {"attributes": {"POSITION": 0}, "indices": 1}
    draco = {"attributes": {"POSITION": 2}, "indices": 3, "extensions": {
        "KHR_draco_mesh_compression": {"bufferView": 2, "attributes": {"POSITION": 0}}}}
    meshes = [{"primitives": [draco]}] * draco_parts + [{"primitives": [plain]}] * plain_parts
    doc = {"asset": {"version": "2.0"}, "scene": 0, "scenes": [{"nodes": list(range(len(meshes)))}],
           "nodes": [{"mesh": i, "translation": [2.0 * i, 0, 0]} for i in range(len(meshes))],
           "meshes": meshes, "accessors": accessors, "bufferViews": views,
           "buffers": [{"byteLength": len(binary)}]}
    if declare and draco_parts:
        doc["extensionsUsed"] = doc["extensionsRequired"] = ["KHR_draco_mesh_compression"]
    text = json.dumps(doc).encode()
    text += b" " * (-len(text) % 4)
    chunks = struct.pack("<I4s", len(text), b"JSON") + text + struct.pack("<I4s", len(binary), b"BIN\0") + binary
    return struct.pack("<4sII", b"glTF", 2, 12 + len(chunks)) + chunks


def test_hand_written_plain_glb_loads(tmp_path: Path) -> None:
    path = tmp_path / "plain.glb"
    path.write_bytes(_glb(draco_parts=0, plain_parts=2))
    assert len(load_mesh(path).faces) == 8


@pytest.mark.parametrize("draco_parts, plain_parts, declare", [(1, 0, True), (1, 1, True), (1, 1, False)])
def test_draco_glb_without_dracopy_is_refused_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      draco_parts: int, plain_parts: int, declare: bool) -> None:
    monkeypatch.setattr(mesh_draco, "draco_available", lambda: False)
    path = tmp_path / "draco.glb"
    path.write_bytes(_glb(draco_parts, plain_parts, declare))
    with pytest.raises(MeshError) as err:
        ingest_file(path, n_points=10)
    assert _one_line(err, path) == (
        "uses Draco mesh compression (KHR_draco_mesh_compression); install DracoPy "
        "(pip install DracoPy) or export without Draco")


def test_draco_data_that_does_not_decode_is_refused_not_dropped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # DracoPy present (or said to be) but the blob is not Draco: trimesh leaves zeros in place of
    # the part, which must not quietly become a shape made of the plain part alone.
    monkeypatch.setattr(mesh_draco, "draco_available", lambda: True)
    path = tmp_path / "draco.glb"
    path.write_bytes(_glb(draco_parts=1, plain_parts=1))
    with pytest.raises(MeshError, match="Draco-compressed part .* could not be decoded"):
        load_mesh(path)


def test_real_draco_glb_loads_with_dracopy(tmp_path: Path) -> None:
    pytest.importorskip("DracoPy")
    mesh = trimesh.creation.icosphere(subdivisions=2)
    path = tmp_path / "sphere.glb"
    path.write_bytes(trimesh.exchange.gltf.export_glb(trimesh.Scene(mesh), extension_draco=True))
    assert b"KHR_draco_mesh_compression" in path.read_bytes()[:4096]
    loaded = load_mesh(path)
    assert len(loaded.faces) == len(mesh.faces)
    assert np.allclose(loaded.bounds, mesh.bounds, atol=1e-3)


# --------------------------------------------------------------------------------------------
# Text encodings: decoded by their byte-order mark


@pytest.mark.parametrize("encoding, bom", [("utf-8", b"\xef\xbb\xbf"), ("utf-16-le", b"\xff\xfe"),
                                           ("utf-16-be", b"\xfe\xff"), ("utf-32-le", b"\xff\xfe\0\0")])
def test_text_files_with_a_byte_order_mark_load(tmp_path: Path, encoding: str, bom: bytes) -> None:
    reference = load_mesh(_write(tmp_path, "plain.obj", CUBE_OBJ.encode()))
    obj = load_mesh(_write(tmp_path, "cube.obj", bom + CUBE_OBJ.encode(encoding)))
    assert np.array_equal(obj.faces, reference.faces) and np.array_equal(obj.vertices, reference.vertices)
    stl_text = trimesh.exchange.stl.export_stl_ascii(trimesh.creation.box())
    stl = load_mesh(_write(tmp_path, "box.stl", bom + stl_text.encode(encoding)))
    assert len(stl.faces) == 12
    off = "OFF\n4 4 0\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n3 0 2 1\n3 0 1 3\n3 1 2 3\n3 0 3 2\n"
    assert len(load_mesh(_write(tmp_path, "tet.off", bom + off.encode(encoding))).faces) == 4


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------------------------
# Malformed text files: the reason says what is wrong with the file, not the parser's internals

TET_OFF = "OFF\n4 4 0\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n3 0 2 1\n3 0 1 3\n3 1 2 3\n3 0 3 2\n"
CUBE_OFF = ("OFF\n8 6 0\n0 0 0\n1 0 0\n1 1 0\n0 1 0\n0 0 1\n1 0 1\n1 1 1\n0 1 1\n"  # coloured quads
            + "".join(f"4 {face} 0.5 0.5 0.5 1\n" for face in ("0 3 2 1", "4 5 6 7", "0 1 5 4",
                                                                 "1 2 6 5", "2 3 7 6", "3 0 4 7")))
PLY_HEAD = ("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
            "property float z\nelement face 1\nproperty list uchar int vertex_indices\nend_header\n")


@pytest.mark.parametrize("name, content, reason", [
    ("nohead.off", TET_OFF.replace("OFF\n", ""), "no OFF header: an OFF file starts with the line OFF"),
    ("counts.off", TET_OFF.replace("4 4 0", "four 4 0"), "line 2: the counts line must be whole numbers"),
    ("short.off", "OFF\n99999 1 0\n0 0 0\n", "promises 99,999 vertices but the file has only 1 line"),
    # A negative corner count among quads: numpy's "'out' kwarg is necessary" from the parser.
    ("corners.off", CUBE_OFF.replace("4 4 5 6 7", "-4 4 5 6 7"), "line 12: a face starts with its number of corners"),
    ("ragged.off", TET_OFF.replace("1 0 0", "1 0"), "line 4: a vertex needs three numbers x y z"),
    ("index.off", TET_OFF.replace("3 1 2 3", "3 1 2 x"), "line 9: a face of 3 corners needs 3 vertex indices"),
    ("oneline.off", TET_OFF.replace("\n", " "), "write each vertex and each face on a line of its own"),
    ("vertex.obj", CUBE_OBJ.replace("v 1 1 0", "v 1 one 0"), "line 3: a vertex needs three numbers"),
    ("face.obj", CUBE_OBJ.replace("f 5 6 7", "f 5 6 seven"), "line 11: a face lists vertex indices"),
    ("word.obj", CUBE_OBJ.replace("v 1 1 1", "v 1 1 1#1"), "line 7: a vertex needs three numbers"),
    ("vertex.stl", "solid s\nfacet normal 0 0 1\nouter loop\nvertex 0 0 0\nvertex 1 zero 0\nvertex 0 1 0\n"
                   "endloop\nendfacet\nendsolid s\n", "line 5: a vertex needs three numbers"),
    ("facet.stl", "solid s\nfacet normal 0 0 1\nouter loop\nvertex 0 0 0\nvertex 1 0 0\n"
                  "endloop\nendfacet\nendsolid s\n", "line 7: a facet has 2 vertices"),
    ("axes.ply", PLY_HEAD.replace("property float y\n", ""), "the PLY vertices have no y property"),
    ("value.ply", PLY_HEAD + "a 0 0\n1 0 0\n0 1 0\n3 0 1 2\n", "vertex 0 holds 'a 0 0'"),
    ("type.ply", PLY_HEAD.replace("float x", "string x") + "0 0 0\n", "header line 4: a property needs a known type"),
])
def test_malformed_text_files_say_what_is_wrong(tmp_path: Path, name: str, content: str, reason: str) -> None:
    path = _write(tmp_path, name, content.encode())
    with pytest.raises(MeshError) as err:
        ingest_file(path, n_points=10)
    text = _one_line(err, path)
    assert text.startswith(f"could not parse as {path.suffix[1:].upper()}: ")
    assert reason in text, text
    for internal in ("unpack", "'out' kwarg", "reshape", "unmatched data", "inhomogeneous", "invalid literal"):
        assert internal not in text, text
