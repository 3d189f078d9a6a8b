"""The job service: the only code that moves a job from one state to another, or writes its
heartbeat, and the one way to read and follow jobs.

A job is a registry row first and a queue message second: the row says what to do and what
happened, the message (a job id, JSON) only wakes a worker. Every move is one short transaction
here, guarded by the one table of moves (`orchestrator.job_states.TRANSITIONS`; its diagram is
at the top of that module): `_move` updates a row only if its status is one the event may leave,
so the CLI, the task bodies, the reaper, bundle imports and the tests all move jobs the same way,
and of two callers racing on one job only one wins.

Clients call `submit` (`submit_sweep` for a grid), `cancel`, `get` (`get_sweep`, `recent`) and
`watch` (or `wait`, its last view); workers call `claim`, `report_progress`, `keep_alive`,
`register_checkpoint` and `finish`, `take_back` and `release`; the reaper calls
`take_back_silent` and `resend`; a bundle import calls `add_imported`. Jobs are read as typed
views (`orchestrator.job_view.JobView`, `SweepView`). No torch here.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, overload

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.orm import Session, selectinload

from orchestrator.errors import RegistryInvariantError, RodinError
from orchestrator.job_states import Event, JobKind, JobStatus, sources
from orchestrator.job_view import JobView, SweepView
from orchestrator.kinds import JobParams, spec
from orchestrator.registry.db import as_utc, session_scope, with_retries
from orchestrator.registry.models import Job, ModelCheckpoint, Sweep
from orchestrator.settings import Settings, redact

log = logging.getLogger(__name__)


#: Test-time refinement steps per input by default (`rodin reconstruct --refine STEPS`): the
#: value of `atlas_core.config.InferConfig.refine_steps`, restated because the client path
#: (`rodin status` imports this module) loads no atlas_core; a test holds the two together.
DEFAULT_REFINE_STEPS = 260


def refine_steps(steps: int) -> dict[str, int] | None:
    """`--refine STEPS` as a job parameter: the phases of atlas_core.refine.refine as
    `InferConfig.refine_split` divides them; None for 0 (no refinement)."""
    from atlas_core.config import INFER

    if steps <= 0:
        return None
    latent, decoder = INFER.refine_split(steps)
    return {"latent_steps": latent, "decoder_steps": decoder}


def now() -> datetime:
    return datetime.now(timezone.utc)


def _move(session: Session, event: Event, to: JobStatus, *where: ColumnElement[bool],
          **values: Any) -> int:
    """Move the jobs that `where` selects to `to` by `event`, those whose status the event may
    leave (TRANSITIONS); returns how many moved. The only writer of `Job.status`."""
    moved = session.execute(update(Job).where(Job.status.in_(sources(event, to)), *where)
                            .values(status=to.value, **values))
    return int(moved.rowcount)  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------- clients


def checked_params(kind: JobKind, params: dict[str, Any] | JobParams) -> dict[str, Any]:
    """A job's parameters as stored, checked against its kind's declaration (orchestrator.kinds)."""
    declared = spec(kind).params
    if isinstance(params, JobParams):
        if not isinstance(params, declared):
            raise TypeError(f"a {kind.value} job takes {declared.__name__}, not {type(params).__name__}")
        return params.to_json()
    return declared.from_json(params).to_json()


def submit(settings: Settings, kind: JobKind, *, params: dict[str, Any] | JobParams,
           dataset_id: int | None = None, input_model_id: int | None = None,
           depends_on: int | list[int] | None = None) -> int:
    """Register a queued job and send its message; returns the job id.

    With `depends_on`, the job is registered `waiting` and sent only when that job succeeds
    (`settle_dependents`); its `input_model_id` is then that job's final model. With a list, it
    waits for all of them (kept as `params.waits_for`; `depends_on_job_id` names one still
    unfinished, moved on as each succeeds) and fails with the reason of the first that did not
    succeed, found when the one it waits on ends.
    If the broker cannot take the message, the job is marked failed (so that it does not sit
    `queued` for ever) and a RodinError says where the broker was (without its password).
    """
    status = JobStatus.waiting if depends_on else JobStatus.queued
    sources(Event.submit, status)
    params = checked_params(kind, params)
    if isinstance(depends_on, list):  # all of them: it waits for one unfinished at a time
        params["waits_for"] = list(depends_on)
        depends_on = depends_on[0]
    with session_scope(settings) as s:
        job = Job(kind=kind.value, dataset_id=dataset_id, input_model_id=input_model_id,
                  params=params, depends_on_job_id=depends_on, status=status.value)
        s.add(job)
        s.flush()
        job_id = job.id
    if depends_on is None:
        send(settings, job_id, kind)
    else:
        settle_dependents(settings, depends_on)  # it may have ended already
    return job_id


def submit_sweep(settings: Settings, *, dataset_id: int, grid: dict[str, list[Any]],
                 fixed: dict[str, Any], params: list[dict[str, Any]] | list[JobParams],
                 input_model_id: int | None = None) -> tuple[int, list[int]]:
    """Register a sweep and one queued training job per combination (`params`, in order), then
    send their messages; returns (the sweep id, the job ids).

    The sweep and all its jobs are one transaction: a sweep is never half registered. If the
    broker refuses a message, that job and the ones not sent yet are marked failed and a
    RodinError says so (as `submit` does for one job).
    """
    with session_scope(settings) as s:
        sweep = Sweep(dataset_id=dataset_id, grid=grid, fixed=fixed)
        s.add(sweep)
        s.flush()
        rows = [Job(kind=JobKind.train.value, dataset_id=dataset_id, input_model_id=input_model_id,
                    params=checked_params(JobKind.train, p), sweep_id=sweep.id,
                    status=JobStatus.queued.value) for p in params]
        s.add_all(rows)
        s.flush()
        sweep_id, job_ids = sweep.id, [job.id for job in rows]
    for i, job_id in enumerate(job_ids):
        try:
            send(settings, job_id, JobKind.train)
        except RodinError as exc:
            _fail_unsent(settings, job_ids[i + 1:], f"could not queue: job {job_id} of its sweep "
                                                    "could not be queued either")
            raise RodinError(f"sweep {sweep_id}: {exc}; its {len(job_ids) - i} unsent jobs are "
                             "marked failed") from None
    return sweep_id, job_ids


def _fail_unsent(settings: Settings, job_ids: list[int], reason: str) -> None:
    if not job_ids:
        return
    with session_scope(settings) as s:
        _move(s, Event.send, JobStatus.failed, Job.id.in_(job_ids), error=reason, finished_at=now())


def settle_dependents(settings: Settings, parent_id: int) -> list[int]:
    """Once a job has ended, move the jobs waiting for it: queued (with its final model as their
    input) if it succeeded, failed with the reason if not. Safe to call again or concurrently:
    each change is conditional on the job still waiting. Returns the ids sent to the queue."""
    sent: list[int] = []
    ended: list[int] = []
    repointed: list[int] = []
    with session_scope(settings) as s:
        parent = s.get(Job, parent_id)
        if parent is None or not JobStatus(parent.status).finished:
            return sent
        final = s.scalar(select(func.max(ModelCheckpoint.id)).where(
            ModelCheckpoint.job_id == parent_id, ModelCheckpoint.final.is_(True)))
        waiting = s.execute(select(Job.id, Job.kind, Job.cancel_requested, Job.params).where(
            Job.depends_on_job_id == parent_id, Job.status == JobStatus.waiting.value)).all()
        for job_id, _kind, cancelled, params in waiting:
            values: dict[str, Any]
            others = [j for j in (params or {}).get("waits_for") or [] if j != parent_id]
            verdict = _all_of(s, others) if others and not cancelled and \
                parent.status == JobStatus.succeeded.value else None
            if verdict is not None and isinstance(verdict[0], int):  # still waiting: on the next one
                moved = s.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.waiting.value,
                                                    Job.depends_on_job_id == parent_id)
                                  .values(depends_on_job_id=verdict[0]))
                if moved.rowcount == 1:  # type: ignore[attr-defined]
                    repointed.append(verdict[0])
                continue
            if verdict is not None and verdict[1]:  # another job it waited for ended otherwise
                to, values = JobStatus.failed, dict(finished_at=now(), error=verdict[1])
            elif cancelled:
                to, values = JobStatus.cancelled, dict(finished_at=now())
            elif parent.status == JobStatus.succeeded.value and (final is not None or parent.kind != "train"):
                to, values = JobStatus.queued, dict(input_model_id=final)
            else:
                what = (f"{parent.status}: {parent.error}" if parent.error else parent.status) \
                    if parent.status != JobStatus.succeeded.value else "succeeded without a final model"
                to, values = JobStatus.failed, dict(finished_at=now(),
                                                    error=f"job {parent_id}, which this job waited for, {what}")
            if _move(s, Event.settle, to, Job.id == job_id, **values):
                (sent if to is JobStatus.queued else ended).append(job_id)
        kinds = {job_id: kind for job_id, kind, _, _ in waiting}
    for job_id in sent:
        send(settings, job_id, JobKind(kinds[job_id]), fail_job=False)
    for job_id in ended:
        settle_dependents(settings, job_id)  # a chain fails all the way down
    for job_id in repointed:
        sent += settle_dependents(settings, job_id)  # it may have ended while we read
    return sent


def _all_of(session: Session, job_ids: list[int]) -> tuple[int | None, str | None]:
    """For a job that waits for all of `job_ids` (its `params.waits_for`, the one that woke it
    left out): (one of them still unfinished, None), or (None, why one ended otherwise than
    succeeded), or (None, None) when all have succeeded."""
    rows = {row.id: row for row in session.execute(
        select(Job.id, Job.status, Job.error).where(Job.id.in_(job_ids)))}
    for job_id in job_ids:
        row = rows.get(job_id)
        if row is None:
            return None, f"job {job_id}, which this job waited for, is not in the registry"
        if row.status == JobStatus.succeeded.value:
            continue
        if JobStatus(row.status).finished:
            what = f"{row.status}: {row.error}" if row.error else row.status
            return None, f"job {job_id}, which this job waited for, {what}"
    unfinished = [j for j in job_ids if not JobStatus(rows[j].status).finished]
    return (unfinished[0], None) if unfinished else (None, None)


def _settle_quietly(settings: Settings, job_id: int) -> None:
    """Settle a finished job's dependents; a failure here is retried by the reaper."""
    try:
        settle_dependents(settings, job_id)
    except Exception:  # noqa: BLE001 - the job itself has ended; its dependents can wait a pass
        log.warning("could not settle the jobs waiting for job %s", job_id, exc_info=True)


