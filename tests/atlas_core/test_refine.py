"""Test-time refinement: lowers the Chamfer to the input, and never touches the model it is given."""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

import atlas_core.refine as refine_module
from atlas_core.config import ModelConfig
from atlas_core.mesh_io import shape_from_mesh
from atlas_core.meshing import reconstruct
from atlas_core.model import AtlasNet
from atlas_core.refine import (
    _Decoders,
    _two_sided,
    encode,
    fit_chamfer,
    mesh_latent,
    refine,
    refine_batch,
    refine_parallel,
)
from atlas_core.swords import generate_swords

FAST = dict(latent_steps=15, decoder_steps=10, latent_points=(60, 120), decoder_points=(60, 120))


@pytest.fixture(scope="module")
def model() -> AtlasNet:
    """A tiny AtlasNet in eval mode with BatchNorm statistics that are not the identity."""
    torch.manual_seed(0)
    net = AtlasNet(ModelConfig(n_patches=3, bottleneck=16, hidden=16, layers=1, n_points=96))
    with torch.no_grad():  # a few training-mode passes give the running statistics some values
        for _ in range(3):
            net(torch.rand(4, 96, 3) - 0.5)
    return net.eval()


@pytest.fixture(scope="module")
def points() -> torch.Tensor:
    """One sword in the unit ball: (1, 400, 3)."""
    _, mesh, _ = next(generate_swords(1, seed=4))
    return torch.from_numpy(shape_from_mesh(mesh, "s", 400, seed=0).points)[None]


