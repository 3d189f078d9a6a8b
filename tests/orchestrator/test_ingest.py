"""`rodin datasets add` reads files in reader processes (`orchestrator.ingest`): the result does
not depend on --jobs and equals reading the files one after another; a file that kills, hangs
or would overfill its reader is that file's skip reason; an interrupted add registers nothing
and the next one reuses every shape already read."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import trimesh

from tests.conftest import Rodin

POINTS = "200"


def _meshes(folder: Path, count: int = 6) -> list[str]:
    """`count` small meshes as OBJ, STL and PLY (and one file without faces)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        mesh = trimesh.creation.icosphere(subdivisions=1 + i % 2, radius=1.0 + i)
        mesh.vertices[:, 0] *= 1.0 + 0.1 * i
        name = f"m{i}.{('obj', 'stl', 'ply')[i % 3]}"
        mesh.export(folder / name)
        names.append(name)
    (folder / "points.obj").write_text("v 0 0 0\nv 1 0 0\n")
    return names


def _add(rodin: Rodin, folder: Path, *args: str, expect_code: int = 0) -> dict:
    return rodin.json("datasets", "add", "mine", str(folder), "--points-per-shape", POINTS, *args,
                      expect_code=expect_code)


def test_two_jobs_register_what_one_job_and_the_serial_reading_do(tmp_path: Path) -> None:
    from atlas_core.mesh_io import ingest_file
    from orchestrator import datasets
    from orchestrator.ingest import Reading
    from orchestrator.settings import Settings, mesh_limits

    folder = tmp_path / "meshes"
    _meshes(folder)
    one = _add(Rodin(tmp_path / "one"), folder, "--jobs", "1")
    two = _add(Rodin(tmp_path / "two"), folder, "--jobs", "2")
    for key in ("content_sha256", "shapes", "points_per_shape", "skipped"):
        assert one["dataset"][key] == two["dataset"][key], key
    # the artifact is content-addressed: the same name is the same points, byte for byte
    assert one["dataset"]["artifact_uri"].rsplit("/", 1)[-1] == two["dataset"]["artifact_uri"].rsplit("/", 1)[-1]
    assert one["skipped"] == two["skipped"] == [{"file": "points.obj", "reason": one["skipped"][0]["reason"]}]
    assert one["cached"] == two["cached"] == 0

    # the same points as reading each file in turn with seed + position (the serial ingest)
    reading = Reading(jobs=2, file_timeout_s=60, memory_bytes=2 << 30, cache_dir=None)
    with datasets.ingest(folder, 200, 7, mesh_limits(Settings()), reading=reading) as found:
        assert found.shapes is not None
        spool = Path(found.shapes.shapes[0].path).parent  # a temporary one: no cache was given
        got = found.shapes.subset(range(len(found.shapes)))
    assert not spool.exists()
    files = datasets.mesh_files(folder)
    serial = [ingest_file(f, n_points=200, seed=7 + i) for i, f in enumerate(files) if f.name != "points.obj"]
    assert got.names == [s.name for s in serial]
    for i, want in enumerate(serial):
        np.testing.assert_array_equal(got.points[i], want.points)
        np.testing.assert_array_equal(got.normals[i], want.normals)
        assert got.source_sha256[i] == want.source_sha256 and got.scales[i] == want.scale


def test_a_file_that_kills_its_reader_is_skipped_and_the_rest_registers(tmp_path: Path) -> None:
    folder = tmp_path / "meshes"
    names = _meshes(folder)
    rodin = Rodin(tmp_path / "home", {"RODIN_INGEST_TEST_CRASH": names[1]})
    out = _add(rodin, folder, "--jobs", "2")
    assert out["dataset"]["shapes"] == len(names) - 1
    reasons = {row["file"]: row["reason"] for row in out["skipped"]}
    assert set(reasons) == {names[1], "points.obj"}
    assert reasons[names[1]].startswith("its reader process died (signal 9, SIGKILL")
    assert "\n" not in reasons[names[1]]


def test_a_file_that_hangs_is_skipped_after_the_timeout(tmp_path: Path) -> None:
    folder = tmp_path / "meshes"
    names = _meshes(folder, 3)
    rodin = Rodin(tmp_path / "home", {"RODIN_INGEST_TEST_HANG": names[0], "RODIN_INGEST_FILE_TIMEOUT_S": "1"})
    started = time.monotonic()
    out = _add(rodin, folder, "--jobs", "1")
    assert time.monotonic() - started < 30
    reasons = {row["file"]: row["reason"] for row in out["skipped"]}
    assert reasons[names[0]] == ("took longer than 1 s to read (RODIN_INGEST_FILE_TIMEOUT_S); raise "
                                 "that setting if the file is genuine")
    assert out["dataset"]["shapes"] == 2


