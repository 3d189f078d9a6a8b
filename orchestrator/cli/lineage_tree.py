"""Lineages and the forest drawn as rich trees: one line per checkpoint, the jobs continued
from a checkpoint under it. Drawing only; the trees come from `orchestrator.lineage`."""


from typing import Any

from rich.markup import escape
from rich.tree import Tree

from orchestrator.cli.output import styled_status


def as_rich(tree: dict[str, Any], this: int) -> Tree:
    """A lineage (`orchestrator.lineage.lineage_tree`) drawn one line per checkpoint, with
    `this` model marked."""
    root = Tree(f"dataset [bold]{escape(tree['dataset'])}[/]")

    def add_jobs(node: Tree, jobs: list[dict[str, Any]]) -> None:
        for job in jobs:
            branch = node.add(f"job [bold]{job['job_id']}[/] on {escape(job['dataset'])}")
            for c in job["checkpoints"]:
                val = f", val {c['val_chamfer']:.5f}" if c["val_chamfer"] is not None else ""
                marks = (" [green]final[/]" if c["final"] else "") + (" [bold cyan]<- this model[/]" if c["model_id"] == this else "")
                leaf = branch.add(f"model [bold]{c['model_id']}[/] (epoch {c['epoch']}{val}){marks}")
                folded = c.get("folded")
                if folded and c.get("continued_by"):  # the lineage goes on in another job, further down
                    add_jobs(leaf.add(_folded(folded)), c["continued_by"])
                else:
                    add_jobs(leaf, c.get("continued_by", []))
                    if folded:  # ... and goes on in this job
                        branch.add(_folded(folded))
                more = c.get("continued_by_more", 0)
                if more:
                    leaf.add(f"[dim]... {more} more job{'s' if more != 1 else ''} continued from it ...[/]")

    add_jobs(root, tree["jobs"])
    return root


def _folded(folded: dict[str, int]) -> str:
    """The line that stands for the checkpoints a long lineage leaves out."""
    n, jobs = folded["checkpoints"], folded.get("jobs", 0)
    where = f" (in {jobs} more job{'s' if jobs != 1 else ''})" if jobs else ""
    return f"[dim]... {n} more checkpoint{'s' if n != 1 else ''}{where} ... (all ids: --json)[/]"


def _more_jobs(n: int, what: str) -> str:
    return f"[dim]... {n} more job{'s' if n != 1 else ''} {what} (see --depth, --roots) ...[/]"


def forest_as_rich(tree: dict[str, Any]) -> Tree:
    """One dataset's tree of the forest (`orchestrator.lineage.build_forest`) drawn as a
    lineage is, with each job's status and checkpoint count and each model's aliases added;
    where the forest's bounds left jobs out, a line says how many."""
    drawn = as_rich(tree, this=0)
    _annotate(list(drawn.children), tree["jobs"])
    if tree.get("more_jobs"):
        drawn.add(_more_jobs(tree["more_jobs"], "on this dataset"))
    return drawn


def _annotate(branches: list[Tree], jobs: list[dict[str, Any]]) -> None:
    """Add to the labels `_as_rich` drew (one branch per job, one leaf per checkpoint under it,
    and under a leaf the jobs continued from it, in order) what the forest knows beyond a
    lineage; jobs waiting for a job without a final model hang under that job."""
    for branch, job in zip(branches, jobs):
        count = job["checkpoint_count"]
        branch.label = (f"{branch.label} {styled_status(job['status'])}"
                        f" [dim]({count} checkpoint{'s' if count != 1 else ''})[/]")
        for leaf, c in zip(list(branch.children), job["checkpoints"]):
            if c["aliases"]:
                leaf.label = f"{leaf.label} [magenta]{escape(', '.join(c['aliases']))}[/]"
            _annotate(list(leaf.children), c.get("continued_by", []))
            if c.get("more_jobs"):
                leaf.add(_more_jobs(c["more_jobs"], "continued from it"))
        for waiting in job["waiting_jobs"]:
            sub = as_rich({"dataset": waiting["dataset"], "jobs": [waiting]}, this=0).children[0]
            _annotate([sub], [waiting])
            sub.label = f"{sub.label} [dim]waits for job {job['job_id']}[/]"
            branch.children.append(sub)
        if job.get("more_jobs"):
            branch.add(_more_jobs(job["more_jobs"], "waiting for it"))
