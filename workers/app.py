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

from orchestrator import jobs, waiting
from orchestrator.artifacts import ArtifactStore, open_store
from orchestrator.kinds import KINDS, KindSpec
from orchestrator.queue import make_app
from orchestrator.registry.models import JobStatus
from orchestrator.settings import Settings, load_settings
from workers import liveness, runtime
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
    """Claim, run and close a job; every failure ends as a readable error on the job row."""
    device = runtime.resolve_device()
    lease = jobs.claim(settings, job_id, runtime.hostname(), runtime.device_label(device))
    if lease is None:
        return
    runtime.current_job_id = job_id
    liveness.begin(job_id, lease.attempt)
    _poke_heartbeat()
    try:
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
