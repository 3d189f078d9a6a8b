"""The CUDA paths of atlas_core on a real GPU: the GPU nearest-neighbour search and Chamfer
against brute force, the fused layers against the plain ones, bf16 autocast, training on the
GPU, and two NCCL ranks against one process.

Marked `cuda` and skipped where torch sees no GPU (`scripts/gpu_check.sh` runs them where it
does: `make gpu-check`). RODIN_CUDA_REHEARSAL=1 runs the same tests on the CPU, to check the
tests' own code on a machine without a GPU; it proves nothing about a GPU.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch

from atlas_core import distributed
from atlas_core.chamfer import chamfer_brute_force, chamfer_distance, nearest_neighbors
from atlas_core.checkpoint import load_model
from atlas_core.config import ModelConfig
from atlas_core.model import AtlasNet
from atlas_core.train import TrainCallbacks, train
from tests.atlas_core.test_ddp import _train_rank, blobs, float64, tiny
from tests.atlas_core.test_fused import LAYERS, make_layer

REHEARSAL = os.environ.get("RODIN_CUDA_REHEARSAL") == "1"
DEVICE = torch.device("cpu") if REHEARSAL else torch.device("cuda")
GPUS = 2 if REHEARSAL else (torch.cuda.device_count() if torch.cuda.is_available() else 0)

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not REHEARSAL and not torch.cuda.is_available(), reason="no CUDA GPU on this machine")]


def _clouds(dtype: torch.dtype, B: int = 3, N: int = 2000, M: int = 1500, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, N, 3, generator=g, dtype=dtype) - 0.5
    y = (torch.rand(B, M, 3, generator=g, dtype=dtype) - 0.5) * 0.9 + 0.05
    return x, y


def _brute_force_argmin(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each x point's nearest y point, from coordinate differences in float64 on the CPU."""
    x, y = x.detach().cpu().double(), y.detach().cpu().double()
    return torch.stack([torch.cdist(a[None], b[None], compute_mode="donot_use_mm_for_euclid_dist")[0].argmin(dim=1)
                        for a, b in zip(x, y)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gpu_nearest_neighbours_match_brute_force(dtype: torch.dtype) -> None:
    x, y = (c.to(DEVICE) for c in _clouds(dtype))
    for a, b in ((x, y), (y, x), (x + 100.0, y + 100.0)):  # far from the origin too
        idx, dist2 = nearest_neighbors(a, b)
        assert idx.device.type == DEVICE.type and dist2.dtype == dtype
        assert torch.equal(idx.cpu(), _brute_force_argmin(a, b))


def test_gpu_neighbours_at_the_reference_size() -> None:
    """Batch 32, 2,500 points each side: the training loss's search, chunked on the GPU."""
    x, y = (c.to(DEVICE) for c in _clouds(torch.float32, B=32, N=2500, M=2500, seed=1))
    idx, _ = nearest_neighbors(x, y)
    assert torch.equal(idx.cpu(), _brute_force_argmin(x, y))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gpu_chamfer_values_and_gradients_match_brute_force(dtype: torch.dtype) -> None:
    x, y = _clouds(dtype, N=600, M=500)
    x1, y1 = x.clone().to(DEVICE).requires_grad_(), y.clone().to(DEVICE).requires_grad_()
    x2, y2 = x.clone().double().requires_grad_(), y.clone().double().requires_grad_()  # the reference: CPU, float64
    ours = chamfer_distance(x1, y1)
    reference = chamfer_brute_force(x2, y2)
    ours.backward()
    reference.backward()
    tol = dict(rtol=1e-5, atol=1e-7) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours.cpu().double(), reference.detach(), **tol)
    assert x1.grad is not None and y1.grad is not None
    torch.testing.assert_close(x1.grad.cpu().double(), x2.grad, **tol)
    torch.testing.assert_close(y1.grad.cpu().double(), y2.grad, **tol)


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("training", [True, False])
def test_fused_layers_match_the_plain_ones_on_the_gpu(name: str, training: bool) -> None:
    fused_fn, plain_fn, make_inputs, _ = LAYERS[name]
    inputs = [x.to(DEVICE) for x in make_inputs(torch.Generator().manual_seed(0), torch.float32)]
    lin_a, bn_a = (m.to(DEVICE) for m in make_layer(name))
    bn_a.train(training)
    lin_b, bn_b = copy.deepcopy(lin_a), copy.deepcopy(bn_a)
    xa = [x.clone().requires_grad_() for x in inputs]
    xb = [x.clone().requires_grad_() for x in inputs]
    ya, yb = fused_fn(xa, lin_a, bn_a), plain_fn(xb, lin_b, bn_b)
    assert ya.device.type == DEVICE.type
    tol = dict(rtol=2e-4, atol=2e-5)
    torch.testing.assert_close(ya, yb, **tol)
    w = torch.randn(ya.shape, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    (ya * w).sum().backward()
    (yb * w).sum().backward()
    for a, b in list(zip(xa, xb)) + [(getattr(ma, p), getattr(mb, p)) for ma, mb in [(lin_a, lin_b), (bn_a, bn_b)]
                                     for p in ("weight", "bias")]:
        torch.testing.assert_close(a.grad, b.grad, **tol)
    if bn_a.running_mean is not None:
        torch.testing.assert_close(bn_a.running_mean, bn_b.running_mean, **tol)
        torch.testing.assert_close(bn_a.running_var, bn_b.running_var, **tol)


def _model_pair(config: ModelConfig) -> tuple[AtlasNet, AtlasNet]:
    torch.manual_seed(0)
    fused = AtlasNet(config, fused=True).to(DEVICE).train()
    plain = AtlasNet(config, fused=False).to(DEVICE).train()
    plain.load_state_dict(fused.state_dict())
    return fused, plain


def test_the_fused_model_matches_the_plain_one_on_the_gpu() -> None:
    """The whole model, forward and backward, in float64 (as tests/atlas_core/test_model.py
    checks it on the CPU: in float32 a rounding can swap a Chamfer neighbour or a max)."""
    config = ModelConfig(n_patches=5, bottleneck=64, hidden=64, layers=2, n_points=500)
    fused, plain = (m.double() for m in _model_pair(config))
    x = (torch.rand(6, 500, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64) - 0.5).to(DEVICE)
    losses = []
    for model in (fused, plain):
        pred = model(x, generator=torch.Generator(device=DEVICE).manual_seed(0))
        loss = chamfer_distance(pred, x)
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-9, atol=1e-11)
    for (name, a), (_, b) in zip(fused.named_parameters(), plain.named_parameters()):
        assert a.grad is not None and b.grad is not None, name
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-7, atol=1e-9, msg=name)


