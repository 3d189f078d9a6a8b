"""Console output: rich for people on stderr/stdout, exactly one JSON object for scripts."""

from __future__ import annotations

import json
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Annotated, Any

import typer
from rich.console import Console

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
    print(json.dumps(obj, default=str))


def age(iso: str | None) -> str:
    """'3m', '2h', ... since an ISO timestamp."""
    if not iso:
        return "-"
    seconds = (datetime.now(timezone.utc) - datetime.fromisoformat(iso)).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


STATUS_STYLE = {
    "queued": "yellow",
    "running": "cyan",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "magenta",
}


def styled_status(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]"
