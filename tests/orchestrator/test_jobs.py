"""The job service in-process against a real SQLite registry and the embedded broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import jobs
from orchestrator.errors import RegistryInvariantError, UserInputError
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
    assert jobs.summary(settings, job_id)["status"] == "queued"
    lease = jobs.claim(settings, job_id, "w", "cpu")
    assert lease is not None and lease.attempt == 1
    assert jobs.report_progress(settings, lease, {"epoch": 1})
    jobs.finish(settings, job_id, JobStatus.succeeded, lease=lease, result={"x": 1}, outputs=[])
    done = jobs.summary(settings, job_id)
    assert (done["status"], done["attempts"], done["result"]) == ("succeeded", 1, {"x": 1})
    assert not jobs.claim(settings, job_id, "w", "cpu")  # a repeated delivery does nothing
    assert jobs.wait(settings, job_id)["status"] == "succeeded"


def test_finish_marks_the_final_checkpoint_of_its_own_job_only(settings: Settings, dataset_id: int) -> None:
    ds = dataset_id
    a = jobs.submit(settings, JobKind.train, params={}, dataset_id=ds)
    b = jobs.submit(settings, JobKind.train, params={}, dataset_id=ds)
    other = _checkpoint(settings, b, ds, 1)
    with pytest.raises(RegistryInvariantError, match="not a checkpoint of job"):
        jobs.finish(settings, a, JobStatus.succeeded, final_model_id=other)
    mine = _checkpoint(settings, a, ds, 1)
    jobs.finish(settings, a, JobStatus.succeeded, final_model_id=mine)
    assert jobs.summary(settings, a)["final_model_id"] == mine
    with pytest.raises(ValueError, match="final status"):
        jobs.finish(settings, b, JobStatus.running)


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


def test_a_job_without_its_row_is_a_named_error(settings: Settings) -> None:
    with session_scope(settings):
        pass  # creates the registry
    with pytest.raises(RegistryInvariantError):
        jobs.finish(settings, 12345, JobStatus.failed)


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