def _claims_faces(path: Path, faces: int) -> None:
    """A PLY whose header states `faces` faces (and half as many vertices), with almost no body."""
    path.write_text("ply\nformat ascii 1.0\n"
                    f"element vertex {faces // 2}\nproperty float x\nproperty float y\nproperty float z\n"
                    f"element face {faces}\nproperty list uchar int vertex_indices\nend_header\n0 0 0\n")


def test_a_file_over_the_memory_bound_is_skipped_before_parsing(tmp_path: Path) -> None:
    folder = tmp_path / "meshes"
    _meshes(folder, 2)
    _claims_faces(folder / "huge.ply", 3_000_000)  # about 1.4 GB to parse, by the estimate
    rodin = Rodin(tmp_path / "home", {"RODIN_INGEST_MEMORY_BYTES": str(1 << 30)})
    out = _add(rodin, folder, "--jobs", "1")
    reasons = {row["file"]: row["reason"] for row in out["skipped"]}
    assert reasons["huge.ply"].startswith("reading it would take about ")
    assert "more than the 1.0 GiB each ingest process may use (RODIN_INGEST_MEMORY_BYTES)" in reasons["huge.ply"]
    assert out["dataset"]["shapes"] == 2


def test_the_memory_estimate_refuses_without_parsing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from atlas_core.mesh_io import Limits, MeshError, load_mesh

    path = tmp_path / "huge.ply"
    _claims_faces(path, 3_000_000)

    def no_parse(*args: object, **kwargs: object) -> None:
        raise AssertionError("parsed")

    monkeypatch.setattr(trimesh, "load_scene", no_parse)
    with pytest.raises(MeshError, match="RODIN_INGEST_MEMORY_BYTES"):
        load_mesh(path, Limits(max_memory_bytes=1 << 30, memory_in_use=200 << 20))
    monkeypatch.undo()
    with pytest.raises(MeshError) as err:  # unbounded (the default): parsed, and found truncated
        load_mesh(path)
    assert "RODIN_INGEST_MEMORY_BYTES" not in str(err.value)


def test_a_corrupt_cache_entry_is_read_again(tmp_path: Path) -> None:
    folder = tmp_path / "meshes"
    names = _meshes(folder, 3)
    rodin = Rodin(tmp_path / "home")
    first = _add(rodin, folder, "--jobs", "1")
    entries = sorted((rodin.home / "ingest-cache").glob("*.shape"))
    assert len(entries) == len(names)
    entries[0].write_bytes(entries[0].read_bytes()[:100])  # truncated
    changed = bytearray(entries[1].read_bytes())
    changed[-5] ^= 0xFF  # a point changed, its checksum not
    entries[1].write_bytes(bytes(changed))
    again = _add(rodin, folder, "--jobs", "1")
    assert again["cached"] == len(names) - 2
    assert again["dataset"]["artifact_uri"].rsplit("/", 1)[-1] == first["dataset"]["artifact_uri"].rsplit("/", 1)[-1]
    assert _add(rodin, folder, "--jobs", "2")["cached"] == len(names)  # rewritten whole


@pytest.mark.slow
def test_an_interrupted_add_registers_nothing_and_the_rerun_reuses_what_was_read(tmp_path: Path) -> None:
    folder = tmp_path / "meshes"
    names = _meshes(folder, 6)
    last = sorted(names)[-1]
    rodin = Rodin(tmp_path / "home")
    cache = rodin.home / "ingest-cache"
    command = [sys.executable, "-m", "orchestrator.cli", "datasets", "add", "mine", str(folder),
               "--points-per-shape", POINTS, "--jobs", "1", "--json"]
    # the last file hangs, so that the add is surely midway when Ctrl-C comes
    # A shell without job control starts background commands with SIGINT ignored, and Python
    # keeps an ignored SIGINT ignored: the client must be given back the default, as a terminal has.
    proc = subprocess.Popen(command, env={**rodin.env, "RODIN_INGEST_TEST_HANG": last},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while len(list(cache.glob("*.shape"))) < len(names) - 1:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert rodin.json("datasets", "list") == {"datasets": []}
    out = json.loads(rodin.run(*command[3:]).stdout)
    assert out["cached"] == len(names) - 1
    assert out["dataset"]["shapes"] == len(names)


def test_the_cache_keeps_the_most_recently_used_entries_under_its_bound(tmp_path: Path) -> None:
    from orchestrator.ingest import prune_cache

    folder = tmp_path / "cache"
    folder.mkdir()
    for i in range(5):  # 100 bytes each, used in turn: 0 the longest ago
        entry = folder / f"{i}.shape"
        entry.write_bytes(b"x" * 100)
        os.utime(entry, (1000 + i, 1000 + i))
    assert prune_cache(folder, 250) == 3
    assert sorted(p.name for p in folder.iterdir()) == ["3.shape", "4.shape"]
    assert prune_cache(folder, 250) == 0
