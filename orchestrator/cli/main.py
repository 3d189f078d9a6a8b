"""`rodin`: train AtlasNet on your own meshes through a shared queue, with every checkpoint registered."""

from __future__ import annotations

import os
import sys

import click
import typer

from orchestrator.cli import datasets, jobs, models, workers
from orchestrator.cli.context import settings
from orchestrator.cli.output import emit_json, err
from orchestrator.errors import RodinError

app = typer.Typer(
    name="rodin",
    help=__doc__,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
app.add_typer(datasets.app, name="datasets")
app.add_typer(models.app, name="models")
app.add_typer(jobs.submit_app, name="submit")
db_app = typer.Typer(help="The registry's schema.", no_args_is_help=True)
config_app = typer.Typer(help="Where rodin keeps things.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(config_app, name="config")
jobs.register(app)
workers.register(app)

JsonOpt = typer.Option(False, "--json", help="Print one JSON object on stdout.")


@db_app.command("upgrade")
def db_upgrade(as_json: bool = JsonOpt) -> None:
    """Create or upgrade the registry schema to the newest migration."""
    from orchestrator.registry.db import head_revision, upgrade

    upgrade(settings().registry_url)
    url = settings().registry_url
    if as_json:
        emit_json({"revision": head_revision(), "database_url": _redact(url)})
    else:
        err.print(f"Registry at {_redact(url)} is at revision {head_revision()}.")


@config_app.command("show")
def config_show(as_json: bool = JsonOpt) -> None:
    """Show the settings in force (from RODIN_* variables, the config file, or defaults)."""
    values = {k: _redact(v) for k, v in settings().as_dict().items()}
    if as_json:
        emit_json(values)
        return
    width = max(map(len, values)) + 2
    for key, value in values.items():
        typer.echo(f"{key:{width}}{value}")


def _redact(url: str) -> str:
    """Hide a password in a URL."""
    if "://" in url and "@" in url.split("://", 1)[1]:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


def _wants_json(argv: list[str]) -> bool:
    return "--json" in argv


def main() -> None:
    """Entry point: one-line errors and exit codes instead of tracebacks."""
    argv = sys.argv[1:]
    try:
        rv = app(args=argv, prog_name="rodin", standalone_mode=False)
    except RodinError as exc:
        _fail(str(exc), exc.exit_code, argv)
    except click.exceptions.Abort:
        err.print("Aborted.")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
        if os.environ.get("RODIN_DEBUG"):
            raise
        _fail(f"{_describe(exc)} (set RODIN_DEBUG=1 for the traceback)", 1, argv)
    sys.exit(rv if isinstance(rv, int) else 0)


def _describe(exc: Exception) -> str:
    module = type(exc).__module__
    if module.startswith("sqlalchemy"):
        orig = getattr(exc, "orig", None)
        detail = " ".join(str(orig or exc).split())[:200]
        return f"registry error at {_redact(settings().registry_url)}: {detail}"
    if module.startswith(("kombu", "redis", "amqp")):
        return f"cannot reach the queue at {_redact(settings().queue_url)}: {exc}"
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _fail(message: str, code: int, argv: list[str]) -> None:
    if _wants_json(argv):
        emit_json({"error": message})
    err.print(f"[red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