def _state_bytes(model: torch.nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def test_refinement_lowers_the_chamfer_and_leaves_the_model_byte_identical(
        model: AtlasNet, points: torch.Tensor) -> None:
    before_bytes = _state_bytes(model)
    flags = [p.requires_grad for p in model.parameters()]
    result = refine(model, points, **FAST)
    assert _state_bytes(model) == before_bytes
    assert [p.requires_grad for p in model.parameters()] == flags and not model.training
    assert result.model is not model
    assert result.chamfer_after < 0.8 * result.chamfer_before
    assert result.decoders_refined and result.decoder_steps == 10 and 1 <= result.latent_steps <= 15
    assert result.encoded.shape == result.latent.shape == (1, 16)
    # The reported figures are the fixed evaluation of what the result meshes.
    assert result.chamfer_before == pytest.approx(fit_chamfer(model, encode(model, points), points))
    assert result.half_thickness is not None and result.half_thickness.shape == (3,)  # two-sided
    half = torch.from_numpy(result.half_thickness)[None]
    assert result.chamfer_after == pytest.approx(fit_chamfer(result.model, result.latent, points, half))
    # Two layers of the plain mesh's layout, the inner one's faces reversed.
    mesh = result.mesh(300)
    reference = reconstruct(model, points, 300)[0]
    V = len(reference.vertices)
    np.testing.assert_array_equal(mesh.faces, np.concatenate([reference.faces, reference.faces[:, ::-1] + V]))
    np.testing.assert_array_equal(mesh.patch_ids, np.tile(reference.patch_ids, 2))
    assert result.chamfer_after <= result.chamfer_latent <= result.chamfer_before
    assert set(result.as_dict()) == {"chamfer_before", "chamfer_latent", "chamfer_after", "latent_steps",
                                     "decoder_steps", "decoders_refined", "seconds", "batch", "patch_ranges", "two_sided",
                                     "thickness_max", "thickness_median"}


def test_one_sided_refinement_meshes_as_the_model_does(model: AtlasNet, points: torch.Tensor) -> None:
    result = refine(model, points, two_sided=False, **FAST)
    assert result.decoders_refined and result.half_thickness is None
    assert result.chamfer_after == pytest.approx(fit_chamfer(result.model, result.latent, points))
    mesh, reference = result.mesh(300), reconstruct(model, points, 300)[0]
    np.testing.assert_array_equal(mesh.faces, reference.faces)
    assert result.as_dict()["two_sided"] is False


def test_two_sided_points_lie_either_side_of_the_patch() -> None:
    # A flat patch z = 0 on a 4 x 4 grid: its sides are the planes z = +-h, h per patch.
    u, v = torch.meshgrid(torch.linspace(0, 1, 4), torch.linspace(0, 1, 4), indexing="ij")
    plane = torch.stack([u, v, torch.zeros_like(u)], dim=-1).reshape(1, 16, 3)
    generated = torch.cat([plane, plane + torch.tensor([0.0, 0.0, 5.0])], dim=1)  # K = 2 patches
    half = torch.tensor([[0.1, -0.3]])  # the sign does not matter
    sides = _two_sided(generated, half)  # (1, 64, 3): outer sides of both patches, then inner
    z = sides[0, :, 2].view(2, 2, 16)
    torch.testing.assert_close(z[0, 0], torch.full((16,), 0.1))
    torch.testing.assert_close(z[1, 0], torch.full((16,), -0.1))
    torch.testing.assert_close(z[0, 1], torch.full((16,), 5.3))
    torch.testing.assert_close(z[1, 1], torch.full((16,), 4.7))
    torch.testing.assert_close(sides[0, :16, :2], plane[0, :, :2])


def test_a_thin_slab_pulls_the_two_sides_apart(model: AtlasNet) -> None:
    # Two parallel faces 0.2 apart: one sheet in the middle is 0.1 from both; the sides spread
    # towards them, and the two-sided fit beats the one-sided one.
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(600, 2, generator=g) * 1.0 - 0.5
    z = torch.where(torch.rand(600, generator=g) < 0.5, 0.1, -0.1)
    slab = torch.cat([xy, z[:, None]], dim=1)[None]
    options = dict(FAST, decoder_steps=80, decoder_points=(120, 300), thickness_lr=3e-3)
    two = refine(model, slab, **options)
    one = refine(model, slab, two_sided=False, **options)
    assert two.half_thickness is not None and float(np.median(two.half_thickness)) > 0.02
    assert two.chamfer_after < one.chamfer_after


def test_latent_only_refinement_keeps_the_decoders(model: AtlasNet, points: torch.Tensor) -> None:
    result = refine(model, points, **{**FAST, "decoder_steps": 0})
    assert not result.decoders_refined
    assert _state_bytes(result.model) == _state_bytes(model)
    assert result.chamfer_after <= result.chamfer_before


def test_no_steps_is_the_plain_reconstruction(model: AtlasNet, points: torch.Tensor) -> None:
    result = refine(model, points, latent_steps=0, decoder_steps=0)
    assert result.chamfer_after == result.chamfer_before
    np.testing.assert_array_equal(result.mesh(300).vertices, mesh_latent(model, encode(model, points), 300)[0].vertices)


def test_the_same_generator_gives_the_same_refinement(model: AtlasNet, points: torch.Tensor) -> None:
    threads = torch.get_num_threads()
    a = refine(model, points, generator=torch.Generator().manual_seed(3), **FAST)
    b = refine(model, points, generator=torch.Generator().manual_seed(3), **FAST)
    assert a.losses == b.losses and a.chamfer_after == b.chamfer_after
    np.testing.assert_array_equal(a.mesh(200).vertices, b.mesh(200).vertices)
    assert torch.get_num_threads() == threads  # refine's own thread setting is undone


def test_refinement_decodes_each_patch_with_its_own_mlp(model: AtlasNet) -> None:
    # Refinement optimises the model's own stacked decoders (a private copy of them). In eval mode
    # patch k is its own MLP: its slice of every stacked Linear, and BatchNorm's running
    # statistics and affine parameters of its channels.
    model = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in model.decoders.named_parameters():
            if ".bn" in f".{name}":
                p.uniform_(-1, 1)
    d = model.decoders
    K, C = 3, 16
    template = model.template.sample(K, 50, generator=torch.Generator().manual_seed(0))
    latent = torch.randn(1, 16)

    def norm(x: torch.Tensor, bn: torch.nn.BatchNorm1d, k: int) -> torch.Tensor:
        s = slice(k * C, (k + 1) * C)
        return (x - bn.running_mean[s]) / torch.sqrt(bn.running_var[s] + bn.eps) * bn.weight[s] + bn.bias[s]

    with torch.no_grad():
        out = model.decode(latent, template)  # (1, K, P, 3)
        for k in range(K):
            x = torch.relu(norm(template[k] @ d.fc_in.weight[k].T + d.fc_in.bias[k, :, 0] + latent, d.bn_in, k))
            for fc, bn in [(d.fc1, d.bn1), *zip(d.fc_hidden, d.bn_hidden)]:
                x = torch.relu(norm(x @ fc.weight[k].T + fc.bias[k, :, 0], bn, k))
            expected = x @ d.fc_out.weight[k].T + d.fc_out.bias[k, :, 0]
            torch.testing.assert_close(out[0, k], expected, rtol=1e-5, atol=1e-6)


def test_refined_decoders_are_the_result_models(model: AtlasNet, points: torch.Tensor) -> None:
    # Only the decoders' parameters move, and the result meshes with them.
    result = refine(model, points, **FAST)
    before, after = model.state_dict(), result.model.state_dict()
    assert before.keys() == after.keys()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith("decoders.") for name in changed)
    assert not any(name.endswith(("running_mean", "running_var", "num_batches_tracked")) for name in changed)
    assert not any(p.requires_grad for p in result.model.parameters())


