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

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from orchestrator.job_states import JobKind
from orchestrator.registry.db import session_scope
from orchestrator.registry.models import Dataset, Job, ModelAlias, ModelCheckpoint
from orchestrator.registry.queries import Ancestor, ancestors, parse_dataset_ref, resolve_dataset
from orchestrator.settings import Settings

# ------------------------------------------------------------------------------ one model

#: A lineage longer than 2 x FOLD_KEEP + 2 checkpoints is folded: its first and last FOLD_KEEP
#: checkpoints are kept (the model among the last), the ones between counted (`folded`).
FOLD_KEEP = 5
#: Jobs fine-tuned from the model that the tree lists; more are counted (`continued_by_more`).
MAX_CHILDREN = 20


def model_lineage(session: Session, model: ModelCheckpoint,
                  keep: int = FOLD_KEEP) -> tuple[list[int], dict[str, Any]]:
    """(the ancestor ids, newest first, all of them; the lineage as nested objects, see
    `lineage_tree`, folded when longer than 2 x `keep` + 2).

    Besides the ancestors, the tree holds the checkpoints its own job registered after it (a
    keep-best model is seldom the job's last epoch: the user sees what was chosen among) and the
    first checkpoint of every other job fine-tuned from it. A few queries whatever the depth:
    the ancestors come in one (a recursive CTE, `registry.queries.ancestors`), columns only."""
    chain = ancestors(session, model)
    m = ModelCheckpoint
    columns = (m.id, m.parent_id, m.job_id, m.dataset_id, m.epoch, m.final, m.metrics["val_chamfer"].as_float())
    later = [Ancestor(*row) for row in session.execute(select(*columns).where(
        m.job_id == model.job_id, m.epoch > model.epoch, m.id != model.id).order_by(m.epoch, m.id))]
    children = [Ancestor(*row) for row in session.execute(select(*columns).where(
        m.parent_id == model.id, m.job_id != model.job_id).order_by(m.id).limit(MAX_CHILDREN + 1))]
    more_children = 0
    if len(children) > MAX_CHILDREN:
        more_children = int(session.scalar(select(func.count()).select_from(m).where(
            m.parent_id == model.id, m.job_id != model.job_id)) or 0) - MAX_CHILDREN
        children = children[:MAX_CHILDREN]
    this = Ancestor(model.id, model.parent_id, model.job_id, model.dataset_id, model.epoch, model.final,
                    _float(model.metrics.get("val_chamfer")) if isinstance(model.metrics, dict) else None)
    rows = [*reversed(chain), this, *later, *children]
    refs = {id_: f"{name}@{version}" for id_, name, version in session.execute(
        select(Dataset.id, Dataset.name, Dataset.version).where(Dataset.id.in_({r.dataset_id for r in rows})))}

    def plain(a: Ancestor) -> dict[str, Any]:
        return {"id": a.id, "job_id": a.job_id, "dataset": refs.get(a.dataset_id, "?"), "epoch": a.epoch,
                "final": a.final, "val_chamfer": a.val_chamfer}

    tree = lineage_tree([plain(a) for a in reversed(chain)] + [plain(this)], [plain(c) for c in children],
                        [plain(a) for a in later], keep=keep)
    if more_children:
        _last_of_chain(tree, model.id)["continued_by_more"] = more_children
    return [a.id for a in chain], tree


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _last_of_chain(tree: dict[str, Any], model_id: int) -> dict[str, Any]:
    """The checkpoint node of `model_id` in a lineage tree."""
    pending = list(tree["jobs"])
    while pending:
        job = pending.pop()
        for c in job["checkpoints"]:
            if c["model_id"] == model_id:
                return c
            pending.extend(c.get("continued_by", []))
    raise KeyError(model_id)


def _kept(count: int, keep: int, always: set[int] = frozenset()) -> list[int]:  # type: ignore[assignment]
    """Indexes shown of `count` in a row: all when few, else the first and last `keep` and
    those in `always`."""
    if count <= 2 * keep + 2:
        return list(range(count))
    return sorted({*range(keep), *range(count - keep, count), *(i for i in always if 0 <= i < count)})


