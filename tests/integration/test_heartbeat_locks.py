"""A job process stopped while it holds its job's row lock (SIGSTOP, a frozen VM) on a real
PostgreSQL registry: its worker's heartbeat thread must neither wait on that lock nor go
silent, and must end the process within RODIN_PROGRESS_TIMEOUT_S and give its job back."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from orchestrator import jobs
from orchestrator.registry.db import forget_connections_after_fork, session_scope, upgrade
from orchestrator.registry.models import Job, JobKind, Worker
from orchestrator.settings import Settings, load_settings
from tests.conftest import dataset_row
from workers import liveness, runtime
from workers.heartbeat import Heartbeat


@pytest.fixture
def settings(tmp_path: Path, postgres_server) -> Settings:  # type: ignore[no-untyped-def]
    url = postgres_server.create_database("locks")
    upgrade(url)
    return load_settings({"RODIN_HOME": str(tmp_path / "home"), "RODIN_DATABASE_URL": url,
                          "RODIN_PROGRESS_TIMEOUT_S": "1"})


def _claimed_job(settings: Settings) -> jobs.Lease:
    job_id = jobs.submit(settings, JobKind.train, params={}, dataset_id=dataset_row(settings))
    lease = jobs.claim(settings, job_id, "w", "cpu")
    assert lease is not None
    return lease


def _stopped_holding_the_row(settings: Settings, lease: jobs.Lease) -> int:
    """Fork a job process that locks its job's row, as a progress write does, and stops."""
    pid = os.fork()
    if pid == 0:
        try:
            forget_connections_after_fork()
            liveness.begin(lease.job_id, lease.attempt)
            with session_scope(settings) as s:
                s.get(Job, lease.job_id, with_for_update=True)
                os.kill(os.getpid(), signal.SIGSTOP)
        finally:
            os._exit(0)
    return pid


def _worker_seen_at(settings: Settings):  # type: ignore[no-untyped-def]
    with session_scope(settings) as s:
        return s.scalar(select(Worker.last_heartbeat).where(Worker.hostname == "w"))


def test_a_job_process_stopped_holding_its_row_lock_is_ended_and_its_worker_stays_heard(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    lease = _claimed_job(settings)
    monkeypatch.setattr(runtime, "current_job_id", lease.job_id)  # Celery's view: the task is active
    pid = _stopped_holding_the_row(settings, lease)
    heartbeat = Heartbeat(settings, "w", "train", "cpu")
    try:
        time.sleep(0.5)  # the row is locked by now
        heartbeat.start()
        started = time.monotonic()
        first_seen = _worker_seen_at(settings)
        while True:
            with session_scope(settings) as s:
                job = s.get(Job, lease.job_id)
                assert job is not None
                if job.status != "running":
                    break
            assert time.monotonic() - started < 8, "the stopped job process was not ended"
            time.sleep(0.1)
        assert (job.status, job.lost) == ("queued", 1)
        assert "made no progress" in (job.error or "")
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        heartbeat.poke()
        deadline = time.monotonic() + 3
        while _worker_seen_at(settings) == first_seen:
            assert time.monotonic() < deadline, "the worker's own heartbeat stopped"
            time.sleep(0.1)
    finally:
        if liveness.process_alive(pid):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        heartbeat.stop()
        liveness.end()
