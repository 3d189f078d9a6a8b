"""Fencing, attempt caps and the reaper, in-process against a real SQLite registry.

Each test here fails on the code before leases and the reaper: a second worker could claim a
running job, a dead attempt could still write, a job could die for ever, a stale job could not
be cancelled, and nothing took back a job whose worker was gone.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from orchestrator import jobs, recovery
from orchestrator.registry.db import session_scope
from orchestrator.registry.models import Job, JobKind, JobStatus, ModelCheckpoint, Worker
from orchestrator.settings import Settings

CHECKPOINT = dict(final=False, config={}, metrics={}, artifact_uri="file:///x", size_bytes=1,
                  code_version="t", torch_version="t")


def _train_job(settings: Settings, dataset_id: int) -> int:
    return jobs.submit(settings, JobKind.train, params={}, dataset_id=dataset_id)


def _silence(settings: Settings, job_id: int, seconds: float) -> None:
    """As if the job's worker last beat `seconds` ago."""
    with session_scope(settings) as s:
        s.execute(update(Job).where(Job.id == job_id).values(
            heartbeat_at=datetime.now(timezone.utc) - timedelta(seconds=seconds)))


def _status(settings: Settings, job_id: int) -> Job:
    with session_scope(settings) as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def test_a_running_job_is_not_claimed_by_another_worker(settings: Settings, dataset_id: int) -> None:
    job_id = _train_job(settings, dataset_id)
    assert jobs.claim(settings, job_id, "a", "cpu") is not None
    assert jobs.claim(settings, job_id, "b", "cpu") is None  # a duplicate delivery elsewhere
    job = _status(settings, job_id)
    assert (job.status, job.worker, job.attempts) == ("running", "a", 1)


def test_a_worker_takes_back_the_job_its_dead_job_process_held(settings: Settings, dataset_id: int) -> None:
    job_id = _train_job(settings, dataset_id)
    first = jobs.claim(settings, job_id, "a", "cpu")
    second = jobs.claim(settings, job_id, "a", "cpu")  # redelivered after the job process died
    assert first is not None and second is not None and second.token != first.token
    assert (_status(settings, job_id).attempts, _status(settings, job_id).lost) == (2, 1)
    with pytest.raises(jobs.LeaseLost):  # the dead attempt, were it alive, could write nothing
        jobs.report_progress(settings, first, {"epoch": 3})
    with pytest.raises(jobs.LeaseLost):
        jobs.register_checkpoint(settings, first, dataset_id=dataset_id, epoch=5, sha256="a" * 64, **CHECKPOINT)
    with pytest.raises(jobs.LeaseLost):
        jobs.finish(settings, job_id, JobStatus.succeeded, lease=first)
    assert jobs.report_progress(settings, second, {"epoch": 3})


def test_attempts_are_capped(settings: Settings, dataset_id: int) -> None:
    job_id = _train_job(settings, dataset_id)
    for _ in range(3):
        assert jobs.claim(settings, job_id, "a", "cpu") is not None
    assert jobs.claim(settings, job_id, "a", "cpu") is None  # the third attempt died too
    job = _status(settings, job_id)
    assert job.status == "failed" and job.lost == 3 and job.attempts == 3
    assert job.error and job.error.startswith("worker lost 3 times; last seen on a at ")


def test_one_checkpoint_per_job_and_epoch(settings: Settings, dataset_id: int) -> None:
    job_id = _train_job(settings, dataset_id)
    lease = jobs.claim(settings, job_id, "a", "cpu")
    assert lease is not None
    first = jobs.register_checkpoint(settings, lease, dataset_id=dataset_id, epoch=5, sha256="a" * 64, **CHECKPOINT)
    # A retried write whose first commit went through finds its own row ...
    assert jobs.register_checkpoint(settings, lease, dataset_id=dataset_id, epoch=5, sha256="a" * 64,
                                    **CHECKPOINT) == first
    # ... and the database itself refuses a second row for the same job and epoch.
    with pytest.raises(IntegrityError), session_scope(settings) as s:
        s.add(ModelCheckpoint(job_id=job_id, dataset_id=dataset_id, epoch=5, sha256="b" * 64, **CHECKPOINT))
        s.flush()


