"""Submit a job and follow it: the one flow behind `submit train`, `reconstruct` and `evaluate`.

queue (starting a local worker on the embedded default) -> print the id -> with `--wait`, a
progress bar until the job ends -> download its outputs -> report -> exit code (1 unless the
job succeeded).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from orchestrator import jobs
from orchestrator.cli.context import download_outputs, settings
from orchestrator.cli.output import console, emit_json, err, styled_status
from orchestrator.job_states import JobKind, JobStatus

if TYPE_CHECKING:
    from orchestrator.job_view import JobView


def queue_job(kind: JobKind, *, quiet: bool, params: dict[str, Any], dataset_id: int | None = None,
              input_model_id: int | None = None, depends_on: int | None = None) -> int:
    """Register and send a job whose inputs have been checked (or, with `depends_on`, register
    it to be sent when that job succeeds); returns its id."""
    from workers.supervisor import ensure_local_worker

    started = ensure_local_worker(settings())
    if started is not None and not quiet:
        err.print(f"No worker was running: started one in the background (pid {started.pid}, "
                  f"log {escape(str(started.log))}); stop it with `rodin down`.")
    return jobs.submit(settings(), kind, params=params, dataset_id=dataset_id,
                       input_model_id=input_model_id, depends_on=depends_on)


def follow(job_id: int, *, wait: bool, as_json: bool, queued: dict[str, Any] | None = None,
           download_to: Path | None = None, extra: Callable[[JobView], dict[str, Any]] | None = None,
           show: Callable[[JobView], None] | None = None) -> None:
    """Print the queued job's id, or with `wait` follow it to the end and report.

    queued: extra JSON keys when not waiting. download_to: where a succeeded job's outputs go
    (their local paths are printed and given as JSON `outputs`). extra: JSON keys taken from
    the final view. show: how a succeeded job is reported to people (default: one line).
    """
    if not wait:
        if as_json:
            emit_json({"job_id": job_id, **(queued or {})})
        else:
            console.print(job_id)
        return
    job = wait_with_progress(job_id, quiet=as_json)
    succeeded = job.status is JobStatus.succeeded
    paths = download_outputs(job.outputs, download_to) if succeeded and download_to else []
    if as_json:
        out: dict[str, Any] = {"job_id": job_id, "status": job.status.value, "error": job.error}
        if download_to is not None:
            out["outputs"] = paths
        emit_json({**out, **(extra(job) if extra else {})})
    else:
        (show if succeeded and show else report_end)(job)
        for path in paths:
            console.print(f"  {path}", highlight=False, markup=False)
    if not succeeded:
        raise typer.Exit(1)


def wait_with_progress(job_id: int, quiet: bool = False) -> JobView:
    """Follow a job in the registry with a progress bar (none if quiet) until it ends."""
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=err,
                        disable=quiet)
    task = progress.add_task(f"job {job_id}", total=None, info="queued")
    try:
        with progress:
            for job in jobs.watch(settings(), job_id=job_id):
                _update_bar(progress, task, job)
            return job
    except KeyboardInterrupt:
        err.print(f"Stopped following; job {job_id} goes on (`rodin status {job_id}`, "
                  f"`rodin cancel {job_id}`).")
        raise typer.Exit(130) from None


def _update_bar(progress: Progress, task: TaskID, job: JobView) -> None:
    p, status = job.progress, job.status
    if status is JobStatus.queued:
        progress.update(task, info="queued: waiting for a worker")
    elif status is JobStatus.waiting:
        progress.update(task, info=f"waiting for job {job.depends_on_job_id}")
    elif "epochs" in p:
        info = f"loss {p['train_loss']:.5f}  val {p['val_chamfer']:.5f}  ({job.worker})"
        progress.update(task, total=p["epochs"], completed=p["epoch"], info=info,
                        description=f"job {job.id} epoch")
    elif "total" in p:
        progress.update(task, total=p["total"], completed=p["done"], info="shapes",
                        description=f"job {job.id}")
    else:
        progress.update(task, info=f"{status.value} on {job.worker or '?'}")


def report_end(job: JobView) -> None:
    """One line: how the job ended, its final model, or its error."""
    line = f"Job {job.id} {styled_status(job.status.value)}"
    if job.final_model_id:
        line += f": model [bold]{job.final_model_id}[/] (`rodin models show {job.final_model_id}`)"
    if job.error:
        line += f": {escape(job.error)}"
    err.print(line)
