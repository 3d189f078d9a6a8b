"""
Data-parallel training on the CPU (gloo): is it the same training, and what does it cost?

    python -m benchmarks.ddp                   # both figures
    python -m benchmarks.ddp --only equivalence
    python -m benchmarks.ddp --only scaling --steps 4

Equivalence: 20 swords, batch 4, a tiny AtlasNet, 4 epochs (20 steps), seed 0; the training
loss of the last epoch (its 5 steps' mean; the 20th step's included) with 2 gloo ranks against
one process (the default: the fused kernels). In float64 the difference is float rounding
carried through 20 steps; in float32 it is what 20 steps make of float32 rounding, and the row
below it shows the same for one process alone: its initial weights changed by one rounding
(2^-24 relative), 20 steps later. A 2-rank run computes each batch differently (two halves,
the plain layers, the statistics and gradients summed over ranks), so in float32 it may differ
as much as that, and no more is to be expected of it.

Scaling: the step time of the paper's configuration (`TrainConfig.reference()`: batch 32,
2,500 points, 25 patches, bottleneck 1024) with one process of 2 threads (the fused kernels)
against 2 processes of 1 thread each (gloo; each rank computes 16 shapes with the plain layers
and BatchNorm synchronised over both). Each row is the median of `--steps` steps of
`atlas_core.train.train` after a warm-up step, each rank in a fresh process. The machine is
shared with other work: the load average before and after each row is printed beside it;
compare rows taken at a similar load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from atlas_core import distributed
from atlas_core.config import ModelConfig, TrainConfig
from atlas_core.data import PointCloudSet
from atlas_core.mesh_io import shape_from_mesh
from atlas_core.model import AtlasNet
from atlas_core.swords import generate_swords
from atlas_core.train import TrainCallbacks, train

EQUIVALENCE_STEPS = 20


def _swords(count: int, points: int) -> PointCloudSet:
    shapes = [shape_from_mesh(mesh, name, points, seed=i) for i, (name, mesh, _) in enumerate(generate_swords(count))]
    return PointCloudSet.from_shapes(shapes)


def _equivalence_config(devices: int = 1) -> TrainConfig:
    """20 training shapes at batch 4: 5 steps an epoch, 20 in 4 epochs."""
    model = ModelConfig(n_patches=3, bottleneck=16, hidden=16, layers=1, n_points=96)
    return TrainConfig(model=model, epochs=EQUIVALENCE_STEPS // 5, batch_size=4, checkpoint_every=100,
                       val_fraction=0.0, keep_best=False, devices=devices)


def _last_loss(rank: int, config: dict, data: PointCloudSet, dtype: str, out: Path,
               init: dict[str, torch.Tensor] | None = None) -> None:
    torch.set_default_dtype(getattr(torch, dtype))
    result = train(TrainConfig.from_dict(config), data, init_weights=init)
    if rank == 0:
        (out / f"loss-{dtype}-{config['devices']}").write_text(repr(result.history[-1]["train_loss"]))


def equivalence() -> None:
    data = _swords(20, 300)
    print(f"equivalence: {EQUIVALENCE_STEPS} steps (20 swords, batch 4, tiny AtlasNet, seed 0); the last "
          "epoch's loss, 2 gloo ranks against 1 process")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        single: dict[str, float] = {}
        for dtype in ("float64", "float32"):
            for devices in (1, 2):
                distributed.spawn(_last_loss, devices, _equivalence_config(devices).to_dict(), data, dtype, out,
                                  threads=2 // devices)
            one, two = (float((out / f"loss-{dtype}-{d}").read_text()) for d in (1, 2))
            single[dtype] = one
            print(f"  {dtype}   1 process {one:.10f}   2 ranks {two:.10f}   relative difference {abs(two - one) / one:.1e}")
        # One process against itself, its initial weights changed by one float32 rounding.
        config = _equivalence_config()
        torch.manual_seed(config.seed)
        init = AtlasNet(config.model).state_dict()
        generator = torch.Generator().manual_seed(1)
        nudged = {k: v * (1 + 2.0 ** -24 * torch.randn(v.shape, generator=generator)) if v.is_floating_point() else v
                  for k, v in init.items()}
        distributed.spawn(_last_loss, 1, config.to_dict(), data, "float32", out, nudged, threads=2)
        nudged_loss = float((out / "loss-float32-1").read_text())
        one = single["float32"]
        print(f"  float32   the same process, initial weights nudged by 2^-24 relative: relative difference "
              f"{abs(nudged_loss - one) / one:.1e} (float32's own noise after {EQUIVALENCE_STEPS} steps)")


def _timed_steps(rank: int, config: dict, data: PointCloudSet, out: Path) -> None:
    times: list[float] = []
    callbacks = TrainCallbacks(on_step=lambda: times.append(time.perf_counter())) if rank == 0 else None
    train(TrainConfig.from_dict(config), data, callbacks)
    if rank == 0:
        (out / f"steps-{config['devices']}").write_text(" ".join(repr(t) for t in times))


def _plain_steps(rank: int, config: dict, data: PointCloudSet, steps: int, out: Path) -> None:
    """What each rank computes, in one process on the whole batch: the plain layers' steps
    (forward, Chamfer, backward, Adam), timed the same way; it splits the 2-rank row's cost
    between the plain layers and the ranks' communication and halved batches."""
    from atlas_core.chamfer import chamfer_distance

    cfg = TrainConfig.from_dict(config)
    torch.manual_seed(cfg.seed)
    model = AtlasNet(cfg.model, fused=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    generator = torch.Generator().manual_seed(0)
    times = []
    for step in range(steps + 1):
        x = torch.from_numpy(data.points[step * cfg.batch_size:(step + 1) * cfg.batch_size])
        loss = chamfer_distance(model(x, generator=generator), x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter())
    (out / "steps-plain").write_text(" ".join(repr(t) for t in times))


def scaling(steps: int) -> None:
    reference = TrainConfig.reference()
    # steps + 1 full batches (the first is the warm-up) and about 2% held out (validated once).
    count = (steps + 2) * reference.batch_size
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(count, reference.model.n_points, 3))
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    clouds = (directions * rng.uniform(0.2, 1.0, size=(count, 1, 3))).astype(np.float32)
    data = PointCloudSet(names=[f"blob_{i}" for i in range(count)], points=clouds,
                         normals=directions.astype(np.float32), centers=np.zeros((count, 3)),
                         scales=np.ones(count), source_sha256=[f"{i:064x}" for i in range(count)])
    print(f"CPU scaling: TrainConfig.reference() (batch 32, 2,500 points, 25 patches, bottleneck 1024), "
          f"median of {steps} steps after a warm-up step")
    print("  (a shared machine: the 1-minute load average before and after each row is beside it)")
    rows = ((1, 2, "1 process  x 2 threads (fused kernels)"),
            (2, 1, "2 processes x 1 thread (gloo, plain layers, synchronised BatchNorm)"),
            (0, 2, "for the split: 1 process x 2 threads, the plain layers"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for devices, threads, label in rows:
            config = TrainConfig.reference()
            config.epochs, config.val_fraction, config.checkpoint_every, config.devices = 1, 0.02, 100, max(1, devices)
            before = os.getloadavg()[0]
            if devices:
                distributed.spawn(_timed_steps, devices, config.to_dict(), data, out, threads=threads)
            else:
                distributed.spawn(_plain_steps, 1, config.to_dict(), data, steps, out, threads=threads)
            after = os.getloadavg()[0]
            stamps = [float(t) for t in (out / f"steps-{devices or 'plain'}").read_text().split()]
            # A step's time: between the ends of consecutive steps (the first step is the
            # warm-up); the last batch, which may be larger, is left out.
            durations = np.diff(stamps)[:steps]
            print(f"  {label:<70} {statistics.median(durations):6.2f} s/step "
                  f"({min(durations):.2f} to {max(durations):.2f})   load {before:.1f} -> {after:.1f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ddp", description=__doc__.splitlines()[1])
    parser.add_argument("--only", choices=("equivalence", "scaling"), default=None)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per scaling row")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f}")
    if args.only in (None, "equivalence"):
        equivalence()
    if args.only in (None, "scaling"):
        scaling(args.steps)


if __name__ == "__main__":
    main()