def send(settings: Settings, job_id: int, kind: JobKind, *, fail_job: bool = True) -> bool:
    """Put a registered job's message on its queue and record the Celery task id.

    A broker that cannot take the message fails the job with the reason (a client submitting
    is told at once), unless `fail_job` is False: a job that is already queued and was only
    being sent again (by the reaper, a worker giving it back, a finished dependency) stays
    queued with its message missing, and the reaper sends it once the broker is back (Redis
    restarting must not fail jobs). Returns whether the message was sent.
    """
    from orchestrator.queue import app_for, send_job

    try:
        task_id = send_job(app_for(settings), kind.value, job_id)
    except Exception as exc:  # noqa: BLE001 - any broker failure is reported on the job
        reason = redact(str(exc))
        if not fail_job:
            log.warning("job %s stays queued: its message could not be sent to %s (%s); it will "
                        "be sent again", job_id, redact(settings.queue_url), reason)
            return False
        with session_scope(settings) as s:
            _move(s, Event.send, JobStatus.failed, Job.id == job_id, error=f"could not queue: {reason}",
                  finished_at=now())
        raise RodinError(f"could not queue job {job_id} at {redact(settings.queue_url)}: "
                         f"{reason}") from None
    with session_scope(settings) as s:
        s.execute(update(Job).where(Job.id == job_id).values(celery_task_id=task_id, sent_at=now()))
    return True


