"""One training job over two worker machines (`rodin submit train --nodes 2`), on loopback.

Two workers, each with its own RODIN_HOME, against one Redis broker, one PostgreSQL registry
and one artifact folder: the worker that claims the job is machine 0 (rank 0), it publishes
its c10d store's address as a member job, and the other worker's member joins with rank 1.
Only rank 0 registers. A job whose other machine never comes (one worker only) gives its
attempt back after RODIN_NODES_ARRIVE_TIMEOUT_S, registers nothing, and ends its member.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Rodin, stop_process, until

TINY = ["--patches", "4", "--points", "128", "--bottleneck", "32", "--hidden", "32", "--layers", "1",
        "--batch-size", "4", "--val-fraction", "0.25", "--devices", "1", "--nodes", "2"]


class Machines:
    def __init__(self, root: Path, shared: dict[str, str]):
        self.root, self.shared = root, shared
        self.client = Rodin(root / "client", extra_env=shared)

    def home(self, name: str, **env: str) -> Rodin:
        return Rodin(self.root / name, extra_env={**self.shared, **env})

    def log(self, name: str) -> str:
        path = self.root / name / f"{name}.log"
        return path.read_text()[-4000:] if path.exists() else ""


@pytest.fixture(scope="module")
def machines(tmp_path_factory, redis_server, postgres_server):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("nodes")
    shared = {
        "RODIN_BROKER_URL": redis_server.url,
        "RODIN_DATABASE_URL": postgres_server.create_database("nodes"),
        "RODIN_ARTIFACTS_URL": (root / "shared-artifacts").as_uri(),
        "RODIN_STALE_AFTER_S": "6",
        "OMP_NUM_THREADS": "1",
    }
    m = Machines(root, shared)
    assert m.client.json("db", "upgrade")["revision"]
    m.client.json("datasets", "make", "swords", "--count", "8", "--points-per-shape", "400")
    return m


def _members(m: Machines, job_id: int) -> list[dict]:
    return [j for j in m.client.json("status", "--limit", "50")["jobs"]
            if j["kind"] == "member" and j["params"]["train_job"] == job_id]


def test_two_machines_train_one_job_and_only_rank_0_registers(machines: Machines) -> None:
    workers = {name: machines.home(name).start_worker(name) for name in ("m1", "m2")}
    try:
        out = machines.client.json("submit", "train", "--dataset", "swords", "--epochs", "2",
                                   "--checkpoint-every", "1", *TINY, "--wait", timeout=300)
        assert out["status"] == "succeeded", (out, machines.log("m1"), machines.log("m2"))
        job = machines.client.json("status", str(out["job_id"]))
        assert job["attempts"] == 1
        members = _members(machines, out["job_id"])
        assert len(members) == 1, members
        member = until(lambda: (v := machines.client.json("status", str(members[0]["id"])))["status"]
                       != "running" and v, timeout=60, what="the member to end")
        # The member ran on the other machine, as rank 1, and ended with the job.
        assert member["status"] == "succeeded", member
        assert member["worker"] != job["worker"]
        assert member["result"]["ranks"] == [1] and member["result"]["node"] == 1
        models = sorted((m for m in machines.client.json("models", "list")["models"]
                         if m["job_id"] == out["job_id"]), key=lambda m: m["id"])
        assert [m["epoch"] for m in models] == [1, 2]  # each epoch once: only rank 0 registers
        assert all(m["config"]["nodes"] == 2 and m["config"]["devices"] == 1 for m in models)
    finally:
        for proc in workers.values():
            stop_process(proc)


def test_a_machine_that_never_arrives_gives_the_attempt_back_and_registers_nothing(machines: Machines) -> None:
    lonely = machines.home("lonely", RODIN_NODES_ARRIVE_TIMEOUT_S="6", RODIN_MAX_ATTEMPTS="1")
    worker = lonely.start_worker("lonely")
    try:
        job_id = machines.client.json("submit", "train", "--dataset", "swords", "--epochs", "2", *TINY)["job_id"]
        job = until(lambda: (v := machines.client.json("status", str(job_id)))["status"] == "failed" and v,
                    timeout=120, what=f"job {job_id} to fail: {machines.log('lonely')}")
        assert "machine 1" in job["error"] and "did not arrive within 6 s" in job["error"], job["error"]
        assert "queued: no free worker" in job["error"], job["error"]
        assert not [m for m in machines.client.json("models", "list")["models"] if m["job_id"] == job_id]
        # Its member was ended, and the lone worker, once free, drops its message.
        members = _members(machines, job_id)
        assert len(members) == 1 and members[0]["status"] == "cancelled", members
        assert "attempt 1 ended" in members[0]["error"]
        until(lambda: "dropping a delivery" in machines.log("lonely") or "is cancelled" in machines.log("lonely"),
              timeout=30, what="the lone worker to drop the member's message")
    finally:
        stop_process(worker)
