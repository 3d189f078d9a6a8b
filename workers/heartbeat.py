"""Worker liveness in the registry: a row per worker, refreshed every few seconds.

Every machine writes to the same registry, so `rodin workers` on any client lists the live
workers of all machines (name, queues, device, current job, last heartbeat), and a job whose
`heartbeat_at` stops moving while it is `running` is visibly stuck (`rodin status`).

The heartbeat thread lives in the worker's main process and also watches the job process
through `workers.liveness`: a job process that died is given back at once (not after the
reaper's stale window), and one that has made no progress for RODIN_PROGRESS_TIMEOUT_S is
ended and its job given back. So the job's heartbeat, which this thread writes, stands for
a job process that is alive and moving, not merely for a live main process: it is written only
for the attempt the board shows, and never waits on the job's row lock, which a job process
stopped mid-write may hold (the watch on this same thread is what ends such a process).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from datetime import datetime, timezone

from sqlalchemy import select

from orchestrator import jobs, recovery
from orchestrator.artifacts import open_store
from orchestrator.registry.db import lock_wait_limit, session_scope
from orchestrator.registry.models import Worker
from orchestrator.settings import Settings
from workers import liveness, runtime

log = logging.getLogger(__name__)
INTERVAL_S = 5.0
#: How often the heartbeat thread looks (in memory) whether the running job changed; a change
#: is written at once, so `rodin workers` shows a job starting or ending within this time.
WATCH_S = 0.25
#: How often this worker runs the reaper (orchestrator.recovery), which any live worker may run.
REAP_EVERY_S = 5.0
#: The longest this thread waits for a row lock: a job process stopped mid-transaction holds
#: its lock until this thread ends it, so waiting on it would silence the worker.
LOCK_WAIT_S = 2.0


class Heartbeat:
    def __init__(self, settings: Settings, name: str, queues: str, device: str):
        self.settings, self.name, self.queues, self.device = settings, name, queues, device
        # Well inside the time after which the reaper presumes a silent job's worker dead.
        self.interval = min(INTERVAL_S, settings.stale_after_s / 3)
        self.pid = os.getpid()  # the worker's main process: forked job processes inherit atexit
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rodin-heartbeat", daemon=True)
        self._next_reap = 0.0
        self.reaper = recovery.Reaper(settings)
        #: (job id, attempt) -> why this worker ended that attempt's process, until the job is
        #: given back (the registry may be away when the process is ended).
        self._ended: dict[tuple[int, int], str] = {}
        self._give_back_at = 0.0  # not before (monotonic): the registry was away
        #: pids of job processes that died or were ended: once gone, what they were writing
        #: to the artifact store is removed (`_remove_dead_writers`).
        self._dead_writers: set[int] = set()
        self._sweep_at = 0.0  # not before (monotonic): the store refused

    def start(self) -> None:
        with session_scope(self.settings) as s:
            worker = s.scalars(select(Worker).where(Worker.hostname == self.name)).first()
            if worker is None:
                worker = Worker(hostname=self.name)
                s.add(worker)
            now = datetime.now(timezone.utc)
            worker.pid, worker.queues, worker.device = os.getpid(), self.queues, self.device
            worker.started_at = worker.last_heartbeat = now
            worker.stopped_at = None
            worker.current_job_id = None
        # A job process of this machine killed with its worker (or a worker killed mid-write)
        # left its temporary file; the worker that starts next on this machine removes it.
        self._dead_writers.add(0)
        self._thread.start()

    def beat(self, job_id: int | None = None) -> None:
        now = datetime.now(timezone.utc)
        if job_id is None:
            job_id = runtime.active_job_id()
        with session_scope(self.settings) as s:
            worker = s.scalars(select(Worker).where(Worker.hostname == self.name)).first()
            if worker is not None:
                worker.last_heartbeat = now
                worker.current_job_id = job_id
            if job_id is not None and self._vouches_for(job_id):
                jobs.keep_alive(s, job_id, self.name, now)

    def _vouches_for(self, job_id: int) -> bool:
        """Whether the job's process holds its lease and has not been found dead or hung."""
        attempt = liveness.current()
        return (attempt is not None and attempt.job_id == job_id and not attempt.claiming
                and (attempt.job_id, attempt.attempt) not in self._ended)

    def poke(self) -> None:
        """Beat now (a job started or ended) instead of at the next interval."""
        self._wake.set()

    def _run(self) -> None:
        with lock_wait_limit(LOCK_WAIT_S):
            self._loop()

    def _loop(self) -> None:
        last_job: int | None = None
        next_beat = time.monotonic() + self.interval
        while True:
            poked = self._wake.wait(WATCH_S)
            self._wake.clear()
            if self._stop.is_set():
                return
            self._watch_job_process()
            self._remove_dead_writers()
            try:
                job_id = runtime.active_job_id()
            except RuntimeError:  # the set of running tasks changed while it was read
                continue
            if not poked and job_id == last_job and time.monotonic() < next_beat:
                continue
            try:
                self.beat(job_id)
                last_job, next_beat = job_id, time.monotonic() + INTERVAL_S
                self.reaper.in_contact()
            except Exception as exc:  # noqa: BLE001 - a missed beat must not kill the worker
                # The traceback once per outage; then one line a beat.
                log.warning("heartbeat failed (%s)", type(exc).__name__,
                            exc_info=self.reaper.in_contact_since is not None)
                self.reaper.lost_contact()
                last_job, next_beat = job_id, time.monotonic() + self.interval
            self._maybe_reap()

    def _watch_job_process(self) -> None:
        """Give back the job of a job process that died, or that stopped making progress
        (claiming its job included: a process stopped inside the claim holds the job's row)."""
        attempt = liveness.current()
        if attempt is None or attempt.pid == self.pid:  # nothing running, or no separate process
            return
        key = (attempt.job_id, attempt.attempt)
        if key not in self._ended:
            if not liveness.process_alive(attempt.pid):
                self._ended[key] = f"its job process (pid {attempt.pid}) died"
            elif attempt.silent_for_s() > self.settings.progress_timeout_s:
                self._ended[key] = (f"its job process made no progress for "
                                    f"{attempt.silent_for_s():.0f} s (RODIN_PROGRESS_TIMEOUT_S="
                                    f"{self.settings.progress_timeout_s:g}) and was ended")
                log.warning("job %s: no progress for %.0f s; ending its process %s",
                            attempt.job_id, attempt.silent_for_s(), attempt.pid)
                try:
                    os.kill(attempt.pid, signal.SIGKILL)  # a stopped process dies of it too
                except ProcessLookupError:
                    pass
            else:
                return
            self._dead_writers.add(attempt.pid)
        if time.monotonic() < self._give_back_at:
            return
        which = "its claim" if attempt.claiming else f"attempt {attempt.attempt}"
        try:
            jobs.take_back(self.settings, attempt.job_id, None if attempt.claiming else attempt.attempt,
                           self.name, f"{which} lost on {self.name}: {self._ended[key]}")
        except Exception as exc:  # noqa: BLE001 - the registry may be away: try again shortly
            log.warning("could not give back job %s yet (%s); trying again", attempt.job_id,
                        type(exc).__name__)
            self._give_back_at = time.monotonic() + 2.0
            return
        del self._ended[key]
        now_on_board = liveness.current()
        if now_on_board is not None and now_on_board.same_attempt(attempt):  # not a newer one
            liveness.end()
        self._wake.set()

    def _remove_dead_writers(self) -> None:
        """Once the job processes this worker saw die are gone, remove the temporary files
        they left half-written in the artifact store (pid 0: any dead writer of this machine,
        looked for once at start)."""
        if not self._dead_writers or time.monotonic() < self._sweep_at:
            return
        if any(p and liveness.process_alive(p) for p in self._dead_writers):
            return  # an ended process not reaped yet: its write may still be in the kernel
        try:
            removed = open_store(self.settings).remove_dead_writers(liveness.process_alive)
        except Exception as exc:  # noqa: BLE001 - the store may be away or read-only for now
            log.warning("could not remove dead writers' temporary files yet (%s)", exc)
            self._sweep_at = time.monotonic() + REAP_EVERY_S
            return
        self._dead_writers.clear()
        if removed:
            log.info("removed %d temporary file(s) that dead job processes left in the "
                     "artifact store", len(removed))

    def _maybe_reap(self) -> None:
        if time.monotonic() < self._next_reap:
            return
        self._next_reap = time.monotonic() + REAP_EVERY_S
        try:
            self.reaper.run()
        except Exception:  # noqa: BLE001 - the registry or broker may be away; try again later
            log.warning("reaper pass failed", exc_info=True)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval + 1)
        released = jobs.release(self.settings, self.name)
        if released:
            log.info("gave back job(s) %s to the queue", ", ".join(map(str, released)))
        with session_scope(self.settings) as s:
            worker = s.scalars(select(Worker).where(Worker.hostname == self.name)).first()
            if worker is not None:
                worker.stopped_at = datetime.now(timezone.utc)
                worker.current_job_id = None
