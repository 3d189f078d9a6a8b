"""The worker side of the queue: Celery task bodies and the worker's lifecycle hooks.

Started by `rodin worker`; imports torch (clients never import this module).

A worker is two processes: the main one talks to the broker, keeps the heartbeat and handles
signals; jobs run one at a time in a child it forks (Celery's prefork pool, concurrency 1). So a
stop request can let the running job go on for a while (soft shutdown), and a job that kills its
process (a crash, the OOM killer) loses only the child: its message goes back to the queue at once.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable

from celery import signals
from sqlalchemy import select

from orchestrator import jobs, waiting
from orchestrator.artifacts import ArtifactStore, open_store
from orchestrator.kinds import KINDS, KindSpec
from orchestrator.queue import make_app
from orchestrator.registry.db import session_scope, with_retries
from orchestrator.registry.models import Job, JobKind, JobStatus
from orchestrator.settings import Settings, load_settings
from workers import devices, liveness, runtime
from workers.heartbeat import Heartbeat

log = logging.getLogger("rodin.worker")
settings = load_settings()
# The consumer's own app: messages this process sends (the reaper, a job given back) go through
# jobs.send's app, from other threads than the consumer's event loop.
app = make_app(settings)
_heartbeat: Heartbeat | None = None
waiting.on_wait(liveness.tick)  # a job riding out a registry or store outage is not hung


JobBody = Callable[[Settings, ArtifactStore, jobs.Lease, str], None]


def _run_job(job_id: int, body: JobBody) -> None:
    """Claim, run and close a job; every failure ends as a readable error on the job row.

    On a worker that offers its machine's devices (a slot: `rodin worker --gpus`, `--devices`),
    the job first waits, still `queued`, for the devices it needs (`_wait_for_devices`).

    From the start the board (workers.liveness) shows that this process is claiming the job,
    so the worker's watch also ends a process that hangs before it holds the lease."""
    liveness.arrive(job_id)
    try:
        _wait_claim_and_run(job_id, body)
    finally:
        liveness.end()


def _wait_claim_and_run(job_id: int, body: JobBody) -> None:
    grant: devices.Grant | None = None
    refused: devices.TooWide | None = None
    offer = devices.Offer.from_env()
    if offer is not None:
        try:
            grant = _wait_for_devices(offer, job_id)
        except devices.TooWide as exc:
            refused = exc  # claimed below, to fail it with that line
        else:
            if grant is None:
                return  # cancelled, or run by another worker, while it waited
    try:
        if grant is not None:
            runtime.use_grant(grant)
        _claim_and_run(job_id, body, refused)
    finally:
        if grant is not None:
            grant.release()
            runtime.current_grant = None


def _claim_and_run(job_id: int, body: JobBody, refused: Exception | None = None) -> None:
    device = runtime.resolve_device()
    lease = jobs.claim(settings, job_id, runtime.hostname(), runtime.device_label(device))
    if lease is None:
        return
    runtime.current_job_id = job_id
    liveness.begin(job_id, lease.attempt)
    _poke_heartbeat()
    try:
        if refused is not None:
            log.warning("job %s: %s", job_id, refused)
            jobs.finish(settings, job_id, JobStatus.failed, lease=lease, error=" ".join(str(refused).split()))
            return
        # A store that refuses writes for a while (full, remounted) is ridden out as the
        # registry is: for RODIN_REGISTRY_RETRY_S.
        body(settings, open_store(settings, write_retry_s=settings.registry_retry_s), lease, device)
    except jobs.LeaseLost as exc:
        # Presumed dead and replaced (or cancelled while silent): the job is someone else's now.
        log.warning("job %s: %s; stopping this attempt", job_id, exc)
    except Exception as exc:  # noqa: BLE001 - recorded on the job, with the traceback in the log
        log.exception("job %s failed", job_id)
        try:
            jobs.finish(settings, job_id, JobStatus.failed, lease=lease, error=jobs.one_line(exc))
        except jobs.LeaseLost:
            log.warning("job %s failed after its lease was lost; not recorded", job_id)
    finally:
        liveness.end()
        runtime.current_job_id = None
        _poke_heartbeat()


