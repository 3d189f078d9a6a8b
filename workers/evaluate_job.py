"""The body of `rodin.evaluate`: a registered model scored on a dataset, against retrieval."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import numpy as np
import torch

from atlas_core.checkpoint import load_model
from atlas_core.data import PointCloudSet, split_indices
from atlas_core.meshing import reconstruct
from atlas_core.metrics import (
    FSCORE_THRESHOLD,
    patch_health,
    retrieval_chamfer,
    sample_mesh,
    surface_scores,
)
from atlas_core.render import render_evaluation
from orchestrator.artifacts import ArtifactStore
from orchestrator.registry.db import session_scope
from orchestrator.registry.models import Job, JobStatus
from orchestrator.settings import Settings
from workers import lifecycle
from workers.blobs import Blob

log = logging.getLogger(__name__)

#: Points per shape for the scores, as the paper reports them.
EVAL_POINTS = 2500
MESH_VERTICES = 10000
BATCH = 16


@dataclass
class _Inputs:
    model: Blob
    own: Blob  # the model's own dataset: its training split is the retrieval library
    evaluated: Blob | None  # None: the model's validation split
    eval_ref: str


def _load_inputs(settings: Settings, job_id: int) -> _Inputs:
    with session_scope(settings) as s:
        job = s.get(Job, job_id)
        assert job is not None and job.input_model is not None
        m = job.input_model
        if job.dataset is None or job.dataset_id == m.dataset_id:
            return _Inputs(Blob.of_model(m), Blob.of_dataset(m.dataset), None,
                           f"{m.dataset.ref} (validation split)")
        return _Inputs(Blob.of_model(m), Blob.of_dataset(m.dataset),
                       Blob.of_dataset(job.dataset), job.dataset.ref)


def _subsample(data: PointCloudSet, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The same n points of every shape, seeded: (S, n, 3) points and normals."""
    rng = np.random.default_rng(seed)
    pick = np.stack([rng.permutation(data.points_per_shape)[:n] for _ in range(len(data))])
    rows = np.arange(len(data))[:, None]
    return data.points[rows, pick], data.normals[rows, pick]


def run_evaluate(settings: Settings, store: ArtifactStore, job_id: int, device: str) -> None:
    inputs = _load_inputs(settings, job_id)
    model, config, _ = load_model(inputs.model.read(store), device)
    own = PointCloudSet.from_bytes(inputs.own.read(store))
    train_idx, val_idx = split_indices(len(own), config.val_fraction, config.seed)
    if inputs.evaluated is None:
        if len(val_idx) == 0:
            raise ValueError(f"model {inputs.model.id} has no validation shapes: evaluate it on "
                             "another dataset with --dataset NAME")
        evaluated = own.subset(val_idx)
    else:
        evaluated = PointCloudSet.from_bytes(inputs.evaluated.read(store))

    gt, gt_normals = _subsample(evaluated, EVAL_POINTS, seed=1)
    net_in, _ = _subsample(evaluated, config.model.n_points, seed=2)
    library, _ = _subsample(own.subset(train_idx), EVAL_POINTS, seed=3)

    per_shape, meshes = [], []
    for start in range(0, len(evaluated), BATCH):
        x = torch.from_numpy(net_in[start:start + BATCH]).to(device)
        batch = reconstruct(model, x, MESH_VERTICES)
        meshes.extend(batch[:4] if len(meshes) < 16 else [])
        for i, mesh in enumerate(batch, start):
            pred, pred_normals = sample_mesh(mesh, EVAL_POINTS, seed=i)
            scores = surface_scores(pred, pred_normals, gt[i], gt_normals[i])
            per_shape.append({"name": evaluated.names[i], **scores.as_dict()})
        lifecycle.report_progress(settings, job_id, {"done": min(start + BATCH, len(evaluated)),
                                                     "total": len(evaluated), "stage": "reconstruct"})
    lifecycle.report_progress(settings, job_id, {"done": len(evaluated), "total": len(evaluated),
                                                 "stage": "retrieval"})
    retrieval, nearest = retrieval_chamfer(gt, library)
    train_names = [own.names[i] for i in train_idx]
    for row, dist, j in zip(per_shape, retrieval, nearest):
        row["retrieval_chamfer"] = float(dist)
        row["retrieved"] = train_names[j]

    def mean(key: str) -> float:
        return float(np.mean([r[key] for r in per_shape]))

    health = patch_health(meshes, config.model.n_patches)
    result = {
        "model_id": inputs.model.id,
        "dataset": inputs.eval_ref,
        "shapes": len(per_shape),
        "retrieval_library": len(train_idx),
        "chamfer": mean("chamfer"),
        "fscore": mean("fscore"),
        "normal_consistency": mean("normal_consistency"),
        "coverage": mean("coverage"),
        "retrieval_chamfer": mean("retrieval_chamfer"),
        "fscore_threshold": FSCORE_THRESHOLD,
        "chamfer_units": "squared distance x 1e3, mean of both directions, 2500 points, unit ball",
        "collapsed_patches": health.collapsed,
        "per_shape": per_shape,
    }
    result["beats_retrieval"] = result["chamfer"] < result["retrieval_chamfer"]
    result["shapes_beating_retrieval"] = sum(r["chamfer"] < r["retrieval_chamfer"] for r in per_shape)
    result["warnings"] = health.warnings(result["coverage"])

    report = store.put_bytes(json.dumps(result, indent=1).encode(), ".json")
    plot = store.put_bytes(render_evaluation(per_shape, f"model {inputs.model.id} on {inputs.eval_ref}"), ".png")
    outputs = [{"name": "evaluation.json", "kind": "report", **report.as_dict()},
               {"name": "evaluation.png", "kind": "plot", **plot.as_dict()}]
    with session_scope(settings) as s:
        job = s.get(Job, job_id)
        assert job is not None
        job.result, job.outputs = result, outputs
        job.status, job.finished_at = JobStatus.succeeded.value, lifecycle.now()
