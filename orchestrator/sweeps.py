"""Sweeps: a grid of training settings expanded into combinations, and their jobs ranked.

Plain functions on plain values (no typer, rich or torch): `rodin submit sweep` splits each
setting's comma list and expands the grid; `rodin status --sweep` ranks the sweep's jobs by
validation Chamfer. The jobs themselves are registered by `orchestrator.jobs.submit_sweep`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from orchestrator.errors import UserInputError
from orchestrator.job_states import JobStatus
from orchestrator.job_view import JobView, SweepView

#: More combinations than this is almost surely a typo (one comma list too many): refused
#: before anything is queued.
MAX_COMBINATIONS = 256

#: The order of a ranking after the succeeded jobs: what is still coming first, then the ends
#: that have no final model.
_PENDING_ORDER = {"running": 1, "queued": 2, "waiting": 2}


def split_values(text: str, kind: Callable[[str], Any], flag: str) -> list[Any]:
    """`"1,5,25"` -> [1, 5, 25]; an empty item, a value `kind` refuses or a repeated value is
    a UserInputError naming the flag."""
    values = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            raise UserInputError(f"{flag} {text!r}: an empty value in the list; give e.g. {flag} 1,5,25")
        try:
            value = kind(item)
        except ValueError:
            what = {"int": "an integer", "float": "a number"}.get(kind.__name__, kind.__name__)
            raise UserInputError(f"{flag} {text!r}: {item!r} is not {what}") from None
        if value in values:
            raise UserInputError(f"{flag} {text!r}: {item!r} is given twice")
        values.append(value)
    return values


def split_grid(values: dict[str, list[Any]]) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """(the grid: settings given several values, in the given order; the fixed settings)."""
    grid = {name: vals for name, vals in values.items() if len(vals) > 1}
    fixed = {name: vals[0] for name, vals in values.items() if len(vals) == 1}
    return grid, fixed


def combinations(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, the first setting varying slowest; an empty
    grid is one combination. Over MAX_COMBINATIONS: UserInputError."""
    count = math.prod(len(vals) for vals in grid.values())
    if count > MAX_COMBINATIONS:
        raise UserInputError(f"the grid has {count} combinations, more than {MAX_COMBINATIONS}; "
                             "sweep fewer values at a time")
    names = list(grid)
    return [dict(zip(names, chosen)) for chosen in itertools.product(*grid.values())]


def val_chamfer(job: JobView) -> float | None:
    """A sweep job's score: its final model's validation Chamfer (None before it has one)."""
    value = (job.final_metrics or {}).get("val_chamfer")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


@dataclass(frozen=True)
class Ranked:
    """One job of a sweep in its ranking (`rank` None: not ranked, not finished or no score)."""

    rank: int | None
    job: JobView
    #: The job's value of each swept setting, in the grid's order.
    settings: dict[str, Any]
    val_chamfer: float | None
    eta_s: float | None

    def as_json(self) -> dict[str, Any]:
        """A row of `rodin status --sweep ID --json`."""
        progress = self.job.progress
        return {"rank": self.rank, "job_id": self.job.id, "status": self.job.status.value,
                "settings": self.settings, "val_chamfer": self.val_chamfer,
                "final_model_id": self.job.final_model_id, "epoch": progress.get("epoch"),
                "epochs": progress.get("epochs"), "train_loss": progress.get("train_loss"),
                "eta_s": self.eta_s, "worker": self.job.worker, "error": self.job.error}


def rank(sweep: SweepView, at: datetime | None = None) -> list[Ranked]:
    """The sweep's jobs, best first: succeeded ones by validation Chamfer (rank 1, 2, ...),
    then running, then queued, then those that ended without a final model (rank None).
    ETAs are taken at `at` (default: now)."""
    def order(job: JobView) -> tuple[int, float, int]:
        score = val_chamfer(job)
        if job.status is JobStatus.succeeded and score is not None:
            return 0, score, job.id
        return _PENDING_ORDER.get(job.status.value, 3), 0.0, job.id

    rows = []
    place = 0
    for job in sorted(sweep.jobs, key=order):
        score = val_chamfer(job)
        ranked = job.status is JobStatus.succeeded and score is not None
        place += ranked
        swept = job.params.get("sweep") or {}
        rows.append(Ranked(rank=place if ranked else None, job=job,
                           settings={name: swept.get(name) for name in sweep.grid},
                           val_chamfer=score, eta_s=job.eta_s(at)))
    return rows


def best(rows: list[Ranked]) -> Ranked | None:
    """The ranking's first row, if it is ranked (a succeeded job with a score)."""
    return rows[0] if rows and rows[0].rank == 1 else None
