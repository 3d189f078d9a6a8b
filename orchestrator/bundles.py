"""Portable model bundles: one registered model with its weights and its lineage in one file,
which another registry imports (`rodin models export MODEL FILE`, `rodin models import FILE`).

A bundle (format 1) is an uncompressed tar archive (weights do not compress) of regular files:

    manifest.json     the records below, and `records_sha256`: the sha256 of the rest of the
                      manifest as canonical JSON (sorted keys, no spaces)
    blobs/<sha256>    each blob, named by the sha256 of its bytes: the weights (`weights`), the
                      dataset version's cached point clouds (`dataset`, when included) and the
                      training job's plots (`output`)

The records: the exporting registry (its URL through `redact`), when, and the lineage back to
the data: `models` (the exported model first, then its ancestors, nearest first: ids, job,
dataset, parent, epoch, final, config, metrics with the OOD statistics of a final checkpoint,
sha256, size, code and torch versions), the `jobs` that made them (kind, status, params with
their configs) and their `datasets` (name@version, content sha256, source, shapes, points).

The point clouds travel by default when they are at most DATA_LIMIT_BYTES (64 MiB), so that on
the importing side `rodin reconstruct --model NEW` without inputs and `rodin evaluate` work;
`--data` / `--no-data` decide otherwise. An imported model without them still reconstructs
given inputs; the dataset row then records the exporter's URI, which the store refuses to read.

Reading trusts nothing: members must be `manifest.json` or `blobs/<sha256>` regular files (no
links, folders, absolute paths or `..`), every blob must hash to its name and match the record
that names it (weights: the model's sha256 and size), the records must hash to
`records_sha256` and link up (parents, jobs, datasets). These checks catch corruption,
truncation and edits; they are not a signature (whoever rewrites a manifest can rehash it).
Nothing is unpickled: weights are bytes here, loaded later by a worker with `weights_only=True`.

Importing writes the blobs first and the rows second, in one transaction: a dataset version (an
existing one with the same content sha256 is reused), a succeeded training job that never ran
(`params.imported_from` says where it came from, with the original lineage), the model (final,
no parent here: its ancestors live in the exporting registry) and its `model_imports` row. A
bundle whose weights are already registered here writes nothing and names that model.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.aliases import resolve_model
from orchestrator.errors import UserInputError
from orchestrator.finite import finite
from orchestrator.registry.db import as_utc, session_scope
from orchestrator.registry.models import Dataset, Job, JobKind, JobStatus, ModelCheckpoint, ModelImport
from orchestrator.registry.queries import get_model, lineage, next_dataset_version
from orchestrator.settings import Settings, redact

if TYPE_CHECKING:  # fsspec stays out of `rodin models show`, which reads import records here
    from orchestrator.artifacts import ArtifactStore, StoredArtifact

FORMAT, FORMAT_VERSION = "rodin-model-bundle", 1
MANIFEST = "manifest.json"
#: Point clouds larger than this stay out of a bundle unless `--data` is given.
DATA_LIMIT_BYTES = 64 * 1024 * 1024
#: A manifest is text about one model's lineage: anything bigger is not one of ours.
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
#: A training job's plots travel up to this size each (loss curves are ~100 KB).
MAX_OUTPUT_BYTES = 8 * 1024 * 1024
HEX64 = re.compile(r"[0-9a-f]{64}")
BLOB_MEMBER = re.compile(r"blobs/([0-9a-f]{64})")
SUFFIX = {"weights": ".pt", "dataset": ".npz"}


class BundleError(UserInputError):
    """A bundle that cannot be imported: tampered, truncated, or not a rodin bundle."""


@dataclass(frozen=True)
class Bundle:
    """A bundle read and verified: its manifest, its blobs by sha256, the archive's sha256."""

    manifest: dict[str, Any]
    blobs: dict[str, bytes]
    sha256: str

    @property
    def model(self) -> dict[str, Any]:
        return self.manifest["models"][0]

    def dataset(self, dataset_id: int) -> dict[str, Any]:
        return next(d for d in self.manifest["datasets"] if d["id"] == dataset_id)

    def blob_of(self, role: str) -> dict[str, Any] | None:
        return next((b for b in self.manifest["blobs"] if b["role"] == role), None)


@dataclass(frozen=True)
class Exported:
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


# ------------------------------------------------------------------------------------ export


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
    if not _wants_data(store, sources["dataset"], include_data):
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
    return Exported(path, _file_sha256(path), path.stat().st_size, manifest["model_id"],
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
            "torch_version": m.torch_version, "created_at": _iso(m.created_at)}


