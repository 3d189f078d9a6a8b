"""Soak: training jobs on Redis + PostgreSQL while workers are SIGKILLed at random.

    python -m scripts.soak_kill                  # 20 jobs, 3 workers, a kill every 4 s, 12 kills
    python -m scripts.soak_kill --jobs 3 --workers 2 --max-kills 3 --timeout 180 --json

Everything runs on loopback and in a temporary folder: Redis (AOF) and PostgreSQL are started
from their binaries as the integration tests start them (tests/servers.py), the artifact store
is a folder that every worker shares. After `rodin db upgrade` and a small swords dataset, N tiny
training jobs are submitted, W workers started, and a killer SIGKILLs a random live worker's main
process every few seconds (its job process dies with it: PR_SET_PDEATHSIG) and starts a new
worker, with a new name, in its place. Killing stops after K kills or when one job is left; the
whole run is bounded by a timeout.

For every kill that interrupted a running job, the registry is polled (every 0.2 s) for the time
until the reaper took the job back and until it was running again on another worker. At the end
the workers are stopped (SIGTERM) and the run checks that every job succeeded, that no
(job, epoch) checkpoint was registered twice, that each job's checkpoints form one unbroken
lineage, and that every blob in the store is either referenced by the registry or listed by
`rodin gc` (orchestrator.gc.find_orphans with no grace period). Exit code 1 when a check fails;
the run's folder (with each worker's log) is then kept and its path printed.

RODIN_MAX_ATTEMPTS is set above the number of kills, so that kills alone can never fail a job:
a failed job here is a bug, not the attempt cap doing its work. RODIN_STALE_AFTER_S is short, to
keep the run short, but by default twice the workers' heartbeat interval (5 s): a threshold
below the interval takes back live attempts between two beats (`--stale-after 4` shows it, as
"live attempts that lost their lease").

Run it from the repository root as a module (it imports tests/servers.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.servers import ServerUnavailable, postgres_server, redis_server

#: A job of a few seconds on one CPU thread; one checkpoint per epoch, so a kill costs at most
#: one epoch and every resumption is visible in the lineage.
TRAIN_FLAGS = ["--patches", "4", "--points", "128", "--bottleneck", "32", "--hidden", "32",
               "--layers", "1", "--batch-size", "4", "--checkpoint-every", "1",
               "--val-fraction", "0.25"]
#: Variables of the caller's own rodin that must not leak into the cluster's processes.
RODIN_VARS = ("RODIN_HOME", "RODIN_DATABASE_URL", "RODIN_BROKER_URL", "RODIN_ARTIFACTS_URL",
              "RODIN_CONFIG", "RODIN_DEVICE", "RODIN_WORKER_NAME", "RODIN_DEBUG",
              "RODIN_STALE_AFTER_S", "RODIN_MAX_ATTEMPTS", "RODIN_PROGRESS_TIMEOUT_S")
if TYPE_CHECKING:
    from orchestrator.settings import Settings

POLL_S = 0.2
FINISHED = ("succeeded", "failed", "cancelled")


def say(message: str) -> None:
    """Progress on stderr: stdout carries the figures (or the one JSON object)."""
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------- results


@dataclass
class Kill:
    """One SIGKILL, and what became of the job it interrupted (monotonic seconds)."""

    worker: str
    at: float
    job_id: int | None = None  # the job running on the worker when its processes were gone
    attempts_at_kill: int = 0
    #: Kill -> the reaper took the job back (no longer `running` on the dead worker).
    taken_back_s: float | None = None
    #: Kill -> the job `running` again on another worker.
    running_again_s: float | None = None
    running_again_on: str | None = None
    #: Job processes still alive 10 s after their worker was killed (PR_SET_PDEATHSIG failed).
    survivors: list[int] = field(default_factory=list)

    @property
    def pending(self) -> bool:
        return self.job_id is not None and self.running_again_s is None


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class Spread:
    """Median and max of a set of durations, in seconds."""

    n: int
    median_s: float | None
    max_s: float | None

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        if not values:
            return cls(0, None, None)
        return cls(len(values), round(statistics.median(values), 2), round(max(values), 2))

    def text(self) -> str:
        if not self.n:
            return "n=0"
        return f"median {self.median_s:.2f} s, max {self.max_s:.2f} s (n={self.n})"


@dataclass
class RunOutcome:
    """What every soak run ends with: its checks, the machine's conditions, its folder and
    its workers' logs (the fields of a run's own result come after these)."""

    checks: list[Check]
    conditions: dict[str, Any]
    folder: str
    worker_logs: list[str]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        # JSON object keys are text; histograms (int keys) stay ordered by their integer keys.
        for key, value in data.items():
            if isinstance(value, dict) and value and all(isinstance(k, int) for k in value):
                data[key] = {str(k): v for k, v in sorted(value.items())}
        return data

    def kept_folder_lines(self) -> list[str]:
        """Where to look when a check failed: the kept folder and each worker's log."""
        return [f"run folder (kept): {self.folder}", *(f"worker log: {log}" for log in self.worker_logs)]


