"""`rodin reconstruct` and `rodin evaluate`: use a registered model, named by its id."""


from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from orchestrator.cli.context import mesh_limits, settings, store
from orchestrator.cli.follow import follow, queue_job, report_end
from orchestrator.cli.output import Json, console, err
from orchestrator.errors import UserInputError
from orchestrator.job_states import JobKind
from orchestrator.jobs import DEFAULT_REFINE_STEPS, refine_steps

if TYPE_CHECKING:
    from orchestrator.job_view import JobView

app = typer.Typer()

Model = Annotated[str, typer.Option("--model", "-m", metavar="ID|ALIAS", show_default=False,
                                    help="Registered model id or alias (see `rodin models list`).")]
Wait = Annotated[bool, typer.Option("--wait", help="Follow the job until it ends; non-zero exit if it fails.")]
Refine = Annotated[int, typer.Option(
    "--refine", metavar="STEPS", min=0,
    help="Fit each reconstruction to its input: STEPS of optimisation, first of the shape's code, "
         "then also of a private copy of the decoders (the registered model never changes); "
         "0 turns it off.")]


@app.command("reconstruct")
def reconstruct(
    model: Model,
    inputs: Annotated[list[Path] | None, typer.Argument(
        help="Mesh files, or point clouds (PLY/OBJ/XYZ with points only, normals optional); "
             "none: the model's validation shapes.", show_default=False)] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Where --wait puts the outputs (default: ./reconstructions/job-ID).",
        show_default=False)] = None,
    refine: Refine = DEFAULT_REFINE_STEPS,
    wait: Wait = False,
    as_json: Json = False,
) -> None:
    """Reconstruct meshes with a registered model: a coloured-patch PLY and a PNG per input,
    fitted to the input by default, with a warning when an input looks unlike the model's
    training shapes."""
    from orchestrator.catalog import model_id as find_model

    model_id = find_model(settings(), model)  # an unknown one fails here, before anything is written
    uploaded = upload_inputs(inputs or [])
    job_id = queue_job(JobKind.reconstruct, quiet=as_json, input_model_id=model_id,
                       params={"inputs": uploaded, "refine": refine_steps(refine)})
    if not as_json:
        what = f"{len(uploaded)} file(s)" if uploaded else "its validation shapes"
        err.print(f"Queued reconstruction job [bold]{job_id}[/]: model {model_id} on {what}.")
    follow(job_id, wait=wait, as_json=as_json, queued={"status": "queued", "outputs": []},
           download_to=out or Path("reconstructions") / f"job-{job_id}",
           extra=lambda job: {"results": (job.result or {}).get("inputs", []),
                              "warnings": (job.result or {}).get("warnings", [])},
           show=_print_reconstruction)


def _print_reconstruction(job: "JobView") -> None:
    """One line per input: the Chamfer before and after refinement, and any warning."""
    report_end(job)
    for r in (job.result or {}).get("inputs", []):
        gain = (f"Chamfer {r['chamfer_before']:.5f} -> {r['chamfer_after']:.5f}"
                if r["chamfer_after"] != r["chamfer_before"] else f"Chamfer {r['chamfer_after']:.5f}")
        err.print(f"  {escape(r['input'])}: {gain} ({r['seconds']:.1f} s{_refined_how(r.get('refinement'))})",
                  highlight=False)
        for warning in r["warnings"]:
            err.print(f"    [yellow]warning:[/] {escape(warning)}", highlight=False)


def _refined_how(refinement: dict | None) -> str:
    """What refinement did beyond the Chamfer: two-sided patches, trimmed faces (older jobs: '')."""
    if not refinement:
        return ""
    parts = []
    if refinement.get("two_sided"):
        parts.append(f"two-sided, up to {refinement.get('thickness_max', 0.0):.3f} thick")
    if refinement.get("faces_trimmed"):
        parts.append(f"{refinement['faces_trimmed']} faces trimmed")
    return "".join(f"; {p}" for p in parts)


