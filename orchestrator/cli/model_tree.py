"""`rodin models tree`: the whole registry as a forest, dataset -> job -> final model -> the
jobs fine-tuned from it (across datasets), drawn like the lineage of `rodin models show`
(the forest itself: `orchestrator.lineage`)."""


from typing import Annotated

import typer

from orchestrator.cli.context import settings
from orchestrator.cli.lineage_tree import forest_as_rich
from orchestrator.cli.output import Json, console, emit_json

#: The forest's default bounds (`orchestrator.lineage`; repeated here so that the command's
#: options are known without importing the registry: tests/orchestrator/test_tree.py checks
#: that they agree).
DEFAULT_DEPTH, DEFAULT_ROOTS, MAX_DRAWN = 10, 20, 500

app = typer.Typer()


@app.command("tree")
def tree(
    dataset: Annotated[str | None, typer.Option(
        "--dataset", "-d", help="Only the branches with a job on NAME (any version) or NAME@V.",
        show_default=False)] = None,
    depth: Annotated[int, typer.Option(
        "--depth", min=0, help="Levels of jobs continued one from another shown under each job "
                               "started afresh (0: all).")] = DEFAULT_DEPTH,
    roots: Annotated[int, typer.Option(
        "--roots", min=0, help="At most N jobs at each branching, the newest: per dataset, under "
                               f"each checkpoint, waiting for a job; {MAX_DRAWN} in all unless both "
                               "bounds are 0 (0: all).")] = DEFAULT_ROOTS,
    as_json: Json = False,
) -> None:
    """Every dataset, its training jobs, their final models and the jobs fine-tuned from them
    (across datasets), as one forest. Bounded by default (--depth, --roots): what is left out is
    counted where it hangs; `--depth 0 --roots 0` draws everything."""
    from orchestrator.lineage import forest

    found = forest(settings(), dataset, depth=depth, roots=roots)
    if as_json:
        emit_json({"datasets": found.trees, "jobs": found.jobs, "models": found.models,
                   "depth": found.depth, "roots": found.roots, "hidden_jobs": found.hidden_jobs})
        return
    if not found.trees:
        console.print("No datasets yet: `rodin datasets make swords`.")
        return
    for one in found.trees:
        console.print(forest_as_rich(one))
    if found.hidden_jobs:
        console.print(f"{found.hidden_jobs} of {found.jobs} training jobs not drawn (counted where they hang): "
                      "--depth N, --roots N, --dataset NAME, or --depth 0 --roots 0 for all.", highlight=False)
