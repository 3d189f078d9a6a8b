"""The queue's figures (not a test): dispatch latency, throughput, and `rodin status` start-up.

    python -m benchmarks.queue_throughput            # a table
    python -m benchmarks.queue_throughput --json     # one JSON object

For each broker (Redis with a PostgreSQL registry, started here from their binaries as the tests
do; and the embedded `filesystem://` broker with SQLite) two warm workers serve tiny real training
jobs (1 epoch, 4 swords, 32 points):

- dispatch: from `rodin submit train` returning to the job starting on an idle, warm worker
  (the job's `started_at` in the registry, written by the worker when it claims the job), one
  job at a time; also from the job row's `created_at` (inside `rodin submit`) to `started_at`.
  All timestamps come from this machine's clock, as UTC.
- throughput: 200 such jobs queued at once (through the same code as `rodin submit`, from one
  process) and run by the 2 workers: jobs per second from the first submission to the last job
  finishing, and the mean time one job spent running.
- `rodin status` cold start: the median wall time of fresh `rodin status` processes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path

from tests.servers import ServerUnavailable, postgres_server, redis_server

TINY = dict(epochs=1, n_patches=1, template="square", n_points=32, batch_size=4, lr=1e-3,
            bottleneck=8, hidden=8, layers=1, val_fraction=0.25, checkpoint_every=1, seed=0)
TINY_FLAGS = ["--epochs", "1", "--patches", "1", "--points", "32", "--bottleneck", "8",
              "--hidden", "8", "--layers", "1", "--batch-size", "4", "--val-fraction", "0.25",
              "--checkpoint-every", "1"]
RODIN_VARS = ("RODIN_HOME", "RODIN_DATABASE_URL", "RODIN_BROKER_URL", "RODIN_ARTIFACTS_URL",
              "RODIN_CONFIG", "RODIN_DEVICE", "RODIN_WORKER_NAME")


def _env(home: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in RODIN_VARS}
    return {**env, "RODIN_HOME": str(home), "PYTHONUNBUFFERED": "1", **extra}


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], env=env,
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"rodin {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def _settings(env: dict[str, str]):  # type: ignore[no-untyped-def]
    from orchestrator.settings import load_settings

    return load_settings(env)


def _epoch(moment: datetime | None) -> float:
    from orchestrator.registry.db import as_utc

    return as_utc(moment).timestamp()  # type: ignore[union-attr]


def _jobs(env: dict[str, str], ids: list[int]):  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from orchestrator.registry.db import session_scope
    from orchestrator.registry.models import Job

    with session_scope(_settings(env)) as s:
        return {j.id: (j.status, j.created_at, j.started_at, j.finished_at, j.error)
                for j in s.scalars(select(Job).where(Job.id.in_(ids)))}


#: The running workers; a benchmark whose worker died says so instead of waiting forever.
_POOLS: list = []


def _wait_done(env: dict[str, str], ids: list[int], timeout: float = 1800, poll: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        for pool in _POOLS:
            pool.check()
        rows = _jobs(env, ids)
        if len(rows) == len(ids) and all(r[0] in ("succeeded", "failed", "cancelled")
                                         for r in rows.values()):
            failed = {i: r[4] for i, r in rows.items() if r[0] != "succeeded"}
            if failed:
                raise RuntimeError(f"benchmark jobs failed: {failed}")
            return rows
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs did not finish: {ids}")
        time.sleep(poll)


class Workers:
    """Worker processes; on a shared broker each has its own RODIN_HOME (its own machine), on the
    embedded one they share the client's (one machine)."""

    def __init__(self, root: Path, extra: dict[str, str], count: int, home: Path | None):
        self.procs = []
        for i in range(count):
            name = f"bench{i + 1}"
            folder = root / name
            folder.mkdir(parents=True)
            env = {**_env(home or folder, extra), "OMP_NUM_THREADS": "1"}
            log = (folder / "worker.log").open("ab")
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "orchestrator.cli", "worker", "--hostname", name,
                 "--device", "cpu", "--queues", "train,infer", "--loglevel", "WARNING"],
                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=folder))
        self.names = [f"bench{i + 1}" for i in range(count)]

    def check(self) -> None:
        dead = [n for n, p in zip(self.names, self.procs) if p.poll() is not None]
        if dead:
            raise RuntimeError(f"benchmark worker(s) {dead} exited; see their worker.log")

    def wait_ready(self, env: dict[str, str], timeout: float = 120) -> None:
        from orchestrator.registry.db import session_scope
        from orchestrator.registry.queries import live_workers

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with session_scope(_settings(env)) as s:
                if set(self.names) <= {w.hostname for w in live_workers(s, 30)}:
                    return
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError("a benchmark worker exited while starting")
            time.sleep(0.2)
        raise TimeoutError("benchmark workers did not start")

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()


