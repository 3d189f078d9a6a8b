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
from orchestrator.registry.db import forget_connections_after_fork, session_scope
from orchestrator.registry.models import Job, JobKind
from orchestrator.settings import Settings, load_settings
from tests.conftest import dataset_row
from workers import liveness
from workers.heartbeat import Heartbeat


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings({"RODIN_HOME": str(tmp_path / "home"), "RODIN_PROGRESS_TIMEOUT_S": "1"})


@pytest.fixture
def submitted(settings: Settings) -> int:
    """A queued training job."""
    return jobs.submit(settings, JobKind.train, params={}, dataset_id=dataset_row(settings))


@pytest.fixture
def claimed(settings: Settings, submitted: int) -> tuple[int, jobs.Lease]:
    """A training job claimed by worker `w`."""
    job_id = submitted
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


def _claiming_process(settings: Settings, job_id: int, claim: bool) -> int:
    """Fork a process that arrives on the board for `job_id`, as a job process taking its task
    does, optionally claims the job, and then hangs before it writes its attempt."""
    pid = os.fork()
    if pid == 0:
        try:
            forget_connections_after_fork()
            liveness.arrive(job_id)
            if claim:
                jobs.claim(settings, job_id, "w", "cpu")
            _forever()
        finally:
            os._exit(0)
    return pid


def _status(settings: Settings, job_id: int) -> str:
    with session_scope(settings) as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job.status


def _ended_by_watch(heartbeat: Heartbeat, pid: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while liveness.process_alive(pid):
        assert time.monotonic() < deadline, f"process {pid} still alive after {seconds} s"
        heartbeat._watch_job_process()
        time.sleep(0.05)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def test_a_job_process_hung_after_its_claim_is_ended_and_the_job_given_back(
        settings: Settings, submitted: int) -> None:
    heartbeat = Heartbeat(settings, "w", "train", "cpu")
    pid = _claiming_process(settings, submitted, claim=True)
    try:
        deadline = time.monotonic() + 5
        while _status(settings, submitted) != "running":
            assert time.monotonic() < deadline, "the job process did not claim the job"
            time.sleep(0.02)
        job = _watch_until(heartbeat, settings, submitted, 10)  # running once claimed, then back
        assert (job.status, job.lost, job.lease_token) == ("queued", 1, None)
        assert "its claim lost on w: its job process made no progress" in (job.error or "")
        _ended_by_watch(heartbeat, pid, 2)
        assert liveness.current() is None
    finally:
        if liveness.process_alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_job_process_hung_before_its_claim_is_ended_and_the_job_left_queued(
        settings: Settings, submitted: int) -> None:
    heartbeat = Heartbeat(settings, "w", "train", "cpu")
    pid = _claiming_process(settings, submitted, claim=False)
    try:
        _ended_by_watch(heartbeat, pid, 10)
        with session_scope(settings) as s:
            job = s.get(Job, submitted)
            assert job is not None and (job.status, job.lost, job.attempts) == ("queued", 0, 0)
        assert liveness.current() is None
    finally:
        if liveness.process_alive(pid):
            os.kill(pid, signal.SIGKILL)


def _heartbeat_at(settings: Settings, job_id: int):  # type: ignore[no-untyped-def]
    with session_scope(settings) as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job.heartbeat_at


def test_the_heartbeat_keeps_alive_only_the_attempt_on_the_board(
        settings: Settings, claimed: tuple[int, jobs.Lease]) -> None:
    job_id, lease = claimed
    heartbeat = Heartbeat(settings, "w", "train", "cpu")
    claimed_at = _heartbeat_at(settings, job_id)
    try:
        heartbeat.beat(job_id)  # Celery lists the task, but no job process vouches for it
        liveness.arrive(job_id)
        heartbeat.beat(job_id)  # arrived, still claiming
        assert _heartbeat_at(settings, job_id) == claimed_at
        liveness.begin(job_id, lease.attempt)
        heartbeat.beat(job_id)
        assert _heartbeat_at(settings, job_id) > claimed_at
    finally:
        liveness.end()
