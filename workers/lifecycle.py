"""Job state transitions as a worker sees them, each in its own short transaction."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from orchestrator.registry.db import session_scope
from orchestrator.registry.models import Job, JobStatus
from orchestrator.settings import Settings

log = logging.getLogger(__name__)


def now() -> datetime:
    return datetime.now(timezone.utc)


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
        job = s.get(Job, job_id)
        assert job is not None
        job.progress = progress
        job.heartbeat_at = now()
        return not job.cancel_requested


def finish(settings: Settings, job_id: int, status: JobStatus,
           outputs: list[dict[str, Any]] | None = None, error: str | None = None,
           result: dict[str, Any] | None = None) -> None:
    with session_scope(settings) as s:
        job = s.get(Job, job_id)
        assert job is not None
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
    known = ("MeshError", "ArtifactError", "CheckpointError", "ValueError", "FloatingPointError")
    return message if type(exc).__name__ in known else f"{type(exc).__name__}: {message}"
