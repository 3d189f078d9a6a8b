"""SQLAlchemy 2.0 models of the registry. Only Alembic migrations change the schema."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from orchestrator.job_states import JobKind, JobStatus

__all__ = ["Base", "JobKind", "JobStatus"]  # the states are the job service's (job_states); kept here for importers

# Explicit constraint names so that SQLite and PostgreSQL migrations agree with the models.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Dataset(Base):
    """One immutable version of a named collection of shapes (`name@version`)."""

    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_datasets_name_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[int] = mapped_column(Integer)
    #: sha256 over the shapes' source contents, in order: equal content, equal hash.
    content_sha256: Mapped[str] = mapped_column(String(64))
    shape_count: Mapped[int] = mapped_column(Integer)
    points_per_shape: Mapped[int] = mapped_column(Integer)
    #: Where the shapes came from, e.g. "procedural swords (count=1000, seed=0)" or a folder.
    source: Mapped[str] = mapped_column(Text)
    #: Files that were refused at ingestion, with their reasons: [{"file": ..., "reason": ...}].
    skipped: Mapped[list[dict[str, str]]] = mapped_column(JSON, default=list)
    artifact_uri: Mapped[str] = mapped_column(Text)
    artifact_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


class Job(Base):
    """A unit of queued work. The registry, not Celery's result backend, owns its state."""

    __tablename__ = "jobs"
    #: The reaper's periodic reads (orchestrator/recovery.py), every 5 s on every worker: running
    #: jobs silent since a moment, and the jobs waiting jobs depend on. With the status first,
    #: each is a range of one index, whatever the number of finished jobs (the plans:
    #: tests/orchestrator/test_registry_scale.py, `python -m benchmarks.scale registry`).
    __table_args__ = (
        Index("ix_jobs_status_heartbeat_at", "status", "heartbeat_at"),
        Index("ix_jobs_status_depends_on_job_id", "status", "depends_on_job_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True, default=JobStatus.queued.value)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id"), index=True)
    #: The registered model this job starts from (fine-tuning) or runs (reconstruction).
    input_model_id: Mapped[int | None] = mapped_column(
        ForeignKey("models.id", use_alter=True), index=True
    )
    #: The job this one waits for (a fine-tune for its pre-training): sent to the queue when that
    #: job succeeds, failed with the reason when it fails or is cancelled.
    depends_on_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), index=True)
    #: The sweep this job is one combination of (`rodin submit sweep`), if any.
    sweep_id: Mapped[int | None] = mapped_column(ForeignKey("sweeps.id"), index=True)
    celery_task_id: Mapped[str | None] = mapped_column(String(64))
    worker: Mapped[str | None] = mapped_column(String(255))
    device: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: Attempts that ended without finishing the job: its worker died, or its job process did.
    #: At RODIN_MAX_ATTEMPTS the job fails instead of running again.
    lost: Mapped[int] = mapped_column(Integer, default=0)
    #: The running attempt's fencing token: only the holder may register checkpoints, report
    #: progress or finish the job. None while the job is not running.
    lease_token: Mapped[str | None] = mapped_column(String(32))
    #: When the job's message was last handed to the broker (a queued job whose message was
    #: lost is sent again: see orchestrator.recovery).
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: Live progress, e.g. {"epoch": 3, "epochs": 20, "train_loss": ..., "val_chamfer": ...}.
    progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text)
    #: Produced artifacts: [{"name": ..., "kind": ..., "sha256": ..., "uri": ..., "size": ...}].
    outputs: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    #: What the job found, e.g. an evaluation's scores or a training's final model.
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    dataset: Mapped[Dataset | None] = relationship(foreign_keys=[dataset_id])
    input_model: Mapped[ModelCheckpoint | None] = relationship(foreign_keys=[input_model_id])
    checkpoints: Mapped[list[ModelCheckpoint]] = relationship(
        back_populates="job",
        foreign_keys="ModelCheckpoint.job_id",
        order_by="ModelCheckpoint.id",
    )


class ModelCheckpoint(Base):
    """One registered checkpoint: the only thing reconstruction may load weights from."""

    __tablename__ = "models"
    #: One checkpoint per job and epoch, whatever two workers or a retried write attempt.
    __table_args__ = (UniqueConstraint("job_id", "epoch", name="uq_models_job_id_epoch"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"), index=True)
    #: The checkpoint whose weights this one continued from (None for a fresh start).
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"), index=True)
    epoch: Mapped[int] = mapped_column(Integer)
    final: Mapped[bool] = mapped_column(Boolean, default=False)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    artifact_uri: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    code_version: Mapped[str] = mapped_column(String(64))
    torch_version: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    job: Mapped[Job] = relationship(back_populates="checkpoints", foreign_keys=[job_id])
    dataset: Mapped[Dataset] = relationship(foreign_keys=[dataset_id])
    parent: Mapped[ModelCheckpoint | None] = relationship(remote_side=[id])


class Sweep(Base):
    """A grid of training settings on one dataset: one job per combination (`rodin submit sweep`)."""

    __tablename__ = "sweeps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"), index=True)
    #: The settings that vary, as given: {"n_patches": [1, 5, 25], "template": ["square", "sphere"]}.
    grid: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: The settings shared by every combination (the other flags), by TrainConfig field name.
    fixed: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ModelImport(Base):
    """Where an imported model came from (`rodin models import`): its ids, registry and sha256
    in the registry that exported it."""

    __tablename__ = "model_imports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: The model as registered here.
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), unique=True)
    source_registry: Mapped[str] = mapped_column(Text)
    source_model_id: Mapped[int] = mapped_column(Integer)
    source_job_id: Mapped[int] = mapped_column(Integer)
    source_dataset_id: Mapped[int] = mapped_column(Integer)
    #: The weights' sha256 (the same here and there: content-addressed).
    sha256: Mapped[str] = mapped_column(String(64))
    #: The archive it came in, and when it was exported and imported.
    bundle_sha256: Mapped[str] = mapped_column(String(64))
    exported_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    imported_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ModelAlias(Base):
    """A name for a model (`swords-best`), usable wherever a model id is (`--model swords-best`)."""

    __tablename__ = "model_aliases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ModelAliasEvent(Base):
    """An alias set, moved or removed: its history (`rodin models tags NAME`)."""

    __tablename__ = "model_alias_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    from_model_id: Mapped[int | None] = mapped_column(Integer)  # None: newly set
    to_model_id: Mapped[int | None] = mapped_column(Integer)  # None: removed
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Worker(Base):
    """A live (or recently live) worker process, kept fresh by its heartbeat."""

    __tablename__ = "workers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255), unique=True)
    pid: Mapped[int] = mapped_column(Integer)
    queues: Mapped[str] = mapped_column(String(255))
    device: Mapped[str] = mapped_column(String(64))
    current_job_id: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_heartbeat: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
