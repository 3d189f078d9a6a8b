"""`rodin status` and `rodin cancel`: what the queue is doing, and stopping a job.

`rodin status` shows the newest jobs, one job in detail, or a sweep ranked (`--sweep ID`);
with `--watch` on a terminal the table is redrawn in place (rich `Live`) with a progress bar,
epoch, loss and ETA per job. Without a terminal, `--watch` prints one snapshot: a script's log
gets one table, not a stream of them.
"""


import time
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from orchestrator import jobs
from orchestrator.cli.context import ID_MAX, ID_MIN, registry, settings
from orchestrator.cli.follow import Summary, report_end, wait_with_progress
from orchestrator.cli.output import Json, age, console, emit_json, err, styled_status
from orchestrator.errors import UserInputError
from orchestrator.registry.models import JobStatus

app = typer.Typer()

#: A view to keep on screen: (what to draw, whether it has stopped changing).
View = Callable[[], tuple[RenderableType, bool]]


@app.command("status")
def status(
    job_id: Annotated[int | None, typer.Argument(help="Show one job in detail.", min=ID_MIN, max=ID_MAX,
                                                 show_default=False)] = None,
    sweep: Annotated[int | None, typer.Option(
        "--sweep", metavar="ID", min=ID_MIN, max=ID_MAX, show_default=False,
        help="Rank a sweep's jobs by validation Chamfer, best first, with the settings "
             "that differ as columns.")] = None,
    watch: Annotated[bool, typer.Option(
        "--watch", "-w", help="Redraw in place with progress bars and ETAs until Ctrl-C "
                              "(a job or sweep: until it ends). No terminal: one snapshot.")] = False,
    limit: Annotated[int, typer.Option("--limit", help="Newest jobs shown.")] = 30,
    as_json: Json = False,
) -> None:
    """Jobs (id, kind, dataset, status, progress, ETA, worker, age), one job with its
    checkpoints, or a sweep's jobs ranked."""
    if job_id is not None and sweep is not None:
        raise UserInputError("give a job id or --sweep ID, not both")
    if sweep is not None:
        _sweep_status(sweep, watch=watch, as_json=as_json)
    elif job_id is not None:
        _job_status(job_id, watch=watch, as_json=as_json)
    elif as_json:
        emit_json({"jobs": [{**r, "eta_s": jobs.eta_s(r)} for r in _recent(limit)]})
    else:
        show(lambda: (_jobs_view(_recent(limit)), False), watch=watch)


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


# ------------------------------------------------------------------------------------ views


def show(view: View, *, watch: bool, on: Console = console, poll_s: float = 1.0) -> None:
    """Print the view once; with `watch` on a terminal, redraw it in place every `poll_s`
    until it has stopped changing or Ctrl-C."""
    shown, finished = view()
    if not watch or finished or not on.is_terminal:
        on.print(shown)
        return
    try:
        with Live(shown, console=on, refresh_per_second=4) as live:
            while not finished:
                time.sleep(poll_s)
                shown, finished = view()
                live.update(shown)
    except KeyboardInterrupt:
        pass


def _job_status(job_id: int, *, watch: bool, as_json: bool) -> None:
    summary = jobs.summary(settings(), job_id)
    if as_json:
        emit_json({**summary, "eta_s": jobs.eta_s(summary)})
    elif not watch or JobStatus(summary["status"]).finished:
        _job_detail(summary)
    elif not console.is_terminal:  # a script: wait for the end, as `status ID --watch` always has
        report_end(wait_with_progress(job_id))
    else:
        def view() -> tuple[RenderableType, bool]:
            current = jobs.summary(settings(), job_id)
            return jobs_table([current]), JobStatus(current["status"]).finished

        show(view, watch=True)
        current = jobs.summary(settings(), job_id)
        if JobStatus(current["status"]).finished:
            report_end(current)


def _sweep_status(sweep_id: int, *, watch: bool, as_json: bool) -> None:
    summary = jobs.sweep_summary(settings(), sweep_id)
    if as_json:
        emit_json(sweep_json(summary))
        return

    def view() -> tuple[RenderableType, bool]:
        current = jobs.sweep_summary(settings(), sweep_id)
        return sweep_table(current), sweep_finished(current)

    show(view, watch=watch)


