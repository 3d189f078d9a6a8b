"""The registry at scale: every client command cold on 100,000 models, 20,000 jobs and a
lineage 1,000 checkpoints deep, on SQLite and on PostgreSQL (figures, not a test).

    python -m benchmarks.scale registry [--quick] [--models 100000] [--jobs 20000] [--depth 1000]
                                        [--repeats 5] [--backend sqlite|postgres|both]

The registry is filled FAST, with bulk inserts (one executemany per table), not through the
job service as benchmarks/cli_speed.py fills its (smaller) one: the job service writes a row a
transaction, which at these sizes would take longer than every measurement together. The rows
are those the job service writes (the same columns, JSON and shapes; configs and metrics of the
real size, a final checkpoint's out-of-distribution statistics), with the history a lab
accumulates:

- 5 dataset versions; 70% of the jobs are training jobs (each with checkpoints continuing one
  another), 65% of them fine-tunes of a recent final model (on the same or another dataset);
  the rest are evaluations and reconstructions of final models;
- one chain of training jobs whose last final model has `--depth` ancestors (the model
  `models show` and `report` are timed on): 40 jobs fine-tuned one from the other;
- failed and cancelled jobs, running ones (one silent for an hour: the reaper's), queued and
  waiting ones; aliases; every succeeded training job's loss curves (one small PNG blob in
  the artifact store, shared), and a reconstruction of the deep model with pictures.

Then each command runs in a fresh process (`python -m orchestrator.cli ...`, stdout to
/dev/null): once to warm the OS cache and the bytecode cache, then `--repeats` times, timed;
the median wall time is reported beside the target (1 s) with the load average (this machine
may be shared: the load average says how much). Last, the reaper's periodic queries are
captured as one pass runs them (at a moment before every heartbeat, so that it reads what a
pass reads and changes nothing) and each is explained: EXPLAIN QUERY PLAN on SQLite, EXPLAIN
on PostgreSQL.

PostgreSQL runs when its binaries are installed (`initdb`/`pg_ctl`, found as tests/servers.py
finds them): a throwaway server on 127.0.0.1, removed at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

TARGET_S = 1.0
FULL = {"models": 100_000, "jobs": 20_000, "depth": 1_000}
QUICK = {"models": 5_000, "jobs": 1_000, "depth": 200}
DATASETS = (("swords", 1), ("chairs", 1), ("mugs", 1), ("lamps", 1), ("swords", 2))
#: Jobs in the deep chain (the lineage `--depth` long is spread over them).
DEEP_JOBS = 40
EVERY = 5  # epochs between checkpoints
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


@dataclass
class Filled:
    """What `fill` registered, and the model the lineage commands are timed on."""

    datasets: int = 0
    jobs: int = 0
    models: int = 0
    deep_model_id: int = 0
    deep_lineage: int = 0  # its ancestors
    deep_jobs: int = 0  # training jobs in its lineage
    by_status: dict[str, int] = field(default_factory=dict)
    fill_s: float = 0.0


def tiny_png() -> bytes:
    """A valid 2x2 grey PNG (the report embeds stored pictures as they are)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + b"\x80\x80" for _ in range(2))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _ood(rng: np.random.Generator, bottleneck: int) -> dict[str, Any]:
    q = np.sort(rng.uniform(1e-4, 1e-3, 3)).tolist()
    return {"reference": "validation", "shapes": 8, "chamfer_q50": q[0], "chamfer_q95": q[1], "chamfer_max": q[2],
            "latent_shapes": 32, "latent_mean": rng.normal(0, 1, bottleneck).round(6).tolist(),
            "latent_scale": rng.uniform(0.1, 2, bottleneck).round(6).tolist(), "latent_q50": 0.9,
            "latent_q95": 1.1, "latent_max": 1.3, "chamfer_factor": 100.0, "latent_factor": 3.0,
            "fit_shapes": 32, "fit_q50": q[0] / 2, "fit_q95": q[1] / 2, "fit_max": q[2] / 2, "fit_factor": 3.0,
            "format": 1}