def lineage_tree(chain: list[dict[str, Any]], children: list[dict[str, Any]],
                 later: list[dict[str, Any]] | None = None, keep: int = FOLD_KEEP) -> dict[str, Any]:
    """The lineage as nested objects: dataset -> job -> its checkpoints (a list, one per line),
    and under the checkpoint a later job started from, that job (a fine-tune across datasets).

    chain: the model's ancestors, oldest first, then the model itself; children: checkpoints of
    other jobs whose parent is the model; later: checkpoints of the model's own job after it.
    Each is {"id", "job_id", "dataset", "epoch", "final"} with "val_chamfer" or "metrics".

    A long chain is folded: its first and last `keep` checkpoints are kept, and the last kept one
    before the gap says what was left out: `"folded": {"checkpoints": N, "jobs": M}` (M: jobs
    that had checkpoints only in the gap). The next kept checkpoint follows it in the same job's
    list, or hangs under it in `continued_by` when it belongs to another job. A long `later`
    is folded the same way (its final checkpoint always kept)."""
    def checkpoint(m: dict[str, Any]) -> dict[str, Any]:
        val = m["val_chamfer"] if "val_chamfer" in m else (m.get("metrics") or {}).get("val_chamfer")
        return {"model_id": m["id"], "epoch": m["epoch"], "final": m["final"], "val_chamfer": val}

    def fold(rows: list[dict[str, Any]], shown: list[int]) -> dict[int, dict[str, int]]:
        """kept index -> what was left out after it."""
        gaps: dict[int, dict[str, int]] = {}
        for a, b in zip(shown, shown[1:]):
            if b > a + 1:
                hidden = rows[a + 1:b]
                outside = {rows[a]["job_id"], rows[b]["job_id"]}
                gaps[a] = {"checkpoints": len(hidden), "jobs": len({h["job_id"] for h in hidden} - outside)}
        return gaps

    shown = _kept(len(chain), keep, {len(chain) - 1})
    gaps = fold(chain, shown)
    root: dict[str, Any] = {"dataset": chain[0]["dataset"], "jobs": []}
    jobs_here = root["jobs"]
    job: dict[str, Any] | None = None
    for i in shown:
        m = chain[i]
        if job is None or m["job_id"] != job["job_id"]:
            if job is not None:  # a new job continued from the previous job's last checkpoint
                jobs_here = job["checkpoints"][-1].setdefault("continued_by", [])
            job = {"job_id": m["job_id"], "dataset": m["dataset"], "checkpoints": []}
            jobs_here.append(job)
        job["checkpoints"].append(checkpoint(m))
        if i in gaps:
            job["checkpoints"][-1]["folded"] = gaps[i]
    if job is not None:
        this = job["checkpoints"][-1]
        if children:
            this["continued_by"] = [
                {"job_id": c["job_id"], "dataset": c["dataset"], "checkpoints": [checkpoint(c)]} for c in children]
        rest = later or []
        kept_later = _kept(len(rest), keep, {i for i, m in enumerate(rest) if m["final"]})
        later_gaps = fold(rest, kept_later)
        for i in kept_later:
            job["checkpoints"].append(checkpoint(rest[i]))
            if i in later_gaps:
                job["checkpoints"][-1]["folded"] = later_gaps[i]
    return root


# -------------------------------------------------------------------------------- forest

#: `rodin models tree`'s bounds by default: jobs continued one from another shown this many
#: levels down, and at most this many jobs at each branching (per dataset, under each
#: checkpoint, waiting for a job), the newest; and at most MAX_DRAWN jobs in all. What is left
#: out is counted where it hangs (`more_jobs`). 0 lifts a bound (`--depth 0 --roots 0`: all).
DEFAULT_DEPTH = 10
DEFAULT_ROOTS = 20
MAX_DRAWN = 500
#: Ids per IN (...) list: well inside SQLite's and PostgreSQL's limits on parameters.
CHUNK = 5000