@dataclass
class SoakResult(RunOutcome):
    jobs: int
    workers: int
    workers_started: int
    kills: int
    kills_on_running_job: int
    stale_after_s: float
    max_attempts: int
    epochs: int
    #: attempts -> number of jobs (and the same for lost attempts).
    attempts_histogram: dict[int, int]
    lost_histogram: dict[int, int]
    wall_s: float
    taken_back: Spread
    running_again: Spread
    #: Kills whose job never ran again before the end (it failed, or the run timed out).
    not_running_again: int
    blobs: int
    orphans: int
    #: From the workers' logs: attempts of live workers that stopped because their lease was
    #: gone (a live attempt taken back: its heartbeat was late by more than RODIN_STALE_AFTER_S),
    #: messages the reaper sent again, and repeated deliveries that the claim dropped.
    lease_lost_stops: int
    resent_messages: int
    duplicates_dropped: int


# ------------------------------------------------------------------------------------- cluster


@dataclass
class WorkerProc:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    ready: bool = False
    killed: bool = False


class Cluster:
    """The shared settings, the client's home, and the worker processes (each its own home, as
    on its own machine)."""

    def __init__(self, root: Path, shared: dict[str, str]):
        self.root, self.shared = root, shared
        self.workers: list[WorkerProc] = []
        self._count = 0

    def env(self, home: Path) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if k not in RODIN_VARS}
        return {**base, "RODIN_HOME": str(home), "PYTHONUNBUFFERED": "1", **self.shared}

    @property
    def client_env(self) -> dict[str, str]:
        return self.env(self.root / "client")

    def settings(self) -> Settings:
        from orchestrator.settings import load_settings

        return load_settings(self.client_env)

    def cli(self, *args: str, timeout: float = 300) -> dict[str, Any]:
        """One `rodin ... --json` command as a user runs it; its JSON object."""
        result = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args, "--json"],
                                env=self.client_env, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"rodin {' '.join(args)} failed: {result.stderr.strip()[-2000:]}")
        return json.loads(result.stdout.strip().splitlines()[-1])

    def start_worker(self) -> WorkerProc:
        self._count += 1
        name = f"soak-{self._count}"
        home = self.root / "workers" / name
        home.mkdir(parents=True)
        log = self.root / "workers" / f"{name}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "worker", "--hostname", name, "--device", "cpu",
             "--queues", "train,infer", "--loglevel", "INFO"],
            env={**self.env(home), "OMP_NUM_THREADS": "1"}, cwd=home,
            stdout=log.open("ab"), stderr=subprocess.STDOUT)
        worker = WorkerProc(name, proc, log)
        self.workers.append(worker)
        return worker

    def alive(self) -> list[WorkerProc]:
        return [w for w in self.workers if not w.killed and w.proc.poll() is None]

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM (a warm stop: nothing runs any more), then wait; SIGKILL what hangs."""
        for w in self.alive():
            w.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for w in self.workers:
            try:
                w.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                say(f"{w.name} did not stop within {timeout:g} s of SIGTERM; killing it")
                w.proc.kill()
                w.proc.wait()


# ------------------------------------------------------------------------------------ registry


@dataclass(frozen=True)
class JobView:
    status: str
    worker: str | None
    attempts: int
    lost: int
    error: str | None


def read_jobs(settings: Settings, ids: list[int]) -> dict[int, JobView]:
    from sqlalchemy import select

    from orchestrator.registry.db import session_scope
    from orchestrator.registry.models import Job

    with session_scope(settings) as s:
        rows = s.execute(select(Job.id, Job.status, Job.worker, Job.attempts, Job.lost, Job.error)
                         .where(Job.id.in_(ids))).all()
    return {r.id: JobView(r.status, r.worker, r.attempts, r.lost, r.error) for r in rows}


def registered_workers(settings: Settings) -> set[str]:
    """Workers whose start-up has reached the registry (their heartbeat thread runs)."""
    from orchestrator.registry.db import session_scope
    from orchestrator.registry.queries import live_workers

    with session_scope(settings) as s:
        return {w.hostname for w in live_workers(s, settings.worker_timeout_s)}


def running_on(settings: Settings, worker: str) -> tuple[int, int] | None:
    """(job id, attempts) of the job the registry has `running` on this worker, if any."""
    from sqlalchemy import select

    from orchestrator.registry.db import session_scope
    from orchestrator.registry.models import Job

    with session_scope(settings) as s:
        row = s.execute(select(Job.id, Job.attempts).where(
            Job.status == "running", Job.worker == worker)).first()
    return (row.id, row.attempts) if row else None


# -------------------------------------------------------------------------------------- killer


def child_pids(pid: int) -> list[int]:
    """Processes whose parent is `pid` (Celery's pool child), read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: fields follow its last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def pid_alive(pid: int) -> bool:
    """Running, and not a zombie waiting for a parent (PID 1 in a container may never reap)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def kill_worker(worker: WorkerProc, settings: Settings) -> Kill:
    """SIGKILL the worker's main process; wait for it and its job process to be gone, then read
    which job the registry still has running on it (the job this kill interrupted)."""
    children = child_pids(worker.proc.pid)
    kill = Kill(worker.name, time.monotonic())
    worker.proc.send_signal(signal.SIGKILL)
    worker.killed = True
    worker.proc.wait()
    deadline = time.monotonic() + 10
    while any(pid_alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    kill.survivors = [p for p in children if pid_alive(p)]
    # Read after every process of the worker is gone: nothing but the reaper can change the row
    # now, so a job still `running` on this worker is one that the kill interrupted.
    running = running_on(settings, worker.name)
    if running is not None:
        kill.job_id, kill.attempts_at_kill = running
    return kill


def follow_kill(kill: Kill, job: JobView | None, now: float) -> None:
    """Record when the killed worker's job was taken back and when it ran again elsewhere."""
    if job is None or not kill.pending:
        return
    on_dead_worker = job.status == "running" and job.worker == kill.worker
    if kill.taken_back_s is None and not on_dead_worker:
        kill.taken_back_s = now - kill.at
    if job.status == "running" and job.worker not in (None, kill.worker):
        kill.running_again_s, kill.running_again_on = now - kill.at, job.worker
    elif job.status == "succeeded" and job.attempts > kill.attempts_at_kill:
        # Ran again and ended between two polls: the end bounds the restart from above.
        kill.running_again_s, kill.running_again_on = now - kill.at, job.worker


@dataclass
class Plan:
    jobs: int
    workers: int
    max_kills: int
    kill_every_s: float
    timeout_s: float
    epochs: int
    stale_after_s: float
    max_attempts: int
    #: "any": a random live worker (the soak); "busy": a random one running a job when there is
    #: one (a short test, so that its few kills do interrupt jobs).
    target: str = "any"
    #: Killing stops once this few jobs (or fewer) are left unfinished.
    stop_killing_at: int = 1


def run_until_done(cluster: Cluster, settings: Settings, ids: list[int], plan: Plan, deadline: float,
                   rng: random.Random) -> tuple[list[Kill], list[str]]:
    """The killer loop; returns the kills and the workers that exited by themselves."""
    kills: list[Kill] = []
    unexpected: list[str] = []
    next_kill = time.monotonic() + plan.kill_every_s
    next_ready_check = 0.0
    while time.monotonic() < deadline:
        now = time.monotonic()
        rows = read_jobs(settings, ids)
        for kill in kills:
            follow_kill(kill, rows.get(kill.job_id) if kill.job_id is not None else None, now)
        unfinished = [i for i in ids if rows.get(i) is None or rows[i].status not in FINISHED]
        if not unfinished:
            break
        for w in cluster.workers:
            if not w.killed and w.proc.poll() is not None and w.name not in unexpected:
                # A worker that dies by itself is a bug the soak exists to find: note it and
                # keep the cluster at strength.
                say(f"{w.name} exited by itself (code {w.proc.returncode}); see {w.log}")
                unexpected.append(w.name)
                cluster.start_worker()
        if now >= next_ready_check:
            ready = registered_workers(settings)
            for w in cluster.alive():
                w.ready = w.ready or w.name in ready
            next_ready_check = now + 1.0
        if (len(kills) < plan.max_kills and len(unfinished) > plan.stop_killing_at
                and now >= next_kill):
            candidates = _candidates(cluster, rows, plan.target)
            if candidates:
                kills.append(kill_worker(rng.choice(candidates), settings))
                last = kills[-1]
                cluster.start_worker()
                say(f"kill {len(kills)}: {last.worker}"
                    + (f" (job {last.job_id} running)" if last.job_id else " (no job running on it)")
                    + f"; {len(unfinished)} job(s) unfinished")
                next_kill = time.monotonic() + plan.kill_every_s
        time.sleep(POLL_S)
    return kills, unexpected


def _candidates(cluster: Cluster, rows: dict[int, JobView], target: str) -> list[WorkerProc]:
    """Workers that may be killed now: started (their row is in the registry, so their reaper
    runs), and with target "busy" running a job if any does."""
    ready = [w for w in cluster.alive() if w.ready]
    if target == "busy":
        running = {r.worker for r in rows.values() if r.status == "running"}
        busy = [w for w in ready if w.name in running]
        return busy or ready
    return ready


# -------------------------------------------------------------------------------------- checks


def check_succeeded(rows: dict[int, JobView], ids: list[int]) -> Check:
    bad = {i: (rows[i].status, rows[i].error) if i in rows else ("missing", None) for i in ids
           if i not in rows or rows[i].status != "succeeded"}
    detail = "; ".join(f"job {i} {status}" + (f": {error}" if error else "")
                       for i, (status, error) in bad.items())
    return Check("all jobs succeeded", not bad, detail)


def checkpoints(settings: Settings, ids: list[int]) -> dict[int, list[Any]]:
    from sqlalchemy import select

    from orchestrator.registry.db import session_scope
    from orchestrator.registry.models import ModelCheckpoint

    by_job: dict[int, list[Any]] = {i: [] for i in ids}
    with session_scope(settings) as s:
        for row in s.execute(select(ModelCheckpoint.id, ModelCheckpoint.job_id, ModelCheckpoint.epoch,
                                    ModelCheckpoint.parent_id)
                             .where(ModelCheckpoint.job_id.in_(ids)).order_by(ModelCheckpoint.id)):
            by_job[row.job_id].append(row)
    return by_job


def check_unique_epochs(by_job: dict[int, list[Any]]) -> Check:
    twice = {job: sorted(e for e, n in Counter(r.epoch for r in rows).items() if n > 1)
             for job, rows in by_job.items()}
    twice = {job: epochs for job, epochs in twice.items() if epochs}
    return Check("no (job, epoch) registered twice", not twice,
                 "; ".join(f"job {j}: epochs {e}" for j, e in twice.items()))


def check_lineage(by_job: dict[int, list[Any]], epochs: int) -> Check:
    """Ordered by id, each checkpoint's parent is the one before (the first has none), and the
    epochs run 1..E: a resumed attempt continued from the newest checkpoint, skipping nothing."""
    broken = []
    for job, rows in by_job.items():
        parents = [r.parent_id for r in rows]
        expected = [None, *(r.id for r in rows[:-1])]
        if parents != expected:
            broken.append(f"job {job}: parents {parents}, expected {expected}")
        elif [r.epoch for r in rows] != list(range(1, epochs + 1)):
            broken.append(f"job {job}: epochs {[r.epoch for r in rows]}")
    return Check("one unbroken lineage per job", not broken, "; ".join(broken))


@dataclass
class Blobs:
    total: int
    orphans: int
    check: Check
    dangling: Check


def check_blobs(settings: Settings) -> Blobs:
    """Every file in the store is referenced by a row or listed by `rodin gc` (grace 0), and
    every referenced artifact exists."""
    from orchestrator.artifacts import open_store
    from orchestrator.gc import find_orphans, kept_uris

    store = open_store(settings)
    files = {store.fs.unstrip_protocol(p) for p in store.fs.find(store.root)} \
        if store.fs.exists(store.root) else set()
    referenced = kept_uris(settings, store)
    listed = {o.uri for o in find_orphans(settings, store, grace_s=0)}
    unlisted = sorted(files - referenced - listed)
    missing = sorted(referenced - files)
    return Blobs(len(files), len(listed),
                 Check("every unreferenced blob is listed by rodin gc", not unlisted,
                       ", ".join(unlisted[:10])),
                 Check("every referenced artifact exists", not missing, ", ".join(missing[:10])))


def check_processes(kills: list[Kill], unexpected: list[str]) -> Check:
    problems = [f"{w} exited by itself" for w in unexpected]
    problems += [f"job process(es) {k.survivors} outlived {k.worker}" for k in kills if k.survivors]
    return Check("no worker died by itself, no job process outlived its worker", not problems,
                 "; ".join(problems))


@dataclass
class LogCounts:
    lease_lost_stops: int
    resent_messages: int
    duplicates_dropped: int


def count_logs(logs: list[Path]) -> LogCounts:
    """What the workers' logs say happened (a killed worker logs nothing after its kill, so
    every attempt that stopped for a lost lease was a live attempt taken back)."""
    texts = [p.read_text(errors="replace") for p in logs if p.exists()]
    resent = sum(len(line.split("job(s)", 1)[1].split(",")) for text in texts
                 for line in text.splitlines() if "reaper resent job(s)" in line)
    return LogCounts(sum(t.count("; stopping this attempt") for t in texts), resent,
                     sum(t.count("dropping a repeated delivery") for t in texts))


def default_stale_after_s() -> float:
    """Twice the workers' heartbeat interval: a running job's heartbeat is written every
    INTERVAL_S (and at each epoch), so a threshold below that takes back live attempts that are
    between two beats (loading, or rendering at the end) as if their worker were dead."""
    from workers.heartbeat import INTERVAL_S

    return 2 * INTERVAL_S


# ----------------------------------------------------------------------------------------- run


def machine_conditions() -> dict[str, Any]:
    return {"cores": os.cpu_count(), "python": sys.version.split()[0],
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "niceness": os.nice(0)}


def _setup(cluster: Cluster, plan: Plan) -> list[int]:
    """Schema, dataset, and the N jobs (submitted concurrently, as several users would)."""
    cluster.cli("db", "upgrade")
    cluster.cli("datasets", "make", "swords", "--count", "8", "--points-per-shape", "400")
    cli = [sys.executable, "-m", "orchestrator.cli", "submit", "train", "--dataset", "swords",
           "--epochs", str(plan.epochs), *TRAIN_FLAGS, "--json"]
    ids: list[int] = []
    batch = 4  # a few clients at a time: each is a Python start-up on a small machine
    for start in range(0, plan.jobs, batch):
        procs = [subprocess.Popen([*cli, "--seed", str(i)], env=cluster.client_env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for i in range(start, min(start + batch, plan.jobs))]
        for p in procs:
            out, err = p.communicate(timeout=300)
            if p.returncode != 0:
                raise RuntimeError(f"rodin submit train failed: {err.strip()[-2000:]}")
            ids.append(json.loads(out.strip().splitlines()[-1])["job_id"])
    return sorted(ids)


def soak(jobs: int = 20, workers: int = 3, kills: int = 12, *, kill_every_s: float = 4.0,
         timeout_s: float = 1800.0, epochs: int = 20, stale_after_s: float | None = None,
         max_attempts: int | None = None, target: str = "any", seed: int | None = None,
         root: Path | None = None, keep: bool = False) -> SoakResult:
    """Run the soak (see the module's docstring); raises ServerUnavailable without the servers.

    `root` is the run's folder (a new temporary one by default, removed after a run whose checks
    all held unless `keep`); it holds each worker's home and log.
    """
    stale = stale_after_s if stale_after_s is not None else default_stale_after_s()
    plan = Plan(jobs, workers, kills, kill_every_s, timeout_s, epochs, stale,
                # Above the number of kills: kills alone can never fail a job.
                max_attempts if max_attempts is not None else max(20, kills + 1), target)
    folder = root or Path(tempfile.mkdtemp(prefix="rodin-soak-"))
    folder.mkdir(parents=True, exist_ok=True)
    result: SoakResult | None = None
    try:
        with ExitStack() as stack:
            redis = stack.enter_context(redis_server())
            pg = stack.enter_context(postgres_server())
            cluster = Cluster(folder, {
                "RODIN_BROKER_URL": redis.url, "RODIN_DATABASE_URL": pg.create_database("soak"),
                "RODIN_ARTIFACTS_URL": (folder / "artifacts").as_uri(),
                "RODIN_STALE_AFTER_S": f"{plan.stale_after_s:g}",
                "RODIN_MAX_ATTEMPTS": str(plan.max_attempts)})
            result = _run(cluster, plan, random.Random(seed))
    finally:
        if result is not None and result.ok and root is None and not keep:
            shutil.rmtree(folder, ignore_errors=True)
    assert result is not None  # _run returned, or its exception went up
    return result


def _run(cluster: Cluster, plan: Plan, rng: random.Random) -> SoakResult:
    conditions = machine_conditions()
    started = time.monotonic()
    deadline = started + plan.timeout_s
    ids = _setup(cluster, plan)
    settings = cluster.settings()
    say(f"{len(ids)} jobs submitted ({ids[0]}..{ids[-1]}); starting {plan.workers} workers; "
        f"RODIN_STALE_AFTER_S={plan.stale_after_s:g}, RODIN_MAX_ATTEMPTS={plan.max_attempts}")
    try:
        for _ in range(plan.workers):
            cluster.start_worker()
        kills, unexpected = run_until_done(cluster, settings, ids, plan, deadline, rng)
    finally:
        cluster.stop()
    wall = time.monotonic() - started
    conditions["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return _result(cluster, settings, ids, plan, kills, unexpected, wall, conditions)


def _result(cluster: Cluster, settings: Settings, ids: list[int], plan: Plan, kills: list[Kill],
            unexpected: list[str], wall: float, conditions: dict[str, Any]) -> SoakResult:
    rows = read_jobs(settings, ids)
    by_job = checkpoints(settings, ids)
    blobs = check_blobs(settings)
    hits = [k for k in kills if k.job_id is not None]
    checks = [check_succeeded(rows, ids), check_unique_epochs(by_job), check_lineage(by_job, plan.epochs),
              blobs.check, blobs.dangling, check_processes(kills, unexpected)]
    logs = [w.log for w in cluster.workers]
    counts = count_logs(logs)
    return SoakResult(
        jobs=len(ids), workers=plan.workers, workers_started=len(cluster.workers), kills=len(kills),
        kills_on_running_job=len(hits), stale_after_s=plan.stale_after_s,
        max_attempts=plan.max_attempts, epochs=plan.epochs,
        attempts_histogram=dict(sorted(Counter(r.attempts for r in rows.values()).items())),
        lost_histogram=dict(sorted(Counter(r.lost for r in rows.values()).items())),
        wall_s=round(wall, 1),
        taken_back=Spread.of([k.taken_back_s for k in hits if k.taken_back_s is not None]),
        running_again=Spread.of([k.running_again_s for k in hits if k.running_again_s is not None]),
        not_running_again=sum(1 for k in hits if k.running_again_s is None),
        blobs=blobs.total, orphans=blobs.orphans, lease_lost_stops=counts.lease_lost_stops,
        resent_messages=counts.resent_messages, duplicates_dropped=counts.duplicates_dropped,
        checks=checks, conditions=conditions, folder=str(cluster.root),
        worker_logs=[str(p) for p in logs])


# ---------------------------------------------------------------------------------------- text


def _histogram(h: dict[int, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(h.items()))


def report(r: SoakResult, out: Callable[[str], None] = print) -> None:
    c = r.conditions
    out(f"machine: {c['cores']} cores, Python {c['python']}, load average at start "
        f"{' '.join(map(str, c['load_average_at_start']))}, at end "
        f"{' '.join(map(str, c.get('load_average_at_end', [])))}, niceness {c['niceness']}")
    out(f"jobs: {r.jobs} trainings of {r.epochs} epochs (a checkpoint each epoch)")
    out(f"workers: {r.workers} at a time, {r.workers_started} started in all")
    out(f"settings: RODIN_STALE_AFTER_S={r.stale_after_s:g}, RODIN_MAX_ATTEMPTS={r.max_attempts} "
        f"(above the number of kills: kills alone cannot fail a job)")
    out(f"kills: {r.kills} (SIGKILL of a worker's main process), {r.kills_on_running_job} hit a running job")
    out(f"attempts -> jobs: {_histogram(r.attempts_histogram)}")
    out(f"lost -> jobs: {_histogram(r.lost_histogram)}")
    out(f"wall time: {r.wall_s:.1f} s")
    out(f"kill -> taken back by the reaper: {r.taken_back.text()}")
    out(f"kill -> running again on another worker: {r.running_again.text()}"
        + (f"; {r.not_running_again} never ran again" if r.not_running_again else ""))
    out(f"live attempts that lost their lease: {r.lease_lost_stops}; messages resent by the reaper: "
        f"{r.resent_messages}; repeated deliveries dropped: {r.duplicates_dropped}")
    out(f"orphans: {r.orphans} of {r.blobs} files in the store are unreferenced, each listed by "
        "`rodin gc` (orchestrator.gc.find_orphans, no grace period)")
    for check in r.checks:
        out(f"check: {'ok  ' if check.ok else 'FAIL'} {check.name}"
            + (f": {check.detail}" if check.detail else ""))
    if not r.ok:
        for line in r.kept_folder_lines():
            out(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20, help="training jobs (default 20)")
    parser.add_argument("--workers", type=int, default=3, help="workers at a time (default 3)")
    parser.add_argument("--kill-every", type=float, default=4.0, help="seconds between kills (default 4)")
    parser.add_argument("--max-kills", type=int, default=12, help="stop killing after this many (default 12)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds for the whole run (default 1800)")
    parser.add_argument("--epochs", type=int, default=20, help="epochs per job (default 20)")
    parser.add_argument("--stale-after", type=float, default=None,
                        help="RODIN_STALE_AFTER_S (default: twice the workers' 5 s heartbeat interval)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the killer's choices")
    parser.add_argument("--keep", action="store_true", help="keep the run's folder even if every check held")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        result = soak(args.jobs, args.workers, args.max_kills, kill_every_s=args.kill_every,
                      timeout_s=args.timeout, epochs=args.epochs, stale_after_s=args.stale_after,
                      seed=args.seed, keep=args.keep)
    except ServerUnavailable as exc:
        print(f"soak_kill: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        report(result)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
