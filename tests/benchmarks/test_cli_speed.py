"""The client-commands benchmark runs on a tiny registry and reports what it promises.
No timing assertions: speed targets live in the benchmark's output, never in tests."""

from __future__ import annotations

import json
from typing import Any

import pytest

from benchmarks.cli_speed import TARGET_S, benchmark, commands, print_report

COMMANDS = ["models show", "models show --json", "models tree", "status", "models tags"]
ROW_KEYS = {"command", "argv", "runs_s", "median_s", "min_s", "max_s", "cpu_runs_s", "cpu_median_s", "exit_codes",
            "ok", "errors", "meets_target", "max_under_target", "probe_exit_code", "torch_imported",
            "heavy_modules", "modules", "import_cli_s", "command_s", "import_s", "top_imports"}


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    return benchmark(models=20, jobs_total=10, repeats=1)


def test_registry_as_asked(result: dict[str, Any]) -> None:
    reg = result["registry"]
    assert reg["models"] == 20 and reg["jobs"] == 10 and reg["datasets"] >= 2
    assert sum(reg["jobs_by_kind"].values()) == 10 and sum(reg["jobs_by_status"].values()) == 10
    assert {"train", "reconstruct"} <= set(reg["jobs_by_kind"])
    assert {"succeeded", "running", "waiting", "queued"} <= set(reg["jobs_by_status"])
    # The model `models show` is timed on: a fine-tune of a fine-tune, so lineage crosses jobs.
    assert reg["deep_job_depth"] >= 3 and reg["deep_lineage"] >= 2 and reg["deep_model_id"] > 0
    assert reg["aliases"] >= 1 and reg["alias_events"] >= reg["aliases"]


def test_every_command_ran(result: dict[str, Any]) -> None:
    assert [r["command"] for r in result["commands"]] == COMMANDS
    for row in result["commands"]:
        assert ROW_KEYS <= set(row), row["command"]
        assert row["ok"] and row["errors"] == [], (row["command"], row["errors"])
        assert row["exit_codes"] == [0, 0] and row["probe_exit_code"] == 0  # the warm-up and one timed run
        assert len(row["runs_s"]) == len(row["cpu_runs_s"]) == 1
        assert row["min_s"] <= row["median_s"] <= row["max_s"] and row["median_s"] > 0
        assert row["import_s"] > 0 and row["top_imports"] and row["modules"] > 0
        assert isinstance(row["torch_imported"], bool) and isinstance(row["meets_target"], bool)
    assert result["all_ok"] is True
    assert result["target_s"] == TARGET_S and result["repeats"] == 1
    assert set(result["baseline"]) == {"python", "python + import sqlalchemy.orm"}
    machine = result["machine"]
    assert machine["nproc"] >= 1 and machine["python"]
    assert len(machine["load_average_start"]) == len(machine["load_average_end"]) == 3


def test_commands_name_the_deep_model() -> None:
    from benchmarks.cli_speed import Built

    argv = dict(commands(Built(deep_model_id=42)))
    assert argv["models show"] == ["models", "show", "42"]
    assert argv["models show --json"] == ["models", "show", "42", "--json"]


def test_report_and_json(result: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert json.loads(json.dumps(result)) == result  # what --json prints: one JSON object
    print_report(result)
    text = capsys.readouterr().out
    for label in COMMANDS:
        assert label in text
    assert "torch imported by none of them" in text and "load average" in text