def resend(settings: Settings, job_id: int, kind: JobKind, sent_at: datetime | None, at: datetime) -> bool:
    """The reaper sends a queued job's message again, presumed lost: only if nobody has sent
    it since `sent_at` (as read), so that of several reapers one sends. Returns whether sent."""
    with session_scope(settings) as s:
        taken = s.execute(update(Job).where(
            Job.id == job_id, Job.status == JobStatus.queued.value,
            Job.sent_at.is_(None) if sent_at is None else Job.sent_at == sent_at).values(sent_at=at))
        if taken.rowcount != 1:  # type: ignore[attr-defined]
            return False
    return send(settings, job_id, kind, fail_job=False)


def cancel(settings: Settings, job_id: int) -> tuple[str, str]:
    """Ask a job to stop; returns (status, message). A queued or waiting job is cancelled at
    once, and so is a running one whose worker has gone silent; a live one stops at its next
    epoch boundary (the task body reads the flag) and keeps its checkpoints. Jobs waiting for
    a cancelled job fail with the reason."""
    from orchestrator.job_view import is_stale
    from orchestrator.registry.queries import get_job

    with session_scope(settings) as s:
        job = get_job(s, job_id)
        seen = job.status
        if JobStatus(seen).finished:
            return seen, f"job {job_id} already {seen}; nothing to cancel"
        if job.kind == JobKind.member.value:
            # Its ranks are part of one process group: only the training job can stop them all.
            parent = (job.params or {}).get("train_job")
            return seen, (f"job {job_id} is one machine's ranks of training job {parent}: "
                          f"`rodin cancel {parent}` stops every rank")
        job.cancel_requested = True
        if seen in (JobStatus.queued.value, JobStatus.waiting.value):
            message = f"job {job_id} cancelled before it started"
        elif is_stale(job.heartbeat_at, settings.stale_after_s):
            # Its worker is gone: nobody would read the flag. The lease goes with it, so a
            # worker that was only cut off stops at its next registry write.
            message = f"job {job_id} cancelled (its worker {job.worker} stopped answering)"
        else:
            return seen, f"job {job_id} will stop after its current epoch"
        s.flush()
        if not _move(s, Event.cancel, JobStatus.cancelled, Job.id == job_id, Job.status == seen,
                     finished_at=now(), lease_token=None):
            return seen, f"job {job_id} moved on while it was being cancelled; see `rodin status {job_id}`"
    _settle_quietly(settings, job_id)
    return JobStatus.cancelled.value, message