def _job_record(j: Job) -> dict[str, Any]:
    return {"id": j.id, "kind": j.kind, "status": j.status, "dataset_id": j.dataset_id,
            "input_model_id": j.input_model_id, "params": j.params, "result": j.result,
            "created_at": _iso(j.created_at), "finished_at": _iso(j.finished_at)}


def _dataset_record(d: Dataset) -> dict[str, Any]:
    return {"id": d.id, "name": d.name, "version": d.version, "ref": d.ref,
            "content_sha256": d.content_sha256, "shape_count": d.shape_count,
            "points_per_shape": d.points_per_shape, "source": d.source, "skipped": d.skipped,
            "artifact_uri": redact(d.artifact_uri), "artifact_sha256": d.artifact_sha256,
            "created_at": _iso(d.created_at)}


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


def _wants_data(store: ArtifactStore, dataset: list[dict[str, Any]], include: bool | None) -> bool:
    from orchestrator.artifacts import ArtifactError

    if include is not None:
        return include
    try:  # the size, without reading the blob: a dataset may be gigabytes
        size = int(store.fs.size(store._local_path(dataset[0]["uri"])))
    except (ArtifactError, OSError):
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


def canonical(obj: Any) -> bytes:
    """The one JSON encoding of a manifest that its hash is taken over."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False, default=str).encode()


def records_sha256(manifest: dict[str, Any]) -> str:
    return _sha256(canonical({k: v for k, v in manifest.items() if k != "records_sha256"}))


# -------------------------------------------------------------------------------------- read


def read_bundle(path: Path) -> Bundle:
    """A bundle whose members, records and blobs are all verified; else BundleError (one line,
    naming the file and what is wrong)."""
    if not path.is_file():
        raise UserInputError(f"bundle {path} does not exist (or is not a file)")
    try:
        digest = _file_sha256(path)
        with tarfile.open(path, "r:") as tar:
            members = _members(tar)
            manifest = _read_manifest(tar, members)
            check_records(manifest)
            blobs = _read_blobs(tar, members, manifest)
    except _Invalid as exc:
        raise BundleError(f"refused {path}: {exc}; nothing was imported") from None
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BundleError(f"refused {path}: not a complete tar archive (truncated or corrupt: {exc}); "
                          "nothing was imported") from None
    return Bundle(manifest, blobs, digest)


class _Invalid(Exception):
    """Why a bundle is refused (the caller adds the file's name)."""


def _members(tar: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    """The archive's members by name, each a regular file named as the format says."""
    found: dict[str, tarfile.TarInfo] = {}
    for member in tar:
        name = member.name
        if name.startswith("/") or ".." in name.replace("\\", "/").split("/"):
            raise _Invalid(f"member {name[:80]!r} points outside the archive (absolute path or '..')")
        if name != MANIFEST and not BLOB_MEMBER.fullmatch(name):
            raise _Invalid(f"unexpected member {name[:80]!r} (a bundle holds {MANIFEST} and blobs/<sha256>)")
        if not member.isreg():
            raise _Invalid(f"member {name[:80]!r} is not a regular file (a link, folder or device)")
        if name in found:
            raise _Invalid(f"member {name[:80]!r} appears twice")
        found[name] = member
    if MANIFEST not in found:
        raise _Invalid(f"no {MANIFEST}: not a rodin model bundle (or truncated)")
    return found


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(member)
    data = handle.read() if handle is not None else b""
    if len(data) != member.size:
        raise _Invalid(f"member {member.name[:80]!r} is cut short (truncated archive)")
    return data


def _read_manifest(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo]) -> dict[str, Any]:
    member = members[MANIFEST]
    if member.size > MAX_MANIFEST_BYTES:
        raise _Invalid(f"{MANIFEST} is {member.size} bytes, more than a bundle's {MAX_MANIFEST_BYTES}")
    try:
        manifest = json.loads(_read(tar, member))
    except (UnicodeDecodeError, ValueError):
        raise _Invalid(f"{MANIFEST} is not JSON (corrupt)") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _Invalid(f"{MANIFEST} is not a rodin model bundle's")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise _Invalid(f"bundle format {version!r} is not {FORMAT_VERSION}: written by another rodin; "
                       "upgrade this one")
    if manifest.get("records_sha256") != records_sha256(manifest):
        raise _Invalid(f"{MANIFEST} does not match its records_sha256 (edited or corrupt)")
    return manifest


def _read_blobs(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo],
                manifest: dict[str, Any]) -> dict[str, bytes]:
    """Every blob the manifest lists, each checked against its size and sha256; no others."""
    listed = {b["sha256"]: b for b in manifest["blobs"]}
    present = {n.removeprefix("blobs/"): m for n, m in members.items() if n != MANIFEST}
    for digest in listed.keys() - present.keys():
        raise _Invalid(f"blob {digest[:12]}… ({listed[digest]['role']}) is missing (truncated archive?)")
    for digest in present.keys() - listed.keys():
        raise _Invalid(f"blob {digest[:12]}… is not listed in {MANIFEST}")
    blobs = {}
    for digest, record in listed.items():
        member = present[digest]
        if member.size != record["size"]:
            raise _Invalid(f"blob {digest[:12]}… ({record['role']}) is {member.size} bytes, its record "
                           f"says {record['size']} (tampered or truncated)")
        data = _read(tar, member)
        if _sha256(data) != digest:
            raise _Invalid(f"blob {digest[:12]}… ({record['role']}) does not match its sha256 "
                           "(tampered or corrupt)")
        blobs[digest] = data
    return blobs


