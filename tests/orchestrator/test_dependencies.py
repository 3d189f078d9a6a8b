"""Jobs that wait for another job, and base models found or queued for `--pretrain`."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from atlas_core.config import TrainConfig
from atlas_core.families import PretrainRecipe
from orchestrator import jobs, recovery
from orchestrator.artifacts import open_store
from orchestrator.pretrain import find_or_queue_base
from orchestrator.registry.db import session_scope
from orchestrator.registry.models import Dataset, Job, JobKind, JobStatus, ModelCheckpoint
from orchestrator.settings import Settings

CHECKPOINT = dict(config={}, metrics={}, artifact_uri="file:///x", size_bytes=1, code_version="t",
                  torch_version="t", sha256="0" * 64)


def _run_to_end(settings: Settings, job_id: int, dataset_id: int, status: JobStatus) -> int | None:
    """As a worker would: claim, register a final checkpoint (on success), finish."""
    lease = jobs.claim(settings, job_id, "w", "cpu")
    assert lease is not None
    final = None
    if status is JobStatus.succeeded:
        final = jobs.register_checkpoint(settings, lease, dataset_id=dataset_id, epoch=1, final=False, **CHECKPOINT)
    jobs.finish(settings, job_id, status, lease=lease, final_model_id=final,
                error="out of memory" if status is JobStatus.failed else None)
    return final


def _job(settings: Settings, job_id: int) -> Job:
    with session_scope(settings) as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def _messages(settings: Settings) -> int:
    return len(list((settings.broker_folder / "queue").glob("*.msg")))


def test_a_dependent_job_is_sent_only_when_its_job_succeeds(settings: Settings, dataset_id: int) -> None:
    parent = jobs.submit(settings, JobKind.train, params={}, dataset_id=dataset_id)
    child = jobs.submit(settings, JobKind.train, params={}, dataset_id=dataset_id, depends_on=parent)
    assert _job(settings, child).status == "waiting" and _messages(settings) == 1
    assert jobs.claim(settings, child, "w", "cpu") is None  # a stray message cannot start it
    final = _run_to_end(settings, parent, dataset_id, JobStatus.succeeded)
    child_row = _job(settings, child)
    assert (child_row.status, child_row.input_model_id) == ("queued", final)
    assert _messages(settings) == 2


@pytest.mark.parametrize("how", ["failed", "cancelled"])
def test_a_dependent_job_fails_with_the_reason(settings: Settings, dataset_id: int, how: str) -> None:
    parent = jobs.submit(settings, JobKind.train, params={}, dataset_id=dataset_id)
    child = jobs.submit(settings, JobKind.train, params={}, dataset_id=dataset_id, depends_on=parent)
    grandchild = jobs.submit(settings, JobKind.reconstruct, params={}, depends_on=child)
    if how == "failed":
        _run_to_end(settings, parent, dataset_id, JobStatus.failed)
    else:
        jobs.cancel(settings, parent)
    row = _job(settings, child)
    assert row.status == "failed" and f"job {parent}, which this job waited for, {how}" in (row.error or "")
    if how == "failed":
        assert "out of memory" in (row.error or "")
    assert _job(settings, grandchild).status == "failed"  # down the chain


def test_a_job_submitted_after_its_job_ended_is_settled_at_once(settings: Settings, dataset_id: int) -> None:
    parent = jobs.submit(settings, JobKind.train, params={}, dataset_id=dataset_id)
    final = _run_to_end(settings, parent, dataset_id, JobStatus.succeeded)
    child = jobs.submit(settings, JobKind.train, params={}, dataset_id=dataset_id, depends_on=parent)
    assert (_job(settings, child).status, _job(settings, child).input_model_id) == ("queued", final)


def test_cancel_a_waiting_job_and_the_reaper_settles_stragglers(settings: Settings, dataset_id: int) -> None:
    parent = jobs.submit(settings, JobKind.train, params={}, dataset_id=dataset_id)
    waiting = jobs.submit(settings, JobKind.train, params={}, dataset_id=dataset_id, depends_on=parent)
    assert jobs.cancel(settings, waiting)[0] == "cancelled"
    straggler = jobs.submit(settings, JobKind.train, params={}, dataset_id=dataset_id, depends_on=parent)
    with session_scope(settings) as s:  # as if the worker died between finishing and settling
        s.execute(update(Job).where(Job.id == parent).values(status="failed", error="boom"))
    assert recovery.reap(settings).released == []
    assert _job(settings, straggler).status == "failed"


def test_a_base_model_is_reused_and_not_retrained(settings: Settings) -> None:
    recipe = PretrainRecipe(count=3, points_per_shape=200, epochs=1)
    config = TrainConfig.cpu().with_overrides(n_patches=4, bottleneck=32, hidden=32)
    store = open_store(settings)
    first = find_or_queue_base(settings, store, recipe, config)
    assert first.queued_now and first.pretrain_job_id is not None and first.model_id is None
    # While it runs, a second fine-tune waits for the same pre-training.
    again = find_or_queue_base(settings, store, recipe, config)
    assert (again.pretrain_job_id, again.queued_now) == (first.pretrain_job_id, False)
    job = _job(settings, first.pretrain_job_id)
    assert job.params["pretrain"]["family"] == "swords" and job.dataset_id is not None
    final = _run_to_end(settings, first.pretrain_job_id, job.dataset_id, JobStatus.succeeded)
    reused = find_or_queue_base(settings, store, recipe, config)
    assert (reused.model_id, reused.pretrain_job_id) == (final, None)
    # Another architecture or another recipe is another base; the generated set is reused.
    other = find_or_queue_base(settings, store, recipe, config.with_overrides(n_patches=5))
    assert other.queued_now and other.pretrain_job_id != first.pretrain_job_id
    assert _job(settings, other.pretrain_job_id).dataset_id == job.dataset_id
    with session_scope(settings) as s:
        assert s.query(Dataset).count() == 1 and s.query(ModelCheckpoint).count() == 1


def test_a_dataset_lying_otherwise_gets_a_base_pre_trained_on_turned_shapes(settings: Settings) -> None:
    from dataclasses import replace

    from atlas_core.families import generate_family
    from atlas_core.orientation import long_axis
    from orchestrator.datasets import load_version, register_dataset
    from orchestrator.pretrain import matching_turn

    quarter = ((0, -1, 0), (1, 0, 0), (0, 0, 1))  # blades along -x instead of +y
    store = open_store(settings)
    users = generate_family("swords", 12, seed=5, points_per_shape=300, turn=quarter)
    mine = int(register_dataset(settings, store, "mine", users, "turned swords", [])["id"])
    turn = matching_turn(settings, store, "swords", mine)
    assert turn == quarter

    recipe = PretrainRecipe(count=3, points_per_shape=200, epochs=1)
    config = TrainConfig.cpu().with_overrides(n_patches=4, bottleneck=32, hidden=32)
    plain = find_or_queue_base(settings, store, recipe, config)
    turned = find_or_queue_base(settings, store, replace(recipe, turn=turn), config)
    assert plain.turn == "identity" and turned.turn == "x->y y->-x z->z"
    assert turned.pretrain_job_id != plain.pretrain_job_id and turned.key != plain.key
    with session_scope(settings) as s:
        sets = {j: s.get(Dataset, _job(settings, j).dataset_id) for j in (plain.pretrain_job_id, turned.pretrain_job_id)}
        sources = {j: (d.source, d.artifact_uri, d.artifact_sha256) for j, d in sets.items() if d is not None}
    assert "turned" not in sources[plain.pretrain_job_id][0]
    assert sources[turned.pretrain_job_id][0].endswith("turned x->y y->-x z->z)")
    _, uri, sha256 = sources[turned.pretrain_job_id]
    assert long_axis(load_version(store, uri, sha256).points) == "-x"


def _finish(settings: Settings, job_id: int, status: JobStatus) -> None:
    lease = jobs.claim(settings, job_id, "w", "cpu")
    assert lease is not None
    jobs.finish(settings, job_id, status, lease=lease, error="broken file system" if status is JobStatus.failed else None)


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 0, 2)])
def test_a_job_that_waits_for_all_is_sent_once_the_last_succeeds(settings: Settings, order: tuple[int, ...]) -> None:
    parts = [jobs.submit(settings, JobKind.ingest, params={"files": [f"{i}.obj"]}) for i in range(3)]
    after = jobs.submit(settings, JobKind.assemble, params={"name": "d", "parts": parts}, depends_on=parts)
    assert _job(settings, after).params["waits_for"] == parts
    for n, i in enumerate(order):
        assert _job(settings, after).status == JobStatus.waiting.value
        _finish(settings, parts[i], JobStatus.succeeded)
        # It waits on one part still running, whichever ended first.
        assert _job(settings, after).depends_on_job_id in ([parts[j] for j in order[n + 1:]] or [parts[i]])
    assert _job(settings, after).status == JobStatus.queued.value


def test_a_job_that_waits_for_all_fails_with_the_first_that_does_not_succeed(settings: Settings) -> None:
    parts = [jobs.submit(settings, JobKind.ingest, params={}) for _ in range(3)]
    after = jobs.submit(settings, JobKind.assemble, params={"parts": parts}, depends_on=parts)
    _finish(settings, parts[0], JobStatus.succeeded)
    _finish(settings, parts[2], JobStatus.failed)  # not the one it waits on now: found when that one ends
    _finish(settings, parts[1], JobStatus.succeeded)
    job = _job(settings, after)
    assert job.status == JobStatus.failed.value
    assert job.error == f"job {parts[2]}, which this job waited for, failed: broken file system"


def test_a_job_that_waits_for_all_of_jobs_already_ended_settles_at_once(settings: Settings) -> None:
    parts = [jobs.submit(settings, JobKind.ingest, params={}) for _ in range(2)]
    for part in parts:
        _finish(settings, part, JobStatus.succeeded)
    after = jobs.submit(settings, JobKind.assemble, params={"parts": parts}, depends_on=parts)
    assert _job(settings, after).status == JobStatus.queued.value
