"""The job service in-process against a real SQLite registry and the embedded broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import jobs
from orchestrator.errors import RegistryInvariantError, UserInputError
from orchestrator.job_states import ENDED, TRANSITIONS, Event, IllegalMove, sources
from orchestrator.registry.db import session_scope
from orchestrator.registry.models import Job, JobKind, JobStatus, ModelCheckpoint
from orchestrator.settings import Settings, load_settings, redact


def _checkpoint(settings: Settings, job_id: int, dataset_id: int, epoch: int) -> int:
    with session_scope(settings) as s:
        m = ModelCheckpoint(job_id=job_id, dataset_id=dataset_id, epoch=epoch, config={}, metrics={},
                            artifact_uri="file:///nowhere", sha256="0" * 64, size_bytes=0,
                            code_version="test", torch_version="test")
        s.add(m)
        s.flush()
        return m.id


def test_submit_queues_a_message_and_the_lifecycle_runs(settings: Settings, dataset_id: int) -> None:
    job_id = jobs.submit(settings, JobKind.train, params={"config": {}}, dataset_id=dataset_id)
    assert list((settings.broker_folder / "queue").glob("*.msg"))  # the message is on the queue
    assert jobs.get(settings, job_id).status is JobStatus.queued
    lease = jobs.claim(settings, job_id, "w", "cpu")
    assert lease is not None and lease.attempt == 1
    assert jobs.report_progress(settings, lease, {"epoch": 1})
    jobs.finish(settings, job_id, JobStatus.succeeded, lease=lease, result={"x": 1}, outputs=[])
    done = jobs.get(settings, job_id)
    assert (done.status, done.attempts, done.result) == (JobStatus.succeeded, 1, {"x": 1})
    assert done.as_json()["status"] == "succeeded"
    assert not jobs.claim(settings, job_id, "w", "cpu")  # a repeated delivery does nothing
    assert jobs.wait(settings, job_id).status is JobStatus.succeeded


def test_finish_marks_the_final_checkpoint_of_its_own_job_only(settings: Settings, dataset_id: int) -> None:
    ds = dataset_id
    a = jobs.submit(settings, JobKind.train, params={}, dataset_id=ds)
    b = jobs.submit(settings, JobKind.train, params={}, dataset_id=ds)
    other = _checkpoint(settings, b, ds, 1)
    lease = jobs.claim(settings, a, "w", "cpu")
    assert lease is not None
    with pytest.raises(RegistryInvariantError, match="not a checkpoint of job"):
        jobs.finish(settings, a, JobStatus.succeeded, lease=lease, final_model_id=other)
    mine = _checkpoint(settings, a, ds, 1)
    jobs.finish(settings, a, JobStatus.succeeded, lease=lease, final_model_id=mine)
    assert jobs.get(settings, a).final_model_id == mine
    with pytest.raises(ValueError, match="final status"):
        jobs.finish(settings, b, JobStatus.running, lease=lease)


def test_cancel(settings: Settings) -> None:
    queued = jobs.submit(settings, JobKind.reconstruct, params={})
    assert jobs.cancel(settings, queued)[0] == "cancelled"
    assert not jobs.claim(settings, queued, "w", "cpu")  # its message is skipped
    assert "nothing to cancel" in jobs.cancel(settings, queued)[1]
    running = jobs.submit(settings, JobKind.reconstruct, params={})
    lease = jobs.claim(settings, running, "w", "cpu")
    assert lease is not None
    assert jobs.cancel(settings, running)[0] == "running"
    assert not jobs.report_progress(settings, lease, {})  # the body sees the request
    with pytest.raises(UserInputError, match="job 999 does not exist"):
        jobs.cancel(settings, 999)


def test_members_of_a_multi_machine_job_are_stopped_through_their_training_job(
        settings: Settings, dataset_id: int) -> None:
    """A member (one machine's ranks of a `--nodes` job) is not cancelled on its own: only the
    training job can stop every rank. An attempt that ends ends its members: a queued one at
    once (its late message is dropped), a running one flagged."""
    from orchestrator.kinds import MemberParams

    train = jobs.submit(settings, JobKind.train, params={"config": {}}, dataset_id=dataset_id)
    queued, running = (jobs.submit(settings, JobKind.member, dataset_id=dataset_id,
                                   params=MemberParams(train_job=train, attempt=1, node=n)) for n in (1, 2))
    assert jobs.claim(settings, running, "w2", "cpu") is not None
    status, message = jobs.cancel(settings, running)
    assert status == "running" and f"`rodin cancel {train}` stops every rank" in message
    jobs.end_members(settings, [queued, running], "attempt 1 ended")
    assert (jobs.get(settings, queued).status, jobs.get(settings, queued).error) == \
        (JobStatus.cancelled, "attempt 1 ended")
    assert not jobs.claim(settings, queued, "w3", "cpu")
    with session_scope(settings) as s:
        member = s.get(Job, running)
        assert member is not None and member.status == "running" and member.cancel_requested


def test_a_job_without_its_row_cannot_be_finished(settings: Settings) -> None:
    with session_scope(settings):
        pass  # creates the registry
    with pytest.raises(jobs.LeaseLost, match="job 12345"):
        jobs.finish(settings, 12345, JobStatus.failed, lease=jobs.Lease(12345, "token", 1))
    with pytest.raises(RegistryInvariantError, match="cannot finish job 12345"):
        jobs.finish(settings, 12345, JobStatus.failed, lease=jobs.Lease(1, "token", 1))


def test_every_move_follows_the_one_table() -> None:
    # Every event reaches at least one status, and only an event that creates a row leaves none.
    for event, (leave, reach) in TRANSITIONS.items():
        assert reach, event
        assert bool(leave) != (event in (Event.submit, Event.imported)), event
    # What no event does: a finished job never moves again, and nothing runs without a claim.
    assert not any(leave & ENDED for leave, _ in TRANSITIONS.values())
    assert [e for e, (_, reach) in TRANSITIONS.items() if JobStatus.running in reach] == [Event.claim]
    with pytest.raises(IllegalMove, match="cannot become succeeded by release"):
        sources(Event.release, JobStatus.succeeded)


def test_a_finished_job_is_not_moved_by_a_late_caller(settings: Settings, dataset_id: int) -> None:
    """A worker's release, a take-back and a cancel that come after the end change nothing."""
    job_id = jobs.submit(settings, JobKind.train, params={}, dataset_id=dataset_id)
    lease = jobs.claim(settings, job_id, "w", "cpu")
    assert lease is not None
    jobs.finish(settings, job_id, JobStatus.failed, lease=lease, error="boom")
    assert jobs.release(settings, "w") == []
    assert jobs.take_back(settings, job_id, lease.attempt, "w", "late") is None
    assert jobs.cancel(settings, job_id)[0] == "failed"
    with pytest.raises(jobs.LeaseLost):
        jobs.finish(settings, job_id, JobStatus.succeeded, lease=lease)
    assert (jobs.get(settings, job_id).status, jobs.get(settings, job_id).error) == (JobStatus.failed, "boom")


@pytest.mark.parametrize("text, secret", [
    ("redis://:s3cret@host:6379/0", "s3cret"),
    ("postgresql+psycopg://rodin:pa@ss@db/rodin", "pa@ss"),
    ("could not queue job 1 at redis://:hunter2@h:1: refused", "hunter2"),
    ("redis://host:6379/0?password=hunter2&db=1", "hunter2"),
])
def test_redact_hides_passwords(text: str, secret: str) -> None:
    assert secret not in redact(text) and "***" in redact(text)


def test_unreachable_broker_fails_the_job_without_printing_the_password(tmp_path: Path) -> None:
    settings = load_settings({"RODIN_HOME": str(tmp_path / "h"),
                              "RODIN_BROKER_URL": "redis://:hunter2@127.0.0.1:1/0"})
    with pytest.raises(Exception) as failure:
        jobs.submit(settings, JobKind.reconstruct, params={})
    assert "hunter2" not in str(failure.value)
    with session_scope(settings) as s:
        job = s.query(Job).one()
        assert job.status == "failed" and "hunter2" not in (job.error or "")
