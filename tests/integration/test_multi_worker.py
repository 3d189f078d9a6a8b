"""Several machines, one queue: two workers and a client, each with its own RODIN_HOME, against
one Redis broker, one PostgreSQL registry and one artifact folder that they all share.

Every job runs exactly once, every checkpoint is registered once, both workers work, and the
client gets every reconstruction's outputs back through the artifact store.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.conftest import Rodin, stop_process

TINY = ["--epochs", "3", "--patches", "4", "--points", "128", "--bottleneck", "32",
        "--hidden", "32", "--layers", "1", "--batch-size", "4", "--checkpoint-every", "1",
        "--val-fraction", "0.25"]
TRAININGS, RECONSTRUCTIONS = 6, 6


class Cluster:
    """The client, the workers' homes and the shared settings."""

    def __init__(self, root: Path, shared_env: dict[str, str]):
        self.root, self.shared_env = root, shared_env
        self.client = Rodin(root / "client", extra_env=shared_env)
        self.homes = {name: Rodin(root / name, extra_env=shared_env) for name in ("w1", "w2")}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def log(self, name: str) -> str:
        return (self.homes[name].home / f"{name}.log").read_text()

    def session(self):  # type: ignore[no-untyped-def]
        from orchestrator.registry.db import session_scope

        return session_scope(self.client.settings())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, redis_server, postgres_server):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("machines")
    shared = {
        "RODIN_BROKER_URL": redis_server.url,
        "RODIN_DATABASE_URL": postgres_server.create_database("multi"),
        "RODIN_ARTIFACTS_URL": (root / "shared-artifacts").as_uri(),
        "OMP_NUM_THREADS": "1",  # two workers on a small CI machine: no thread oversubscription
    }
    c = Cluster(root, shared)
    # A shared registry is never upgraded behind anyone's back: until `rodin db upgrade`, every
    # command says what to do.
    refused = c.client.run("status")
    assert refused.returncode != 0 and "rodin db upgrade" in refused.stderr
    assert c.client.json("db", "upgrade")["revision"]
    c.client.json("datasets", "make", "swords", "--count", "8", "--points-per-shape", "600")
    try:
        for name, home in c.homes.items():
            c.procs[name] = home.start_worker(name)
        yield c
    finally:
        for proc in c.procs.values():
            stop_process(proc)


def _finished(c: Cluster, job_ids: list[int], timeout: float) -> None:
    from orchestrator.registry.models import Job

    deadline = time.monotonic() + timeout
    while True:
        with c.session() as s:
            jobs = s.scalars(select(Job).where(Job.id.in_(job_ids))).all()
            pending = [j.id for j in jobs if j.status in ("queued", "running")]
        if not pending:
            return
        assert time.monotonic() < deadline, f"jobs {pending} did not finish; logs:\n" + \
            "\n".join(c.log(n)[-2000:] for n in c.homes)
        time.sleep(0.5)