def test_reaper_requeues_a_silent_job_and_fences_its_old_attempt(settings: Settings, dataset_id: int) -> None:
    job_id = _train_job(settings, dataset_id)
    lease = jobs.claim(settings, job_id, "a", "cpu")
    assert lease is not None
    _silence(settings, job_id, 5)
    assert recovery.reap(settings).requeued == []  # silent, but not for long
    _silence(settings, job_id, 60)
    assert recovery.reap(settings).requeued == [job_id]
    assert recovery.reap(settings).requeued == []  # a second reaper finds nothing to do
    job = _status(settings, job_id)
    assert (job.status, job.lost, job.lease_token) == ("queued", 1, None)
    assert len(list((settings.broker_folder / "queue").glob("*.msg"))) == 2  # submit + resend
    with pytest.raises(jobs.LeaseLost):
        jobs.report_progress(settings, lease, {})
    again = jobs.claim(settings, job_id, "b", "cpu")
    assert again is not None and again.attempt == 2


def test_reaper_fails_a_job_lost_too_often(settings: Settings, dataset_id: int) -> None:
    job_id = _train_job(settings, dataset_id)
    for worker in ("a", "b", "c"):
        assert jobs.claim(settings, job_id, worker, "cpu") is not None
        _silence(settings, job_id, 60)
        recovery.reap(settings)
    job = _status(settings, job_id)
    assert job.status == "failed" and "worker lost 3 times; last seen on c" in (job.error or "")


def test_cancel_ends_a_job_whose_worker_is_gone(settings: Settings, dataset_id: int) -> None:
    job_id = _train_job(settings, dataset_id)
    lease = jobs.claim(settings, job_id, "a", "cpu")
    assert lease is not None
    _silence(settings, job_id, 60)
    status, message = jobs.cancel(settings, job_id)
    assert status == "cancelled" and "stopped answering" in message
    with pytest.raises(jobs.LeaseLost):
        jobs.report_progress(settings, lease, {})


def test_a_lost_message_is_sent_again_when_a_worker_waits_idle(settings: Settings, dataset_id: int) -> None:
    job_id = _train_job(settings, dataset_id)
    for message in (settings.broker_folder / "queue").glob("*.msg"):
        message.unlink()  # the broker lost it
    with session_scope(settings) as s:
        s.execute(update(Job).where(Job.id == job_id).values(
            sent_at=datetime.now(timezone.utc) - timedelta(seconds=120)))
    recovery._idle_since.clear()
    assert recovery.reap(settings).resent == []  # no idle worker: it may just be waiting its turn
    with session_scope(settings) as s:
        s.add(Worker(hostname="busy", pid=1, queues="train", device="cpu", current_job_id=999))
        s.add(Worker(hostname="infer-only", pid=2, queues="infer", device="cpu"))
    assert recovery.reap(settings).resent == []
    with session_scope(settings) as s:
        s.add(Worker(hostname="idle", pid=3, queues="train,infer", device="cpu"))
    now = datetime.now(timezone.utc)
    assert recovery.reap(settings, now).resent == []  # idle for a moment: maybe between two jobs
    later = now + timedelta(seconds=recovery.IDLE_FOR_S + 1)
    assert recovery.reap(settings, later).resent == [job_id]
    assert recovery.reap(settings, later).resent == []  # just sent: not again at once
    assert len(list((settings.broker_folder / "queue").glob("*.msg"))) == 1


def test_a_stopping_worker_gives_its_job_back_without_counting_a_loss(settings: Settings, dataset_id: int) -> None:
    job_id = _train_job(settings, dataset_id)
    assert jobs.claim(settings, job_id, "a", "cpu") is not None
    assert jobs.release(settings, "a") == [job_id]
    job = _status(settings, job_id)
    assert (job.status, job.lost) == ("queued", 0)
    lease = jobs.claim(settings, job_id, "b", "cpu")
    assert lease is not None and lease.attempt == 2


