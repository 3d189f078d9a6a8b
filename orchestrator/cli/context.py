"""Shared plumbing for CLI commands: settings, registry sessions, the queue."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import TYPE_CHECKING

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


def store():  # type: ignore[no-untyped-def]
    from orchestrator.artifacts import open_store

    return open_store(settings())
