"""Shared plumbing for CLI commands: the settings, the artifact store, ingestion limits.
The registry is reached only through the services (no session here)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.settings import Settings, load_settings

if TYPE_CHECKING:
    from atlas_core.mesh_io import Limits


#: Registry ids are 64-bit integers: an id option outside this range is a usage error (exit 2),
#: never an overflow inside the database driver.
ID_MIN, ID_MAX = 1, 2**63 - 1


@lru_cache(maxsize=1)
def settings() -> Settings:
    return load_settings()


def store():
    from orchestrator.artifacts import open_store

    return open_store(settings())


def mesh_limits() -> Limits:
    """The settings' ingestion limits, for atlas_core.mesh_io (which cannot read settings)."""
    from orchestrator.settings import mesh_limits as limits_of

    return limits_of(settings())


def download_outputs(outputs: list[dict[str, Any]], folder: Path,
                     kinds: set[str] | None = None) -> list[str]:
    """`orchestrator.artifacts.download` from the settings' store."""
    from orchestrator.artifacts import download

    return download(store(), outputs, folder, kinds)