def _submit_in_process(env: dict[str, str], dataset: str, count: int,
                       stamp: str = "start") -> tuple[float, list[int]]:
    """What `rodin submit train` does, for many jobs from one process: rows, then the messages.

    Returns the time before the first row (stamp="start") or after the last message was handed
    to the broker (stamp="sent"), and the job ids."""
    from orchestrator.queue import make_app
    from orchestrator.registry.db import session_scope
    from orchestrator.registry.models import Job, JobKind
    from orchestrator.registry.queries import resolve_dataset

    settings = _settings(env)
    config = _tiny_config()
    app = make_app(settings)
    start = time.time()
    ids = []
    with session_scope(settings) as s:
        ds = resolve_dataset(s, dataset)
        jobs = [Job(kind=JobKind.train.value, dataset_id=ds.id,
                    params={"config": config, "dataset": ds.ref}) for _ in range(count)]
        s.add_all(jobs)
        s.flush()
        ids = [j.id for j in jobs]
    with app.producer_or_acquire() as producer:
        task_ids = {}
        for job_id in ids:
            task_ids[job_id] = app.send_task("rodin.train", args=[job_id], queue="train",
                                             producer=producer).id
    if stamp == "sent":
        start = time.time()
    with session_scope(settings) as s:
        for job_id, task_id in task_ids.items():
            s.get(Job, job_id).celery_task_id = task_id
    return start, ids


def _tiny_config() -> dict:
    from atlas_core.config import ModelConfig, TrainConfig

    m = {k: TINY[k] for k in ("n_patches", "template", "bottleneck", "hidden", "layers", "n_points")}
    config = TrainConfig(model=ModelConfig(**m), epochs=TINY["epochs"], batch_size=TINY["batch_size"],
                         lr=TINY["lr"], val_fraction=TINY["val_fraction"],
                         checkpoint_every=TINY["checkpoint_every"], seed=TINY["seed"], device="cpu")
    config.validate()
    return config.to_dict()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def bench_broker(label: str, root: Path, extra: dict[str, str], samples: int, jobs: int,
                 workers: int) -> dict:
    client = _env(root / "client", extra)
    if extra.get("RODIN_DATABASE_URL"):
        _cli(client, "db", "upgrade")
    _cli(client, "datasets", "make", "swords", "--count", "4", "--points-per-shape", "200")
    pool = Workers(root / "workers", extra, workers,
                   home=None if extra.get("RODIN_BROKER_URL") else root / "client")
    _POOLS[:] = [pool]
    try:
        pool.wait_ready(client)
        # Warm up: each worker's job process has run a job (imports, caches) before timing.
        _wait_done(client, _submit_in_process(client, "swords", workers * 2)[1])
        # The submit call (the job row, then the message) returning -> the job starting.
        after_send = []
        for _ in range(samples):
            sent, (job_id,) = _submit_in_process(client, "swords", 1, stamp="sent")
            started = _wait_done(client, [job_id])[job_id][2]
            after_send.append(_epoch(started) - sent)
            time.sleep(0.2)  # the worker is idle again, waiting on the broker
        # The same through the CLI: `rodin submit` creates the row, connects, sends, and exits.
        cli_created, cli_return, cli_wall = [], [], []
        for _ in range(samples):
            t0 = time.time()
            out = _cli(client, "submit", "train", "--dataset", "swords", *TINY_FLAGS, "--json")
            returned = time.time()
            job_id = json.loads(out.stdout)["job_id"]
            _status, created, started, _finished, _err = _wait_done(client, [job_id])[job_id]
            cli_created.append(_epoch(started) - _epoch(created))
            cli_return.append(_epoch(started) - returned)
            cli_wall.append(returned - t0)
            time.sleep(0.2)
        start, ids = _submit_in_process(client, "swords", jobs)
        rows = _wait_done(client, ids, poll=0.5)
        last = max(_epoch(r[3]) for r in rows.values())
        run_s = [_epoch(r[3]) - _epoch(r[2]) for r in rows.values()]
    finally:
        pool.stop()
    wall = last - start
    return {
        "broker": label,
        "dispatch_median_ms": round(1000 * statistics.median(after_send), 1),
        "dispatch_p95_ms": round(1000 * _percentile(after_send, 0.95), 1),
        "cli_created_to_started_median_ms": round(1000 * statistics.median(cli_created), 1),
        "cli_created_to_started_p95_ms": round(1000 * _percentile(cli_created, 0.95), 1),
        # Negative: the job started before the `rodin submit` process had finished exiting.
        "cli_return_to_started_median_ms": round(1000 * statistics.median(cli_return), 1),
        "cli_submit_wall_median_s": round(statistics.median(cli_wall), 3),
        "samples": samples,
        "jobs": jobs,
        "workers": workers,
        "jobs_per_s": round(jobs / wall, 2),
        "throughput_wall_s": round(wall, 1),
        "mean_job_run_s": round(statistics.mean(run_s), 3),
    }


