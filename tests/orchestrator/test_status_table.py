"""`rodin status` at an 80-column terminal: every column is there and nothing is cut."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from orchestrator.cli.jobs import jobs_table, sweep_table
from orchestrator.job_view import SweepView
from tests.orchestrator.views import view


def _draw(table: Any, width: int) -> str:
    console = Console(width=width, record=True, color_system=None)
    console.print(table)
    return console.export_text()


def test_status_fits_80_columns_without_cutting_a_word() -> None:
    rows = [view(1234, "reconstruct", "queued"),
            view(1233, "train", "running", progress={"epoch": 13, "epochs": 150, "train_loss": 0.00021}),
            view(1232, "train", "waiting", depends_on_job_id=1231)]
    text = _draw(jobs_table(rows, width=80), 80)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text
    for header in ("id", "kind", "status", "progress", "loss", "ETA", "worker"):
        assert header in text
    assert "reconstruct" in text and "13/150" in text and "0.0002" in text and "waiting" in text
    # A long worker name (the last column here) may fold onto a second line, but every
    # character of it is shown.
    lines = text.splitlines()
    header = next(line for line in lines if "worker" in line)
    first_row = next(i for i, line in enumerate(lines) if line.lstrip().startswith("1234"))
    worker = "".join(line[header.index("worker"):].strip() for line in lines[first_row:first_row + 3])
    assert worker.startswith("gpu-a@lab-box-17")
    assert "age" not in text.split("\n")[2]  # left out below 100 columns
    assert " age" in _draw(jobs_table(rows, width=120), 120)


def test_a_three_setting_sweep_fits_80_columns() -> None:
    jobs = [view(10 + i, "train", "succeeded" if i < 3 else "running", worker="w", sweep_id=3,
                 params={"sweep": {"n_patches": p, "template": t, "lr": 3e-4}},
                 progress={"epoch": 40 if i < 3 else 7, "epochs": 40},
                 final_metrics={"val_chamfer": 0.001 * (i + 1)} if i < 3 else None,
                 final_model_id=50 + i if i < 3 else None)
            for i, (p, t) in enumerate([(1, "square"), (5, "sphere"), (25, "square"), (25, "sphere")])]
    sweep = SweepView(id=3, dataset="swords@1", grid={"n_patches": [1, 5, 25], "template": ["square", "sphere"],
                                                     "lr": [1e-3, 3e-4]},
                      fixed={}, created_at=None, jobs=jobs)
    text = _draw(sweep_table(sweep), 80)
    assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text
    for word in ("patches", "template", "lr", "val chamfer", "ETA", "model", "succeeded", "running", "0.0003"):
        assert word in text
