"""`rodin reconstruct` and `rodin evaluate`: use a registered model, named by its id."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from orchestrator.cli.context import ID_MAX, ID_MIN, mesh_limits, registry, store
from orchestrator.cli.follow import follow, queue_job
from orchestrator.cli.output import Json, console, err
from orchestrator.errors import UserInputError
from orchestrator.registry.models import JobKind

app = typer.Typer()

Model = Annotated[int, typer.Option("--model", "-m", help="Registered model id (see `rodin models list`).",
                                    min=ID_MIN, max=ID_MAX, show_default=False)]
Wait = Annotated[bool, typer.Option("--wait", help="Follow the job until it ends; non-zero exit if it fails.")]


@app.command("reconstruct")
def reconstruct(
    model: Model,
    inputs: Annotated[list[Path] | None, typer.Argument(
        help="Mesh files; none: the model's validation shapes.", show_default=False)] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Where --wait puts the outputs (default: ./reconstructions/job-ID).",
        show_default=False)] = None,
    wait: Wait = False,
    as_json: Json = False,
) -> None:
    """Reconstruct meshes with a registered model: a coloured-patch PLY and a PNG per input."""
    from orchestrator.registry.queries import get_model

    with registry() as s:
        get_model(s, model)  # an unknown id fails here, before anything is written
    uploaded = _upload_inputs(inputs or [])
    job_id = queue_job(JobKind.reconstruct, quiet=as_json, input_model_id=model,
                       params={"inputs": uploaded})
    if not as_json:
        what = f"{len(uploaded)} file(s)" if uploaded else "its validation shapes"
        err.print(f"Queued reconstruction job [bold]{job_id}[/]: model {model} on {what}.")
    follow(job_id, wait=wait, as_json=as_json, queued={"status": "queued", "outputs": []},
           download_to=out or Path("reconstructions") / f"job-{job_id}")


@app.command("evaluate")
def evaluate(
    model: Model,
    dataset: Annotated[str | None, typer.Option(
        "--dataset", "-d", help="NAME or NAME@V to score on (default: the model's validation shapes).",
        show_default=False)] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Where --wait puts the report and plot (default: ./evaluations/job-ID).",
        show_default=False)] = None,
    wait: Wait = False,
    as_json: Json = False,
) -> None:
    """Score a model (Chamfer, F-score, normal consistency, coverage) against retrieval.

    Retrieval copies the nearest shape of the model's own training set: a model that does
    not beat it has learned a lookup table, not shapes.
    """
    from orchestrator.registry.queries import get_model, resolve_dataset

    with registry() as s:
        get_model(s, model)
        ds = resolve_dataset(s, dataset) if dataset else None
        dataset_id, ref = (ds.id, ds.ref) if ds else (None, None)
    job_id = queue_job(JobKind.evaluate, quiet=as_json, input_model_id=model, dataset_id=dataset_id,
                       params={"dataset": ref})
    if not as_json:
        err.print(f"Queued evaluation job [bold]{job_id}[/]: model {model} on "
                  f"{escape(dataset or 'its validation shapes')}.")
    follow(job_id, wait=wait, as_json=as_json, queued={"status": "queued"},
           download_to=out or Path("evaluations") / f"job-{job_id}",
           extra=lambda summary: summary["result"] or {},
           show=lambda summary: print_evaluation(summary["result"] or {}))


def print_evaluation(r: dict[str, Any]) -> None:
    """The scores beside retrieval's, and whether the model beats it."""
    table = Table("metric", "model", "retrieval", title=f"model {r['model_id']} on {escape(r['dataset'])} "
                  f"({r['shapes']} shapes)", title_justify="left")
    table.add_row("Chamfer x1e3 (lower is better)", f"{r['chamfer']:.3f}", f"{r['retrieval_chamfer']:.3f}")
    table.add_row(f"F-score @ {r['fscore_threshold']}", f"{r['fscore']:.3f}", "")
    table.add_row("normal consistency", f"{r['normal_consistency']:.3f}", "")
    table.add_row("coverage", f"{r['coverage']:.3f}", "")
    console.print(table)
    wins = f"better on {r['shapes_beating_retrieval']} of {r['shapes']} shapes"
    if r["beats_retrieval"]:
        console.print(f"[green]The model beats retrieval[/] (the nearest of its {r['retrieval_library']} "
                      f"training shapes): Chamfer {r['chamfer']:.3f} vs {r['retrieval_chamfer']:.3f}, {wins}.")
    else:
        console.print(f"[red]The model does NOT beat retrieval[/]: copying the nearest of its "
                      f"{r['retrieval_library']} training shapes scores Chamfer {r['retrieval_chamfer']:.3f}, "
                      f"the model {r['chamfer']:.3f} ({wins}).")
    for warning in r.get("warnings", []):
        console.print(f"[yellow]warning:[/] {escape(warning)}")


def _upload_inputs(paths: list[Path]) -> list[dict[str, str]]:
    """Check every input loads as a mesh, then store it; a bad file stops before any job exists."""
    from atlas_core.mesh_io import MeshError, load_mesh

    limits = mesh_limits()
    for path in paths:
        if not path.is_file():
            raise UserInputError(f"{path} is not a file: give mesh files to reconstruct")
        try:
            load_mesh(path, limits)
        except MeshError as exc:
            raise UserInputError(f"{path}: {exc}") from None
    artifacts = store()
    uploaded = []
    for path in paths:
        blob = artifacts.put_bytes(path.read_bytes(), "".join(path.suffixes))
        uploaded.append({"name": path.name, "uri": blob.uri, "sha256": blob.sha256})
    return uploaded
