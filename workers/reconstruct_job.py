"""The body of `rodin.reconstruct`: a registered model id in, meshes and pictures out."""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sqlalchemy.orm import Session

from atlas_core.checkpoint import load_model
from atlas_core.config import INFER, TrainConfig
from atlas_core.data import split_of
from atlas_core.mesh_io import Limits, Shape
from atlas_core.meshing import PatchMesh, to_ply_bytes
from atlas_core.model import AtlasNet
from atlas_core.pointcloud_io import ingest_input
from atlas_core.refine import batch_size, encode, fit_chamfer, mesh_latent, parallel_width, refine_parallel
from atlas_core.render import render_reconstruction
from atlas_core.trim import trim_to_input
from orchestrator import jobs
from orchestrator.artifacts import ArtifactError, ArtifactStore, safe_name
from orchestrator.datasets import open_version
from orchestrator.errors import RegistryInvariantError
from orchestrator.jobs import DEFAULT_REFINE_STEPS, refine_steps
from orchestrator.kinds import ReconstructParams
from orchestrator.registry.db import session_scope
from orchestrator.registry.models import Job, JobStatus, ModelCheckpoint
from orchestrator.settings import Settings, mesh_limits
from orchestrator.shard_cache import ShardCache
from workers import liveness
from workers.blobs import Blob

log = logging.getLogger(__name__)
#: The code phase of the default refinement (`--refine` left alone).
DEFAULT_CODE_STEPS = (refine_steps(DEFAULT_REFINE_STEPS) or {})["latent_steps"]

MESH_VERTICES = INFER.mesh_vertices
#: Inputs refined together at most (`atlas_core.refine.refine_batch`, each as it would be
#: alone; fewer for a large model, `atlas_core.refine.batch_size`): one batch shares the
#: per-step work that does not grow with its inputs (see benchmarks/refine.py).
REFINE_BATCH = 8


@dataclass
class _Inputs:
    model: Blob
    files: list[dict[str, str]]  # uploaded inputs: name, uri, sha256
    dataset: Blob  # whose validation shapes are reconstructed when no files are given
    refine: dict[str, int] | None  # atlas_core.refine.refine's phases; None: no refinement
    ood: dict[str, object] | None  # the model's in-distribution statistics (atlas_core.ood)
    # (val_fraction, seed, split method) of another model's split (`validation_of`); None: the
    # model's own.
    split: tuple[float, int, str] | None = None


def _load_inputs(settings: Settings, job_id: int) -> _Inputs:
    with session_scope(settings) as s:
        job = s.get(Job, job_id)
        if job is None or job.input_model is None:
            raise RegistryInvariantError(f"reconstruction job {job_id} has no registered model")
        m = job.input_model
        # Jobs queued before refinement existed have no "refine" key: they ran without it.
        params = ReconstructParams.from_json(job.params)
        inputs = _Inputs(Blob.of_model(m), list(params.inputs), Blob.of_dataset(m.dataset),
                         params.refine, (m.metrics or {}).get("ood"))
        if params.validation_of is not None:
            _use_validation_of(s, inputs, int(params.validation_of))
        return inputs


def _use_validation_of(session: Session, inputs: _Inputs, model_id: int) -> None:
    """Reconstruct another model's validation shapes (its dataset version, its split), so that
    several models are shown the same inputs (`rodin models compare`)."""
    other = session.get(ModelCheckpoint, model_id)
    if other is None:
        raise RegistryInvariantError(f"model {model_id}, whose validation shapes this job "
                                     "reconstructs, is not in the registry")
    config = TrainConfig.from_dict(other.config)
    inputs.dataset = Blob.of_dataset(other.dataset)
    inputs.split = (config.val_fraction, config.seed, config.split)


def _input_name(f: dict[str, str]) -> str:
    """The plain file name of an uploaded input: the job row's name must not place the file
    outside the temporary folder (its suffix still tells the mesh format)."""
    try:
        return safe_name(f.get("name"))
    except ValueError as exc:
        raise ArtifactError(f"job input {f.get('uri', '?')}: {exc}") from None


def _uploaded_shapes(store: ArtifactStore, files: list[dict[str, str]], n: int,
                     limits: Limits | None = None) -> list[Shape]:
    """The uploaded inputs: meshes (sampled over their area) or point clouds (their points)."""
    shapes = []
    with tempfile.TemporaryDirectory() as tmp:
        for f in files:
            path = Path(tmp) / _input_name(f)
            path.write_bytes(store.get_bytes(f["uri"], f["sha256"]))
            shapes.append(ingest_input(path, n_points=n, seed=0, limits=limits))
    return shapes


def _validation_shapes(store: ArtifactStore, cache: ShardCache, inputs: _Inputs, val_fraction: float,
                       seed: int, method: str) -> list[Shape]:
    """The model's validation shapes, split by training's rule (`split_of`); only the shards
    that hold them are read (through the machine's cache)."""
    data = open_version(store, inputs.dataset.uri, inputs.dataset.sha256, cache)
    train_idx, val_idx = split_of(data, val_fraction, seed, method)
    chosen = data.subset(val_idx if len(val_idx) else train_idx[:1])
    return [
        Shape(chosen.names[i], chosen.points[i], chosen.normals[i], chosen.centers[i],
              float(chosen.scales[i]), chosen.source_sha256[i])
        for i in range(len(chosen))
    ]


def _unique(name: str, used: set[str]) -> str:
    """Output names per input: `a.obj` and `a.stl` must not overwrite each other."""
    stem, n = name, 1
    while stem in used:
        n += 1
        stem = f"{name}-{n}"
    used.add(stem)
    return stem


