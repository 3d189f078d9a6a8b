"""`rodin datasets add NAME FOLDER --on-workers` with a real worker: parts read by the worker,
the version registered once every part has succeeded, or not at all with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest
import trimesh

from tests.conftest import Rodin, stop_process

#: Fixtures that start a real worker: their tests are `slow` (tests/conftest.py).
SLOW_FIXTURES = ("worker_home",)


def _meshes(folder: Path) -> Path:
    """Five usable meshes in three formats (one in a subfolder) and one broken file."""
    folder.mkdir(parents=True)
    (folder / "sub").mkdir()
    shapes = {"box.obj": trimesh.creation.box((1, 2, 3)), "ball.stl": trimesh.creation.icosphere(2),
              "sub/cone.ply": trimesh.creation.cone(0.5, 2.0), "rod.obj": trimesh.creation.cylinder(0.2, 3.0),
              "knot.stl": trimesh.creation.capsule(1.0, 0.4)}
    for name, mesh in shapes.items():
        mesh.export(folder / name)
    (folder / "broken.obj").write_text("v 0 0 0\nthis is not an OBJ line\n")
    return folder


@pytest.fixture(scope="module")
def worker_home(tmp_path_factory):  # type: ignore[no-untyped-def]
    rodin = Rodin(tmp_path_factory.mktemp("ingest-on-workers") / "home")
    folder = _meshes(tmp_path_factory.mktemp("collection") / "meshes")
    worker = rodin.start_worker("w1", queues="train,infer")
    yield rodin, folder
    stop_process(worker)


def test_parts_read_by_a_worker_register_what_the_client_would(worker_home) -> None:  # type: ignore[no-untyped-def]
    rodin, folder = worker_home
    out = rodin.json("datasets", "add", "remote", str(folder), "--on-workers", "--part-size", "2",
                     "--points-per-shape", "300", "--wait", timeout=600)
    assert out["status"] == "succeeded", out
    assert len(out["part_job_ids"]) == 3 and out["files"] == 6
    assert out["dataset"]["shapes"] == 5 and out["dataset"]["ref"] == "remote@1"
    assert [row["file"] for row in out["skipped"]] == ["broken.obj"]
    # The parts are ordinary jobs, shown by `rodin status`.
    kinds = {job["id"]: job["kind"] for job in rodin.json("status")["jobs"]}
    assert [kinds[i] for i in out["part_job_ids"]] == ["ingest"] * 3
    # The same files read by the client give the same points.
    local = rodin.json("datasets", "add", "local", str(folder), "--points-per-shape", "300", "--jobs", "1")
    assert local["dataset"]["content_sha256"] == out["dataset"]["content_sha256"]


def test_a_part_that_does_not_succeed_registers_nothing_and_says_why(worker_home) -> None:  # type: ignore[no-untyped-def]
    from orchestrator import jobs, worker_ingest
    from orchestrator.job_states import JobStatus
    from orchestrator.settings import load_settings

    rodin, folder = worker_home
    settings = load_settings({"RODIN_HOME": str(rodin.home)})
    before = len(rodin.json("datasets", "list")["datasets"])
    files = worker_ingest.list_files(str(folder))
    # A part the worker cannot read at all: its root is gone by the time it runs.
    queued = worker_ingest.queue(settings, "never", str(folder / "missing"), files, points=300, seed=0,
                                 part_size=3)
    final = jobs.wait(settings, queued.assemble, poll_s=0.2)
    assert final.status is JobStatus.failed
    assert final.error is not None and f"job {queued.parts[0]}" in final.error, final.error
    assert len(rodin.json("datasets", "list")["datasets"]) == before  # nothing registered
