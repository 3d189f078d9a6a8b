"""Evaluation as a library: a notebook scores a checkpoint against retrieval without the queue."""

from __future__ import annotations

import json
from typing import Any

import pytest

from atlas_core.checkpoint import load_model
from atlas_core.config import ModelConfig, TrainConfig
from atlas_core.data import PointCloudSet
from atlas_core.evaluate import EvaluationReport, evaluate, validation_and_library
from atlas_core.mesh_io import shape_from_mesh
from atlas_core.model import AtlasNet
from atlas_core.swords import generate_swords
from atlas_core.train import CheckpointEvent, TrainCallbacks, train

POINTS = 200  # per shape; scoring on all of them makes retrieval of a shape from itself exact
KEYS = ["shapes", "retrieval_library", "chamfer", "fscore", "normal_consistency", "coverage",
        "retrieval_chamfer", "fscore_threshold", "chamfer_units", "collapsed_patches",
        "per_shape", "beats_retrieval", "shapes_beating_retrieval", "warnings"]


@pytest.fixture(scope="module")
def swords() -> PointCloudSet:
    meshes = generate_swords(6)
    return PointCloudSet.from_shapes(
        shape_from_mesh(m, n, POINTS, seed=i) for i, (n, m, _) in enumerate(meshes))


@pytest.fixture(scope="module")
def checkpoint(swords: PointCloudSet) -> bytes:
    model = ModelConfig(n_patches=3, bottleneck=16, hidden=16, layers=1, n_points=96)
    config = TrainConfig(model=model, epochs=2, batch_size=3, checkpoint_every=2, val_fraction=0.34)
    events: list[CheckpointEvent] = []
    train(config, swords, TrainCallbacks(on_checkpoint=events.append))
    return events[-1].state


def _evaluate(model: AtlasNet, shapes: PointCloudSet, library: PointCloudSet,
              **kw: Any) -> EvaluationReport:
    return evaluate(model, shapes, library, eval_points=POINTS, mesh_vertices=300, **kw)


def _assert_consistent(report: EvaluationReport) -> None:
    rows = report.per_shape
    wins = sum(r["chamfer"] < r["retrieval_chamfer"] for r in rows)
    assert report.shapes_beating_retrieval == wins
    assert report.beats_retrieval == (report.chamfer < report.retrieval_chamfer)
    assert report.chamfer == pytest.approx(sum(r["chamfer"] for r in rows) / len(rows))
    assert report.retrieval_chamfer == pytest.approx(
        sum(r["retrieval_chamfer"] for r in rows) / len(rows))


def test_a_checkpoint_scores_its_validation_split_against_its_training_split(
        swords: PointCloudSet, checkpoint: bytes) -> None:
    model, config, _ = load_model(checkpoint)
    shapes, library = validation_and_library(swords, config)
    progress: list[tuple[int, int, str]] = []
    report = _evaluate(model, shapes, library, batch=1,
                       on_progress=lambda *p: progress.append(p))

    assert (len(shapes), len(library)) == (2, 4)
    assert list(report.as_dict()) == KEYS
    json.dumps(report.as_dict())  # what the worker stores
    assert report.shapes == 2 and report.retrieval_library == 4
    assert [r["name"] for r in report.per_shape] == shapes.names
    assert {r["retrieved"] for r in report.per_shape} <= set(library.names)
    assert 0 <= report.fscore <= 1 and 0 <= report.coverage <= 1
    assert f"{POINTS} points" in report.chamfer_units
    assert progress == [(1, 2, "reconstruct"), (2, 2, "reconstruct"), (2, 2, "retrieval")]
    _assert_consistent(report)
    # Seeded: the same scores again, up to float rounding when the batches differ.
    again = _evaluate(model, shapes, library, batch=2)
    assert again.chamfer == pytest.approx(report.chamfer, rel=1e-5)
    assert again.retrieval_chamfer == report.retrieval_chamfer


def test_retrieving_a_library_shape_from_itself_costs_nothing(
        swords: PointCloudSet, checkpoint: bytes) -> None:
    model, config, _ = load_model(checkpoint)
    _, library = validation_and_library(swords, config)
    report = _evaluate(model, library, library)

    for row in report.per_shape:
        assert row["retrieved"] == row["name"]
        assert row["retrieval_chamfer"] == pytest.approx(0.0, abs=1e-6)
    assert report.shapes_beating_retrieval == 0 and not report.beats_retrieval
    _assert_consistent(report)


def test_nothing_to_evaluate_is_refused(swords: PointCloudSet, checkpoint: bytes) -> None:
    model, _, _ = load_model(checkpoint)
    validation, library = validation_and_library(swords.subset([0]), TrainConfig())
    assert len(validation) == 0 and len(library) == 1
    with pytest.raises(ValueError, match="0 shapes"):
        evaluate(model, validation, library)
