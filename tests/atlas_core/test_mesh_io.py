"""Tests for atlas_core.mesh_io: ingestion of real and broken meshes, normalisation, sampling."""

from __future__ import annotations

import bz2
import gzip
import logging
import lzma
from pathlib import Path

import numpy as np
import pytest
import trimesh

from atlas_core import mesh_io
from atlas_core.mesh_io import (
    SUPPORTED_SUFFIXES,
    MeshError,
    Shape,
    denormalise_points,
    ingest_file,
    is_mesh_file,
    load_mesh,
    normalise_points,
    sample_surface,
    shape_from_mesh,
    unit_ball,
    validate_mesh,
)
from atlas_core.mesh_surface import clean_surface

SHARED_MESHES = Path(__file__).resolve().parents[2].parent / "shared" / "meshes"
NO_SHARED = f"real test meshes not found at {SHARED_MESHES} (a checkout without ../shared/meshes)"
needs_shared = pytest.mark.skipif(not SHARED_MESHES.is_dir(), reason=NO_SHARED)

# Decisions for the files in shared/meshes/edge_cases: refused ones with a word their reason must
# contain. Every other edge case must ingest cleanly.
REFUSED = {
    "bun_zipper_res4.ply": "git-lfs",
    "elephav.obj": "git-lfs",
    "empty.obj": "no geometry",
    "empty.ply": "no geometry",
    "empty.stl": "no geometry",
    "emptyIO_obj_empty.obj": "no geometry",
    "emptyIO_obj_points.obj": "points",
    "emptyIO_obj_wireframe.obj": "wireframe",
    "emptyIO_ply_empty_ascii.ply": "no geometry",
    "emptyIO_ply_empty_bin.ply": "no geometry",
    "emptyIO_ply_empty_header.ply": "no geometry",
    "emptyIO_ply_points_ascii.ply": "points",
    "emptyIO_ply_points_bin.ply": "points",
    "emptyIO_stl_empty_ascii.stl": "no geometry",
    "emptyIO_stl_empty_bin.stl": "no geometry",
    "empty_nodes.glb": "no geometry",
    "face_in_group_name.obj": "points",
    "points_ascii.ply": "points",
    "points_ascii_with_lists.ply": "points",
    "points_bin.ply": "points",
    "points_emptyascii.ply": "points",
    "points_emptyface.ply": "points",
}


def _files(sub: str) -> list:
    folder = SHARED_MESHES / sub
    if not folder.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(reason=NO_SHARED), id="no-shared-meshes")]
    return [pytest.param(p, id=p.name) for p in sorted(folder.iterdir()) if p.is_file()]


def _check_shape(shape: Shape, n: int, reach: float) -> None:
    """Points in the unit ball, some within ``reach`` of its sphere, centred on the origin."""
    assert shape.points.shape == (n, 3) and shape.points.dtype == np.float32
    assert shape.normals.shape == (n, 3) and shape.normals.dtype == np.float32
    assert np.isfinite(shape.points).all() and np.isfinite(shape.normals).all()
    np.testing.assert_allclose(np.linalg.norm(shape.normals, axis=1), 1.0, atol=1e-4)
    norms = np.linalg.norm(shape.points, axis=1)
    assert norms.max() <= 1.0 + 1e-5
    # The farthest vertex is on the sphere; samples only come close to it (how close depends on
    # how much area lies near that vertex).
    assert norms.max() > reach, "some surface point should reach near the unit sphere"
    assert np.abs(shape.points.mean(axis=0)).max() < 0.05, "area centroid should be at the origin"
    assert shape.center.shape == (3,) and np.isfinite(shape.center).all()
    assert np.isfinite(shape.scale) and shape.scale > 0
    assert len(shape.source_sha256) == 64


def _check_error(err: MeshError, path: Path) -> None:
    text = str(err)
    assert text and "\n" not in text
    assert str(path) not in text, "the reason must not repeat the path"
    assert err.path == str(path)


# --------------------------------------------------------------------------------------------
# Real meshes


