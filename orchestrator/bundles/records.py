"""A bundle's manifest checked as records: every field of the type it must have, the models a
lineage (each one's parent the next), their jobs and datasets listed, and the blobs one weights
blob (the model's sha256 and size), at most one dataset blob and the job's outputs."""

from __future__ import annotations

from typing import Any

from orchestrator.bundles.format import HEX64, Invalid, parse_time


def _get(record: Any, key: str, kind: type | tuple[type, ...], what: str) -> Any:
    """record[key] if it is of `kind` (a bool is not an int here), else the refusal."""
    value = record.get(key) if isinstance(record, dict) else None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise Invalid(f"{what} has no valid {key!r}")
    return value


def _sha(record: Any, key: str, what: str) -> str:
    value = _get(record, key, str, what)
    if not HEX64.fullmatch(value):
        raise Invalid(f"{what}'s {key!r} is not a sha256")
    return value


def _short(record: Any, key: str, what: str, limit: int) -> str:
    value = _get(record, key, str, what)
    if not 0 < len(value) <= limit:
        raise Invalid(f"{what}'s {key!r} is empty or longer than {limit} characters")
    return value


def _by_id(records: Any, what: str) -> dict[int, dict[str, Any]]:
    if not isinstance(records, list) or not records:
        raise Invalid(f"the manifest lists no {what}")
    found: dict[int, dict[str, Any]] = {}
    for record in records:
        record_id = _get(record, "id", int, what[:-1])
        if record_id in found:
            raise Invalid(f"{what[:-1]} {record_id} is listed twice")
        found[record_id] = record
    return found


def check_records(manifest: dict[str, Any]) -> None:
    """The manifest's records are complete and consistent: each model's parent is the next one,
    the last has none, every model's job and dataset is listed, and the weights' blob is the
    model's sha256 and size."""
    _get(manifest, "registry", str, "the manifest")
    parse_time(_get(manifest, "exported_at", str, "the manifest"))
    models = list(_by_id(manifest.get("models"), "models").values())  # in the manifest's order
    jobs, datasets = _by_id(manifest.get("jobs"), "jobs"), _by_id(manifest.get("datasets"), "datasets")
    for job_id, job in jobs.items():
        _get(job, "kind", str, f"job {job_id}")
        _get(job, "params", dict, f"job {job_id}")
    for dataset_id, ds in datasets.items():
        what = f"dataset {dataset_id}"
        name = _short(ds, "name", what, 128)
        if "@" in name:
            raise Invalid(f"{what}'s name {name[:40]!r} holds '@'")
        for key in ("version", "shape_count", "points_per_shape"):
            _get(ds, key, int, what)
        _get(ds, "source", str, what)
        _get(ds, "skipped", list, what)
        _get(ds, "artifact_uri", str, what)
        _sha(ds, "content_sha256", what)
        _sha(ds, "artifact_sha256", what)
    if _get(manifest, "model_id", int, "the manifest") != models[0]["id"]:
        raise Invalid("the manifest's model_id is not its first model")
    for i, model in enumerate(models):
        _check_model(model, models[i + 1]["id"] if i + 1 < len(models) else None, jobs, datasets)
    _check_blobs(manifest, models[0], datasets[models[0]["dataset_id"]])


def _check_model(model: dict[str, Any], parent: int | None, jobs: dict[int, Any],
                 datasets: dict[int, Any]) -> None:
    what = f"model {model['id']}"
    if _get(model, "parent_id", (int, type(None)), what) != parent:
        raise Invalid(f"{what}'s parent is not the next model of the lineage")
    if _get(model, "job_id", int, what) not in jobs:
        raise Invalid(f"{what}'s job is not listed")
    if _get(model, "dataset_id", int, what) not in datasets:
        raise Invalid(f"{what}'s dataset is not listed")
    _get(model, "epoch", int, what)
    _get(model, "final", bool, what)
    _get(model, "config", dict, what)
    _get(model, "metrics", dict, what)
    _sha(model, "sha256", what)
    if _get(model, "size_bytes", int, what) < 0:
        raise Invalid(f"{what}'s size_bytes is negative")
    _short(model, "code_version", what, 64)
    _short(model, "torch_version", what, 64)


def _check_blobs(manifest: dict[str, Any], model: dict[str, Any], dataset: dict[str, Any]) -> None:
    blobs = manifest.get("blobs")
    if not isinstance(blobs, list):
        raise Invalid("the manifest lists no blobs")
    seen: dict[str, str] = {}
    for blob in blobs:
        digest = _sha(blob, "sha256", "a blob")
        role = _get(blob, "role", str, f"blob {digest[:12]}…")
        if _get(blob, "size", int, f"blob {digest[:12]}…") < 0 or digest in seen:
            raise Invalid(f"blob {digest[:12]}… is listed twice or with a negative size")
        if role == "output":
            _short(blob, "name", f"blob {digest[:12]}…", 255)
            _get(blob, "kind", str, f"blob {digest[:12]}…")
        seen[digest] = role
    roles = list(seen.values())
    if any(r not in ("weights", "dataset", "shard", "output") for r in roles) or roles.count("weights") != 1 \
            or roles.count("dataset") > 1 or ("shard" in roles and "dataset" not in roles):
        raise Invalid("the manifest's blobs are not one weights blob, at most one dataset blob (with "
                      "its shards) and outputs")
    weights = next(b for b in blobs if b["role"] == "weights")
    if (weights["sha256"], weights["size"]) != (model["sha256"], model["size_bytes"]):
        raise Invalid(f"the weights' blob is not model {model['id']}'s sha256 and size")
    data = next((b for b in blobs if b["role"] == "dataset"), None)
    if data is not None and data["sha256"] != dataset["artifact_sha256"]:
        raise Invalid(f"the dataset blob is not dataset {dataset['id']}'s point clouds")
