"""Out-of-distribution warnings: a clearly foreign input warns, a training shape does not."""

from __future__ import annotations

import numpy as np
import torch
import trimesh

from atlas_core.config import ModelConfig, TrainConfig
from atlas_core.data import PointCloudSet
from atlas_core.families import generate_family
from atlas_core.mesh_io import shape_from_mesh
from atlas_core.ood import OodStats, collect, ood_warnings
from atlas_core.refine import encode, fit_chamfer
from atlas_core.train import TrainCallbacks, train


def _verdict(model, stats: OodStats, cloud: np.ndarray) -> list[str]:  # type: ignore[no-untyped-def]
    points = torch.from_numpy(np.ascontiguousarray(cloud[None], dtype=np.float32))
    latent = encode(model, points)
    return ood_warnings(stats, fit_chamfer(model, latent, points), latent)


def test_a_cube_warns_for_a_sword_model_and_its_own_swords_do_not() -> None:
    torch.manual_seed(0)
    swords = generate_family("swords", 8, seed=5, points_per_shape=400)
    config = TrainConfig(model=ModelConfig(n_patches=4, n_points=256, bottleneck=32, hidden=32, layers=1),
                         epochs=15, batch_size=4, val_fraction=0.0, checkpoint_every=100)
    result = train(config, swords, TrainCallbacks())
    model = result.model.eval()
    stats = collect(model, swords.points, swords.points)
    assert OodStats.from_dict(stats.as_dict()) == stats  # stored as JSON with the model
    assert all(_verdict(model, stats, cloud) == [] for cloud in swords.points)
    cube = PointCloudSet.from_shapes([shape_from_mesh(trimesh.creation.box(), "cube", 600, seed=0)])
    sphere = PointCloudSet.from_shapes([shape_from_mesh(trimesh.creation.icosphere(), "ball", 600, seed=0)])
    for foreign in (cube, sphere):
        warnings = _verdict(model, stats, foreign.points[0])
        assert warnings and "unlike the model's training shapes" in " ".join(warnings) or \
            "out of the model's distribution" in " ".join(warnings)