def end_members(settings: Settings, job_ids: list[int], reason: str) -> None:
    """The members of a `--nodes` training job's attempt that the attempt no longer needs
    (it was given back, or failed): a queued one is cancelled at once with `reason`, a
    running one is flagged, and its body ends it once its process group breaks (a claim of
    a flagged one cancels it too)."""
    if not job_ids:
        return

    def write() -> None:
        with session_scope(settings) as s:
            s.execute(update(Job).where(Job.id.in_(job_ids), Job.status.in_(
                (JobStatus.queued.value, JobStatus.running.value))).values(cancel_requested=True))
            _move(s, Event.cancel, JobStatus.cancelled, Job.id.in_(job_ids),
                  Job.status == JobStatus.queued.value, finished_at=now(), lease_token=None, error=reason)

    with_retries(settings, f"end members {job_ids}", write)


def get(settings: Settings, job_id: int) -> JobView:
    """The job as it stands; an unknown id is a UserInputError naming the newest (exit 2)."""
    from orchestrator.registry.queries import get_job

    with session_scope(settings) as s:
        return JobView.of(get_job(s, job_id))


def recent(settings: Settings, limit: int) -> list[JobView]:
    """The newest `limit` jobs, newest first."""
    with session_scope(settings) as s:
        # Checkpoints and datasets in one query each, not one per job: the registry may be a
        # network hop away. Of a checkpoint only what a view needs: a final one's metrics hold
        # its out-of-distribution statistics (hundreds of numbers).
        checkpoints = selectinload(Job.checkpoints).load_only(ModelCheckpoint.id, ModelCheckpoint.final)
        rows = s.scalars(select(Job).options(checkpoints, selectinload(Job.dataset))
                         .order_by(Job.id.desc()).limit(limit)).all()
        return [JobView.of(job) for job in rows]


