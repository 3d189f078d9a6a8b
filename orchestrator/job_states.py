"""A job's kinds and states, and the one table of the moves between states.

The job service (`orchestrator.jobs`) makes every move as a conditional update whose guard is
this table: a move names its event, and the row changes only if its status is one the event
may leave and the new status one it may reach. So a move the table does not draw cannot happen,
whoever calls it (a worker, the reaper, a client, an import), and two callers racing on one job
cannot both win.

    (none) --submit--> queued | waiting          --import--> succeeded (a bundle's model)
    waiting --settle--> queued (its dependency succeeded) | failed | cancelled
    queued --send (the broker refused)--> failed
    queued | running --claim--> running (a new attempt) | failed | cancelled (lost too often, asked)
    running --finish--> succeeded | failed | cancelled
    running --release (its worker stopping)--> queued
    running --take_back (its process died or hung; its worker silent: the reaper)-->
        queued | failed (RODIN_MAX_ATTEMPTS lost) | cancelled (asked)
    queued | waiting | running --cancel--> cancelled (running: only once its worker is silent)

No SQLAlchemy here: the CLI reads these names without loading the registry.
"""

from __future__ import annotations

import enum


class JobKind(str, enum.Enum):
    train = "train"
    reconstruct = "reconstruct"
    evaluate = "evaluate"
    ingest = "ingest"  # one part of a collection read by a worker
    assemble = "assemble"  # a dataset version registered from its parts
    member = "member"  # one more machine's ranks of a multi-node training job's attempt


class JobStatus(str, enum.Enum):
    #: Registered, but not sent: it waits for the job it depends on (`depends_on_job_id`).
    waiting = "waiting"
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in ENDED


ENDED = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled})


class Event(str, enum.Enum):
    """What moves a job: each member is one function of the job service."""

    submit = "submit"
    imported = "import"
    settle = "settle"
    send = "send"
    claim = "claim"
    finish = "finish"
    release = "release"
    take_back = "take_back"
    cancel = "cancel"


_S = JobStatus

#: event -> (the statuses it may leave, the statuses it may reach). `submit` and `import`
#: create the row, so they leave none.
TRANSITIONS: dict[Event, tuple[frozenset[JobStatus], frozenset[JobStatus]]] = {
    Event.submit: (frozenset(), frozenset({_S.queued, _S.waiting})),
    Event.imported: (frozenset(), frozenset({_S.succeeded})),
    Event.settle: (frozenset({_S.waiting}), frozenset({_S.queued, _S.failed, _S.cancelled})),
    Event.send: (frozenset({_S.queued}), frozenset({_S.failed})),
    Event.claim: (frozenset({_S.queued, _S.running}), frozenset({_S.running, _S.failed, _S.cancelled})),
    Event.finish: (frozenset({_S.running}), ENDED),
    Event.release: (frozenset({_S.running}), frozenset({_S.queued})),
    Event.take_back: (frozenset({_S.running}), frozenset({_S.queued, _S.failed, _S.cancelled})),
    Event.cancel: (frozenset({_S.queued, _S.waiting, _S.running}), frozenset({_S.cancelled})),
}


class IllegalMove(ValueError):
    """A move that the table does not draw: a bug in the caller, never a user's error."""


def sources(event: Event, to: JobStatus | str) -> list[str]:
    """The statuses a job may be in for `event` to move it to `to` (their values, for a guard);
    IllegalMove if the table has no such move."""
    leave, reach = TRANSITIONS[event]
    if JobStatus(to) not in reach:
        raise IllegalMove(f"a job cannot become {JobStatus(to).value} by {event.value}")
    return sorted(s.value for s in leave)