@needs_shared
@pytest.mark.parametrize("path", _files("objects"))
def test_every_object_ingests(path: Path) -> None:
    shape = ingest_file(path, n_points=10000, seed=0)
    _check_shape(shape, 10000, reach=0.95)
    assert shape.name == path.name.split(".")[0]


@needs_shared
@pytest.mark.parametrize("path", _files("edge_cases"))
def test_edge_case_ingests_or_refuses_clearly(path: Path) -> None:
    try:
        shape = ingest_file(path, n_points=5000, seed=0)
    except MeshError as err:
        _check_error(err, path)
        assert path.name in REFUSED, f"{path.name} was refused: {err}"
        assert REFUSED[path.name] in str(err), str(err)
    else:
        assert path.name not in REFUSED, f"{path.name} should be refused"
        _check_shape(shape, 5000, reach=0.8)


@needs_shared
def test_specific_edge_cases() -> None:
    edge = SHARED_MESHES / "edge_cases"
    with pytest.raises(MeshError):
        load_mesh(edge / "empty.obj")
    with pytest.raises(MeshError, match="no faces.*points"):
        load_mesh(edge / "emptyIO_obj_points.obj")
    with pytest.raises(MeshError, match=r"git-lfs pointer file.*git lfs pull"):
        load_mesh(edge / "elephav.obj")

    rock = ingest_file(edge / "rock.obj.bz2", n_points=1000)
    assert rock.name == "rock"
    cube = load_mesh(edge / "negative_indices.obj")
    # A cube written with vertices split per face: merged again, it is closed.
    assert cube.is_watertight
    assert len(load_mesh(edge / "polygonfaces.obj").faces) == 3  # pentagon triangulated

    # Scenes are flattened with their node transforms: nested.glb holds three scaled and moved
    # instances, two bodies in multibody.stl.
    nested = trimesh.load_scene(edge / "nested.glb")
    assert np.allclose(load_mesh(edge / "nested.glb").bounds, nested.bounds)
    assert load_mesh(edge / "multibody.stl").body_count == 2

    # A NaN colour is not a NaN position: the cube is usable.
    assert np.isfinite(load_mesh(edge / "nancolor.obj").vertices).all()


@needs_shared
def test_loading_never_logs_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for path in sorted((SHARED_MESHES / "edge_cases").iterdir()):
        try:
            load_mesh(path)
        except MeshError:
            pass
    assert all(record.exc_info is None for record in caplog.records)


def test_trimesh_tracebacks_are_folded_into_one_line(caplog: pytest.LogCaptureFixture) -> None:
    # trimesh logs some recoverable parser failures with exc_info=True; while we load, the
    # traceback must become part of the message instead of being printed.
    caplog.set_level(logging.DEBUG)
    logger = logging.getLogger("trimesh.exchange.ply")
    try:
        raise KeyError("texture.png")
    except KeyError as exc:
        error = exc
    with mesh_io._quiet_trimesh():
        logger.warning("unable to load image!", exc_info=error)
    logger.warning("outside a load", exc_info=error)
    inside, outside = caplog.records[-2:]
    assert inside.exc_info is None and "KeyError: texture.png" in inside.getMessage()
    assert outside.exc_info is not None, "other users of trimesh keep their tracebacks"


# --------------------------------------------------------------------------------------------
# Synthetic broken files: these run without the shared meshes.

