"""A machine that dies costs only time: workers and job processes killed or stopped outright.

Each scenario ends with the same checks (tests/integration/recovery.py): the job succeeded, no
(job, epoch) was registered twice, and its checkpoints form one unbroken lineage.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.conftest import Rodin
from tests.integration.recovery import (
    FAST_RECOVERY,
    TRAIN,
    _cluster,
    _ended,
    _half_written_by_a_dead_process,
    _job,
    _job_process,
    _kill_when_training,
    _resumed_once,
    _until,
    _workers,
)


def test_embedded_worker_killed_outright_the_job_runs_again(tmp_path: Path) -> None:
    rodin = Rodin(tmp_path / "home", extra_env=FAST_RECOVERY)
    rodin.json("datasets", "make", "swords", "--count", "8", "--points-per-shape", "400")
    with _workers() as start:
        first = start(rodin, "e1")
        job_id = rodin.json("submit", "train", "--dataset", "swords", "--epochs", "300", *TRAIN)["job_id"]
        killed = _kill_when_training(rodin, first, job_id)
        half_written = _half_written_by_a_dead_process(rodin)
        # The message died with the worker (the embedded broker had handed it over): only the
        # registry knows the job, and the new worker's reaper sends it again.
        start(rodin, "e2")
        _until(lambda: (j := _job(rodin, job_id))["worker"] == "e2" and j["status"] == "running",
               what="the job running again")
        back_after = time.monotonic() - killed
        done = _ended(rodin, job_id)
    rows = _resumed_once(rodin, done, back_after, within=60)
    assert rows[-1].epoch == 300
    assert not half_written.exists()  # the worker that started next on this machine removed it


def test_redis_worker_killed_the_job_runs_again_without_the_visibility_timeout(
        tmp_path: Path, shared: dict[str, str]) -> None:
    client = _cluster(tmp_path, shared)  # visibility timeout: the default 24 h
    with _workers() as start:
        one = start(Rodin(tmp_path / "w1", extra_env=shared), "r1")
        job_id = client.json("submit", "train", "--dataset", "swords", "--epochs", "300", *TRAIN)["job_id"]
        _until(lambda: _job(client, job_id)["worker"] == "r1", what="r1 to take the job")
        start(Rodin(tmp_path / "w2", extra_env=shared), "r2")  # idle beside it
        killed = _kill_when_training(client, one, job_id)
        _until(lambda: (j := _job(client, job_id))["worker"] == "r2" and j["status"] == "running",
               what="the job running again")
        back_after = time.monotonic() - killed
        done = _ended(client, job_id)
    _resumed_once(client, done, back_after, within=60)


def test_a_stopped_job_process_is_ended_and_its_job_runs_again(
        tmp_path: Path, shared: dict[str, str]) -> None:
    """kill -STOP of the job process: its worker still beats, but the job makes no progress;
    after RODIN_PROGRESS_TIMEOUT_S the worker ends it and the job resumes elsewhere."""
    env = {**shared, "RODIN_PROGRESS_TIMEOUT_S": "4"}
    client = _cluster(tmp_path, env)
    with _workers() as start:
        one = start(Rodin(tmp_path / "w1", extra_env=env), "s1")
        job_id = client.json("submit", "train", "--dataset", "swords", "--epochs", "300", "--keep-best",
                             *[f for f in TRAIN if f != "--keep-last"])["job_id"]
        _until(lambda: _job(client, job_id)["worker"] == "s1", what="s1 to take the job")
        start(Rodin(tmp_path / "w2", extra_env=env), "s2")
        _until(lambda: len(_job(client, job_id)["model_ids"]) >= 2, what="two checkpoints")
        os.kill(_job_process(one), signal.SIGSTOP)
        stopped = time.monotonic()
        _until(lambda: (j := _job(client, job_id))["attempts"] == 2 and j["status"] == "running",
               timeout=60, what="the job running again")
        back_after = time.monotonic() - stopped
        done = _ended(client, job_id)
    # Within the progress timeout plus one reaper period (5 s), with room for a loaded machine.
    _resumed_once(client, done, back_after, within=4 + 5 + 6)
    assert "made no progress" in (tmp_path / "w1" / "s1.log").read_text()
