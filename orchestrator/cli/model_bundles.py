"""`rodin models export` and `rodin models import`: a model with its lineage in one file, for
another registry (the format is described in orchestrator/bundles/__init__.py)."""


from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from orchestrator.cli.context import settings, store
from orchestrator.cli.output import Json, emit_json, err

app = typer.Typer()


@app.command("export")
def export(
    model_ref: Annotated[str, typer.Argument(metavar="ID|ALIAS", help="The model to export.", show_default=False)],
    file: Annotated[Path, typer.Argument(metavar="FILE", help="The bundle to write, e.g. swords-best.rodin.",
                                         show_default=False)],
    data: Annotated[bool | None, typer.Option(
        "--data/--no-data", help="Include the dataset's point clouds (default: when at most 64 MiB), "
        "so that `rodin reconstruct` without inputs and `rodin evaluate` work where it is imported.",
        show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace FILE if it exists.")] = False,
    as_json: Json = False,
) -> None:
    """Write a model, its weights, metrics and lineage back to the data into one FILE that
    `rodin models import` registers elsewhere."""
    from orchestrator.bundles import export_bundle

    done = export_bundle(settings(), store(), model_ref, file, include_data=data, overwrite=force)
    if as_json:
        emit_json(done.as_dict())
        return
    data_note = "with" if done.data_included else "without"
    err.print(f"Exported model {done.model_id} ({len(done.lineage)} ancestors, {data_note} the dataset's "
              f"point clouds) to {escape(str(file))}: {done.size / 1e6:.1f} MB, sha256 {done.sha256[:12]}.",
              highlight=False)


@app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="A bundle written by `rodin models export`.",
                                         show_default=False)],
    as_json: Json = False,
) -> None:
    """Register a model bundle here (new ids; the original ones are kept), after checking every
    sha256; a tampered or truncated FILE is refused and nothing is written."""
    from orchestrator.bundles import import_bundle

    done = import_bundle(settings(), store(), file)
    if as_json:
        emit_json(done.as_dict())
        return
    o = done.original
    if done.already:
        err.print(f"Already registered: model {done.model_id} holds these weights (sha256 "
                  f"{done.sha256[:12]}); nothing imported.", highlight=False)
        return
    reused = " (reused)" if done.dataset_reused else ""
    err.print(f"Imported model {o['model_id']} (job {o['job_id']}) of {escape(o['registry'])} as model "
              f"[bold]{done.model_id}[/] (job {done.job_id}, dataset {escape(done.dataset)}{reused}).",
              highlight=False)