@dataclass(frozen=True)
class Forest:
    """`rodin models tree`: the trees, how many training jobs and checkpoints the registry
    holds, and how many jobs the bounds left out (counted in the trees as `more_jobs`)."""

    trees: list[dict[str, Any]]
    jobs: int
    models: int
    hidden_jobs: int = 0
    depth: int = DEFAULT_DEPTH
    roots: int = DEFAULT_ROOTS


def forest(settings: Settings, dataset: str | None = None, *, depth: int = DEFAULT_DEPTH,
           roots: int = DEFAULT_ROOTS) -> Forest:
    """The registry as a forest, bounded (`depth`, `roots`; 0: unbounded); with `dataset` (NAME
    or NAME@V) only its branches. An unknown dataset is the one-line error of `resolve_dataset`.

    Read in a few queries whose cost grows with the training jobs, not the checkpoints: the
    jobs and where each started, then only the checkpoints of the jobs drawn."""
    with session_scope(settings) as s:
        dataset_ids = matching_datasets(s, dataset) if dataset else None
        reg = load_registry(s)
        plan = plan_forest(reg, dataset_ids, depth=depth, roots=roots)
        load_models(s, reg, plan.drawn)
    return Forest(build_forest(reg, dataset_ids, plan), len(reg.jobs), reg.model_total, plan.hidden, depth, roots)


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
    """What the forest is drawn from: every dataset and training job, where each job started,
    and (once `load_models` ran) the checkpoints the drawing shows."""

    datasets: dict[int, str]  # id -> name@version, in name and version order
    jobs: dict[int, JobRow]  # in id order
    #: job -> ("model", the model it continued from), ("job", the job it waits for) or None.
    starts: dict[int, tuple[str, int] | None] = field(default_factory=dict)
    model_jobs: dict[int, int] = field(default_factory=dict)  # a started-from model -> its job
    models: dict[int, ModelRow] = field(default_factory=dict)  # loaded: the ones drawn
    counts: dict[int, int] = field(default_factory=dict)  # job -> its checkpoints (jobs drawn)
    model_total: int = 0
    aliases: dict[int, list[str]] = field(default_factory=dict)  # model id -> its names

    def checkpoints_of(self) -> dict[int, list[ModelRow]]:
        """job id -> its loaded checkpoints, by epoch."""
        by_job: dict[int, list[ModelRow]] = defaultdict(list)
        for m in self.models.values():
            by_job[m.job_id].append(m)
        for rows in by_job.values():
            rows.sort(key=lambda m: (m.epoch, m.id))
        return by_job


def _chunks(ids: list[int]) -> list[list[int]]:
    return [ids[i:i + CHUNK] for i in range(0, len(ids), CHUNK)]


def load_registry(session: Session) -> Registry:
    """Datasets, training jobs with where each started, aliases, the count of checkpoints: five
    queries, none of which reads the checkpoints' rows but those that start a job."""
    m, parent = ModelCheckpoint, aliased(ModelCheckpoint)
    datasets = {id_: f"{name}@{version}" for id_, name, version in session.execute(
        select(Dataset.id, Dataset.name, Dataset.version).order_by(Dataset.name, Dataset.version))}
    reg = Registry(datasets, {})
    started_from: dict[int, int] = {}
    for *row, input_job in session.execute(
            select(Job.id, Job.status, Job.dataset_id, Job.input_model_id, Job.depends_on_job_id, m.job_id)
            .outerjoin(m, m.id == Job.input_model_id).where(Job.kind == JobKind.train.value).order_by(Job.id)):
        job = JobRow(*row)
        reg.jobs[job.id] = job
        if input_job is not None:
            started_from[job.id] = job.input_model_id  # type: ignore[assignment]
            reg.model_jobs[job.input_model_id] = input_job  # type: ignore[index]
    # A job without a recorded input (an imported one) starts where its first checkpoint's
    # parent lies, when that is another job's.
    first = (select(m.job_id, func.min(m.epoch).label("epoch"))
             .where(m.job_id.in_(select(Job.id).where(Job.kind == JobKind.train.value, Job.input_model_id.is_(None))))
             .group_by(m.job_id).subquery())
    for job_id, parent_id, parent_job in session.execute(
            select(m.job_id, parent.id, parent.job_id)
            .join(first, (m.job_id == first.c.job_id) & (m.epoch == first.c.epoch))
            .join(parent, parent.id == m.parent_id).where(parent.job_id != m.job_id)):
        if job_id not in started_from:
            started_from[job_id] = parent_id
            reg.model_jobs[parent_id] = parent_job
    for job in reg.jobs.values():
        if job.id in started_from:
            reg.starts[job.id] = ("model", started_from[job.id])
        elif job.depends_on_job_id in reg.jobs and job.depends_on_job_id != job.id:
            reg.starts[job.id] = ("job", job.depends_on_job_id)
        else:
            reg.starts[job.id] = None
    reg.model_total = int(session.scalar(select(func.count()).select_from(m)) or 0)
    aliases: dict[int, list[str]] = defaultdict(list)
    for name, model_id in session.execute(select(ModelAlias.name, ModelAlias.model_id).order_by(ModelAlias.name)):
        aliases[model_id].append(name)
    reg.aliases = dict(aliases)
    return reg


