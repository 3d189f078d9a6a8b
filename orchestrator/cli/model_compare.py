"""`rodin models compare`: models side by side.

What differs in their configurations, how they score (training's validation Chamfer, and the
newest evaluation against retrieval when there is one), and one picture of the same inputs
reconstructed by each (columns = models, rows = inputs). The reconstructions are ordinary
`rodin.reconstruct` jobs, one per model, run by workers; this module only queues them, follows
them and lays their pictures out on one sheet.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from orchestrator.cli.context import download_outputs, registry
from orchestrator.cli.follow import queue_job, wait_with_progress
from orchestrator.cli.infer import Refine, upload_inputs
from orchestrator.cli.output import Json, console, emit_json, err
from orchestrator.errors import RodinError, UserInputError
from orchestrator.jobs import DEFAULT_REFINE_STEPS, refine_steps
from orchestrator.registry.models import JobKind

if TYPE_CHECKING:
    from PIL import ImageDraw, ImageFont
    from sqlalchemy.orm import Session

    from orchestrator.registry.models import Job, ModelCheckpoint

app = typer.Typer()

#: The grid's geometry in pixels: each reconstruction's picture is fitted into a CELL, with
#: the model labels above the columns and the input names left of the rows.
CELL_WIDTH, CELL_HEIGHT = 600, 300
LABEL_WIDTH, HEADER_HEIGHT, PAD = 220, 64, 8


@dataclass
class Compared:
    """One model as the comparison shows it."""

    id: int
    aliases: list[str]
    dataset: str
    job_id: int
    epoch: int
    config: dict[str, Any]  # flattened: {"model.n_patches": 4, "lr": 0.001, ...}
    metrics: dict[str, Any]

    @property
    def label(self) -> str:
        return f"model {self.id}" + (f" ({', '.join(self.aliases)})" if self.aliases else "")


@dataclass
class Grid:
    """The reconstruction sheet: where it was written and what its columns and rows are."""

    path: str
    columns: list[int]  # model ids, left to right
    rows: list[str]  # input names, top to bottom
    job_ids: list[int]  # the reconstruction job of each column
    pictures: dict[int, list[str]]  # model id -> its full-size pictures, one per row
    refine: dict[str, int] | None


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
    models = _load_models(model_refs)
    differing = differing_fields([m.config for m in models])
    if not as_json:
        console.print(comparison_table(models, differing))
    grid = None if no_grid else _reconstruct_grid(models, inputs or [], refine, out, quiet=as_json)
    if as_json:
        emit_json({"models": [_as_json(m, differing) for m in models], "differing_fields": differing,
                   "grid": asdict(grid) if grid else None})
    elif grid is not None:
        err.print(f"Wrote the grid ({len(grid.rows)} inputs x {len(grid.columns)} models):")
        console.print(f"  {grid.path}", highlight=False, markup=False, soft_wrap=True)


# ------------------------------------------------------------------------- the models' facts


def _load_models(refs: list[str]) -> list[Compared]:
    """Every model named, in order; an unknown one, a repeated one or fewer than two are a
    one-line error before anything is queued."""
    from orchestrator.aliases import aliases_of, resolve_model

    with registry() as s:
        found = [resolve_model(s, ref) for ref in refs]
        ids = [m.id for m in found]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise UserInputError(f"model {repeated[0]} is named more than once: compare different models")
        if len(found) < 2:
            raise UserInputError("give at least two models to compare, e.g. `rodin models compare 12 15`")
        return [Compared(m.id, aliases_of(s, m.id), m.dataset.ref, m.job_id, m.epoch,
                         flatten(m.config or {}), _metrics(s, m)) for m in found]


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A stored TrainConfig as flat names: {"model": {"n_patches": 4}} -> {"model.n_patches": 4}."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differing_fields(configs: list[dict[str, Any]]) -> list[str]:
    """The flat names whose values are not the same in every config (a name one config lacks
    differs), in the order they first appear."""
    names = list(dict.fromkeys(name for config in configs for name in config))
    # JSON text compares lists and numbers by value (1e-3 == 0.001) and tells a missing key apart.
    return [name for name in names
            if len({json.dumps(c.get(name, "<missing>"), sort_keys=True) for c in configs}) > 1]


def _metrics(session: Session, model: ModelCheckpoint) -> dict[str, Any]:
    """The checkpoint's own validation Chamfer and, from its newest evaluation, the scores
    against retrieval (None where it was never evaluated)."""
    own = model.metrics or {}
    evaluation = _evaluation(session, model.id)
    r = (evaluation.result or {}) if evaluation is not None else {}
    chamfer, retrieval = r.get("chamfer"), r.get("retrieval_chamfer")
    return {
        "val_chamfer": own.get("val_chamfer"),
        # Two coverages, never one standing in for the other: the checkpoint's is the network's
        # own output at training time, the evaluation's is after test-time refinement.
        "val_coverage": own.get("coverage"),
        "chamfer": chamfer,
        "fscore": r.get("fscore"),
        "coverage": r.get("coverage"),
        "retrieval_chamfer": retrieval,
        # Positive: the model reconstructs closer than copying the nearest training shape.
        "margin_over_retrieval": retrieval - chamfer if chamfer is not None and retrieval is not None else None,
        "shapes_beating_retrieval": r.get("shapes_beating_retrieval"),
        "evaluated_shapes": r.get("shapes"),
        "evaluated_on": r.get("dataset"),
        "evaluation_job_id": evaluation.id if evaluation is not None else None,
    }


def _evaluation(session: Session, model_id: int) -> Job | None:
    """The model's newest succeeded evaluation on its own validation shapes, else its newest
    on another dataset."""
    from sqlalchemy import select

    from orchestrator.registry.models import Job, JobStatus

    done = session.scalars(select(Job).where(
        Job.kind == JobKind.evaluate.value, Job.input_model_id == model_id,
        Job.status == JobStatus.succeeded.value).order_by(Job.id.desc())).all()
    own = [j for j in done if not (j.params or {}).get("dataset")]
    chosen = own or list(done)
    return chosen[0] if chosen else None


def _as_json(m: Compared, differing: list[str]) -> dict[str, Any]:
    return {"id": m.id, "aliases": m.aliases, "dataset": m.dataset, "job_id": m.job_id, "epoch": m.epoch,
            "config": {name: m.config.get(name) for name in differing}, "metrics": m.metrics}


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


def comparison_table(models: list[Compared], differing: list[str]) -> Table:
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


def _reconstruct_grid(models: list[Compared], files: list[Path], refine: int, out: Path | None,
                      quiet: bool) -> Grid:
    """One reconstruction job per model on the same inputs, followed to the end; their
    pictures become one sheet in `out`."""
    uploaded = upload_inputs(files)  # every file is checked before any job exists
    params: dict[str, Any] = {"inputs": uploaded, "refine": refine_steps(refine)}
    if not uploaded:  # the first model's validation shapes, for every model
        params["validation_of"] = models[0].id
    job_ids = [queue_job(JobKind.reconstruct, quiet=quiet, input_model_id=m.id, params=params)
               for m in models]
    if not quiet:
        what = f"{len(uploaded)} file(s)" if uploaded else f"the validation shapes of model {models[0].id}"
        err.print(f"Queued reconstruction jobs {', '.join(map(str, job_ids))} (one per model) on {what}.")
    folder = out or Path("comparisons") / ("models-" + "-".join(str(m.id) for m in models))
    pictures: dict[int, list[str]] = {}
    rows: list[str] = []
    for m, job_id in zip(models, job_ids):
        names, paths = _pictures_of(job_id, m, folder / f"model-{m.id}", quiet)
        if rows and names != rows:
            raise RodinError(f"reconstruction job {job_id} made pictures of {len(names)} inputs, "
                             f"job {job_ids[0]} of {len(rows)}: they were given the same inputs")
        rows, pictures[m.id] = names, paths
    sheet = compose_grid([[Path(p) for p in pictures[m.id]] for m in models],
                         [(f"model {m.id}", ", ".join(m.aliases)) for m in models], rows)
    path = folder / ("compare-" + "-".join(str(m.id) for m in models) + ".png")
    path.write_bytes(sheet)
    return Grid(str(path), [m.id for m in models], rows, job_ids, pictures, params["refine"])


def _pictures_of(job_id: int, model: Compared, folder: Path, quiet: bool) -> tuple[list[str], list[str]]:
    """Wait for one model's reconstruction job; its input names and downloaded pictures, in
    input order. A failed job stops the comparison (exit 1), naming it."""
    summary = wait_with_progress(job_id, quiet=quiet)
    if summary["status"] != "succeeded":
        reason = f": {summary['error']}" if summary.get("error") else ""
        raise RodinError(f"reconstruction job {job_id} of model {model.id} {summary['status']}{reason} "
                         f"(`rodin status {job_id}`)")
    renders = [o for o in summary["outputs"] if o.get("kind") == "render"]
    return [str(o.get("input", o.get("name"))) for o in renders], download_outputs(renders, folder)


def grid_size(rows: int, columns: int) -> tuple[int, int]:
    """The sheet's (width, height) in pixels."""
    return LABEL_WIDTH + columns * CELL_WIDTH, HEADER_HEIGHT + rows * CELL_HEIGHT


