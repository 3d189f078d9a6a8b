"""Shared plumbing for CLI commands: settings, registry sessions, the queue."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.errors import RodinError
from orchestrator.settings import Settings, load_settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from atlas_core.mesh_io import Limits


#: Registry ids are 64-bit integers: an id option outside this range is a usage error (exit 2),
#: never an overflow inside the database driver.
ID_MIN, ID_MAX = 1, 2**63 - 1


@lru_cache(maxsize=1)
def settings() -> Settings:
    return load_settings()


@contextmanager
def registry() -> Iterator[Session]:
    from orchestrator.registry.db import session_scope

    with session_scope(settings()) as session:
        yield session


def store():
    from orchestrator.artifacts import open_store

    return open_store(settings())


def mesh_limits() -> Limits:
    """The settings' ingestion limits, for atlas_core.mesh_io (which cannot read settings)."""
    from orchestrator.settings import mesh_limits as limits_of

    return limits_of(settings())


def download_outputs(outputs: list[dict[str, Any]], folder: Path,
                     kinds: set[str] | None = None) -> list[str]:
    """Copy a job's output artifacts (checked against their sha256) into `folder`.

    Output names come from the job's row, so each is reduced to a plain file name first: a row
    must never make the client write outside `folder`."""
    from orchestrator.artifacts import safe_name

    chosen = [out for out in outputs if kinds is None or out.get("kind") in kinds]
    names = []
    for out in chosen:  # every name is checked before anything is written
        try:
            names.append(safe_name(out.get("name")))
        except ValueError as exc:
            raise RodinError(f"job output not saved to {folder}: {exc}") from None
    folder.mkdir(parents=True, exist_ok=True)
    artifacts = store()
    paths = []
    for out, name in zip(chosen, names):
        target = folder / name
        target.write_bytes(artifacts.get_bytes(out["uri"], out["sha256"]))
        paths.append(str(target))
    return paths