# ----------------------------------------------------------------------------- the records


def _get(record: Any, key: str, kind: type | tuple[type, ...], what: str) -> Any:
    """record[key] if it is of `kind` (a bool is not an int here), else the refusal."""
    value = record.get(key) if isinstance(record, dict) else None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise _Invalid(f"{what} has no valid {key!r}")
    return value


def _sha(record: Any, key: str, what: str) -> str:
    value = _get(record, key, str, what)
    if not HEX64.fullmatch(value):
        raise _Invalid(f"{what}'s {key!r} is not a sha256")
    return value


def _short(record: Any, key: str, what: str, limit: int) -> str:
    value = _get(record, key, str, what)
    if not 0 < len(value) <= limit:
        raise _Invalid(f"{what}'s {key!r} is empty or longer than {limit} characters")
    return value


def _by_id(records: Any, what: str) -> dict[int, dict[str, Any]]:
    if not isinstance(records, list) or not records:
        raise _Invalid(f"the manifest lists no {what}")
    found: dict[int, dict[str, Any]] = {}
    for record in records:
        record_id = _get(record, "id", int, what[:-1])
        if record_id in found:
            raise _Invalid(f"{what[:-1]} {record_id} is listed twice")
        found[record_id] = record
    return found


def check_records(manifest: dict[str, Any]) -> None:
    """The manifest's records are complete and consistent: each model's parent is the next one,
    the last has none, every model's job and dataset is listed, and the weights' blob is the
    model's sha256 and size."""
    _get(manifest, "registry", str, "the manifest")
    _parse_time(_get(manifest, "exported_at", str, "the manifest"))
    models = list(_by_id(manifest.get("models"), "models").values())  # in the manifest's order
    jobs, datasets = _by_id(manifest.get("jobs"), "jobs"), _by_id(manifest.get("datasets"), "datasets")
    for job_id, job in jobs.items():
        _get(job, "kind", str, f"job {job_id}")
        _get(job, "params", dict, f"job {job_id}")
    for dataset_id, ds in datasets.items():
        what = f"dataset {dataset_id}"
        name = _short(ds, "name", what, 128)
        if "@" in name:
            raise _Invalid(f"{what}'s name {name[:40]!r} holds '@'")
        for key in ("version", "shape_count", "points_per_shape"):
            _get(ds, key, int, what)
        _get(ds, "source", str, what)
        _get(ds, "skipped", list, what)
        _get(ds, "artifact_uri", str, what)
        _sha(ds, "content_sha256", what)
        _sha(ds, "artifact_sha256", what)
    if _get(manifest, "model_id", int, "the manifest") != models[0]["id"]:
        raise _Invalid("the manifest's model_id is not its first model")
    for i, model in enumerate(models):
        _check_model(model, models[i + 1]["id"] if i + 1 < len(models) else None, jobs, datasets)
    _check_blobs(manifest, models[0], datasets[models[0]["dataset_id"]])


def _check_model(model: dict[str, Any], parent: int | None, jobs: dict[int, Any],
                 datasets: dict[int, Any]) -> None:
    what = f"model {model['id']}"
    if _get(model, "parent_id", (int, type(None)), what) != parent:
        raise _Invalid(f"{what}'s parent is not the next model of the lineage")
    if _get(model, "job_id", int, what) not in jobs:
        raise _Invalid(f"{what}'s job is not listed")
    if _get(model, "dataset_id", int, what) not in datasets:
        raise _Invalid(f"{what}'s dataset is not listed")
    _get(model, "epoch", int, what)
    _get(model, "final", bool, what)
    _get(model, "config", dict, what)
    _get(model, "metrics", dict, what)
    _sha(model, "sha256", what)
    if _get(model, "size_bytes", int, what) < 0:
        raise _Invalid(f"{what}'s size_bytes is negative")
    _short(model, "code_version", what, 64)
    _short(model, "torch_version", what, 64)


