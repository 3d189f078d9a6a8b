"""Console output: rich for people on stderr/stdout, exactly one JSON object for scripts."""

from __future__ import annotations

import json
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

console = Console()
err = Console(stderr=True)

_json_mode = ContextVar("rodin_json_mode", default=False)


def _remember_json(value: bool) -> bool:
    # Read by the error handler, which runs outside the command that parsed the option.
    _json_mode.set(bool(value))
    return value


def json_requested() -> bool:
    """Whether the running command was given --json."""
    return _json_mode.get()


#: The `--json` option every command takes: one JSON object on stdout, nothing else there.
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.",
                                    callback=_remember_json)]


def emit_json(obj: dict[str, Any]) -> None:
    """Print `obj` as strict JSON: a non-finite float (a diverged loss) becomes null, because
    `NaN` and `Infinity` are not JSON and would break the script reading it."""
    from orchestrator.finite import finite

    print(json.dumps(finite(obj), default=str, allow_nan=False))


def age(moment: datetime | str | None) -> str:
    """'3m', '2h', ... since a moment (aware, or its ISO text)."""
    if not moment:
        return "-"
    then = datetime.fromisoformat(moment) if isinstance(moment, str) else moment
    seconds = (datetime.now(timezone.utc) - then).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


STATUS_STYLE = {
    "waiting": "dim yellow",
    "queued": "yellow",
    "running": "cyan",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "magenta",
}


def styled_status(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]"


#: How a listing's column behaves when the terminal is narrow: a number or a word is never cut
#: (right-aligned or not), a text folds onto more lines rather than losing characters.
NUMBER, WORD, TEXT = "number", "word", "text"


def listing(*columns: tuple[str, str], title: str | None = None) -> Table:
    """A table made for 80 columns: header and a light rule, two spaces between columns (one
    of padding beside the box's divider), and each column's behaviour by its kind."""
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False, title=title)
    for header, kind in columns:
        if kind == NUMBER:
            table.add_column(header, justify="right", no_wrap=True)
        elif kind == WORD:
            table.add_column(header, no_wrap=True)
        else:
            table.add_column(header, overflow="fold")
    return table
