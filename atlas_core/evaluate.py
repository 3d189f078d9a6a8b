"""A trained AtlasNet scored on some shapes the way papers do, against a retrieval baseline.

Usable alone, e.g. from a notebook::

    model, config, _ = load_model(Path("model.pt").read_bytes())
    shapes, library = validation_and_library(PointCloudSet.from_bytes(data), config)
    report = evaluate(model, shapes, library)
    print(report.chamfer, report.retrieval_chamfer, report.warnings)

The scores are defined in :mod:`atlas_core.metrics`; the library is the model's own training
split, so "beats retrieval" means the network learned more than a lookup table of those shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from atlas_core.config import INFER, TrainConfig
from atlas_core.data import PointCloudSet, split_indices
from atlas_core.meshing import PatchMesh, reconstruct
from atlas_core.metrics import (
    FSCORE_THRESHOLD,
    patch_health,
    retrieval_chamfer,
    sample_mesh,
    surface_scores,
)
from atlas_core.model import AtlasNet

#: Points per shape for the scores, as the paper reports them.
EVAL_POINTS = INFER.eval_points
MESH_VERTICES = INFER.mesh_vertices
BATCH = 16
#: Reconstructions kept for the patch-health check: enough to see a collapse, few enough to
#: keep memory flat on large evaluation sets.
HEALTH_MESHES, HEALTH_PER_BATCH = 16, 4

#: on_progress(done, total, stage): shapes done of total; stage "reconstruct" or "retrieval".
ProgressCallback = Callable[[int, int, str], object]
#: One evaluated shape: its name (str) and scores (float).
Row = dict[str, Any]


@dataclass
class EvaluationReport:
    """Mean scores over the evaluated shapes, the retrieval baseline, and one row per shape.

    Per-shape rows: name, chamfer, fscore, precision, coverage, normal_consistency,
    retrieval_chamfer and retrieved (the name of the nearest library shape).
    """

    shapes: int
    retrieval_library: int
    chamfer: float
    fscore: float
    normal_consistency: float
    coverage: float
    retrieval_chamfer: float
    fscore_threshold: float
    chamfer_units: str
    collapsed_patches: list[int]
    per_shape: list[Row]
    beats_retrieval: bool
    shapes_beating_retrieval: int
    warnings: list[str]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, keys in the order of the stored evaluation report."""
        return asdict(self)


def validation_and_library(own: PointCloudSet,
                           config: TrainConfig) -> tuple[PointCloudSet, PointCloudSet]:
    """The model's own validation split and its training split (the retrieval library).

    The split is the one training used (`config.val_fraction`, `config.seed`). The validation
    set is empty when the split left none (e.g. a single shape): evaluate on another set then.
    """
    train_idx, val_idx = split_indices(len(own), config.val_fraction, config.seed)
    return own.subset(val_idx), own.subset(train_idx)


