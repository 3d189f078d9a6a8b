"""Writing a model's bundle: its records (the model, its ancestors, their jobs and dataset
versions) and its blobs read through the store with their recorded sha256, into one tar file."""

from __future__ import annotations

import io
import os
import tarfile
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from orchestrator.aliases import resolve_model
from orchestrator.bundles.format import FORMAT, FORMAT_VERSION, MANIFEST, canonical, file_sha256, iso, records_sha256
from orchestrator.errors import UserInputError
from orchestrator.finite import finite
from orchestrator.registry.db import session_scope
from orchestrator.registry.models import Dataset, Job, ModelCheckpoint
from orchestrator.registry.queries import get_model, lineage
from orchestrator.settings import Settings, redact

if TYPE_CHECKING:  # fsspec stays out of `rodin models show`, which imports this package
    from orchestrator.artifacts import ArtifactStore

#: Point clouds larger than this stay out of a bundle unless `--data` is given.
DATA_LIMIT_BYTES = 64 * 1024 * 1024
#: A training job's plots travel up to this size each (loss curves are ~100 KB).
MAX_OUTPUT_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Exported:
    """What an export wrote: the file, its sha256 and size, the model and its ancestors' ids."""

    path: Path
    sha256: str
    size: int
    model_id: int
    model_sha256: str
    lineage: list[int]
    data_included: bool

    def as_dict(self) -> dict[str, Any]:
        return {"file": str(self.path), "bundle_sha256": self.sha256, "size_bytes": self.size,
                "model_id": self.model_id, "sha256": self.model_sha256, "lineage": self.lineage,
                "data_included": self.data_included}


def export_bundle(settings: Settings, store: ArtifactStore, model_ref: str, path: Path,
                  include_data: bool | None = None, overwrite: bool = False) -> Exported:
    """Write the bundle of a model (id or alias) to `path`, atomically (a crash leaves no half
    file there). `include_data`: None includes the point clouds up to DATA_LIMIT_BYTES."""
    if path.is_dir() or (path.exists() and not overwrite):
        raise UserInputError(f"{path} already exists; give another FILE or --force to replace it")
    if not path.parent.is_dir():
        raise UserInputError(f"folder {path.parent} does not exist; create it first")
    with session_scope(settings) as s:
        model = resolve_model(s, model_ref)
        manifest = manifest_of(s, model, redact(settings.registry_url))
        sources = _sources(s, model)
    if _wants_data(store, sources["dataset"], include_data):
        sources["shard"] = _shards(store, sources["dataset"][0])
    else:
        del sources["dataset"]
    blobs: dict[str, bytes] = {}
    listed: list[dict[str, Any]] = []
    for role, items in sources.items():
        for item in items:  # every blob is read with its recorded sha256
            data = store.get_bytes(item["uri"], item["sha256"])
            blobs[item["sha256"]] = data
            record: dict[str, Any] = {"sha256": item["sha256"], "size": len(data), "role": role}
            record.update((k, item[k]) for k in ("name", "kind") if k in item)
            listed.append(record)
    manifest["blobs"] = listed
    manifest["records_sha256"] = records_sha256(manifest)
    _write_archive(path, manifest, blobs)
    return Exported(path, file_sha256(path), path.stat().st_size, manifest["model_id"],
                    manifest["models"][0]["sha256"], [m["id"] for m in manifest["models"][1:]],
                    "dataset" in sources)


def manifest_of(session: Session, model: ModelCheckpoint, registry: str) -> dict[str, Any]:
    """The records of a bundle: the model, its ancestors, their jobs and dataset versions."""
    chain = [model, *(get_model(session, i) for i in lineage(session, model))]
    jobs = {m.job_id: m.job for m in chain}
    datasets = {m.dataset_id: m.dataset for m in chain}
    datasets.update({j.dataset.id: j.dataset for j in jobs.values() if j.dataset is not None})
    return finite({
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "exported_at": datetime.now(timezone.utc).isoformat(), "registry": registry,
        "model_id": model.id,
        "models": [_model_record(m) for m in chain],
        "jobs": [_job_record(j) for _, j in sorted(jobs.items())],
        "datasets": [_dataset_record(d) for _, d in sorted(datasets.items())],
    })