CUBE_OBJ = (
    "v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nv 0 0 1\nv 1 0 1\nv 1 1 1\nv 0 1 1\n"
    "f 1 4 3\nf 1 3 2\nf 5 6 7\nf 5 7 8\nf 1 2 6\nf 1 6 5\n"
    "f 2 3 7\nf 2 7 6\nf 3 4 8\nf 3 8 7\nf 4 1 5\nf 4 5 8\n"
)


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("empty.obj", b"", "empty file"),
        ("blank.ply", b"  \n\n", "empty file"),
        ("lfs.stl", b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\n", "git-lfs"),
        ("nan.obj", b"v 0 0 0\nv 1 0 0\nv nan 1 0\nf 1 2 3\n", "non-finite"),
        ("inf.obj", b"v 0 0 0\nv 1 0 0\nv inf 1 0\nf 1 2 3\n", "non-finite"),
        ("same.obj", b"v 1 1 1\nv 1 1 1\nv 1 1 1\nf 1 2 3\n", "same point"),
        ("line.obj", b"v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n", "zero surface area"),
        ("wire.obj", b"v 0 0 0\nv 1 0 0\nv 0 1 0\nl 1 2\nl 2 3\n", "wireframe"),
        ("pts.obj", b"v 0 0 0\nv 1 0 0\nv 0 1 0\n", "points"),
        ("oob.obj", b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 7\n", "vert"),
        ("garbage.glb", bytes(range(256)) * 8, "could not parse as GLB"),
        ("garbage.ply", bytes(range(256)) * 8, "could not parse as PLY"),
        ("garbage.stl", b"\x00\x01\x02" * 700, "binary STL"),
        ("bad.obj.bz2", b"not bzip2 at all", "decompress"),
        ("bad.off.gz", b"not gzip at all", "decompress"),
        ("notes.txt", b"hello", "unsupported file type"),
        ("empty.obj.xz", lzma.compress(b""), "empty"),
    ],
)
def test_broken_files_give_one_line_reasons(
    tmp_path: Path, name: str, content: bytes, match: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(MeshError, match=match) as info:
        ingest_file(path, n_points=100)
    _check_error(info.value, path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(MeshError, match="not found"):
        load_mesh(tmp_path / "nope.obj")
    (tmp_path / "folder.obj").mkdir()
    with pytest.raises(MeshError, match="directory"):
        load_mesh(tmp_path / "folder.obj")


def test_compressed_files_load_like_plain_ones(tmp_path: Path) -> None:
    plain = tmp_path / "cube.obj"
    plain.write_text(CUBE_OBJ)
    reference = ingest_file(plain, n_points=500, seed=3)
    compressors = {".bz2": bz2.compress, ".gz": gzip.compress, ".xz": lzma.compress}
    for suffix, compress in compressors.items():
        packed = tmp_path / f"cube.OBJ{suffix}"
        packed.write_bytes(compress(CUBE_OBJ.encode()))
        shape = ingest_file(packed, n_points=500, seed=3)
        assert shape.name == "cube"
        np.testing.assert_array_equal(shape.points, reference.points)
        assert shape.source_sha256 != reference.source_sha256  # hash of the bytes on disk


def test_latin1_obj_loads(tmp_path: Path) -> None:
    path = tmp_path / "caf\u00e9.obj"
    header = "# mod\u00e8le fait \u00e0 la main\ng t\u00eate\n".encode("latin-1")
    path.write_bytes(header + CUBE_OBJ.encode())
    assert load_mesh(path).is_watertight


def test_scene_transforms_are_applied(tmp_path: Path) -> None:
    scene = trimesh.Scene()
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    moved = trimesh.transformations.translation_matrix((5, 0, 0))
    scene.add_geometry(box, node_name="a", transform=moved)
    mirror = np.diag([-2.0, 1.0, 1.0, 1.0])  # scaled and mirrored instance of the same box
    scene.add_geometry(box, node_name="b", transform=mirror)
    path = tmp_path / "scene.glb"
    path.write_bytes(scene.export(file_type="glb"))
    mesh = load_mesh(path)
    np.testing.assert_allclose(mesh.bounds, [[-1.0, -0.5, -0.5], [5.5, 0.5, 0.5]], atol=1e-6)
    # The mirrored instance keeps outward winding, so the total volume is 1 + 2.
    assert mesh.volume == pytest.approx(3.0, rel=1e-6)


def test_cleanup_merges_and_drops_degenerate_pieces() -> None:
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 0, 0], [5, 5, 5], [2, 0, 0.0]])
    faces = np.array([[0, 1, 2], [2, 3, 0], [0, 1, 5], [0, 2, 1]])
    v, f = clean_surface(vertices.astype(float), faces)
    # Duplicate vertex 3 merged into 1, unused vertex 4 dropped, the collinear face and the
    # repeated (reversed) triangle dropped.
    assert len(f) == 1 and len(v) == 3


