"""Submitting, watching and cancelling jobs: `rodin submit train`, `status`, `reconstruct`, `cancel`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from orchestrator.cli.context import download_outputs as _download
from orchestrator.cli.context import registry, settings, store
from orchestrator.cli.output import age, console, emit_json, err, styled_status
from orchestrator.cli.workers import stale_note
from orchestrator.errors import RodinError, UserInputError

submit_app = typer.Typer(help="Queue work for the workers.", no_args_is_help=True)
JsonOpt = typer.Option(False, "--json", help="Print one JSON object on stdout.")
WaitOpt = typer.Option(False, "--wait", help="Follow the job until it ends; non-zero exit if it fails.")

#: What `rodin submit train` uses when a flag is not given: small enough for a laptop CPU.
#: The paper's configuration is `--reference` (or the flags one by one).
CPU_DEFAULTS: dict[str, Any] = dict(
    epochs=30, n_patches=10, template="square", n_points=1000, batch_size=16, lr=1e-3,
    bottleneck=256, hidden=128, layers=2, val_fraction=0.1, checkpoint_every=5, seed=0,
    augment_rotate=False, augment_scale=0.0, augment_jitter=0.0, keep_best=True, patience=0,
)
REFERENCE: dict[str, Any] = dict(
    CPU_DEFAULTS, epochs=150, n_patches=25, n_points=2500, batch_size=32, bottleneck=1024,
    hidden=512, checkpoint_every=10,
)
ARCHITECTURE = ("n_patches", "template", "bottleneck", "hidden", "layers")


# ---------------------------------------------------------------------------------- submitting


def _enqueue(kind: str, job_id: int) -> None:
    """Send the job's task; if the broker cannot take it, the job row says so."""
    from orchestrator.queue import make_app, send_job
    from orchestrator.registry.models import Job, JobStatus

    try:
        task_id = send_job(make_app(settings()), kind, job_id)
    except Exception as exc:  # noqa: BLE001 - any broker failure is reported on the job
        with registry() as s:
            job = s.get(Job, job_id)
            job.status, job.error = JobStatus.failed.value, f"could not queue: {exc}"
        raise RodinError(f"could not queue job {job_id} at {settings().queue_url}: {exc}") from None
    with registry() as s:
        s.get(Job, job_id).celery_task_id = task_id


def _train_config(given: dict[str, Any], reference: bool, parent: dict[str, Any] | None,
                  device: str) -> dict[str, Any]:
    """Merge flags over the parent's architecture and the defaults; validate; as a dict."""
    from atlas_core.config import AugmentConfig, ModelConfig, TrainConfig

    values = dict(REFERENCE if reference else CPU_DEFAULTS)
    if parent is not None:
        model = parent["model"]
        for key in ARCHITECTURE:
            if given.get(key) is not None and given[key] != model[key]:
                raise UserInputError(
                    f"--{key.replace('n_', '').replace('_', '-')} {given[key]} differs from the "
                    f"model being fine-tuned ({model[key]}); drop the flag to keep its architecture"
                )
            values[key] = model[key]
    values.update({k: v for k, v in given.items() if v is not None})
    config = TrainConfig(
        model=ModelConfig(**{k: values[k] for k in ("n_patches", "template", "bottleneck",
                                                    "hidden", "layers", "n_points")}),
        epochs=values["epochs"], batch_size=values["batch_size"], lr=values["lr"],
        val_fraction=values["val_fraction"], checkpoint_every=values["checkpoint_every"],
        seed=values["seed"], device=device,
        augment=AugmentConfig(rotate=values["augment_rotate"], scale=values["augment_scale"],
                              jitter=values["augment_jitter"]),
        keep_best=values["keep_best"], patience=values["patience"],
    )
    try:
        config.validate()
    except ValueError as exc:
        raise UserInputError(f"invalid training settings: {exc}") from None
    return config.to_dict()


