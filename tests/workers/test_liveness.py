"""The worker's watch over its job process, with real forked processes and a real registry:
a job process that dies, or stops making progress, gives its job back at once with the reason."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator import jobs
from orchestrator.registry.db import session_scope
from orchestrator.registry.models import Dataset, Job, JobKind
from orchestrator.settings import Settings, load_settings
from workers import liveness
from workers.heartbeat import Heartbeat


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings({"RODIN_HOME": str(tmp_path / "home"), "RODIN_PROGRESS_TIMEOUT_S": "1"})


@pytest.fixture
def claimed(settings: Settings) -> tuple[int, jobs.Lease]:
    """A training job claimed by worker `w`."""
    with session_scope(settings) as s:
        ds = Dataset(name="d", version=1, content_sha256="0" * 64, shape_count=1, points_per_shape=1,
                     source="test", skipped=[], artifact_uri="file:///nowhere", artifact_sha256="0" * 64)
        s.add(ds)
        s.flush()
        dataset_id = ds.id
    job_id = jobs.submit(settings, JobKind.train, params={}, dataset_id=dataset_id)
    lease = jobs.claim(settings, job_id, "w", "cpu")
    assert lease is not None
    return job_id, lease


def _job_process(lease: jobs.Lease, then: Callable[[], None]) -> int:
    """Fork a process that takes up the attempt on the board, as a job process does."""
    pid = os.fork()
    if pid == 0:  # the child: never returns to pytest
        try:
            liveness.begin(lease.job_id, lease.attempt)
            then()
        finally:
            os._exit(0)
    return pid


def _watch_until(heartbeat: Heartbeat, settings: Settings, job_id: int, seconds: float) -> Job:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        heartbeat._watch_job_process()
        with session_scope(settings) as s:
            job = s.get(Job, job_id)
            assert job is not None
            if job.status != "running":
                return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still running after {seconds} s")


def _forever() -> None:
    while True:
        time.sleep(60)


def test_a_job_process_that_makes_no_progress_is_ended_and_its_job_given_back(
        settings: Settings, claimed: tuple[int, jobs.Lease]) -> None:
    job_id, lease = claimed
    heartbeat = Heartbeat(settings, "w", "train", "cpu")
    pid = _job_process(lease, _forever)  # alive, but never ticks: hung
    try:
        time.sleep(0.3)
        heartbeat._watch_job_process()
        assert liveness.current() is not None  # within RODIN_PROGRESS_TIMEOUT_S: left alone
        started = time.monotonic()
        job = _watch_until(heartbeat, settings, job_id, 10)
        assert time.monotonic() - started < 3
        assert (job.status, job.lost, job.lease_token) == ("queued", 1, None)
        assert "made no progress for 1 s (RODIN_PROGRESS_TIMEOUT_S=1) and was ended" in (job.error or "")
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        assert liveness.current() is None
    finally:
        if liveness.process_alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_job_process_that_ticks_is_left_alone(settings: Settings, claimed: tuple[int, jobs.Lease]) -> None:
    job_id, lease = claimed
    heartbeat = Heartbeat(settings, "w", "train", "cpu")

    def work() -> None:
        while True:
            liveness.tick()
            time.sleep(0.1)

    pid = _job_process(lease, work)
    try:
        with pytest.raises(AssertionError, match="still running"):
            _watch_until(heartbeat, settings, job_id, 2.5)  # longer than the timeout
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_a_dead_job_process_gives_its_job_back_at_once(settings: Settings,
                                                       claimed: tuple[int, jobs.Lease]) -> None:
    job_id, lease = claimed
    heartbeat = Heartbeat(settings, "w", "train", "cpu")
    pid = _job_process(lease, lambda: os.kill(os.getpid(), signal.SIGKILL))  # dies mid-attempt
    os.waitpid(pid, 0)
    job = _watch_until(heartbeat, settings, job_id, 2)
    assert (job.status, job.lost) == ("queued", 1)
    assert f"its job process (pid {pid}) died" in (job.error or "")
    again = jobs.claim(settings, job_id, "other", "cpu")  # any worker may take it now
    assert again is not None and again.attempt == 2
