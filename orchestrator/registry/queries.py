"""Registry queries shared by the CLI and the workers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from orchestrator.errors import UserInputError
from orchestrator.job_view import is_stale, silent_for_s
from orchestrator.job_view import iso as _iso
from orchestrator.registry.models import Dataset, Job, ModelCheckpoint, Sweep, Worker


def parse_dataset_ref(ref: str) -> tuple[str, int | None]:
    """`swords` -> ("swords", None); `swords@3` -> ("swords", 3)."""
    name, _, version = ref.partition("@")
    # ASCII digits only: str.isdigit() also accepts '²' and other digits int() refuses, and a
    # version beyond 64 bits would overflow the database driver.
    if not name or (version and not (version.isascii() and version.isdigit() and len(version) <= 19
                                     and int(version) < 2**63)):
        raise UserInputError(f"dataset {ref!r} is not NAME or NAME@VERSION (e.g. swords@2)")
    return name, int(version) if version else None


def resolve_dataset(session: Session, ref: str) -> Dataset:
    """A registered dataset version; a bare name means its newest version."""
    name, version = parse_dataset_ref(ref)
    query = select(Dataset).where(Dataset.name == name)
    if version is None:
        dataset = session.scalars(query.order_by(Dataset.version.desc()).limit(1)).first()
    else:
        dataset = session.scalars(query.where(Dataset.version == version)).first()
    if dataset is None:
        known = session.scalars(select(Dataset.name).distinct().order_by(Dataset.name)).all()
        hint = f"known: {', '.join(known)}" if known else "none registered yet"
        raise UserInputError(
            f"dataset {ref!r} is not registered ({hint}); create it with "
            "`rodin datasets make swords` or `rodin datasets add NAME PATH`"
        )
    return dataset


def next_dataset_version(session: Session, name: str) -> int:
    current = session.scalar(select(func.max(Dataset.version)).where(Dataset.name == name))
    return (current or 0) + 1


def get_model(session: Session, model_id: int) -> ModelCheckpoint:
    model = session.get(ModelCheckpoint, model_id)
    if model is None:
        newest = session.scalar(select(func.max(ModelCheckpoint.id)))
        hint = f"newest is {newest}" if newest else "none registered yet"
        raise UserInputError(
            f"model {model_id} is not registered ({hint}); list models with `rodin models list`"
        )
    return model


def get_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise UserInputError(f"job {job_id} does not exist; list jobs with `rodin status`")
    return job


@dataclass(frozen=True)
class Ancestor:
    """One checkpoint of a lineage, as much as drawing it needs."""

    id: int
    parent_id: int | None
    job_id: int
    dataset_id: int
    epoch: int
    final: bool
    val_chamfer: float | None


def ancestors(session: Session, model: ModelCheckpoint) -> list[Ancestor]:
    """The model's ancestors, nearest first, back to the first checkpoint, in ONE query (a
    recursive CTE, which SQLite and PostgreSQL both run): a lineage 1,000 checkpoints deep is
    not 1,000 round trips. A cycle (which only a hand-edited registry could hold) ends the walk
    where it closes: UNION (not UNION ALL) drops a row met again, and the chain is put in order
    here from the parent links."""
    if model.parent_id is None:
        return []
    m = ModelCheckpoint
    columns = (m.id, m.parent_id, m.job_id, m.dataset_id, m.epoch, m.final,
               m.metrics["val_chamfer"].as_float().label("val_chamfer"))
    chain = select(*columns).where(m.id == model.parent_id).cte("chain", recursive=True)
    up = aliased(ModelCheckpoint)
    chain = chain.union(select(up.id, up.parent_id, up.job_id, up.dataset_id, up.epoch, up.final,
                               up.metrics["val_chamfer"].as_float()).join(chain, up.id == chain.c.parent_id))
    rows = {row.id: Ancestor(*row) for row in session.execute(select(chain))}
    ordered: list[Ancestor] = []
    seen = {model.id}
    parent_id: int | None = model.parent_id
    while parent_id is not None and parent_id in rows and parent_id not in seen:
        seen.add(parent_id)
        ordered.append(rows[parent_id])
        parent_id = rows[parent_id].parent_id
    return ordered


def lineage(session: Session, model: ModelCheckpoint) -> list[int]:
    """Ancestor model ids, nearest first, back to the first checkpoint (one query: `ancestors`)."""
    return [a.id for a in ancestors(session, model)]


def newest_checkpoint(session: Session, job_id: int) -> ModelCheckpoint | None:
    return session.scalars(
        select(ModelCheckpoint)
        .where(ModelCheckpoint.job_id == job_id)
        .order_by(ModelCheckpoint.epoch.desc(), ModelCheckpoint.id.desc())
        .limit(1)
    ).first()


def live_workers(session: Session, timeout_s: float) -> list[Worker]:
    workers = session.scalars(select(Worker).where(Worker.stopped_at.is_(None))).all()
    return [w for w in workers if not is_stale(w.last_heartbeat, timeout_s)]


def worker_rows(session: Session, timeout_s: float, include_gone: bool = False) -> list[dict[str, Any]]:
    """The workers table as `rodin workers` shows it; live ones first, newest heartbeat first."""
    now = datetime.now(timezone.utc)
    rows = []
    for w in session.scalars(select(Worker)).all():
        silent = silent_for_s(w.last_heartbeat, now)
        state = "stopped" if w.stopped_at else ("stale" if is_stale(w.last_heartbeat, timeout_s, now) else "live")
        if state != "live" and not include_gone:
            continue
        job = session.get(Job, w.current_job_id) if w.current_job_id else None
        rows.append({
            "hostname": w.hostname,
            "state": state,
            "pid": w.pid,
            "queues": w.queues,
            "device": w.device,
            # For a silent worker: the job it was running when it went quiet.
            "current_job_id": w.current_job_id,
            "current_job_kind": job.kind if job is not None else None,
            "last_heartbeat": _iso(w.last_heartbeat),
            "heartbeat_age_s": round(silent, 1),
            "started_at": _iso(w.started_at),
            "stopped_at": _iso(w.stopped_at),
        })
    order = {"live": 0, "stale": 1, "stopped": 2}
    rows.sort(key=lambda r: (order[str(r["state"])], r["heartbeat_age_s"], str(r["hostname"])))
    return rows


def get_sweep(session: Session, sweep_id: int) -> Sweep:
    sweep = session.get(Sweep, sweep_id)
    if sweep is None:
        newest = session.scalar(select(func.max(Sweep.id)))
        hint = f"newest is {newest}" if newest else "none yet: `rodin submit sweep --help`"
        raise UserInputError(f"sweep {sweep_id} does not exist ({hint})")
    return sweep


def model_summary(session: Session, model: ModelCheckpoint) -> dict[str, Any]:
    return {
        "id": model.id,
        "job_id": model.job_id,
        "dataset": model.dataset.ref,
        "epoch": model.epoch,
        "final": model.final,
        "parent_id": model.parent_id,
        "sha256": model.sha256,
        "size_bytes": model.size_bytes,
        "artifact_uri": model.artifact_uri,
        "metrics": model.metrics,
        "config": model.config,
        "code_version": model.code_version,
        "torch_version": model.torch_version,
        "created_at": _iso(model.created_at),
    }


def dataset_summary(dataset: Dataset) -> dict[str, Any]:
    return {
        "id": dataset.id,
        "name": dataset.name,
        "version": dataset.version,
        "ref": dataset.ref,
        "shapes": dataset.shape_count,
        "points_per_shape": dataset.points_per_shape,
        "content_sha256": dataset.content_sha256,
        "source": dataset.source,
        "skipped": dataset.skipped,
        "artifact_uri": dataset.artifact_uri,
        "created_at": _iso(dataset.created_at),
    }
