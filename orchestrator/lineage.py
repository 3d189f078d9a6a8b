"""Where models come from and what came of them: a model's lineage (its ancestors back to the
data, the checkpoints its job registered after it, the jobs fine-tuned from it) and the whole
registry as a forest (dataset -> job -> final model -> the jobs fine-tuned from it, across
datasets). Both as nested plain objects, the shape `rodin models show/tree --json` prints and
the report draws; the CLI draws them as trees.

The forest is read in four queries (datasets, training jobs, checkpoints, aliases), columns
only, then assembled in memory: it stays fast on thousands of checkpoints.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator.job_states import JobKind
from orchestrator.registry.db import session_scope
from orchestrator.registry.models import Dataset, Job, ModelAlias, ModelCheckpoint
from orchestrator.registry.queries import get_model, lineage, model_summary, parse_dataset_ref, resolve_dataset
from orchestrator.settings import Settings

# ------------------------------------------------------------------------------ one model


def model_lineage(session: Session, model: ModelCheckpoint) -> tuple[list[int], dict[str, Any]]:
    """(the ancestor ids, newest first; the lineage as nested objects, see `lineage_tree`).

    Besides the ancestors, the tree holds the checkpoints its own job registered after it (a
    keep-best model is seldom the job's last epoch: the user sees what was chosen among) and the
    first checkpoint of every other job fine-tuned from it. Each is one query, not one per
    checkpoint: a lineage may be hundreds long."""
    chain = lineage(session, model)
    loaded = {m.id: m for m in session.scalars(select(ModelCheckpoint).where(ModelCheckpoint.id.in_(chain)))}
    ancestors = [model_summary(session, loaded.get(i) or get_model(session, i)) for i in chain]
    later = [model_summary(session, m) for m in session.scalars(select(ModelCheckpoint).where(
        ModelCheckpoint.job_id == model.job_id, ModelCheckpoint.epoch > model.epoch,
        ModelCheckpoint.id != model.id).order_by(ModelCheckpoint.epoch, ModelCheckpoint.id))]
    children = [model_summary(session, c) for c in session.scalars(select(ModelCheckpoint).where(
        ModelCheckpoint.parent_id == model.id, ModelCheckpoint.job_id != model.job_id))]
    return chain, lineage_tree([*reversed(ancestors), model_summary(session, model)], children, later)


def lineage_tree(chain: list[dict[str, Any]], children: list[dict[str, Any]],
                 later: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The lineage as nested objects: dataset -> job -> its checkpoints (a list, one per line),
    and under the checkpoint a later job started from, that job (a fine-tune across datasets).

    chain: the model's ancestors, oldest first, then the model itself; children: checkpoints of
    other jobs whose parent is the model; later: checkpoints of the model's own job after it."""
    def checkpoint(m: dict[str, Any]) -> dict[str, Any]:
        return {"model_id": m["id"], "epoch": m["epoch"], "final": m["final"],
                "val_chamfer": m["metrics"].get("val_chamfer")}

    root: dict[str, Any] = {"dataset": chain[0]["dataset"], "jobs": []}
    jobs_here = root["jobs"]
    job: dict[str, Any] | None = None
    for m in chain:
        if job is None or m["job_id"] != job["job_id"]:
            if job is not None:  # a new job continued from the previous job's last checkpoint
                jobs_here = job["checkpoints"][-1].setdefault("continued_by", [])
            job = {"job_id": m["job_id"], "dataset": m["dataset"], "checkpoints": []}
            jobs_here.append(job)
        job["checkpoints"].append(checkpoint(m))
    if job is not None:
        this = job["checkpoints"][-1]
        if children:
            this["continued_by"] = [
                {"job_id": c["job_id"], "dataset": c["dataset"], "checkpoints": [checkpoint(c)]} for c in children]
        job["checkpoints"].extend(checkpoint(m) for m in later or [])
    return root


# -------------------------------------------------------------------------------- forest


@dataclass(frozen=True)
class Forest:
    """`rodin models tree`: the trees, and how many training jobs and checkpoints they come from."""

    trees: list[dict[str, Any]]
    jobs: int
    models: int


def forest(settings: Settings, dataset: str | None = None) -> Forest:
    """The registry as a forest; with `dataset` (NAME or NAME@V) only its branches. An unknown
    dataset is the one-line error of `resolve_dataset`."""
    with session_scope(settings) as s:
        reg = load_registry(s)
        dataset_ids = matching_datasets(s, dataset) if dataset else None
    return Forest(build_forest(reg, dataset_ids), len(reg.jobs), len(reg.models))


@dataclass(frozen=True)
class JobRow:
    id: int
    status: str
    dataset_id: int | None
    input_model_id: int | None
    depends_on_job_id: int | None


@dataclass(frozen=True)
class ModelRow:
    id: int
    job_id: int
    parent_id: int | None
    epoch: int
    final: bool
    val_chamfer: float | None


@dataclass
class Registry:
    """What the forest is drawn from: every dataset, training job, checkpoint and alias."""

    datasets: dict[int, str]  # id -> name@version, in name and version order
    jobs: dict[int, JobRow]  # in id order
    models: dict[int, ModelRow]  # in id order
    aliases: dict[int, list[str]] = field(default_factory=dict)  # model id -> its names

    def checkpoints_of(self) -> dict[int, list[ModelRow]]:
        """job id -> its checkpoints, by epoch."""
        by_job: dict[int, list[ModelRow]] = defaultdict(list)
        for m in self.models.values():
            by_job[m.job_id].append(m)
        for rows in by_job.values():
            rows.sort(key=lambda m: (m.epoch, m.id))
        return by_job


def load_registry(session: Session) -> Registry:
    """The registry's datasets, training jobs, checkpoints and aliases, in four queries."""
    datasets = {id_: f"{name}@{version}" for id_, name, version in session.execute(
        select(Dataset.id, Dataset.name, Dataset.version).order_by(Dataset.name, Dataset.version))}
    jobs = {row.id: JobRow(*row) for row in session.execute(
        select(Job.id, Job.status, Job.dataset_id, Job.input_model_id, Job.depends_on_job_id)
        .where(Job.kind == JobKind.train.value).order_by(Job.id))}
    # Only the one metric the tree shows, read inside the database: a final checkpoint's
    # metrics also hold its out-of-distribution statistics, which the tree does not need.
    models = {row.id: ModelRow(*row) for row in session.execute(
        select(ModelCheckpoint.id, ModelCheckpoint.job_id, ModelCheckpoint.parent_id,
               ModelCheckpoint.epoch, ModelCheckpoint.final,
               ModelCheckpoint.metrics["val_chamfer"].as_float())
        .order_by(ModelCheckpoint.id))}
    aliases: dict[int, list[str]] = defaultdict(list)
    for name, model_id in session.execute(select(ModelAlias.name, ModelAlias.model_id).order_by(ModelAlias.name)):
        aliases[model_id].append(name)
    return Registry(datasets, jobs, models, dict(aliases))


def _start_of(reg: Registry, job: JobRow, checkpoints: list[ModelRow]) -> tuple[str, int] | None:
    """Where a job hangs in the forest: ("model", id) it continued from, ("job", id) it waits
    for (a fine-tune whose pre-training has no final model yet), or None (a fresh start)."""
    if job.input_model_id in reg.models:
        return "model", job.input_model_id
    for m in checkpoints:  # an imported job, or one whose input was not recorded
        parent = reg.models.get(m.parent_id) if m.parent_id is not None else None
        if parent is not None and parent.job_id != job.id:
            return "model", parent.id
    if job.depends_on_job_id in reg.jobs and job.depends_on_job_id != job.id:
        return "job", job.depends_on_job_id
    return None


def _kept_jobs(reg: Registry, starts: dict[int, tuple[str, int] | None],
               dataset_ids: set[int]) -> set[int]:
    """The jobs on these datasets, with the jobs they descend from and those fine-tuned from them."""
    def parent_job(job_id: int) -> int | None:
        start = starts[job_id]
        if start is None:
            return None
        return reg.models[start[1]].job_id if start[0] == "model" else start[1]

    children: dict[int, list[int]] = defaultdict(list)
    for job_id in reg.jobs:
        parent = parent_job(job_id)
        if parent is not None:
            children[parent].append(job_id)
    here = [j.id for j in reg.jobs.values() if j.dataset_id in dataset_ids]
    kept: set[int] = set()
    for job_id in here:  # up to the root
        current: int | None = job_id
        while current is not None and current not in kept:
            kept.add(current)
            current = parent_job(current)
    pending, below = list(here), set(here)
    while pending:  # down to the leaves
        for child in children[pending.pop()]:
            if child not in below:
                below.add(child)
                pending.append(child)
    return kept | below


def build_forest(reg: Registry, dataset_ids: set[int] | None = None) -> list[dict[str, Any]]:
    """The forest as nested objects, in the shape of `lineage_tree`: one
    {"dataset", "jobs"} per dataset version that jobs started on afresh; under each job its
    final checkpoints, the ones other jobs continued from (with those jobs under them, as
    "continued_by") and, for a job without a final model yet, its newest checkpoint.

    With `dataset_ids`, only the branches that hold a job on those datasets (and those
    datasets, even without jobs)."""
    checkpoints = reg.checkpoints_of()
    starts = {j.id: _start_of(reg, j, checkpoints.get(j.id, [])) for j in reg.jobs.values()}
    kept = set(reg.jobs) if dataset_ids is None else _kept_jobs(reg, starts, dataset_ids)
    from_model: dict[int, list[int]] = defaultdict(list)
    after_job: dict[int, list[int]] = defaultdict(list)
    roots: dict[int | None, list[int]] = defaultdict(list)
    for job_id in sorted(kept):
        start = starts[job_id]
        if start is None:
            roots[reg.jobs[job_id].dataset_id].append(job_id)
        else:
            (from_model if start[0] == "model" else after_job)[start[1]].append(job_id)

    drawn: set[int] = set()

    def job_node(job_id: int) -> dict[str, Any]:
        drawn.add(job_id)
        job, rows = reg.jobs[job_id], checkpoints.get(job_id, [])
        shown = [m for m in rows if m.final or m.id in from_model]
        if not any(m.final for m in rows) and rows and rows[-1] not in shown:
            shown.append(rows[-1])
        return {
            "job_id": job_id, "dataset": reg.datasets.get(job.dataset_id or -1, "?"),
            "status": job.status, "checkpoint_count": len(rows),
            "checkpoints": [checkpoint_node(m) for m in sorted(shown, key=lambda m: (m.epoch, m.id))],
            "waiting_jobs": [job_node(j) for j in after_job.get(job_id, []) if j not in drawn],
        }

    def checkpoint_node(m: ModelRow) -> dict[str, Any]:
        node: dict[str, Any] = {"model_id": m.id, "epoch": m.epoch, "final": m.final,
                                "val_chamfer": m.val_chamfer, "aliases": reg.aliases.get(m.id, [])}
        later = [job_node(j) for j in from_model.get(m.id, []) if j not in drawn]
        if later:
            node["continued_by"] = later
        return node

    # A dataset is a root where jobs started afresh on it, or where none trained yet (a
    # dataset only fine-tuned on appears under the model its jobs started from).
    trained_on = {j.dataset_id for j in reg.jobs.values()}
    forest = []
    for dataset_id, ref in reg.datasets.items():
        unused = dataset_id not in trained_on and (dataset_ids is None or dataset_id in dataset_ids)
        if roots.get(dataset_id) or unused:
            forest.append({"dataset": ref, "jobs": [job_node(j) for j in roots.get(dataset_id, [])]})
    # A job whose start lies outside the forest (a cycle a hand-edited registry could hold) is
    # still shown, at the top level of its dataset, rather than dropped.
    for job_id in sorted(kept - drawn):
        if job_id not in drawn:
            forest.append({"dataset": reg.datasets.get(reg.jobs[job_id].dataset_id or -1, "?"),
                           "jobs": [job_node(job_id)]})
    return forest


def matching_datasets(session: Session, ref: str) -> set[int]:
    """Ids of NAME's versions (or of NAME@V); an unknown one is the one-line error of
    `resolve_dataset`."""
    name, version = parse_dataset_ref(ref)
    if version is not None:
        return {resolve_dataset(session, ref).id}
    ids = set(session.scalars(select(Dataset.id).where(Dataset.name == name)))
    return ids or {resolve_dataset(session, ref).id}
