"""`rodin worker`, `rodin up`, `rodin down`: run the workers that serve the queue."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import typer
from rich.table import Table

from orchestrator.cli.context import registry, settings
from orchestrator.cli.output import age, console, emit_json, err
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


def _parse_queues(queues: str) -> list[str]:
    from orchestrator.queue import QUEUES

    wanted = [q.strip() for q in queues.split(",") if q.strip()]
    if not wanted or set(wanted) - set(QUEUES):
        raise RodinError(f"--queues {queues!r}: choose from {','.join(QUEUES)}")
    return wanted


def _default_queues(device: str) -> str:
    """Both queues, except a CPU machine on a shared broker, which leaves training to GPUs."""
    if settings().embedded or device.startswith("cuda"):
        return "train,infer"
    if device == "auto":
        import torch

        if torch.cuda.is_available():
            return "train,infer"
    err.print("No GPU on this machine: serving the infer queue on the CPU "
              "(`--queues train,infer` trains here too).")
    return "infer"


def _gpu_ids(spec: str) -> list[str]:
    """`0,1` -> ["0", "1"]; `all` -> every GPU this process may see."""
    spec = spec.strip()
    if spec == "all":
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
        if visible:
            ids = [v.strip() for v in visible.split(",") if v.strip()]
        else:
            import torch

            ids = [str(i) for i in range(torch.cuda.device_count())]
        if not ids:
            raise RodinError("--gpus all: no GPU is visible on this machine; run "
                             "`rodin worker --device cpu --queues infer` instead")
        return ids
    ids = [v.strip() for v in spec.split(",")]
    if not ids or any(not v or " " in v for v in ids) or len(set(ids)) != len(ids):
        raise RodinError(f"--gpus {spec!r}: give GPU indices such as 0,1 (or all)")
    return ids


def run_per_gpu(gpu_ids: list[str], queues: str, base: str, loglevel: str,
                restart_delay_s: float = 5.0) -> int:
    """Supervise one `rodin worker` process per GPU until told to stop.

    Each child sees only its GPU (CUDA_VISIBLE_DEVICES) as cuda:0 and is named BASE-gpuN. A
    stop signal (SIGTERM, SIGINT, SIGQUIT) is passed on to every child, which then stops as a
    worker does (a warm SIGTERM/SIGINT lets the running job end; SIGQUIT interrupts it and
    returns it to the queue). A child that dies on its own is started again.
    """
    children: dict[str, subprocess.Popen[bytes]] = {}
    started: dict[str, float] = {}
    quick_failures: dict[str, int] = {}
    stopping: list[int] = []

    def spawn(index: int, gpu: str) -> subprocess.Popen[bytes]:
        name = f"{base}-gpu{gpu if gpu.isdigit() else index}"
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu, "RODIN_WORKER_NAME": name}
        err.print(f"Starting worker {name} on GPU {gpu} (queues {queues}).")
        started[gpu] = time.monotonic()
        return subprocess.Popen(
            _child_command(queues, name, loglevel), env=env,
            start_new_session=True,  # signals reach children once, through this process
        )

    def forward(signum, _frame) -> None:  # type: ignore[no-untyped-def]
        stopping.append(signum)
        for proc in children.values():
            if proc.poll() is None:
                proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward)
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)}
    try:
        for i, gpu in enumerate(gpu_ids):
            children[gpu] = spawn(i, gpu)
        restart_at: dict[str, float] = {}
        while True:
            alive = [g for g, p in children.items() if p.poll() is None]
            if stopping and not alive:
                break
            for i, gpu in enumerate(gpu_ids):
                proc = children[gpu]
                if stopping or proc.poll() is None:
                    continue
                if gpu not in restart_at:
                    ran = time.monotonic() - started[gpu]
                    quick_failures[gpu] = quick_failures.get(gpu, 0) + 1 if ran < 30 else 0
                    if quick_failures[gpu] >= 3:
                        err.print(f"Worker on GPU {gpu} failed {quick_failures[gpu]} times in a "
                                  "row within seconds of starting; stopping all workers.")
                        forward(signal.SIGTERM, None)
                        continue
                when = restart_at.setdefault(gpu, time.monotonic() + restart_delay_s)
                if time.monotonic() >= when:
                    err.print(f"Worker on GPU {gpu} exited with code {proc.returncode}; "
                              "starting it again.")
                    restart_at.pop(gpu)
                    children[gpu] = spawn(i, gpu)
            time.sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    # A child killed by a signal reports -N; the shell convention is 128+N.
    codes = [128 - p.returncode if (p.returncode or 0) < 0 else (p.returncode or 0)
             for p in children.values()]
    return max(codes, default=0)


def stale_note(summary: dict[str, object]) -> str:
    """For `rodin status`: a running job whose worker has stopped beating, e.g. a machine that
    lost power. Its message comes back to the queue after the visibility timeout (see README)."""
    if summary.get("status") != "running":
        return ""
    beat = summary.get("heartbeat_at")
    if not beat:
        return ""
    from datetime import datetime, timezone

    silent = (datetime.now(timezone.utc) - datetime.fromisoformat(str(beat))).total_seconds()
    if silent <= settings().worker_timeout_s:
        return ""
    return f" [red](stale: no heartbeat for {age(str(beat))})[/]"


def _child_command(queues: str, name: str, loglevel: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator.cli", "worker", "--queues", queues,
            "--device", "cuda:0", "--hostname", name, "--loglevel", loglevel]


def worker_rows(include_gone: bool = False) -> list[dict[str, object]]:
    """The workers table as `rodin workers` shows it; live ones first, newest heartbeat first."""
    from datetime import datetime, timezone

    from sqlalchemy import select

    from orchestrator.registry.db import as_utc
    from orchestrator.registry.models import Job, Worker

    timeout = settings().worker_timeout_s
    now = datetime.now(timezone.utc)
    rows = []
    with registry() as s:
        for w in s.scalars(select(Worker)).all():
            beat = as_utc(w.last_heartbeat)
            silent = (now - beat).total_seconds() if beat else float("inf")
            state = "stopped" if w.stopped_at else ("live" if silent <= timeout else "stale")
            if state != "live" and not include_gone:
                continue
            job = s.get(Job, w.current_job_id) if w.current_job_id else None
            rows.append({
                "hostname": w.hostname,
                "state": state,
                "pid": w.pid,
                "queues": w.queues,
                "device": w.device,
                # For a silent worker: the job it was running when it went quiet.
                "current_job_id": w.current_job_id,
                "current_job_kind": job.kind if job is not None else None,
                "last_heartbeat": beat.isoformat() if beat else None,
                "heartbeat_age_s": round(silent, 1),
                "started_at": as_utc(w.started_at).isoformat() if w.started_at else None,
                "stopped_at": as_utc(w.stopped_at).isoformat() if w.stopped_at else None,
            })
    order = {"live": 0, "stale": 1, "stopped": 2}
    rows.sort(key=lambda r: (order[str(r["state"])], r["heartbeat_age_s"], str(r["hostname"])))
    return rows


def register(app: typer.Typer) -> None:
    @app.command("worker")
    def worker(
        queues: str = typer.Option(
            None, "--queues", "-Q",
            help="Queues to serve, from train,infer (default: both; on a shared broker, a "
                 "machine without a GPU serves infer alone)."),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda:N."),
        gpus: str = typer.Option(
            None, "--gpus",
            help="One worker process per GPU, e.g. 0,1 or all: each sees only its GPU "
                 "(CUDA_VISIBLE_DEVICES) and runs one job at a time."),
        hostname: str = typer.Option(
            None, "--hostname", "-n",
            help="Worker name (default: HOST-PID; with --gpus, HOST-gpuN)."),
        loglevel: str = typer.Option("INFO", "--loglevel", help="Celery log level."),
    ) -> None:
        """Run a worker in the foreground: one job at a time, picked from QUEUES."""
        # GPU checks through NVML: the worker forks its job process after them (workers/app.py).
        os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
        if device != "auto" and device != "cpu" and not device.startswith("cuda"):
            raise RodinError(f"--device {device!r}: use auto, cpu or cuda:N")
        if gpus is not None:
            if device not in ("auto",) and not device.startswith("cuda"):
                raise RodinError("--gpus runs one process per GPU; leave out --device")
            wanted = _parse_queues(queues or "train,infer")
            ids = _gpu_ids(gpus)
            base = hostname or os.environ.get("RODIN_WORKER_NAME") or os.uname().nodename
            raise typer.Exit(run_per_gpu(ids, ",".join(wanted), base, loglevel))
        wanted = _parse_queues(queues or _default_queues(device))
        os.environ["RODIN_DEVICE"] = device
        if hostname:
            os.environ["RODIN_WORKER_NAME"] = hostname
        from workers.runtime import resolve_device

        try:
            resolve_device(device)  # a missing GPU stops the worker here, not in its first job
        except RuntimeError as exc:
            raise RodinError(f"{exc}; use --device cpu") from None
        from workers.app import app as celery_app
        from workers.runtime import hostname as worker_name

        argv = [
            "worker", "--queues", ",".join(wanted), "--hostname", f"{worker_name()}@%h",
            # One job at a time, in a child process: see workers/app.py.
            "--pool", "prefork", "--concurrency", "1", "--prefetch-multiplier", "1",
            "--loglevel", loglevel, "--without-gossip", "--without-mingle",
        ]
        if settings().embedded:
            argv.append("--without-heartbeat")  # nobody listens for events on one machine
        celery_app.worker_main(argv)

    @app.command("workers")
    def list_workers(
        all_: bool = typer.Option(False, "--all", "-a",
                                  help="Also workers that stopped or stopped answering."),
        as_json: bool = JsonOpt,
    ) -> None:
        """Workers of every machine, from their heartbeats in the registry: name, queues, device,
        current job, last heartbeat."""
        rows = worker_rows(include_gone=all_)
        if as_json:
            emit_json({"workers": rows})
            return
        if not rows:
            hint = "" if all_ else " `rodin workers --all` lists stopped ones too."
            err.print("No live workers: start one with `rodin worker` or `rodin up`." + hint)
            return
        table = Table("worker", "state", "queues", "device", "job", "heartbeat", "up since")
        for r in rows:
            job = f"{r['current_job_id']} ({r['current_job_kind']})" if r["current_job_id"] else "-"
            state = {"live": "[green]live[/]", "stale": "[red]stale[/]"}.get(r["state"], r["state"])
            table.add_row(r["hostname"], state, r["queues"], r["device"], job,
                          f"{age(r['last_heartbeat'])} ago", age(r["started_at"]))
        console.print(table)

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
    def down(timeout: float = typer.Option(
                 None, help="Seconds to wait for a clean stop (default: RODIN_SOFT_SHUTDOWN_S "
                            "+ 15, at least 30)."),
             as_json: bool = JsonOpt) -> None:
        """Stop the background worker; a running job goes back to the queue and resumes later."""
        pid = _background_pid()
        stopped = False
        if timeout is None:
            timeout = max(30.0, settings().soft_shutdown_s + 15.0)
        if pid is not None:
            # SIGQUIT = Celery's cold shutdown: stop now rather than after an hours-long job. The
            # running job gets RODIN_SOFT_SHUTDOWN_S, then its message is put back on the queue
            # (which needs a clean exit: hence the wait before SIGKILL).
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
