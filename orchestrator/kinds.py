"""Every kind of job, declared once: its name, the Celery task that runs it, the queue it waits
on, its typed parameters and the worker-side body that does the work.

The queue's routes (orchestrator.queue), the tasks a worker registers (workers/app.py) and the
reaper's "which queue does this job wait on" (orchestrator.recovery) all read this table, the
job service checks a job's parameters against it when it registers the job, and the bodies read
them back typed; so a new kind of job is one row here (with its parameters' class), one
`JobKind` member and one body in `workers/`. The body is
named by its import path: the core never imports `workers`. No Celery here (the CLI reads it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

from orchestrator.job_states import JobKind

_P = TypeVar("_P", bound="JobParams")
#: A field whose None is stored (it means something), not left out.
KEEP = {"keep_none": True}

TRAIN_QUEUE = "train"
INFER_QUEUE = "infer"
QUEUES = (TRAIN_QUEUE, INFER_QUEUE)


@dataclass(frozen=True)
class JobParams:
    """A job's parameters, stored as the JSON object `jobs.params`. A field left None is left
    out, unless None means something there (`KEEP`: "no refinement")."""

    #: Every job this one waits for (`jobs.submit(depends_on=[...])`), written by the job service.
    waits_for: list[int] | None = None

    def to_json(self) -> dict[str, Any]:
        kept = {f.name for f in fields(self) if f.metadata.get("keep_none")}
        return {k: v for k, v in asdict(self).items() if v is not None or k in kept}

    @classmethod
    def from_json(cls: type[_P], values: dict[str, Any] | None) -> _P:
        """The parameters of a stored job; a key this kind does not have is a ValueError (a
        caller's bug, refused before the job is registered)."""
        values = values or {}
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"{cls.__name__} has no parameter(s) {', '.join(unknown)}")
        return cls(**values)


@dataclass(frozen=True)
class TrainParams(JobParams):
    #: The `TrainConfig`, as `TrainConfig.to_dict()` writes it (a missing key: its default).
    config: dict[str, Any] = field(default_factory=dict)
    #: The dataset version trained on, `name@N` (the row's `dataset_id` is the reference).
    dataset: str | None = None
    #: A fine-tune from a pre-trained base: the family, its key and the turn (`pretrain.Base`).
    base: dict[str, Any] | None = None
    #: A pre-training job: its family, key and recipe (`pretrain.find_or_queue_base`).
    pretrain: dict[str, Any] | None = None
    #: One combination of a sweep: the swept settings' values.
    sweep: dict[str, Any] | None = None
    #: A job imported with its model from a bundle: the original ids and lineage.
    imported_from: dict[str, Any] | None = None


@dataclass(frozen=True)
class ReconstructParams(JobParams):
    #: Uploaded inputs (name, uri, sha256); none: the model's validation shapes.
    inputs: list[dict[str, Any]] = field(default_factory=list)
    #: `atlas_core.refine.refine`'s phases ({"latent_steps", "decoder_steps"}); None: none.
    refine: dict[str, int] | None = field(default=None, metadata=KEEP)
    #: Reconstruct this other model's validation shapes instead (`rodin models compare`).
    validation_of: int | None = None


@dataclass(frozen=True)
class EvaluateParams(JobParams):
    #: Another dataset version to score on, `name@N`; None: the model's validation split.
    dataset: str | None = field(default=None, metadata=KEEP)
    refine: dict[str, int] | None = field(default=None, metadata=KEEP)


@dataclass(frozen=True)
class IngestParams(JobParams):
    """One part of a collection read by a worker (`rodin datasets add --on-workers`)."""

    #: Where the collection lives, readable by every worker: a folder they all mount, or an
    #: fsspec URL (`s3://bucket/prefix`).
    root: str = ""
    #: This part's files, relative to `root`, and the seed each is sampled with.
    files: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    points: int = 5000


@dataclass(frozen=True)
class AssembleParams(JobParams):
    """Register a dataset version from its parts' shapes once every part has succeeded."""

    name: str = ""
    root: str = ""
    #: The part jobs, in file order.
    parts: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class MemberParams(JobParams):
    """Machine `node` of one attempt of a `--nodes` training job: what its ranks need to join
    rank 0, published by rank 0 (workers/train_job.py). Blobs are [uri, sha256]."""

    #: The training job, and the attempt of it that this member joins (a later attempt makes
    #: its own members; a member of an attempt that has ended ends at its claim).
    train_job: int = 0
    attempt: int = 0
    node: int = 0
    #: Where rank 0's c10d store listens.
    master_addr: str = ""
    master_port: int = 0
    #: The training job's config, its device set by the worker that runs the member.
    config: dict[str, Any] = field(default_factory=dict)
    dataset: list[str] = field(default_factory=list)
    resume: list[str] | None = None
    start_from: list[str] | None = None
    #: How long a collective waits for the other ranks.
    timeout_s: float = 1800.0


@dataclass(frozen=True)
class KindSpec:
    """One kind of job."""

    kind: JobKind
    #: The queue its messages go to: `train` (GPU workers) or `infer` (any worker).
    queue: str
    #: `module:function` of its body: (settings, store, lease, device) -> None, run by a worker.
    body: str
    #: What its `jobs.params` hold.
    params: type[JobParams]

    @property
    def task(self) -> str:
        """The Celery task name its messages carry."""
        return f"rodin.{self.kind.value}"


KINDS: dict[JobKind, KindSpec] = {spec.kind: spec for spec in (
    KindSpec(JobKind.train, TRAIN_QUEUE, "workers.train_job:run_train", TrainParams),
    KindSpec(JobKind.reconstruct, INFER_QUEUE, "workers.reconstruct_job:run_reconstruct", ReconstructParams),
    KindSpec(JobKind.evaluate, INFER_QUEUE, "workers.evaluate_job:run_evaluate", EvaluateParams),
    KindSpec(JobKind.ingest, INFER_QUEUE, "workers.ingest_job:run_ingest", IngestParams),
    KindSpec(JobKind.assemble, INFER_QUEUE, "workers.ingest_job:run_assemble", AssembleParams),
    KindSpec(JobKind.member, TRAIN_QUEUE, "workers.member_job:run_member", MemberParams),
)}


def spec(kind: str | JobKind) -> KindSpec:
    """The declaration of a kind, by its name or member; KeyError for an unknown one."""
    return KINDS[JobKind(kind)]
