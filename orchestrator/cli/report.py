"""`rodin report`: one self-contained HTML page telling a model's story."""


from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from orchestrator.cli.context import settings, store
from orchestrator.cli.output import Json, console, emit_json, err

if TYPE_CHECKING:
    from orchestrator.job_view import JobView

app = typer.Typer()


@app.command("report")
def report(
    model_ref: Annotated[str, typer.Argument(metavar="MODEL", help="Model id or alias.", show_default=False)],
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Folder to write model-ID.html into.")] = Path("reports"),
    no_reconstruct: Annotated[bool, typer.Option(
        "--no-reconstruct", help="Write the page without reconstructions when the model has none, "
                                 "instead of reconstructing its validation shapes first.")] = False,
    as_json: Json = False,
) -> None:
    """Write one HTML page about a model: its lineage, config, loss curves, metrics, its
    evaluation against retrieval (if evaluated) and reconstructions with patches coloured.

    The page is a single file that works offline (pictures embedded, no scripts or fonts to
    fetch). When the model has no reconstructions yet, a reconstruction job runs first on its
    validation shapes and the command waits for it; `--no-reconstruct` skips that.
    """
    from orchestrator import catalog
    from orchestrator import report as pages

    model_id = catalog.model_id(settings(), model_ref)  # an unknown one fails here, before anything runs
    missing = not pages.has_reconstructions(settings(), model_id)
    job = _reconstruct(model_id, quiet=as_json) if missing and not no_reconstruct else None
    story = pages.story_of(settings(), store(), model_id)
    if job is not None and job.status.value != "succeeded":  # the page is still worth writing: say why it has none
        story.notes.append(f"reconstruction job {job.id} {job.status.value}: {job.error or 'no error recorded'}")
    path = pages.write(story, out)
    if as_json:
        emit_json({"report": str(path), "model_id": model_id, "title": pages.title_of(story),
                   "reconstruct_job_id": job.id if job else None,
                   "reconstructions": len(story.reconstructions), "evaluations": len(story.evaluations),
                   "loss_curves": sum(p.png is not None for p in story.loss_curves), "notes": story.notes})
        return
    for note in story.notes:
        err.print(f"[yellow]warning:[/] {escape(note)}", highlight=False)
    console.print(str(path), markup=False, highlight=False, soft_wrap=True)  # whole, for copying


def _reconstruct(model_id: int, quiet: bool) -> "JobView":
    """Reconstruct the model's validation shapes (default refinement) and wait for the job, with
    a progress line; returns the job's final summary."""
    from orchestrator.cli.follow import queue_job, wait_with_progress
    from orchestrator.job_states import JobKind
    from orchestrator.jobs import DEFAULT_REFINE_STEPS, refine_steps

    job_id = queue_job(JobKind.reconstruct, quiet=quiet, input_model_id=model_id,
                       params={"inputs": [], "refine": refine_steps(DEFAULT_REFINE_STEPS)})
    if not quiet:
        err.print(f"Model {model_id} has no reconstructions yet: queued job [bold]{job_id}[/] on its "
                  "validation shapes (skip with --no-reconstruct).")
    return wait_with_progress(job_id, quiet=quiet)