def test_no_resend_of_a_job_younger_than_the_resend_delay(settings: Settings, dataset_id: int) -> None:
    """A job not sent yet (or just sent) is on its way, not lost: no duplicate message."""
    import dataclasses

    settings = dataclasses.replace(settings, resend_after_s=recovery.IDLE_FOR_S + 5)
    with session_scope(settings) as s:
        s.add(Worker(hostname="idle", pid=3, queues="train,infer", device="cpu"))
        job = Job(kind=JobKind.train.value, dataset_id=dataset_id, params={},
                  status=JobStatus.queued.value)  # registered, its message not sent yet
        s.add(job)
        s.flush()
        job_id = job.id
    recovery._idle_since.clear()
    now = datetime.now(timezone.utc)
    for after_s in (0, 1, recovery.IDLE_FOR_S + 2, settings.resend_after_s - 1):
        assert recovery.reap(settings, now + timedelta(seconds=after_s)).resent == []
    later = now + timedelta(seconds=settings.resend_after_s + 1)
    assert recovery.reap(settings, later).resent == []  # the worker has been idle only now
    later += timedelta(seconds=recovery.IDLE_FOR_S + 1)
    assert recovery.reap(settings, later).resent == [job_id]


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_the_reaper_judges_nobody_until_it_has_reached_the_registry_for_a_stale_window(
        settings: Settings, dataset_id: int) -> None:
    """After a registry outage every running job looks silent: nobody's fault."""
    job_id = _train_job(settings, dataset_id)
    assert jobs.claim(settings, job_id, "a", "cpu") is not None
    clock = _Clock()
    reaper = recovery.Reaper(settings, clock)
    reaper.in_contact()
    clock.t += settings.stale_after_s + 1
    reaper.lost_contact()  # a heartbeat failed: the registry went away
    _silence(settings, job_id, 60)  # ... and for everyone: no worker could beat meanwhile
    assert reaper.run().requeued == []  # back: the first pass judges nobody
    clock.t += settings.stale_after_s / 2
    assert reaper.run().requeued == []
    assert _status(settings, job_id).status == "running"
    clock.t += settings.stale_after_s / 2  # a whole window since: a live worker would have beaten
    assert reaper.run().requeued == [job_id]


def test_a_worker_gives_back_the_job_of_its_dead_or_hung_job_process(
        settings: Settings, dataset_id: int) -> None:
    job_id = _train_job(settings, dataset_id)
    lease = jobs.claim(settings, job_id, "a", "cpu")
    assert lease is not None
    assert jobs.take_back(settings, job_id, lease.attempt, "b", "not b's") is None
    assert jobs.take_back(settings, job_id, lease.attempt + 1, "a", "not this attempt") is None
    assert jobs.take_back(settings, job_id, lease.attempt, "a", "its job process died") == "queued"
    job = _status(settings, job_id)
    assert (job.status, job.lost, job.lease_token, job.error) == ("queued", 1, None,
                                                                  "its job process died")
    assert jobs.take_back(settings, job_id, lease.attempt, "a", "again") is None  # once only
    with pytest.raises(jobs.LeaseLost):
        jobs.report_progress(settings, lease, {})
    again = jobs.claim(settings, job_id, "b", "cpu")  # any worker picks it up at once
    assert again is not None and again.attempt == 2 and _status(settings, job_id).error is None


def test_a_requeue_survives_a_broker_that_is_away(settings: Settings, dataset_id: int) -> None:
    """Giving a job back while the broker restarts leaves it queued (the reaper sends it
    later), rather than failing it as a refused submission would."""
    import dataclasses

    job_id = _train_job(settings, dataset_id)
    lease = jobs.claim(settings, job_id, "a", "cpu")
    assert lease is not None
    away = dataclasses.replace(settings, broker_url="redis://127.0.0.1:1/0")
    assert jobs.take_back(away, job_id, lease.attempt, "a", "its job process died") == "queued"
    assert _status(settings, job_id).status == "queued"
