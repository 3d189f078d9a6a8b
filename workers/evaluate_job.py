"""The body of `rodin.evaluate`: a registered model scored on a dataset, against retrieval.

The evaluation itself is atlas_core.evaluate; this module reads its inputs from the registry
and stores its report and plot as artifacts.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from atlas_core.checkpoint import load_model
from atlas_core.data import split_of
from atlas_core.evaluate import evaluate
from atlas_core.render import render_evaluation
from orchestrator import jobs
from orchestrator.artifacts import ArtifactStore
from orchestrator.datasets import load_version
from orchestrator.errors import RegistryInvariantError
from orchestrator.kinds import EvaluateParams
from orchestrator.registry.db import session_scope
from orchestrator.registry.models import Job, JobStatus
from orchestrator.settings import Settings
from orchestrator.shard_cache import ShardCache
from workers import liveness
from workers.blobs import Blob

log = logging.getLogger(__name__)


@dataclass
class _Inputs:
    model: Blob
    own: Blob  # the model's own dataset: its training split is the retrieval library
    evaluated: Blob | None  # None: the model's validation split
    eval_ref: str
    refine: dict[str, int] | None = None  # atlas_core.refine.refine's phases; None: none


def _load_inputs(settings: Settings, job_id: int) -> _Inputs:
    with session_scope(settings) as s:
        job = s.get(Job, job_id)
        if job is None or job.input_model is None:
            raise RegistryInvariantError(f"job {job_id} is not in the registry or has no model "
                                         "to evaluate")
        m = job.input_model
        refine = EvaluateParams.from_json(job.params).refine
        if job.dataset is None or job.dataset_id == m.dataset_id:
            return _Inputs(Blob.of_model(m), Blob.of_dataset(m.dataset), None,
                           f"{m.dataset.ref} (validation split)", refine)
        return _Inputs(Blob.of_model(m), Blob.of_dataset(m.dataset),
                       Blob.of_dataset(job.dataset), job.dataset.ref, refine)


def _store_outputs(store: ArtifactStore, result: dict[str, Any],
                   title: str) -> list[dict[str, Any]]:
    report = store.put_bytes(json.dumps(result, indent=1).encode(), ".json")
    plot = store.put_bytes(render_evaluation(result["per_shape"], title), ".png")
    return [{"name": "evaluation.json", "kind": "report", **report.as_dict()},
            {"name": "evaluation.png", "kind": "plot", **plot.as_dict()}]


def run_evaluate(settings: Settings, store: ArtifactStore, lease: jobs.Lease, device: str) -> None:
    job_id = lease.job_id
    inputs = _load_inputs(settings, job_id)
    model, config, _ = load_model(inputs.model.read(store), device)
    cache = ShardCache.for_settings(settings, store)
    own = load_version(store, inputs.own.uri, inputs.own.sha256, cache)
    # The split training used (its rule recorded in the model's config: atlas_core.data.split_of).
    train_idx, val_idx = split_of(own, config.val_fraction, config.seed, config.split)
    validation, library = own.subset(val_idx), own.subset(train_idx)
    if inputs.evaluated is None:
        if len(validation) == 0:
            raise ValueError(f"model {inputs.model.id} has no validation shapes: evaluate it on "
                             "another dataset with --dataset NAME")
        evaluated = validation
    else:
        evaluated = load_version(store, inputs.evaluated.uri, inputs.evaluated.sha256, cache)
        # Scored on other shapes, the model competes with copying the nearest of every shape
        # it was given, its validation ones included.
        library = own

    def on_progress(done: int, total: int, stage: str) -> None:
        liveness.tick()
        jobs.report_progress(settings, lease, {"done": done, "total": total, "stage": stage})

    # Refinement ticks after every step: a batch of large inputs is minutes between two progress reports.
    refine = None if inputs.refine is None else {**inputs.refine, "on_step": liveness.tick}
    report = evaluate(model, evaluated, library, on_progress=on_progress, refine=refine)
    # The registry's names for the model and the data are added here: atlas_core knows neither.
    result = {"model_id": inputs.model.id, "dataset": inputs.eval_ref, **report.as_dict(),
              "refine": inputs.refine}
    outputs = _store_outputs(store, result, f"model {inputs.model.id} on {inputs.eval_ref}")
    jobs.finish(settings, job_id, JobStatus.succeeded, lease=lease, outputs=outputs, result=result)
