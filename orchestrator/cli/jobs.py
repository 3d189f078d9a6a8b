"""`rodin status` and `rodin cancel`: what the queue is doing, and stopping a job."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from orchestrator import jobs
from orchestrator.cli.context import ID_MAX, ID_MIN, registry, settings
from orchestrator.cli.follow import Summary, report_end, wait_with_progress
from orchestrator.cli.output import Json, age, console, emit_json, err, styled_status
from orchestrator.registry.models import JobStatus

app = typer.Typer()


@app.command("status")
def status(
    job_id: Annotated[int | None, typer.Argument(help="Show one job in detail.", min=ID_MIN, max=ID_MAX,
                                                 show_default=False)] = None,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh live until Ctrl-C.")] = False,
    limit: Annotated[int, typer.Option("--limit", help="Newest jobs shown.")] = 30,
    as_json: Json = False,
) -> None:
    """Jobs (id, kind, dataset, status, progress, worker, age), or one job with its checkpoints."""
    if job_id is not None:
        summary = jobs.summary(settings(), job_id)
        if as_json:
            emit_json(summary)
        elif watch and not JobStatus(summary["status"]).finished:  # follow it to its end
            report_end(wait_with_progress(job_id))
        else:
            _job_detail(summary)
        return
    if as_json:
        emit_json({"jobs": _recent(limit)})
        return
    if not watch or not console.is_terminal:  # without a terminal, --watch prints one snapshot
        rows = _recent(limit)
        console.print(_jobs_table(rows) if rows else "No jobs yet: `rodin submit train --dataset NAME`.")
        return
    try:
        with Live(_jobs_table(_recent(limit)), console=console, refresh_per_second=2) as live:
            while True:
                time.sleep(1.0)
                live.update(_jobs_table(_recent(limit)))
    except KeyboardInterrupt:
        pass


@app.command("cancel")
def cancel(job_id: Annotated[int, typer.Argument(help="The job to stop.", min=ID_MIN, max=ID_MAX,
                                                 show_default=False)],
           as_json: Json = False) -> None:
    """Stop a job: a queued job never starts; a running one stops after its current epoch."""
    state, message = jobs.cancel(settings(), job_id)
    if as_json:
        emit_json({"job_id": job_id, "status": state, "message": message})
    else:
        err.print(escape(message[0].upper() + message[1:] + "."))


def _recent(limit: int) -> list[Summary]:
    from sqlalchemy import select
    from sqlalchemy.orm import selectinload

    from orchestrator.registry.models import Job
    from orchestrator.registry.queries import job_summary

    with registry() as s:
        # Checkpoints and datasets in one query each, not one per job: the registry may be a
        # network hop away.
        rows = s.scalars(select(Job).options(selectinload(Job.checkpoints), selectinload(Job.dataset))
                         .order_by(Job.id.desc()).limit(limit)).all()
        return [job_summary(s, j) for j in rows]


def stale_note(summary: dict[str, Any]) -> str:
    """For a running job whose worker has stopped beating (e.g. a machine that lost power)."""
    from orchestrator.registry.queries import is_stale

    beat = summary.get("heartbeat_at")
    if summary.get("status") != "running" or not beat or not is_stale(beat, settings().worker_timeout_s):
        return ""
    return f" [red](stale: no heartbeat for {age(str(beat))})[/]"


def _progress_text(p: dict[str, Any]) -> str:
    if "epochs" in p:
        return f"epoch {int(p['epoch'])}/{int(p['epochs'])}  loss {p['train_loss']:.4f}"
    if "total" in p:
        return f"{p['done']}/{p['total']} shapes"
    return "-"


def _jobs_table(rows: list[Summary]) -> Table:
    table = Table("id", "kind", "dataset / model", "status", "progress", "worker", "age")
    for r in rows:
        target = r["dataset"] or ""
        if r["input_model_id"]:
            target += f" model {r['input_model_id']}" if target else f"model {r['input_model_id']}"
        if r["status"] == "waiting":
            target += f" (after job {r['depends_on_job_id']})"
        table.add_row(str(r["id"]), escape(r["kind"]), escape(target), styled_status(r["status"]) + stale_note(r),
                      _progress_text(r["progress"] or {}), escape(r["worker"] or "-"), age(r["created_at"]))
    return table


def _job_detail(summary: Summary) -> None:
    for key in ("id", "kind", "status", "dataset", "input_model_id", "worker", "device",
                "attempts", "created_at", "started_at", "finished_at", "error"):
        value = summary[key]
        if value is not None:
            shown = styled_status(value) + stale_note(summary) if key == "status" else escape(str(value))
            console.print(f"[bold]{key:15}[/] {shown}", highlight=False)
    if summary["progress"]:
        console.print(f"[bold]{'progress':15}[/] {escape(str(summary['progress']))}", highlight=False)
    if summary["model_ids"]:
        console.print(f"[bold]{'checkpoints':15}[/] {', '.join(map(str, summary['model_ids']))}"
                      + (f" (final {summary['final_model_id']})" if summary["final_model_id"] else ""))
    for out in summary["outputs"]:
        console.print(f"  output {escape(out['name'])}: {escape(out['uri'])}", highlight=False)