def subsample(data: PointCloudSet, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The same n points of every shape, seeded: (S, n, 3) points and normals.

    Shapes with fewer than n points keep all of theirs: (S, P, 3).
    """
    rng = np.random.default_rng(seed)
    pick = np.stack([rng.permutation(data.points_per_shape)[:n] for _ in range(len(data))])
    rows = np.arange(len(data))[:, None]
    return data.points[rows, pick], data.normals[rows, pick]


def _score_batch(meshes: list[PatchMesh], first: int, names: list[str], gt: np.ndarray,
                 gt_normals: np.ndarray, eval_points: int) -> list[Row]:
    """Rows for shapes first.. of one batch; gt, gt_normals: (S, M, 3) for all shapes."""
    rows: list[Row] = []
    for i, mesh in enumerate(meshes, first):
        # Seeded by the shape's index, so a shape scores the same whatever the batch size.
        pred, pred_normals = sample_mesh(mesh, eval_points, seed=i)
        scores = surface_scores(pred, pred_normals, gt[i], gt_normals[i])
        rows.append({"name": names[i], **scores.as_dict()})
    return rows


def _reconstruct_and_score(model: AtlasNet, shapes: PointCloudSet, gt: np.ndarray,
                           gt_normals: np.ndarray, eval_points: int, mesh_vertices: int,
                           batch: int, on_progress: ProgressCallback | None,
                           refine: dict[str, Any] | None = None) -> tuple[list[Row], list[PatchMesh]]:
    """Per-shape rows and a few meshes for patch health; gt, gt_normals: (S, M, 3)."""
    device = next(model.parameters()).device
    net_in, _ = subsample(shapes, model.config.n_points, seed=2)  # (S, n_points, 3)
    per_shape: list[Row] = []
    kept: list[PatchMesh] = []
    for start in range(0, len(shapes), batch):
        if refine is None:
            x = torch.from_numpy(net_in[start:start + batch]).to(device)
            meshes = reconstruct(model, x, mesh_vertices)
        else:
            meshes = _refined(model, shapes.points[start:start + batch], mesh_vertices, refine, device)
        kept.extend(meshes[:HEALTH_PER_BATCH] if len(kept) < HEALTH_MESHES else [])
        per_shape.extend(_score_batch(meshes, start, shapes.names, gt, gt_normals, eval_points))
        if on_progress is not None:
            on_progress(min(start + batch, len(shapes)), len(shapes), "reconstruct")
    return per_shape, kept


def _refined(model: AtlasNet, clouds: np.ndarray, mesh_vertices: int, options: dict[str, Any],
             device: torch.device) -> list[PatchMesh]:
    """Each cloud (B, P, 3) reconstructed, then fitted to its own points (atlas_core.refine)."""
    from atlas_core.refine import refine

    return [refine(model, torch.from_numpy(np.ascontiguousarray(cloud[None], dtype=np.float32)).to(device),
                   **options).mesh(mesh_vertices) for cloud in clouds]


def _add_retrieval(per_shape: list[Row], gt: np.ndarray, library: PointCloudSet,
                   eval_points: int) -> None:
    """Adds retrieval_chamfer and retrieved to every row; gt: (S, M, 3)."""
    lib, _ = subsample(library, eval_points, seed=3)  # (T, M, 3)
    distances, nearest = retrieval_chamfer(gt, lib)
    for row, dist, j in zip(per_shape, distances, nearest):
        row["retrieval_chamfer"] = float(dist)
        row["retrieved"] = library.names[j]


def _report(per_shape: list[Row], meshes: list[PatchMesh], n_patches: int, library_size: int,
            eval_points: int) -> EvaluationReport:
    def mean(key: str) -> float:
        return float(np.mean([r[key] for r in per_shape]))

    health = patch_health(meshes, n_patches)
    chamfer, retrieval, coverage = mean("chamfer"), mean("retrieval_chamfer"), mean("coverage")
    return EvaluationReport(
        shapes=len(per_shape),
        retrieval_library=library_size,
        chamfer=chamfer,
        fscore=mean("fscore"),
        normal_consistency=mean("normal_consistency"),
        coverage=coverage,
        retrieval_chamfer=retrieval,
        fscore_threshold=FSCORE_THRESHOLD,
        chamfer_units=(f"squared distance x 1e3, mean of both directions, {eval_points} points, "
                       "unit ball"),
        collapsed_patches=health.collapsed,
        per_shape=per_shape,
        beats_retrieval=chamfer < retrieval,
        shapes_beating_retrieval=sum(r["chamfer"] < r["retrieval_chamfer"] for r in per_shape),
        warnings=health.warnings(coverage),
    )


def evaluate(model: AtlasNet, shapes: PointCloudSet, library: PointCloudSet, *,
             eval_points: int = EVAL_POINTS, mesh_vertices: int = MESH_VERTICES,
             batch: int = BATCH, on_progress: ProgressCallback | None = None,
             refine: dict[str, Any] | None = None) -> EvaluationReport:
    """Scores `model` on `shapes` and compares it with retrieval from `library`.

    shapes: S evaluated clouds (points (S, P, 3) in the unit ball); library: T clouds, usually
    the model's training split (see :func:`validation_and_library`). Each shape is encoded from
    `model.config.n_points` of its points, meshed with about `mesh_vertices` vertices, and
    scored on `eval_points` points sampled from the mesh against as many of its own; the model
    runs on whichever device its weights are on. Subsampling is seeded, so repeated calls agree.
    `on_progress(done, total, stage)` is called after every batch ("reconstruct") and once
    before retrieval ("retrieval"). With `refine` (keyword arguments of
    `atlas_core.refine.refine`), each reconstruction is first fitted to the shape's own points,
    as `rodin reconstruct` does by default: the scores are then those of what a user gets.
    """
    if len(shapes) == 0 or len(library) == 0:
        raise ValueError(f"evaluation needs shapes and a library, got {len(shapes)} shapes and "
                         f"{len(library)} library shapes")
    gt, gt_normals = subsample(shapes, eval_points, seed=1)  # (S, M, 3) each
    per_shape, meshes = _reconstruct_and_score(model, shapes, gt, gt_normals, eval_points,
                                               mesh_vertices, batch, on_progress, refine)
    if on_progress is not None:
        on_progress(len(shapes), len(shapes), "retrieval")
    _add_retrieval(per_shape, gt, library, eval_points)
    return _report(per_shape, meshes, model.config.n_patches, len(library), eval_points)
