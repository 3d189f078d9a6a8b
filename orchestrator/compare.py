"""Models side by side: what differs in their configurations, how they score (training's
validation Chamfer, and the newest evaluation against retrieval when there is one), and one
picture of the same inputs reconstructed by each (columns = models, rows = inputs).

The reconstructions are ordinary `rodin.reconstruct` jobs, one per model, run by workers; this
module registers them, follows them (through the caller's `wait`, which shows progress), and
lays their pictures out on one sheet. `rodin models compare` prints what comes back.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.aliases import aliases_of, resolve_model
from orchestrator.artifacts import ArtifactStore, download
from orchestrator.errors import RodinError, UserInputError
from orchestrator.job_states import JobKind, JobStatus
from orchestrator.registry.db import session_scope
from orchestrator.registry.models import Job, ModelCheckpoint
from orchestrator.settings import Settings

if TYPE_CHECKING:
    from PIL import ImageDraw, ImageFont

    from orchestrator.job_view import JobView

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


# ------------------------------------------------------------------------- the models' facts


def load(settings: Settings, refs: list[str]) -> list[Compared]:
    """Every model named, in order; an unknown one, a repeated one or fewer than two are a
    one-line error before anything is queued."""
    from atlas_core.config import flatten

    with session_scope(settings) as s:
        found = [resolve_model(s, ref) for ref in refs]
        ids = [m.id for m in found]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise UserInputError(f"model {repeated[0]} is named more than once: compare different models")
        if len(found) < 2:
            raise UserInputError("give at least two models to compare, e.g. `rodin models compare 12 15`")
        return [Compared(m.id, aliases_of(s, m.id), m.dataset.ref, m.job_id, m.epoch,
                         flatten(m.config or {}), _metrics(s, m)) for m in found]


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
    done = session.scalars(select(Job).where(
        Job.kind == JobKind.evaluate.value, Job.input_model_id == model_id,
        Job.status == JobStatus.succeeded.value).order_by(Job.id.desc())).all()
    own = [j for j in done if not (j.params or {}).get("dataset")]
    chosen = own or list(done)
    return chosen[0] if chosen else None


def as_json(m: Compared, differing: list[str]) -> dict[str, Any]:
    return {"id": m.id, "aliases": m.aliases, "dataset": m.dataset, "job_id": m.job_id, "epoch": m.epoch,
            "config": {name: m.config.get(name) for name in differing}, "metrics": m.metrics}


# -------------------------------------------------------------------------------- the grid


def reconstruct_grid(settings: Settings, store: ArtifactStore, models: list[Compared],
                     uploaded: list[dict[str, Any]], refine: dict[str, int] | None, folder: Path, *,
                     submit: Callable[[int, dict[str, Any]], int],
                     wait: Callable[[int], JobView]) -> Grid:
    """One reconstruction job per model on the same inputs (`uploaded`, else the first model's
    validation shapes), followed to the end; their pictures become one sheet in `folder`, with
    each model's full-size pictures in `folder/model-ID/`.

    submit(model id, params) registers and sends one job (the CLI's, which may start a local
    worker); wait(job id) follows it to its end (the CLI's, with a progress bar). A job that
    does not succeed stops the comparison (RodinError naming it)."""
    params: dict[str, Any] = {"inputs": uploaded, "refine": refine}
    if not uploaded:  # the first model's validation shapes, for every model
        params["validation_of"] = models[0].id
    job_ids = [submit(m.id, params) for m in models]
    pictures: dict[int, list[str]] = {}
    rows: list[str] = []
    for m, job_id in zip(models, job_ids):
        names, renders = _renders_of(wait(job_id), m)
        if rows and names != rows:
            raise RodinError(f"reconstruction job {job_id} made pictures of {len(names)} inputs, "
                             f"job {job_ids[0]} of {len(rows)}: they were given the same inputs")
        rows, pictures[m.id] = names, download(store, renders, folder / f"model-{m.id}")
    sheet = compose_grid([[Path(p) for p in pictures[m.id]] for m in models],
                         [(f"model {m.id}", ", ".join(m.aliases)) for m in models], rows)
    path = folder / ("compare-" + "-".join(str(m.id) for m in models) + ".png")
    path.write_bytes(sheet)
    return Grid(str(path), [m.id for m in models], rows, job_ids, pictures, refine)


def _renders_of(job: JobView, model: Compared) -> tuple[list[str], list[dict[str, Any]]]:
    """A finished reconstruction job's input names and picture outputs, in input order."""
    if job.status is not JobStatus.succeeded:
        reason = f": {job.error}" if job.error else ""
        raise RodinError(f"reconstruction job {job.id} of model {model.id} {job.status.value}{reason} "
                         f"(`rodin status {job.id}`)")
    renders = [o for o in job.outputs if o.get("kind") == "render"]
    return [str(o.get("input", o.get("name"))) for o in renders], renders


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
