"""The body of `rodin.reconstruct`: a registered model id in, meshes and pictures out."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from atlas_core.chamfer import chamfer_distance
from atlas_core.checkpoint import load_model
from atlas_core.data import PointCloudSet, split_indices
from atlas_core.mesh_io import Shape, ingest_file
from atlas_core.meshing import reconstruct, to_ply_bytes
from atlas_core.render import render_reconstruction
from orchestrator import jobs
from orchestrator.artifacts import ArtifactError, ArtifactStore, safe_name
from orchestrator.errors import RegistryInvariantError
from orchestrator.registry.db import session_scope
from orchestrator.registry.models import Job, JobStatus
from orchestrator.settings import Settings
from workers.blobs import Blob

log = logging.getLogger(__name__)

#: Vertices per reconstructed mesh (over all patches).
MESH_VERTICES = 10000


@dataclass
class _Inputs:
    model: Blob
    files: list[dict[str, str]]  # uploaded inputs: name, uri, sha256
    dataset: Blob  # the model's own: its validation shapes when no files are given


def _load_inputs(settings: Settings, job_id: int) -> _Inputs:
    with session_scope(settings) as s:
        job = s.get(Job, job_id)
        if job is None or job.input_model is None:
            raise RegistryInvariantError(f"reconstruction job {job_id} has no registered model")
        m = job.input_model
        return _Inputs(Blob.of_model(m), list(job.params.get("inputs", [])),
                       Blob.of_dataset(m.dataset))


def _input_name(f: dict[str, str]) -> str:
    """The plain file name of an uploaded input: the job row's name must not place the file
    outside the temporary folder (its suffix still tells the mesh format)."""
    try:
        return safe_name(f.get("name"))
    except ValueError as exc:
        raise ArtifactError(f"job input {f.get('uri', '?')}: {exc}") from None


def _uploaded_shapes(store: ArtifactStore, files: list[dict[str, str]], n: int) -> list[Shape]:
    shapes = []
    with tempfile.TemporaryDirectory() as tmp:
        for f in files:
            path = Path(tmp) / _input_name(f)
            path.write_bytes(store.get_bytes(f["uri"], f["sha256"]))
            shapes.append(ingest_file(path, n_points=n, seed=0))
    return shapes


def _validation_shapes(store: ArtifactStore, inputs: _Inputs, val_fraction: float,
                       seed: int) -> list[Shape]:
    data = PointCloudSet.from_bytes(inputs.dataset.read(store))
    train_idx, val_idx = split_indices(len(data), val_fraction, seed)
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
    n_points = config.model.n_points
    if inputs.files:
        shapes = _uploaded_shapes(store, inputs.files, max(n_points, 10000))
    else:
        shapes = _validation_shapes(store, inputs, config.val_fraction, config.seed)

    generator = torch.Generator().manual_seed(0)
    outputs: list[dict[str, object]] = []
    used: set[str] = set()
    for i, shape in enumerate(shapes):
        stem = _unique(shape.name, used)
        dense = torch.from_numpy(np.ascontiguousarray(shape.points, dtype=np.float32))
        pick = torch.randperm(len(dense), generator=generator)[:n_points]
        x = dense[pick].unsqueeze(0).to(device)
        mesh = reconstruct(model, x, MESH_VERTICES)[0]
        with torch.no_grad():
            score = float(chamfer_distance(model(x, generator=generator), x))
        original = mesh.transformed(shape.center, shape.scale)
        ply = store.put_bytes(to_ply_bytes(original), ".ply")
        picture = render_reconstruction(
            shape.points * shape.scale + shape.center, original,
            title=f"{stem}: model {inputs.model.id}, Chamfer {score:.5f}",
        )
        png = store.put_bytes(picture, ".png")
        outputs.append({"name": f"{stem}.ply", "kind": "mesh", "input": shape.name,
                        "chamfer": score, **ply.as_dict()})
        outputs.append({"name": f"{stem}.png", "kind": "render", "input": shape.name,
                        **png.as_dict()})
        jobs.report_progress(settings, lease, {"done": i + 1, "total": len(shapes)})
    jobs.finish(settings, job_id, JobStatus.succeeded, lease=lease, outputs=outputs)
