"""`rodin gc`: list, and with --yes delete, artifacts that no registry row references."""


from typing import Annotated

import typer
from rich.markup import escape

from orchestrator.cli.context import settings, store
from orchestrator.cli.output import Json, console, emit_json, err

app = typer.Typer()


@app.command("gc")
def gc(
    yes: Annotated[bool, typer.Option("--yes", help="Delete them (without it, only list).")] = False,
    older_than: Annotated[float, typer.Option(
        "--older-than", min=0, help="Seconds: younger blobs may be a write in progress.")] = 3600.0,
    as_json: Json = False,
) -> None:
    """Artifacts no dataset, model or job references (left by a crash between writing a blob and
    registering it), older than an hour."""
    from orchestrator.gc import delete, find_orphans

    artifacts = store()
    orphans = find_orphans(settings(), artifacts, grace_s=older_than)
    if yes:
        delete(artifacts, orphans)
    total = sum(o.size for o in orphans)
    if as_json:
        emit_json({"orphans": [o.__dict__ for o in orphans], "bytes": total, "deleted": yes})
        return
    for o in orphans:
        console.print(f"{escape(o.uri)}  {o.size} bytes  {o.age_s / 3600:.1f} h old", highlight=False)
    verb = "Deleted" if yes else "Found"
    hint = "" if yes or not orphans else " (`rodin gc --yes` deletes them)"
    err.print(f"{verb} {len(orphans)} unreferenced artifact(s), {total} bytes{hint}.")
