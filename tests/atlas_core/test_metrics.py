"""Evaluation metrics against hand-computed cases, and the augmentations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atlas_core.augment import augment, principal_axes
from atlas_core.config import AugmentConfig
from atlas_core.meshing import PatchMesh
from atlas_core.metrics import (
    fscore_ceiling,
    fscore_terms,
    paper_chamfer,
    patch_health,
    retrieval_chamfer,
    sample_mesh,
    surface_scores,
)


def grid(spacing: float = 1.0) -> np.ndarray:
    """Points 1 apart, so that a small offset never changes who is whose nearest neighbour."""
    a = np.arange(5, dtype=np.float64) * spacing
    return np.stack(np.meshgrid(a, a, a, indexing="ij"), -1).reshape(-1, 3).astype(np.float32)


def normals_z(n: int) -> np.ndarray:
    return np.tile(np.float32([0, 0, 1]), (n, 1))


def test_identical_clouds_score_perfectly() -> None:
    x = grid()
    s = surface_scores(x, normals_z(len(x)), x, normals_z(len(x)))
    assert s.chamfer == 0.0
    assert s.fscore == 1.0 and s.precision == 1.0 and s.coverage == 1.0
    assert s.normal_consistency == pytest.approx(1.0)


@pytest.mark.parametrize("offset, fscore", [(0.01, 1.0), (0.03, 0.0)])
def test_a_known_offset_gives_the_known_distance(offset: float, fscore: float) -> None:
    x = grid()
    y = x + np.float32([0, 0, offset])
    s = surface_scores(y, normals_z(len(x)), x, normals_z(len(x)))
    # squared offset in both directions, mean of the two, x 10^3
    assert s.chamfer == pytest.approx(1e3 * offset**2, rel=1e-4)
    assert s.fscore == fscore and s.coverage == fscore  # threshold 0.02
    out = paper_chamfer(torch.from_numpy(y)[None], torch.from_numpy(x)[None])
    assert float(out[0]) == pytest.approx(1e3 * offset**2, rel=1e-4)


def _sphere(n: int, seed: int) -> np.ndarray:
    """n points spread uniformly over the unit sphere (area 4 pi: a large surface)."""
    x = np.random.default_rng(seed).normal(size=(n, 3))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_sparse_ground_truth_caps_the_f_score_and_the_ceiling_says_by_how_much() -> None:
    """A perfect reconstruction (samples of the very surface) scored against 2,500 samples of a
    large surface (the unit sphere's 4 pi) scores far below 1: the samples are farther apart
    than the threshold. fscore_ceiling predicts that score from the ground truth alone and the
    reconstruction's number of samples; at 100,000 a side both come near 1."""
    for n, pred_n, below in ((2_500, 2_500, 0.4), (2_500, 30_000, 0.6), (30_000, 30_000, 0.97),
                             (100_000, 100_000, 1.01)):
        truth, perfect = _sphere(n, seed=2), _sphere(pred_n, seed=1)
        _, _, f = fscore_terms(perfect, truth)
        assert f < below
        assert fscore_ceiling(truth, pred_points=pred_n) == pytest.approx(f, abs=0.02)
    assert fscore_ceiling(_sphere(100_000, seed=3)) > 0.99
    # The dense samples are what surface_scores scores its F-score on, when given.
    sparse, dense = _sphere(2_500, seed=2), (_sphere(30_000, seed=1), _sphere(30_000, seed=4))
    s = surface_scores(sparse, sparse, sparse, sparse, dense=dense)
    assert s.chamfer == 0.0 and s.fscore > 0.9
    assert s.fscore_ceiling == pytest.approx(s.fscore, abs=0.02)
    # The Chamfer of the same perfect reconstruction: at 2,500 points a side the sampling's own
    # floor, about ten times what it is at 30,000 (the spacing squared falls with the density).
    floor_sparse = surface_scores(sparse, sparse, _sphere(2_500, seed=5), sparse).chamfer
    assert s.chamfer_dense is not None and 0 < s.chamfer_dense < floor_sparse / 5
    assert surface_scores(sparse, sparse, sparse, sparse).chamfer_dense is None


def test_normal_consistency_ignores_orientation_and_sees_perpendicular() -> None:
    x = grid()
    flipped = -normals_z(len(x))
    assert surface_scores(x, flipped, x, normals_z(len(x))).normal_consistency == pytest.approx(1.0)
    sideways = np.tile(np.float32([1, 0, 0]), (len(x), 1))
    assert surface_scores(x, sideways, x, normals_z(len(x))).normal_consistency == pytest.approx(0.0)


def test_retrieval_finds_the_shape_itself() -> None:
    rng = np.random.default_rng(0)
    library = rng.normal(size=(5, 300, 3)).astype(np.float32)
    queries = library[[3, 1]] + 0.0
    dist, which = retrieval_chamfer(queries, library)
    assert which.tolist() == [3, 1] and np.allclose(dist, 0.0)


def _square_patch(k: int, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    v = np.float32([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]]) * scale + k
    return v, np.int64([[0, 1, 2], [0, 2, 3]]), np.full(4, k)


def test_a_collapsed_patch_is_flagged() -> None:
    parts = [_square_patch(0, 0.5), _square_patch(1, 0.5), _square_patch(2, 1e-4)]
    verts = np.concatenate([p[0] for p in parts])
    faces = np.concatenate([p[1] + 4 * i for i, p in enumerate(parts)])
    mesh = PatchMesh(verts, faces, np.concatenate([p[2] for p in parts]))
    health = patch_health([mesh], 3)
    assert health.collapsed == [2]
    assert "1 of 3 patches collapsed (ids 2)" in health.warnings()[0]
    assert "low coverage" in health.warnings(coverage=0.3)[-1]


def test_mesh_sampling_is_uniform_over_the_template_and_on_the_surface() -> None:
    # Two patches of very different 3D size get the same share: one per template.
    parts = [_square_patch(0, 1.0), _square_patch(1, 0.1)]
    verts = np.concatenate([p[0] for p in parts])
    faces = np.concatenate([p[1] + 4 * i for i, p in enumerate(parts)])
    pts, normals = sample_mesh(PatchMesh(verts, faces, np.concatenate([p[2] for p in parts])),
                               4000, seed=0)
    small = pts[:, 0] >= 1
    assert abs(small.mean() - 0.5) < 0.05
    assert np.allclose(pts[~small, 2], 0) and (pts[~small, :2] <= 1).all()
    assert np.allclose(np.abs(normals[:, 2]), 1)


def test_augmentations_keep_shapes_in_the_unit_ball() -> None:
    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    # A long thin cloud along y: its principal axis is y, and rotation about it keeps y.
    cloud = (rng.normal(size=(2, 500, 3)) * [0.05, 0.9, 0.1]).astype(np.float32)
    cloud /= np.linalg.norm(cloud, axis=-1).max(axis=1)[:, None, None]
    axes = principal_axes(cloud)
    assert np.allclose(np.abs(axes[:, 1]), 1, atol=1e-2)
    x = torch.from_numpy(cloud)
    rotated = augment(x, torch.from_numpy(axes), AugmentConfig(rotate=True), g)
    assert torch.allclose(rotated.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    assert not torch.allclose(rotated, x)
    assert torch.allclose((rotated * torch.from_numpy(axes)[:, None]).sum(-1),
                          (x * torch.from_numpy(axes)[:, None]).sum(-1), atol=1e-5)
    both = augment(x, torch.from_numpy(axes), AugmentConfig(scale=0.3, jitter=0.01), g)
    assert both.norm(dim=-1).max() <= 1.0 + 1e-6