def compose_grid(pictures: list[list[Path]], columns: list[tuple[str, str]], rows: list[str]) -> bytes:
    """One PNG: pictures[c][r] (column c's picture of row r) fitted into its cell, each column
    headed by its two label lines (e.g. "model 12", "swords-best"), each row named on the left."""
    from PIL import Image, ImageDraw, ImageFont

    sheet = Image.new("RGB", grid_size(len(rows), len(columns)), "white")
    draw = ImageDraw.Draw(sheet)
    font, small = ImageFont.load_default(size=22), ImageFont.load_default(size=16)
    for c, (title, subtitle) in enumerate(columns):
        x = LABEL_WIDTH + c * CELL_WIDTH
        draw.text((x + CELL_WIDTH // 2, HEADER_HEIGHT // 3), title, fill="black", font=font, anchor="mm")
        draw.text((x + CELL_WIDTH // 2, 3 * HEADER_HEIGHT // 4), _fitted(draw, subtitle, small, CELL_WIDTH),
                  fill="dimgray", font=small, anchor="mm")
        for r, path in enumerate(pictures[c]):
            with Image.open(path) as picture:
                cell = picture.convert("RGB")
            cell.thumbnail((CELL_WIDTH - 2 * PAD, CELL_HEIGHT - 2 * PAD))
            y = HEADER_HEIGHT + r * CELL_HEIGHT
            sheet.paste(cell, (x + (CELL_WIDTH - cell.width) // 2, y + (CELL_HEIGHT - cell.height) // 2))
    for r, name in enumerate(rows):
        y = HEADER_HEIGHT + r * CELL_HEIGHT
        draw.text((PAD, y + CELL_HEIGHT // 2), _fitted(draw, name, font, LABEL_WIDTH - 2 * PAD),
                  fill="black", font=font, anchor="lm")
    _rules(draw, len(rows), len(columns))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


def _rules(draw: ImageDraw.ImageDraw, rows: int, columns: int) -> None:
    """Thin lines between cells, so that a row reads across."""
    width, height = grid_size(rows, columns)
    for r in range(rows + 1):
        draw.line([(0, HEADER_HEIGHT + r * CELL_HEIGHT), (width, HEADER_HEIGHT + r * CELL_HEIGHT)], fill="lightgray")
    for c in range(columns + 1):
        draw.line([(LABEL_WIDTH + c * CELL_WIDTH, 0), (LABEL_WIDTH + c * CELL_WIDTH, height)], fill="lightgray")


def _fitted(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
            width: int) -> str:
    """`text`, cut with an ellipsis until it fits `width` pixels (shape names can be long)."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"
