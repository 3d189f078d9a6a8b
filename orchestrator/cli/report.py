"""`rodin report`: one self-contained HTML page telling a model's story."""

from __future__ import annotations

import typer

app = typer.Typer()