def fill(url: str, home: Path, *, models: int, jobs: int, depth: int, seed: int = 0) -> Filled:
    """Create the schema at `url` and fill it (bulk inserts); blobs go to RODIN_HOME `home`'s
    local artifact store."""
    from sqlalchemy import insert, update

    from atlas_core.config import TrainConfig
    from orchestrator.artifacts import open_store
    from orchestrator.registry.db import make_engine, upgrade
    from orchestrator.registry.models import Dataset, Job, ModelAlias, ModelAliasEvent, ModelCheckpoint
    from orchestrator.settings import load_settings

    n_train = max(DEEP_JOBS + 4, round(jobs * 0.7))
    if jobs < n_train + 12 or models < depth + 2 * n_train or depth < DEEP_JOBS:
        raise ValueError(f"too small: need jobs >= {n_train + 12}, models >= depth + 2 x training jobs "
                         f"({depth + 2 * n_train}) and depth >= {DEEP_JOBS}")
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    upgrade(url)
    engine = make_engine(url)
    store = open_store(load_settings({"RODIN_HOME": str(home)}))
    png = store.put_bytes(tiny_png(), ".png")
    weights = store.put_bytes(b"weights nobody loads", ".pt")
    config = TrainConfig.cpu().with_overrides(epochs=50, checkpoint_every=EVERY).to_dict()
    bottleneck = int(config["model"]["bottleneck"])

    dataset_rows = [{"id": i + 1, "name": name, "version": v, "content_sha256": f"{i:064x}", "shape_count": 256,
                     "points_per_shape": 2500, "source": f"fabricated {name}", "skipped": [],
                     "artifact_uri": weights.uri, "artifact_sha256": weights.sha256, "created_at": T0}
                    for i, (name, v) in enumerate(DATASETS)]

    # Which jobs train: the first n_train - a few of the timeline's slots, shuffled among the
    # others; the deep chain takes evenly spaced training slots; the newest jobs are the
    # running, queued and waiting ones.
    n_other = jobs - n_train
    kinds = ["train"] * (n_train - 3) + ["evaluate" if i % 2 else "reconstruct" for i in range(n_other - 8)]
    rng.shuffle(kinds)
    kinds = ["train"] + kinds + ["train"] * 2 + ["reconstruct"] * 5 + ["waiting"] * 3
    train_slots = [i for i, k in enumerate(kinds) if k == "train"]
    deep_slots = set(train_slots[:: max(1, (len(train_slots) - 3) // DEEP_JOBS)][:DEEP_JOBS])
    per_deep = [depth // DEEP_JOBS + (1 if k < depth % DEEP_JOBS else 0) for k in range(DEEP_JOBS)]
    per_deep[0] += 1  # the chain's first checkpoint has no parent: `depth` ancestors for its last
    rest = models - sum(per_deep)
    others = len(train_slots) - DEEP_JOBS
    counts = iter(1 + rng.multinomial(rest - others, np.full(others, 1 / others)))

    job_rows: list[dict[str, Any]] = []
    model_rows: list[dict[str, Any]] = []
    inputs: list[dict[str, Any]] = []
    finals: list[tuple[int, int, int]] = []  # (final model id, dataset id, fine-tune depth)
    running: list[int] = []
    deep_final: int | None = None
    deep_k = 0
    next_model = 1
    for slot, kind in enumerate(kinds):
        job_id = slot + 1
        at = T0 + timedelta(seconds=60 * slot)
        row: dict[str, Any] = {"id": job_id, "kind": "train" if kind == "waiting" else kind, "status": "succeeded",
                               "params": {}, "dataset_id": None, "input_model_id": None, "depends_on_job_id": None,
                               "sweep_id": None, "celery_task_id": f"task-{job_id}", "worker": "fabricator",
                               "device": "cpu", "attempts": 1, "lost": 0, "lease_token": None, "sent_at": at,
                               "progress": {}, "cancel_requested": False, "error": None, "outputs": [],
                               "result": {}, "created_at": at, "started_at": at, "finished_at": at + timedelta(minutes=30),
                               "heartbeat_at": at + timedelta(minutes=30)}
        job_rows.append(row)
        if kind == "waiting":
            row.update(status="waiting", params={"config": config}, dataset_id=1, depends_on_job_id=running[0],
                       attempts=0, started_at=None, finished_at=None, heartbeat_at=None, sent_at=None)
            continue
        if kind != "train":
            model_id, _, _ = finals[int(rng.integers(max(0, len(finals) - 200), len(finals)))]
            row["input_model_id"] = model_id
            inputs.append({"id": job_id, "input_model_id": model_id})
            if slot >= len(kinds) - 8:  # the newest reconstructions: still queued, their message older than a minute
                row.update(status="queued", attempts=0, started_at=None, finished_at=None, heartbeat_at=None)
            elif kind == "evaluate":
                chamfer = float(rng.uniform(0.3, 0.8))
                row["result"] = {"model_id": model_id, "shapes": 4, "chamfer": chamfer, "fscore": 0.93,
                                 "coverage": 0.96, "retrieval_chamfer": chamfer * 1.8, "beats_retrieval": True,
                                 "per_shape": [], "warnings": [], "refine": None}
            else:
                row["result"] = {"refine": None, "warnings": [], "inputs": [
                    {"input": f"shape-{i}", "chamfer": 2e-4, "chamfer_before": 6e-4, "chamfer_after": 2e-4,
                     "warnings": [], "seconds": 1.0} for i in range(3)]}
            continue
        # A training job.
        deep = slot in deep_slots
        base: tuple[int, int, int] | None = None
        if deep:
            count = per_deep[deep_k]
            base = (deep_final, 0, 0) if deep_final is not None else None
            dataset_id = 1 + deep_k % len(DATASETS)
            deep_k += 1
        else:
            count = int(next(counts))
            if finals and rng.random() < 0.65:
                recent = [f for f in finals[-20:] if f[2] < 6]
                base = recent[int(rng.integers(len(recent)))] if recent else None
            dataset_id = (base[1] if base is not None and rng.random() < 0.5
                          else 1 + int(rng.integers(len(DATASETS))))
        status = "succeeded"
        if slot >= len(kinds) - 10:
            status = "running"
        elif not deep and rng.random() < 0.04:
            status = "failed" if rng.random() < 0.75 else "cancelled"
        parent = base[0] if base is not None else None
        if parent is not None:
            inputs.append({"id": job_id, "input_model_id": parent})
        row.update(status=status, params={"config": config}, dataset_id=dataset_id)
        ids = []
        for k in range(count):
            ids.append(next_model)
            model_rows.append({
                "id": next_model, "job_id": job_id, "dataset_id": dataset_id, "parent_id": parent,
                "epoch": (k + 1) * EVERY, "final": False, "config": config,
                "metrics": {"train_loss": float(2e-3 / (k + 1)), "val_chamfer": float(2.3e-3 / (k + 1) + rng.uniform(0, 1e-5)),
                            "coverage": 0.97, "collapsed_patches": [], "warnings": [], "kind": "periodic"},
                "artifact_uri": weights.uri, "sha256": f"{next_model:064x}", "size_bytes": 4_000_000,
                "code_version": "fabricated", "torch_version": "2.13.0", "created_at": at + timedelta(seconds=k)})
            parent = next_model
            next_model += 1
        if status == "succeeded":
            final = model_rows[-1]
            final["final"] = True
            final["metrics"] = {**final["metrics"], "ood": _ood(rng, bottleneck)}
            depth_here = (base[2] + 1) if base is not None else 1
            finals.append((final["id"], dataset_id, depth_here))
            row["result"] = {"final_model_id": final["id"], "final_epoch": final["epoch"],
                             "last_epoch": final["epoch"], "stopped_early": False}
            row["outputs"] = [{"name": "loss_curves.png", "kind": "plot", "sha256": png.sha256, "uri": png.uri,
                               "size": png.size}]
            if deep:
                deep_final = final["id"]
        elif status == "running":
            running.append(job_id)
            silent = timedelta(hours=1) if len(running) == 1 else timedelta(seconds=2)
            row.update(finished_at=None, heartbeat_at=T0 + timedelta(days=3650) - silent,
                       lease_token=f"{job_id:032x}", progress={"epoch": float(count * EVERY), "epochs": 50.0})
        else:
            row["error"] = "FloatingPointError: the training loss became NaN" if status == "failed" else None

    if deep_final is None:
        raise RuntimeError("the deep chain has no final model")
    # The deep model has been reconstructed (its report embeds the pictures).
    recon = job_rows[-8]
    recon.update(kind="reconstruct", status="succeeded", input_model_id=deep_final, outputs=[
        {"name": f"shape-{i}.png", "kind": "render", "input": f"shape-{i}", "sha256": png.sha256, "uri": png.uri,
         "size": png.size} for i in range(3)], params={"inputs": [], "refine": None})
    inputs.append({"id": recon["id"], "input_model_id": deep_final})

    with engine.begin() as conn:
        conn.execute(insert(Dataset), dataset_rows)
        conn.execute(insert(Job), [{**r, "input_model_id": None} for r in job_rows])
        for start in range(0, len(model_rows), 20_000):
            conn.execute(insert(ModelCheckpoint), model_rows[start:start + 20_000])
        conn.execute(update(Job).where(Job.id == _bind("jid"))
                     .values(input_model_id=_bind("mid")),
                     [{"jid": r["id"], "mid": r["input_model_id"]} for r in inputs])
        names = ["swords-best", "prod", "staging", "baseline"]
        conn.execute(insert(ModelAlias), [{"id": i + 1, "name": n, "model_id": finals[-1 - 7 * i][0], "updated_at": T0}
                                          for i, n in enumerate(names)])
        conn.execute(insert(ModelAliasEvent), [{"id": i + 1, "name": n, "from_model_id": None,
                                                "to_model_id": finals[-1 - 7 * i][0], "at": T0}
                                               for i, n in enumerate(names)])
    if url.startswith("postgresql"):
        with engine.begin() as conn:  # ids were given explicitly: move the sequences past them
            for table in ("datasets", "jobs", "models", "model_aliases", "model_alias_events"):
                conn.exec_driver_sql(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                     f"(SELECT max(id) FROM {table}))")
            conn.exec_driver_sql("ANALYZE")
    engine.dispose()
    by_status: dict[str, int] = {}
    for r in job_rows:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    return Filled(datasets=len(dataset_rows), jobs=len(job_rows), models=len(model_rows), deep_model_id=deep_final,
                  deep_lineage=depth, deep_jobs=DEEP_JOBS, by_status=dict(sorted(by_status.items())),
                  fill_s=round(time.perf_counter() - started, 1))


def _bind(name: str) -> Any:
    from sqlalchemy import bindparam

    return bindparam(name)


# ------------------------------------------------------------------------------------ timing


def commands(filled: Filled, out: Path) -> list[tuple[str, list[str]]]:
    deep = str(filled.deep_model_id)
    middle = str(filled.models // 2)
    return [("status", ["status"]),
            ("models list", ["models", "list"]),
            (f"models list --before {middle}", ["models", "list", "--before", middle]),
            ("models list --json", ["models", "list", "--json"]),
            ("models show (deep)", ["models", "show", deep]),
            ("models show --json", ["models", "show", deep, "--json"]),
            ("models tree", ["models", "tree"]),
            ("models tree --json", ["models", "tree", "--json"]),
            ("report (deep)", ["report", deep, "--no-reconstruct", "--out", str(out)])]


def _env(home: Path, database_url: str | None, pycache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RODIN_")}
    env["RODIN_HOME"] = str(home)
    if database_url:
        env["RODIN_DATABASE_URL"] = database_url
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # a bytecode cache, as an installed rodin has
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def time_command(args: list[str], env: dict[str, str], repeats: int) -> dict[str, Any]:
    """One warm-up, then `repeats` cold runs in fresh processes: wall seconds, exit codes."""
    walls, codes, errors = [], [], set()
    for i in range(repeats + 1):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=300)
        wall = time.perf_counter() - started
        codes.append(done.returncode)
        if done.returncode != 0 and done.stderr.strip():
            errors.add(done.stderr.strip().splitlines()[-1])
        if i:
            walls.append(wall)
    median = statistics.median(walls)
    return {"median_s": round(median, 3), "min_s": round(min(walls), 3), "max_s": round(max(walls), 3),
            "ok": all(c == 0 for c in codes), "errors": sorted(errors), "meets_target": median < TARGET_S}


# ------------------------------------------------------------------------------ query plans


def reaper_statements(database_url: str, home: Path) -> list[tuple[str, Any]]:
    """The SELECTs one reaper pass sends, with their parameters: captured while `recovery.reap`
    runs at a moment before every heartbeat (it reads what a pass reads, and changes nothing)."""
    from sqlalchemy import event

    from orchestrator import recovery
    from orchestrator.registry.db import get_engine
    from orchestrator.settings import load_settings

    env = {"RODIN_HOME": str(home), **({"RODIN_DATABASE_URL": database_url} if database_url else {})}
    settings = load_settings(env)
    engine = get_engine(settings)
    seen: list[tuple[str, Any]] = []

    def listen(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT") and not many:
            seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", listen)
    try:
        recovery.reap(settings, now=T0 - timedelta(days=1))
    finally:
        event.remove(engine, "before_cursor_execute", listen)
    return seen


def explain(database_url: str, home: Path, statement: str, parameters: Any) -> list[str]:
    """The plan of one statement: EXPLAIN QUERY PLAN (SQLite) or EXPLAIN (PostgreSQL), one line each."""
    from orchestrator.registry.db import get_engine
    from orchestrator.settings import load_settings

    env = {"RODIN_HOME": str(home), **({"RODIN_DATABASE_URL": database_url} if database_url else {})}
    engine = get_engine(load_settings(env))
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
            return [str(r[-1]) for r in rows]
        return [str(r[0]) for r in conn.exec_driver_sql(f"EXPLAIN {statement}", parameters).all()]


def reaper_plans(database_url: str, home: Path) -> list[dict[str, Any]]:
    return [{"sql": " ".join(sql.split()), "plan": explain(database_url, home, sql, params)}
            for sql, params in reaper_statements(database_url, home)]


def uses_indexes(plan: list[str]) -> bool:
    """No line of the plan reads a whole table of jobs or models."""
    for line in plan:
        text = line.strip().lower()
        if text.startswith(("scan jobs", "scan models")):  # SQLite: every row (or index entry) read
            return False
        if "seq scan on jobs" in text or "seq scan on models" in text:
            return False
    return True


# -------------------------------------------------------------------------------------- runs


@contextmanager
def _backend(name: str, tmp: Path) -> Iterator[str | None]:
    """The database URL of a fresh registry (None: the embedded SQLite under RODIN_HOME)."""
    if name == "sqlite":
        yield None
        return
    from tests.servers import postgres_server

    with postgres_server() as pg:
        yield pg.create_database("rodin_scale")


def run_backend(name: str, sizes: dict[str, int], repeats: int) -> dict[str, Any]:
    load_start = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix=f"rodin-scale-{name}-") as tmp_name, ExitStack() as stack:
        tmp = Path(tmp_name)
        home = tmp / "home"
        database_url = stack.enter_context(_backend(name, tmp))
        url = database_url or f"sqlite:///{home / 'registry.db'}"
        filled = fill(url, home, **sizes)
        env = _env(home, database_url, tmp / "pycache")
        rows = []
        for label, args in commands(filled, tmp / "reports"):
            rows.append({"command": label, **time_command(args, env, repeats),
                         "load_average": round(os.getloadavg()[0], 2)})
        plans = reaper_plans(database_url or "", home)
    return {"backend": name, "filled": filled, "rows": rows, "plans": plans,
            "load_average_start": load_start, "load_average_end": [round(x, 2) for x in os.getloadavg()]}


def print_result(result: dict[str, Any], repeats: int) -> None:
    filled: Filled = result["filled"]
    print(f"  {result['backend']}: {filled.models:,} models, {filled.jobs:,} jobs ({filled.by_status}), "
          f"{filled.datasets} dataset versions; the deep model {filled.deep_model_id} has {filled.deep_lineage} "
          f"ancestors over {filled.deep_jobs} jobs; filled in {filled.fill_s} s by bulk inserts (not timed)")
    print(f"  {'command':32} {'median':>7} {'min':>7} {'max':>7}  {'< ' + format(TARGET_S, 'g') + ' s':6} load")
    for r in result["rows"]:
        verdict = ("PASS" if r["meets_target"] else "OVER") if r["ok"] else "FAILED"
        print(f"  {r['command']:32} {r['median_s']:7.3f} {r['min_s']:7.3f} {r['max_s']:7.3f}  {verdict:6} "
              f"{r['load_average']:.2f}")
        for e in r["errors"]:
            print(f"      error: {e}")
    print(f"  wall seconds of {repeats} cold runs (fresh processes) after one warm-up; load: the 1-minute "
          f"load average after the command (2 cores, shared with other work); at the start "
          f"{' '.join(map(str, result['load_average_start']))}, at the end {' '.join(map(str, result['load_average_end']))}")
    print("  the reaper's periodic queries and their plans "
          f"({'EXPLAIN QUERY PLAN' if result['backend'] == 'sqlite' else 'EXPLAIN'}):")
    for p in result["plans"]:
        print(f"    {'indexed' if uses_indexes(p['plan']) else 'FULL SCAN'}: {p['sql']}")
        for line in p["plan"]:
            print(f"        {line}")


def postgres_available() -> bool:
    from tests.servers import postgres_bindir

    try:
        import psycopg  # noqa: F401
    except ImportError:
        return False
    return postgres_bindir() is not None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.scale registry", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"small sizes: {QUICK}")
    parser.add_argument("--models", type=int)
    parser.add_argument("--jobs", type=int)
    parser.add_argument("--depth", type=int, help="ancestors of the deep model")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    args, _ = parser.parse_known_args(argv)
    sizes = dict(QUICK if args.quick else FULL)
    for key in sizes:
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    repeats = 1 if args.quick and args.repeats == 5 else max(1, args.repeats)
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    ok = True
    for name in backends:
        if name == "postgres" and not postgres_available():
            print("  postgres: skipped (no initdb/pg_ctl or no psycopg here)")
            continue
        result = run_backend(name, sizes, repeats)
        print_result(result, repeats)
        ok = ok and all(r["ok"] for r in result["rows"])
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
