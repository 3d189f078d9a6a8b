"""A worker told to stop at once (SIGQUIT: `rodin down`, `docker compose stop`) in the middle of a
training on Redis: the job goes back to the queue, and the next worker resumes it from its newest
registered checkpoint, with the lineage unbroken and no epoch registered twice. Then the process
running the job is killed outright: the worker survives and the job comes back at once."""

from __future__ import annotations

import os
import signal
from functools import partial
from pathlib import Path

from sqlalchemy import select

from tests.conftest import Rodin, stop_process, until

LONG = ["--epochs", "400", "--patches", "4", "--points", "128", "--bottleneck", "32",
        "--hidden", "32", "--layers", "1", "--batch-size", "4", "--checkpoint-every", "1",
        "--val-fraction", "0.25"]


def _job(rodin: Rodin, job_id: int) -> dict:
    return rodin.json("status", str(job_id))


_until = partial(until, timeout=120)


def test_cold_stop_requeues_and_the_next_worker_resumes(tmp_path, redis_server, postgres_server) -> None:  # type: ignore[no-untyped-def]
    from orchestrator.registry.db import session_scope
    from orchestrator.registry.models import ModelCheckpoint

    shared = {"RODIN_BROKER_URL": redis_server.url,
              "RODIN_DATABASE_URL": postgres_server.create_database("stop"),
              "RODIN_ARTIFACTS_URL": (tmp_path / "artifacts").as_uri(),
              "RODIN_SOFT_SHUTDOWN_S": "1", "OMP_NUM_THREADS": "1"}
    client = Rodin(tmp_path / "client", extra_env=shared)
    client.json("db", "upgrade")
    client.json("datasets", "make", "swords", "--count", "8", "--points-per-shape", "600")
    first = Rodin(tmp_path / "m1", extra_env=shared)
    w1 = first.start_worker("m1")
    try:
        job_id = client.json("submit", "train", "--dataset", "swords", *LONG)["job_id"]
        _until(lambda: len(_job(client, job_id)["model_ids"]) >= 1, what="a checkpoint")
        w1.send_signal(signal.SIGQUIT)
        assert w1.wait(60) == 0
    finally:
        stop_process(w1)
    log = (first.home / "m1.log").read_text()
    assert "Restoring 1 unacknowledged message(s)" in log
    assert "gave back job(s)" in log
    interrupted = _job(client, job_id)
    # Not failed, not finished: given back, the job waits for its message to be delivered again;
    # a clean stop is not counted as a lost attempt.
    assert interrupted["status"] == "queued" and interrupted["attempts"] == 1
    assert interrupted["error"] is None and interrupted["lost"] == 0
    before = len(interrupted["model_ids"])

    second = Rodin(tmp_path / "m2", extra_env=shared)
    w2 = second.start_worker("m2")
    try:
        resumed = _until(lambda: (j := _job(client, job_id))["attempts"] == 2
                         and len(j["model_ids"]) > before and j, what="the resumed attempt")
        assert resumed["worker"] == "m2" and resumed["status"] == "running"
        # The job's process (the worker's prefork child) dies, e.g. at the hands of the OOM killer.
        children = Path(f"/proc/{w2.pid}/task/{w2.pid}/children").read_text().split()
        assert len(children) == 1, children
        os.kill(int(children[0]), signal.SIGKILL)
        count = len(resumed["model_ids"])
        again = _until(lambda: (j := _job(client, job_id))["attempts"] == 3
                       and len(j["model_ids"]) > count and j, what="the attempt after the crash")
        assert again["worker"] == "m2" and w2.poll() is None and again["lost"] == 1
        client.json("cancel", str(job_id))
        done = _until(lambda: (j := _job(client, job_id))["status"] != "running" and j,
                      what="the cancel")
        assert done["status"] == "cancelled"
    finally:
        stop_process(w2)
    with session_scope(client.settings()) as s:
        rows = s.execute(select(ModelCheckpoint.id, ModelCheckpoint.epoch, ModelCheckpoint.parent_id)
                         .where(ModelCheckpoint.job_id == job_id)
                         .order_by(ModelCheckpoint.id)).all()
    epochs = [r.epoch for r in rows]
    assert epochs == list(range(1, len(rows) + 1)), epochs  # resumed after the newest: no repeats
    assert [r.parent_id for r in rows[1:]] == [r.id for r in rows[:-1]]  # one unbroken lineage
    received = sum(h.home.joinpath(f"{n}.log").read_text().count("Task rodin.train[")
                   for h, n in ((first, "m1"), (second, "m2")))
    assert received >= 2
