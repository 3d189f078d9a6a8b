"""The chaos soak's harness in short (scripts/soak_chaos.py): on Redis and PostgreSQL, a worker
SIGKILLed and Redis restarted while every kind of job runs, and the run still submits, cancels,
injects, drains, checks and tears everything down within its own bound.

The runs that judge the code are by hand and in CI: `python -m scripts.soak_chaos --minutes 3`
(and 30 minutes for the full one).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from scripts.soak_chaos import make_plan, report, run_chaos
from tests.servers import ServerUnavailable


def test_chaos_harness_injects_drains_checks_and_tears_down(tmp_path: Path) -> None:
    plan = make_plan(minutes=0.4, workers=2, jobs=4, seed=0, epochs=60,
                     faults=("kill_worker", "redis_restart"))
    started = time.monotonic()
    try:
        result = run_chaos(plan, root=tmp_path / "chaos")
    except ServerUnavailable as exc:
        pytest.skip(str(exc))
    lines: list[str] = []
    report(result, lines.append)
    text = "\n".join(lines)
    print(text)  # the table, with `pytest -s`
    assert "| check | result |" in text
    # Bounded: 24 s of faults, a drain of at most 64 s, and setup and teardown.
    assert time.monotonic() - started < 150, text
    checks = {c.name: c for c in result.checks}
    for name in ("every submission accepted", "every enabled kind of fault injected",
                 "no job left queued, waiting or running",
                 "no process of the cluster left after the workers stopped"):
        assert checks[name].ok, text
    assert result.faults_by_kind["kill_worker"] >= 1 and result.faults_by_kind["redis_restart"] >= 1, text
    assert {"twin", "sweep", "pretrain", "finetune", "cancel", "reconstruct", "evaluate"} <= set(result.jobs_by_kind), text
    assert result.jobs_by_state.get("cancelled", 0) >= 1, text
