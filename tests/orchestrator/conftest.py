"""An in-process registry (SQLite under a temporary RODIN_HOME) with one dataset row, for the
tests of the job service, the reaper and job dependencies."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.settings import Settings, load_settings
from tests.conftest import dataset_row


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings({"RODIN_HOME": str(tmp_path / "home")})


@pytest.fixture
def dataset_id(settings: Settings) -> int:
    """A registered dataset row (its artifact is never read by these tests)."""
    return dataset_row(settings)