@submit_app.command("train")
def submit_train(
    dataset: str = typer.Option(..., "--dataset", "-d", help="NAME or NAME@VERSION."),
    epochs: int = typer.Option(None, help=f"Epochs (default: {CPU_DEFAULTS['epochs']})."),
    patches: int = typer.Option(None, help=f"Atlas patches K (default: {CPU_DEFAULTS['n_patches']})."),
    template: str = typer.Option(None, help="Patch template: square or sphere (default: square)."),
    points: int = typer.Option(None, help=f"Points per shape per step (default: {CPU_DEFAULTS['n_points']})."),
    batch_size: int = typer.Option(None, help=f"Shapes per step (default: {CPU_DEFAULTS['batch_size']})."),
    lr: float = typer.Option(None, help="Adam learning rate (default: 1e-3), /10 at 80, 93, 97% of epochs."),
    bottleneck: int = typer.Option(None, help=f"Latent size (default: {CPU_DEFAULTS['bottleneck']})."),
    hidden: int = typer.Option(None, help=f"Decoder width (default: {CPU_DEFAULTS['hidden']})."),
    layers: int = typer.Option(None, help="Hidden layers per decoder (default: 2)."),
    val_fraction: float = typer.Option(None, help="Shapes held out for validation (default: 0.1)."),
    checkpoint_every: int = typer.Option(None, help="Register a checkpoint every E epochs (default: 5)."),
    seed: int = typer.Option(None, help="Seed for the split, sampling and initialisation (default: 0)."),
    augment_rotate: bool = typer.Option(None, "--augment-rotate/--no-augment-rotate",
                                        help="Rotate each shape about its principal axis (default: off)."),
    augment_scale: float = typer.Option(None, help="Anisotropic scaling by up to ±S per axis (default: 0)."),
    augment_jitter: float = typer.Option(None, help="Gaussian point noise, std in unit-ball units (default: 0)."),
    keep_best: bool = typer.Option(None, "--keep-best/--keep-last",
                                   help="Final model: best validation Chamfer, or the last epoch (default: best)."),
    patience: int = typer.Option(None, help="Stop after P epochs without a better validation Chamfer (default: 0, never)."),
    from_model: int = typer.Option(None, "--from-model", help="Fine-tune from this registered model id."),
    reference: bool = typer.Option(False, "--reference",
                                   help="Start from the paper's configuration (150 epochs, K=25, 2500 points, 1024/512)."),
    wait: bool = WaitOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Queue AtlasNet training on a registered dataset; prints the job id."""
    from orchestrator.registry.models import Job, JobKind
    from orchestrator.registry.queries import get_model, resolve_dataset

    given = dict(epochs=epochs, n_patches=patches, template=template, n_points=points,
                 batch_size=batch_size, lr=lr, bottleneck=bottleneck, hidden=hidden,
                 layers=layers, val_fraction=val_fraction, checkpoint_every=checkpoint_every,
                 seed=seed, augment_rotate=augment_rotate, augment_scale=augment_scale,
                 augment_jitter=augment_jitter, keep_best=keep_best, patience=patience)
    with registry() as s:
        ds = resolve_dataset(s, dataset)
        parent = get_model(s, from_model).config if from_model is not None else None
        config = _train_config(given, reference, parent, device="cpu")
        job = Job(kind=JobKind.train.value, dataset_id=ds.id, input_model_id=from_model,
                  params={"config": config, "dataset": ds.ref})
        s.add(job)
        s.flush()
        job_id, ref = job.id, ds.ref
    _ensure_worker(as_json)
    _enqueue("train", job_id)
    if not as_json:
        err.print(f"Queued training job [bold]{job_id}[/] on {ref}"
                  + (f", fine-tuning model {from_model}" if from_model else "") + ".")
    if not wait:
        if as_json:
            emit_json({"job_id": job_id})
        else:
            console.print(job_id)
        return
    summary = wait_for_job(job_id, quiet=as_json)
    if as_json:
        emit_json({"job_id": job_id, "status": summary["status"],
                   "model_id": summary["final_model_id"], "error": summary["error"]})
    else:
        _report_end(summary)
    if summary["status"] != "succeeded":
        raise typer.Exit(1)


def _ensure_worker(quiet: bool) -> None:
    from orchestrator.cli.workers import ensure_local_worker

    ensure_local_worker(quiet=quiet)


# ---------------------------------------------------------------------------------- waiting


def _summary(job_id: int) -> dict[str, Any]:
    from orchestrator.registry.queries import get_job, job_summary

    with registry() as s:
        return job_summary(s, get_job(s, job_id))


def wait_for_job(job_id: int, quiet: bool = False, poll_s: float = 0.5) -> dict[str, Any]:
    """Poll the registry until the job ends, with a progress bar unless quiet."""
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=err,
                        disable=quiet)
    task = progress.add_task(f"job {job_id}", total=None, info="queued")
    try:
        with progress:
            while True:
                summary = _summary(job_id)
                _update_bar(progress, task, summary)
                if summary["status"] in ("succeeded", "failed", "cancelled"):
                    return summary
                time.sleep(poll_s)
    except KeyboardInterrupt:
        err.print(f"Stopped following; job {job_id} goes on (`rodin status {job_id}`, "
                  f"`rodin cancel {job_id}`).")
        raise typer.Exit(130) from None


def _update_bar(progress: Progress, task: Any, summary: dict[str, Any]) -> None:
    p, status = summary["progress"] or {}, summary["status"]
    if status == "queued":
        progress.update(task, info="queued: waiting for a worker")
    elif "epochs" in p:
        info = f"loss {p['train_loss']:.5f}  val {p['val_chamfer']:.5f}  ({summary['worker']})"
        progress.update(task, total=p["epochs"], completed=p["epoch"], info=info,
                        description=f"job {summary['id']} epoch")
    elif "total" in p:
        progress.update(task, total=p["total"], completed=p["done"], info="shapes",
                        description=f"job {summary['id']}")
    else:
        progress.update(task, info=f"{status} on {summary['worker'] or '?'}")


def _report_end(summary: dict[str, Any]) -> None:
    status = summary["status"]
    line = f"Job {summary['id']} {styled_status(status)}"
    if summary.get("final_model_id"):
        line += f": model [bold]{summary['final_model_id']}[/] (`rodin models show {summary['final_model_id']}`)"
    if summary.get("error"):
        line += f": {summary['error']}"
    err.print(line)


# ---------------------------------------------------------------------------------- status


def _jobs_table(rows: list[dict[str, Any]]) -> Table:
    table = Table("id", "kind", "dataset / model", "status", "progress", "worker", "age")
    for r in rows:
        p = r["progress"] or {}
        if "epochs" in p:
            prog = f"epoch {int(p['epoch'])}/{int(p['epochs'])}  loss {p['train_loss']:.4f}"
        elif "total" in p:
            prog = f"{p['done']}/{p['total']} shapes"
        else:
            prog = "-"
        target = r["dataset"] or ""
        if r["input_model_id"]:
            target += f" model {r['input_model_id']}" if target else f"model {r['input_model_id']}"
        table.add_row(str(r["id"]), r["kind"], target, styled_status(r["status"]) + stale_note(r), prog,
                      r["worker"] or "-", age(r["created_at"]))
    return table


def _job_detail(summary: dict[str, Any]) -> None:
    for key in ("id", "kind", "status", "dataset", "input_model_id", "worker", "device",
                "attempts", "created_at", "started_at", "finished_at", "error"):
        value = summary[key]
        if value is not None:
            shown = styled_status(value) + stale_note(summary) if key == "status" else value
            console.print(f"[bold]{key:15}[/] {shown}", highlight=False)
    if summary["progress"]:
        console.print(f"[bold]{'progress':15}[/] {summary['progress']}", highlight=False)
    if summary["model_ids"]:
        console.print(f"[bold]{'checkpoints':15}[/] {', '.join(map(str, summary['model_ids']))}"
                      + (f" (final {summary['final_model_id']})" if summary["final_model_id"] else ""))
    for out in summary["outputs"]:
        console.print(f"  output {out['name']}: {out['uri']}", highlight=False)


def register(app: typer.Typer) -> None:
    @app.command("status")
    def status(
        job_id: int = typer.Argument(None, help="Show one job in detail."),
        watch: bool = typer.Option(False, "--watch", "-w", help="Refresh live until Ctrl-C."),
        limit: int = typer.Option(30, "--limit", help="Newest jobs shown."),
        as_json: bool = JsonOpt,
    ) -> None:
        """Jobs (id, kind, dataset, status, progress, worker, age), or one job with its checkpoints."""
        from sqlalchemy import select
        from sqlalchemy.orm import selectinload

        from orchestrator.registry.models import Job
        from orchestrator.registry.queries import job_summary

        def rows() -> list[dict[str, Any]]:
            with registry() as s:
                # Checkpoints and datasets in one query each, not one per job: the registry
                # may be a network hop away.
                jobs = s.scalars(select(Job).options(selectinload(Job.checkpoints),
                                                     selectinload(Job.dataset))
                                 .order_by(Job.id.desc()).limit(limit)).all()
                return [job_summary(s, j) for j in jobs]

        if job_id is not None:
            summary = _summary(job_id)
            if as_json:
                emit_json(summary)
            elif watch and summary["status"] not in ("succeeded", "failed", "cancelled"):
                _report_end(wait_for_job(job_id))
            else:
                _job_detail(summary)
            return
        if as_json:
            emit_json({"jobs": rows()})
            return
        if not watch:
            data = rows()
            console.print(_jobs_table(data) if data else "No jobs yet: `rodin submit train --dataset NAME`.")
            return
        try:
            with Live(_jobs_table(rows()), console=console, refresh_per_second=2) as live:
                while True:
                    time.sleep(1.0)
                    live.update(_jobs_table(rows()))
        except KeyboardInterrupt:
            pass

    @app.command("cancel")
    def cancel(job_id: int = typer.Argument(..., help="The job to stop."),
               as_json: bool = JsonOpt) -> None:
        """Stop a job: a queued job never starts; a running one stops after its current epoch."""
        from orchestrator.registry.models import JobStatus
        from orchestrator.registry.queries import get_job
        from datetime import datetime, timezone

        with registry() as s:
            job = get_job(s, job_id)
            if JobStatus(job.status).finished:
                message = f"job {job_id} already {job.status}; nothing to cancel"
            else:
                job.cancel_requested = True
                if job.status == JobStatus.queued.value:
                    job.status = JobStatus.cancelled.value
                    job.finished_at = datetime.now(timezone.utc)
                    message = f"job {job_id} cancelled before it started"
                else:
                    message = f"job {job_id} will stop after its current epoch"
            status = job.status
        if as_json:
            emit_json({"job_id": job_id, "status": status, "message": message})
        else:
            err.print(message[0].upper() + message[1:] + ".")

    @app.command("evaluate")
    def evaluate(
        model: int = typer.Option(..., "--model", "-m", help="Registered model id."),
        dataset: str = typer.Option(None, "--dataset", "-d",
                                    help="NAME or NAME@V to score on (default: the model's validation shapes)."),
        out: Path = typer.Option(None, "--out", "-o", help="Where --wait puts the report and plot (default: ./evaluations/job-ID)."),
        wait: bool = WaitOpt,
        as_json: bool = JsonOpt,
    ) -> None:
        """Score a model (Chamfer, F-score, normal consistency, coverage) against retrieval.

        Retrieval copies the nearest shape of the model's own training set: a model that does
        not beat it has learned a lookup table, not shapes.
        """
        _evaluate(model, dataset, out, wait, as_json)

    @app.command("reconstruct")
    def reconstruct(
        model: int = typer.Option(..., "--model", "-m", help="Registered model id (see `rodin models list`)."),
        inputs: list[Path] = typer.Argument(None, help="Mesh files; none: the model's validation shapes."),
        out: Path = typer.Option(None, "--out", "-o", help="Where --wait puts the outputs (default: ./reconstructions/job-ID)."),
        wait: bool = WaitOpt,
        as_json: bool = JsonOpt,
    ) -> None:
        """Reconstruct meshes with a registered model: a coloured-patch PLY and a PNG per input."""
        from orchestrator.registry.models import Job, JobKind
        from orchestrator.registry.queries import get_model

        with registry() as s:
            get_model(s, model)  # an unknown id fails here, before anything is written
        uploaded = _upload_inputs(inputs or [])
        with registry() as s:
            job = Job(kind=JobKind.reconstruct.value, input_model_id=model,
                      params={"inputs": uploaded})
            s.add(job)
            s.flush()
            job_id = job.id
        _ensure_worker(as_json)
        _enqueue("reconstruct", job_id)
        what = f"{len(uploaded)} file(s)" if uploaded else "its validation shapes"
        if not as_json:
            err.print(f"Queued reconstruction job [bold]{job_id}[/]: model {model} on {what}.")
        if not wait:
            if as_json:
                emit_json({"job_id": job_id, "status": "queued", "outputs": []})
            else:
                console.print(job_id)
            return
        summary = wait_for_job(job_id, quiet=as_json)
        paths: list[str] = []
        if summary["status"] == "succeeded":
            paths = _download(summary["outputs"], out or Path("reconstructions") / f"job-{job_id}")
        if as_json:
            emit_json({"job_id": job_id, "status": summary["status"], "outputs": paths,
                       "error": summary["error"]})
        else:
            _report_end(summary)
            for p in paths:
                console.print(f"  {p}", highlight=False)
        if summary["status"] != "succeeded":
            raise typer.Exit(1)


def _evaluate(model: int, dataset: str | None, out: Path | None, wait: bool, as_json: bool) -> None:
    from orchestrator.registry.models import Job, JobKind
    from orchestrator.registry.queries import get_model, resolve_dataset

    with registry() as s:
        get_model(s, model)
        ds = resolve_dataset(s, dataset) if dataset else None
        job = Job(kind=JobKind.evaluate.value, input_model_id=model,
                  dataset_id=ds.id if ds else None, params={"dataset": ds.ref if ds else None})
        s.add(job)
        s.flush()
        job_id = job.id
    _ensure_worker(as_json)
    _enqueue("evaluate", job_id)
    on = dataset or "its validation shapes"
    if not as_json:
        err.print(f"Queued evaluation job [bold]{job_id}[/]: model {model} on {on}.")
    if not wait:
        if as_json:
            emit_json({"job_id": job_id, "status": "queued"})
        else:
            console.print(job_id)
        return
    summary = wait_for_job(job_id, quiet=as_json)
    result = summary["result"] or {}
    paths: list[str] = []
    if summary["status"] == "succeeded":
        paths = _download(summary["outputs"], out or Path("evaluations") / f"job-{job_id}")
    if as_json:
        emit_json({"job_id": job_id, "status": summary["status"], "error": summary["error"],
                   "outputs": paths, **result})
    elif summary["status"] == "succeeded":
        _print_evaluation(result)
        for p in paths:
            console.print(f"  {p}", highlight=False)
    else:
        _report_end(summary)
    if summary["status"] != "succeeded":
        raise typer.Exit(1)


def _print_evaluation(r: dict[str, Any]) -> None:
    table = Table("metric", "model", "retrieval", title=f"model {r['model_id']} on {r['dataset']} "
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
        console.print(f"[yellow]warning:[/] {warning}")


def _upload_inputs(paths: list[Path]) -> list[dict[str, str]]:
    """Check every input loads as a mesh, then store it; a bad file stops before any job exists."""
    from atlas_core.mesh_io import MeshError, load_mesh

    for path in paths:
        if not path.is_file():
            raise UserInputError(f"{path} is not a file: give mesh files to reconstruct")
        try:
            load_mesh(path)
        except MeshError as exc:
            raise UserInputError(f"{path}: {exc}") from None
    artifacts = store()
    uploaded = []
    for path in paths:
        blob = artifacts.put_bytes(path.read_bytes(), "".join(path.suffixes))
        uploaded.append({"name": path.name, "uri": blob.uri, "sha256": blob.sha256})
    return uploaded
