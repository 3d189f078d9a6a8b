"""`rodin submit sweep`: one training job per combination of settings."""

from __future__ import annotations

import typer

app = typer.Typer()