# --------------------------------------------------------------------------------------------
# validate_mesh


def test_validate_mesh_refusals() -> None:
    tri = np.array([[0, 1, 2]])
    good = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0.0]])
    validate_mesh(trimesh.Trimesh(good, tri, process=False))
    # A NaN on a vertex no face uses is harmless.
    validate_mesh(trimesh.Trimesh(np.vstack([good, [np.nan] * 3]), tri, process=False))

    cases = {
        "no vertices": trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), int), process=False),
        "no faces": trimesh.Trimesh(good, np.zeros((0, 3), int), process=False),
        "non-finite": trimesh.Trimesh(np.vstack([good[:2], [np.inf, 0, 0]]), tri, process=False),
        "same point": trimesh.Trimesh(np.ones((3, 3)), tri, process=False),
        "zero surface area": trimesh.Trimesh(good * [1, 0, 0], tri, process=False),
    }
    for expected, mesh in cases.items():
        with pytest.raises(MeshError, match=expected):
            validate_mesh(mesh)
    # Relative, not absolute: a tiny but proper triangle is fine, a sliver of a large one is not.
    validate_mesh(trimesh.Trimesh(good * 1e-9, tri, process=False))
    sliver = np.array([[0, 0, 0], [1e6, 0, 0], [0, 1e-9, 0.0]])
    with pytest.raises(MeshError, match="zero surface area"):
        validate_mesh(trimesh.Trimesh(sliver, tri, process=False))


def test_mesh_error_is_one_line_value_error() -> None:
    err = MeshError("first line\nsecond   line", path="a/b.obj")
    assert isinstance(err, ValueError)
    assert str(err) == "first line second line" and err.path == "a/b.obj"
    assert MeshError("x").path is None


def test_suffixes() -> None:
    assert {".obj", ".stl", ".ply", ".off", ".glb", ".gltf"} <= set(SUPPORTED_SUFFIXES)
    assert ".obj.bz2" in SUPPORTED_SUFFIXES and ".ply.xz" in SUPPORTED_SUFFIXES
    for name in ("bunny.ply", "cube.OBJ", "rock.obj.bz2", "a/b/c.Stl.GZ", "scene.gltf", "x.glb.xz"):
        assert is_mesh_file(name), name
    for name in ("notes.txt", "archive.gz", "obj", ".obj", "mesh.obj.zip", "bunny.ply.bak"):
        assert not is_mesh_file(name), name


# --------------------------------------------------------------------------------------------
# Normalisation and sampling


def _two_squares(side_b: float, split_a: int = 1) -> trimesh.Trimesh:
    """Square A (area 1, x in [0, 1], tessellated into 2*split_a^2 triangles) and square B (area
    side_b^2) far from it at x >= 10, both in the z = 0 plane."""
    n = split_a + 1
    xs, ys = np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n), indexing="ij")
    va = np.stack([xs.ravel(), ys.ravel(), np.zeros(n * n)], -1)
    i, j = np.meshgrid(np.arange(split_a), np.arange(split_a), indexing="ij")
    a = (i * n + j).ravel()
    fa = np.concatenate([np.stack([a, a + n, a + n + 1], -1), np.stack([a, a + n + 1, a + 1], -1)])
    vb = np.array([[10, 0, 0], [10 + side_b, 0, 0], [10 + side_b, side_b, 0], [10, side_b, 0.0]])
    fb = np.array([[0, 1, 2], [0, 2, 3]]) + len(va)
    return trimesh.Trimesh(np.vstack([va, vb]), np.vstack([fa, fb]), process=False)


