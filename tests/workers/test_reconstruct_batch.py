"""The reconstruct job refines its inputs in batches, each input as it would be refined alone,
and records per input what was done."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atlas_core.config import ModelConfig
from atlas_core.mesh_io import Shape, shape_from_mesh
from atlas_core.model import AtlasNet
from atlas_core.swords import generate_swords
from workers import reconstruct_job
from workers.reconstruct_job import _fits


@pytest.fixture(scope="module")
def model() -> AtlasNet:
    torch.manual_seed(0)
    net = AtlasNet(ModelConfig(n_patches=3, bottleneck=16, hidden=16, layers=1, n_points=96))
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for _ in range(3):
            net(torch.rand(4, 96, 3) - 0.5)
    return net.eval()


@pytest.fixture(scope="module")
def shapes() -> list[Shape]:
    return [shape_from_mesh(mesh, name, 300, seed=0) for name, mesh, _ in generate_swords(3, seed=5)]


@pytest.mark.parametrize("threads, batches", [(1, [3, 3, 3]), (2, [2, 2, 1])])
def test_a_batch_of_inputs_is_refined_as_each_would_be_alone(model: AtlasNet, shapes: list[Shape],
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             threads: int, batches: list[int]) -> None:
    # One thread: one batch of the three. Two (a job granted two cores): two batches side by side.
    monkeypatch.setattr(reconstruct_job, "MESH_VERTICES", 200)
    options = {"latent_steps": 6, "decoder_steps": 4}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        together = _fits(model, shapes, options, None, "cpu", first=0)
    finally:
        torch.set_num_threads(previous)
    alone = [_fits(model, [shape], options, None, "cpu", first=i)[0] for i, shape in enumerate(shapes)]
    assert [b.refinement["batch"] for b in together if b.refinement is not None] == batches
    for a, b in zip(alone, together):
        assert b.refinement is not None and a.refinement is not None
        assert a.refinement["batch"] == 1
        for key in ("latent_steps", "decoder_steps", "decoders_refined", "chamfer_before", "faces_before_trim"):
            assert b.refinement[key] == a.refinement[key]
        assert b.refinement["chamfer_after"] == pytest.approx(a.refinement["chamfer_after"], rel=1e-5)
        assert b.after == pytest.approx(a.after, rel=1e-5) and b.after <= b.before == a.before
        np.testing.assert_allclose(b.mesh.vertices, a.mesh.vertices, rtol=1e-4, atol=1e-5)
        # What trimming took off is recorded, and the mesh is what is left.
        assert len(b.mesh.faces) == b.refinement["faces_before_trim"] - b.refinement["faces_trimmed"]
    assert len({fit.seconds for fit in together}) == 1  # the batch's time, divided among its inputs
    plain = _fits(model, shapes, None, None, "cpu", first=0)
    assert [fit.before for fit in plain] == [fit.before for fit in together]
    assert all(fit.refinement is None and fit.after == fit.before for fit in plain)
