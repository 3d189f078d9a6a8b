"""Importing a verified bundle: blobs first, then one transaction that registers a dataset
version (an existing one with the same content is reused), a succeeded training job that never
ran, the model and its `model_imports` row; and, for `rodin models show`, where an imported model
came from."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator import jobs
from orchestrator.bundles.format import Bundle, BundleError, canonical, iso, parse_time
from orchestrator.bundles.read import read_bundle
from orchestrator.kinds import TrainParams
from orchestrator.registry.db import session_scope
from orchestrator.registry.models import Dataset, ModelCheckpoint, ModelImport
from orchestrator.registry.queries import next_dataset_version
from orchestrator.settings import Settings

if TYPE_CHECKING:  # fsspec stays out of `rodin models show`, which reads import records here
    from orchestrator.artifacts import ArtifactStore, StoredArtifact

SUFFIX = {"weights": ".pt", "dataset": ".npz", "shard": ".npz"}


@dataclass(frozen=True)
class Imported:
    """What an import registered (or, `already`, the model that held these weights before)."""

    model_id: int
    job_id: int
    dataset_id: int
    dataset: str
    sha256: str
    original: dict[str, Any]
    dataset_reused: bool = False
    already: bool = False
    bundle_sha256: str = ""
    data_included: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "job_id": self.job_id, "dataset_id": self.dataset_id,
                "dataset": self.dataset, "dataset_reused": self.dataset_reused, "sha256": self.sha256,
                "already_registered": self.already, "bundle_sha256": self.bundle_sha256,
                "data_included": self.data_included, "original": self.original,
                "models": [{"id": self.model_id, "sha256": self.sha256,
                            "original_id": self.original["model_id"]}]}


def import_bundle(settings: Settings, store: ArtifactStore, path: Path) -> Imported:
    """Verify a bundle, then store its blobs and register it (see the module's docstring)."""
    bundle = read_bundle(path)
    _check_config(bundle, path)
    record = bundle.model
    source = bundle.dataset(record["dataset_id"])
    with session_scope(settings) as s:
        held = s.scalars(select(ModelCheckpoint).where(ModelCheckpoint.sha256 == record["sha256"])
                         .order_by(ModelCheckpoint.id).limit(1)).first()
        if held is not None:  # importing twice (or back home): these weights are registered
            return _imported(s, held, bundle, already=True)
        reuse = _same_dataset(s, source)
    stored = _put_blobs(store, bundle, skip_dataset=reuse is not None)
    with session_scope(settings) as s:
        dataset = s.get(Dataset, reuse) if reuse is not None else None
        if dataset is None:
            dataset = _new_dataset(s, source, stored.get(source["artifact_sha256"]))
        model = _register(s, bundle, dataset, stored)
        return _imported(s, model, bundle, dataset_reused=reuse is not None)


def _check_config(bundle: Bundle, path: Path) -> None:
    """The model's config must be one this rodin reads back (no unknown settings)."""
    from atlas_core.config import ConfigError, TrainConfig

    try:
        TrainConfig.from_dict(bundle.model["config"])
    except (ConfigError, TypeError, ValueError) as exc:
        raise BundleError(f"refused {path}: the model's configuration is not readable here ({exc}); "
                          "nothing was imported") from None


def _same_dataset(session: Session, source: dict[str, Any]) -> int | None:
    """A dataset version here with the same shapes: the same cached clouds first, then newest."""
    rows = session.scalars(select(Dataset).where(Dataset.content_sha256 == source["content_sha256"])
                           .order_by(Dataset.id.desc())).all()
    same = [d for d in rows if d.artifact_sha256 == source["artifact_sha256"]] or list(rows)
    return same[0].id if same else None


def _put_blobs(store: ArtifactStore, bundle: Bundle, skip_dataset: bool) -> dict[str, StoredArtifact]:
    """Blobs before rows; the manifest is kept too (a job output), so the record stays whole."""
    stored = {}
    for blob in bundle.manifest["blobs"]:
        if blob["role"] in ("dataset", "shard") and skip_dataset:
            continue
        suffix = SUFFIX.get(blob["role"]) or Path(str(blob.get("name", ""))).suffix[:16]
        stored[blob["sha256"]] = store.put_bytes(bundle.blobs[blob["sha256"]], suffix)
    stored["manifest"] = store.put_bytes(canonical(bundle.manifest), ".json")
    return stored


def _new_dataset(session: Session, source: dict[str, Any], data: StoredArtifact | None) -> Dataset:
    # Without the clouds the row keeps the exporter's URI: the store refuses to read it (not
    # under its root), so a job that needs them fails with that line instead of reading others.
    row = Dataset(name=source["name"], version=next_dataset_version(session, source["name"]),
                  content_sha256=source["content_sha256"], shape_count=source["shape_count"],
                  points_per_shape=source["points_per_shape"], source=source["source"],
                  skipped=source["skipped"], artifact_uri=data.uri if data else source["artifact_uri"],
                  artifact_sha256=source["artifact_sha256"])
    session.add(row)
    session.flush()
    return row


def _register(session: Session, bundle: Bundle, dataset: Dataset, stored: dict[str, StoredArtifact]) -> ModelCheckpoint:
    """The job (succeeded, never run), the model and the model_imports row."""
    record = bundle.model
    origin = _origin(bundle)
    job = jobs.add_imported(session, dataset_id=dataset.id, outputs=_job_outputs(bundle, stored),
                            params=TrainParams(config=record["config"], dataset=dataset.ref, imported_from=origin),
                            at=datetime.now(timezone.utc))
    weights = stored[record["sha256"]]
    model = ModelCheckpoint(job_id=job.id, dataset_id=dataset.id, parent_id=None, epoch=record["epoch"],
                            final=True, config=record["config"], metrics=record["metrics"],
                            artifact_uri=weights.uri, sha256=weights.sha256, size_bytes=weights.size,
                            code_version=record["code_version"], torch_version=record["torch_version"])
    session.add(model)
    session.flush()
    # The result names the model, whose row needed the job's id: so it is written last.
    jobs.imported_model(job, model.id, record["epoch"])
    session.add(ModelImport(model_id=model.id, source_registry=origin["registry"],
                            source_model_id=record["id"], source_job_id=record["job_id"],
                            source_dataset_id=record["dataset_id"], sha256=record["sha256"],
                            bundle_sha256=bundle.sha256, exported_at=parse_time(origin["exported_at"])))
    session.flush()
    return model


def _job_outputs(bundle: Bundle, stored: dict[str, StoredArtifact]) -> list[dict[str, Any]]:
    """The imported job's outputs: the plots that travelled with the bundle, and its manifest."""
    outputs = [{"name": b["name"], "kind": b["kind"], **stored[b["sha256"]].as_dict()}
               for b in bundle.manifest["blobs"] if b["role"] == "output"]
    outputs.append({"name": "bundle-manifest.json", "kind": "bundle", **stored["manifest"].as_dict()})
    return outputs


def _origin(bundle: Bundle) -> dict[str, Any]:
    """Where the model came from, kept in its job's params: ids there and the lineage."""
    m, record = bundle.manifest, bundle.model
    datasets = {d["id"]: d for d in m["datasets"]}
    return {
        "registry": m["registry"], "model_id": record["id"], "job_id": record["job_id"],
        "dataset_id": record["dataset_id"],
        "dataset": "{name}@{version}".format(**datasets[record["dataset_id"]]),
        "exported_at": m["exported_at"], "bundle_sha256": bundle.sha256,
        "lineage": [{"model_id": a["id"], "job_id": a["job_id"], "epoch": a["epoch"], "final": a["final"],
                     "sha256": a["sha256"], "dataset_id": a["dataset_id"],
                     "dataset_content_sha256": datasets[a["dataset_id"]]["content_sha256"]}
                    for a in m["models"]],
    }


def _imported(session: Session, model: ModelCheckpoint, bundle: Bundle, already: bool = False,
              dataset_reused: bool = False) -> Imported:
    record = bundle.model
    return Imported(model.id, model.job_id, model.dataset_id, model.dataset.ref, model.sha256,
                    original={"registry": bundle.manifest["registry"], "model_id": record["id"],
                              "job_id": record["job_id"], "dataset_id": record["dataset_id"]},
                    dataset_reused=dataset_reused, already=already, bundle_sha256=bundle.sha256,
                    data_included=bundle.blob_of("dataset") is not None)


def import_record(session: Session, model_id: int) -> dict[str, Any] | None:
    """Where an imported model came from (its `model_imports` row and the original lineage from
    its job's params), or None for a model trained here."""
    row = session.scalars(select(ModelImport).where(ModelImport.model_id == model_id)).first()
    if row is None:
        return None
    job = session.get(ModelCheckpoint, model_id)
    origin = job.job.params.get("imported_from", {}) if job is not None else {}
    return {"registry": row.source_registry, "model_id": row.source_model_id,
            "job_id": row.source_job_id, "dataset_id": row.source_dataset_id, "sha256": row.sha256,
            "bundle_sha256": row.bundle_sha256, "exported_at": iso(row.exported_at),
            "imported_at": iso(row.imported_at), "lineage": origin.get("lineage", [])}


def describe_import(record: dict[str, Any]) -> str:
    """'imported from REGISTRY model 42 (job 7) on 2026-12-03'."""
    day = (record.get("imported_at") or "")[:10]
    return (f"imported from {record['registry']} model {record['model_id']} (job {record['job_id']})"
            + (f" on {day}" if day else ""))
