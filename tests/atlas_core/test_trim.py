"""Trimming a refined reconstruction to its input: the webs between parts go, the parts stay."""

from __future__ import annotations

import numpy as np
import pytest

from atlas_core.meshing import PatchMesh
from atlas_core.trim import MAX_TRIMMED, input_spacing, trim_to_input


def _grid(x0: float, x1: float, z: float, n: int, patch: int, first: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An n x n grid of vertices on the square [x0, x1] x [0, 1] at height z, two faces a cell."""
    u, v = np.meshgrid(np.linspace(x0, x1, n), np.linspace(0, 1, n), indexing="ij")
    vertices = np.stack([u.ravel(), v.ravel(), np.full(n * n, z)], axis=1)
    faces = []
    for i in range(n - 1):
        for j in range(n - 1):
            a, b, c, d = i * n + j, (i + 1) * n + j, i * n + j + 1, (i + 1) * n + j + 1
            faces += [(a, b, c), (b, d, c)]
    return vertices, np.asarray(faces) + first, np.full(n * n, patch)


@pytest.fixture
def web() -> tuple[PatchMesh, np.ndarray]:
    """One patch spanning x in [0, 3] (two legs at [0, 1] and [2, 3] and the web between them),
    and an input that samples the legs only."""
    vertices, faces, ids = _grid(0.0, 3.0, 0.0, 31, patch=0, first=0)
    rng = np.random.default_rng(0)
    legs = np.concatenate([rng.uniform([0, 0, 0], [1, 1, 0], (2000, 3)),
                           rng.uniform([2, 0, 0], [3, 1, 0], (2000, 3))])
    return PatchMesh(vertices.astype(np.float32), faces, ids), legs


def _centroids(mesh: PatchMesh) -> np.ndarray:
    return mesh.vertices[mesh.faces].mean(axis=1)


def test_the_web_between_two_parts_goes_and_the_parts_stay(web: tuple[PatchMesh, np.ndarray]) -> None:
    mesh, legs = web
    trim = trim_to_input(mesh, legs, factor=3.0)
    x = _centroids(trim.mesh)[:, 0]
    assert trim.faces_removed > 0 and not trim.skipped
    assert len(trim.mesh.faces) == trim.faces_before - trim.faces_removed
    assert not ((x > 1.2) & (x < 1.8)).any()  # the middle of the web is gone
    kept_leg = (x < 0.95) | (x > 2.05)
    assert kept_leg.sum() == ((_centroids(mesh)[:, 0] < 0.95) | (_centroids(mesh)[:, 0] > 2.05)).sum()
    # The vertices are compacted: every one is used, faces index them, patch ids follow.
    assert np.unique(trim.mesh.faces).tolist() == list(range(len(trim.mesh.vertices)))
    assert len(trim.mesh.patch_ids) == len(trim.mesh.vertices)
    assert trim.as_dict()["faces_trimmed"] == trim.faces_removed


def test_the_cut_off_follows_the_input_spacing_not_its_units(web: tuple[PatchMesh, np.ndarray]) -> None:
    mesh, legs = web
    small = trim_to_input(mesh, legs, factor=3.0)
    scaled = PatchMesh(mesh.vertices * 10, mesh.faces, mesh.patch_ids)
    large = trim_to_input(scaled, legs * 10, factor=3.0)
    assert large.faces_removed == small.faces_removed
    assert large.distance == pytest.approx(10 * small.distance)
    assert small.distance == pytest.approx(3.0 * input_spacing(legs))


def test_factor_zero_keeps_every_face(web: tuple[PatchMesh, np.ndarray]) -> None:
    mesh, legs = web
    trim = trim_to_input(mesh, legs, factor=0.0)
    assert trim.mesh is mesh and trim.faces_removed == 0


def test_a_mesh_the_input_does_not_describe_is_kept_whole(web: tuple[PatchMesh, np.ndarray]) -> None:
    mesh, legs = web
    elsewhere = legs + np.array([0.0, 0.0, 5.0])  # another frame: nearly every face would go
    trim = trim_to_input(mesh, elsewhere, factor=3.0)
    assert trim.skipped and trim.mesh is mesh and trim.faces_removed == 0
    assert MAX_TRIMMED < 1.0
