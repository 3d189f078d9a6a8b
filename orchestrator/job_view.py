"""Jobs and sweeps as their followers see them: typed, read-only views of registry rows.

The job service (`orchestrator.jobs`) hands these out (`jobs.get`, `jobs.get_sweep`,
`jobs.watch`); the CLI, the sweep ranking and the ETA read their attributes, and `as_json()`
is the one place that decides what `--json` prints. The one staleness rule lives here too.
No SQLAlchemy at import time (a row is read through its attributes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from orchestrator.job_states import JobStatus

if TYPE_CHECKING:
    from orchestrator.registry.models import Job, Sweep


def as_utc(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes of what was stored as UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=timezone.utc)


def iso(moment: datetime | None) -> str | None:
    moment = as_utc(moment)
    return moment.isoformat() if moment else None


def silent_for_s(heartbeat: datetime | str | None, now: datetime | None = None) -> float:
    """Seconds since a heartbeat (a datetime or its ISO text); infinite when there was none."""
    if heartbeat is None:
        return float("inf")
    beat = datetime.fromisoformat(heartbeat) if isinstance(heartbeat, str) else as_utc(heartbeat)
    return ((now or datetime.now(timezone.utc)) - beat).total_seconds()  # type: ignore[operator]


def is_stale(heartbeat: datetime | str | None, timeout_s: float, now: datetime | None = None) -> bool:
    """The one rule for a worker, or a running job, that has gone quiet: no heartbeat for
    longer than `timeout_s` (a worker: `RODIN_WORKER_TIMEOUT_S`; a running job, wherever it is
    judged (the reaper, `rodin cancel`, `rodin status`): `RODIN_STALE_AFTER_S`)."""
    return silent_for_s(heartbeat, now) > timeout_s


@dataclass(frozen=True)
class JobView:
    """One job as it stood when it was read."""

    id: int
    kind: str
    status: JobStatus
    dataset: str | None  # its dataset version, `name@N`
    input_model_id: int | None
    depends_on_job_id: int | None
    sweep_id: int | None
    params: dict[str, Any]
    #: A training's {"epoch", "epochs", "train_loss", "val_chamfer", ...}; a reconstruction's
    #: or evaluation's {"done", "total"}; empty before the first report.
    progress: dict[str, Any]
    worker: str | None
    device: str | None
    attempts: int
    lost: int
    error: str | None
    model_ids: list[int]
    #: A training job's final model (keep-best or last); None otherwise.
    final_model_id: int | None
    outputs: list[dict[str, Any]]
    result: dict[str, Any] | None
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    #: The final model's metrics; read only for a sweep's jobs (`SweepView`).
    final_metrics: dict[str, Any] | None = None

    @classmethod
    def of(cls, job: Job, *, with_final_metrics: bool = False) -> JobView:
        """The view of a row (its checkpoints and dataset loaded, or loaded now)."""
        final = max((m for m in job.checkpoints if m.final), key=lambda m: m.id, default=None) \
            if job.kind == "train" else None
        return cls(
            id=job.id, kind=job.kind, status=JobStatus(job.status),
            dataset=job.dataset.ref if job.dataset else None, input_model_id=job.input_model_id,
            depends_on_job_id=job.depends_on_job_id, sweep_id=job.sweep_id, params=job.params or {},
            progress=job.progress or {}, worker=job.worker, device=job.device,
            attempts=job.attempts, lost=job.lost, error=job.error,
            model_ids=[m.id for m in job.checkpoints], final_model_id=final.id if final else None,
            outputs=job.outputs or [], result=job.result,
            created_at=as_utc(job.created_at), started_at=as_utc(job.started_at),
            finished_at=as_utc(job.finished_at), heartbeat_at=as_utc(job.heartbeat_at),
            final_metrics=(final.metrics if final else None) if with_final_metrics else None)

    @property
    def finished(self) -> bool:
        return self.status.finished

    def stale(self, stale_after_s: float, at: datetime | None = None) -> bool:
        """Running, with no heartbeat for longer than RODIN_STALE_AFTER_S (its worker is gone)."""
        return self.status is JobStatus.running and self.heartbeat_at is not None \
            and is_stale(self.heartbeat_at, stale_after_s, at)

    def steps(self) -> tuple[float | None, float | None]:
        """(done, total) of its progress: epochs of a training, else shapes."""
        p = self.progress
        if "epochs" in p:
            return p.get("epoch"), p.get("epochs")
        return p.get("done"), p.get("total")

    def eta_s(self, at: datetime | None = None) -> float | None:
        """Seconds a running job has left, from its elapsed time per epoch (or per shape) so far;
        None when it is not running or has not reported progress yet.

        The time per step is (last progress report - start) / steps done, so that the job's
        start-up counts; the seconds since that report are taken off, so the ETA counts down
        between two reports.
        """
        done, total = self.steps()
        if self.status is not JobStatus.running or not done or not total:
            return None
        since_beat = max(0.0, silent_for_s(self.heartbeat_at, at)) if self.heartbeat_at else 0.0
        if self.started_at and self.heartbeat_at:
            per_step = (silent_for_s(self.started_at, at) - since_beat) / done
        elif "seconds" in self.progress:  # no start time: the last epoch's own duration
            per_step = float(self.progress["seconds"])
        else:
            return None
        return max(0.0, per_step * (total - done) - since_beat)

    def as_json(self) -> dict[str, Any]:
        """The job as `--json` prints it (`eta_s` is added by the commands that show it)."""
        out = {
            "id": self.id, "kind": self.kind, "status": self.status.value, "dataset": self.dataset,
            "input_model_id": self.input_model_id, "depends_on_job_id": self.depends_on_job_id,
            "sweep_id": self.sweep_id, "params": self.params, "progress": self.progress,
            "worker": self.worker, "device": self.device, "attempts": self.attempts,
            "lost": self.lost, "error": self.error, "model_ids": self.model_ids,
            "final_model_id": self.final_model_id, "outputs": self.outputs, "result": self.result,
            "created_at": iso(self.created_at), "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at), "heartbeat_at": iso(self.heartbeat_at),
        }
        if self.sweep_id is not None and self.final_metrics is not None:
            out["final_metrics"] = self.final_metrics
        return out


@dataclass(frozen=True)
class SweepView:
    """A sweep and its jobs (each with its final model's metrics), in job order."""

    id: int
    dataset: str | None
    #: The swept settings, each with its values, in the order given.
    grid: dict[str, list[Any]]
    #: The settings given one value.
    fixed: dict[str, Any]
    created_at: datetime | None
    jobs: list[JobView] = field(default_factory=list)

    @classmethod
    def of(cls, sweep: Sweep, dataset: str | None, jobs: list[Job]) -> SweepView:
        return cls(id=sweep.id, dataset=dataset, grid=sweep.grid, fixed=sweep.fixed,
                   created_at=as_utc(sweep.created_at),
                   jobs=[JobView.of(job, with_final_metrics=True) for job in jobs])

    @property
    def finished(self) -> bool:
        return all(job.finished for job in self.jobs)

    def as_json(self) -> dict[str, Any]:
        """The sweep and its jobs (each with `final_metrics`) as plain JSON."""
        return {"sweep_id": self.id, "dataset": self.dataset, "grid": self.grid, "fixed": self.fixed,
                "created_at": iso(self.created_at),
                "jobs": [{**job.as_json(), "final_metrics": job.final_metrics} for job in self.jobs]}
