"""`rodin status` and `rodin cancel`: what the queue is doing, and stopping a job.

`rodin status` shows the newest jobs, one job in detail, or a sweep ranked (`--sweep ID`);
with `--watch` on a terminal the table is redrawn in place (rich `Live`) with a progress bar,
epoch, loss and ETA per job. Without a terminal, `--watch` prints one snapshot: a script's log
gets one table, not a stream of them.
"""


from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.console import Console, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from orchestrator import jobs
from orchestrator.cli.context import ID_MAX, ID_MIN, settings
from orchestrator.cli.follow import report_end, wait_with_progress
from orchestrator.cli.output import Json, age, console, emit_json, err, styled_status
from orchestrator.errors import UserInputError
from orchestrator.job_states import JobStatus

if TYPE_CHECKING:
    from orchestrator.job_view import JobView, SweepView

app = typer.Typer()


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
        emit_json({"jobs": [_job_json(job) for job in jobs.recent(settings(), limit)]})
    else:
        show((_jobs_view(rows), False) for rows in jobs.watch(settings(), limit=limit, poll_s=1.0))


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


def show(views: Iterator[tuple[RenderableType, bool]], *, watch: bool = True, on: Console = console) -> None:
    """Print the first view; with `watch` on a terminal, redraw each next one in place (they
    come from `jobs.watch`, which paces them) until one has stopped changing, or Ctrl-C."""
    shown, finished = next(views)
    if not watch or finished or not on.is_terminal:
        on.print(shown)
        return
    try:
        with Live(shown, console=on, refresh_per_second=4) as live:
            for shown, finished in views:
                live.update(shown)
                if finished:
                    break
    except KeyboardInterrupt:
        pass


def _job_json(job: "JobView") -> dict[str, Any]:
    return {**job.as_json(), "eta_s": job.eta_s()}


def _job_status(job_id: int, *, watch: bool, as_json: bool) -> None:
    job = jobs.get(settings(), job_id)
    if as_json:
        emit_json(_job_json(job))
    elif not watch or job.finished:
        _job_detail(job)
    elif not console.is_terminal:  # a script: wait for the end, as `status ID --watch` always has
        report_end(wait_with_progress(job_id))
    else:
        last: list[JobView] = []

        def views() -> Iterator[tuple[RenderableType, bool]]:
            for current in jobs.watch(settings(), job_id=job_id, poll_s=1.0):
                last[:] = [current]
                yield jobs_table([current]), current.finished

        show(views())
        if last and last[0].finished:
            report_end(last[0])


def _sweep_status(sweep_id: int, *, watch: bool, as_json: bool) -> None:
    views = jobs.watch(settings(), sweep_id=sweep_id, poll_s=1.0)
    if as_json:
        emit_json(sweep_json(next(views)))
        return
    show(((sweep_table(current), current.finished) for current in views), watch=watch)


def _jobs_view(rows: list["JobView"]) -> RenderableType:
    return jobs_table(rows) if rows else "No jobs yet: `rodin submit train --dataset NAME`."


def stale_note(job: "JobView", short: bool = False) -> str:
    """For a running job whose worker has stopped beating (e.g. a machine that lost power): the
    reaper's and `rodin cancel`'s rule, RODIN_STALE_AFTER_S (a worker row's own is
    RODIN_WORKER_TIMEOUT_S)."""
    if not job.stale(settings().stale_after_s):
        return ""
    silent = age(job.heartbeat_at)
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


