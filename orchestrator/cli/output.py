"""Console output: rich for people on stderr/stdout, exactly one JSON object for scripts."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from rich.console import Console

console = Console()
err = Console(stderr=True)


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
