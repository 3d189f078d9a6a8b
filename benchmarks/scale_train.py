"""Training past a few thousand shapes: one epoch of a small model (4 patches, 256 points per
step, bottleneck and width 64, batches of 32) on 2,000 versus 20,000
generated shapes, each registered through the real dataset path (shards and a manifest in a
fresh RODIN_HOME) and trained in a fresh process that opens the version as a worker does
(`orchestrator.datasets.open_version` through the machine's shard cache), so that the peak
memory (ru_maxrss) is the training process's own.

    python -m benchmarks.scale train [--quick] [--sizes 2000,20000] [--points 1000] [--home DIR]

The shapes are random perturbations (anisotropic scale, a turn, noise) of a few procedural
swords: generated in seconds, each with its own identity. Figures, not a test: other work on the
machine moves the times (see the load average printed with them).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def generated(count: int, points: int, seed: int = 0) -> Any:
    """`count` shapes: perturbed copies of 8 procedural swords, each normalised to the unit ball."""
    import numpy as np

    from atlas_core.data import PointCloudSet
    from atlas_core.families import generate_family

    base = generate_family("swords", 8, seed, points)
    rng = np.random.default_rng(seed)
    pts = np.empty((count, points, 3), np.float32)
    for start in range(0, count, 1000):
        n = min(1000, count - start)
        pick = rng.integers(0, len(base), n)
        scale = rng.uniform(0.7, 1.3, (n, 1, 3)).astype(np.float32)
        angle = rng.uniform(0, 2 * np.pi, n)
        c, s = np.cos(angle), np.sin(angle)
        turn = np.zeros((n, 3, 3), np.float32)
        turn[:, 0, 0], turn[:, 0, 2], turn[:, 1, 1], turn[:, 2, 0], turn[:, 2, 2] = c, s, 1, -s, c
        x = np.einsum("npi,nij->npj", base.points[pick] * scale, turn)
        x += rng.normal(0, 0.005, x.shape).astype(np.float32)
        x -= x.mean(1, keepdims=True)
        x /= np.linalg.norm(x, axis=2).max(1)[:, None, None]
        pts[start:start + n] = x
    names = [f"perturbed-{i:06d}" for i in range(count)]
    return PointCloudSet(names=names, points=pts, normals=np.repeat(base.normals[:1], count, 0),
                         centers=np.zeros((count, 3)), scales=np.ones(count),
                         source_sha256=[hashlib.sha256(f"{seed}:{n}".encode()).hexdigest() for n in names])


def register(home: Path, count: int, points: int) -> str:
    from orchestrator import datasets
    from orchestrator.artifacts import open_store
    from orchestrator.settings import load_settings

    settings = load_settings({"RODIN_HOME": str(home)})
    data = generated(count, points)
    return str(datasets.register_dataset(settings, open_store(settings), f"perturbed-{count}", data,
                                         f"benchmarks.scale_train ({count} shapes)", [])["ref"])


def child(home: str, ref: str) -> None:
    """One training process: open the version as a worker does, one epoch, print the figures."""
    from atlas_core.config import TrainConfig
    from atlas_core.train import train
    from orchestrator import datasets
    from orchestrator.artifacts import open_store
    from orchestrator.registry.db import session_scope
    from orchestrator.registry.queries import resolve_dataset
    from orchestrator.settings import load_settings
    from orchestrator.shard_cache import ShardCache

    settings = load_settings({"RODIN_HOME": home})
    store = open_store(settings)
    with session_scope(settings) as s:
        row = resolve_dataset(s, ref)
        uri, sha256 = row.artifact_uri, row.artifact_sha256
    started = time.perf_counter()
    data = datasets.open_version(store, uri, sha256, ShardCache.for_settings(settings, store))
    config = TrainConfig.cpu().with_overrides(epochs=1, checkpoint_every=1, n_patches=4, n_points=256,
                                              bottleneck=64, hidden=64, batch_size=32)
    result = train(config, data)
    total = time.perf_counter() - started
    epoch = result.history[0]["seconds"]
    print(json.dumps({"shapes": len(data), "epoch_s": epoch, "total_s": total,
                      "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "hwm_mb": _vm_hwm_mb()}))


def _vm_hwm_mb() -> float:
    """This process image's peak RSS (VmHWM). Linux keeps ru_maxrss across fork and exec, so a
    child of a large process reports its parent's peak there; VmHWM starts afresh at exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _run(*args: str) -> str:
    """A mode of this module in a fresh process (the parent stays small: see _vm_hwm_mb)."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.scale_train", *args], capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"benchmarks.scale_train {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return out.stdout.strip().splitlines()[-1]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="benchmarks.scale train")
    parser.add_argument("--quick", action="store_true", help="500 and 5,000 shapes")
    parser.add_argument("--sizes", default=None, help="comma list of shape counts (default 2000,20000)")
    parser.add_argument("--points", type=int, default=1000, help="points per shape (default 1000)")
    parser.add_argument("--home", type=Path, default=None, help="RODIN_HOME to use (default: a temporary one)")
    parser.add_argument("--child", nargs=2, metavar=("HOME", "REF"), help=argparse.SUPPRESS)
    parser.add_argument("--register", nargs=2, metavar=("HOME", "COUNT"), help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args(argv)
    if args.child:
        child(*args.child)
        return
    if args.register:
        print(register(Path(args.register[0]), int(args.register[1]), args.points))
        return
    sizes = [int(x) for x in (args.sizes or ("500,5000" if args.quick else "2000,20000")).split(",")]
    with tempfile.TemporaryDirectory(prefix="rodin-scale-train-") as tmp:
        home = args.home or Path(tmp)
        rows = []
        for count in sizes:
            t0 = time.perf_counter()
            ref = _run("--register", str(home), str(count), "--points", str(args.points))
            registered = time.perf_counter() - t0
            row = json.loads(_run("--child", str(home), ref))
            row["register_s"] = registered
            row["load"] = os.getloadavg()[0]
            rows.append(row)
    print(f"{'shapes':>8} {'points':>6} {'register s':>10} {'epoch s':>8} {'ms/shape':>8} "
          f"{'ru_maxrss MB':>12} {'VmHWM MB':>8} {'load':>5}")
    for r in rows:
        print(f"{r['shapes']:>8} {args.points:>6} {r['register_s']:>10.1f} {r['epoch_s']:>8.1f} "
              f"{1000 * r['epoch_s'] / r['shapes']:>8.2f} {r['maxrss_mb']:>12.0f} {r['hwm_mb']:>8.0f} {r['load']:>5.2f}")
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        per_a, per_b = a["epoch_s"] / a["shapes"], b["epoch_s"] / b["shapes"]
        print(f"peak memory {b['shapes']} vs {a['shapes']} shapes: {b['maxrss_mb'] - a['maxrss_mb']:+.0f} MB "
              f"(goal: under 200); time per shape {100 * (per_b / per_a - 1):+.1f}% (goal: within 10%)")


if __name__ == "__main__":
    main(sys.argv[1:])