@pytest.fixture(scope="module")
def burst(cluster: Cluster) -> dict:
    """One model first; then 6 trainings and 6 reconstructions submitted at once by clients."""
    seed = cluster.client.json("submit", "train", "--dataset", "swords", *TINY, "--wait",
                               timeout=300)
    assert seed["status"] == "succeeded", seed
    env = {**cluster.client.env}
    cli = [sys.executable, "-m", "orchestrator.cli"]
    trains = [subprocess.Popen([*cli, "submit", "train", "--dataset", "swords", *TINY,
                                "--seed", str(i), "--json"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for i in range(TRAININGS)]
    outs = [cluster.root / "client-out" / f"rec-{i}" for i in range(RECONSTRUCTIONS)]
    recs = [subprocess.Popen([*cli, "reconstruct", "--model", str(seed["model_id"]), "--wait",
                              "--out", str(out), "--json"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for out in outs]
    train_ids = []
    for p in trains:
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr
        train_ids.append(json.loads(stdout)["job_id"])
    rec_results = []
    for p in recs:
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, (stdout, stderr)
        rec_results.append(json.loads(stdout))
    _finished(cluster, train_ids, timeout=600)
    return {"seed": seed, "train_ids": train_ids, "reconstructions": rec_results, "outs": outs}


def test_every_job_ran_exactly_once_on_one_of_the_workers(cluster: Cluster, burst: dict) -> None:
    from orchestrator.registry.models import Job

    with cluster.session() as s:
        jobs = s.scalars(select(Job).order_by(Job.id)).all()
        rows = [(j.id, j.kind, j.status, j.attempts, j.worker, j.celery_task_id, j.error)
                for j in jobs]
    assert len(rows) == 1 + TRAININGS + RECONSTRUCTIONS
    for job_id, kind, status, attempts, worker, task_id, error in rows:
        assert status == "succeeded", (job_id, kind, status, error)
        assert attempts == 1, (job_id, attempts)
        assert worker in ("w1", "w2") and task_id
    # Each task was delivered to exactly one worker, once (Celery logs every message it receives).
    logs = {name: cluster.log(name) for name in cluster.homes}
    for job_id, kind, *_rest, task_id, _error in rows:
        task = "rodin.train" if kind == "train" else "rodin.reconstruct"
        received = sum(log.count(f"Task {task}[{task_id}] received") for log in logs.values())
        assert received == 1, (job_id, task_id, received)
    # Both machines worked, on both kinds of job.
    by_worker = {w: [r for r in rows if r[4] == w] for w in ("w1", "w2")}
    assert all(by_worker.values()), by_worker
    assert {r[1] for r in rows} == {"train", "reconstruct"}


def test_every_checkpoint_is_registered_once(cluster: Cluster, burst: dict) -> None:
    from orchestrator.registry.models import ModelCheckpoint

    with cluster.session() as s:
        duplicates = s.execute(
            select(ModelCheckpoint.job_id, ModelCheckpoint.epoch, func.count())
            .group_by(ModelCheckpoint.job_id, ModelCheckpoint.epoch)
            .having(func.count() > 1)
        ).all()
        epochs: dict[int, list[int]] = {}
        for job_id, epoch in s.execute(select(ModelCheckpoint.job_id, ModelCheckpoint.epoch)
                                       .order_by(ModelCheckpoint.id)):
            epochs.setdefault(job_id, []).append(epoch)
    assert duplicates == []
    for job_id in [burst["seed"]["job_id"], *burst["train_ids"]]:
        assert epochs[job_id] == [1, 2, 3], (job_id, epochs.get(job_id))


def test_the_client_downloads_every_reconstruction(cluster: Cluster, burst: dict) -> None:
    held_out = cluster.client.held_out()  # about 25% of the 8 swords
    for result, out in zip(burst["reconstructions"], burst["outs"]):
        assert result["status"] == "succeeded", result
        files = [Path(p) for p in result["outputs"]]
        assert len(files) == 2 * held_out  # a PLY and a PNG for each held-out sword
        assert all(f.parent == out and f.stat().st_size > 0 for f in files)
        job = cluster.client.json("status", str(result["job_id"]))
        recorded = {o["name"]: o["sha256"] for o in job["outputs"]}
        for f in files:
            assert hashlib.sha256(f.read_bytes()).hexdigest() == recorded[f.name]


def test_workers_lists_both_machines_workers(cluster: Cluster, burst: dict) -> None:
    def listed() -> dict:
        return {w["hostname"]: w for w in cluster.client.json("workers")["workers"]}

    # Heartbeats are how a client learns about workers: the last job's end shows within a beat.
    deadline = time.monotonic() + 10
    while any(w["current_job_id"] for w in listed().values()) and time.monotonic() < deadline:
        time.sleep(0.3)
    workers = listed()
    assert set(workers) == {"w1", "w2"}
    for w in workers.values():
        assert w["state"] == "live" and w["queues"] == "infer,train" and w["device"] == "cpu"
        assert w["current_job_id"] is None and w["heartbeat_age_s"] < 30
    text = cluster.client.run("workers")
    assert text.returncode == 0 and "w1" in text.stdout and "w2" in text.stdout


def test_a_stopped_worker_leaves_the_list(cluster: Cluster, burst: dict) -> None:
    stop_process(cluster.procs["w2"])  # SIGTERM: a warm shutdown marks the worker stopped
    live = {w["hostname"] for w in cluster.client.json("workers")["workers"]}
    assert live == {"w1"}
    everyone = {w["hostname"]: w["state"] for w in cluster.client.json("workers", "--all")["workers"]}
    assert everyone == {"w1": "live", "w2": "stopped"}
