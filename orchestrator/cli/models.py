"""`rodin models`: registered checkpoints, their metrics and lineage."""


from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from orchestrator import catalog
from orchestrator.cli.context import ID_MAX, ID_MIN, download_outputs, settings
from orchestrator.cli.lineage_tree import as_rich
from orchestrator.cli.output import NUMBER, TEXT, WORD, Json, age, console, emit_json, err, listing

app = typer.Typer(help="Registered models (one per checkpoint) and their lineage.",
                  no_args_is_help=True)


@app.command("list")
def list_(
    dataset: Annotated[str | None, typer.Option(
        "--dataset", "-d", help="Only models trained on NAME (any version) or NAME@V.",
        show_default=False)] = None,
    final: Annotated[bool, typer.Option("--final", help="Only each job's final checkpoint.")] = False,
    limit: Annotated[int, typer.Option("--limit", "-n", min=0, help="Models shown (0: all).")] = catalog.PAGE,
    before: Annotated[int | None, typer.Option(
        "--before", metavar="ID", min=ID_MIN, max=ID_MAX, show_default=False,
        help="Only models older than ID (the next page: the line under the table says which ID).")] = None,
    page: Annotated[int | None, typer.Option(
        "--page", min=1, max=ID_MAX, show_default=False, help="The Nth page of --limit models (1: the newest).")] = None,
    as_json: Json = False,
) -> None:
    """Registered models, newest first, --limit at a time (the line under the table says how to
    see more)."""
    found = catalog.page_models(settings(), dataset, final, limit=limit, before=before, page=page)
    rows = found.models
    if as_json:
        emit_json({"models": rows, "total": found.total, "limit": found.limit, "before": found.before,
                   "page": found.page, "next_before": found.next_before})
        return
    if not rows:
        if found.total:
            console.print(f"No models on this page ({found.total} in all): `rodin models list`.", highlight=False)
        else:
            console.print("No models yet: `rodin submit train --dataset NAME --wait`.")
        return
    table = listing(("id", NUMBER), ("job", NUMBER), ("dataset", TEXT), ("epoch", NUMBER), ("final", WORD),
                    ("val\nChamfer", NUMBER), ("coverage", NUMBER), ("parent", NUMBER), ("sha256", WORD),
                    ("age", WORD))
    for r in rows:
        val, coverage = r["metrics"].get("val_chamfer"), r["metrics"].get("coverage")
        flag = " [yellow]![/]" if r["metrics"].get("warnings") else ""
        table.add_row(str(r["id"]), str(r["job_id"]), escape(r["dataset"]), str(r["epoch"]),
                      "yes" if r["final"] else "", f"{val:.5f}" if val is not None else "-",
                      (f"{coverage:.2f}" if coverage is not None else "-") + flag,
                      str(r["parent_id"] or "-"), r["sha256"][:8], age(r["created_at"]))
    console.print(table)
    if found.next_before is not None or len(rows) < found.total:
        more = (f"; older: `rodin models list --before {found.next_before}`" if found.next_before is not None
                else "")
        err.print(f"{len(rows)} of {found.total} models (ids {rows[0]['id']}-{rows[-1]['id']}){more}; "
                  "all: --limit 0.", highlight=False, markup=False)


@app.command("show")
def show(
    model_ref: Annotated[str, typer.Argument(metavar="ID|ALIAS", help="Model id or alias.", show_default=False)],
    plots: Annotated[Path | None, typer.Option(
        "--plots", help="Write the model's pictures (loss curves) into DIR.", show_default=False)] = None,
    as_json: Json = False,
) -> None:
    """A model: job, dataset@version, epoch, metrics, sha256, aliases, and its lineage back to
    the data, one line per checkpoint, with the models fine-tuned from it."""
    from orchestrator.bundles import describe_import

    summary, outputs = catalog.show_model(settings(), model_ref)
    written = download_outputs(outputs, plots, kinds={"plot"}) if plots else []
    if as_json:
        emit_json({**summary, "plots": written})
        return
    for key in ("id", "aliases", "job_id", "dataset", "epoch", "final", "parent_id", "sha256", "size_bytes",
                "artifact_uri", "code_version", "torch_version", "created_at"):
        value = ", ".join(summary[key]) if key == "aliases" else summary[key]
        if key != "aliases" or value:
            console.print(f"[bold]{key:14}[/] {escape(str(value))}", highlight=False, soft_wrap=True)
    if summary["imported_from"]:
        # soft_wrap: a registry URL is one word to copy, not text to fold at 80 columns.
        console.print(f"[bold]{'origin':14}[/] {escape(describe_import(summary['imported_from']))}",
                      highlight=False, soft_wrap=True)
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
    console.print(as_rich(summary["tree"], summary["id"]))
    for path in written:
        err.print(f"wrote {path}", markup=False, highlight=False)


@app.command("tag")
def tag(
    model_ref: Annotated[str, typer.Argument(metavar="ID|ALIAS", help="The model to name.", show_default=False)],
    name: Annotated[str, typer.Argument(help="The alias, e.g. swords-best (set, or moved here).", show_default=False)],
    as_json: Json = False,
) -> None:
    """Name a model: `--model NAME` then means it. Moving a name keeps its history."""
    model_id, before = catalog.tag(settings(), model_ref, name)
    if as_json:
        emit_json({"alias": name, "model_id": model_id, "previous_model_id": before})
    else:
        moved = f" (moved from model {before})" if before not in (None, model_id) else ""
        err.print(f"{escape(name)} -> model {model_id}{moved}.")


@app.command("untag")
def untag(name: Annotated[str, typer.Argument(help="The alias to remove.", show_default=False)],
          as_json: Json = False) -> None:
    """Remove an alias (its history stays)."""
    model_id = catalog.untag(settings(), name)
    if as_json:
        emit_json({"alias": name, "model_id": model_id})
    else:
        err.print(f"Removed {escape(name)} (it named model {model_id}).")


@app.command("tags")
def tags(name: Annotated[str | None, typer.Argument(help="One alias's history.", show_default=False)] = None,
         as_json: Json = False) -> None:
    """Aliases and the models they name, with the history of every change."""
    now, changes = catalog.tags(settings(), name)
    if as_json:
        emit_json({"aliases": now, "history": changes})
        return
    table = listing(("alias", TEXT), ("model", NUMBER), ("history (oldest first)", TEXT))
    for alias in sorted({*now, *(c["name"] for c in changes)}):
        steps = [f"{age(c['at'])} ago: {c['from_model_id'] or '-'} -> {c['to_model_id'] or 'removed'}"
                 for c in changes if c["name"] == alias]
        table.add_row(escape(alias), str(now.get(alias, "-")), escape("; ".join(steps)))
    console.print(table)


def _add_subcommands() -> None:
    # Each group of subcommands lives in its own module; their commands join `rodin models`.
    from orchestrator.cli import model_bundles, model_compare, model_tree

    for module in (model_tree, model_compare, model_bundles):
        app.add_typer(module.app)


_add_subcommands()
