"""`rodin`: train AtlasNet on your own meshes through a shared queue, with every checkpoint registered."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import typer
from rich.markup import escape
from typer.core import TyperGroup

from orchestrator.cli import admin, datasets, gc, infer, jobs, models, report, train, workers
from orchestrator.cli.context import settings
from orchestrator.cli.output import emit_json, err, json_requested
from orchestrator.errors import RodinError
from orchestrator.settings import redact


class RodinGroup(TyperGroup):
    """Every command's failure becomes one line on stderr (and one JSON object with --json) and
    an exit code, never a traceback; in-process callers (typer.testing) see the same."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except RodinError as exc:
            fail(str(exc), exc.exit_code, exc.json_fields)
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:
            if _is_usage_error(exc):
                usage_error(exc)
            if os.environ.get("RODIN_DEBUG"):
                raise
            fail(f"{_describe(exc)} (set RODIN_DEBUG=1 for the traceback)", 1)


app = typer.Typer(
    name="rodin",
    help=__doc__,
    cls=RodinGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
app.add_typer(datasets.app, name="datasets")
app.add_typer(models.app, name="models")
app.add_typer(train.app, name="submit")
app.add_typer(admin.db_app, name="db")
app.add_typer(admin.config_app, name="config")
# Top-level commands: status, cancel, reconstruct, evaluate, worker, workers, up, down, gc.
app.add_typer(jobs.app)
app.add_typer(infer.app)
app.add_typer(workers.app)
app.add_typer(gc.app)
app.add_typer(report.app)


def main() -> None:
    """The `rodin` console script."""
    app(prog_name="rodin")


def _is_usage_error(exc: Exception) -> bool:
    """Click's own errors (an unknown option, a bad value) are shown by Typer as usage errors.
    Typer >= 0.29 raises those of the click it bundles, so match by class name and module."""
    return any(cls.__name__ == "ClickException" and "click" in cls.__module__
               for cls in type(exc).__mro__)


def usage_error(exc: Exception) -> None:
    """A bad option or value (`--model abc`, an unknown option): one line, exit 2."""
    ctx = getattr(exc, "ctx", None)
    where = ctx.command_path if ctx is not None else "rodin"
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    fail(f"{' '.join(message.split())} (see `{where} --help`)", 2)


def _describe(exc: Exception) -> str:
    module = type(exc).__module__
    if module.startswith("sqlalchemy"):
        orig = getattr(exc, "orig", None)
        detail = " ".join(str(orig or exc).split())[:200]
        return redact(f"registry error at {settings().registry_url}: {detail}")
    if module.startswith(("kombu", "redis", "amqp")):
        return redact(f"cannot reach the queue at {settings().queue_url}: {exc}")
    return redact(f"{type(exc).__name__}: {' '.join(str(exc).split())}")


def fail(message: str, code: int, json_fields: Mapping[str, Any] | None = None) -> None:
    """One line on stderr (and `{"error": ..., **json_fields}` on stdout with --json), then exit `code`."""
    if json_requested():
        emit_json({"error": message, **(json_fields or {})})
    err.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


if __name__ == "__main__":
    main()
