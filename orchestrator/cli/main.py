"""`rodin`: train AtlasNet on your own meshes through a shared queue, with every checkpoint registered."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from typing import Any

import typer
from rich.cells import cell_len
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup, TyperOption

from orchestrator.cli import admin, datasets, gc, infer, jobs, models, report, train, workers
from orchestrator.cli.context import settings
from orchestrator.cli.output import emit_json, err, json_requested
from orchestrator.errors import RodinError
from orchestrator.settings import redact


def _readable_help() -> None:
    """Make every command's help read like Typer's own docs (installed once, on import).

    (pyproject pins Typer below 0.29 for start-up time; the first patch keeps help readable if
    that bound is lifted.) Typer 0.29's rich help draws an option's type from `display_type_rich`, which gives a flag
    the type `<bool>` (its plain-text help skips flags), and builds the options panel as a table
    whose columns rich may all shrink alike, so at 80 columns `--no-augment-rotate` became
    `--no-augment-rota…`. Here flags have no type, and the option-name columns never shrink (the
    help text wraps instead). Typer's rich module is patched only when help is drawn, so that
    commands which print no help do not pay for importing it.
    """
    show_type = getattr(TyperOption, "display_type_rich", None)  # Typer < 0.29 has none
    if show_type is not None and not getattr(show_type, "rodin_patched", False):
        def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
            return None if self.is_flag else show_type(self, ctx)

        display_type_rich.rodin_patched = True  # type: ignore[attr-defined]
        setattr(TyperOption, "display_type_rich", display_type_rich)  # noqa: B010 (absent before 0.29)
    for cls in (TyperCommand, TyperGroup):
        draw: Callable[..., None] = cls.format_help
        if getattr(draw, "rodin_patched", False):
            continue

        def format_help(self: Any, ctx: Any, formatter: Any, _draw: Callable[..., None] = draw) -> None:
            _keep_option_names_whole()
            _draw(self, ctx, formatter)

        format_help.rodin_patched = True  # type: ignore[attr-defined]
        cls.format_help = format_help  # type: ignore[method-assign]


def _keep_option_names_whole() -> None:
    """Typer's options panel, with its option-name columns (all but the type and the help) kept
    whole: rich then wraps the help column rather than cutting a name with an ellipsis."""
    from rich.panel import Panel
    from rich.table import Table
    from typer import rich_utils

    draw_panel = rich_utils._print_options_panel
    if getattr(draw_panel, "rodin_patched", False):
        return

    class NamesWhole:
        """The console the panel is printed on, fixing the table's columns first."""

        def __init__(self, console: Any) -> None:
            self._console = console

        def print(self, renderable: Any, *args: Any, **kwargs: Any) -> None:
            table = renderable.renderable if isinstance(renderable, Panel) else None
            if isinstance(table, Table) and table.columns:
                _fit_options_table(table)
            self._console.print(renderable, *args, **kwargs)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._console, name)

    def print_options_panel(**kwargs: Any) -> None:
        if "console" in kwargs:
            kwargs["console"] = NamesWhole(kwargs["console"])
        draw_panel(**kwargs)

    print_options_panel.rodin_patched = True  # type: ignore[attr-defined]
    rich_utils._print_options_panel = print_options_panel


def _fit_options_table(table: Any) -> None:
    """Columns of Typer's options table: [required], names (long, short, negative long,
    negative short), type, help. A flag's negative name goes under its positive one (one
    column of names, not two mostly empty ones: the help keeps its width at 80 columns), names
    are never shrunk, a word too long for the help column folds instead of losing its end, and
    a column empty in every row gives its padding to the help."""
    *names, type_column, help_column = table.columns
    if len(names) >= 4:
        long, short, negative_long, negative_short = names[-4:]
        _stack(long, negative_long)
        _stack(short, negative_short)
    for column in names:
        column.no_wrap = True
        # no_wrap (or a minimum width) alone still lets rich cut the column when the help
        # column's cells (Columns, which do not measure themselves) claim the whole width; a
        # fixed width is never collapsed.
        column.width = max((cell_len(line) for cell in column.cells
                            for line in getattr(cell, "plain", "").splitlines()), default=0) or None
    for row, cell in enumerate(type_column._cells):
        _hide_storage_bounds(type_column, row, cell)
    # A range goes under its type (`<int range>` then `[x>=2]`), not beside it.
    type_column.max_width = max((cell_len(part) for cell in type_column.cells
                                 for part in getattr(cell, "plain", "").replace(" [", "\n[").splitlines()),
                                default=0) or None
    help_column.overflow = "fold"
    table.columns[:] = [c for c in table.columns if any(_shows_something(cell) for cell in c.cells)]
    for index, column in enumerate(table.columns):  # rich pads and measures a column by its index
        column._index = index


def _hide_storage_bounds(column: Any, row: int, cell: Any) -> None:
    """`[1<=x<=9223372036854775807]` (an id's bound is the database's integer) reads `[x>=1]`:
    the upper bound is still enforced, as a one-line usage error."""
    import re

    from rich.text import Text

    plain = getattr(cell, "plain", None)
    if plain and re.search(r"<=\d{10,}\]", plain):
        shown = re.sub(r"\[(-?\d+)<=x<=\d{10,}\]", r"[x>=\1]", plain)
        column._cells[row] = Text(shown, style=cell.style)


def _stack(upper: Any, lower: Any) -> None:
    """Move each non-empty cell of column `lower` under the cell of `upper` in its row."""
    from rich.text import Text

    for row, (top, bottom) in enumerate(zip(upper._cells, lower._cells)):
        if isinstance(top, Text) and isinstance(bottom, Text) and bottom.plain.strip():
            both = top.copy()
            if both.plain:
                both.append("\n")
            both.append_text(bottom)
            upper._cells[row], lower._cells[row] = both, Text("")


def _shows_something(cell: Any) -> bool:
    text = getattr(cell, "plain", cell)
    return not isinstance(text, str) or bool(text.strip())


_readable_help()


def _one_line_summaries(group: typer.Typer) -> None:
    """A command's summary in its group's list is its docstring's first paragraph on one line:
    with rich markup Typer keeps the docstring's own line breaks there, which break the list's
    narrow help column in odd places."""
    for info in group.registered_commands:
        doc = info.help or (info.callback.__doc__ if info.callback else None)
        if info.short_help is None and doc:
            info.short_help = " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())
    for sub in group.registered_groups:
        if sub.typer_instance is not None:
            _one_line_summaries(sub.typer_instance)


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
        except (typer.Exit, typer.Abort, BrokenPipeError):  # `rodin ... | head`: click exits quietly
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
_one_line_summaries(app)


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