def get_sweep(settings: Settings, sweep_id: int) -> SweepView:
    """The sweep and its jobs, each with its final model's metrics; unknown id: exit 2."""
    from orchestrator.registry.models import Dataset
    from orchestrator.registry.queries import get_sweep as sweep_row

    with session_scope(settings) as s:
        sweep = sweep_row(s, sweep_id)
        dataset = s.get(Dataset, sweep.dataset_id)
        rows = s.scalars(select(Job).where(Job.sweep_id == sweep.id).order_by(Job.id)
                         .options(selectinload(Job.checkpoints), selectinload(Job.dataset))).all()
        return SweepView.of(sweep, dataset.ref if dataset else None, list(rows))


@overload
def watch(settings: Settings, *, job_id: int, poll_s: float = ...) -> Iterator[JobView]: ...
@overload
def watch(settings: Settings, *, sweep_id: int, poll_s: float = ...) -> Iterator[SweepView]: ...
@overload
def watch(settings: Settings, *, limit: int, poll_s: float = ...) -> Iterator[list[JobView]]: ...


def watch(settings: Settings, *, job_id: int | None = None, sweep_id: int | None = None,
          limit: int | None = None, poll_s: float = 0.5) -> Iterator[Any]:
    """Follow the registry: yield a job's view (`job_id`), a sweep's (`sweep_id`) or the newest
    `limit` jobs now, then again every `poll_s`, until the job or every job of the sweep has
    ended (the last view yielded is the ended one); the newest jobs are followed until the
    caller stops. What every follower uses: `wait`, `--wait`'s progress bar, `status --watch`.
    """
    if (job_id is None) + (sweep_id is None) + (limit is None) != 2:
        raise ValueError("watch one job, one sweep or the newest jobs")
    read: Callable[[], Any]
    if job_id is not None:
        read = lambda: get(settings, job_id)  # noqa: E731
    elif sweep_id is not None:
        read = lambda: get_sweep(settings, sweep_id)  # noqa: E731
    else:
        read = lambda: recent(settings, limit or 0)  # noqa: E731
    while True:
        current = read()
        yield current
        if not isinstance(current, list) and current.finished:
            return
        time.sleep(poll_s)


def wait(settings: Settings, job_id: int, on_update: Callable[[JobView], None] | None = None,
         poll_s: float = 0.5) -> JobView:
    """Follow the job until it has ended; returns its final view. `on_update` sees every view."""
    for current in watch(settings, job_id=job_id, poll_s=poll_s):
        if on_update is not None:
            on_update(current)
    return current


def wait_sweep(settings: Settings, sweep_id: int, on_update: Callable[[SweepView], None] | None = None,
               poll_s: float = 0.5) -> SweepView:
    """Follow the sweep until every job of it has ended; returns its final view."""
    for current in watch(settings, sweep_id=sweep_id, poll_s=poll_s):
        if on_update is not None:
            on_update(current)
    return current


# ---------------------------------------------------------------------------------- workers


class LeaseLost(RodinError):
    """This attempt no longer holds its job: the job was taken back from a worker presumed dead,
    cancelled while its worker was silent, or ended. The attempt must stop and write nothing."""


@dataclass(frozen=True)
class Lease:
    """A running attempt's hold on its job: the fencing token every write must show."""

    job_id: int
    token: str
    attempt: int


def claim(settings: Settings, job_id: int, worker: str, device: str) -> Lease | None:
    """Start an attempt of a job on this worker; None when the delivery must be dropped.

    A job can be claimed when it is `queued` (new, released by a stopping worker, or taken back
    by the reaper), or when it is `running` on this very worker: a worker runs one job at a time,
    so that earlier attempt has died with its job process. A job running on another worker is
    left alone (the message is a duplicate; if that worker is dead, the reaper requeues the job).
    The claim is a conditional update, so of two workers handed the same job one wins.
    """
    lease, ended = with_retries(settings, f"claim job {job_id}",
                                lambda: _claim(settings, job_id, worker, device))
    if ended:
        _settle_quietly(settings, job_id)
    return lease


