"""`rodin models tree`: the whole registry as a forest, dataset -> job -> final model -> the
jobs fine-tuned from it (across datasets), drawn like the lineage of `rodin models show`
(the forest itself: `orchestrator.lineage`)."""


from typing import Annotated

import typer

from orchestrator.cli.context import settings
from orchestrator.cli.lineage_tree import forest_as_rich
from orchestrator.cli.output import Json, console, emit_json

app = typer.Typer()


@app.command("tree")
def tree(
    dataset: Annotated[str | None, typer.Option(
        "--dataset", "-d", help="Only the branches with a job on NAME (any version) or NAME@V.",
        show_default=False)] = None,
    as_json: Json = False,
) -> None:
    """Every dataset, its training jobs, their final models and the jobs fine-tuned from them
    (across datasets), as one forest."""
    from orchestrator.lineage import forest

    found = forest(settings(), dataset)
    if as_json:
        emit_json({"datasets": found.trees, "jobs": found.jobs, "models": found.models})
        return
    if not found.trees:
        console.print("No datasets yet: `rodin datasets make swords`.")
        return
    for one in found.trees:
        console.print(forest_as_rich(one))
