"""Worker processes on one machine: the background worker (`rodin up/down`, started on demand
on the embedded default) and a machine that offers its devices (`rodin worker --gpus`,
`--devices`): one worker process per device, sharing the devices through workers/devices.py.

Imports neither torch nor Celery: a client that submits a job calls `ensure_local_worker`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from orchestrator.settings import Settings
from workers.devices import Offer

Log = Callable[[str], None]


# ---------------------------------------------------------------------------------- background


@dataclass(frozen=True)
class Background:
    """The `rodin up` worker of this machine: its pid and where it logs."""

    pid: int
    log: Path


def pidfile(settings: Settings) -> Path:
    return settings.home / "worker.pid"


def logfile(settings: Settings) -> Path:
    return settings.home / "logs" / "worker.log"


def background_pid(settings: Settings) -> int | None:
    """The pid of the background worker, if it is still alive."""
    try:
        pid = int(pidfile(settings).read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def start_background(settings: Settings, queues: str = "train,infer", device: str = "auto") -> Background:
    log = logfile(settings)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "workers", "--queues", queues, "--device", device],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # survives the terminal that started it
        )
    pidfile(settings).write_text(str(proc.pid))
    return Background(proc.pid, log)


def ensure_local_worker(settings: Settings) -> Background | None:
    """On the embedded default, make sure some worker will pick a job up; returns the worker
    it started, or None when one was already there (or the broker is shared)."""
    from orchestrator.registry.db import session_scope
    from orchestrator.registry.queries import live_workers

    if not settings.embedded or background_pid(settings):
        return None
    with session_scope(settings) as s:
        if live_workers(s, settings.worker_timeout_s):
            return None
    return start_background(settings)


def stop_background(settings: Settings, timeout_s: float) -> int | None:
    """Stop the background worker; returns its pid, or None if there was none.

    SIGQUIT is Celery's cold shutdown: stop now rather than after an hours-long job. The running
    job gets RODIN_SOFT_SHUTDOWN_S, then its message goes back to the queue, which needs a clean
    exit: hence the wait before SIGKILL.
    """
    pid = background_pid(settings)
    if pid is None:
        return None
    os.kill(pid, signal.SIGQUIT)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and background_pid(settings):
        time.sleep(0.2)
    if background_pid(settings):
        os.kill(pid, signal.SIGKILL)
    pidfile(settings).unlink(missing_ok=True)
    return pid


# ------------------------------------------------------------------------------ per device


def child_command(queues: str, name: str, loglevel: str, device: str = "cuda:0") -> list[str]:
    return [sys.executable, "-m", "workers", "--queues", queues,
            "--device", device, "--hostname", name, "--loglevel", loglevel]


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def slot_env(offer: Offer, name: str) -> dict[str, str]:
    """The environment of one slot: its name, the machine's offer, and (GPUs) every offered GPU
    visible, each job process narrowing it to the GPUs it is handed."""
    env = {**os.environ, "RODIN_WORKER_NAME": name, **offer.env()}
    if offer.kind == "cuda":
        env["CUDA_VISIBLE_DEVICES"] = ",".join(offer.ids)
    return env


def run_slots(offer: Offer, queues: str, base: str, loglevel: str, *,
              log: Log = _to_stderr, command: Callable[[str, str, str], list[str]] | None = None,
              restart_delay_s: float = 5.0) -> int:
    """Supervise one worker process (a *slot*) per offered device until told to stop; returns an
    exit code.

    Slot i is named BASE-slot<i>; each is a Celery worker that runs one job at a time, so the
    machine runs up to N jobs at once, and each job process takes the devices its job needs from
    the machine's allocator (`workers.devices`), waiting in line while they are busy. A stop
    signal (SIGTERM, SIGINT, SIGQUIT) is passed on to every slot, which then stops as a worker
    does (a warm SIGTERM/SIGINT lets the running job end; SIGQUIT interrupts it and returns it
    to the queue). A slot that dies on its own is started again, unless it fails three times in
    a row within seconds of starting.
    """
    device = "cuda:0" if offer.kind == "cuda" else "cpu"
    if command is None:
        def command(q: str, n: str, level: str) -> list[str]:
            return child_command(q, n, level, device)
    slots = [str(i) for i in range(len(offer.ids))]
    children: dict[str, subprocess.Popen[bytes]] = {}
    started: dict[str, float] = {}
    quick_failures: dict[str, int] = {}
    stopping: list[int] = []
    offer.folder.mkdir(parents=True, exist_ok=True)
    log(f"Offering {offer.label()} to jobs of any width, through {len(slots)} worker process(es) "
        f"(queues {queues}; device locks in {offer.folder}).")

    def spawn(slot: str) -> subprocess.Popen[bytes]:
        name = f"{base}-slot{slot}"
        started[slot] = time.monotonic()
        return subprocess.Popen(
            command(queues, name, loglevel), env=slot_env(offer, name),
            start_new_session=True,  # signals reach children once, through this process
        )

    def forward(signum: int, _frame: object) -> None:
        stopping.append(signum)
        for proc in children.values():
            if proc.poll() is None:
                proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward)
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)}
    try:
        for slot in slots:
            children[slot] = spawn(slot)
        restart_at: dict[str, float] = {}
        while True:
            alive = [g for g, p in children.items() if p.poll() is None]
            if stopping and not alive:
                break
            for slot in slots:
                proc = children[slot]
                if stopping or proc.poll() is None:
                    continue
                if slot not in restart_at:
                    ran = time.monotonic() - started[slot]
                    quick_failures[slot] = quick_failures.get(slot, 0) + 1 if ran < 30 else 0
                    if quick_failures[slot] >= 3:
                        log(f"Worker {base}-slot{slot} failed {quick_failures[slot]} times in a row "
                            "within seconds of starting; stopping all workers.")
                        forward(signal.SIGTERM, None)
                        continue
                when = restart_at.setdefault(slot, time.monotonic() + restart_delay_s)
                if time.monotonic() >= when:
                    log(f"Worker {base}-slot{slot} exited with code {proc.returncode}; starting it again.")
                    restart_at.pop(slot)
                    children[slot] = spawn(slot)
            time.sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    # A child killed by a signal reports -N; the shell convention is 128+N.
    codes = [128 - p.returncode if (p.returncode or 0) < 0 else (p.returncode or 0)
             for p in children.values()]
    return max(codes, default=0)
