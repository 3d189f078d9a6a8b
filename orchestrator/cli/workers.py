"""`rodin worker`, `rodin up`, `rodin down`: run the workers that serve the queue."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import typer

from orchestrator.cli.context import registry, settings
from orchestrator.cli.output import emit_json, err
from orchestrator.errors import RodinError

JsonOpt = typer.Option(False, "--json", help="Print one JSON object on stdout.")


def _pidfile() -> Path:
    return settings().home / "worker.pid"


def _logfile() -> Path:
    return settings().home / "logs" / "worker.log"


def _background_pid() -> int | None:
    """The pid of the `rodin up` worker, if it is still alive."""
    try:
        pid = int(_pidfile().read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def _live_worker_names() -> list[str]:
    from orchestrator.registry.queries import live_workers

    with registry() as s:
        return [w.hostname for w in live_workers(s, settings().worker_timeout_s)]


def start_background(queues: str = "train,infer", device: str = "auto") -> int:
    log = _logfile()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "worker", "--queues", queues,
             "--device", device],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # survives the terminal that started it
        )
    _pidfile().write_text(str(proc.pid))
    return proc.pid


def ensure_local_worker(quiet: bool = False) -> None:
    """On the embedded default, make sure some worker will pick the job up."""
    if not settings().embedded or _background_pid() or _live_worker_names():
        return
    pid = start_background()
    if not quiet:
        err.print(f"No worker was running: started one in the background (pid {pid}, log "
                  f"{_logfile()}); stop it with `rodin down`.")


def register(app: typer.Typer) -> None:
    @app.command("worker")
    def worker(
        queues: str = typer.Option("train,infer", "--queues", "-Q", help="Queues to serve."),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda:N."),
        hostname: str = typer.Option(None, "--hostname", "-n", help="Worker name [default: HOST-PID]."),
        loglevel: str = typer.Option("INFO", "--loglevel", help="Celery log level."),
    ) -> None:
        """Run a worker in the foreground: one job at a time, picked from QUEUES."""
        known = {"train", "infer"}
        wanted = [q.strip() for q in queues.split(",") if q.strip()]
        if not wanted or set(wanted) - known:
            raise RodinError(f"--queues {queues!r}: choose from train,infer")
        if device != "auto" and device != "cpu" and not device.startswith("cuda"):
            raise RodinError(f"--device {device!r}: use auto, cpu or cuda:N")
        os.environ["RODIN_DEVICE"] = device
        if hostname:
            os.environ["RODIN_WORKER_NAME"] = hostname
        from workers.app import app as celery_app
        from workers.runtime import hostname as worker_name

        celery_app.worker_main([
            "worker", "--queues", ",".join(wanted), "--hostname", f"{worker_name()}@%h",
            "--pool", "solo", "--concurrency", "1", "--prefetch-multiplier", "1",
            "--loglevel", loglevel, "--without-gossip", "--without-mingle", "--without-heartbeat",
        ])

    @app.command("up")
    def up(device: str = typer.Option("auto", "--device", help="auto, cpu or cuda:N."),
           as_json: bool = JsonOpt) -> None:
        """Start a background worker for this machine (the embedded default needs no server)."""
        pid = _background_pid()
        started = pid is None
        if started:
            pid = start_background(device=device)
        if as_json:
            emit_json({"pid": pid, "started": started, "log": str(_logfile())})
        else:
            err.print(("Started" if started else "Already running:") +
                      f" background worker pid {pid}, log {_logfile()}.")

    @app.command("down")
    def down(timeout: float = typer.Option(30.0, help="Seconds to wait for a clean stop."),
             as_json: bool = JsonOpt) -> None:
        """Stop the background worker; a running job is interrupted and can be resubmitted."""
        pid = _background_pid()
        stopped = False
        if pid is not None:
            # SIGQUIT = Celery's cold shutdown: stop now rather than after an hours-long job.
            os.kill(pid, signal.SIGQUIT)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and _background_pid():
                time.sleep(0.2)
            if _background_pid():
                os.kill(pid, signal.SIGKILL)
            stopped = True
            _pidfile().unlink(missing_ok=True)
        if as_json:
            emit_json({"pid": pid, "stopped": stopped})
        else:
            err.print(f"Stopped background worker pid {pid}." if stopped else "No background worker.")
