"""A registry URL whose database driver is not installed: one line naming the driver, the
URL's scheme and the extra to install, a non-zero exit code, no traceback, no password."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from tests.conftest import Rodin

URL = "postgresql+psycopg://rodin:SECRET@127.0.0.1:1/rodin"


@pytest.fixture
def no_psycopg(monkeypatch: pytest.MonkeyPatch) -> None:
    """`import psycopg` raises ModuleNotFoundError, as where the extra is not installed."""
    for name in [m for m in sys.modules if m == "psycopg" or m.startswith("psycopg.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "psycopg", None)


def test_status_names_the_missing_extra(no_psycopg: None, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rodin = Rodin(tmp_path / "home", extra_env={"RODIN_DATABASE_URL": URL})
    result = rodin.cli("status")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = " ".join(result.stderr.split())
    assert "'psycopg'" in line and "postgresql+psycopg://" in line
    assert "pip install 'rodin[postgres]'" in line
    assert "Traceback" not in result.stdout + result.stderr and "SECRET" not in line
    assert result.stdout == ""


def test_json_mode_gets_the_same_line(no_psycopg: None, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rodin = Rodin(tmp_path / "home", extra_env={"RODIN_DATABASE_URL": URL})
    out = rodin.json("status", expect_code=2)
    assert "rodin[postgres]" in out["error"] and "SECRET" not in out["error"]


@pytest.mark.skipif(importlib.util.find_spec("pg8000") is not None, reason="pg8000 is installed")
def test_another_driver_in_a_real_process(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rodin = Rodin(tmp_path / "home", extra_env={"RODIN_DATABASE_URL": "postgresql+pg8000://u:SECRET@h/db"})
    result = rodin.run("status", timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == ("error: the registry URL postgresql+pg8000:// needs the database "
                                     "driver 'pg8000', which is not installed: pip install pg8000")


def test_a_driver_that_fails_to_import_is_named_too() -> None:
    from orchestrator.registry.db import _missing_driver

    error = _missing_driver(URL, ImportError("no pq wrapper available: libpq not found"))
    assert str(error) == ("the database driver for the registry URL postgresql+psycopg:// cannot be "
                          "imported (no pq wrapper available: libpq not found); reinstall it with "
                          "pip install 'rodin[postgres]'")
    assert error.exit_code == 2
