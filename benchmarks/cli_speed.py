"""How long the everyday client commands take on a well-used registry (figures, not a test).

    python -m benchmarks.cli_speed [--models 1000] [--jobs 200] [--repeats 5] [--no-bytecode-cache] [--json]

The requirement: `rodin models show`, `rodin models tree`, `rodin status` and `rodin models
tags` on a registry with 1,000 models and 200 jobs each take under 0.5 s cold, and the client
path imports no torch.

Builds a fresh RODIN_HOME (SQLite registry, local artifact store) holding `--jobs` jobs and
`--models` checkpoints with the lineage a team accumulates: several datasets (generated swords,
registered as `rodin datasets make` does), training jobs with several checkpoints each (each
continuing from the previous), fine-tunes whose input is another job's final model (on the same
or another dataset, so lineage crosses jobs, down chains of fine-tunes of fine-tunes), a few
failed, cancelled, running, waiting and queued jobs, evaluation and reconstruction jobs, and
aliases that were set, moved and removed. Every row is written through the job service
(`orchestrator.jobs`: submit, claim, register_checkpoint, report_progress, finish) and every
blob through the artifact store, as workers write them (helpers shared with
benchmarks/report_speed.py); weights are a few made-up bytes, stored with their true sha256,
since nothing loads them, and a final model's metrics carry out-of-distribution statistics of
the real size.

Then each command runs in a fresh process (`python -m orchestrator.cli ...`, stdout to
/dev/null): once to warm the OS file cache (and the bytecode cache), then `--repeats` times
timed, wall and CPU seconds. Each command also runs twice through a probe (the same `main`):
plainly, to record which heavy modules it imported (torch above all) and how its time splits
between importing the CLI and running the command, and under `-X importtime`, to see which
packages' imports cost most. The interpreter alone and the interpreter importing SQLAlchemy's
ORM are timed as the baseline every command pays. The target is 0.5 s per command; the machine
(CPUs, Python, niceness, the load average at the start and the end) is printed with the figures.

The commands get a fresh bytecode cache (PYTHONPYCACHEPREFIX in the temporary folder), as an
installed rodin has, even where PYTHONDONTWRITEBYTECODE is set; `--no-bytecode-cache` runs them
with this environment's setting instead. Nothing is written outside the temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmarks.report_speed import WORKER, _finished, _losses, _settings

if TYPE_CHECKING:
    from orchestrator.artifacts import ArtifactStore
    from orchestrator.registry.models import JobKind, JobStatus
    from orchestrator.settings import Settings

TARGET_S = 0.5
#: Checkpoints are registered every this many epochs.
EVERY = 5
#: A fine-tune chain is at most this many training jobs deep (pre-training included).
MAX_DEPTH = 6
DATASET_NAMES = ("swords", "chairs", "mugs", "lamps", "swords")  # the last one is swords@2
ALIAS_NAMES = ("swords-best", "chairs-best", "prod", "staging", "baseline", "mugs-best", "candidate",
               "lamps-best")
#: Modules a client command should not need; the probe reports which of them it imported.
HEAVY = ("torch", "atlas_core.model", "trimesh", "scipy", "matplotlib", "numpy", "celery", "alembic")

#: Runs `rodin` as the console script does (orchestrator.cli.main:main), then writes to the file
#: named by its first argument what the process imported and how long the import of the CLI
#: and the command itself (parsing, registry, output) took.
PROBE = """\
import time
started = time.perf_counter()
import json, sys
out, args = sys.argv[1], sys.argv[2:]
sys.argv = ["rodin", *args]
from orchestrator.cli.main import main
imported = time.perf_counter()
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
ended = time.perf_counter()
with open(out, "w") as fh:
    json.dump({"exit_code": code, "modules": sorted(sys.modules), "import_cli_s": imported - started,
               "command_s": ended - imported}, fh)
