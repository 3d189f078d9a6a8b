"""`rodin models`: registered checkpoints, their metrics and lineage."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from orchestrator.cli.context import ID_MAX, ID_MIN, download_outputs, registry
from orchestrator.cli.output import Json, age, console, emit_json, err

app = typer.Typer(help="Registered models (one per checkpoint) and their lineage.",
                  no_args_is_help=True)


@app.command("list")
def list_(
    dataset: Annotated[str | None, typer.Option(
        "--dataset", "-d", help="Only models trained on NAME (any version) or NAME@V.",
        show_default=False)] = None,
    final: Annotated[bool, typer.Option("--final", help="Only each job's final checkpoint.")] = False,
    as_json: Json = False,
) -> None:
    """Registered models, newest first."""
    from sqlalchemy import select

    from orchestrator.registry.models import Dataset, ModelCheckpoint
    from orchestrator.registry.queries import model_summary, parse_dataset_ref

    with registry() as s:
        query = select(ModelCheckpoint).join(Dataset, ModelCheckpoint.dataset_id == Dataset.id)
        if dataset:
            name, version = parse_dataset_ref(dataset)
            query = query.where(Dataset.name == name)
            if version is not None:
                query = query.where(Dataset.version == version)
        if final:
            query = query.where(ModelCheckpoint.final.is_(True))
        rows = [model_summary(s, m) for m in s.scalars(query.order_by(ModelCheckpoint.id.desc()))]
    if as_json:
        emit_json({"models": rows})
        return
    if not rows:
        console.print("No models yet: `rodin submit train --dataset NAME --wait`.")
        return
    table = Table("id", "job", "dataset", "epoch", "final", "val Chamfer", "coverage", "parent",
                  "sha256", "age")
    for r in rows:
        val, coverage = r["metrics"].get("val_chamfer"), r["metrics"].get("coverage")
        flag = " [yellow]![/]" if r["metrics"].get("warnings") else ""
        table.add_row(str(r["id"]), str(r["job_id"]), escape(r["dataset"]), str(r["epoch"]),
                      "yes" if r["final"] else "", f"{val:.5f}" if val is not None else "-",
                      (f"{coverage:.2f}" if coverage is not None else "-") + flag,
                      str(r["parent_id"] or "-"), r["sha256"][:12], age(r["created_at"]))
    console.print(table)


@app.command("show")
def show(
    model_id: Annotated[int, typer.Argument(help="Model id.", min=ID_MIN, max=ID_MAX, show_default=False)],
    plots: Annotated[Path | None, typer.Option(
        "--plots", help="Write the model's pictures (loss curves) into DIR.", show_default=False)] = None,
    as_json: Json = False,
) -> None:
    """A model: job, dataset@version, epoch, metrics, sha256, and its lineage back to the data."""
    from orchestrator.registry.queries import get_model, lineage, model_summary

    with registry() as s:
        model = get_model(s, model_id)
        summary = model_summary(s, model)
        chain = lineage(s, model)
        summary["lineage"] = chain
        ancestors = [model_summary(s, get_model(s, i)) for i in chain]
        outputs = list(model.job.outputs)
    written = download_outputs(outputs, plots, kinds={"plot"}) if plots else []
    if as_json:
        emit_json({**summary, "plots": written})
        return
    for key in ("id", "job_id", "dataset", "epoch", "final", "parent_id", "sha256", "size_bytes",
                "artifact_uri", "code_version", "torch_version", "created_at"):
        console.print(f"[bold]{key:14}[/] {escape(str(summary[key]))}", highlight=False)
    metrics = summary["metrics"]
    console.print(f"[bold]{'metrics':14}[/] " + escape(", ".join(
        f"{k} {v:.6g}" for k, v in metrics.items() if isinstance(v, (int, float))
        and not isinstance(v, bool))), highlight=False)
    for warning in metrics.get("warnings", []):
        console.print(f"[yellow]warning:[/] {escape(str(warning))}", highlight=False)
    c = summary["config"]
    m = c["model"]
    console.print(f"[bold]{'config':14}[/] " + escape(
        f"K={m['n_patches']} {m['template']}, {m['n_points']} points, "
        f"bottleneck {m['bottleneck']}, hidden {m['hidden']}x{m['layers']}, "
        f"{c['epochs']} epochs, batch {c['batch_size']}, lr {c['lr']}"), highlight=False)
    console.print(_lineage_tree(summary, ancestors))
    for path in written:
        err.print(f"wrote {path}", markup=False, highlight=False)


def _lineage_tree(summary: dict[str, Any], ancestors: list[dict[str, Any]]) -> Tree:
    """From the data, through every ancestor checkpoint, to this model."""
    root = Tree(f"dataset [bold]{escape((ancestors[-1] if ancestors else summary)['dataset'])}[/]")
    node = root
    for m in [*reversed(ancestors), summary]:
        val = m["metrics"].get("val_chamfer")
        label = f"model [bold]{m['id']}[/] (job {m['job_id']}, epoch {m['epoch']}" + \
            (f", val {val:.5f}" if val is not None else "") + ")"
        if m is not summary and m["dataset"] != summary["dataset"]:
            label += f" on {escape(m['dataset'])}"
        node = node.add(label)
    return root
