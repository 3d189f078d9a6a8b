"""Every kind of job, declared once: its name, the Celery task that runs it, the queue it waits
on and the worker-side body that does the work.

The queue's routes (orchestrator.queue), the tasks a worker registers (workers/app.py) and the
reaper's "which queue does this job wait on" (orchestrator.recovery) all read this table, so a
new kind of job is one row here, one `JobKind` member and one body in `workers/`. The body is
named by its import path: the core never imports `workers`. No Celery here (the CLI reads it).
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.registry.models import JobKind

TRAIN_QUEUE = "train"
INFER_QUEUE = "infer"
QUEUES = (TRAIN_QUEUE, INFER_QUEUE)


@dataclass(frozen=True)
class KindSpec:
    """One kind of job."""

    kind: JobKind
    #: The queue its messages go to: `train` (GPU workers) or `infer` (any worker).
    queue: str
    #: `module:function` of its body: (settings, store, lease, device) -> None, run by a worker.
    body: str

    @property
    def task(self) -> str:
        """The Celery task name its messages carry."""
        return f"rodin.{self.kind.value}"


KINDS: dict[JobKind, KindSpec] = {spec.kind: spec for spec in (
    KindSpec(JobKind.train, TRAIN_QUEUE, "workers.train_job:run_train"),
    KindSpec(JobKind.reconstruct, INFER_QUEUE, "workers.reconstruct_job:run_reconstruct"),
    KindSpec(JobKind.evaluate, INFER_QUEUE, "workers.evaluate_job:run_evaluate"),
)}


def spec(kind: str | JobKind) -> KindSpec:
    """The declaration of a kind, by its name or member; KeyError for an unknown one."""
    return KINDS[JobKind(kind)]
