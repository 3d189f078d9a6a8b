"""`rodin db` and `rodin config`: the registry's schema and the settings in force."""


import typer

from orchestrator.cli.context import settings
from orchestrator.cli.output import Json, emit_json, err
from orchestrator.settings import redact

db_app = typer.Typer(help="The registry's schema.", no_args_is_help=True)
config_app = typer.Typer(help="Where rodin keeps things.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(as_json: Json = False) -> None:
    """Create or upgrade the registry schema to the newest migration."""
    from orchestrator.registry.db import head_revision, upgrade

    url = settings().registry_url
    upgrade(url)
    if as_json:
        emit_json({"revision": head_revision(), "database_url": redact(url)})
    else:
        err.print(f"Registry at {redact(url)} is at revision {head_revision()}.", markup=False)


@config_app.command("show")
def config_show(as_json: Json = False) -> None:
    """Show the settings in force (from RODIN_* variables, the config file, or defaults)."""
    values = {k: redact(v) for k, v in settings().as_dict().items()}
    if as_json:
        emit_json(values)
        return
    width = max(map(len, values)) + 2
    for key, value in values.items():
        typer.echo(f"{key:{width}}{value}")
