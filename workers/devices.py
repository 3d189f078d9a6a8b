"""A worker machine's devices, handed to its jobs: one lock file per device, a line of waiters.

`rodin worker --gpus 0,1,2,3` (or `--device cpu --devices N`, N CPU cores) offers the machine's
devices to jobs of any width: the supervisor starts one worker process per device (a *slot*,
each a Celery worker that runs one job at a time), and every slot's job process asks this
allocator for the devices its job needs (`config.devices` for a training job, 1 for any other)
before it claims the job. So the machine runs up to N jobs at once and never more ranks than it
has devices, without a scheduler beyond the queue and the job service: the jobs are ordinary
messages, and what happens on the machine is settled here.

The state lives in files under the machine's lock folder (`Offer.folder`: `RODIN_HOME/devices/
<host>`), and every lock is an `fcntl.flock`, which the kernel releases when the last process
holding it ends, so a crash (a killed job process, the OOM killer) frees what the dead process
held, with no clean-up step and no stale state:

- `<kind>-<id>.lock`, one per device: held (LOCK_EX) by the job that uses the device, for the
  job's life; its helper ranks inherit the descriptors (`Grant.fds`), so the device is free
  again only once rank 0 and every helper have ended;
- `allocator.lock`: held for the few milliseconds of one decision, so that decisions are made
  one at a time;
- `line/<seq>-<pid>`: a waiting job's ticket, held (LOCK_EX) by its waiter; a ticket whose lock
  can be taken belongs to a dead waiter and is removed.

The rules:

- all or nothing, in a fixed order: under `allocator.lock`, a job takes every device it asks
  for (trying the devices in the offer's order) or none; a waiting job holds no device, so no
  two jobs each hold part of what the other needs: no deadlock;
- first come, first served: only the job at the head of the line may take devices. While a
  wide job waits there, devices that become free stay free for it, and narrower jobs behind it
  wait too, so it cannot be starved by a stream of narrow jobs (its wait is bounded by the
  running jobs' ends). The price: a narrow job that would fit now waits behind a wide one (no
  backfilling: that would need each job's run time, which nothing knows);
- a job that asks for more devices than the machine offers is refused at once (`TooWide`).

Imports neither torch nor Celery.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

#: The devices a slot's machine offers, as the supervisor tells its slots: `cuda:0,1,2,3`, `cpu:0,1`.
OFFER_ENV = "RODIN_OFFER"
#: The machine's lock folder, as the supervisor tells its slots.
LOCKS_ENV = "RODIN_DEVICE_LOCKS"

KINDS = ("cuda", "cpu")


class TooWide(ValueError):
    """The job asks for more devices than this machine offers: it can never run here."""


@dataclass(frozen=True)
class Offer:
    """The devices of one machine that its slots share: their kind (`cuda` GPUs, or `cpu` cores),
    their ids (CUDA's ids as CUDA_VISIBLE_DEVICES names them; core numbers) and the lock folder."""

    kind: str
    ids: tuple[str, ...]
    folder: Path

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"device kind {self.kind!r}: use one of {', '.join(KINDS)}")
        if not self.ids or len(set(self.ids)) != len(self.ids) or any(not i or "," in i for i in self.ids):
            raise ValueError(f"device ids {self.ids!r}: give distinct ids")

    @classmethod
    def for_home(cls, home: Path, kind: str, ids: list[str] | tuple[str, ...]) -> Offer:
        """The offer of this machine under RODIN_HOME: the lock folder is per host, so that
        machines that share a home (a network file system) do not share their devices' locks."""
        return cls(kind, tuple(ids), home / "devices" / os.uname().nodename)

    def env(self) -> dict[str, str]:
        """What a slot is told (`from_env` reads it back)."""
        return {OFFER_ENV: f"{self.kind}:{','.join(self.ids)}", LOCKS_ENV: str(self.folder)}

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Offer | None:
        """The offer of the machine this slot belongs to; None for a worker that is not a slot."""
        env = os.environ if environ is None else environ
        spec, folder = env.get(OFFER_ENV, ""), env.get(LOCKS_ENV, "")
        if not spec or not folder:
            return None
        kind, _, ids = spec.partition(":")
        return cls(kind, tuple(ids.split(",")), Path(folder))

    def label(self, ids: tuple[str, ...] | None = None) -> str:
        """`cuda GPUs 0,1`, `cpu cores 2,3`: the offer, or some of its devices, as people read it."""
        ids = self.ids if ids is None else ids
        what = ("GPU" if self.kind == "cuda" else "core") + ("s" if len(ids) != 1 else "")
        return f"{self.kind} {what} {','.join(ids)}"[:64]