def load_models(session: Session, reg: Registry, job_ids: set[int]) -> None:
    """The checkpoints the drawing shows of these jobs (their final ones, those other jobs
    continued from, and a job's newest when it has no final one), and their counts."""
    m = ModelCheckpoint
    # Only the one metric the tree shows, read inside the database: a final checkpoint's
    # metrics also hold its out-of-distribution statistics, which the tree does not need.
    columns = (m.id, m.job_id, m.parent_id, m.epoch, m.final, m.metrics["val_chamfer"].as_float())
    ids = sorted(job_ids)
    started = sorted(i for i, job in reg.model_jobs.items() if job in job_ids)
    for chunk in _chunks(ids):
        reg.counts.update((j, int(n)) for j, n in session.execute(
            select(m.job_id, func.count()).where(m.job_id.in_(chunk)).group_by(m.job_id)))
        reg.models.update((row.id, ModelRow(*row)) for row in session.execute(
            select(*columns).where(m.job_id.in_(chunk), m.final.is_(True))))
    for chunk in _chunks(started):
        reg.models.update((row.id, ModelRow(*row)) for row in session.execute(select(*columns).where(m.id.in_(chunk))))
    with_final = {r.job_id for r in reg.models.values() if r.final}
    for chunk in _chunks([j for j in ids if j not in with_final and reg.counts.get(j)]):
        newest = (select(m.job_id, func.max(m.epoch).label("epoch")).where(m.job_id.in_(chunk))
                  .group_by(m.job_id).subquery())
        reg.models.update((row.id, ModelRow(*row)) for row in session.execute(
            select(*columns).join(newest, (m.job_id == newest.c.job_id) & (m.epoch == newest.c.epoch))))


@dataclass
class Plan:
    """Which jobs the bounded forest draws, and how many it leaves out under each node."""

    drawn: set[int] = field(default_factory=set)
    roots: dict[int | None, list[int]] = field(default_factory=dict)  # dataset -> root jobs drawn
    from_model: dict[int, list[int]] = field(default_factory=dict)  # model -> jobs drawn under it
    after_job: dict[int, list[int]] = field(default_factory=dict)  # job -> waiting jobs drawn
    more: dict[tuple[str, int | None], int] = field(default_factory=dict)  # ("dataset"|"model"|"job", id) -> left out
    orphans: list[int] = field(default_factory=list)  # jobs no root leads to (a cycle): drawn at the top
    hidden: int = 0


def _parent_job(reg: Registry, job_id: int) -> int | None:
    start = reg.starts.get(job_id)
    if start is None:
        return None
    return reg.model_jobs.get(start[1]) if start[0] == "model" else start[1]