def _jobs_view(rows: list[Summary]) -> RenderableType:
    return jobs_table(rows) if rows else "No jobs yet: `rodin submit train --dataset NAME`."


def _recent(limit: int) -> list[Summary]:
    from sqlalchemy import select
    from sqlalchemy.orm import selectinload

    from orchestrator.registry.models import Job, ModelCheckpoint
    from orchestrator.registry.queries import job_summary

    with registry() as s:
        # Checkpoints and datasets in one query each, not one per job: the registry may be a
        # network hop away. Of a checkpoint only what the table needs: a final one's metrics
        # hold its out-of-distribution statistics (hundreds of numbers).
        checkpoints = selectinload(Job.checkpoints).load_only(ModelCheckpoint.id, ModelCheckpoint.final)
        rows = s.scalars(select(Job).options(checkpoints, selectinload(Job.dataset))
                         .order_by(Job.id.desc()).limit(limit)).all()
        return [job_summary(s, j) for j in rows]


def stale_note(summary: dict[str, Any], short: bool = False) -> str:
    """For a running job whose worker has stopped beating (e.g. a machine that lost power): the
    reaper's and `rodin cancel`'s rule, RODIN_STALE_AFTER_S (a worker row's own is
    RODIN_WORKER_TIMEOUT_S)."""
    from orchestrator.registry.queries import is_stale

    beat = summary.get("heartbeat_at")
    if summary.get("status") != "running" or not beat or not is_stale(beat, settings().stale_after_s):
        return ""
    silent = age(str(beat))
    return f" [red]stale {silent}[/]" if short else f" [red](stale: no heartbeat for {silent})[/]"


# ---------------------------------------------------------------------------------- columns


def bar(done: float | None, total: float | None, width: int = 10) -> Text:
    """A progress bar as text: heavy for what is done, light for the rest (readable without
    colour too, unlike rich's ProgressBar, whose two parts differ only by colour)."""
    if not total or done is None:
        return Text("-", style="dim")
    full = max(0, min(width, round(width * done / total)))
    return Text.assemble(("━" * full, "green" if done >= total else "magenta"),
                         ("─" * (width - full), "grey37"))


def duration(seconds: float | None) -> str:
    """'42s', '3m05s', '1h02m'; '-' for none."""
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _steps(progress: dict[str, Any]) -> tuple[float | None, float | None, str]:
    """(done, total, as text) of a job's progress: epochs of a training, else shapes (the kind
    column says which)."""
    if "epochs" in progress:
        return progress.get("epoch"), progress["epochs"], f"{int(progress['epoch'])}/{int(progress['epochs'])}"
    if "total" in progress:
        return progress.get("done"), progress["total"], f"{progress['done']}/{progress['total']}"
    return None, None, "-"


def _loss(progress: dict[str, Any]) -> str:
    value = progress.get("train_loss")
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


def jobs_table(rows: list[Summary], width: int | None = None) -> Table:
    """The jobs as `rodin status` draws them: a bar with the epoch, loss and ETA for each.

    Fits `width` (the console's): ids, kinds, bars and numbers are never cut; the dataset, the
    status's stale note and the worker wrap onto a second line when they must, and below 100
    columns the age is left out (`rodin status ID` and `--json` have it)."""
    width = width or console.width
    # One space of padding beside the box's own column divider: two between columns, not three.
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False)
    whole = dict(no_wrap=True)
    columns: list[tuple[str, dict[str, Any]]] = [
        ("id", dict(justify="right", **whole)), ("kind", whole), ("dataset / model", dict(overflow="fold")),
        ("status", dict(min_width=9)), ("progress", whole), ("loss", dict(justify="right", **whole)),
        ("ETA", dict(justify="right", **whole)), ("worker", dict(min_width=6, overflow="fold"))]
    with_age = width >= 100
    if with_age:
        columns.append(("age", whole))
    for name, options in columns:
        table.add_column(name, **options)
    for r in rows:
        target = r["dataset"] or ""
        if r["input_model_id"]:
            target += f" model {r['input_model_id']}" if target else f"model {r['input_model_id']}"
        if r["status"] == "waiting":
            target += f" (after job {r['depends_on_job_id']})"
        progress = r["progress"] or {}
        done, total, steps = _steps(progress)
        progress_cell = Text("-", style="dim") if total is None else bar(done, total, width=6) + f" {steps}"
        table.add_row(str(r["id"]), escape(r["kind"]), escape(target), styled_status(r["status"]) + stale_note(r, short=not with_age),
                      progress_cell, _loss(progress), duration(jobs.eta_s(r)), escape(r["worker"] or "-"),
                      *([age(r["created_at"])] if with_age else []))
    return table