def _claim(settings: Settings, job_id: int, worker: str, device: str) -> tuple[Lease | None, bool]:
    """(the lease, or None; whether the job ended here: cancelled, or lost too often)."""
    with session_scope(settings) as s:
        job = s.get(Job, job_id)
        if job is None:
            log.warning("job %s is not in the registry; dropping its message", job_id)
            return None, False
        seen = JobStatus(job.status)
        if seen not in (JobStatus.queued, JobStatus.running):
            log.info("job %s is %s; dropping a delivery", job_id, job.status)
            return None, False
        if seen is JobStatus.running and job.worker != worker:
            log.info("job %s is running on %s; dropping a repeated delivery", job_id, job.worker)
            return None, False
        # Read before the updates below: an ORM update refreshes `job` in this session.
        attempts, started = job.attempts, job.started_at
        lost = job.lost + (1 if seen is JobStatus.running else 0)
        guard = (Job.id == job_id, Job.attempts == attempts, Job.status == seen.value)
        if job.cancel_requested or lost >= settings.max_attempts:
            cancelled = job.cancel_requested
            ended = _move(s, Event.claim, JobStatus.cancelled if cancelled else JobStatus.failed, *guard,
                          finished_at=now(), lost=lost, lease_token=None,
                          error=None if cancelled else lost_reason(lost, job.worker, job.heartbeat_at))
            return None, ended == 1
        token = secrets.token_hex(16)
        taken = _move(s, Event.claim, JobStatus.running, *guard,
                      attempts=attempts + 1, lost=lost, lease_token=token, worker=worker, device=device,
                      error=None, started_at=started or now(), heartbeat_at=now())
        if taken != 1:
            log.info("job %s was claimed by another worker first", job_id)
            return None, False
        return Lease(job_id, token, attempts + 1), False


def lost_reason(lost: int, worker: str | None, last_seen: datetime | None) -> str:
    seen = as_utc(last_seen)
    when = f" at {seen:%Y-%m-%d %H:%M:%S} UTC" if seen else ""
    return (f"worker lost {lost} time{'s' if lost != 1 else ''}; last seen on {worker or '?'}{when} "
            f"(RODIN_MAX_ATTEMPTS={lost}); resubmit it once the cause is fixed")


def _held(session: Any, lease: Lease) -> Job:
    """The job, locked for this transaction, if the lease is still current; else LeaseLost."""
    job = session.get(Job, lease.job_id, with_for_update=True)
    if job is None or job.lease_token != lease.token or job.status != JobStatus.running.value:
        raise LeaseLost(f"job {lease.job_id} is no longer held by attempt {lease.attempt}")
    return job


def keep_alive(session: Any, job_id: int, worker: str, at: datetime) -> None:
    """The job's heartbeat, written by its worker's heartbeat thread (in the worker row's
    transaction) while its job process is alive and moving (workers/heartbeat.py). Only a job
    this worker still holds: one taken back by the reaper is not kept alive.

    A row that another transaction has locked is skipped, not waited for: the locker is the job
    process itself writing (its progress carries a heartbeat), or one stopped mid-write, which
    this worker's watch must stay free to end."""
    held = (select(Job.id).where(Job.id == job_id, Job.worker == worker,
                                 Job.status == JobStatus.running.value)
            .with_for_update(skip_locked=True).scalar_subquery())
    session.execute(update(Job).where(Job.id == held).values(heartbeat_at=at))


def report_progress(settings: Settings, lease: Lease, progress: dict[str, Any]) -> bool:
    """Store progress and the heartbeat; False when the user asked to cancel."""
    def write() -> bool:
        with session_scope(settings) as s:
            job = _held(s, lease)
            job.progress, job.heartbeat_at = progress, now()
            return not job.cancel_requested

    return with_retries(settings, f"report progress of job {lease.job_id}", write)