def test_mesh_latent_meshes_like_reconstruct(model: AtlasNet, points: torch.Tensor) -> None:
    x = points[:, :96]
    with torch.no_grad():
        ours = mesh_latent(model, model.encode(x), 300)[0]
    theirs = reconstruct(model, x, 300)[0]
    np.testing.assert_array_equal(ours.vertices, theirs.vertices)
    np.testing.assert_array_equal(ours.faces, theirs.faces)


def test_one_shape_at_a_time(model: AtlasNet) -> None:
    with pytest.raises(ValueError, match=r"one shape's points \(1, N, 3\)"):
        refine(model, torch.rand(2, 100, 3))
    with pytest.raises(ValueError, match=r"point clouds \(N, 3\)"):
        refine_batch(model, [torch.rand(100, 3), torch.rand(100, 2)])
    with pytest.raises(ValueError, match="1 generators for 2 inputs"):
        refine_batch(model, torch.rand(2, 100, 3), generators=[torch.Generator()])


# -----------------------------------------------------------------------------
# Batches


@pytest.fixture(scope="module")
def swords() -> list[torch.Tensor]:
    """Three swords in the unit ball, (1, N, 3) each, of different sizes (the batch's inputs
    need not have as many points)."""
    return [torch.from_numpy(shape_from_mesh(mesh, "s", n, seed=0).points)[None]
            for (_, mesh, _), n in zip(generate_swords(3, seed=7), (400, 400, 300))]


def test_the_stacked_decoders_decode_as_the_model_does(model: AtlasNet) -> None:
    # One shared copy (every input through the same K patches) and one private copy per input
    # (B*K patches) both compute what PatchDecoders computes, BatchNorm folded in included.
    model = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in model.decoders.named_parameters():
            if ".bn" in f".{name}":
                p.uniform_(-1, 1)
    template = model.template.sample(3, 40, generator=torch.Generator().manual_seed(1))
    latent = torch.randn(4, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model.decode(latent, template).flatten(1, 2)  # (4, K*P, 3)
        shared = _Decoders.of(model.decoders)
        for decoders in (shared, shared.copies(4)):
            torch.testing.assert_close(decoders(template.expand(4, -1, -1, -1), latent), expected,
                                       rtol=1e-5, atol=1e-6)
        # Each input its own template sample: input b's rows are its own decoding.
        samples = model.template.sample(3 * 4, 40, generator=torch.Generator().manual_seed(3)).view(4, 3, 40, 2)
        out = shared.copies(4)(samples, latent)
        for b in range(4):
            torch.testing.assert_close(out[b], model.decode(latent[b:b + 1], samples[b])[0].flatten(0, 1),
                                       rtol=1e-5, atol=1e-6)


def test_a_batch_refines_each_input_as_it_would_be_refined_alone(
        model: AtlasNet, swords: list[torch.Tensor]) -> None:
    # Per-input generators, per-input stopping (short patience: the inputs stop at different steps
    # and leave the batch) and the sum of the Chamfers: each input's result is its own.
    options = dict(FAST, latent_steps=40, patience=3, decoder_patience=2, decoder_steps=30,
                   decoder_points_start=(30, 60))
    before_bytes = _state_bytes(model)
    batch = refine_batch(model, swords, generators=[torch.Generator().manual_seed(10 + i) for i in range(3)],
                         **options)
    assert _state_bytes(model) == before_bytes  # the model given is never changed
    alone = [refine(model, x, generator=torch.Generator().manual_seed(10 + i), **options)
             for i, x in enumerate(swords)]
    for a, b in zip(alone, batch):
        assert (a.latent_steps, a.decoder_steps, a.decoders_refined) == (b.latent_steps, b.decoder_steps,
                                                                       b.decoders_refined)
        np.testing.assert_allclose(b.losses, a.losses, rtol=1e-5, atol=1e-7)
        assert b.chamfer_before == a.chamfer_before
        assert b.chamfer_latent == pytest.approx(a.chamfer_latent, rel=1e-5)
        assert b.chamfer_after == pytest.approx(a.chamfer_after, rel=1e-5)
        torch.testing.assert_close(b.latent, a.latent, rtol=1e-4, atol=1e-6)
        for p, q in zip(a.model.decoders.parameters(), b.model.decoders.parameters()):
            torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6)
        assert b.chamfer_after <= b.chamfer_latent <= b.chamfer_before
        assert b.batch == 3 and a.batch == 1
    # Inputs stopped early: fewer steps than the most, and not all at the same step.
    steps = [(r.latent_steps, r.decoder_steps) for r in batch]
    assert all(latent <= 40 and decoder <= 30 for latent, decoder in steps)
    assert any(latent < 40 for latent, _ in steps) and any(decoder < 30 for _, decoder in steps)
    assert len({latent for latent, _ in steps}) > 1 and len({decoder for _, decoder in steps}) > 1
    # A tensor (B, N, 3) is B inputs; by default input i's generator is seeded with i.
    same_size = torch.cat(swords[:2])
    by_default = refine_batch(model, same_size, **FAST)
    for i, r in enumerate(by_default):
        assert r.losses == refine(model, swords[i], generator=torch.Generator().manual_seed(i), **FAST).losses


