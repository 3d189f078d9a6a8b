"""A machine that dies costs only time: the registry and the broker stopped or restarted
mid-training, and a broker that hands a job out again before it ends.

Each scenario ends with the same checks (tests/integration/recovery.py): the job succeeded, no
(job, epoch) was registered twice, and its checkpoints form one unbroken lineage.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.conftest import Rodin, stop_process
from tests.integration.recovery import (
    FAST_RECOVERY,
    TRAIN,
    _checkpoints_are_one_lineage,
    _cluster,
    _ended,
    _job,
    _Redis,
    _until,
    _workers,
)


def test_a_visibility_timeout_shorter_than_the_job_never_runs_it_twice(
        tmp_path: Path, shared: dict[str, str]) -> None:
    env = {**shared, "RODIN_VISIBILITY_TIMEOUT_S": "2"}
    client = _cluster(tmp_path, env)
    with _workers() as start:
        for i in (1, 2):
            start(Rodin(tmp_path / f"w{i}", extra_env=env), f"v{i}")
        job_id = client.json("submit", "train", "--dataset", "swords", "--epochs", "30", *TRAIN)["job_id"]
        done = _ended(client, job_id)
    assert done["status"] == "succeeded" and done["attempts"] == 1, done
    _checkpoints_are_one_lineage(client, job_id)


def test_postgres_restarted_during_training(tmp_path: Path, shared: dict[str, str], postgres_server) -> None:  # type: ignore[no-untyped-def]
    client = _cluster(tmp_path, shared)
    worker = Rodin(tmp_path / "w", extra_env=shared).start_worker("p1")
    try:
        job_id = client.json("submit", "train", "--dataset", "swords", "--epochs", "300", *TRAIN)["job_id"]
        for _ in range(2):
            _until(lambda: len(_job(client, job_id)["model_ids"]) >= 3, what="checkpoints")
            postgres_server.restart()
            time.sleep(1.5)
        done = _ended(client, job_id)
    finally:
        stop_process(worker)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 1
    rows = _checkpoints_are_one_lineage(client, job_id)
    assert [r.epoch for r in rows] == list(range(1, 301))


def test_redis_killed_and_restarted_during_training(tmp_path: Path, postgres_server) -> None:  # type: ignore[no-untyped-def]
    redis = _Redis(tmp_path / "redis")
    (tmp_path / "redis").mkdir()
    redis.start()
    env = {"RODIN_BROKER_URL": redis.url, "RODIN_DATABASE_URL": postgres_server.create_database("rk"),
           "RODIN_ARTIFACTS_URL": (tmp_path / "artifacts").as_uri(), **FAST_RECOVERY}
    try:
        client = _cluster(tmp_path, env)
        worker = Rodin(tmp_path / "w", extra_env=env).start_worker("k1")
        try:
            job_id = client.json("submit", "train", "--dataset", "swords", "--epochs", "30", *TRAIN)["job_id"]
            _until(lambda: len(_job(client, job_id)["model_ids"]) >= 3, what="checkpoints")
            redis.kill()  # kill -9: what the last second wrote may be lost
            time.sleep(2)
            redis.start()
            queued = client.json("submit", "train", "--dataset", "swords", "--epochs", "2", *TRAIN)["job_id"]
            ends = [_ended(client, j) for j in (job_id, queued)]
        finally:
            stop_process(worker)
    finally:
        redis.kill()
    for done in ends:
        assert done["status"] == "succeeded", done["error"]
    assert ends[0]["attempts"] == 1  # the training went on through the broker's restart
    _checkpoints_are_one_lineage(client, job_id)


def test_a_postgres_outage_longer_than_the_stale_window_takes_back_nobody(
        tmp_path: Path, shared: dict[str, str], postgres_server) -> None:  # type: ignore[no-untyped-def]
    """No worker can beat while the registry is away; none is dead for it. Outage: 2.5 stale
    windows (RODIN_OUTAGE_S to try others: the README's figures use 30 and 120 s)."""
    outage_s = float(os.environ.get("RODIN_OUTAGE_S", "15"))
    client = _cluster(tmp_path, shared)
    with _workers() as start:
        for i in (1, 2):
            start(Rodin(tmp_path / f"w{i}", extra_env=shared), f"o{i}")
        ids = [client.json("submit", "train", "--dataset", "swords", "--epochs", "400", *TRAIN)["job_id"]
               for _ in range(2)]
        for job_id in ids:
            _until(lambda j=job_id: len(_job(client, j)["model_ids"]) >= 2, what="both jobs training")
        postgres_server.stop()
        time.sleep(outage_s)
        postgres_server.start()
        ends = [_ended(client, j, timeout=300) for j in ids]
    logs = "".join((tmp_path / f"w{i}" / f"o{i}.log").read_text() for i in (1, 2))
    assert "reaper requeued" not in logs
    for done in ends:
        assert done["status"] == "succeeded", done["error"]
        assert (done["attempts"], done["lost"]) == (1, 0), done
        _checkpoints_are_one_lineage(client, done["id"])

