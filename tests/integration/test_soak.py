"""The soak in short (scripts/soak_kill.py): workers SIGKILLed while trainings run on Redis and
PostgreSQL, and every job still succeeds with one unbroken lineage and no unlisted leftovers.

The full run (20 jobs, 12 kills) is by hand: `python -m scripts.soak_kill`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.soak_kill import report, soak
from tests.servers import ServerUnavailable


def test_workers_killed_at_random_every_job_still_succeeds(tmp_path: Path) -> None:
    try:
        # Kills aimed at workers that run a job, so that three kills do interrupt trainings; an
        # epoch of this model takes ~50 ms, so 150 of them keep each job running for the kills.
        result = soak(jobs=3, workers=2, kills=3, kill_every_s=3.0, timeout_s=180.0, epochs=150,
                      target="busy", seed=0, root=tmp_path / "soak")
    except ServerUnavailable as exc:
        pytest.skip(str(exc))
    lines: list[str] = []
    report(result, lines.append)
    text = "\n".join(lines)
    print(text)  # the figures, with `pytest -s`
    assert result.ok, text
    assert result.kills >= 2, text
    assert result.kills_on_running_job >= 1, text
    # Each interrupted job was taken back and ran again on another worker.
    assert result.not_running_again == 0, text
    assert result.running_again.n == result.kills_on_running_job, text
    assert sum(result.lost_histogram.values()) == 3, text
    assert sum(lost * n for lost, n in result.lost_histogram.items()) >= result.kills_on_running_job, text