def _check_blobs(manifest: dict[str, Any], model: dict[str, Any], dataset: dict[str, Any]) -> None:
    blobs = manifest.get("blobs")
    if not isinstance(blobs, list):
        raise _Invalid("the manifest lists no blobs")
    seen: dict[str, str] = {}
    for blob in blobs:
        digest = _sha(blob, "sha256", "a blob")
        role = _get(blob, "role", str, f"blob {digest[:12]}…")
        if _get(blob, "size", int, f"blob {digest[:12]}…") < 0 or digest in seen:
            raise _Invalid(f"blob {digest[:12]}… is listed twice or with a negative size")
        if role == "output":
            _short(blob, "name", f"blob {digest[:12]}…", 255)
            _get(blob, "kind", str, f"blob {digest[:12]}…")
        seen[digest] = role
    roles = list(seen.values())
    if any(r not in ("weights", "dataset", "output") for r in roles) or roles.count("weights") != 1 \
            or roles.count("dataset") > 1:
        raise _Invalid("the manifest's blobs are not one weights blob, at most one dataset blob and outputs")
    weights = next(b for b in blobs if b["role"] == "weights")
    if (weights["sha256"], weights["size"]) != (model["sha256"], model["size_bytes"]):
        raise _Invalid(f"the weights' blob is not model {model['id']}'s sha256 and size")
    data = next((b for b in blobs if b["role"] == "dataset"), None)
    if data is not None and data["sha256"] != dataset["artifact_sha256"]:
        raise _Invalid(f"the dataset blob is not dataset {dataset['id']}'s point clouds")


# ------------------------------------------------------------------------------------ import


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
        if blob["role"] == "dataset" and skip_dataset:
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
    outputs = [{"name": b["name"], "kind": b["kind"], **stored[b["sha256"]].as_dict()}
               for b in bundle.manifest["blobs"] if b["role"] == "output"]
    outputs.append({"name": "bundle-manifest.json", "kind": "bundle", **stored["manifest"].as_dict()})
    now = datetime.now(timezone.utc)
    job = Job(kind=JobKind.train.value, status=JobStatus.succeeded.value, dataset_id=dataset.id,
              params={"config": record["config"], "dataset": dataset.ref, "imported_from": origin},
              outputs=outputs, progress={}, result={}, created_at=now, finished_at=now)
    session.add(job)
    session.flush()
    weights = stored[record["sha256"]]
    model = ModelCheckpoint(job_id=job.id, dataset_id=dataset.id, parent_id=None, epoch=record["epoch"],
                            final=True, config=record["config"], metrics=record["metrics"],
                            artifact_uri=weights.uri, sha256=weights.sha256, size_bytes=weights.size,
                            code_version=record["code_version"], torch_version=record["torch_version"])
    session.add(model)
    session.flush()
    job.result = {"final_model_id": model.id, "final_epoch": record["epoch"], "imported": True}
    session.add(ModelImport(model_id=model.id, source_registry=origin["registry"],
                            source_model_id=record["id"], source_job_id=record["job_id"],
                            source_dataset_id=record["dataset_id"], sha256=record["sha256"],
                            bundle_sha256=bundle.sha256, exported_at=_parse_time(origin["exported_at"])))
    session.flush()
    return model


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


# ------------------------------------------------------------------------------ show


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
            "bundle_sha256": row.bundle_sha256, "exported_at": _iso(row.exported_at),
            "imported_at": _iso(row.imported_at), "lineage": origin.get("lineage", [])}


def describe_import(record: dict[str, Any]) -> str:
    """'imported from REGISTRY model 42 (job 7) on 2026-12-03'."""
    day = (record.get("imported_at") or "")[:10]
    return (f"imported from {record['registry']} model {record['model_id']} (job {record['job_id']})"
            + (f" on {day}" if day else ""))


# ---------------------------------------------------------------------------------- helpers


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _parse_time(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise _Invalid(f"time {text[:40]!r} is not ISO 8601") from None


def _iso(moment: datetime | None) -> str | None:
    moment = as_utc(moment)
    return moment.isoformat() if moment is not None else None


