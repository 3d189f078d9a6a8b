"""`rodin models compare`: models side by side (the comparison itself: `orchestrator.compare`).

The configuration fields that differ and the metrics as a table, then the grid of their
reconstructions of the same inputs.
"""


from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from orchestrator.cli.context import settings, store
from orchestrator.cli.follow import queue_job, wait_with_progress
from orchestrator.cli.infer import Refine, upload_inputs
from orchestrator.cli.output import Json, console, emit_json, err
from orchestrator.job_states import JobKind
from orchestrator.jobs import DEFAULT_REFINE_STEPS, refine_steps

if TYPE_CHECKING:
    from orchestrator.compare import Compared, Grid

app = typer.Typer()


@app.command("compare")
def compare(
    model_refs: Annotated[list[str], typer.Argument(
        metavar="ID|ALIAS", help="Two or more model ids or aliases; the first one's validation "
        "shapes are the grid's default inputs.", show_default=False)],
    inputs: Annotated[list[Path] | None, typer.Option(
        "--input", "-i", metavar="FILE", help="A mesh or point cloud every model reconstructs "
        "(repeat for several; default: the first model's validation shapes).", show_default=False)] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", metavar="DIR", help="Where the grid PNG goes, with each model's full-size "
        "pictures in DIR/model-ID/ (default: ./comparisons/models-ID-ID...).", show_default=False)] = None,
    refine: Refine = DEFAULT_REFINE_STEPS,
    no_grid: Annotated[bool, typer.Option(
        "--no-grid", help="Only the table: reconstruct nothing.")] = False,
    as_json: Json = False,
) -> None:
    """Compare models: the configuration fields that differ, the metrics (validation Chamfer;
    F-score, coverage and margin over retrieval when evaluated), and a PNG grid of the same
    inputs reconstructed by each model (columns = models, rows = inputs)."""
    from orchestrator import compare as service

    models = service.load(settings(), model_refs)
    differing = service.differing_fields([m.config for m in models])
    if not as_json:
        console.print(comparison_table(models, differing))
    grid = None if no_grid else _reconstruct_grid(models, inputs or [], refine, out, quiet=as_json)
    if as_json:
        emit_json({"models": [service.as_json(m, differing) for m in models], "differing_fields": differing,
                   "grid": asdict(grid) if grid else None})
    elif grid is not None:
        err.print(f"Wrote the grid ({len(grid.rows)} inputs x {len(grid.columns)} models):")
        console.print(f"  {grid.path}", highlight=False, markup=False, soft_wrap=True)


# ------------------------------------------------------------------------------- the table

#: The metric rows: key in Compared.metrics, label, format.
METRIC_ROWS = [
    ("val_chamfer", "val Chamfer (training)", ".5f"),
    ("val_coverage", "coverage (training)", ".3f"),
    ("chamfer", "Chamfer x1e3 (evaluation)", ".3f"),
    ("retrieval_chamfer", "retrieval Chamfer x1e3", ".3f"),
    ("margin_over_retrieval", "margin over retrieval (+: better)", "+.3f"),
    ("fscore", "F-score (evaluation)", ".3f"),
    ("coverage", "coverage (evaluation)", ".3f"),
]


def comparison_table(models: list["Compared"], differing: list[str]) -> Table:
    """One column per model: what it is, the config fields that differ, its metrics."""
    table = Table("", *(escape(m.label) for m in models), title="model comparison", title_justify="left")
    table.add_row("dataset", *(escape(m.dataset) for m in models))
    table.add_row("job / epoch", *(f"{m.job_id} / {m.epoch}" for m in models))
    table.add_section()
    if not differing:
        table.add_row("[dim]config[/]", *("[dim]same[/]" for _ in models))
    for name in differing:
        table.add_row(escape(name), *(escape(_text(m.config.get(name, "-"))) for m in models))
    table.add_section()
    for key, label, spec in METRIC_ROWS:
        table.add_row(label, *(_number(m.metrics[key], spec) for m in models))
    table.add_row("beats retrieval on", *(
        f"{m.metrics['shapes_beating_retrieval']} of {m.metrics['evaluated_shapes']} shapes"
        if m.metrics["evaluated_shapes"] is not None else "-" for m in models))
    table.add_row("evaluated", *(
        escape(f"job {m.metrics['evaluation_job_id']} on {m.metrics['evaluated_on']}")
        if m.metrics["evaluation_job_id"] else f"no: `rodin evaluate --model {m.id}`" for m in models))
    return table


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "none"
    return str(value)


def _number(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


# -------------------------------------------------------------------------------- the grid


def _reconstruct_grid(models: list["Compared"], files: list[Path], refine: int, out: Path | None,
                      quiet: bool) -> "Grid":
    """Queue one reconstruction per model on the same inputs and follow each with a progress
    bar; the grid is `orchestrator.compare.reconstruct_grid`'s."""
    from orchestrator.compare import reconstruct_grid

    uploaded = upload_inputs(files)  # every file is checked before any job exists
    folder = out or Path("comparisons") / ("models-" + "-".join(str(m.id) for m in models))
    queued: list[int] = []

    def submit(model_id: int, params: dict[str, Any]) -> int:
        queued.append(queue_job(JobKind.reconstruct, quiet=quiet, input_model_id=model_id, params=params))
        if not quiet and len(queued) == len(models):
            what = f"{len(uploaded)} file(s)" if uploaded else f"the validation shapes of model {models[0].id}"
            err.print(f"Queued reconstruction jobs {', '.join(map(str, queued))} (one per model) on {what}.")
        return queued[-1]

    return reconstruct_grid(settings(), store(), models, uploaded, refine_steps(refine), folder,
                            submit=submit, wait=lambda job_id: wait_with_progress(job_id, quiet=quiet))