def register_checkpoint(settings: Settings, lease: Lease, **fields: Any) -> int:
    """Register a checkpoint of the leased job (fields of ModelCheckpoint); returns its id.

    Exactly once per (job, epoch): a retry after a commit whose answer was lost finds its own
    row (same sha256) and returns it.
    """
    from sqlalchemy.exc import IntegrityError

    def write() -> int:
        with session_scope(settings) as s:
            _held(s, lease)
            row = ModelCheckpoint(job_id=lease.job_id, **fields)
            s.add(row)
            s.flush()
            return row.id

    try:
        return with_retries(settings, f"register a checkpoint of job {lease.job_id}", write)
    except IntegrityError:
        with session_scope(settings) as s:
            existing = s.scalars(select(ModelCheckpoint).where(
                ModelCheckpoint.job_id == lease.job_id, ModelCheckpoint.epoch == fields["epoch"])).first()
            if existing is not None and existing.sha256 == fields["sha256"]:
                return existing.id
        raise LeaseLost(f"job {lease.job_id} epoch {fields['epoch']} is already registered by another "
                        "attempt") from None


def finish(settings: Settings, job_id: int, status: JobStatus, *, lease: Lease,
           outputs: list[dict[str, Any]] | None = None, error: str | None = None,
           result: dict[str, Any] | None = None, final_model_id: int | None = None,
           final_metrics: dict[str, Any] | None = None) -> None:
    """End a job of any kind, in one transaction: status, outputs, result, and for a training
    job the checkpoint chosen as its final model (with `final_metrics` added to its metrics,
    e.g. its out-of-distribution statistics). Only by the attempt that holds the job (its
    lease): LeaseLost otherwise."""
    if not status.finished:
        raise ValueError(f"finish() needs a final status, not {status.value}")
    if lease.job_id != job_id:
        raise RegistryInvariantError(f"the lease of job {lease.job_id} cannot finish job {job_id}")

    def write() -> None:
        with session_scope(settings) as s:
            _held(s, lease)
            if final_model_id is not None:
                model = s.get(ModelCheckpoint, final_model_id)
                if model is None or model.job_id != job_id:
                    raise RegistryInvariantError(
                        f"model {final_model_id} is not a checkpoint of job {job_id}")
                model.final = True
                if final_metrics:
                    model.metrics = {**(model.metrics or {}), **final_metrics}
            values: dict[str, Any] = dict(finished_at=now(), lease_token=None, error=error)
            if outputs is not None:
                values["outputs"] = outputs
            if result is not None:
                values["result"] = result
            s.flush()
            if not _move(s, Event.finish, status, Job.id == job_id, Job.lease_token == lease.token, **values):
                raise LeaseLost(f"job {job_id} is no longer held by attempt {lease.attempt}")

    with_retries(settings, f"finish job {job_id}", write)
    _settle_quietly(settings, job_id)


def after_lost_attempt(settings: Settings, *, lost: int, cancel_requested: bool,
                       worker: str | None, last_seen: datetime | None, reason: str,
                       at: datetime) -> dict[str, Any]:
    """The job's next state once an attempt has died (`lost` counts it): `cancelled` if that was
    asked, `failed` once RODIN_MAX_ATTEMPTS attempts were lost, else `queued` again with the
    reason shown until the next claim. The one rule for the reaper and for a worker whose job
    process died or hung."""
    if cancel_requested:
        return dict(status=JobStatus.cancelled.value, finished_at=at, lost=lost, lease_token=None)
    if lost >= settings.max_attempts:
        return dict(status=JobStatus.failed.value, finished_at=at, lost=lost, lease_token=None,
                    error=f"{reason}; {lost_reason(lost, worker, last_seen)}")
    return dict(status=JobStatus.queued.value, worker=None, lost=lost, lease_token=None,
                error=reason)


def take_back(settings: Settings, job_id: int, attempt: int | None, worker: str, reason: str) -> str | None:
    """A worker gives back a job whose attempt it knows to be dead (its job process died, or
    made no progress and was ended): at once, rather than after the reaper's stale window, and
    counted as a lost attempt. Only that very attempt: if the job has moved on (finished, taken
    back already, claimed again) nothing changes. Returns the job's new status, or None.

    `attempt` None: a job process that died while claiming, before it knew its attempt; the
    job is given back if its claim went through (it runs on `worker`, which runs one job at a
    time), and is left alone if not (still queued: its message goes back to the queue)."""
    this_attempt = () if attempt is None else (Job.attempts == attempt,)
    return _take_back(settings, job_id, reason, Job.worker == worker, *this_attempt)