def test_bf16_autocast_trains_close_to_fp32() -> None:
    """Under bf16 autocast the fused layers give way to the plain ones (autocast's products in
    bf16); the loss is fp32's within bf16's coarseness (an 8-bit mantissa moves the untrained
    model's points by a few thousandths, a Chamfer of ~0.1 by ~10%: measured on the CPU's
    autocast), and Adam steps lower it."""
    config = ModelConfig(n_patches=5, bottleneck=64, hidden=64, layers=2, n_points=500)
    model, _ = _model_pair(config)
    x = (torch.rand(8, 500, 3, generator=torch.Generator().manual_seed(2)) - 0.5).to(DEVICE)

    def loss_of(bf16: bool) -> torch.Tensor:
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=bf16):
            pred = model(x, generator=torch.Generator(device=DEVICE).manual_seed(0))
            if bf16:
                assert pred.dtype == torch.bfloat16
            return chamfer_distance(pred.float(), x)

    fp32, bf16 = loss_of(False), loss_of(True)
    assert torch.isfinite(bf16) and abs(bf16.item() - fp32.item()) / fp32.item() < 0.25, (fp32.item(), bf16.item())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = None
    for _ in range(30):
        loss = loss_of(True)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        optimizer.step()
        first = loss.item() if first is None else first
    assert first is not None and loss.item() < 0.9 * first, (first, loss.item())


def test_training_on_the_gpu_writes_checkpoints_that_load_on_the_cpu() -> None:
    config = tiny(epochs=3, checkpoint_every=1, val_fraction=0.2, keep_best=True)
    config.device = str(DEVICE)
    states: list[bytes] = []
    result = train(config, blobs(), TrainCallbacks(on_checkpoint=lambda event: states.append(event.state)))
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in result.history)
    assert next(result.model.parameters()).device.type == DEVICE.type
    model, loaded, _ = load_model(states[-1], "cpu")
    assert loaded.device == str(DEVICE)
    with torch.no_grad():
        points = model(torch.rand(2, 96, 3), generator=torch.Generator().manual_seed(0))
    assert points.shape == (2, 96, 3) and torch.isfinite(points).all()


@pytest.mark.skipif(GPUS < 2, reason="needs two GPUs")
def test_two_nccl_ranks_train_what_one_process_trains(tmp_path: Path) -> None:
    """float64 (NCCL reduces it), torch's SyncBatchNorm on CUDA: the loss after 20 steps within
    1e-4 relative of one process's."""
    data = blobs()
    single_config = tiny()
    single_config.device = str(DEVICE)
    with float64():
        single = train(single_config, data)
    config = tiny(devices=2)
    config.device = str(DEVICE)
    distributed.spawn(_train_rank, 2, config.to_dict(), data, tmp_path, device=str(DEVICE))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    one, two = single.history[-1]["train_loss"], ranks[0]["history"][-1]["train_loss"]
    assert abs(two - one) / one < 1e-4, (one, two)
