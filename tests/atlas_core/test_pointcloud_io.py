"""Point-cloud inputs load into the same normalised Shape as meshes, or fail with one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trimesh

from atlas_core.mesh_io import MeshError, ingest_file
from atlas_core.pointcloud_io import (
    PointCloudError,
    estimate_normals,
    ingest_input,
    ingest_point_cloud,
    read_point_cloud,
)


def _sphere_points(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Points on a sphere of radius 2 around (5, -1, 3), and their outward normals."""
    rng = np.random.default_rng(seed)
    normals = rng.normal(size=(n, 3))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    return np.array([5.0, -1.0, 3.0]) + 2.0 * normals, normals


def _write(path: Path, points: np.ndarray, normals: np.ndarray | None = None) -> Path:
    suffix = path.suffix
    if suffix == ".xyz":
        cols = points if normals is None else np.hstack([points, normals])
        path.write_text("# a scan\n" + "\n".join(" ".join(f"{v:.9g}" for v in row) for row in cols) + "\n")
    elif suffix == ".obj":
        lines = [f"v {x:.9g} {y:.9g} {z:.9g}" for x, y, z in points]
        if normals is not None:
            lines += [f"vn {x:.9g} {y:.9g} {z:.9g}" for x, y, z in normals]
        path.write_text("\n".join(lines) + "\n")
    else:  # PLY, vertices only: binary through trimesh, or ASCII with nx ny nz properties
        if normals is None:
            path.write_bytes(trimesh.PointCloud(points).export(file_type="ply"))
        else:
            header = (f"ply\nformat ascii 1.0\nelement vertex {len(points)}\n"
                      + "".join(f"property float {c}\n" for c in ("x", "y", "z", "nx", "ny", "nz"))
                      + "end_header\n")
            rows = "\n".join(" ".join(f"{v:.9g}" for v in r) for r in np.hstack([points, normals]))
            path.write_text(header + rows + "\n")
    return path


@pytest.mark.parametrize("suffix", [".xyz", ".obj", ".ply"])
@pytest.mark.parametrize("with_normals", [True, False])
def test_a_point_cloud_loads_normalised_into_the_unit_ball(tmp_path: Path, suffix: str,
                                                           with_normals: bool) -> None:
    points, normals = _sphere_points()
    path = _write(tmp_path / f"scan{suffix}", points, normals if with_normals else None)
    shape = ingest_point_cloud(path, n_points=500, seed=1)
    assert shape.name == "scan"
    assert shape.points.shape == shape.normals.shape == (500, 3)
    assert shape.points.dtype == shape.normals.dtype == np.float32
    radius = np.linalg.norm(shape.points, axis=1)
    assert radius.max() <= 1.0 + 1e-6  # the farthest of all 600 points is on the unit sphere
    assert radius.min() > 0.8  # a centred sphere: every point near radius 1
    np.testing.assert_allclose(shape.center, points.mean(0), atol=1e-6)
    restored = shape.points.astype(np.float64) * shape.scale + shape.center
    assert np.abs(np.linalg.norm(restored - [5.0, -1.0, 3.0], axis=1) - 2.0).max() < 1e-5
    # Given or estimated, the normals of a sphere point along the radius (here outwards).
    cos = (shape.normals * shape.points / radius[:, None]).sum(1)
    assert np.median(cos) > 0.99
    assert len(shape.source_sha256) == 64


def test_fewer_points_than_asked_are_all_kept_never_invented(tmp_path: Path) -> None:
    points, _ = _sphere_points(150)
    shape = ingest_point_cloud(_write(tmp_path / "few.xyz", points), n_points=1000)
    assert shape.points.shape == (150, 3)


def test_estimated_normals_are_perpendicular_to_a_plane() -> None:
    rng = np.random.default_rng(0)
    plane = np.c_[rng.random((400, 2)), np.zeros(400)]
    normals = estimate_normals(plane)
    np.testing.assert_allclose(np.abs(normals[:, 2]), 1.0, atol=1e-9)


@pytest.mark.parametrize("content, reason", [
    ("0 0 0\n1 1 1\n", "too few points: 2"),
    ("\n".join(f"{i} {i % 7} {i % 3}" for i in range(199)) + "\nnan 0 0\n", "non-finite coordinates"),
    ("\n".join(f"{i} {2 * i} {3 * i}" for i in range(200)) + "\n", "one line"),
    ("1 2\n", "line 1 has 2 values"),
    ("a b c\n" * 200, "could not read the XYZ coordinates"),
    ("", "empty file"),
])
def test_unusable_files_fail_with_one_line(tmp_path: Path, content: str, reason: str) -> None:
    path = tmp_path / "bad.xyz"
    path.write_text(content)
    with pytest.raises(PointCloudError) as err:
        ingest_point_cloud(path)
    assert reason in str(err.value)
    assert "\n" not in str(err.value)
    assert err.value.path == str(path)
    assert isinstance(err.value, MeshError)  # callers that handle MeshError handle these


def test_an_unknown_suffix_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "scan.pcd"
    path.write_text("0 0 0\n")
    with pytest.raises(PointCloudError, match="unsupported point-cloud file type .pcd"):
        read_point_cloud(path)


def test_ingest_input_takes_a_mesh_as_a_mesh_and_points_as_points(tmp_path: Path) -> None:
    mesh_path = tmp_path / "box.obj"
    mesh_path.write_bytes(trimesh.creation.box().export(file_type="obj").encode())
    from_mesh = ingest_input(mesh_path, n_points=300)
    expected = ingest_file(mesh_path, n_points=300)
    np.testing.assert_array_equal(from_mesh.points, expected.points)

    points, _ = _sphere_points()
    for suffix in (".obj", ".ply", ".xyz"):
        shape = ingest_input(_write(tmp_path / f"cloud{suffix}", points), n_points=300)
        assert shape.points.shape == (300, 3)

    broken = tmp_path / "broken.obj"
    broken.write_text("v 0 0 0\nv 1 0 0\nv 1 0 0\nf 1 2 3\n")  # a mesh whose only face is degenerate
    with pytest.raises(MeshError) as err:
        ingest_input(broken)
    assert not isinstance(err.value, PointCloudError)  # the mesh reader's reason, not "has faces"
