"""A 4-job sweep on one machine over one dataset: bytes fetched from the artifact store.

One sharded version is registered through the real dataset path in a fresh RODIN_HOME; then 4
job processes start at once, as a sweep's 4 jobs would on one machine's workers, and each
loads the dataset as a training job does (`orchestrator.datasets.open_version` through the
machine's shard cache, then every shard read, one epoch's worth). Each process counts what it
read from the store (a counting store, independent of the cache's own counters). This is the
jobs' dataset loading run faithfully in 4 processes, not 4 real Celery workers (which would
also train: minutes of CPU on a shared machine for the same figure). The same 4 processes with
no cache (each reading from the store, as before shards) are the baseline.

    python -m benchmarks.scale fetch [--quick] [--shapes 2000] [--points 1000] [--shard-mb 8]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

JOBS = 4


def _job(home: str, uri: str, sha256: str, use_cache: bool, start: Any, out: Any) -> None:
    from orchestrator import datasets
    from orchestrator.artifacts import ArtifactStore
    from orchestrator.settings import load_settings
    from orchestrator.shard_cache import ShardCache

    class CountingStore(ArtifactStore):
        fetched = 0

        def get_bytes(self, uri: str, sha256: str) -> bytes:
            data = super().get_bytes(uri, sha256)
            self.fetched += len(data)
            return data

    settings = load_settings({"RODIN_HOME": home})
    store = CountingStore(settings.artifact_root, settings.storage_options)
    cache = ShardCache.for_settings(settings, store) if use_cache else None
    start.wait()
    t0 = time.perf_counter()
    data = datasets.open_version(store, uri, sha256, cache)
    shapes = sum(len(data.read_points(b)) for b in range(len(data.blocks())))
    out.put((store.fetched, shapes, time.perf_counter() - t0))


def sweep(home: Path, uri: str, sha256: str, use_cache: bool) -> list[tuple[int, int, float]]:
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_job, args=(str(home), uri, sha256, use_cache, start, out)) for _ in range(JOBS)]
    for p in procs:
        p.start()
    time.sleep(2.0)  # every process imported and waiting: they start together
    start.set()
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    return results


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="benchmarks.scale fetch")
    parser.add_argument("--quick", action="store_true", help="500 shapes")
    parser.add_argument("--shapes", type=int, default=None, help="shapes in the dataset (default 2000)")
    parser.add_argument("--points", type=int, default=1000, help="points per shape (default 1000)")
    parser.add_argument("--shard-mb", type=float, default=8.0, help="shard size in MiB (default 8)")
    args, _ = parser.parse_known_args(argv)
    from benchmarks.scale_train import generated
    from orchestrator import datasets
    from orchestrator.artifacts import open_store
    from orchestrator.registry.db import session_scope
    from orchestrator.registry.queries import resolve_dataset
    from orchestrator.settings import load_settings

    count = args.shapes or (500 if args.quick else 2000)
    with tempfile.TemporaryDirectory(prefix="rodin-scale-fetch-") as tmp:
        home = Path(tmp)
        settings = load_settings({"RODIN_HOME": str(home)})
        store = open_store(settings)
        ref = datasets.register_dataset(settings, store, "sweep-data", generated(count, args.points), "benchmark",
                                        [], shard_bytes=int(args.shard_mb * 2**20))["ref"]
        with session_scope(settings) as s:
            row = resolve_dataset(s, str(ref))
            uri, sha256 = row.artifact_uri, row.artifact_sha256
        info = datasets.storage(store, uri, sha256)
        size = info["stored_bytes"] + info["manifest_bytes"]
        print(f"dataset {ref}: {count} shapes x {args.points} points, {info['shards']} shards, "
              f"{size / 2**20:.1f} MiB (manifest included); {JOBS} job processes at once, load "
              f"{os.getloadavg()[0]:.2f}")
        print(f"{'cache':>6} {'fetched MiB':>11} {'x dataset':>9} {'per job MiB':>24} {'slowest s':>9}")
        for use_cache in (False, True):
            rows = sweep(home, uri, sha256, use_cache)
            fetched = sum(r[0] for r in rows)
            assert all(r[1] == count for r in rows), rows
            per_job = " ".join(f"{r[0] / 2**20:.1f}" for r in rows)
            print(f"{'on' if use_cache else 'off':>6} {fetched / 2**20:>11.1f} {fetched / size:>9.2f} "
                  f"{per_job:>24} {max(r[2] for r in rows):>9.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
