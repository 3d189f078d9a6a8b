"""Waiting out an outage is not hanging.

A registry write retried through a PostgreSQL restart (`registry.db.with_retries`) or a store
write retried while the store refuses it (`ArtifactStore.put_bytes`) waits on purpose, for a
bounded time. A worker's job process proves its progress to its worker (workers/liveness.py),
which ends one that shows none for RODIN_PROGRESS_TIMEOUT_S: it listens here, so that a job
riding out an outage is not ended as hung. The core knows nothing of workers: it only says
that it is waiting.
"""

from __future__ import annotations

from collections.abc import Callable

_listeners: list[Callable[[], None]] = []


def on_wait(listener: Callable[[], None]) -> None:
    """Call `listener` at every retry of a write that waits out an outage."""
    if listener not in _listeners:
        _listeners.append(listener)


def waiting() -> None:
    """A write is about to wait before trying again."""
    for listener in _listeners:
        listener()