def bench_status(label: str, env: dict[str, str], runs: int) -> dict:
    _cli(env, "status")  # creates (embedded) or checks the registry once
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        _cli(env, "status")
        times.append(time.perf_counter() - t)
    return {"registry": label, "status_cold_median_s": round(statistics.median(times), 3),
            "status_cold_min_s": round(min(times), 3), "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=20, help="dispatch samples per broker")
    parser.add_argument("--jobs", type=int, default=200, help="jobs in the throughput run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--status-runs", type=int, default=9)
    parser.add_argument("--brokers", default="redis,embedded", help="which brokers to measure")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    wanted = [b.strip() for b in args.brokers.split(",") if b.strip()]
    result: dict[str, object] = {"machine": f"{os.cpu_count()} cores, Python {sys.version.split()[0]}",
                                 "load_average_at_start": round(os.getloadavg()[0], 2),
                                 "brokers": [], "status": [], "skipped": []}
    root = Path(tempfile.mkdtemp(prefix="rodin-bench-"))
    try:
        with ExitStack() as stack:
            if "embedded" in wanted:
                result["brokers"].append(bench_broker(  # type: ignore[union-attr]
                    "embedded (filesystem:// + SQLite)", root / "embedded", {}, args.samples,
                    args.jobs, args.workers))
                result["status"].append(bench_status(  # type: ignore[union-attr]
                    "SQLite (embedded)", _env(root / "embedded" / "client", {}), args.status_runs))
            if "redis" in wanted:
                try:
                    redis = stack.enter_context(redis_server())
                    pg = stack.enter_context(postgres_server())
                except ServerUnavailable as exc:
                    result["skipped"].append(f"redis: {exc}")  # type: ignore[union-attr]
                else:
                    extra = {"RODIN_BROKER_URL": redis.url,
                             "RODIN_DATABASE_URL": pg.create_database("bench"),
                             "RODIN_ARTIFACTS_URL": (root / "redis" / "shared").as_uri()}
                    result["brokers"].append(bench_broker(  # type: ignore[union-attr]
                        "redis + PostgreSQL", root / "redis", extra, args.samples, args.jobs,
                        args.workers))
                    result["status"].append(bench_status(  # type: ignore[union-attr]
                        "PostgreSQL", _env(root / "redis" / "client", extra), args.status_runs))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    if args.json:
        print(json.dumps(result))
        return
    print(f"machine: {result['machine']}, load average at start {result['load_average_at_start']}")
    header = (f"{'broker':34} {'dispatch median':>15} {'p95':>9} {'via rodin submit':>17} "
              f"{'jobs/s':>7}  throughput run")
    print(header)
    for b in result["brokers"]:  # type: ignore[union-attr]
        run = (f"{b['jobs']} jobs, {b['workers']} workers, {b['throughput_wall_s']} s, "
               f"{b['mean_job_run_s']:.3f} s per job")
        print(f"{b['broker']:34} {b['dispatch_median_ms']:>12.1f} ms {b['dispatch_p95_ms']:>6.1f} ms "
              f"{b['cli_created_to_started_median_ms']:>14.1f} ms {b['jobs_per_s']:>7.2f}  {run}")
    print("dispatch: the submit call returning -> the job started on an idle warm worker; via "
          "rodin submit: the job row created inside `rodin submit` -> started (the job starts "
          "before the CLI process has exited)")
    for s in result["status"]:  # type: ignore[union-attr]
        print(f"rodin status cold start, {s['registry']:18} median {s['status_cold_median_s']:.3f} s "
              f"(min {s['status_cold_min_s']:.3f} s, {s['runs']} runs)")
    for line in result["skipped"]:  # type: ignore[union-attr]
        print(f"skipped: {line}")


if __name__ == "__main__":
    main()