def _kept_jobs(reg: Registry, dataset_ids: set[int]) -> set[int]:
    """The jobs on these datasets, with the jobs they descend from and those fine-tuned from them."""
    children: dict[int, list[int]] = defaultdict(list)
    for job_id in reg.jobs:
        parent = _parent_job(reg, job_id)
        if parent is not None:
            children[parent].append(job_id)
    here = [j.id for j in reg.jobs.values() if j.dataset_id in dataset_ids]
    kept: set[int] = set()
    for job_id in here:  # up to the root
        current: int | None = job_id
        while current is not None and current not in kept:
            kept.add(current)
            current = _parent_job(reg, current)
    pending, below = list(here), set(here)
    while pending:  # down to the leaves
        for child in children[pending.pop()]:
            if child not in below:
                below.add(child)
                pending.append(child)
    return kept | below


def plan_forest(reg: Registry, dataset_ids: set[int] | None = None, *, depth: int = 0, roots: int = 0,
                max_drawn: int = MAX_DRAWN) -> Plan:
    """Which jobs to draw: from each dataset's jobs started afresh, down `depth` levels, at most
    `roots` jobs (the newest) at each branching, `max_drawn` in all (0: no bound)."""
    kept = set(reg.jobs) if dataset_ids is None else _kept_jobs(reg, dataset_ids)
    from_model: dict[int, list[int]] = defaultdict(list)
    after_job: dict[int, list[int]] = defaultdict(list)
    all_roots: dict[int | None, list[int]] = defaultdict(list)
    for job_id in sorted(kept):
        start = reg.starts.get(job_id)
        if start is None:
            all_roots[reg.jobs[job_id].dataset_id].append(job_id)
        else:
            (from_model if start[0] == "model" else after_job)[start[1]].append(job_id)

    # Jobs under each job (through its models or waiting for it), for subtree sizes.
    under: dict[int, list[int]] = defaultdict(list)
    models_of: dict[int, list[int]] = defaultdict(list)  # job -> its models other jobs started from
    for model_id, js in sorted(from_model.items()):
        owner = reg.model_jobs.get(model_id)
        if owner is not None:
            under[owner].extend(js)
            models_of[owner].append(model_id)
    for owner, js in after_job.items():
        under[owner].extend(js)
    size: dict[int, int] = {}
    reached: set[int] = set()
    order: list[int] = []
    pending = [j for js in all_roots.values() for j in js]
    while pending:  # every job a root leads to, parents before children
        job_id = pending.pop()
        if job_id in reached:
            continue
        reached.add(job_id)
        order.append(job_id)
        pending.extend(under[job_id])
    orphans = sorted(kept - reached)
    for job_id in orphans:  # a cycle a hand-edited registry could hold: drawn from the top
        if job_id in reached:
            continue
        stack = [job_id]
        while stack:
            j = stack.pop()
            if j not in reached:
                reached.add(j)
                order.append(j)
                stack.extend(under[j])
    for job_id in reversed(order):
        size[job_id] = 1 + sum(size.get(c, 0) for c in under[job_id] if c in reached and c != job_id)

    plan = Plan()
    budget = [max_drawn if (depth or roots) and max_drawn else 0]

    def pick(js: list[int], where: tuple[str, int | None]) -> list[int]:
        """The newest `roots` of `js`, within the budget; the rest counted under `where`."""
        chosen = [j for j in js if j not in plan.drawn]
        if roots and len(chosen) > roots:
            chosen = chosen[-roots:]
        if budget[0]:
            left = max(0, budget[0] - len(plan.drawn))
            chosen = chosen[:left]
        hidden = sum(size.get(j, 1) for j in js if j not in chosen and j not in plan.drawn)
        if hidden:
            plan.more[where] = plan.more.get(where, 0) + hidden
        return chosen

    def visit(job_id: int, level: int) -> None:
        plan.drawn.add(job_id)
        for model_id in models_of.get(job_id, []):
            js = from_model[model_id]
            if depth and level >= depth:
                plan.more[("model", model_id)] = sum(size.get(j, 1) for j in js if j not in plan.drawn)
                continue
            chosen = pick(js, ("model", model_id))
            plan.from_model[model_id] = chosen
            for j in chosen:
                visit(j, level + 1)
        waiting = after_job.get(job_id, [])
        if waiting:
            if depth and level >= depth:
                plan.more[("job", job_id)] = sum(size.get(j, 1) for j in waiting if j not in plan.drawn)
                return
            chosen = pick(waiting, ("job", job_id))
            plan.after_job[job_id] = chosen
            for j in chosen:
                visit(j, level + 1)

    for dataset_id in reg.datasets:
        if all_roots.get(dataset_id):
            chosen = pick(all_roots[dataset_id], ("dataset", dataset_id))
            plan.roots[dataset_id] = chosen
            for j in chosen:
                visit(j, 1)
    # Jobs started afresh on no known dataset, and cycles: drawn at the top.
    orphans = [*(j for d, js in all_roots.items() if d not in reg.datasets for j in js), *orphans]
    for job_id in orphans:
        if job_id not in plan.drawn:
            plan.orphans.append(job_id)
            visit(job_id, 1)
    plan.hidden = len(reached) - len(plan.drawn)
    return plan