def test_sampling_is_area_weighted_and_uniform() -> None:
    mesh = _two_squares(side_b=np.sqrt(3.0))
    points, normals = sample_surface(mesh, 40000, seed=0)
    assert points.shape == (40000, 3) and points.dtype == np.float32
    assert normals.dtype == np.float32
    share_a = np.mean(points[:, 0] < 5)
    assert share_a == pytest.approx(0.25, abs=0.01)
    in_a = points[points[:, 0] < 5]
    # Uniform within a square: its mean is its centre, its x spread that of U(0, 1).
    np.testing.assert_allclose(in_a[:, :2].mean(axis=0), [0.5, 0.5], atol=0.01)
    assert in_a[:, 0].var() == pytest.approx(1 / 12, abs=0.005)
    np.testing.assert_allclose(np.abs(normals[:, 2]), 1.0)


def test_normals_follow_winding() -> None:
    box = trimesh.creation.box(extents=(2.0, 1.0, 0.5))
    points, normals = sample_surface(box, 2000, seed=1)
    assert (np.einsum("ij,ij->i", points, normals) > 0).all(), "outward normals on a centred box"


def test_sampling_is_deterministic_per_seed() -> None:
    mesh = trimesh.creation.icosphere(subdivisions=2)
    a, na = sample_surface(mesh, 1000, seed=7)
    b, nb = sample_surface(mesh, 1000, seed=7)
    c, _ = sample_surface(mesh, 1000, seed=8)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(na, nb)
    assert not np.array_equal(a, c)
    assert sample_surface(mesh, 0, seed=0)[0].shape == (0, 3)


def test_unit_ball_uses_area_not_vertex_density() -> None:
    # Square A is tessellated 20x20, B equally large but with two triangles: the vertex mean
    # lies near A, the area centroid exactly halfway.
    mesh = _two_squares(side_b=1.0, split_a=20)
    center, scale = unit_ball(mesh)
    np.testing.assert_allclose(center, [5.5, 0.5, 0.0], atol=1e-9)
    used = mesh.vertices
    assert np.linalg.norm(normalise_points(used, center, scale), axis=1).max() == pytest.approx(1.0)


def test_normalise_round_trip() -> None:
    rng = np.random.default_rng(0)
    points = rng.normal(size=(100, 3)) * 40 + 1000
    center, scale = np.array([1000.0, 990.0, 1010.0]), 37.5
    unit = normalise_points(points, center, scale)
    np.testing.assert_allclose(unit, (points - center) / scale)
    np.testing.assert_allclose(denormalise_points(unit, center, scale), points, rtol=1e-12)
    assert normalise_points(points.astype(np.float32), center, scale).dtype == np.float32


def test_shape_is_invariant_to_translation_and_scale() -> None:
    mesh = trimesh.creation.annulus(r_min=0.3, r_max=1.0, height=0.4, sections=24)
    mesh.apply_transform(trimesh.transformations.rotation_matrix(0.7, [1, 2, 3]))
    moved = mesh.copy()
    moved.apply_scale(37.0)
    moved.apply_translation([120.0, -40.0, 7.5])
    a = shape_from_mesh(mesh, "a", 3000, seed=5)
    b = shape_from_mesh(moved, "b", 3000, seed=5)
    np.testing.assert_allclose(a.points, b.points, atol=2e-5)
    np.testing.assert_allclose(a.normals, b.normals, atol=2e-5)
    assert b.scale == pytest.approx(37.0 * a.scale)
    np.testing.assert_allclose(b.center, 37.0 * a.center + [120.0, -40.0, 7.5], atol=1e-9)
    # Denormalising gives back the samples drawn on the moved mesh itself.
    original, _ = sample_surface(moved, 3000, seed=5)
    restored = denormalise_points(b.points, b.center, b.scale)
    np.testing.assert_allclose(restored, original, atol=1e-4 * b.scale)
    assert a.source_sha256 != b.source_sha256


def test_shape_from_invalid_mesh_raises_mesh_error() -> None:
    points_only = trimesh.Trimesh(np.eye(3), np.zeros((0, 3), int), process=False)
    with pytest.raises(MeshError, match="no faces"):
        shape_from_mesh(points_only, "p", 10, seed=0)