"""


@dataclass
class Built:
    """What `build` registered, and the models the timed commands are given."""

    datasets: int = 0
    jobs: int = 0
    models: int = 0
    jobs_by_kind: dict[str, int] = field(default_factory=dict)
    jobs_by_status: dict[str, int] = field(default_factory=dict)
    aliases: int = 0
    alias_events: int = 0
    deep_model_id: int = 0  # the final model of the deepest fine-tune chain
    deep_job_depth: int = 0  # training jobs in that chain, its own included
    deep_lineage: int = 0  # ancestor checkpoints of that model
    setup_s: float = 0.0


@dataclass
class _Train:
    job_id: int
    dataset_id: int
    depth: int  # training jobs down to a fresh start, this one included
    model_ids: list[int]
    final_id: int | None


def _ood(rng: np.random.Generator, bottleneck: int) -> dict[str, Any]:
    """Out-of-distribution statistics as a final checkpoint stores them (atlas_core.ood.OodStats)."""
    q = np.sort(rng.uniform(1e-4, 1e-3, 3))
    return {"reference": "validation", "shapes": 8, "chamfer_q50": q[0], "chamfer_q95": q[1], "chamfer_max": q[2],
            "latent_shapes": 32, "latent_mean": rng.normal(0, 1, bottleneck).round(6).tolist(),
            "latent_scale": rng.uniform(0.1, 2, bottleneck).round(6).tolist(), "latent_q50": 0.9,
            "latent_q95": 1.1, "latent_max": 1.3, "chamfer_factor": 100.0, "latent_factor": 3.0,
            "fit_shapes": 32, "fit_q50": q[0] / 2, "fit_q95": q[1] / 2, "fit_max": q[2] / 2, "fit_factor": 3.0,
            "format": 1}


def build(home: Path, *, models: int = 1000, jobs_total: int = 200, seed: int = 0) -> Built:
    """Register `jobs_total` jobs holding `models` checkpoints under RODIN_HOME `home`."""
    from atlas_core.config import TrainConfig
    from atlas_core.families import family_source, generate_family
    from orchestrator import aliases, jobs
    from orchestrator.artifacts import open_store
    from orchestrator.datasets import register_dataset
    from orchestrator.registry.db import session_scope
    from orchestrator.registry.models import JobKind, JobStatus

    if jobs_total < 3 or models < 3:
        raise ValueError("at least 3 jobs and 3 models: a fine-tune of a fine-tune needs three training jobs")
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    settings = _settings(home)
    store = open_store(settings)

    n_datasets = max(2, min(len(DATASET_NAMES), jobs_total // 40))
    dataset_ids = []
    for i, name in enumerate(DATASET_NAMES[:n_datasets]):
        data = generate_family("swords", 4, i, 256)
        source = family_source("swords", 4, i) + ("" if name == "swords" else f", fabricated as {name}")
        dataset_ids.append(int(register_dataset(settings, store, name, data, source, [])["id"]))

    # Jobs: ~70% training (each with at least one checkpoint), the rest evaluations and
    # reconstructions, shuffled among them; then one training job waiting for the running one
    # and one reconstruction still queued, the newest jobs.
    n_train = min(models, max(3, round(jobs_total * 0.7)), jobs_total)
    n_other = jobs_total - n_train
    specials = [k for k, need in (("waiting", 1), ("queued", 2)) if n_other >= need]
    others = ["evaluate" if i % 2 else "reconstruct" for i in range(n_other - len(specials))]
    kinds = ["train"] * (n_train - 3) + others
    rng.shuffle(kinds)
    kinds = ["train"] * 3 + kinds + specials
    counts = 1 + rng.multinomial(models - n_train, np.full(n_train, 1 / n_train))
    # Statuses of training jobs: the last one still running; a few failed or cancelled.
    train_status = [JobStatus.succeeded] * n_train
    if n_train > 3:
        train_status[-1] = JobStatus.running
        ended = rng.choice(np.arange(3, n_train - 1), size=min(n_train - 4, max(1, n_train // 20)), replace=False)
        for k, i in enumerate(ended):
            train_status[int(i)] = JobStatus.cancelled if k % 3 == 2 else JobStatus.failed

    finals: list[_Train] = []  # succeeded training jobs, by id
    running_job: int | None = None
    t = 0
    for kind in kinds:
        if kind != "train":
            if kind == "waiting" and running_job is not None:
                config = TrainConfig.cpu().with_overrides(epochs=20, checkpoint_every=EVERY).to_dict()
                jobs.submit(settings, JobKind.train, params={"config": config}, dataset_id=dataset_ids[-1],
                            depends_on=running_job)
            elif kind == "queued":
                jobs.submit(settings, JobKind.reconstruct, params={"inputs": [], "refine": jobs.refine_steps(160)},
                            input_model_id=finals[-1].final_id)
            else:
                _other(settings, JobKind(kind if kind != "waiting" else "evaluate"),
                       finals[int(rng.integers(len(finals)))].final_id or 0, rng)
            continue
        # A training job: a fresh start, or a fine-tune of an earlier final model (recent ones
        # more often), on the same dataset or another one.
        i, status = t, train_status[t]
        t += 1
        base: _Train | None = None
        if i in (1, 2):
            base = finals[-1]
        elif i > 2 and rng.random() < 0.65:
            recent = [f for f in finals[-20:] if f.depth < MAX_DEPTH]
            base = recent[int(rng.integers(len(recent)))] if recent else None
        from_model = None
        if base is not None:
            from_model = base.final_id
            if rng.random() < 0.1 and len(base.model_ids) > 1:  # from an earlier checkpoint
                from_model = base.model_ids[int(rng.integers(len(base.model_ids) - 1))]
        dataset_id = (dataset_ids[int(rng.integers(len(dataset_ids)))] if base is None or rng.random() < 0.5
                      else base.dataset_id)
        made = _train(settings, store, rng, dataset_id, int(counts[i]), from_model, status)
        made.depth = base.depth + 1 if base is not None else 1
        if status is JobStatus.succeeded:
            finals.append(made)
        elif status is JobStatus.running:
            running_job = made.job_id

    # Aliases: set on final models, some moved once or twice, one removed.
    names = ALIAS_NAMES[:max(1, min(len(ALIAS_NAMES), len(finals) // 4 or 1))]
    with session_scope(settings) as s:
        for k, name in enumerate(names):
            aliases.tag(s, finals[int(rng.integers(len(finals)))].final_id or 0, name)
            for _ in range(k % 3):  # moved 0, 1 or 2 times
                aliases.tag(s, finals[int(rng.integers(len(finals)))].final_id or 0, name)
        if len(names) > 1:
            aliases.untag(s, names[-1])

    # The model `models show` is timed on: the final model of the deepest chain of fine-tunes.
    deep = max(finals, key=lambda f: (f.depth, f.job_id))
    return _census(settings, deep, time.perf_counter() - started)


def _train(settings: Settings, store: ArtifactStore, rng: np.random.Generator, dataset_id: int, count: int,
           from_model: int | None, status: JobStatus) -> _Train:
    """A training job through the job service: submitted, claimed, `count` checkpoints each
    continuing from the previous (the first from `from_model`), then finished as `status` says
    (succeeded: the best validation Chamfer final, with its OOD statistics; running: left so)."""
    from atlas_core.config import TrainConfig
    from orchestrator import jobs
    from orchestrator.registry.models import JobKind, JobStatus

    epochs = count * EVERY
    config = TrainConfig.cpu().with_overrides(epochs=epochs, checkpoint_every=EVERY).to_dict()
    job_id = jobs.submit(settings, JobKind.train, params={"config": config}, dataset_id=dataset_id,
                         input_model_id=from_model)
    lease = jobs.claim(settings, job_id, WORKER, "cpu")
    if lease is None:
        raise RuntimeError(f"could not claim job {job_id}")
    history = _losses(epochs, seed=job_id)
    parent, ids, scores = from_model, [], []
    for h in history[EVERY - 1::EVERY]:
        epoch = int(h["epoch"])
        blob = store.put_bytes(f"weights of job {job_id} epoch {epoch}".encode(), ".pt")
        parent = jobs.register_checkpoint(
            settings, lease, dataset_id=dataset_id, parent_id=parent, epoch=epoch, final=False, config=config,
            metrics={"train_loss": h["train_loss"], "val_chamfer": h["val_chamfer"], "coverage": 0.97,
                     "collapsed_patches": [], "warnings": [], "kind": "periodic"},
            artifact_uri=blob.uri, sha256=blob.sha256, size_bytes=blob.size, code_version="fabricated",
            torch_version="2.13.0")
        ids.append(parent)
        scores.append(h["val_chamfer"])
    last = history[len(ids) * EVERY - 1]
    if status is JobStatus.running:
        jobs.report_progress(settings, lease, {**last, "epoch": float(max(1, epochs - 2))})
        return _Train(job_id, dataset_id, 0, ids, None)
    jobs.report_progress(settings, lease, last)
    if status is not JobStatus.succeeded:
        error = "FloatingPointError: the training loss became NaN" if status is JobStatus.failed else None
        jobs.finish(settings, job_id, status, lease=lease, error=error)
        return _Train(job_id, dataset_id, 0, ids, None)
    best = int(np.argmin(scores))
    jobs.finish(settings, job_id, status, lease=lease, final_model_id=ids[best],
                final_metrics={"ood": _ood(rng, config["model"]["bottleneck"])},
                result={"final_model_id": ids[best], "final_epoch": (best + 1) * EVERY, "last_epoch": epochs,
                        "stopped_early": False})
    return _Train(job_id, dataset_id, 0, ids, ids[best])


def _other(settings: Settings, kind: JobKind, model_id: int, rng: np.random.Generator) -> int:
    """A finished evaluation or reconstruction of a model, with a small result and no outputs."""
    if kind.value == "evaluate":
        chamfer = float(rng.uniform(0.3, 0.8))
        result: dict[str, Any] = {"model_id": model_id, "shapes": 4, "chamfer": chamfer, "fscore": 0.93,
                                  "coverage": 0.96, "retrieval_chamfer": chamfer * 1.8, "beats_retrieval": True,
                                  "per_shape": [], "warnings": [], "refine": None}
    else:
        result = {"refine": None, "warnings": [], "inputs": [
            {"input": f"shape-{i}", "chamfer": 2e-4, "chamfer_before": 6e-4, "chamfer_after": 2e-4,
             "warnings": [], "seconds": 1.0} for i in range(3)]}
    return _finished(settings, kind, model_id, result, [])


def _census(settings: Settings, deep: _Train, setup_s: float) -> Built:
    """What the registry holds, counted there."""
    from sqlalchemy import func, select

    from orchestrator.registry.db import session_scope
    from orchestrator.registry.models import Dataset, Job, ModelAlias, ModelAliasEvent, ModelCheckpoint
    from orchestrator.registry.queries import get_model, lineage

    with session_scope(settings) as s:
        def count(what: Any) -> int:
            return int(s.scalar(select(func.count()).select_from(what)) or 0)

        return Built(
            datasets=count(Dataset), jobs=count(Job), models=count(ModelCheckpoint),
            jobs_by_kind=dict(sorted((k, int(n)) for k, n in s.execute(select(Job.kind, func.count()).group_by(Job.kind)))),
            jobs_by_status=dict(sorted((k, int(n)) for k, n in s.execute(
                select(Job.status, func.count()).group_by(Job.status)))),
            aliases=count(ModelAlias), alias_events=count(ModelAliasEvent),
            deep_model_id=deep.final_id or 0, deep_job_depth=deep.depth,
            deep_lineage=len(lineage(s, get_model(s, deep.final_id or 0))), setup_s=round(setup_s, 1))


# ------------------------------------------------------------------------------------ timing


def commands(built: Built) -> list[tuple[str, list[str]]]:
    """(label, arguments of `rodin`) of each timed command."""
    deep = str(built.deep_model_id)
    return [("models show", ["models", "show", deep]), ("models show --json", ["models", "show", deep, "--json"]),
            ("models tree", ["models", "tree"]), ("status", ["status"]), ("models tags", ["models", "tags"])]


def _env(home: Path, pycache: Path | None) -> dict[str, str]:
    """The commands' environment: no RODIN_* but RODIN_HOME; with `pycache`, bytecode cached
    there (as an installed package has it) even where this environment turns caching off."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RODIN_")}
    env["RODIN_HOME"] = str(home)
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def run_once(home: Path, args: list[str], pycache: Path | None = None) -> tuple[float, float, int, str]:
    """One cold `rodin ARGS` in a fresh process, stdout to /dev/null: (wall s, CPU s (user +
    system: less sensitive to other load than the wall time), exit code, stderr)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], env=_env(home, pycache),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=120)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.returncode, done.stderr


def probe(home: Path, args: list[str], scratch: Path, pycache: Path | None = None) -> dict[str, Any]:
    """`rodin ARGS` run twice through PROBE: once plainly (its exit code, the heavy modules it
    imported, the seconds spent importing the CLI and running the command), once under
    `-X importtime` (its imports' total time, and the five packages whose own modules took
    longest to import)."""
    out = scratch / "probe.json"
    seen: dict[str, Any] = {}
    importtime = ""
    for flags in ([], ["-X", "importtime"]):
        done = subprocess.run([sys.executable, *flags, "-c", PROBE, str(out), *args], env=_env(home, pycache),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=120)
        if not flags:
            seen = json.loads(out.read_text()) if out.exists() else {"exit_code": done.returncode, "modules": []}
        else:
            importtime = done.stderr
        out.unlink(missing_ok=True)
    modules = set(seen["modules"])
    # Microseconds: all imports together, and each top-level package's own share of them.
    total, by_package = 0, dict[str, int]()
    for line in importtime.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        own, cumulative, name = line.removeprefix("import time:").split("|", 2)
        if not own.strip().isdigit():
            continue  # the header
        package = name.strip().split(".")[0]
        by_package[package] = by_package.get(package, 0) + int(own)
        if not name.startswith("  "):  # a top-level import: its cumulative time covers the nested ones
            total += int(cumulative)
    top = sorted(((us, m) for m, us in by_package.items()), reverse=True)
    return {"probe_exit_code": seen["exit_code"], "torch_imported": "torch" in modules,
            "heavy_modules": [m for m in HEAVY if m in modules], "modules": len(modules),
            "import_cli_s": round(seen.get("import_cli_s", float("nan")), 3),
            "command_s": round(seen.get("command_s", float("nan")), 3),
            "import_s": round(total / 1e6, 3),
            "top_imports": [{"package": m, "s": round(us / 1e6, 3)} for us, m in top[:5]]}


def baseline(repeats: int, pycache: Path | None = None) -> dict[str, Any]:
    """What any command pays on this machine before rodin's own work: the interpreter starting,
    and it importing SQLAlchemy's ORM (every registry command needs it); median wall and CPU s."""
    rows = {}
    for label, code in (("python", "pass"), ("python + import sqlalchemy.orm", "import sqlalchemy.orm")):
        runs = []
        for _ in range(repeats + 1):  # the first: the warm-up
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], env=_env(Path(os.devnull), pycache), check=True, timeout=60)
            wall = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            runs.append((wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)))
        rows[label] = {"median_s": round(statistics.median(w for w, _ in runs[1:]), 3),
                       "cpu_median_s": round(statistics.median(c for _, c in runs[1:]), 3)}
    return rows