def _model_record(m: ModelCheckpoint) -> dict[str, Any]:
    return {"id": m.id, "job_id": m.job_id, "dataset_id": m.dataset_id, "parent_id": m.parent_id,
            "epoch": m.epoch, "final": m.final, "config": m.config, "metrics": m.metrics,
            "sha256": m.sha256, "size_bytes": m.size_bytes, "code_version": m.code_version,
            "torch_version": m.torch_version, "created_at": iso(m.created_at)}


def _job_record(j: Job) -> dict[str, Any]:
    return {"id": j.id, "kind": j.kind, "status": j.status, "dataset_id": j.dataset_id,
            "input_model_id": j.input_model_id, "params": j.params, "result": j.result,
            "created_at": iso(j.created_at), "finished_at": iso(j.finished_at)}


def _dataset_record(d: Dataset) -> dict[str, Any]:
    return {"id": d.id, "name": d.name, "version": d.version, "ref": d.ref,
            "content_sha256": d.content_sha256, "shape_count": d.shape_count,
            "points_per_shape": d.points_per_shape, "source": d.source, "skipped": d.skipped,
            "artifact_uri": redact(d.artifact_uri), "artifact_sha256": d.artifact_sha256,
            "created_at": iso(d.created_at)}


def _sources(session: Session, model: ModelCheckpoint) -> dict[str, list[dict[str, Any]]]:
    """Where the blobs a bundle may carry live: the weights, the point clouds, the job's plots."""
    plots = [o for o in model.job.outputs if isinstance(o, dict) and o.get("kind") == "plot"
             and isinstance(o.get("size"), int) and o["size"] <= MAX_OUTPUT_BYTES]
    return {
        "weights": [{"uri": model.artifact_uri, "sha256": model.sha256}],
        "dataset": [{"uri": model.dataset.artifact_uri, "sha256": model.dataset.artifact_sha256}],
        "output": [{"uri": o["uri"], "sha256": o["sha256"], "name": str(o.get("name")),
                    "kind": "plot"} for o in plots],
    }


def _shards(store: ArtifactStore, dataset: dict[str, Any]) -> list[dict[str, Any]]:
    """The shards of a version stored as shards (its blob is their manifest), each to travel
    with the manifest: their addresses in it are relative to the store, and the importing
    store puts each at the same content address. None for a version of one blob."""
    from atlas_core.data import Manifest, is_manifest

    data = store.get_bytes(dataset["uri"], dataset["sha256"])
    if not is_manifest(data):
        return []
    return [{"uri": store.uri_of(shard.uri), "sha256": shard.sha256} for shard in Manifest.from_bytes(data).shards]


def _wants_data(store: ArtifactStore, dataset: list[dict[str, Any]], include: bool | None) -> bool:
    from atlas_core.data import Manifest, is_manifest
    from orchestrator.artifacts import ArtifactError

    if include is not None:
        return include
    try:  # the size, without reading the clouds: a dataset may be gigabytes
        size = int(store.fs.size(store._local_path(dataset[0]["uri"])))
        if size <= DATA_LIMIT_BYTES:
            head = store.get_bytes(dataset[0]["uri"], dataset[0]["sha256"])
            if is_manifest(head):  # a manifest is small; its shards are the size
                size += Manifest.from_bytes(head).stored_bytes
    except (ArtifactError, OSError, ValueError):
        return False
    return size <= DATA_LIMIT_BYTES


def _write_archive(path: Path, manifest: dict[str, Any], blobs: dict[str, bytes]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            _add(tar, MANIFEST, canonical(manifest))
            for digest, data in blobs.items():
                _add(tar, f"blobs/{digest}", data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, int(datetime.now(timezone.utc).timestamp())
    tar.addfile(info, io.BytesIO(data))