@app.command("evaluate")
def evaluate(
    model: Model,
    dataset: Annotated[str | None, typer.Option(
        "--dataset", "-d", help="NAME or NAME@V to score on (default: the model's validation shapes).",
        show_default=False)] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Where --wait puts the report and plot (default: ./evaluations/job-ID).",
        show_default=False)] = None,
    refine: Refine = DEFAULT_REFINE_STEPS,
    wait: Wait = False,
    as_json: Json = False,
) -> None:
    """Score a model (Chamfer, F-score, normal consistency, coverage) against retrieval.

    Retrieval copies the nearest shape of the model's own training set: a model that does
    not beat it has learned a lookup table, not shapes.
    """
    from orchestrator import catalog

    model_id = catalog.model_id(settings(), model)
    dataset_id, ref = catalog.dataset_ref(settings(), dataset)[:2] if dataset else (None, None)
    job_id = queue_job(JobKind.evaluate, quiet=as_json, input_model_id=model_id, dataset_id=dataset_id,
                       params={"dataset": ref, "refine": refine_steps(refine)})
    if not as_json:
        err.print(f"Queued evaluation job [bold]{job_id}[/]: model {model_id} on "
                  f"{escape(dataset or 'its validation shapes')}.")
    follow(job_id, wait=wait, as_json=as_json, queued={"status": "queued"},
           download_to=out or Path("evaluations") / f"job-{job_id}",
           extra=lambda job: job.result or {},
           show=lambda job: print_evaluation(job.result or {}))


def print_evaluation(r: dict[str, Any]) -> None:
    """The scores beside retrieval's, and whether the model beats it."""
    table = Table("metric", "model", "retrieval", title=f"model {r['model_id']} on {escape(r['dataset'])} "
                  f"({r['shapes']} shapes)", title_justify="left")
    table.add_row("Chamfer x1e3 (lower is better)", f"{r['chamfer']:.3f}", f"{r['retrieval_chamfer']:.3f}")
    def retrieval(key: str) -> str:  # absent from evaluations stored before it was scored
        value = r.get(f"retrieval_{key}")
        return "" if value is None else f"{value:.3f}"

    if r.get("chamfer_dense") is not None:
        table.add_row(f"Chamfer x1e3 at {r.get('fscore_points')} points", f"{r['chamfer_dense']:.3f}",
                      retrieval("chamfer_dense"))
    table.add_row(f"F-score @ {r['fscore_threshold']}", f"{r['fscore']:.3f}", retrieval("fscore"))
    table.add_row("normal consistency", f"{r['normal_consistency']:.3f}", retrieval("normal_consistency"))
    table.add_row("coverage", f"{r['coverage']:.3f}", retrieval("coverage"))
    console.print(table)
    wins = f"better on {r['shapes_beating_retrieval']} of {r['shapes']} shapes"
    if r["beats_retrieval"]:
        console.print(f"[green]The model beats retrieval[/] (the nearest of its {r['retrieval_library']} "
                      f"training shapes): Chamfer {r['chamfer']:.3f} vs {r['retrieval_chamfer']:.3f}, {wins}.")
    else:
        console.print(f"[red]The model does NOT beat retrieval[/]: copying the nearest of its "
                      f"{r['retrieval_library']} training shapes scores Chamfer {r['retrieval_chamfer']:.3f}, "
                      f"the model {r['chamfer']:.3f} ({wins}).")
    ceiling = r.get("fscore_ceiling")
    if ceiling is not None and ceiling < 0.95:
        console.print(f"[yellow]note:[/] these shapes' own points are too sparse to measure an F-score "
                      f"@ {r['fscore_threshold']} above about {ceiling:.2f} (what a perfect reconstruction "
                      "would score); register them with more --points-per-shape to measure it")
    for warning in r.get("warnings", []):
        console.print(f"[yellow]warning:[/] {escape(warning)}")


def upload_inputs(paths: list[Path]) -> list[dict[str, str]]:
    """Check every input loads as a mesh or a point cloud, then store it; a bad file stops
    before any job exists."""
    from atlas_core.mesh_io import MeshError
    from atlas_core.pointcloud_io import ingest_input

    limits = mesh_limits()
    for path in paths:
        if not path.is_file():
            raise UserInputError(f"{path} is not a file: give mesh or point-cloud files to reconstruct")
        try:
            ingest_input(path, n_points=100, seed=0, limits=limits)
        except MeshError as exc:
            raise UserInputError(f"{path}: {exc}") from None
    artifacts = store()
    uploaded = []
    for path in paths:
        blob = artifacts.put_bytes(path.read_bytes(), "".join(path.suffixes))
        uploaded.append({"name": path.name, "uri": blob.uri, "sha256": blob.sha256})
    return uploaded