def jobs_table(rows: list["JobView"], width: int | None = None) -> Table:
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
        target = r.dataset or ""
        if r.input_model_id:
            target += f" model {r.input_model_id}" if target else f"model {r.input_model_id}"
        if r.status is JobStatus.waiting:
            target += f" (after job {r.depends_on_job_id})"
        if r.kind == "member":  # one more machine's ranks: say whose
            target += f" (job {(r.params or {}).get('train_job')}, machine {(r.params or {}).get('node')})"
        done, total, steps = _steps(r.progress)
        progress_cell = Text("-", style="dim") if total is None else bar(done, total, width=6) + f" {steps}"
        table.add_row(str(r.id), escape(r.kind), escape(target),
                      styled_status(r.status.value) + stale_note(r, short=not with_age),
                      progress_cell, _loss(r.progress), duration(r.eta_s()), escape(r.worker or "-"),
                      *([age(r.created_at)] if with_age else []))
    return table


# ----------------------------------------------------------------------------------- sweeps


def sweep_json(sweep: "SweepView") -> dict[str, Any]:
    """`rodin status --sweep ID --json`: the sweep, its columns and its jobs ranked."""
    from orchestrator.sweeps import rank

    whole = sweep.as_json()
    return {key: whole[key] for key in ("sweep_id", "dataset", "grid", "fixed", "created_at")} | {
        "columns": list(sweep.grid), "job_ids": [job.id for job in sweep.jobs],
        "jobs": [row.as_json() for row in rank(sweep)]}


def sweep_table(sweep: "SweepView") -> Table:
    """A sweep's jobs ranked by validation Chamfer, with the settings that vary as columns.

    Narrow on purpose (three swept settings fit 80 columns): the settings are never cut, and the
    ETA column appears only while a job is unfinished."""
    from atlas_core.config import setting_flags
    from orchestrator.sweeps import rank

    flags = setting_flags()
    rows = rank(sweep)
    pending = not sweep.finished
    # One space of padding beside the box's own column divider: two between columns, not three.
    table = Table(title=f"sweep {sweep.id} on {escape(sweep.dataset or '?')}",
                  box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("job", justify="right", no_wrap=True)
    for name in sweep.grid:
        header = flags.get(name, name).removeprefix("--")
        widest = max([len(header), *(len(str(row.settings.get(name))) for row in rows)])
        table.add_column(escape(header), justify="right", no_wrap=True, min_width=widest)
    table.add_column("status")
    table.add_column("val chamfer", justify="right", no_wrap=True)
    table.add_column("epoch", justify="right", no_wrap=True)
    if pending:
        table.add_column("ETA", justify="right", no_wrap=True)
    table.add_column("model", justify="right", no_wrap=True)
    for row in rows:
        job, score = row.job, row.val_chamfer
        status = styled_status(job.status.value)
        if job.error:
            status += f" [dim]{escape(job.error[:40])}[/]"
        done, total = job.progress.get("epoch"), job.progress.get("epochs")
        table.add_row(
            str(row.rank or "-"), str(job.id),
            *(escape(str(value)) for value in row.settings.values()),
            status, f"{score:.5f}" if score is not None else "-",
            f"{int(done)}/{int(total)}" if done is not None and total else "-",
            *([duration(row.eta_s)] if pending else []), str(job.final_model_id or "-"))
    return table


def _job_detail(job: "JobView") -> None:
    shown_fields = job.as_json()
    for key in ("id", "kind", "status", "dataset", "input_model_id", "sweep_id", "worker", "device",
                "attempts", "created_at", "started_at", "finished_at", "error"):
        value = shown_fields[key]
        if value is not None:
            shown = styled_status(value) + stale_note(job) if key == "status" else escape(str(value))
            console.print(f"[bold]{key:15}[/] {shown}", highlight=False, soft_wrap=True)
    if job.progress:
        console.print(f"[bold]{'progress':15}[/] {escape(str(job.progress))}", highlight=False)
    if job.model_ids:
        console.print(f"[bold]{'checkpoints':15}[/] {', '.join(map(str, job.model_ids))}"
                      + (f" (final {job.final_model_id})" if job.final_model_id else ""))
    for out in job.outputs:
        console.print(f"  output {escape(out['name'])}: {escape(out['uri'])}", highlight=False, soft_wrap=True)
