"""Shared plumbing for CLI commands: settings, registry sessions, the queue."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.settings import Settings, load_settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


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


def download_outputs(outputs: list[dict[str, Any]], folder: Path,
                     kinds: set[str] | None = None) -> list[str]:
    """Copy a job's output artifacts (checked against their sha256) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    artifacts = store()
    paths = []
    for out in outputs:
        if kinds is None or out.get("kind") in kinds:
            target = folder / out["name"]
            target.write_bytes(artifacts.get_bytes(out["uri"], out["sha256"]))
            paths.append(str(target))
    return paths