def run_reconstruct(settings: Settings, store: ArtifactStore, lease: jobs.Lease, device: str) -> None:
    job_id = lease.job_id
    inputs = _load_inputs(settings, job_id)
    # Weights come only from the registry's record, checked against its sha256.
    model, config, _ = load_model(inputs.model.read(store), device)
    if inputs.files:
        shapes = _uploaded_shapes(store, inputs.files, max(config.model.n_points, INFER.input_points), mesh_limits(settings))
    else:
        shapes = _validation_shapes(store, ShardCache.for_settings(settings, store), inputs,
                                    *(inputs.split or (config.val_fraction, config.seed, config.split)))

    outputs: list[dict[str, object]] = []
    results: list[dict[str, object]] = []
    used: set[str] = set()
    # Batches of `size` refined `parallel_width` at a time (one per core on a CPU worker).
    size = batch_size(model, REFINE_BATCH)
    step = size * parallel_width(torch.device(device))
    for start in range(0, len(shapes), step):
        batch = shapes[start:start + step]
        fits = _fits(model, batch, inputs.refine, inputs.ood, device, first=start, most=size)
        for i, (shape, fit) in enumerate(zip(batch, fits), start):
            stem = _unique(shape.name, used)
            original = fit.mesh.transformed(shape.center, shape.scale)
            ply = store.put_bytes(to_ply_bytes(original), ".ply")
            picture = render_reconstruction(shape.points * shape.scale + shape.center, original,
                                            title=f"{stem}: model {inputs.model.id}, {fit.caption}")
            png = store.put_bytes(picture, ".png")
            scores = {"chamfer": fit.after, "chamfer_before": fit.before, "chamfer_after": fit.after,
                      "warnings": fit.warnings}
            outputs.append({"name": f"{stem}.ply", "kind": "mesh", "input": shape.name, **scores, **ply.as_dict()})
            outputs.append({"name": f"{stem}.png", "kind": "render", "input": shape.name, **png.as_dict()})
            results.append({"input": shape.name, "output": f"{stem}.ply", **scores, "seconds": fit.seconds,
                            "refinement": fit.refinement})
            liveness.tick()
            jobs.report_progress(settings, lease, {"done": i + 1, "total": len(shapes)})
    result = {"refine": inputs.refine, "inputs": results,
              "warnings": [f"{r['input']}: {w}" for r in results for w in r["warnings"]]}  # type: ignore[attr-defined]
    jobs.finish(settings, job_id, JobStatus.succeeded, lease=lease, outputs=outputs, result=result)


@dataclass
class _Fit:
    mesh: PatchMesh
    before: float  # Chamfer of the encoder's reconstruction (chamfer_distance units)
    after: float  # after refinement (= before without it)
    warnings: list[str]
    seconds: float  # this input's share of its batch's time (refinement, meshing, OOD checks)
    refinement: dict[str, float | int | bool] | None = None  # `Refinement.as_dict()`; None: not refined

    @property
    def caption(self) -> str:
        if self.after == self.before:
            return f"Chamfer {self.after:.5f}"
        return f"Chamfer {self.before:.5f} -> {self.after:.5f} refined"


def _fits(model: AtlasNet, shapes: list[Shape], refine_options: dict[str, int] | None,
          ood: dict[str, object] | None, device: str, first: int, most: int = REFINE_BATCH) -> list[_Fit]:
    """The reconstructions of consecutive inputs, the first being the job's input number
    `first`: encoded, then (by default) refined to their points in batches of at most `most`,
    several batches at once on a CPU (`refine_parallel`). Input i's random stream is seeded
    with i, so its result is what it would be refined alone. Each input's `seconds` (and its
    refinement's) is the call's time divided among its inputs."""
    started = time.perf_counter()
    points = [torch.from_numpy(np.ascontiguousarray(shape.points, dtype=np.float32))[None].to(device)
              for shape in shapes]  # (1, N, 3) each
    fits = []
    if refine_options:
        refined = refine_parallel(model, points, most=most,
                                  generators=[torch.Generator().manual_seed(first + i) for i in range(len(points))],
                                  latent_steps=refine_options["latent_steps"],
                                  decoder_steps=refine_options["decoder_steps"], on_step=liveness.tick)
        # The fit after the code phase is the OOD statistics' yardstick only at its default length.
        default_code = refine_options["latent_steps"] == DEFAULT_CODE_STEPS
        for r, p in zip(refined, points):
            warnings = _ood_warnings(ood, r.chamfer_before, r.encoded, r.chamfer_latent if default_code else None)
            # The webs a patch spans between parts go: no input point supports them (atlas_core.trim).
            trim = trim_to_input(r.mesh(MESH_VERTICES), p[0].cpu().numpy(), INFER.trim_factor)
            fits.append(_Fit(trim.mesh, r.chamfer_before, r.chamfer_after, warnings, 0.0,
                             {**r.as_dict(), **trim.as_dict()}))
    else:
        for p in points:
            encoded = encode(model, p)
            before = fit_chamfer(model, encoded, p)
            fits.append(_Fit(mesh_latent(model, encoded, MESH_VERTICES)[0], before, before,
                             _ood_warnings(ood, before, encoded, None), 0.0))
    share = (time.perf_counter() - started) / len(shapes)
    for fit in fits:
        fit.seconds = share
    return fits


def _ood_warnings(ood: dict[str, object] | None, chamfer_before: float, encoded: torch.Tensor,
                  chamfer_latent: float | None) -> list[str]:
    """Warnings when the input is unlike the model's training shapes (statistics stored with
    the model at the end of its training; none for models trained before they were)."""
    if not ood:
        return []
    from atlas_core.ood import OodStats, ood_warnings

    return ood_warnings(OodStats.from_dict(ood), chamfer_before, encoded, chamfer_latent)
