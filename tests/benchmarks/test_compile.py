"""Every benchmark script parses: they are run by hand, rarely, so nothing else would notice one
that no longer does."""

from __future__ import annotations

import py_compile
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("*.py"))


def test_there_are_scripts() -> None:
    assert len(SCRIPTS) > 1, f"no scripts found in {BENCHMARKS}"


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_script_compiles(path: Path, tmp_path: Path) -> None:
    # The bytecode goes to tmp_path: nothing is written into the checkout.
    py_compile.compile(str(path), cfile=str(tmp_path / "script.pyc"), doraise=True)