@dataclass
class Grant:
    """Devices held by one job: their ids, in the offer's order, and the open lock files that
    hold them (pass them to the job's helper ranks, so that the devices stay held until every
    rank has ended). `release` closes them; so does the end of every process that has them."""

    offer: Offer
    ids: tuple[str, ...]
    fds: tuple[int, ...] = field(repr=False)

    def label(self) -> str:
        return self.offer.label(self.ids)

    def release(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = ()


@dataclass(frozen=True)
class Line:
    """What a waiting job sees: free devices, and live waiters ahead of it in the line."""

    wanted: int
    free: int
    ahead: int

    def describe(self) -> str:
        ahead = f", {self.ahead} job(s) ahead in line" if self.ahead else " (first in line)"
        return f"waiting for {self.wanted} device(s): {self.free} free{ahead}"


def _try_lock(path: Path) -> int | None:
    """An open descriptor holding LOCK_EX on `path` (created if missing), or None if another
    open file holds it (another process, or another descriptor of this one)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return None
        raise
    return fd


class Allocator:
    """Hands the devices of one `Offer` to the jobs of its machine (see the module's rules)."""

    def __init__(self, offer: Offer):
        self.offer = offer
        self.line_folder = offer.folder / "line"
        self.line_folder.mkdir(parents=True, exist_ok=True)

    def _device_path(self, device_id: str) -> Path:
        return self.offer.folder / f"{self.offer.kind}-{device_id}.lock"

    @contextmanager
    def _deciding(self) -> Iterator[None]:
        """`allocator.lock`, held for one decision (blocking: decisions take milliseconds)."""
        fd = os.open(self.offer.folder / "allocator.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    # -------------------------------------------------------------------------------- devices

    def _take(self, count: int) -> tuple[tuple[str, ...], tuple[int, ...]] | None:
        """Under `_deciding`: `count` free devices, the first free ones in the offer's order,
        all locked, or None (and nothing held) when fewer are free."""
        ids: list[str] = []
        fds: list[int] = []
        for device_id in self.offer.ids:
            fd = _try_lock(self._device_path(device_id))
            if fd is None:
                continue
            ids.append(device_id)
            fds.append(fd)
            if len(ids) == count:
                return tuple(ids), tuple(fds)
        for fd in fds:
            os.close(fd)
        return None

    def free(self) -> list[str]:
        """The devices no job holds now (a look: nothing is taken)."""
        free = []
        for device_id in self.offer.ids:
            fd = _try_lock(self._device_path(device_id))
            if fd is not None:
                free.append(device_id)
                os.close(fd)
        return free

    # ----------------------------------------------------------------------------------- line

    def _live_tickets(self) -> list[str]:
        """Under `_deciding`: the tickets of live waiters, first come first; a dead waiter's
        ticket (its lock free to take) is removed."""
        live = []
        for name in sorted(os.listdir(self.line_folder)):
            path = self.line_folder / name
            try:
                fd = _try_lock(path)
            except FileNotFoundError:
                continue
            if fd is None:
                live.append(name)
                continue
            try:
                path.unlink(missing_ok=True)
            finally:
                os.close(fd)
        return live

    def _join_line(self) -> tuple[str, int]:
        """Under `_deciding`: a ticket behind every live one, held by this process."""
        live = self._live_tickets()
        seq = int(live[-1].split("-")[0]) + 1 if live else 0
        name = f"{seq:012d}-{os.getpid()}"
        fd = _try_lock(self.line_folder / name)
        if fd is None:  # pragma: no cover - a fresh name under the decision lock
            raise RuntimeError(f"device line ticket {name} is held by another process")
        return name, fd

    def _leave_line(self, name: str, fd: int) -> None:
        (self.line_folder / name).unlink(missing_ok=True)
        os.close(fd)

    # -------------------------------------------------------------------------------- acquire

    def try_acquire(self, count: int) -> Grant | None:
        """`count` devices now if they are free and nobody waits in line, else None."""
        self._check_width(count)
        with self._deciding():
            if self._live_tickets():
                return None
            taken = self._take(count)
        return Grant(self.offer, *taken) if taken else None

    def _check_width(self, count: int) -> None:
        if count < 1:
            raise ValueError(f"a job needs at least one device, not {count}")
        if count > len(self.offer.ids):
            raise TooWide(f"the job trains on {count} devices but this worker offers {len(self.offer.ids)} "
                          f"({self.offer.label()}): a job runs on one machine, so --devices is at most "
                          f"the devices its worker offers; resubmit with --devices {len(self.offer.ids)} "
                          f"or start a worker that offers {count}")

    def acquire(self, count: int, *, wanted: Callable[[], bool] = lambda: True,
                on_wait: Callable[[Line], None] | None = None, poll_s: float = 0.5,
                check_every_s: float = 2.0, timeout_s: float | None = None) -> Grant | None:
        """Wait in line for `count` devices and take them all at once; None if `wanted()`
        (asked every `check_every_s` while waiting) says the job no longer needs them, or
        `timeout_s` passed. `on_wait` hears of each change in what the waiter sees.
        Raises TooWide at once for more devices than the offer has."""
        self._check_width(count)
        ticket: tuple[str, int] | None = None
        seen: Line | None = None
        started = next_check = time.monotonic()
        try:
            while True:
                with self._deciding():
                    if ticket is None:
                        ticket = self._join_line()
                    line = self._live_tickets()
                    ahead = line.index(ticket[0]) if ticket[0] in line else 0
                    taken = self._take(count) if ahead == 0 else None
                    if taken is not None:
                        self._leave_line(*ticket)
                        ticket = None
                        return Grant(self.offer, *taken)
                    now = Line(count, len(self.free()), ahead)
                if now != seen and on_wait is not None:
                    on_wait(now)
                seen = now
                if time.monotonic() >= next_check:
                    if not wanted():
                        return None
                    next_check = time.monotonic() + check_every_s
                if timeout_s is not None and time.monotonic() - started > timeout_s:
                    return None
                time.sleep(poll_s)
        finally:
            if ticket is not None:
                with self._deciding():
                    self._leave_line(*ticket)
