"""The job service: the only code that creates, sends, claims, finishes, cancels and waits for jobs.

A job is a registry row first and a queue message second: the row says what to do and what
happened, the message (a job id, JSON) only wakes a worker. Every state change is one short
transaction here, so the CLI, the task bodies and the tests all move jobs the same way:

    queued --claim--> running --finish--> succeeded | failed | cancelled
    queued --cancel--> cancelled

Clients call `submit`, `cancel`, `summary` and `wait`; workers call `claim`, `report_progress`
and `finish`. No torch here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from orchestrator.errors import RegistryInvariantError, RodinError
from orchestrator.registry.db import session_scope
from orchestrator.registry.models import Job, JobKind, JobStatus, ModelCheckpoint
from orchestrator.settings import Settings, redact

log = logging.getLogger(__name__)


def now() -> datetime:
    return datetime.now(timezone.utc)


def _job(session: Any, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise RegistryInvariantError(f"job {job_id} vanished from the registry")
    return job


# ---------------------------------------------------------------------------------- clients


def submit(settings: Settings, kind: JobKind, *, params: dict[str, Any],
           dataset_id: int | None = None, input_model_id: int | None = None) -> int:
    """Register a queued job and send its message; returns the job id.

    If the broker cannot take the message, the job is marked failed (so that it does not sit
    `queued` for ever) and a RodinError says where the broker was (without its password).
    """
    with session_scope(settings) as s:
        job = Job(kind=kind.value, dataset_id=dataset_id, input_model_id=input_model_id,
                  params=params)
        s.add(job)
        s.flush()
        job_id = job.id
    send(settings, job_id, kind)
    return job_id


def send(settings: Settings, job_id: int, kind: JobKind) -> None:
    """Put a registered job's message on its queue and record the Celery task id."""
    from orchestrator.queue import make_app, send_job

    try:
        task_id = send_job(make_app(settings), kind.value, job_id)
    except Exception as exc:  # noqa: BLE001 - any broker failure is reported on the job
        reason = redact(str(exc))
        with session_scope(settings) as s:
            job = _job(s, job_id)
            job.status, job.error, job.finished_at = JobStatus.failed.value, f"could not queue: {reason}", now()
        raise RodinError(f"could not queue job {job_id} at {redact(settings.queue_url)}: "
                         f"{reason}") from None
    with session_scope(settings) as s:
        _job(s, job_id).celery_task_id = task_id


def cancel(settings: Settings, job_id: int) -> tuple[str, str]:
    """Ask a job to stop; returns (status, message). A queued job is cancelled at once; a
    running one stops at its next epoch boundary (the task body reads the flag)."""
    from orchestrator.registry.queries import get_job

    with session_scope(settings) as s:
        job = get_job(s, job_id)
        if JobStatus(job.status).finished:
            return job.status, f"job {job_id} already {job.status}; nothing to cancel"
        job.cancel_requested = True
        if job.status == JobStatus.queued.value:
            job.status, job.finished_at = JobStatus.cancelled.value, now()
            return job.status, f"job {job_id} cancelled before it started"
        return job.status, f"job {job_id} will stop after its current epoch"


def summary(settings: Settings, job_id: int) -> dict[str, Any]:
    """The job as the CLI shows it (see registry.queries.job_summary); unknown id: exit 2."""
    from orchestrator.registry.queries import get_job, job_summary

    with session_scope(settings) as s:
        return job_summary(s, get_job(s, job_id))


def wait(settings: Settings, job_id: int, on_update: Callable[[dict[str, Any]], None] | None = None,
         poll_s: float = 0.5) -> dict[str, Any]:
    """Poll the registry until the job has finished; returns its final summary.

    `on_update` sees every summary on the way (a progress bar, a live table).
    """
    while True:
        current = summary(settings, job_id)
        if on_update is not None:
            on_update(current)
        if JobStatus(current["status"]).finished:
            return current
        time.sleep(poll_s)


# ---------------------------------------------------------------------------------- workers


def claim(settings: Settings, job_id: int, worker: str, device: str) -> bool:
    """Mark a queued (or interrupted) job running on this worker; False if it should not run."""
    with session_scope(settings) as s:
        job = s.get(Job, job_id)
        if job is None:
            log.warning("job %s is not in the registry; dropping its message", job_id)
            return False
        if JobStatus(job.status).finished:
            log.info("job %s already %s; ignoring a repeated delivery", job_id, job.status)
            return False
        if job.cancel_requested:
            job.status, job.finished_at = JobStatus.cancelled.value, now()
            return False
        job.status = JobStatus.running.value
        job.attempts += 1
        job.worker, job.device = worker, device
        job.started_at = job.started_at or now()
        job.heartbeat_at = now()
        job.error = None
        return True


def report_progress(settings: Settings, job_id: int, progress: dict[str, Any]) -> bool:
    """Store progress; returns False when the user asked to cancel."""
    with session_scope(settings) as s:
        job = _job(s, job_id)
        job.progress = progress
        job.heartbeat_at = now()
        return not job.cancel_requested


def finish(settings: Settings, job_id: int, status: JobStatus, *,
           outputs: list[dict[str, Any]] | None = None, error: str | None = None,
           result: dict[str, Any] | None = None, final_model_id: int | None = None) -> None:
    """End a job of any kind, in one transaction: status, outputs, result, and for a training
    job the checkpoint chosen as its final model."""
    if not status.finished:
        raise ValueError(f"finish() needs a final status, not {status.value}")
    with session_scope(settings) as s:
        job = _job(s, job_id)
        if final_model_id is not None:
            model = s.get(ModelCheckpoint, final_model_id)
            if model is None or model.job_id != job_id:
                raise RegistryInvariantError(
                    f"model {final_model_id} is not a checkpoint of job {job_id}")
            model.final = True
        job.status = status.value
        job.finished_at = now()
        if outputs is not None:
            job.outputs = outputs
        if result is not None:
            job.result = result
        job.error = error


def one_line(exc: BaseException) -> str:
    """A failure as one readable line for `rodin status`."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    known = ("MeshError", "ArtifactError", "CheckpointError", "ConfigError", "ValueError",
             "FloatingPointError", "RodinError", "UserInputError")
    return message if type(exc).__name__ in known else f"{type(exc).__name__}: {message}"
