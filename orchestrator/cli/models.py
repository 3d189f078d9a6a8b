"""`rodin models`: registered checkpoints, their metrics and lineage."""


from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.tree import Tree

from orchestrator.cli.context import download_outputs, registry
from orchestrator.cli.output import NUMBER, TEXT, WORD, Json, age, console, emit_json, err, listing

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from orchestrator.registry.models import ModelCheckpoint

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


@app.command("show")
def show(
    model_ref: Annotated[str, typer.Argument(metavar="ID|ALIAS", help="Model id or alias.", show_default=False)],
    plots: Annotated[Path | None, typer.Option(
        "--plots", help="Write the model's pictures (loss curves) into DIR.", show_default=False)] = None,
    as_json: Json = False,
) -> None:
    """A model: job, dataset@version, epoch, metrics, sha256, aliases, and its lineage back to
    the data, one line per checkpoint, with the models fine-tuned from it."""
    from orchestrator.aliases import aliases_of, resolve_model
    from orchestrator.bundles import describe_import, import_record
    from orchestrator.registry.queries import model_summary

    with registry() as s:
        model = resolve_model(s, model_ref)
        summary = model_summary(s, model)
        summary["lineage"], summary["tree"] = model_lineage(s, model)
        summary["aliases"] = aliases_of(s, model.id)
        summary["imported_from"] = import_record(s, model.id)
        outputs = list(model.job.outputs)
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
    console.print(_as_rich(summary["tree"], model.id))
    for path in written:
        err.print(f"wrote {path}", markup=False, highlight=False)


def model_lineage(session: "Session", model: "ModelCheckpoint") -> tuple[list[int], dict[str, Any]]:
    """(the ancestor ids, newest first; the lineage as nested objects, see `lineage_tree`).

    Besides the ancestors, the tree holds the checkpoints its own job registered after it (a
    keep-best model is seldom the job's last epoch: the user sees what was chosen among) and the
    first checkpoint of every other job fine-tuned from it. Each is one query, not one per
    checkpoint: a lineage may be hundreds long."""
    from sqlalchemy import select

    from orchestrator.registry.models import ModelCheckpoint
    from orchestrator.registry.queries import get_model, lineage, model_summary

    chain = lineage(session, model)
    loaded = {m.id: m for m in session.scalars(select(ModelCheckpoint).where(ModelCheckpoint.id.in_(chain)))}
    ancestors = [model_summary(session, loaded.get(i) or get_model(session, i)) for i in chain]
    later = [model_summary(session, m) for m in session.scalars(select(ModelCheckpoint).where(
        ModelCheckpoint.job_id == model.job_id, ModelCheckpoint.epoch > model.epoch,
        ModelCheckpoint.id != model.id).order_by(ModelCheckpoint.epoch, ModelCheckpoint.id))]
    children = [model_summary(session, c) for c in session.scalars(select(ModelCheckpoint).where(
        ModelCheckpoint.parent_id == model.id, ModelCheckpoint.job_id != model.job_id))]
    return chain, lineage_tree([*reversed(ancestors), model_summary(session, model)], children, later)


def lineage_tree(chain: list[dict[str, Any]], children: list[dict[str, Any]],
                 later: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The lineage as nested objects: dataset -> job -> its checkpoints (a list, one per line),
    and under the checkpoint a later job started from, that job (a fine-tune across datasets).

    chain: the model's ancestors, oldest first, then the model itself; children: checkpoints of
    other jobs whose parent is the model; later: checkpoints of the model's own job after it."""
    def checkpoint(m: dict[str, Any]) -> dict[str, Any]:
        return {"model_id": m["id"], "epoch": m["epoch"], "final": m["final"],
                "val_chamfer": m["metrics"].get("val_chamfer")}

    root: dict[str, Any] = {"dataset": chain[0]["dataset"], "jobs": []}
    jobs_here = root["jobs"]
    job: dict[str, Any] | None = None
    for m in chain:
        if job is None or m["job_id"] != job["job_id"]:
            if job is not None:  # a new job continued from the previous job's last checkpoint
                jobs_here = job["checkpoints"][-1].setdefault("continued_by", [])
            job = {"job_id": m["job_id"], "dataset": m["dataset"], "checkpoints": []}
            jobs_here.append(job)
        job["checkpoints"].append(checkpoint(m))
    if job is not None:
        this = job["checkpoints"][-1]
        if children:
            this["continued_by"] = [
                {"job_id": c["job_id"], "dataset": c["dataset"], "checkpoints": [checkpoint(c)]} for c in children]
        job["checkpoints"].extend(checkpoint(m) for m in later or [])
    return root


def _as_rich(tree: dict[str, Any], this: int) -> Tree:
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


@app.command("tag")
def tag(
    model_ref: Annotated[str, typer.Argument(metavar="ID|ALIAS", help="The model to name.", show_default=False)],
    name: Annotated[str, typer.Argument(help="The alias, e.g. swords-best (set, or moved here).", show_default=False)],
    as_json: Json = False,
) -> None:
    """Name a model: `--model NAME` then means it. Moving a name keeps its history."""
    from orchestrator import aliases

    with registry() as s:
        model_id = aliases.resolve_model(s, model_ref).id
        before = aliases.tag(s, model_id, name)
    if as_json:
        emit_json({"alias": name, "model_id": model_id, "previous_model_id": before})
    else:
        moved = f" (moved from model {before})" if before not in (None, model_id) else ""
        err.print(f"{escape(name)} -> model {model_id}{moved}.")


@app.command("untag")
def untag(name: Annotated[str, typer.Argument(help="The alias to remove.", show_default=False)],
          as_json: Json = False) -> None:
    """Remove an alias (its history stays)."""
    from orchestrator import aliases

    with registry() as s:
        model_id = aliases.untag(s, name)
    if as_json:
        emit_json({"alias": name, "model_id": model_id})
    else:
        err.print(f"Removed {escape(name)} (it named model {model_id}).")


@app.command("tags")
def tags(name: Annotated[str | None, typer.Argument(help="One alias's history.", show_default=False)] = None,
         as_json: Json = False) -> None:
    """Aliases and the models they name, with the history of every change."""
    from orchestrator import aliases

    with registry() as s:
        now, changes = aliases.current(s), aliases.history(s, name)
        if name is not None and name not in now and not changes:
            aliases.resolve_model(s, name)  # the one-line error for an unknown alias
    if name is not None:
        now = {k: v for k, v in now.items() if k == name}
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