def take_back_silent(settings: Settings, job_id: int, token: str | None, cutoff: datetime,
                     reason: str) -> str | None:
    """The reaper takes back a running job whose worker has been silent since before `cutoff`:
    only the attempt it read (`token`), and only if it is still silent. Returns the job's new
    status, or None if it moved on (another reaper, or the worker woke up)."""
    return _take_back(settings, job_id, reason, Job.lease_token == token, Job.heartbeat_at < cutoff)


def _take_back(settings: Settings, job_id: int, reason: str, *attempt: ColumnElement[bool]) -> str | None:
    """A lost attempt (the one `attempt` selects) ends: the job's next state is
    `after_lost_attempt`'s, then `after_taken_back` follows it."""
    at = now()
    this = (Job.id == job_id, Job.status == JobStatus.running.value, *attempt)
    with session_scope(settings) as s:
        row = s.execute(select(Job.kind, Job.lost, Job.cancel_requested, Job.heartbeat_at, Job.worker)
                        .where(*this)).first()
        if row is None:
            return None
        kind, lost, cancel, beat, worker = row
        values = after_lost_attempt(settings, lost=lost + 1, cancel_requested=cancel, worker=worker,
                                    last_seen=beat, reason=reason, at=at)
        status = JobStatus(values.pop("status"))
        if not _move(s, Event.take_back, status, *this, **values):
            return None
    log.warning("job %s: %s; %s", job_id, reason, status.value)
    after_taken_back(settings, job_id, kind, status.value)
    return status.value


def after_taken_back(settings: Settings, job_id: int, kind: str, status: str) -> None:
    """What follows a lost attempt's new state: a queued job's message goes out again (a broker
    that is away leaves it to the reaper's resend); an ended one settles its dependents."""
    if status == JobStatus.queued.value:
        send(settings, job_id, JobKind(kind), fail_job=False)
    else:
        _settle_quietly(settings, job_id)


def release(settings: Settings, worker: str) -> list[int]:
    """A worker stopping cleanly gives back the job it was running (its message goes back to
    the queue too): the job is `queued` again and the stop does not count as a lost attempt."""
    with session_scope(settings) as s:
        ids = list(s.scalars(select(Job.id).where(Job.status == JobStatus.running.value,
                                                  Job.worker == worker)))
        if ids:
            _move(s, Event.release, JobStatus.queued, Job.id.in_(ids), Job.worker == worker,
                  lease_token=None, worker=None, sent_at=now())  # its message goes back to the queue with it
        return ids


def add_imported(session: Session, *, dataset_id: int, params: dict[str, Any] | JobParams,
                 outputs: list[dict[str, Any]], at: datetime) -> Job:
    """Register, in the caller's transaction, a succeeded training job that never ran here: the
    job of a model imported from a bundle (`params.imported_from`). Returns the new row."""
    sources(Event.imported, JobStatus.succeeded)
    job = Job(kind=JobKind.train.value, status=JobStatus.succeeded.value, dataset_id=dataset_id,
              params=checked_params(JobKind.train, params), outputs=outputs, progress={}, result={}, created_at=at, finished_at=at)
    session.add(job)
    session.flush()
    return job


def imported_model(job: Job, model_id: int, epoch: int) -> None:
    """An imported job's result, once its model (registered after it) has an id."""
    job.result = {"final_model_id": model_id, "final_epoch": epoch, "imported": True}


def one_line(exc: BaseException) -> str:
    """A failure as one readable line for `rodin status`."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    known = ("MeshError", "ArtifactError", "CheckpointError", "ConfigError", "ValueError",
             "FloatingPointError", "RodinError", "UserInputError")
    return message if type(exc).__name__ in known else f"{type(exc).__name__}: {message}"
