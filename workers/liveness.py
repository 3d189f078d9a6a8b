"""Proof of progress from the job process, read by the worker's main process.

A worker is two processes (see workers/app.py): the main one keeps the heartbeat, the job runs
in a child it forks. The main process must not vouch for a job on its own, or a job process
that is frozen, deadlocked or stuck in I/O would stay `running` for ever. So the job process
writes here: that it has taken a task and is claiming its job (`arrive`; also while it waits
for devices), which attempt it runs once claimed (`begin`), a tick at every unit of work (a
training batch, a reconstructed input: `tick`) and the end (`end`). The main process reads the board to tell
three cases apart: the attempt is moving, it has stopped moving (`silent_for_s` past
RODIN_PROGRESS_TIMEOUT_S: end the process, give the job back), or its process has died.

The board is a few bytes of anonymous shared memory, mapped when this module is imported in
the main process, before the job process is forked, so both see the same bytes; a tick is a
memory write (no system call, no registry write), cheap enough for every batch.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from dataclasses import dataclass

# pid, job id, attempt, monotonic time of the last tick; job id 0 means "no attempt running",
# attempt 0 "claiming": the job process does not know its attempt yet.
_LAYOUT = struct.Struct("<qqqd")
_BOARD = mmap.mmap(-1, _LAYOUT.size)  # MAP_SHARED: inherited across fork


@dataclass(frozen=True)
class Attempt:
    """What the board says the job process is running."""

    pid: int
    job_id: int
    attempt: int
    ticked_at: float  # time.monotonic(), which is one clock for every process of the machine

    @property
    def claiming(self) -> bool:
        """Arrived, not yet holding a lease (`arrive`)."""
        return self.attempt == 0

    def same_attempt(self, other: Attempt) -> bool:
        return (self.pid, self.job_id, self.attempt) == (other.pid, other.job_id, other.attempt)

    def silent_for_s(self, now: float | None = None) -> float:
        return (time.monotonic() if now is None else now) - self.ticked_at


def arrive(job_id: int) -> None:
    """In the job process, as it takes the job's task: from here until `begin` it claims the
    job (or waits for devices, ticking), and a process stopped there is ended like any other."""
    _BOARD[:] = _LAYOUT.pack(os.getpid(), job_id, 0, time.monotonic())


def begin(job_id: int, attempt: int) -> None:
    """In the job process, once it holds the job's lease."""
    _BOARD[:] = _LAYOUT.pack(os.getpid(), job_id, attempt, time.monotonic())


def tick() -> None:
    """In the job process, after each unit of work, and while it waits out an outage of the
    registry or the store (orchestrator.waiting), which is bounded and not a hang. Only the
    job process itself can tick: the main process's own waits vouch for nobody."""
    pid, job_id, attempt, _ = _LAYOUT.unpack(_BOARD[:])
    if job_id and pid == os.getpid():
        _BOARD[:] = _LAYOUT.pack(pid, job_id, attempt, time.monotonic())


def end() -> None:
    """In the job process, when the attempt is over (finished, failed, or its lease lost); in
    the main process, once it has dealt with an attempt that cannot end by itself."""
    _BOARD[:] = _LAYOUT.pack(0, 0, 0, 0.0)


def current() -> Attempt | None:
    """The attempt the job process is running, or None."""
    pid, job_id, attempt, ticked_at = _LAYOUT.unpack(_BOARD[:])
    return Attempt(pid, job_id, attempt, ticked_at) if job_id else None


def process_alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie, dead but not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            # The state follows the command name, which is in parentheses and may hold spaces.
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True  # no /proc (not Linux): os.kill said it exists
