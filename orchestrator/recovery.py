"""The reaper: the registry takes back what dead workers and lost messages left behind.

Every live worker runs `reap` every few seconds (from its heartbeat thread); several may run it
at once, because each change is a conditional update that only one of them can make:

- a `running` job whose heartbeat is older than RODIN_STALE_AFTER_S has lost its worker (killed,
  powered off, cut off from the registry). It goes back to `queued` with its message sent again,
  or fails once its attempts have been lost RODIN_MAX_ATTEMPTS times, or is `cancelled` if that
  was asked. Its old attempt, should it still be alive somewhere, holds a lease that is no longer
  current and stops at its next registry write (orchestrator.jobs.LeaseLost).
- a job `waiting` for a job that has ended is moved on (`jobs.settle_dependents`), should the
  worker that ended it have died before doing so;
- a `queued` job whose message has sat unclaimed for RODIN_RESEND_AFTER_S while a worker of its
  queue is idle has lost its message (a broker restarted without its data, a deleted file): it
  is sent again. A repeated message is harmless: `jobs.claim` runs a job once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError

from orchestrator import jobs
from orchestrator.job_view import is_stale
from orchestrator.kinds import spec
from orchestrator.registry.db import as_utc, session_scope
from orchestrator.registry.models import Job, JobKind, JobStatus, Worker
from orchestrator.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Reaped:
    """What one pass of the reaper did, by job id."""

    requeued: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)
    resent: list[int] = field(default_factory=list)
    released: list[int] = field(default_factory=list)  # dependents sent once their job ended


def reap(settings: Settings, now: datetime | None = None, *, judge_silence: bool = True) -> Reaped:
    """One pass: take back stale running jobs, then resend queued jobs whose message is lost.

    `judge_silence=False` skips the first: a reaper that could not reach the registry a moment
    ago cannot tell a dead worker from one that was cut off as it was (see `Reaper`).
    """
    now = now or datetime.now(timezone.utc)
    done = Reaped()
    if judge_silence:
        _take_back_stale(settings, now, done)
    _resend_lost(settings, now, done)
    _settle_waiting(settings, done)
    for what, ids in (("requeued", done.requeued), ("failed", done.failed),
                      ("cancelled", done.cancelled), ("resent", done.resent),
                      ("released", done.released)):
        if ids:
            log.warning("reaper %s job(s) %s", what, ", ".join(map(str, ids)))
    return done


class Reaper:
    """One worker's reaper, which judges silence only while silence means something.

    When the registry itself is away (a PostgreSQL restart, a network cut), no worker can write
    its heartbeat, and once it is back every running job looks silent. So a reaper that has
    lost contact with the registry (a failed heartbeat or pass) takes nobody back until it has
    reached the registry again for one whole stale window (RODIN_STALE_AFTER_S): time enough
    for every live worker, which beats several times a window, to have written again. A worker
    just started waits the same window: it cannot know what the registry went through before.
    """

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic):
        self.settings, self._clock = settings, clock
        self._reachable_since: float | None = None

    def lost_contact(self) -> None:
        """The registry could not be reached (by the heartbeat, or by a pass)."""
        self._reachable_since = None

    def in_contact(self) -> None:
        """The registry answered."""
        if self._reachable_since is None:
            self._reachable_since = self._clock()

    @property
    def in_contact_since(self) -> float | None:
        """When (monotonic) the registry last came within reach; None while out of contact."""
        return self._reachable_since

    @property
    def judges_silence(self) -> bool:
        since = self._reachable_since
        return since is not None and self._clock() - since >= self.settings.stale_after_s

    def run(self, now: datetime | None = None) -> Reaped:
        """One pass; an error (the registry or the broker away) is raised after being noted."""
        judge = self.judges_silence
        try:
            done = reap(self.settings, now, judge_silence=judge)
        except DBAPIError:
            self.lost_contact()
            raise
        self.in_contact()
        return done


def _take_back_stale(settings: Settings, now: datetime, done: Reaped) -> None:
    cutoff = now - timedelta(seconds=settings.stale_after_s)
    with session_scope(settings) as s:
        stale = s.execute(select(Job.id, Job.lease_token, Job.worker, Job.heartbeat_at)
                          .where(Job.status == JobStatus.running.value, Job.heartbeat_at < cutoff)).all()
    buckets = {JobStatus.cancelled.value: done.cancelled, JobStatus.failed.value: done.failed,
               JobStatus.queued.value: done.requeued}
    for job_id, token, worker, beat in stale:
        seen = as_utc(beat)
        silent = (now - seen).total_seconds() if seen is not None else settings.stale_after_s
        status = jobs.take_back_silent(
            settings, job_id, token, cutoff,
            reason=f"taken back: its worker {worker or '?'} was silent for {silent:.0f} s "
                   f"(RODIN_STALE_AFTER_S={settings.stale_after_s:g})")
        if status is not None:
            buckets[status].append(job_id)


def _settle_waiting(settings: Settings, done: Reaped) -> None:
    """Jobs still waiting for a job that has ended (their settling was interrupted)."""
    with session_scope(settings) as s:
        parents = s.scalars(select(Job.depends_on_job_id).distinct().where(
            Job.status == JobStatus.waiting.value, Job.depends_on_job_id.is_not(None))).all()
        ended = [p for p in parents if p is not None and (parent := s.get(Job, p)) is not None
                 and JobStatus(parent.status).finished]
    for parent_id in ended:
        done.released += jobs.settle_dependents(settings, parent_id)


def _resend_lost(settings: Settings, now: datetime, done: Reaped) -> None:
    cutoff = now - timedelta(seconds=settings.resend_after_s)
    with session_scope(settings) as s:
        # A job's message is only presumed lost once it has been queued for the resend delay:
        # one just created (not sent yet) or just sent is on its way.
        waiting = s.execute(select(Job.id, Job.kind, Job.sent_at).where(
            Job.status == JobStatus.queued.value, Job.cancel_requested.is_(False),
            func.coalesce(Job.sent_at, Job.created_at) < cutoff)).all()
        if not waiting:
            return
        idle = _idle_queues(s.scalars(select(Worker).where(Worker.stopped_at.is_(None))).all(), settings, now)
    for job_id, kind, sent_at in waiting:
        if spec(kind).queue not in idle:
            continue  # every worker of its queue is busy: the message is waiting its turn
        if jobs.resend(settings, job_id, JobKind(kind), sent_at, now):
            done.resent.append(job_id)


#: worker name -> when this process's reaper first saw it idle (and live) without a break.
_idle_since: dict[str, datetime] = {}
#: A worker counts as idle once seen idle this long: one between two jobs, or just started,
#: has not missed a waiting message.
IDLE_FOR_S = 10.0


def _idle_queues(workers: Sequence[Worker], settings: Settings, now: datetime) -> set[str]:
    """Queues served by a live worker that has run nothing for a while."""
    queues: set[str] = set()
    seen = set()
    for w in workers:
        if w.current_job_id is not None or is_stale(w.last_heartbeat, settings.worker_timeout_s, now):
            continue
        seen.add(w.hostname)
        since = _idle_since.setdefault(w.hostname, now)
        if (now - since).total_seconds() >= min(IDLE_FOR_S, settings.resend_after_s):
            queues |= {q.strip() for q in w.queues.split(",") if q.strip()}
    for name in set(_idle_since) - seen:
        del _idle_since[name]
    return queues