def time_commands(home: Path, built: Built, repeats: int, pycache: Path | None = None) -> list[dict[str, Any]]:
    """Each command: warm-up once, `repeats` timed runs, one probe."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="rodin-cli-probe-") as scratch:
        for label, args in commands(built):
            runs = [run_once(home, args, pycache) for _ in range(repeats + 1)]  # the first: the warm-up
            walls, cpus = [w for w, _, _, _ in runs[1:]], [c for _, c, _, _ in runs[1:]]
            codes = [code for _, _, code, _ in runs]
            errors = sorted({e.strip().splitlines()[-1] for _, _, code, e in runs if code != 0 and e.strip()})
            median = statistics.median(walls)
            seen = probe(home, args, Path(scratch), pycache)
            rows.append({"command": label, "argv": ["rodin", *args], "runs_s": [round(w, 3) for w in walls],
                         "median_s": round(median, 3), "min_s": round(min(walls), 3), "max_s": round(max(walls), 3),
                         "cpu_runs_s": [round(c, 3) for c in cpus], "cpu_median_s": round(statistics.median(cpus), 3),
                         "exit_codes": codes, "ok": all(c == 0 for c in codes) and seen["probe_exit_code"] == 0,
                         "errors": errors, "meets_target": median < TARGET_S, "max_under_target": max(walls) < TARGET_S,
                         **seen})
    return rows


def machine() -> dict[str, Any]:
    affinity = getattr(os, "sched_getaffinity", None)
    return {"nproc": len(affinity(0)) if affinity else os.cpu_count(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "implementation": platform.python_implementation(),
            "platform": platform.platform(), "niceness": os.nice(0) if hasattr(os, "nice") else None,
            "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE")}


def benchmark(models: int = 1000, jobs_total: int = 200, repeats: int = 5,
              bytecode_cache: bool = True) -> dict[str, Any]:
    """Build the registry in a temporary folder, time the commands; every figure in one dict.

    With `bytecode_cache` the commands get a fresh bytecode cache in that folder (filled by the
    warm-up), as an installed rodin has; without it they run as this environment does (which
    may compile every module from source each time: PYTHONDONTWRITEBYTECODE)."""
    load_start = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="rodin-cli-bench-") as tmp:
        home = Path(tmp) / "home"
        built = build(home, models=models, jobs_total=jobs_total)
        pycache = Path(tmp) / "pycache" if bytecode_cache else None
        rows = time_commands(home, built, repeats, pycache)
        floor = baseline(repeats, pycache)
    load_end = [round(x, 2) for x in os.getloadavg()]
    return {"target_s": TARGET_S, "repeats": repeats, "registry": asdict(built), "baseline": floor,
            "bytecode": "cached (a fresh cache, filled by the warm-up)" if bytecode_cache else
            ("as this environment has it: " + ("none (PYTHONDONTWRITEBYTECODE is set: every module "
                                               "not cached before is compiled each run)"
                                               if os.environ.get("PYTHONDONTWRITEBYTECODE") else "cached")),
            "machine": {**machine(), "load_average_start": load_start, "load_average_end": load_end},
            "commands": rows, "all_ok": all(r["ok"] for r in rows),
            "no_torch": not any(r["torch_imported"] for r in rows),
            "all_meet_target": all(r["meets_target"] for r in rows)}


def _verdict(row: dict[str, Any]) -> str:
    if not row["ok"]:
        return "FAILED"
    if row["max_under_target"]:
        return "PASS"
    return "PASS (median; max over)" if row["meets_target"] else "OVER"


def print_report(result: dict[str, Any]) -> None:
    reg, mach = result["registry"], result["machine"]
    print(f"rodin client commands, cold (a fresh process each), on a registry of {reg['models']} models, "
          f"{reg['jobs']} jobs, {reg['datasets']} dataset versions, {reg['aliases']} aliases "
          f"({reg['alias_events']} alias events):")
    print(f"  jobs by kind {reg['jobs_by_kind']}, by status {reg['jobs_by_status']}")
    print(f"  `models show` model {reg['deep_model_id']}: final model of a chain of {reg['deep_job_depth']} "
          f"training jobs, {reg['deep_lineage']} ancestor checkpoints (setup {reg['setup_s']} s, not timed)")
    print(f"  {'command':20} {'median':>7} {'min':>7} {'max':>7} {'cpu':>7}  {'< ' + format(result['target_s'], 'g') + ' s':23}"
          f" {'torch':5} {'imports':>7}  costliest packages (own import s)")
    for r in result["commands"]:
        tops = ", ".join(f"{t['package']} {t['s']:.3f}" for t in r["top_imports"][:3])
        print(f"  {r['command']:20} {r['median_s']:7.3f} {r['min_s']:7.3f} {r['max_s']:7.3f} {r['cpu_median_s']:7.3f}"
              f"  {_verdict(r):23} {'YES' if r['torch_imported'] else 'no':5} {r['import_s']:7.3f}  {tops}")
        for e in r["errors"]:
            print(f"      error: {e}")
    heavy = sorted({m for r in result["commands"] for m in r["heavy_modules"]})
    print(f"  wall seconds over {result['repeats']} timed runs after one warm-up; cpu: median user+system seconds; "
          f"imports: their total under -X importtime (one probe run)")
    print("  one probe run each: " + "; ".join(
        f"{r['command']} {r['import_cli_s']:.3f} s importing the CLI + {r['command_s']:.3f} s running"
        for r in result["commands"]))
    print("  baseline: " + "; ".join(f"{label} {b['median_s']:.3f} s (cpu {b['cpu_median_s']:.3f})"
                                     for label, b in result["baseline"].items()))
    print(f"  bytecode: {result['bytecode']}")
    print(f"  torch imported by none of them: {'yes' if result['no_torch'] else 'NO'}; heavy modules loaded: "
          f"{', '.join(heavy) or 'none'}; every command exited 0: {'yes' if result['all_ok'] else 'NO'}")
    print(f"  machine: {mach['nproc']} CPUs, {mach['implementation']} {mach['python']}, niceness {mach['niceness']}, "
          f"load average {' '.join(map(str, mach['load_average_start']))} at the start, "
          f"{' '.join(map(str, mach['load_average_end']))} at the end")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-bytecode-cache", action="store_true",
                        help="run the commands with this environment's bytecode setting (by default they "
                             "get a fresh bytecode cache, as an installed rodin has)")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    try:
        result = benchmark(args.models, args.jobs, args.repeats, not args.no_bytecode_cache)
    except ValueError as exc:
        parser.error(str(exc))
    if args.json:
        print(json.dumps(result))
    else:
        print_report(result)
    if not result["all_ok"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
