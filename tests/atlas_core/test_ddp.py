"""Data-parallel training on the CPU with gloo: N ranks train what one process trains.

The equivalence is checked in float64. In float32, AtlasNet's training at these sizes turns a
float rounding into percents of the loss within 20 steps whichever way a batch is computed
(one process with the fused kernels and one with the plain layers differ by as much:
`python -m benchmarks.ddp` prints both figures), so a float32 comparison would test the
rounding, not the algorithm (the global batch's statistics, gradients and loss).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from atlas_core import distributed
from atlas_core.config import ModelConfig, TrainConfig
from atlas_core.data import PointCloudSet
from atlas_core.train import TrainCallbacks, _batches, _no_single_batches, train


def blobs(count: int = 20, points: int = 200, seed: int = 0) -> PointCloudSet:
    """`count` random ellipsoids of `points` surface points each, of different sizes and
    places: shapes that differ enough that BatchNorm over a few latent codes stays well
    conditioned (near-equal shapes make training chaotic: a float rounding grows to percents)."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(count, points, 3))
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    clouds = (directions * rng.uniform(0.1, 1.0, size=(count, 1, 3))
              + rng.uniform(-0.5, 0.5, size=(count, 1, 3))).astype(np.float32)
    return PointCloudSet(names=[f"blob_{i}" for i in range(count)], points=clouds, normals=directions.astype(np.float32),
                         centers=np.zeros((count, 3)), scales=np.ones(count),
                         source_sha256=[f"{i:064x}" for i in range(count)])


def tiny(**overrides) -> TrainConfig:  # type: ignore[no-untyped-def]
    """20 shapes, batch 4, no held-out shapes: 5 steps an epoch, so 4 epochs are 20 steps."""
    model = ModelConfig(n_patches=3, bottleneck=16, hidden=16, layers=1, n_points=96)
    settings = dict(epochs=4, batch_size=4, checkpoint_every=100, val_fraction=0.0, keep_best=False)
    return TrainConfig(model=model, **{**settings, **overrides})


def _weights(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.detach().flatten().double() for k, v in sorted(state.items()) if v.is_floating_point()])


@contextmanager
def float64() -> Iterator[None]:
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def _train_rank(rank: int, config: dict, data: PointCloudSet, out: Path) -> None:
    torch.set_default_dtype(torch.float64)
    result = train(TrainConfig.from_dict(config), data)
    torch.save({"history": result.history, "state": result.model.state_dict(),
                "final_epoch": result.final_epoch}, out / f"rank{rank}.pt")


def test_two_gloo_ranks_train_what_one_process_trains(tmp_path: Path) -> None:
    data = blobs()
    with float64():
        single = train(tiny(), data)  # the default: one process, the fused kernels
    distributed.spawn(_train_rank, 2, tiny(devices=2).to_dict(), data, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    # The loss after 20 steps (the last epoch's mean over its 5 steps) within 1e-4 relative.
    one, two = single.history[-1]["train_loss"], ranks[0]["history"][-1]["train_loss"]
    assert abs(two - one) / one < 1e-4, (one, two)
    for ours, theirs in zip(single.history, ranks[0]["history"]):
        assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-4)
        assert ours["val_chamfer"] == pytest.approx(theirs["val_chamfer"], rel=1e-4)
    # Both ranks hold the same weights and running statistics, those of the single process.
    w0, w1 = _weights(ranks[0]["state"]), _weights(ranks[1]["state"])
    assert torch.equal(w0, w1)
    reference = _weights(single.model.state_dict())
    assert float((w0 - reference).abs().max()) < 1e-6 * float(reference.abs().max())
    assert [h["val_chamfer"] for h in ranks[1]["history"]] == [h["val_chamfer"] for h in ranks[0]["history"]]
    # The weights load into the plain (single-process) model.
    from atlas_core.model import AtlasNet

    AtlasNet(tiny().model).load_state_dict(ranks[0]["state"])


def _batchnorm_rank(rank: int, out: Path) -> None:
    torch.manual_seed(0)
    rows, channels = torch.randn(10, 6, dtype=torch.float64) * 3 + 1, torch.randn(1, 6, 14, dtype=torch.float64)
    grads = torch.randn(10, 6, dtype=torch.float64), torch.randn(1, 6, 14, dtype=torch.float64)
    results = {}
    for name, x, g, (start, stop) in (("rows", rows, grads[0], (0, 4) if rank == 0 else (4, 10)),
                                      ("channels", channels, grads[1], (0, 5) if rank == 0 else (5, 14))):
        bn = distributed.sync_batchnorm(nn.BatchNorm1d(6).double(), "cpu")
        assert isinstance(bn, distributed.SyncBatchNorm)
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-1, 1)
        part = (x[start:stop] if name == "rows" else x[..., start:stop]).clone().requires_grad_()
        y = bn(part)
        (y * (g[start:stop] if name == "rows" else g[..., start:stop])).sum().backward()
        assert bn.weight.grad is not None and bn.bias.grad is not None
        results[name] = {"y": y.detach(), "grad": part.grad, "weight_grad": bn.weight.grad.clone(),
                         "bias_grad": bn.bias.grad.clone(), "mean": bn.running_mean.clone(),
                         "var": bn.running_var.clone()}
    torch.save(results, out / f"bn{rank}.pt")


