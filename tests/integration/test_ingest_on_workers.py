"""`rodin datasets add --on-workers` across machines: two workers and a client, each with its own
RODIN_HOME, sharing one Redis broker, one PostgreSQL registry, one artifact folder and the
folder of meshes (as a mount every machine has)."""

from __future__ import annotations

import time

import pytest
import trimesh

from tests.conftest import Rodin, stop_process


@pytest.fixture(scope="module")
def machines(tmp_path_factory, redis_server, postgres_server):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("ingest-machines")
    shared = {
        "RODIN_BROKER_URL": redis_server.url,
        "RODIN_DATABASE_URL": postgres_server.create_database("ingest"),
        "RODIN_ARTIFACTS_URL": (root / "shared-artifacts").as_uri(),
        "OMP_NUM_THREADS": "1",
    }
    meshes = root / "mount" / "meshes"
    meshes.mkdir(parents=True)
    for i in range(12):  # twelve small solids, two formats
        mesh = trimesh.creation.box((1.0 + i / 10, 1.0, 2.0)) if i % 2 else trimesh.creation.icosphere(1, 1.0 + i / 10)
        mesh.export(meshes / f"solid-{i:02d}.{'obj' if i % 3 else 'stl'}")
    client = Rodin(root / "client", extra_env=shared)
    assert client.json("db", "upgrade")["revision"]
    workers = [Rodin(root / name, extra_env=shared).start_worker(name, queues="infer") for name in ("w1", "w2")]
    try:
        deadline = time.monotonic() + 120
        while len(client.json("workers")["workers"]) < 2:  # both consume before anything is queued
            assert time.monotonic() < deadline, "the two workers did not start"
            time.sleep(0.5)
        yield client, meshes
    finally:
        for proc in workers:
            stop_process(proc)


def test_parts_spread_over_two_workers_register_one_version(machines) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from orchestrator.registry.db import session_scope
    from orchestrator.registry.models import Job

    client, meshes = machines
    out = client.json("datasets", "add", "solids", str(meshes), "--on-workers", "--part-size", "2",
                      "--points-per-shape", "200", "--wait", timeout=600)
    assert out["status"] == "succeeded", out
    assert out["dataset"]["shapes"] == 12 and out["skipped"] == [] and len(out["part_job_ids"]) == 6
    with session_scope(client.settings()) as s:
        parts = s.scalars(select(Job).where(Job.id.in_(out["part_job_ids"]))).all()
        assert {p.status for p in parts} == {"succeeded"} and all(p.attempts == 1 for p in parts)
        assert {p.worker for p in parts} == {"w1", "w2"}  # both machines took parts
    assert [d["ref"] for d in client.json("datasets", "list")["datasets"]] == ["solids@1"]