def test_batches_refined_side_by_side_give_each_input_its_own_result(
        model: AtlasNet, swords: list[torch.Tensor]) -> None:
    # Two threads, each a batch of its own (1 + 2 inputs, or 3 batches of one): every result is
    # the one input i gets alone with its generator, the model and the thread budget untouched.
    inputs = [x[0] for x in swords]
    before_bytes, threads = _state_bytes(model), torch.get_num_threads()
    ticks: list[int] = []
    alone = [refine(model, x, generator=torch.Generator().manual_seed(20 + i), **FAST) for i, x in enumerate(swords)]
    for width, most in ((2, 8), (3, 1), (1, 2)):
        side = refine_parallel(model, inputs, width=width, most=most, on_step=lambda: ticks.append(1),
                               generators=[torch.Generator().manual_seed(20 + i) for i in range(3)], **FAST)
        assert len(side) == 3
        for a, b in zip(alone, side):
            assert b.chamfer_after == pytest.approx(a.chamfer_after, rel=1e-5)
            np.testing.assert_allclose(b.losses, a.losses, rtol=1e-5, atol=1e-7)
        assert len({r.seconds for r in side}) == 1 and side[0].seconds > 0  # the call's time, shared
    assert _state_bytes(model) == before_bytes and torch.get_num_threads() == threads
    assert ticks  # every batch's steps reach on_step
    with pytest.raises(ValueError, match="generators"):
        refine_parallel(model, inputs, generators=[torch.Generator()])


def _counting(function: Callable[..., Any], calls: list[int]) -> Callable[..., Any]:
    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return function(*args, **kwargs)
    return counted


def test_patches_refined_side_by_side_give_the_same_result(
        model: AtlasNet, swords: list[torch.Tensor], monkeypatch: pytest.MonkeyPatch) -> None:
    # The K = 3 patches in two ranges on two threads (what lets a lone input use two cores):
    # every input's result is the one-thread result up to float rounding, early stopping and
    # the two-sided thicknesses included, and the model is left alone.
    before_bytes = _state_bytes(model)
    options = dict(FAST, decoder_steps=12, decoder_patience=2, generators=None)
    inputs = [x[0] for x in swords[:2]]
    whole = refine_batch(model, inputs, **options)
    split = refine_batch(model, inputs, split=2, **options)
    for a, b in zip(whole, split):
        assert (a.patch_ranges, b.patch_ranges) == (1, 2)
        assert (b.latent_steps, b.decoder_steps, b.decoders_refined) == (a.latent_steps, a.decoder_steps,
                                                                         a.decoders_refined)
        np.testing.assert_allclose(b.losses, a.losses, rtol=1e-4, atol=1e-7)
        assert b.chamfer_after == pytest.approx(a.chamfer_after, rel=1e-4)
        torch.testing.assert_close(b.latent, a.latent, rtol=1e-4, atol=1e-6)
        for p, q in zip(a.model.decoders.parameters(), b.model.decoders.parameters()):
            torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6)
        if a.half_thickness is not None:
            np.testing.assert_allclose(b.half_thickness, a.half_thickness, rtol=1e-4, atol=1e-7)
    assert any(r.decoders_refined for r in split) and any(r.half_thickness is not None for r in split)
    assert _state_bytes(model) == before_bytes
    # refine_parallel splits a lone input's patches over its threads (here down to ranges of
    # one patch); more parts than patches are as many parts as patches.
    monkeypatch.setattr(refine_module, "MIN_SPLIT_PATCHES", 1)
    steps: list[int] = []
    monkeypatch.setattr(refine_module, "_split_step", _counting(refine_module._split_step, steps))
    lone = refine_parallel(model, inputs[:1], width=2, **FAST)[0]
    assert len(steps) == FAST["decoder_steps"] and lone.as_dict()["patch_ranges"] == 2
    alone = refine_batch(model, inputs[:1], split=5, **FAST)[0]
    assert lone.chamfer_after == pytest.approx(refine(model, swords[0], **FAST).chamfer_after, rel=1e-4)
    assert alone.chamfer_after == pytest.approx(lone.chamfer_after, rel=1e-4)


