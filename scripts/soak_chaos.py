"""Chaos soak: every kind of job on Redis + PostgreSQL while workers, job processes, the broker,
the registry and the artifact store fail at random.

    python -m scripts.soak_chaos                      # 30 minutes, 3 workers, ~100 jobs
    python -m scripts.soak_chaos --minutes 3          # the CI version: ~5 minutes in all
    python -m scripts.soak_chaos --minutes 3 --seed 1 --json

Everything runs on loopback and in a temporary folder, as scripts/soak_kill.py runs it (and with
its pieces: the cluster of worker processes, the registry reads, the store and lineage checks):
Redis (AOF) and PostgreSQL started from their binaries (tests/servers.py), a local artifact
folder that every worker shares, W workers each with its own home.

Jobs, all submitted through the real CLI while the faults happen (spread over the first 85% of
the run; a reconstruction or evaluation once some training has given a model):

- trainings of tiny models (scripts.soak_kill.TRAIN_FLAGS: 400 epochs of a few tens of ms, a
  checkpoint every CHECKPOINT_EVERY = 20 epochs), each config submitted twice with the same seed
  and `--keep-best` (twins): the second of a pair is never the target of a process fault, and
  at the end every pair whose jobs both succeeded must have chosen the same final epoch
  (`jobs.result["final_epoch"]`), an interrupted one included;
- a sweep (`rodin submit sweep --patches 2,4 ...`, `--keep-last`);
- a pre-train and fine-tune chain: `rodin submit train --dataset swords --pretrain swords` with a
  tiny recipe (`--pretrain-shapes 8 --pretrain-epochs 10`): a pre-training job and a fine-tune
  `waiting` for it (more fine-tunes of the same base in the full run);
- `rodin reconstruct --model ID` and `rodin evaluate --model ID` on trained models' validation
  shapes;
- long trainings that the run cancels (`rodin cancel ID`): half while queued, half once
  running. They must end `cancelled`; every other job must end `succeeded`.

Faults, drawn by a seeded RNG (the first of each kind at evenly spaced times in the first 65% of
the run, in a random order, so that a short run has every kind; more at random after that):

- kill_worker: SIGKILL of a worker's main process (its job process dies with it); a new worker,
  with a new name, takes its place;
- kill_job: SIGKILL of the job process only (the worker's Celery pool child);
- stop_job: SIGSTOP of the job process for the stop time, then SIGCONT. A correct worker ends a
  job process that shows no progress for RODIN_PROGRESS_TIMEOUT_S (set short here) and gives
  the job back; the SIGCONT is then sent to nobody (counted);
- stop_worker: SIGSTOP of a worker's main process and its children for the stop time, then
  SIGCONT (the other workers' reapers take its job back after RODIN_STALE_AFTER_S);
- redis_restart: Redis stopped (SIGTERM: it writes its AOF) and started again on the same port
  and data folder;
- pg_outage: PostgreSQL stopped (`pg_ctl stop -m fast`) for the outage time, then started again;
- store_readonly: the artifact folder made read-only for 10 s. As root (where `chmod a-w` does
  not stop writes) it is made immutable with `chattr -R +i` (ext4 and most Linux filesystems);
  as another user with `chmod -R a-w`. Where neither works the fault is skipped, and said so.

Stop and outage times: SIGSTOP 60 s and PostgreSQL 30 s in the full run (30 minutes), 30 s and
10 s in a run shorter than 10 minutes; the run prints the times it used. RODIN_PROGRESS_TIMEOUT_S
(900 s by default) is set shorter than a SIGSTOP, 45 s and 20 s, so that a stopped job process
must be caught. A job process waiting out an outage of the registry or the store is not hung: its
retries count as progress (orchestrator.waiting), so the outages may be longer than the timeout.
A fault of a server does not start within SERVER_GAP_S of the end of the previous one.

The run is bounded: faults stop after `--minutes` (earlier once every job has ended and every
kind of fault was injected); the jobs then have a drain period (60 s + 10 s a minute) to end,
after which the ones still unfinished fail the check. Servers and workers are always stopped at
the end (and on Ctrl-C or SIGTERM): stopped processes are continued first, the store made
writable again.

Checks: every submission accepted; every job ended as expected (succeeded, or cancelled where
the run cancelled it); none left queued, waiting or running; attempts under RODIN_MAX_ATTEMPTS
(set above the number of faults, so that faults alone cannot exhaust it); no (job, epoch)
checkpoint registered twice; each training's checkpoints form one unbroken lineage (each one's
parent is the newest earlier epoch registered before it, or the job's input model; no periodic
checkpoint missing); same-seed twins end on the same final epoch; `rodin gc`
(orchestrator.gc.find_orphans, no grace period) finds nothing unreferenced, and every
referenced artifact exists; no `*.tmp-*` file left in the store; no worker exited by itself, no
job process outlived its killed worker, no process of the cluster left once the workers were
stopped; every job process SIGSTOPped by the run was ended by its worker before the SIGCONT
(the stop outlasts RODIN_PROGRESS_TIMEOUT_S); every enabled kind of fault was injected. Exit
code 0 only when every check holds; 1 otherwise, with the failed checks named and the run's
folder (with each worker's log) kept.

Run it from the repository root as a module (it imports tests/servers.py and scripts/soak_kill.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from scripts.soak_kill import (
    FINISHED,
    TRAIN_FLAGS,
    Check,
    Cluster,
    JobView,
    Kill,
    RunOutcome,
    Spread,
    WorkerProc,
    check_blobs,
    check_unique_epochs,
    checkpoints,
    child_pids,
    count_logs,
    default_stale_after_s,
    kill_worker,
    machine_conditions,
    pid_alive,
    read_jobs,
    registered_workers,
    running_on,
    say,
)
from tests.servers import PostgresServer, RedisServer, ServerUnavailable, postgres_server, redis_server

if TYPE_CHECKING:
    from orchestrator.settings import Settings

FAULT_KINDS = ("kill_worker", "kill_job", "stop_job", "stop_worker", "redis_restart", "pg_outage",
               "store_readonly")
#: Faults of a shared server: one at a time, and never while a client command runs.
SERVER_FAULTS = ("redis_restart", "pg_outage", "store_readonly")
#: Faults aimed at one worker's processes.
PROCESS_FAULTS = ("kill_worker", "kill_job", "stop_job", "stop_worker")
#: How often each kind is drawn after the first round (which has one of each).
WEIGHTS = {"kill_worker": 3, "kill_job": 3, "stop_job": 2, "stop_worker": 2, "redis_restart": 1,
           "pg_outage": 1, "store_readonly": 1}
POLL_S = 0.5
#: Seconds between the end of a server's fault and the start of the next one: each outage is
#: one fault, not a chain of them.
SERVER_GAP_S = 10.0
#: Seconds Redis stays down during a restart.
REDIS_DOWN_S = 2.0
#: A client command (submit, cancel) that takes longer than this is a failure of the run.
CLI_TIMEOUT_S = 120.0
#: A checkpoint every 20 epochs: each is ~2.3 MB (the PointNet encoder and Adam's moments are
#: fixed in size), so a checkpoint each epoch would fill tens of GB in the full run; with 20 a
#: keep-best model is usually registered off the schedule (before the next checkpoint), which
#: resumes must keep.
CHECKPOINT_EVERY = 20
#: The tiny pre-training recipe of the chain (`rodin submit train --pretrain swords`).
PRETRAIN_FLAGS = ["--pretrain", "swords", "--pretrain-shapes", "8", "--pretrain-epochs", "10"]


class Interrupted(Exception):
    """SIGTERM or SIGINT: the run stops, tears everything down and reports nothing."""


def flags(**replace: str) -> list[str]:
    """TRAIN_FLAGS, a checkpoint every CHECKPOINT_EVERY epochs, and some values replaced
    (`flags(patches="2,4")`)."""
    out = list(TRAIN_FLAGS)
    for name, value in {"checkpoint_every": str(CHECKPOINT_EVERY), **replace}.items():
        option = "--" + name.replace("_", "-")
        out[out.index(option) + 1] = value
    return out


# ----------------------------------------------------------------------------------------- plan


@dataclass
class ChaosPlan:
    minutes: float
    workers: int
    jobs: int
    seed: int
    epochs: int
    stop_s: float
    pg_outage_s: float
    readonly_s: float
    progress_timeout_s: float
    stale_after_s: float
    drain_s: float
    #: Mean seconds between two faults drawn after the first round.
    fault_gap_s: float
    faults: tuple[str, ...]
    max_attempts: int = 0  # set once the fault schedule is drawn

    @property
    def chaos_s(self) -> float:
        return self.minutes * 60.0


def make_plan(minutes: float = 30.0, workers: int = 3, jobs: int | None = None, seed: int | None = None,
              epochs: int | None = None, faults: tuple[str, ...] = FAULT_KINDS,
              progress_timeout_s: float | None = None) -> ChaosPlan:
    """The run's settings, scaled to its length (a run under 10 minutes is the short one)."""
    short = minutes < 10
    return ChaosPlan(
        minutes=minutes, workers=workers,
        jobs=jobs if jobs is not None else max(14, round(100 * minutes / 30)),
        seed=seed if seed is not None else random.SystemRandom().randrange(1 << 30),
        epochs=epochs if epochs is not None else 400,
        stop_s=30.0 if short else 60.0, pg_outage_s=10.0 if short else 30.0, readonly_s=10.0,
        progress_timeout_s=progress_timeout_s or (20.0 if short else 45.0),
        stale_after_s=default_stale_after_s(),
        drain_s=60.0 + 10.0 * minutes, fault_gap_s=30.0 if short else 40.0, faults=faults)