def test_sync_batchnorm_takes_the_global_batch_statistics_and_their_gradients(tmp_path: Path) -> None:
    """Two ranks holding parts of a batch compute what nn.BatchNorm1d computes on the whole one:
    the output, the input's gradient, the parameters' gradients (summed over ranks, as DDP's
    all-reduce does before averaging) and the running statistics."""
    distributed.spawn(_batchnorm_rank, 2, tmp_path)
    parts = [torch.load(tmp_path / f"bn{r}.pt") for r in range(2)]
    torch.manual_seed(0)
    rows, channels = torch.randn(10, 6, dtype=torch.float64) * 3 + 1, torch.randn(1, 6, 14, dtype=torch.float64)
    grads = torch.randn(10, 6, dtype=torch.float64), torch.randn(1, 6, 14, dtype=torch.float64)
    for name, x, g, axis in (("rows", rows, grads[0], 0), ("channels", channels, grads[1], 2)):
        bn = nn.BatchNorm1d(6).double()
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-1, 1)
        x = x.clone().requires_grad_()
        y = bn(x)
        (y * g).sum().backward()
        assert x.grad is not None and bn.weight.grad is not None and bn.bias.grad is not None
        ours = [p[name] for p in parts]
        torch.testing.assert_close(torch.cat([o["y"] for o in ours], axis), y.detach())
        torch.testing.assert_close(torch.cat([o["grad"] for o in ours], axis), x.grad)
        torch.testing.assert_close(ours[0]["weight_grad"] + ours[1]["weight_grad"], bn.weight.grad)
        torch.testing.assert_close(ours[0]["bias_grad"] + ours[1]["bias_grad"], bn.bias.grad)
        for o in ours:
            torch.testing.assert_close(o["mean"], bn.running_mean)
            torch.testing.assert_close(o["var"], bn.running_var)


def test_the_global_batch_splits_alike_on_every_rank() -> None:
    batch = torch.arange(7)
    parts = [distributed.batch_part(batch, 3, r) for r in range(3)]
    assert [p.tolist() for p in parts] == [[0, 1, 2], [3, 4], [5, 6]]
    assert [distributed.part_bounds(8, 2, r) for r in range(2)] == [(0, 4), (4, 8)]
    # A batch smaller than the devices joins the one before it: every rank gets a shape.
    generator = torch.Generator().manual_seed(0)
    assert [len(b) for b in _batches(10, 4, generator, min_size=4)] == [4, 6]
    assert [len(b) for b in _batches(10, 4, generator)] == [4, 4, 2]
    assert [len(b) for b in _batches(3, 4, generator, min_size=4)] == [6]
    items = (np.zeros(1) for _ in range(10))
    assert [len(b) for b in _no_single_batches(items, 4, min_size=4)] == [4, 6]


def test_devices_are_validated_and_checked_against_the_process_group() -> None:
    with pytest.raises(ValueError, match="batch size 6 is not divisible by the 4 devices"):
        tiny(batch_size=6, devices=4).validate()
    with pytest.raises(ValueError, match=r"batch size 6 is not divisible by the 4 devices \(2 node\(s\) x 2\)"):
        tiny(batch_size=6, devices=2, nodes=2).validate()
    with pytest.raises(ValueError, match="devices must be >= 1"):
        tiny(devices=0).validate()
    with pytest.raises(ValueError, match="nodes must be >= 1"):
        tiny(nodes=0).validate()
    assert tiny(batch_size=8, devices=4).device_batch == 2
    assert tiny(batch_size=8, devices=2, nodes=2).device_batch == 2
    with pytest.raises(ValueError, match="start 2 ranks in a process group"):
        train(tiny(devices=2), blobs(4))
    with pytest.raises(ValueError, match="start 4 ranks in a process group"):
        train(tiny(devices=2, nodes=2, batch_size=8), blobs(4))
    assert TrainConfig.from_dict({k: v for k, v in tiny().to_dict().items() if k != "devices"}).devices == 1
    assert TrainConfig.from_dict({k: v for k, v in tiny().to_dict().items() if k != "nodes"}).nodes == 1


def test_only_rank_0_takes_the_callbacks_that_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """A helper rank given on_epoch/on_checkpoint is refused before any collective (it would
    report or register a second time); on_step, which writes nothing, is allowed."""
    monkeypatch.setattr(distributed, "world", lambda: (1, 2))
    for callbacks in (TrainCallbacks(on_epoch=lambda s: None), TrainCallbacks(on_checkpoint=lambda e: None)):
        with pytest.raises(ValueError, match="rank 1 was given on_epoch/on_checkpoint callbacks"):
            train(tiny(devices=2), blobs(8), callbacks)
