"""An in-process registry (SQLite under a temporary RODIN_HOME) with one dataset row, for the
tests of the job service, the reaper and job dependencies."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.registry.db import session_scope
from orchestrator.registry.models import Dataset
from orchestrator.settings import Settings, load_settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings({"RODIN_HOME": str(tmp_path / "home")})


@pytest.fixture
def dataset_id(settings: Settings) -> int:
    """A registered dataset row (its artifact is never read by these tests)."""
    with session_scope(settings) as s:
        ds = Dataset(name="d", version=1, content_sha256="0" * 64, shape_count=1, points_per_shape=1,
                     source="test", skipped=[], artifact_uri="file:///nowhere", artifact_sha256="0" * 64)
        s.add(ds)
        s.flush()
        return ds.id