def test_the_decoders_of_patch_ranges_join_back(model: AtlasNet) -> None:
    shared = _Decoders.of(model.decoders)
    joined = _Decoders.cat([shared.patches(0, 1), shared.patches(1, 3)])
    for a, b in zip([*shared.parameters(), *shared.means, *shared.invstds],
                    [*joined.parameters(), *joined.means, *joined.invstds]):
        assert torch.equal(a, b)
    template = model.template.sample(3, 20, generator=torch.Generator().manual_seed(1))[None]
    latent = torch.randn(1, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        parts = torch.cat([shared.patches(0, 1)(template[:, :1], latent), shared.patches(1, 3)(template[:, 1:], latent)], 1)
        torch.testing.assert_close(parts, shared(template, latent))


def test_an_input_that_stops_early_records_its_steps_and_leaves_the_model_alone(
        model: AtlasNet, points: torch.Tensor) -> None:
    before_bytes = _state_bytes(model)
    result = refine(model, points, **{**FAST, "latent_steps": 500, "patience": 2, "decoder_steps": 0})
    assert 1 <= result.latent_steps < 500 and len(result.losses) == result.latent_steps
    assert result.decoder_steps == 0 and not result.decoders_refined
    assert _state_bytes(model) == before_bytes
    assert result.chamfer_after <= result.chamfer_before


def test_the_decoder_phase_fits_more_input_points_than_it_generates(
        model: AtlasNet, monkeypatch: pytest.MonkeyPatch) -> None:
    # Phase 2 by default generates 1,000 points a step and matches them against a fresh subset
    # of 4,000 of the input's: thin parts are reached through the input's side of the Chamfer,
    # which costs only nearest-neighbour searches, not decoder passes.
    from atlas_core import refine as module

    subsets: list[int] = []
    grids: list[tuple[int, ...]] = []
    subset, jittered = module._subset, module._jittered_grid

    def record_subset(points: torch.Tensor, n: int, seed: int) -> torch.Tensor:
        subsets.append(n)
        return subset(points, n, seed)

    def record_grid(K: int, n: int, generator: torch.Generator) -> torch.Tensor:
        grids.append(tuple((out := jittered(K, n, generator)).shape))
        return out

    monkeypatch.setattr(module, "_subset", record_subset)
    monkeypatch.setattr(module, "_jittered_grid", record_grid)
    cloud = torch.rand(1, 5000, 3) - 0.5
    refine(model, cloud, latent_steps=0, decoder_steps=2)
    # Each of the two steps once; the encoder's subset (96) and the fixed evaluation's
    # (2,500 points) are the other calls.
    assert subsets.count(4000) == 2 and max(subsets) == 4000
    # 1,000 template points over K = 3 patches: an 18 x 18 grid each (972), on both sides.
    assert grids == [(3, 324, 2)] * 2


def test_a_sphere_template_refines_one_sided(points: torch.Tensor) -> None:
    # A sphere patch is closed already: it has an inside and an outside, not two sides to spread.
    torch.manual_seed(0)
    net = AtlasNet(ModelConfig(n_patches=2, template="sphere", bottleneck=16, hidden=16, layers=1, n_points=96)).eval()
    result = refine(net, points, **FAST)
    assert result.half_thickness is None and result.as_dict()["two_sided"] is False
    assert result.chamfer_after <= result.chamfer_before