def _wait_for_devices(offer: devices.Offer, job_id: int) -> devices.Grant | None:
    """The devices the job needs, from its machine's allocator (workers/devices.py), waited
    for before the claim: the job stays `queued` meanwhile (its message held by this slot, whose
    heartbeat shows it), so a waiting job is no attempt, has no lease for the reaper to judge and
    no job process for the liveness watch to time. Every few seconds the wait asks the registry
    whether the job still needs running here; cancelled, or run by another worker (a resent
    message), it leaves the line and the delivery is dropped (None)."""
    width = with_retries(settings, f"read job {job_id}", lambda: _width(job_id))

    def wanted() -> bool:
        liveness.tick()  # waiting in line is progress: the watch must not end the wait
        try:
            return with_retries(settings, f"read job {job_id}", lambda: _still_ours(job_id))
        except Exception:  # noqa: BLE001 - the registry away for long: keep the place in line
            log.warning("job %s: could not read its state while waiting for devices", job_id, exc_info=True)
            return True

    def on_wait(line: devices.Line) -> None:
        log.info("job %s is %s (%s)", job_id, line.describe(), offer.label())

    return devices.Allocator(offer).acquire(width, wanted=wanted, on_wait=on_wait)


def _width(job_id: int) -> int:
    """How many devices the job needs on this machine: a training job's `config.devices` (so
    does a member of a `--nodes` one), 1 for any other kind (and for a job the registry does
    not know: its claim drops it)."""
    with session_scope(settings) as s:
        row = s.execute(select(Job.kind, Job.params).where(Job.id == job_id)).first()
    if row is None or row.kind not in (JobKind.train.value, JobKind.member.value):
        return 1
    return max(1, int((row.params or {}).get("config", {}).get("devices", 1)))


def _still_ours(job_id: int) -> bool:
    """Whether a claim by this worker could still take the job (the rule of `jobs.claim`):
    queued, or running on this very worker (whose earlier job process died)."""
    with session_scope(settings) as s:
        row = s.execute(select(Job.status, Job.worker).where(Job.id == job_id)).first()
    if row is None:
        return False
    return row.status == JobStatus.queued.value or (
        row.status == JobStatus.running.value and row.worker == runtime.hostname())


def _poke_heartbeat() -> None:
    """`rodin workers` shows the current job at once, not at the next beat."""
    if _heartbeat is not None:
        _heartbeat.poke()


def _body(declared: KindSpec) -> JobBody:
    module, name = declared.body.split(":")
    return getattr(importlib.import_module(module), name)


def _register(declared: KindSpec) -> None:
    """The Celery task of one kind of job (orchestrator.kinds): claim, run its body, close."""

    def task(job_id: int) -> None:
        _run_job(job_id, _body(declared))

    task.__name__ = task.__qualname__ = f"{declared.kind.value}_task"
    app.task(name=declared.task)(task)


for _declared in KINDS.values():
    _register(_declared)


@signals.worker_init.connect
def _preload(**_kwargs) -> None:
    """Import the task bodies (torch, atlas_core) in the main process before it forks the job
    process, so that neither the first job nor a restarted job process pays for the imports."""
    for declared in KINDS.values():
        _body(declared)


@signals.worker_process_init.connect
def _in_job_process(**_kwargs) -> None:
    """In the freshly forked job process."""
    from orchestrator.registry.db import forget_connections_after_fork

    forget_connections_after_fork()
    if sys.platform.startswith("linux"):
        # If the main process is killed outright, the job process (and its GPU memory) goes too.
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            log.debug("could not tie the job process to the worker's life", exc_info=True)


@signals.task_received.connect
def _on_received(**_kwargs) -> None:
    _poke_heartbeat()


@signals.worker_ready.connect
def _on_ready(sender=None, **_kwargs) -> None:
    global _heartbeat
    queues = ",".join(sorted(q.name for q in sender.app.amqp.queues.consume_from.values())) \
        if sender is not None else ""
    device = runtime.device_label(runtime.resolve_device())
    _heartbeat = Heartbeat(settings, runtime.hostname(), queues, device)
    _heartbeat.start()
    # A cold shutdown (SIGQUIT, `rodin down`) exits without Celery's worker_shutdown signal;
    # the interpreter's exit still runs this, so the worker gives its job back either way.
    atexit.register(_on_shutdown)
    log.info("worker %s ready (pid %s, device %s, queues %s, broker %s)", runtime.hostname(),
             os.getpid(), device, queues, "embedded" if settings.embedded else "shared")


@signals.worker_shutdown.connect
def _on_shutdown(**_kwargs) -> None:
    global _heartbeat
    heartbeat, _heartbeat = _heartbeat, None
    if heartbeat is not None and os.getpid() == heartbeat.pid:
        heartbeat.stop()