# ----------------------------------------------------------------------------------- sweeps


def sweep_finished(summary: dict[str, Any]) -> bool:
    return all(JobStatus(job["status"]).finished for job in summary["jobs"])


def sweep_json(summary: dict[str, Any]) -> dict[str, Any]:
    """`rodin status --sweep ID --json`: the sweep, its columns and its jobs ranked."""
    from orchestrator.sweeps import rank

    return {key: summary[key] for key in ("sweep_id", "dataset", "grid", "fixed", "created_at")} | {
        "columns": list(summary["grid"]),
        "job_ids": [job["id"] for job in summary["jobs"]],
        "jobs": rank(summary, jobs.eta_s),
    }


def sweep_table(summary: dict[str, Any]) -> Table:
    """A sweep's jobs ranked by validation Chamfer, with the settings that vary as columns.

    Narrow on purpose (three swept settings fit 80 columns): the settings are never cut, and the
    ETA column appears only while a job is unfinished."""
    from atlas_core.config import setting_flags
    from orchestrator.sweeps import rank

    flags = setting_flags()
    rows = rank(summary, jobs.eta_s)
    pending = not sweep_finished(summary)
    # One space of padding beside the box's own column divider: two between columns, not three.
    table = Table(title=f"sweep {summary['sweep_id']} on {escape(summary['dataset'] or '?')}",
                  box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("job", justify="right", no_wrap=True)
    for name in summary["grid"]:
        header = flags.get(name, name).removeprefix("--")
        widest = max([len(header), *(len(str(row["settings"].get(name))) for row in rows)])
        table.add_column(escape(header), justify="right", no_wrap=True, min_width=widest)
    table.add_column("status")
    table.add_column("val chamfer", justify="right", no_wrap=True)
    table.add_column("epoch", justify="right", no_wrap=True)
    if pending:
        table.add_column("ETA", justify="right", no_wrap=True)
    table.add_column("model", justify="right", no_wrap=True)
    for row in rows:
        score = row["val_chamfer"]
        status = styled_status(row["status"])
        if row["error"]:
            status += f" [dim]{escape(row['error'][:40])}[/]"
        done, total = row["epoch"], row["epochs"]
        table.add_row(
            str(row["rank"] or "-"), str(row["job_id"]),
            *(escape(str(value)) for value in row["settings"].values()),
            status, f"{score:.5f}" if score is not None else "-",
            f"{int(done)}/{int(total)}" if done is not None and total else "-",
            *([duration(row["eta_s"])] if pending else []), str(row["final_model_id"] or "-"))
    return table


def _job_detail(summary: Summary) -> None:
    for key in ("id", "kind", "status", "dataset", "input_model_id", "sweep_id", "worker", "device",
                "attempts", "created_at", "started_at", "finished_at", "error"):
        value = summary[key]
        if value is not None:
            shown = styled_status(value) + stale_note(summary) if key == "status" else escape(str(value))
            console.print(f"[bold]{key:15}[/] {shown}", highlight=False, soft_wrap=True)
    if summary["progress"]:
        console.print(f"[bold]{'progress':15}[/] {escape(str(summary['progress']))}", highlight=False)
    if summary["model_ids"]:
        console.print(f"[bold]{'checkpoints':15}[/] {', '.join(map(str, summary['model_ids']))}"
                      + (f" (final {summary['final_model_id']})" if summary["final_model_id"] else ""))
    for out in summary["outputs"]:
        console.print(f"  output {escape(out['name'])}: {escape(out['uri'])}", highlight=False, soft_wrap=True)
