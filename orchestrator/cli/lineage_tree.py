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
                add_jobs(leaf, c.get("continued_by", []))

    add_jobs(root, tree["jobs"])
    return root


def forest_as_rich(tree: dict[str, Any]) -> Tree:
    """One dataset's tree of the forest (`orchestrator.lineage.build_forest`) drawn as a
    lineage is, with each job's status and checkpoint count and each model's aliases added."""
    drawn = as_rich(tree, this=0)
    _annotate(list(drawn.children), tree["jobs"])
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
        for waiting in job["waiting_jobs"]:
            sub = as_rich({"dataset": waiting["dataset"], "jobs": [waiting]}, this=0).children[0]
            _annotate([sub], [waiting])
            sub.label = f"{sub.label} [dim]waits for job {job['job_id']}[/]"
            branch.children.append(sub)
