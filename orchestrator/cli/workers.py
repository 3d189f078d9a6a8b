"""`rodin worker`, `rodin workers`, `rodin up`, `rodin down`: the processes that serve the queue.

Starting and supervising workers lives in `workers/` (main.py, supervisor.py); the commands
here hold the options and make one call there, imported only when the command runs.
"""


from typing import Annotated

import typer
from rich.markup import escape

from orchestrator.cli.context import settings
from orchestrator.cli.output import TEXT, WORD, Json, age, console, emit_json, err, listing

app = typer.Typer()

Device = Annotated[str, typer.Option("--device", help="auto, cpu or cuda:N.")]


@app.command("worker")
def worker(
    queues: Annotated[str | None, typer.Option(
        "--queues", "-Q", show_default=False,
        help="Queues to serve, from train,infer (default: both; on a shared broker, a machine "
             "without a GPU serves infer alone).")] = None,
    device: Device = "auto",
    gpus: Annotated[str | None, typer.Option(
        "--gpus", show_default=False,
        help="Offer these GPUs, e.g. 0,1 or all, to jobs of any width: up to one job per "
             "GPU at once, a --devices K job on K free GPUs (it waits until K are free).")] = None,
    devices: Annotated[int | None, typer.Option(
        "--devices", show_default=False,
        help="Offer N CPU cores as N devices (gloo): up to N jobs at once, a job on as many "
             "cores as its --devices, one thread each.")] = None,
    hostname: Annotated[str | None, typer.Option(
        "--hostname", "-n", show_default=False,
        help="Worker name (default: HOST-PID; with --gpus or --devices, HOST-slotN).")] = None,
    loglevel: Annotated[str, typer.Option("--loglevel", help="Celery log level.")] = "INFO",
) -> None:
    """Run a worker in the foreground: one job at a time, picked from QUEUES; with --gpus or
    --devices, one worker process per device, sharing the devices among jobs of any width."""
    from workers.main import run

    code = run(settings(), queues=queues, device=device, gpus=gpus, devices=devices, hostname=hostname,
               loglevel=loglevel, log=lambda line: err.print(line, highlight=False, markup=False))
    raise typer.Exit(code)


@app.command("workers")
def list_workers(
    all_: Annotated[bool, typer.Option("--all", "-a", help="Also workers that stopped or stopped answering.")] = False,
    as_json: Json = False,
) -> None:
    """Workers of every machine, from their heartbeats in the registry: name, queues, device,
    current job, last heartbeat."""
    from orchestrator.catalog import workers

    rows = workers(settings(), include_gone=all_)
    if as_json:
        emit_json({"workers": rows})
        return
    if not rows:
        hint = "" if all_ else " `rodin workers --all` lists stopped ones too."
        err.print("No live workers: start one with `rodin worker` or `rodin up`." + hint)
        return
    table = listing(("worker", TEXT), ("state", WORD), ("queues", TEXT), ("device", TEXT), ("job", TEXT),
                    ("heartbeat", WORD), ("up since", WORD))
    for r in rows:
        job = f"{r['current_job_id']} ({r['current_job_kind']})" if r["current_job_id"] else "-"
        state = {"live": "[green]live[/]", "stale": "[red]stale[/]"}.get(r["state"], r["state"])
        table.add_row(escape(r["hostname"]), state, escape(r["queues"]), escape(r["device"]), job,
                      f"{age(r['last_heartbeat'])} ago", age(r["started_at"]))
    console.print(table)


@app.command("up")
def up(device: Device = "auto", as_json: Json = False) -> None:
    """Start a background worker for this machine (the embedded default needs no server)."""
    from workers.supervisor import background_pid, logfile, start_background

    pid = background_pid(settings())
    started = pid is None
    if pid is None:
        pid = start_background(settings(), device=device).pid
    if as_json:
        emit_json({"pid": pid, "started": started, "log": str(logfile(settings()))})
    else:
        err.print(("Started" if started else "Already running:") +
                  f" background worker pid {pid}, log {escape(str(logfile(settings())))}.")


@app.command("down")
def down(
    timeout: Annotated[float | None, typer.Option(
        help="Seconds to wait for a clean stop (default: RODIN_SOFT_SHUTDOWN_S + 15, at least 30).",
        show_default=False)] = None,
    as_json: Json = False,
) -> None:
    """Stop the background worker; a running job goes back to the queue and resumes later."""
    from workers.supervisor import stop_background

    if timeout is None:
        timeout = max(30.0, settings().soft_shutdown_s + 15.0)
    pid = stop_background(settings(), timeout)
    if as_json:
        emit_json({"pid": pid, "stopped": pid is not None})
    else:
        err.print(f"Stopped background worker pid {pid}." if pid is not None else "No background worker.")
