"""`rodin models compare` with real parts: two tiny models trained by a real worker, one of
them evaluated, then compared (table and JSON) and reconstructed side by side by the worker."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from atlas_core.config import flatten
from orchestrator.compare import (
    CELL_HEIGHT,
    CELL_WIDTH,
    HEADER_HEIGHT,
    LABEL_WIDTH,
    differing_fields,
    grid_size,
)
from tests.conftest import Rodin, stop_process

TINY = ["--epochs", "2", "--points", "128", "--bottleneck", "32", "--hidden", "32", "--layers", "1",
        "--batch-size", "4", "--checkpoint-every", "1", "--val-fraction", "0.25"]


#: Fixtures that start a real worker: their tests are `slow` (tests/conftest.py).
SLOW_FIXTURES = ("home",)


@pytest.fixture(scope="module")
def home(tmp_path_factory):  # type: ignore[no-untyped-def]
    """8 swords (2 held out) and 4 other swords (1 held out), one live worker."""
    rodin = Rodin(tmp_path_factory.mktemp("compare") / "home")
    rodin.json("datasets", "make", "swords", "--count", "8", "--points-per-shape", "600")
    rodin.json("datasets", "make", "swords", "--name", "blades", "--count", "4", "--seed", "1",
               "--points-per-shape", "600")
    worker = rodin.start_worker("w1", queues="train,infer")
    yield rodin
    stop_process(worker)


@pytest.fixture(scope="module")
def models(home: Rodin) -> tuple[int, int]:
    """(narrow, wide): 2 patches on swords, 4 on blades (tagged `wide`); only narrow is evaluated."""
    narrow = home.json("submit", "train", "--dataset", "swords", "--patches", "2", *TINY, "--wait")
    wide = home.json("submit", "train", "--dataset", "blades", "--patches", "4", *TINY, "--wait")
    assert narrow["status"] == wide["status"] == "succeeded", (narrow, wide)
    home.json("models", "tag", str(wide["model_id"]), "wide")
    evaluated = home.json("evaluate", "--model", str(narrow["model_id"]), "--refine", "0", "--wait")
    assert evaluated["status"] == "succeeded", evaluated
    return narrow["model_id"], wide["model_id"]


def test_flatten_and_differing_fields() -> None:
    a = {"lr": 0.001, "model": {"n_patches": 2, "template": "square"}, "lr_decay_at": [10, 20]}
    b = {"lr": 1e-3, "model": {"n_patches": 4, "template": "square"}, "lr_decay_at": [10, 30]}
    assert flatten(a) == {"lr": 0.001, "model.n_patches": 2, "model.template": "square", "lr_decay_at": [10, 20]}
    assert differing_fields([flatten(a), flatten(b)]) == ["model.n_patches", "lr_decay_at"]
    assert differing_fields([{"x": 1}, {"x": 1, "y": 2}]) == ["y"]  # a field one config lacks differs
    assert differing_fields([flatten(a), flatten(a)]) == []


def test_config_diff_shows_only_the_fields_that_differ(home: Rodin, models: tuple[int, int]) -> None:
    narrow, wide = models
    out = home.json("models", "compare", str(narrow), "wide", "--no-grid")
    assert out["differing_fields"] == ["model.n_patches"]
    assert [m["id"] for m in out["models"]] == [narrow, wide]
    assert [m["config"] for m in out["models"]] == [{"model.n_patches": 2}, {"model.n_patches": 4}]
    assert [m["dataset"] for m in out["models"]] == ["swords@1", "blades@1"]
    assert out["models"][1]["aliases"] == ["wide"] and out["grid"] is None
    text = home.cli("models", "compare", str(narrow), "wide", "--no-grid")
    assert text.returncode == 0, text.stderr
    assert "model.n_patches" in text.stdout and f"model {wide} (wide)" in text.stdout
    assert "model.bottleneck" not in text.stdout and "lr" not in re.findall(r"^\S+", text.stdout, re.M)


def test_metrics_come_from_the_checkpoint_and_its_evaluation(home: Rodin, models: tuple[int, int]) -> None:
    narrow, wide = models
    out = home.json("models", "compare", str(narrow), str(wide), "--no-grid")
    evaluated, plain = (m["metrics"] for m in out["models"])
    evaluation = home.json("status")["jobs"]
    job = next(j for j in evaluation if j["kind"] == "evaluate" and j["input_model_id"] == narrow)
    assert evaluated["evaluation_job_id"] == job["id"] and evaluated["evaluated_on"] == "swords@1 (validation split)"
    assert evaluated["chamfer"] == job["result"]["chamfer"] and evaluated["fscore"] == job["result"]["fscore"]
    assert evaluated["coverage"] == job["result"]["coverage"]
    assert evaluated["margin_over_retrieval"] == pytest.approx(job["result"]["retrieval_chamfer"] - job["result"]["chamfer"])
    assert evaluated["evaluated_shapes"] == home.held_out()
    shown = home.json("models", "show", str(wide))
    assert plain["val_chamfer"] == shown["metrics"]["val_chamfer"] > 0
    assert plain["evaluation_job_id"] is None and plain["fscore"] is None and plain["margin_over_retrieval"] is None
    # A coverage at training time never stands in for one after refinement.
    assert plain["coverage"] is None and plain["val_coverage"] == shown["metrics"]["coverage"]
    text = home.cli("models", "compare", str(narrow), str(wide), "--no-grid").stdout
    assert "margin over retrieval" in text and "rodin evaluate" in text


def _cells_are_filled(sheet: Image.Image, rows: int, columns: int) -> bool:
    """Every cell holds a picture (not only the white background)."""
    pixels = np.asarray(sheet.convert("L"), dtype=np.float32)
    for r in range(rows):
        for c in range(columns):
            y, x = HEADER_HEIGHT + r * CELL_HEIGHT, LABEL_WIDTH + c * CELL_WIDTH
            if pixels[y + 10:y + CELL_HEIGHT - 10, x + 10:x + CELL_WIDTH - 10].std() < 5:
                return False
    return True


def test_grid_of_the_first_models_validation_shapes_by_every_model(home: Rodin, models: tuple[int, int],
                                                                   tmp_path: Path) -> None:
    narrow, wide = models
    out = home.json("models", "compare", str(narrow), "wide", "--refine", "0", "--out", str(tmp_path))
    grid = out["grid"]
    assert grid["columns"] == [narrow, wide]
    # Both models were given narrow's held-out swords (wide's own split holds out blades).
    assert len(grid["rows"]) == home.held_out() and all(name.startswith("sword") for name in grid["rows"])
    with Image.open(grid["path"]) as sheet:
        sheet.load()
    assert Path(grid["path"]).parent == tmp_path and sheet.format == "PNG"
    assert sheet.size == grid_size(len(grid["rows"]), 2)
    assert _cells_are_filled(sheet, len(grid["rows"]), 2)
    for model_id, job_id in zip(grid["columns"], grid["job_ids"]):
        job = home.json("status", str(job_id))
        assert job["kind"] == "reconstruct" and job["input_model_id"] == model_id
        assert job["params"]["validation_of"] == narrow and job["params"]["refine"] is None
        assert [r["input"] for r in job["result"]["inputs"]] == grid["rows"]
        assert [Path(p).parent.name for p in grid["pictures"][str(model_id)]] == [f"model-{model_id}"] * len(grid["rows"])


def test_grid_of_files_the_user_gives(home: Rodin, models: tuple[int, int], tmp_path: Path) -> None:
    narrow, wide = models
    box = tmp_path / "box.stl"
    trimesh.creation.box(extents=(1.0, 4.0, 0.5)).export(box)
    result = home.cli("models", "compare", str(narrow), str(wide), "--input", str(box), "--refine", "0",
                      "--out", str(tmp_path / "grid"))
    assert result.returncode == 0, result.stderr
    written = [Path(line.strip()) for line in result.stdout.splitlines() if line.strip().endswith(".png")]
    assert len(written) == 1 and written[0].parent == tmp_path / "grid"
    with Image.open(written[0]) as sheet:
        assert sheet.size == grid_size(1, 2) and _cells_are_filled(sheet, 1, 2)


@pytest.mark.parametrize("args, message", [
    (["999999"], "model 999999 is not registered"),
    (["nosuchalias"], "model alias 'nosuchalias' does not exist"),
    ([], "at least two models"),
    (["wide"], "is named more than once"),
])
def test_bad_input_is_one_line_and_exit_2(home: Rodin, models: tuple[int, int], args: list[str], message: str) -> None:
    narrow, _ = models
    before = len(home.json("status")["jobs"])
    result = home.cli("models", "compare", str(narrow) if args != ["wide"] else "wide", *args)
    assert result.returncode == 2 and message in result.stderr, (result.returncode, result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert len(home.json("status")["jobs"]) == before  # nothing was queued


def test_an_unreadable_input_file_queues_nothing(home: Rodin, models: tuple[int, int], tmp_path: Path) -> None:
    narrow, wide = models
    bad = tmp_path / "bad.obj"
    bad.write_text("not a mesh\n")
    before = len(home.json("status")["jobs"])
    result = home.cli("models", "compare", str(narrow), str(wide), "--input", str(bad))
    assert result.returncode == 2 and "bad.obj" in result.stderr
    assert len(home.json("status")["jobs"]) == before