@dataclass
class Spec:
    """One planned client command that queues work."""

    label: str
    kind: str  # twin, sweep, chain, reconstruct, evaluate, cancel
    at_s: float
    args: list[str] = field(default_factory=list)
    pair: int | None = None  # twins: the pair's number
    protected: bool = False  # the twin that no process fault aims at
    cancel_when: str | None = None  # cancel targets: "queued" or "running"
    done: bool = False
    tries: int = 0


def job_specs(plan: ChaosPlan, rng: random.Random) -> list[Spec]:
    """The submissions of the run (the first fine-tune of the chain is queued at setup)."""
    n, e = plan.jobs, str(plan.epochs)
    big = n >= 40
    sweep_jobs = 4 if big else 2
    finetunes = 3 if big else 1
    cancels = max(2 if n >= 14 else 1, n // 15)
    rest = max(0, n - sweep_jobs - (1 + finetunes) - cancels)
    infer = max(4, round(rest * 0.35))
    pairs = max(1, (rest - infer) // 2)
    infer = max(2, rest - 2 * pairs)
    window = 0.85 * plan.chaos_s
    specs: list[Spec] = []
    specs.append(Spec("sweep", "sweep", rng.uniform(0, 0.3 * window),
                      ["submit", "sweep", "--dataset", "swords", "--epochs", e, *flags(patches="2,4"),
                       *(["--template", "square,sphere"] if big else []), "--keep-last", "--seed", "7"]))
    for i in range(1, finetunes):
        specs.append(Spec(f"fine-tune {i + 1}", "chain", rng.uniform(0.2 * window, window),
                          ["submit", "train", "--dataset", "swords", *PRETRAIN_FLAGS, *flags(),
                           "--epochs", e, "--seed", str(20 + i)]))
    for i in range(pairs):
        at = rng.uniform(0, window) if i else 0.0
        args = ["submit", "train", "--dataset", "swords", *flags(), "--epochs", e, "--keep-best",
                "--seed", str(100 + i)]
        specs.append(Spec(f"twin {i}a", "twin", at, args, pair=i))
        specs.append(Spec(f"twin {i}b", "twin", at, list(args), pair=i, protected=True))
    for i in range(cancels):
        specs.append(Spec(f"cancel {i}", "cancel", rng.uniform(0, window),
                          ["submit", "train", "--dataset", "swords", *flags(),
                           "--epochs", str(10 * plan.epochs), "--keep-last", "--seed", str(300 + i)],
                          cancel_when="queued" if i % 2 == 0 else "running"))
    for i in range(infer):
        what = "reconstruct" if i % 2 == 0 else "evaluate"
        specs.append(Spec(f"{what} {i // 2}", what, rng.uniform(0.15 * plan.chaos_s, window),
                          [what, "--refine", "80" if what == "reconstruct" else "40"]))
    return sorted(specs, key=lambda s: s.at_s)


def fault_schedule(plan: ChaosPlan, rng: random.Random) -> list[tuple[float, str, bool]]:
    """(seconds into the run, kind, first round) for every fault the run means to inject."""
    kinds = list(plan.faults)
    rng.shuffle(kinds)
    first = [(plan.chaos_s * (0.08 + 0.57 * i / max(1, len(kinds) - 1)), kind, True)
             for i, kind in enumerate(kinds)]
    later: list[tuple[float, str, bool]] = []
    t = plan.chaos_s * 0.1
    weights = [WEIGHTS[k] for k in plan.faults]
    while plan.faults:
        t += rng.expovariate(1.0 / plan.fault_gap_s)
        if t >= plan.chaos_s * 0.9:
            break
        later.append((t, rng.choices(plan.faults, weights)[0], False))
    return sorted(first + later)


# -------------------------------------------------------------------------------------- results


@dataclass
class Fault:
    kind: str
    at_s: float  # seconds into the run
    target: str = ""  # a worker's name, or the server
    job_id: int | None = None  # the job it interrupted (process faults)
    duration_s: float = 0.0
    note: str = ""
    # Internal: when it ends, and the processes (pid, start time) to continue then.
    end_at: float | None = field(default=None, repr=False)
    pids: list[tuple[int, str]] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "at_s": round(self.at_s, 1), "target": self.target,
                "job_id": self.job_id, "duration_s": self.duration_s, "note": self.note}


@dataclass
class Interruption:
    """A process fault that hit a running job, and when the job ran again in a new attempt."""

    fault: str
    job_id: int
    attempts_at: int
    at: float  # monotonic
    running_again_s: float | None = None


@dataclass
class Tracked:
    """A job of the run: what it is and how it must end."""

    label: str
    kind: str  # twin, sweep, pretrain, finetune, cancel, reconstruct, evaluate
    expected: str = "succeeded"
    pair: int | None = None
    protected: bool = False
    cancel_when: str | None = None
    submitted_at: float = 0.0
    cancel_sent: bool = False
    cancel_tries: int = 0


@dataclass
class ChaosResult(RunOutcome):
    plan: dict[str, Any]
    readonly_mechanism: str | None
    wall_s: float
    setup_s: float
    chaos_s: float
    drain_s: float
    workers_started: int
    jobs_by_kind: dict[str, int]
    jobs_by_state: dict[str, int]
    faults_by_kind: dict[str, int]
    faults: list[dict[str, Any]]
    #: stop_job faults whose job process was gone by the SIGCONT (ended by its worker).
    stopped_jobs_ended_by_worker: int
    running_again: Spread
    #: Interruptions whose job never ran in a new attempt (resumed in place, or never again).
    no_new_attempt: dict[str, int]
    requeued_by_reaper: int
    lost_attempts: int
    max_attempts_seen: int
    attempts_histogram: dict[int, int]
    twins: dict[str, int]
    blobs: int
    orphans: int
    tmp_files: int
    lease_lost_stops: int
    resent_messages: int
    duplicates_dropped: int
    submission_errors: list[str]


# ------------------------------------------------------------------------------------ processes


def start_time(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat): with the pid, its identity."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def identity(pid: int) -> tuple[int, str] | None:
    start = start_time(pid)
    return (pid, start) if start is not None else None


def signal_same(ident: tuple[int, str], sig: signal.Signals) -> bool:
    """Send `sig` if the process is still the one recorded (not a reused pid); True if sent."""
    pid, start = ident
    if start_time(pid) != start or not pid_alive(pid):
        return False
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


# ---------------------------------------------------------------------------------------- store


def readonly_mechanism(probe_root: Path) -> str | None:
    """How this process can make a folder read-only for every writer here: `chmod` (not root),
    `chattr` (root, on a filesystem with the immutable flag), or None."""
    probe = probe_root / "readonly-probe"
    probe.mkdir(parents=True, exist_ok=True)
    try:
        if os.geteuid() != 0:
            return "chmod"
        if shutil.which("chattr") is None:
            return None
        if subprocess.run(["chattr", "+i", str(probe)], capture_output=True).returncode != 0:
            return None
        try:
            (probe / "x").write_bytes(b"")
        except OSError:
            return "chattr"
        return None  # the flag did not stop the write
    finally:
        subprocess.run(["chattr", "-i", str(probe)], capture_output=True)
        shutil.rmtree(probe, ignore_errors=True)


def set_readonly(folder: Path, mechanism: str, on: bool) -> str:
    """Make the folder tree read-only (or writable again); '' or what went wrong."""
    if mechanism == "chattr":
        cmd = ["chattr", "-R", "-f", "+i" if on else "-i", str(folder)]
    else:
        cmd = ["chmod", "-R", "a-w" if on else "u+w", str(folder)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    # A file renamed away while the tree is walked is not an error of the fault.
    return "" if result.returncode == 0 else (result.stderr.strip()[-300:] or f"exit {result.returncode}")


def tmp_files(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if ".tmp-" in p.name) if folder.exists() else []


# ------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class FinalJob:
    id: int
    kind: str
    status: str
    attempts: int
    lost: int
    error: str | None
    result: dict[str, Any]
    input_model_id: int | None
    checkpoint_every: int | None


def read_final(settings: Settings) -> dict[int, FinalJob]:
    """Every job in the registry, with what the final checks need."""
    from sqlalchemy import select

    from orchestrator.registry.db import session_scope
    from orchestrator.registry.models import Job

    with session_scope(settings) as s:
        rows = s.execute(select(Job.id, Job.kind, Job.status, Job.attempts, Job.lost, Job.error, Job.result,
                                Job.input_model_id, Job.params)).all()
    return {r.id: FinalJob(r.id, r.kind, r.status, r.attempts, r.lost, r.error, dict(r.result or {}),
                           r.input_model_id,
                           ((r.params or {}).get("config") or {}).get("checkpoint_every"))
            for r in rows}


def all_job_ids(settings: Settings) -> list[int]:
    from sqlalchemy import select

    from orchestrator.registry.db import session_scope
    from orchestrator.registry.models import Job

    with session_scope(settings) as s:
        return list(s.scalars(select(Job.id)))


def final_models(settings: Settings, ids: list[int]) -> list[int]:
    """The final models of these training jobs that succeeded."""
    from sqlalchemy import select

    from orchestrator.registry.db import session_scope
    from orchestrator.registry.models import Job

    with session_scope(settings) as s:
        rows = s.execute(select(Job.result).where(Job.id.in_(ids), Job.status == "succeeded")).all()
    return [int(r.result["final_model_id"]) for r in rows if (r.result or {}).get("final_model_id")]


# --------------------------------------------------------------------------------------- checks


def check_expected(final: dict[int, FinalJob], tracked: dict[int, Tracked]) -> Check:
    bad = []
    for job_id, job in sorted(final.items()):
        expected = tracked[job_id].expected if job_id in tracked else "succeeded"
        if job.status != expected:
            label = tracked[job_id].label if job_id in tracked else "not submitted by the run"
            bad.append(f"job {job_id} ({label}) {job.status}, expected {expected}"
                       + (f": {job.error}" if job.error else ""))
    missing = sorted(set(tracked) - set(final))
    bad += [f"job {i} missing from the registry" for i in missing]
    return Check("every job ended as expected (succeeded, or cancelled by the run)", not bad,
                 "; ".join(bad))


def check_unfinished(final: dict[int, FinalJob]) -> Check:
    left = [f"job {j.id} {j.status}" for j in final.values() if j.status not in FINISHED]
    return Check("no job left queued, waiting or running", not left, "; ".join(left))


def check_attempts(final: dict[int, FinalJob], cap: int) -> Check:
    over = [f"job {j.id}: {j.attempts} attempts" for j in final.values() if j.attempts >= cap]
    return Check(f"attempts under the cap (RODIN_MAX_ATTEMPTS={cap})", not over, "; ".join(over))


def check_training_lineage(by_job: dict[int, list[Any]], final: dict[int, FinalJob]) -> Check:
    """Each checkpoint's parent is the job's newest earlier epoch registered before it, or the
    job's input model (the base of a fine-tune); and no periodic checkpoint is missing (every
    multiple of the job's checkpoint_every up to its newest epoch: a resume skipped none)."""
    broken = []
    for job_id, rows in by_job.items():
        job = final.get(job_id)
        if job is None or not rows:
            continue
        for i, row in enumerate(rows):  # ordered by id: the order of registration
            earlier = [r for r in rows[:i] if r.epoch < row.epoch]
            expected = max(earlier, key=lambda r: r.epoch).id if earlier else job.input_model_id
            if row.parent_id != expected:
                broken.append(f"job {job_id} epoch {row.epoch}: parent {row.parent_id}, expected {expected}")
                break
        epochs = {r.epoch for r in rows}
        every = job.checkpoint_every or 0
        skipped = sorted(set(range(every, max(epochs) + 1, every)) - epochs) if every > 0 else []
        if skipped:
            broken.append(f"job {job_id}: periodic epochs {skipped[:10]} missing")
    return Check("one unbroken lineage per training job", not broken, "; ".join(broken[:20]))


def compare_twins(final: dict[int, FinalJob], tracked: dict[int, Tracked]) -> tuple[Check, dict[str, int]]:
    """Twins (same config and seed) whose jobs both succeeded chose the same final epoch."""
    pairs: dict[int, list[int]] = {}
    for job_id, t in tracked.items():
        if t.pair is not None:
            pairs.setdefault(t.pair, []).append(job_id)
    counts = Counter(pairs=len(pairs), compared=0, equal=0, one_interrupted=0, both_interrupted=0)
    bad = []
    for pair, ids in sorted(pairs.items()):
        jobs = [final.get(i) for i in ids]
        if len(ids) != 2 or any(j is None or j.status != "succeeded" for j in jobs):
            continue
        a, b = (j for j in jobs if j is not None)
        interrupted = sum(j.attempts > 1 for j in (a, b))
        counts["compared"] += 1
        counts["one_interrupted"] += interrupted == 1
        counts["both_interrupted"] += interrupted == 2
        ea, eb = a.result.get("final_epoch"), b.result.get("final_epoch")
        if ea is not None and ea == eb:
            counts["equal"] += 1
        else:
            bad.append(f"pair {pair}: job {a.id} (attempts {a.attempts}) epoch {ea}, "
                       f"job {b.id} (attempts {b.attempts}) epoch {eb}")
    detail = "; ".join(bad) if bad else (
        "" if counts["one_interrupted"] else "no pair had exactly one job interrupted")
    return Check("same-seed twins end on the same final epoch", not bad, detail), dict(counts)


# ------------------------------------------------------------------------------------------ run


class ChaosRun:
    def __init__(self, plan: ChaosPlan, cluster: Cluster, redis: RedisServer, pg: PostgresServer,
                 store: Path, readonly: str | None, rng: random.Random, specs: list[Spec],
                 schedule: list[tuple[float, str, bool]]):
        self.plan, self.cluster, self.redis, self.pg = plan, cluster, redis, pg
        self.store, self.readonly = store, readonly
        self.rng, self.specs, self.schedule = rng, specs, schedule
        self.settings = cluster.settings()
        self.tracked: dict[int, Tracked] = {}
        self.faults: list[Fault] = []
        self.active: list[Fault] = []  # faults with a duration, not ended yet
        self.kills: list[Kill] = []
        self.interruptions: list[Interruption] = []
        self.unexpected: list[str] = []
        self.seen_pids: set[tuple[int, str]] = set()
        self.rows: dict[int, JobView] = {}
        self.submission_errors: list[str] = []
        self.stopped_workers: set[str] = set()  # names under stop_worker or stop_job
        self.t0 = time.monotonic()
        self.t0_wall = time.time()
        self.pg_down = False
        self.last_server_end = 0.0  # monotonic end of the last fault of a server

    # ---------------------------------------------------------------------------- the clock

    def now_s(self) -> float:
        return time.monotonic() - self.t0

    def server_fault_active(self) -> bool:
        return any(f.kind in SERVER_FAULTS for f in self.active)

    # ----------------------------------------------------------------------------- clients

    def cli(self, *args: str) -> dict[str, Any] | None:
        """One client command; None (and the error noted) when it fails."""
        try:
            return self.cluster.cli(*args, timeout=CLI_TIMEOUT_S)
        except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError, IndexError) as exc:
            message = f"rodin {' '.join(args[:3])}: {' '.join(str(exc).split())[-400:]}"
            self.submission_errors.append(message)
            say(message)
            return None

    def track(self, job_id: int, t: Tracked) -> None:
        t.submitted_at = time.monotonic()
        self.tracked[job_id] = t

    def setup(self) -> None:
        """Schema, dataset, and the chain's first fine-tune (it generates and stores the
        pre-training set, so it is queued before the store can turn read-only)."""
        self.cluster.cli("db", "upgrade")
        self.cluster.cli("datasets", "make", "swords", "--count", "8", "--points-per-shape", "400")
        out = self.cluster.cli("submit", "train", "--dataset", "swords", *PRETRAIN_FLAGS, *flags(),
                               "--epochs", str(self.plan.epochs), "--seed", "20", timeout=CLI_TIMEOUT_S)
        self.track(out["pretrain_job_id"], Tracked("pre-train", "pretrain"))
        self.track(out["job_id"], Tracked("fine-tune 1", "finetune"))

    def submit_due(self) -> None:
        if self.server_fault_active():
            return
        now = self.now_s()
        for spec in self.specs:
            if spec.done or spec.at_s > now:
                continue
            args = list(spec.args)
            if spec.kind in ("reconstruct", "evaluate"):
                trained = [i for i, t in self.tracked.items() if t.kind in ("twin", "sweep", "finetune", "pretrain")]
                try:
                    models = final_models(self.settings, trained)
                except Exception:  # noqa: BLE001 - the registry may be down; try again later
                    models = []
                if not models:
                    spec.at_s = now + 5.0  # no model yet
                    continue
                args += ["--model", str(self.rng.choice(models))]
            spec.tries += 1
            out = self.cli(*args)
            if out is None:
                if spec.tries >= 3:
                    spec.done = True
                else:
                    spec.at_s = now + 10.0
                continue
            spec.done = True
            if spec.kind == "sweep":
                for job_id in out["job_ids"]:
                    self.track(job_id, Tracked(f"sweep job {job_id}", "sweep"))
            elif spec.kind == "chain":
                self.track(out["job_id"], Tracked(spec.label, "finetune"))
                if out.get("pretrain_job_id") and out["pretrain_job_id"] not in self.tracked:
                    self.track(out["pretrain_job_id"], Tracked("pre-train", "pretrain"))
            else:
                self.track(out["job_id"], Tracked(
                    spec.label, spec.kind, "cancelled" if spec.kind == "cancel" else "succeeded",
                    pair=spec.pair, protected=spec.protected, cancel_when=spec.cancel_when))
            say(f"submitted {spec.label}: {out.get('job_ids') or out.get('job_id')}")
            return  # one client command a poll: the faults keep their times

    def cancel_due(self) -> None:
        if self.server_fault_active():
            return
        for job_id, t in self.tracked.items():
            if t.cancel_when is None or t.cancel_sent:
                continue
            row = self.rows.get(job_id)
            waited = time.monotonic() - t.submitted_at
            running = row is not None and row.status == "running"
            if t.cancel_when == "running" and not running and waited < 60:
                continue
            t.cancel_tries += 1
            out = self.cli("cancel", str(job_id))
            if out is None:
                t.cancel_sent = t.cancel_tries >= 3  # the failures are in submission_errors
                continue
            t.cancel_sent = True
            if out.get("status") == "succeeded":
                t.expected = "succeeded"  # it ended before the cancel (the message says so)
            say(f"cancel job {job_id} ({t.cancel_when}): {out.get('message')}")
            return

    # ----------------------------------------------------------------------------- polling

    def poll(self) -> None:
        try:
            self.rows = read_jobs(self.settings, list(self.tracked))
        except Exception:  # noqa: BLE001 - PostgreSQL may be down: keep the last view
            return
        now = time.monotonic()
        for it in self.interruptions:
            row = self.rows.get(it.job_id)
            if it.running_again_s is None and row is not None and row.attempts > it.attempts_at \
                    and (row.status == "running" or row.status in FINISHED):
                it.running_again_s = now - it.at

    def watch_workers(self) -> None:
        for w in self.cluster.workers:
            if not w.killed and w.proc.poll() is not None and w.name not in self.unexpected:
                say(f"{w.name} exited by itself (code {w.proc.returncode}); see {w.log}")
                self.unexpected.append(w.name)
                self.cluster.start_worker()
        for w in self.cluster.alive():
            for pid in (w.proc.pid, *child_pids(w.proc.pid)):
                ident = identity(pid)
                if ident is not None:
                    self.seen_pids.add(ident)

    def mark_ready(self) -> None:
        try:
            ready = registered_workers(self.settings)
        except Exception:  # noqa: BLE001 - PostgreSQL may be down
            return
        for w in self.cluster.alive():
            w.ready = w.ready or w.name in ready

    # ------------------------------------------------------------------------------ faults

    def candidates(self, busy_only: bool) -> list[tuple[WorkerProc, int | None]]:
        """Workers a process fault may aim at, best first: running the unprotected twin of a
        pair that was not interrupted yet, then any job but a protected twin, then (unless
        `busy_only`) idle ones."""
        running = {r.worker: job_id for job_id, r in self.rows.items() if r.status == "running"}
        ranked: list[tuple[int, WorkerProc, int | None]] = []
        for w in self.cluster.alive():
            if not w.ready or w.name in self.stopped_workers:
                continue
            job_id = running.get(w.name)
            t = self.tracked.get(job_id) if job_id is not None else None
            if t is not None and t.protected:
                continue
            if job_id is None:
                if not busy_only:
                    ranked.append((2, w, None))
                continue
            row = self.rows[job_id]
            first = t is not None and t.pair is not None and row.attempts <= 1
            ranked.append((0 if first else 1, w, job_id))
        if not ranked:
            return []
        best = min(r[0] for r in ranked)
        return [(w, j) for rank, w, j in ranked if rank == best]

    def inject(self, kind: str) -> Fault | None:
        """Inject one fault of this kind now, or None when it cannot be now."""
        if kind in SERVER_FAULTS and (self.server_fault_active()
                                      or time.monotonic() < self.last_server_end + SERVER_GAP_S):
            return None
        if kind in PROCESS_FAULTS and self.pg_down:
            return None  # its job is read from the registry
        at = self.now_s()
        if kind == "kill_worker":
            choice = self.candidates(busy_only=False)
            if not choice:
                return None
            worker, _ = self.rng.choice(choice)
            try:
                kill = kill_worker(worker, self.settings)
            except Exception:  # noqa: BLE001 - the registry went away; the kill happened
                kill = Kill(worker.name, time.monotonic())
            self.kills.append(kill)
            new = self.cluster.start_worker()
            fault = Fault(kind, at, worker.name, kill.job_id, note=f"replaced by {new.name}")
            if kill.job_id is not None:
                self.interruptions.append(Interruption(kind, kill.job_id, kill.attempts_at_kill, kill.at))
            return fault
        if kind in ("kill_job", "stop_job", "stop_worker"):
            choice = self.candidates(busy_only=True)
            if not choice:
                return None
            worker, _ = self.rng.choice(choice)
            try:
                running = running_on(self.settings, worker.name)
            except Exception:  # noqa: BLE001
                return None
            t = self.tracked.get(running[0]) if running else None
            children = [c for c in (identity(p) for p in child_pids(worker.proc.pid)) if c]
            if running is None or (t is not None and t.protected) or not children:
                return None
            job_id, attempts = running
            fault = Fault(kind, at, worker.name, job_id)
            if kind == "kill_job":
                for child in children:
                    signal_same(child, signal.SIGKILL)
                fault.note = f"job process(es) {[c[0] for c in children]}"
            else:
                main = identity(worker.proc.pid)
                targets = children if kind == "stop_job" else [*([main] if main else []), *children]
                for ident in targets:
                    signal_same(ident, signal.SIGSTOP)
                fault.pids, fault.duration_s = targets, self.plan.stop_s
                fault.end_at = time.monotonic() + self.plan.stop_s
                self.stopped_workers.add(worker.name)
                self.active.append(fault)
            self.interruptions.append(Interruption(kind, job_id, attempts, time.monotonic()))
            return fault
        if kind == "redis_restart":
            self.redis.stop()
            time.sleep(REDIS_DOWN_S)
            self.redis.start()
            self.last_server_end = time.monotonic()
            return Fault(kind, at, "redis", duration_s=REDIS_DOWN_S)
        if kind == "pg_outage":
            self.pg.stop()
            self.pg_down = True
            fault = Fault(kind, at, "postgresql", duration_s=self.plan.pg_outage_s,
                          end_at=time.monotonic() + self.plan.pg_outage_s)
            self.active.append(fault)
            return fault
        if kind == "store_readonly":
            if self.readonly is None:
                return None
            problem = set_readonly(self.store, self.readonly, True)
            fault = Fault(kind, at, f"store ({self.readonly})", duration_s=self.plan.readonly_s,
                          end_at=time.monotonic() + self.plan.readonly_s, note=problem)
            self.active.append(fault)
            return fault
        raise ValueError(kind)

    def end_fault(self, fault: Fault) -> None:
        if fault.kind in ("stop_job", "stop_worker"):
            continued = [ident for ident in fault.pids if signal_same(ident, signal.SIGCONT)]
            gone = [ident[0] for ident in fault.pids if ident not in continued]
            if gone:
                fault.note = f"gone before SIGCONT: {gone}"
            self.stopped_workers.discard(fault.target)
        elif fault.kind == "pg_outage":
            for attempt in range(3):
                try:
                    self.pg.start()
                    break
                except subprocess.CalledProcessError:
                    say(f"PostgreSQL did not start (try {attempt + 1}); see {self.pg.folder / 'pg.log'}")
                    time.sleep(2)
            self.pg_down = False
        elif fault.kind == "store_readonly" and self.readonly is not None:
            problem = set_readonly(self.store, self.readonly, False)
            if problem:
                fault.note = (fault.note + "; " if fault.note else "") + f"restore: {problem}"
        if fault.kind in SERVER_FAULTS:
            self.last_server_end = time.monotonic()
        if fault in self.active:
            self.active.remove(fault)
        say(f"ended {fault.kind} on {fault.target}" + (f" ({fault.note})" if fault.note else ""))

    def end_due_faults(self, everything: bool = False) -> None:
        for fault in list(self.active):
            if everything or (fault.end_at is not None and time.monotonic() >= fault.end_at):
                self.end_fault(fault)

    def inject_due(self) -> None:
        now = self.now_s()
        for item in list(self.schedule):
            at, kind, first = item
            if at > now:
                break
            fault = self.inject(kind)
            if fault is None:
                # Not possible now (no running job to aim at, a server fault going on): later.
                # One that waited a minute is dropped, unless it is the first of its kind.
                if now - at > 60 and (not first or self.injected(kind)):
                    self.schedule.remove(item)
                continue
            self.schedule.remove(item)
            self.faults.append(fault)
            say(f"fault {len(self.faults)}: {kind} on {fault.target}"
                + (f" (job {fault.job_id})" if fault.job_id is not None else "")
                + (f" for {fault.duration_s:g} s" if fault.duration_s else "")
                + (f"; {fault.note}" if fault.note else ""))
            return  # one fault a poll

    # -------------------------------------------------------------------------------- loop

    def all_submitted(self) -> bool:
        return all(s.done for s in self.specs) and all(
            t.cancel_sent for t in self.tracked.values() if t.cancel_when)

    def all_finished(self) -> bool:
        return bool(self.rows) and all(
            job_id in self.rows and self.rows[job_id].status in FINISHED for job_id in self.tracked)

    def injected(self, kind: str) -> bool:
        return any(f.kind == kind for f in self.faults)

    def every_kind_injected(self) -> bool:
        return all(self.injected(kind) for kind in self.plan.faults)

    def loop(self) -> tuple[float, float]:
        """Faults and submissions until the chaos ends, then the drain; returns their lengths."""
        chaos_end = self.t0 + self.plan.chaos_s
        deadline = chaos_end + self.plan.drain_s
        chaos_over: float | None = None
        next_ready = 0.0
        while True:
            now = time.monotonic()
            if now >= deadline:
                say("deadline: the jobs still unfinished fail the check")
                break
            self.poll()
            if now >= next_ready:
                self.watch_workers()
                self.mark_ready()
                next_ready = now + 1.0
            self.end_due_faults()
            done = self.all_submitted() and self.all_finished()
            if chaos_over is None and (now >= chaos_end or (done and self.every_kind_injected())):
                chaos_over = now
                say(f"faults over after {now - self.t0:.0f} s; draining for at most "
                    f"{deadline - now:.0f} s")
            if chaos_over is None:
                self.inject_due()
            self.submit_due()
            self.cancel_due()
            if chaos_over is not None and done and not self.active:
                break
            time.sleep(POLL_S)
        self.end_due_faults(everything=True)
        end = time.monotonic()
        chaos_over = chaos_over or end
        return chaos_over - self.t0, end - chaos_over

    def stop(self) -> None:
        """Continue what is stopped, make the store writable, start PostgreSQL if it is down,
        then stop the workers (SIGTERM; SIGKILL after 30 s). Idempotent."""
        for fault in list(self.active):
            try:
                self.end_fault(fault)
            except Exception as exc:  # noqa: BLE001 - tear down the rest regardless
                say(f"could not end {fault.kind}: {exc}")
        self.cluster.stop(timeout=30)

    def teardown(self) -> None:
        """`stop`, then SIGKILL whatever process of the cluster is left."""
        self.stop()
        for ident in self.seen_pids:
            signal_same(ident, signal.SIGKILL)

    def leftovers(self) -> list[int]:
        deadline = time.monotonic() + 10
        while True:
            alive = [pid for pid, start in self.seen_pids if start_time(pid) == start and pid_alive(pid)]
            if not alive or time.monotonic() >= deadline:
                return alive
            time.sleep(0.2)


def run_chaos(plan: ChaosPlan, root: Path | None = None, keep: bool = False) -> ChaosResult:
    """The whole run (see the module's docstring); raises ServerUnavailable without the servers."""
    folder = root or Path(tempfile.mkdtemp(prefix="rodin-chaos-"))
    folder.mkdir(parents=True, exist_ok=True)
    store = folder / "artifacts"
    readonly = readonly_mechanism(folder) if "store_readonly" in plan.faults else None
    if "store_readonly" in plan.faults and readonly is None:
        say("the store cannot be made read-only here (root without chattr +i): that fault is skipped")
        plan.faults = tuple(k for k in plan.faults if k != "store_readonly")
    rng = random.Random(plan.seed)
    specs = job_specs(plan, rng)
    schedule = fault_schedule(plan, rng)
    # Above the number of faults the run can inject: faults alone can never fail a job.
    plan.max_attempts = max(20, len(schedule) + 10)
    say(f"run folder: {folder}")
    jobs = 2 + sum((4 if plan.jobs >= 40 else 2) if spec.kind == "sweep" else 1 for spec in specs)
    say(f"plan: {jobs} jobs (a pre-training and its first fine-tune at setup, {len(specs)} submissions during "
        f"the run), {len(schedule)} faults over {plan.minutes:g} min")
    result: ChaosResult | None = None
    try:
        with ExitStack() as stack:
            # Whatever happens, the store is writable again before the folder is removed.
            if readonly is not None:
                stack.callback(lambda: store.exists() and set_readonly(store, readonly, False))
            redis = stack.enter_context(redis_server())
            pg = stack.enter_context(postgres_server())
            cluster = Cluster(folder, {
                "RODIN_BROKER_URL": redis.url, "RODIN_DATABASE_URL": pg.create_database("chaos"),
                "RODIN_ARTIFACTS_URL": store.as_uri(),
                "RODIN_STALE_AFTER_S": f"{plan.stale_after_s:g}",
                "RODIN_PROGRESS_TIMEOUT_S": f"{plan.progress_timeout_s:g}",
                "RODIN_MAX_ATTEMPTS": str(plan.max_attempts)})
            run = ChaosRun(plan, cluster, redis, pg, store, readonly, rng, specs, schedule)
            stack.callback(run.teardown)
            result = _execute(run)
    except ServerUnavailable:
        if root is None:
            shutil.rmtree(folder, ignore_errors=True)  # nothing ran: nothing to keep
        raise
    finally:
        if result is not None and result.ok and root is None and not keep:
            shutil.rmtree(folder, ignore_errors=True)
    assert result is not None
    return result


def _execute(run: ChaosRun) -> ChaosResult:
    plan = run.plan
    conditions = machine_conditions()
    started = time.monotonic()
    say(f"seed {plan.seed}; {plan.workers} workers; SIGSTOP {plan.stop_s:g} s, PostgreSQL outage "
        f"{plan.pg_outage_s:g} s, store read-only {plan.readonly_s:g} s ({run.readonly or 'skipped'}); "
        f"RODIN_STALE_AFTER_S={plan.stale_after_s:g}, RODIN_PROGRESS_TIMEOUT_S={plan.progress_timeout_s:g}, "
        f"RODIN_MAX_ATTEMPTS={plan.max_attempts}")
    run.setup()
    for _ in range(plan.workers):
        run.cluster.start_worker()
    setup_s = time.monotonic() - started
    run.t0, run.t0_wall = time.monotonic(), time.time()
    run.poll()
    chaos_s, drain_s = run.loop()
    # The registry as the run left it, before the workers stop (a clean stop gives jobs back).
    final = read_final(run.settings)
    run.stop()
    left = run.leftovers()
    run.teardown()
    conditions["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return _result(run, final, left, time.monotonic() - started, setup_s, chaos_s, drain_s, conditions)


def _requeued(logs: list[Path]) -> int:
    texts = [p.read_text(errors="replace") for p in logs if p.exists()]
    return sum(len(line.split("job(s)", 1)[1].split(",")) for text in texts
               for line in text.splitlines() if "reaper requeued job(s)" in line)


def _result(run: ChaosRun, final: dict[int, FinalJob], left: list[int], wall: float, setup_s: float,
            chaos_s: float, drain_s: float, conditions: dict[str, Any]) -> ChaosResult:
    plan, settings = run.plan, run.settings
    ids = sorted(final)
    by_job = checkpoints(settings, [i for i in ids if final[i].kind == "train"])
    blobs = check_blobs(settings)
    from orchestrator.artifacts import open_store
    from orchestrator.gc import find_orphans

    orphans = find_orphans(settings, open_store(settings), grace_s=0)
    tmps = tmp_files(run.store)
    twins_check, twins = compare_twins(final, run.tracked)
    injected = Counter(f.kind for f in run.faults)
    missing_kinds = [k for k in plan.faults if not injected[k]]
    survivors = [f"job process(es) {k.survivors} outlived {k.worker}" for k in run.kills if k.survivors]
    unsent = [f"{s.label} never submitted" for s in run.specs if not s.done]
    unsent += [f"job {i} ({t.label}) never cancelled" for i, t in run.tracked.items()
               if t.cancel_when and not t.cancel_sent]
    checks = [
        Check("every submission accepted", not run.submission_errors and not unsent,
              "; ".join(run.submission_errors + unsent)),
        check_expected(final, run.tracked),
        check_unfinished(final),
        check_attempts(final, plan.max_attempts),
        check_unique_epochs(by_job),
        check_training_lineage(by_job, final),
        twins_check,
        Check("rodin gc finds nothing unreferenced (no grace period)", not orphans,
              ", ".join(f"{o.uri.rsplit('/', 1)[-1][:12]}...{o.uri.rsplit('.', 1)[-1][:7]} "
                        f"({o.size} bytes, written at {time.time() - o.age_s - run.t0_wall:.0f} s)"
                        for o in orphans[:10])
              + (f" and {len(orphans) - 10} more" if len(orphans) > 10 else "")),
        blobs.dangling,
        Check("no *.tmp-* file left in the store", not tmps, ", ".join(tmps[:10])),
        Check("no worker exited by itself", not run.unexpected, ", ".join(run.unexpected)),
        Check("no job process outlived its killed worker", not survivors, "; ".join(survivors)),
        Check("no process of the cluster left after the workers stopped", not left,
              f"pids {left} (killed)" if left else ""),
        Check("every enabled kind of fault injected", not missing_kinds, ", ".join(missing_kinds)),
    ]
    stops = [f for f in run.faults if f.kind == "stop_job"]
    if stops:  # the stop outlasts RODIN_PROGRESS_TIMEOUT_S: a live worker ends the process first
        resumed = [f"job {f.job_id} on {f.target} at {f.at_s:.0f} s" for f in stops if "gone" not in f.note]
        checks.insert(-1, Check(f"every SIGSTOPped job process ended by its worker within "
                                f"RODIN_PROGRESS_TIMEOUT_S={plan.progress_timeout_s:g}", not resumed,
                                "still there at SIGCONT: " + "; ".join(resumed) if resumed else ""))
    kinds = Counter(run.tracked[i].kind if i in run.tracked else "other" for i in ids)
    hits = run.interruptions
    logs = [w.log for w in run.cluster.workers]
    counts = count_logs(logs)
    return ChaosResult(
        plan={k: v for k, v in asdict(plan).items()}, readonly_mechanism=run.readonly,
        wall_s=round(wall, 1), setup_s=round(setup_s, 1), chaos_s=round(chaos_s, 1),
        drain_s=round(drain_s, 1), workers_started=len(run.cluster.workers),
        jobs_by_kind=dict(sorted(kinds.items())),
        jobs_by_state=dict(sorted(Counter(j.status for j in final.values()).items())),
        faults_by_kind={k: injected[k] for k in FAULT_KINDS},
        faults=[f.as_dict() for f in run.faults],
        stopped_jobs_ended_by_worker=sum(1 for f in run.faults if f.kind == "stop_job" and "gone" in f.note),
        running_again=Spread.of([i.running_again_s for i in hits if i.running_again_s is not None]),
        no_new_attempt=dict(Counter(i.fault for i in hits if i.running_again_s is None)),
        requeued_by_reaper=_requeued(logs), lost_attempts=sum(j.lost for j in final.values()),
        max_attempts_seen=max((j.attempts for j in final.values()), default=0),
        attempts_histogram=dict(sorted(Counter(j.attempts for j in final.values()).items())),
        twins=twins, blobs=blobs.total, orphans=len(orphans), tmp_files=len(tmps),
        lease_lost_stops=counts.lease_lost_stops, resent_messages=counts.resent_messages,
        duplicates_dropped=counts.duplicates_dropped, submission_errors=run.submission_errors,
        checks=checks, conditions=conditions, folder=str(run.cluster.root),
        worker_logs=[str(p) for p in logs])


# ----------------------------------------------------------------------------------------- text


def _counts(counts: dict[str, int] | dict[int, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"


def report(r: ChaosResult, out: Callable[[str], None] = print) -> None:
    """The run as a markdown table (what goes in the README), then the checks."""
    p, c = r.plan, r.conditions
    twins = r.twins
    ro = f"{p['readonly_s']:g} s ({r.readonly_mechanism})" if r.readonly_mechanism else "skipped"
    rows = [
        ("machine", f"{c['cores']} cores, Python {c['python']}, niceness {c['niceness']}, load "
                    f"{' '.join(map(str, c['load_average_at_start']))} -> "
                    f"{' '.join(map(str, c.get('load_average_at_end', [])))}"),
        ("duration", f"{r.chaos_s / 60:.1f} min of faults (of {p['minutes']:g}) + {r.drain_s:.0f} s drain; "
                     f"setup {r.setup_s:.0f} s; wall {r.wall_s / 60:.1f} min"),
        ("workers", f"{p['workers']} at a time, {r.workers_started} started in all"),
        ("settings", f"seed {p['seed']}; SIGSTOP {p['stop_s']:g} s, PostgreSQL outage {p['pg_outage_s']:g} s, "
                     f"store read-only {ro}; RODIN_STALE_AFTER_S={p['stale_after_s']:g}, "
                     f"RODIN_PROGRESS_TIMEOUT_S={p['progress_timeout_s']:g}, "
                     f"RODIN_MAX_ATTEMPTS={p['max_attempts']}; {p['epochs']} epochs a training"),
        ("jobs by kind", f"{sum(r.jobs_by_kind.values())}: {_counts(r.jobs_by_kind)}"),
        ("jobs by end state", _counts(r.jobs_by_state)),
        ("faults injected", f"{sum(r.faults_by_kind.values())}: {_counts(r.faults_by_kind)}"),
        ("stopped job processes ended by their worker", f"{r.stopped_jobs_ended_by_worker} of "
                                                         f"{r.faults_by_kind.get('stop_job', 0)}"),
        ("interrupted -> running again (new attempt)", r.running_again.text()
         + (f"; no new attempt: {_counts(r.no_new_attempt)}" if r.no_new_attempt else "")),
        ("requeues", f"{r.requeued_by_reaper} by the reaper; {r.lost_attempts} lost attempts; "
                     f"{r.resent_messages} messages resent; {r.lease_lost_stops} live attempts lost "
                     f"their lease; {r.duplicates_dropped} repeated deliveries dropped"),
        ("attempts", f"max {r.max_attempts_seen} (cap {p['max_attempts']}); attempts -> jobs: "
                     f"{_counts(r.attempts_histogram)}"),
        ("twins (same seed)", f"{twins['pairs']} pairs, {twins['compared']} compared "
                              f"({twins['one_interrupted']} with one interrupted, {twins['both_interrupted']} "
                              f"both), {twins['equal']} on the same final epoch"),
        ("store", f"{r.blobs} files, {r.orphans} unreferenced, {r.tmp_files} temporary"),
    ]
    out("| soak_chaos | |")
    out("|---|---|")
    for name, value in rows:
        out(f"| {name} | {value} |")
    out("")
    out("| check | result |")
    out("|---|---|")
    for check in r.checks:
        out(f"| {check.name} | {'ok' if check.ok else 'FAIL'}"
            + (f": {check.detail[:1500]}" if check.detail else "") + " |")
    if not r.ok:
        out("")
        for line in r.kept_folder_lines():
            out(line)


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM (and SIGINT) end the run through the same teardown as an exception."""
    def stop(signum: int, _frame: FrameType | None) -> None:
        for s in (signal.SIGTERM, signal.SIGINT):  # once: the teardown must not be cut short
            signal.signal(s, signal.SIG_IGN)
        raise Interrupted(signal.Signals(signum).name)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="minutes of faults (default 30)")
    parser.add_argument("--workers", type=int, default=3, help="workers at a time (default 3)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="about this many jobs (default: 100 for 30 minutes, scaled; at least 14)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of a training (default 400)")
    parser.add_argument("--faults", default=",".join(FAULT_KINDS),
                        help=f"kinds of fault to inject, comma-separated (default: all: {','.join(FAULT_KINDS)})")
    parser.add_argument("--progress-timeout", type=float, default=None,
                        help="RODIN_PROGRESS_TIMEOUT_S of the workers (default: 45 s; 20 s under 10 minutes)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the run's choices (default: random, printed)")
    parser.add_argument("--keep", action="store_true", help="keep the run's folder even if every check held")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    kinds = tuple(k.strip() for k in args.faults.split(",") if k.strip())
    unknown = [k for k in kinds if k not in FAULT_KINDS]
    if unknown:
        parser.error(f"unknown fault kind(s) {', '.join(unknown)}; choose from {', '.join(FAULT_KINDS)}")
    plan = make_plan(args.minutes, args.workers, args.jobs, args.seed, args.epochs, kinds,
                     args.progress_timeout)
    try:
        with _signals_interrupt():
            result = run_chaos(plan, keep=args.keep)
    except ServerUnavailable as exc:
        print(f"soak_chaos: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"soak_chaos: interrupted ({exc}); servers and workers stopped", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        report(result)
        failed = [c.name for c in result.checks if not c.ok]
        if failed:
            print(f"\nFAILED: {'; '.join(failed)}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
