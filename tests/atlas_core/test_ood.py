"""Out-of-distribution warnings: a clearly foreign input warns, a training shape does not."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import trimesh

from atlas_core.config import ModelConfig, TrainConfig
from atlas_core.data import PointCloudSet
from atlas_core.mesh_io import shape_from_mesh
from atlas_core.model import AtlasNet
from atlas_core.ood import OodStats, collect, ood_warnings
from atlas_core.refine import encode, fit_chamfer, refine
from atlas_core.swords import generate_swords
from atlas_core.train import train

POINTS = 300


@pytest.fixture(scope="module")
def swords() -> PointCloudSet:
    return PointCloudSet.from_shapes(
        shape_from_mesh(mesh, name, POINTS, seed=i) for i, (name, mesh, _) in enumerate(generate_swords(8, seed=5)))


@pytest.fixture(scope="module")
def model(swords: PointCloudSet) -> AtlasNet:
    """A tiny sword model, trained briefly (a few seconds)."""
    config = TrainConfig(model=ModelConfig(n_patches=2, n_points=128, bottleneck=16, hidden=16, layers=1),
                         epochs=12, batch_size=4, val_fraction=0.0, checkpoint_every=100)
    # One thread: tiny operations on two threads of a busy machine run ~10x slower, not faster.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(config, swords).model.eval()
    finally:
        torch.set_num_threads(threads)


def _warnings(model: AtlasNet, stats: OodStats, cloud: np.ndarray, refined: bool = True) -> list[str]:
    points = torch.from_numpy(np.ascontiguousarray(cloud[None], dtype=np.float32))
    if not refined:
        latent = encode(model, points)
        return ood_warnings(stats, fit_chamfer(model, latent, points), latent)
    r = refine(model, points, decoder_steps=0)
    return ood_warnings(stats, r.chamfer_before, r.encoded, r.chamfer_latent)


def test_a_cube_warns_for_a_sword_model_and_its_own_swords_do_not(model: AtlasNet, swords: PointCloudSet) -> None:
    stats = collect(model, swords.points, swords.points)
    assert stats.reference == "training" and stats.shapes == stats.latent_shapes == stats.fit_shapes == 8
    for refined in (True, False):  # with the fit signal, and without it (no refinement ran)
        own = swords.points[:4] if refined else swords.points  # a refinement each: a few suffice
        assert all(_warnings(model, stats, cloud, refined) == [] for cloud in own)
        for mesh in (trimesh.creation.box(), trimesh.creation.icosphere(2)):
            foreign = shape_from_mesh(mesh, "foreign", POINTS, seed=0).points
            warnings = _warnings(model, stats, foreign, refined)
            assert warnings and all(w.startswith("input looks unlike the model's training shapes") for w in warnings)
            assert all("\n" not in w for w in warnings)


def test_statistics_travel_as_json(model: AtlasNet, swords: PointCloudSet) -> None:
    stats = collect(model, swords.points[:3], swords.points[3:])
    assert stats.reference == "validation" and stats.shapes == 3 and stats.latent_shapes == 5
    assert len(stats.latent_mean) == len(stats.latent_scale) == 16
    again = OodStats.from_dict(json.loads(json.dumps(stats.as_dict())))
    assert again == stats
    with pytest.raises(ValueError, match="unknown OOD statistics key"):
        OodStats.from_dict({**stats.as_dict(), "surprise": 1})
    # Statistics stored before the fit signal existed still load, and warn without it.
    older = {k: v for k, v in stats.as_dict().items() if not k.startswith("fit_")}
    assert OodStats.from_dict(older).ratios(1.0, np.zeros(16), chamfer_latent=1.0).keys() == {
        "chamfer_ratio", "latent_ratio"}


def test_the_warning_names_the_ratio_and_its_reference() -> None:
    stats = OodStats(reference="validation", shapes=3, chamfer_q50=1e-3, chamfer_q95=2e-3, chamfer_max=2e-3,
                     latent_shapes=27, latent_mean=[0.0, 0.0], latent_scale=[1.0, 1.0],
                     latent_q50=1.0, latent_q95=1.5, latent_max=1.6)
    assert ood_warnings(stats, 0.1, np.array([1.0, 1.0])) == []  # 50x, code at distance 1
    (chamfer,) = ood_warnings(stats, 0.5, torch.tensor([[1.0, 1.0]]))
    assert "250x the 95th percentile of its 3 validation shapes" in chamfer
    (code,) = ood_warnings(stats, 1e-3, np.array([6.0, 6.0]))
    assert "its code is 4.0x farther" in code
    stats.fit_shapes, stats.fit_q95 = 30, 1e-3
    assert ood_warnings(stats, 1e-3, np.array([1.0, 1.0]), chamfer_latent=2.9e-3) == []
    (fit,) = ood_warnings(stats, 1e-3, np.array([1.0, 1.0]), chamfer_latent=5e-3)
    assert "5.0x the 95th percentile of 30 of its own shapes" in fit
    with pytest.raises(ValueError, match="code of size 3"):
        ood_warnings(stats, 1e-3, np.zeros(3))
