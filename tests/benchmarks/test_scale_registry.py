"""The registry-at-scale benchmark runs on a tiny registry and reports what it promises.
No timing assertions: speed targets live in the benchmark's output, never in tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.scale_registry import commands, print_result, run_backend


def test_every_command_runs_and_the_reapers_plans_are_printed(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_backend("sqlite", {"models": 400, "jobs": 100, "depth": 60}, repeats=1)
    filled = result["filled"]
    assert (filled.models, filled.jobs, filled.deep_lineage) == (400, 100, 60)
    assert [r["command"] for r in result["rows"]] == [label for label, _ in commands(filled, Path("."))]
    for row in result["rows"]:
        assert row["ok"] and row["errors"] == [], row
    assert len(result["plans"]) >= 3 and all(p["plan"] for p in result["plans"])
    print_result(result, 1)
    out = capsys.readouterr().out
    assert "EXPLAIN QUERY PLAN" in out and "ix_jobs_status_heartbeat_at" in out and "FULL SCAN" not in out