def build_forest(reg: Registry, dataset_ids: set[int] | None = None, plan: Plan | None = None) -> list[dict[str, Any]]:
    """The forest as nested objects, in the shape of `lineage_tree`: one
    {"dataset", "jobs"} per dataset version that jobs started on afresh; under each job its
    final checkpoints, the ones other jobs continued from (with those jobs under them, as
    "continued_by") and, for a job without a final model yet, its newest checkpoint. Where the
    plan's bounds left jobs out, the node they hang from says how many: `more_jobs`.

    With `dataset_ids`, only the branches that hold a job on those datasets (and those
    datasets, even without jobs). Without a plan: every job (the models must be loaded)."""
    plan = plan or plan_forest(reg, dataset_ids)
    checkpoints = reg.checkpoints_of()

    def job_node(job_id: int) -> dict[str, Any]:
        job, rows = reg.jobs[job_id], checkpoints.get(job_id, [])
        shown = [m for m in rows if m.final or m.id in plan.from_model or ("model", m.id) in plan.more]
        if not any(m.final for m in rows) and rows and rows[-1] not in shown:
            shown.append(rows[-1])
        node: dict[str, Any] = {
            "job_id": job_id, "dataset": reg.datasets.get(job.dataset_id or -1, "?"),
            "status": job.status, "checkpoint_count": reg.counts.get(job_id, 0),
            "checkpoints": [checkpoint_node(m) for m in sorted(shown, key=lambda m: (m.epoch, m.id))],
            "waiting_jobs": [job_node(j) for j in plan.after_job.get(job_id, [])],
        }
        if plan.more.get(("job", job_id)):
            node["more_jobs"] = plan.more[("job", job_id)]
        return node

    def checkpoint_node(m: ModelRow) -> dict[str, Any]:
        node: dict[str, Any] = {"model_id": m.id, "epoch": m.epoch, "final": m.final,
                                "val_chamfer": m.val_chamfer, "aliases": reg.aliases.get(m.id, [])}
        later = [job_node(j) for j in plan.from_model.get(m.id, [])]
        if later:
            node["continued_by"] = later
        if plan.more.get(("model", m.id)):
            node["more_jobs"] = plan.more[("model", m.id)]
        return node

    # A dataset is a root where jobs started afresh on it, or where none trained yet (a
    # dataset only fine-tuned on appears under the model its jobs started from).
    trained_on = {j.dataset_id for j in reg.jobs.values()}
    forest = []
    for dataset_id, ref in reg.datasets.items():
        unused = dataset_id not in trained_on and (dataset_ids is None or dataset_id in dataset_ids)
        if dataset_id in plan.roots or unused:
            tree: dict[str, Any] = {"dataset": ref, "jobs": [job_node(j) for j in plan.roots.get(dataset_id, [])]}
            if plan.more.get(("dataset", dataset_id)):
                tree["more_jobs"] = plan.more[("dataset", dataset_id)]
            forest.append(tree)
    # A job whose start lies outside the forest (a cycle a hand-edited registry could hold) is
    # still shown, at the top level of its dataset, rather than dropped.
    for job_id in plan.orphans:
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
