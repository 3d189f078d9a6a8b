"""Hostile input: registry rows, file names, URLs, ids and values that must not hurt."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import pytest

from orchestrator.artifacts import ArtifactError, ArtifactStore, safe_name
from orchestrator.errors import RodinError
from tests.conftest import Rodin

CUBE_OBJ = (
    "v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nv 0 0 1\nv 1 0 1\nv 1 1 1\nv 0 1 1\n"
    "f 1 4 3\nf 1 3 2\nf 5 6 7\nf 5 7 8\nf 1 2 6\nf 1 6 5\n"
    "f 2 3 7\nf 2 7 6\nf 3 4 8\nf 3 8 7\nf 4 1 5\nf 4 5 8\n"
)


def _store(tmp_path: Path, name: str = "artifacts") -> ArtifactStore:
    return ArtifactStore((tmp_path / name).as_uri())


# --------------------------------------------------------------------------------------------
# Names from registry rows never leave their folder


@pytest.mark.parametrize("name, expected", [
    ("sword.obj", "sword.obj"),
    ("../../etc/cron.d/x.obj", "x.obj"),
    ("/etc/passwd", "passwd"),
    ("..\\..\\win.obj", "win.obj"),
    ("caf\u00e9.obj", "caf\u00e9.obj"),
])
def test_safe_name_keeps_only_the_base_name(name: str, expected: str) -> None:
    assert safe_name(name) == expected


@pytest.mark.parametrize("name", ["", ".", "..", "a/..", "dir/", "a\x00b.obj", "a\nb.obj",
                                  "\x1b[31mred.obj", "x" * 300, None])
def test_safe_name_refuses_what_cannot_be_a_file_name(name: object) -> None:
    with pytest.raises(ValueError, match="file name") as info:
        safe_name(name)
    assert "\n" not in str(info.value)


def test_reconstruction_inputs_stay_in_the_temporary_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.reconstruct_job import _uploaded_shapes

    store = _store(tmp_path)
    blob = store.put_bytes(CUBE_OBJ.encode(), ".obj")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(work))
    absolute = tmp_path / "absolute.obj"
    files = [{"name": "../escaped.obj", "uri": blob.uri, "sha256": blob.sha256},
             {"name": str(absolute), "uri": blob.uri, "sha256": blob.sha256}]
    shapes = _uploaded_shapes(store, files, 100)
    assert [s.name for s in shapes] == ["escaped", "absolute"]
    assert not (tmp_path / "escaped.obj").exists() and not absolute.exists()
    assert list(work.iterdir()) == []  # the temporary folder is gone, and nothing beside it

    with pytest.raises(ArtifactError, match=r"job input .*file name '\.\.'") as info:
        _uploaded_shapes(store, [{"name": "..", "uri": blob.uri, "sha256": blob.sha256}], 100)
    assert "\n" not in str(info.value)


def test_downloaded_outputs_stay_in_their_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.cli import context

    store = _store(tmp_path)
    monkeypatch.setattr(context, "store", lambda: store)
    blob = store.put_bytes(b"ply", ".ply")
    out = tmp_path / "out"
    evil = {"name": "../../evil.ply", "kind": "mesh", **blob.as_dict()}
    absolute = {"name": str(tmp_path / "abs.ply"), "kind": "mesh", **blob.as_dict()}
    paths = context.download_outputs([evil, absolute], out)
    assert paths == [str(out / "evil.ply"), str(out / "abs.ply")]
    written = sorted(str(p) for p in tmp_path.rglob("*.ply") if "artifacts" not in p.parts)
    assert written == sorted(paths)

    with pytest.raises(RodinError, match=r"job output not saved to .*file name '\.\.'"):
        context.download_outputs([{"name": "..", "kind": "mesh", **blob.as_dict()}], tmp_path / "other")
    assert not (tmp_path / "other").exists()  # refused before anything was written


# --------------------------------------------------------------------------------------------
# Artifact URIs from registry rows: only inside the store, always hash-checked


def test_artifact_reads_stay_inside_the_store_root(tmp_path: Path) -> None:
    store = _store(tmp_path)
    blob = store.put_bytes(b"weights", ".pt")
    assert store.get_bytes(blob.uri, blob.sha256) == b"weights"
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"secret")
    digest = hashlib.sha256(b"secret").hexdigest()
    sibling = _store(tmp_path, "artifacts-other").put_bytes(b"secret", ".pt")
    outside = [secret.as_uri(), "file:///etc/passwd", sibling.uri,
               blob.uri.replace("/sha256/", "/sha256/../../"), str(secret)]
    for uri in outside:
        with pytest.raises(ArtifactError, match="is not in the store") as info:
            store.get_bytes(uri, digest)
        assert uri in str(info.value)


def test_artifact_reads_need_the_recorded_sha256(tmp_path: Path) -> None:
    store = _store(tmp_path)
    blob = store.put_bytes(b"weights", ".pt")
    with pytest.raises(TypeError):
        store.get_bytes(blob.uri)  # type: ignore[call-arg]
    with pytest.raises(ArtifactError, match="does not match its recorded sha256"):
        store.get_bytes(blob.uri, "0" * 64)


# --------------------------------------------------------------------------------------------
# Usage errors and odd values: exit 2, no traceback, nothing written

BIG = "99999999999999999999"  # beyond 64 bits


def _jobs(rodin: Rodin) -> int:
    with sqlite3.connect(rodin.home / "registry.db") as db:
        return db.execute("SELECT count(*) FROM jobs").fetchone()[0]


def _refused(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    assert "Error" not in result.stdout + result.stderr.replace("─ Error ─", "")  # no exception name


@pytest.mark.parametrize("args", [
    ("reconstruct", "--model", "abc"),
    ("status", "--bogus"),
    ("bogus",),
    ("status", BIG), ("status", "0"), ("status", "--", "-5"),
    ("cancel", BIG),
    ("models", "show", BIG),
    ("reconstruct", "--model", BIG),
    ("evaluate", "--model", "9223372036854775808"),
    ("submit", "train", "--dataset", "swords", "--from-model", BIG),
])
def test_usage_errors_and_ids_beyond_64_bits_exit_2(rodin: Rodin, args: tuple[str, ...]) -> None:
    rodin.json("status")  # creates the registry
    _refused(rodin.cli(*args))
    assert _jobs(rodin) == 0


@pytest.mark.parametrize("ref", ["swords@\u00b2", "swords@\u0663", f"swords@{BIG}", "swords@1" + "0" * 5000])
def test_dataset_refs_take_ascii_versions_only(rodin: Rodin, ref: str) -> None:
    result = rodin.cli("submit", "train", "--dataset", ref)
    _refused(result)
    assert "is not NAME or NAME@VERSION" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("flag, value", [
    ("--augment-scale", "nan"), ("--augment-scale", "inf"), ("--augment-jitter", "nan"),
    ("--augment-jitter", "-inf"), ("--val-fraction", "nan"), ("--lr", "inf"), ("--lr", "nan"),
])
def test_non_finite_training_settings_are_refused(rodin: Rodin, flag: str, value: str) -> None:
    rodin.json("datasets", "make", "swords", "--count", "2", "--points-per-shape", "200")
    result = rodin.cli("submit", "train", "--dataset", "swords", flag, value)
    _refused(result)
    assert "invalid training settings" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert _jobs(rodin) == 0


def _strict(text: str) -> dict:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_json_output_is_strict_json(rodin: Rodin) -> None:
    from orchestrator.registry.db import session_scope
    from orchestrator.registry.models import Job

    rodin.json("status")
    diverged = {"epoch": 2, "epochs": 5, "train_loss": float("nan"), "val_chamfer": float("inf")}
    with session_scope(rodin.settings()) as s:
        s.add(Job(kind="train", status="running", params={}, progress=diverged,
                  result={"scores": [1.0, float("-inf")]}))
    listed = rodin.cli("status", "--json")
    assert listed.returncode == 0, listed.stderr
    progress = _strict(listed.stdout)["jobs"][0]["progress"]
    assert progress == {"epoch": 2, "epochs": 5, "train_loss": None, "val_chamfer": None}
    one = rodin.cli("status", "1", "--json")
    assert _strict(one.stdout)["result"] == {"scores": [1.0, None]}


# --------------------------------------------------------------------------------------------
# Names and paths that look like rich markup are shown as they are; unshowable names refused


def _odd_folder(tmp_path: Path) -> Path:
    """A folder whose path holds `[/x]` (a folder `[` with a folder `x]` in it), with one good
    mesh and one broken one whose name is a markup tag."""
    folder = tmp_path / "[" / "x]"
    folder.mkdir(parents=True)
    (folder / "cube.obj").write_text(CUBE_OBJ)
    (folder / "[red]broken.obj").write_text("v 0 0 0\n")
    return folder


def _shown(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    return "".join((result.stdout + result.stderr).split())  # undo rich's wrapping


def test_markup_in_paths_and_names_is_printed_literally(rodin: Rodin, tmp_path: Path) -> None:
    from orchestrator.registry.db import session_scope
    from orchestrator.registry.models import Job, ModelCheckpoint

    folder = _odd_folder(tmp_path)
    added = _shown(rodin.cli("datasets", "add", "a[red]b", str(folder), "--points-per-shape", "200"))
    assert "a[red]b@1" in added and f"from{folder}" in added  # the skipped table wraps the file name
    shown = _shown(rodin.cli("datasets", "show", "a[red]b"))
    assert "a[red]b@1" in shown and str(folder) in shown and "[red]broken.obj" in shown
    assert "cube.obj" not in shown
    assert "a[red]b@1" in _shown(rodin.cli("datasets", "list"))

    from atlas_core.config import TrainConfig

    with session_scope(rodin.settings()) as s:
        job = Job(kind="train", status="succeeded", params={}, dataset_id=1)
        s.add(job)
        s.flush()
        s.add(ModelCheckpoint(job_id=job.id, dataset_id=1, epoch=1, final=True,
                              config=TrainConfig.cpu().to_dict(),
                              metrics={"val_chamfer": 0.5, "warnings": ["patch [/3] collapsed"]},
                              artifact_uri="file:///[/a]", sha256="0" * 64, size_bytes=1,
                              code_version="[/c]", torch_version="[bold]"))
    listed = _shown(rodin.cli("models", "list"))
    assert "a[red]b@1" in listed  # the whole name, not cut short
    detail = _shown(rodin.cli("models", "show", "1"))
    for text in ("a[red]b@1", "patch[/3]collapsed", "file:///[/a]", "[/c]", "[bold]"):
        assert text in detail, text


@pytest.mark.parametrize("name", ["\x1b[31mred", "two\nlines", "tab\there", "rtl\u202eeman", "x" * 129])
def test_unshowable_or_too_long_dataset_names_are_refused(rodin: Rodin, tmp_path: Path, name: str) -> None:
    (tmp_path / "cube.obj").write_text(CUBE_OBJ)
    for args in (("datasets", "add", name, str(tmp_path / "cube.obj")),
                 ("datasets", "make", "swords", "--count", "1", "--name", name)):
        result = rodin.cli(*args)
        _refused(result)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "\x1b" not in result.stderr
    assert rodin.json("datasets", "list") == {"datasets": []}


def test_a_dataset_name_of_128_characters_is_fine(rodin: Rodin) -> None:
    name = "x" * 128
    out = rodin.json("datasets", "make", "swords", "--count", "1", "--name", name, "--points-per-shape", "100")
    assert out["dataset"]["ref"] == f"{name}@1"


# --------------------------------------------------------------------------------------------
# Passwords in settings are never printed


SECRET_BROKERS = ["redis://:pw-SECRET-1@127.0.0.1:1/0", "redis://127.0.0.1:1/0?password=pw-SECRET-1"]


@pytest.mark.filterwarnings("ignore:Query string argument")  # SQLite ignores ?password=
@pytest.mark.slow
@pytest.mark.parametrize("broker", SECRET_BROKERS)
def test_broker_password_is_never_printed(tmp_path: Path, broker: str) -> None:
    rodin = Rodin(tmp_path / "home", extra_env={"RODIN_BROKER_URL": broker,
                                                "RODIN_DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}?password=pw-SECRET-2"})
    rodin.json("db", "upgrade")  # a registry named by URL is upgraded by hand
    rodin.json("datasets", "make", "swords", "--count", "1", "--points-per-shape", "100")
    for args in (("submit", "train", "--dataset", "swords"), ("config", "show"), ("db", "upgrade")):
        for json_flag in ((), ("--json",)):
            result = rodin.run(*args, *json_flag, timeout=120)
            printed = result.stdout + result.stderr
            assert "SECRET" not in printed, (args, printed)
            if args[0] == "submit":  # unreachable: it fails, and says where in redacted form
                assert result.returncode == 1 and "127.0.0.1:1" in printed, printed
                assert "Traceback" not in printed


@pytest.mark.slow
@pytest.mark.parametrize("broker", SECRET_BROKERS)
def test_worker_log_never_shows_the_broker_password(tmp_path: Path, broker: str) -> None:
    import sys
    import time

    rodin = Rodin(tmp_path / "home", extra_env={"RODIN_BROKER_URL": broker})
    rodin.json("status")
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "worker", "--device", "cpu",
                             "--queues", "infer", "--hostname", "w1"], env=rodin.env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 90
        assert proc.stdout is not None
        # Celery's banner comes first, then its first failed connection (it retries for ever).
        while time.monotonic() < deadline and not any("Cannot connect" in line for line in lines):
            line = proc.stdout.readline()
            if not line:
                break  # the worker stopped by itself
            lines.append(line)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
    printed = "".join(lines) + out
    assert "SECRET" not in printed, printed
    assert "127.0.0.1:1" in printed or "password" in printed, printed


# --------------------------------------------------------------------------------------------
# Ingestion: limits from the settings, and every skip reason in the JSON error


def test_datasets_add_json_error_carries_every_skip_reason(rodin: Rodin, tmp_path: Path) -> None:
    folder = tmp_path / "meshes"
    folder.mkdir()
    (folder / "points.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    (folder / "noheader.off").write_text("3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n")
    out = rodin.json("datasets", "add", "broken", str(folder), expect_code=2)
    assert "none of the 2 files" in out["error"]
    reasons = {Path(row["file"]).name: row["reason"] for row in out["skipped"]}
    assert set(reasons) == {"points.obj", "noheader.off"}
    assert "points" in reasons["points.obj"] and "no OFF header" in reasons["noheader.off"]
    assert rodin.json("datasets", "list") == {"datasets": []}


def test_ingestion_limits_come_from_the_settings(tmp_path: Path) -> None:
    import bz2

    from atlas_core.config import TrainConfig
    from orchestrator.registry.db import session_scope
    from orchestrator.registry.models import Job, ModelCheckpoint

    rodin = Rodin(tmp_path / "home", extra_env={"RODIN_MAX_INFLATED_BYTES": "1000000",
                                                "RODIN_MAX_FILE_BYTES": "2000"})
    folder = tmp_path / "meshes"
    folder.mkdir()
    (folder / "bomb.obj.bz2").write_bytes(bz2.compress(b"\0" * (20 << 20)))
    (folder / "big.obj").write_text(CUBE_OBJ + "# padding\n" * 300)
    out = rodin.json("datasets", "add", "limited", str(folder), expect_code=2)
    reasons = {Path(row["file"]).name: row["reason"] for row in out["skipped"]}
    assert "inflates to more than 976.6 KiB (RODIN_MAX_INFLATED_BYTES)" in reasons["bomb.obj.bz2"]
    assert "larger than 2.0 KiB (RODIN_MAX_FILE_BYTES)" in reasons["big.obj"]

    # Reconstruction inputs are checked with the same limits before any job exists.
    rodin.json("datasets", "make", "swords", "--count", "1", "--points-per-shape", "100")
    with session_scope(rodin.settings()) as s:
        job = Job(kind="train", status="succeeded", params={}, dataset_id=1)
        s.add(job)
        s.flush()
        s.add(ModelCheckpoint(job_id=job.id, dataset_id=1, epoch=1, final=True,
                              config=TrainConfig.cpu().to_dict(), metrics={}, artifact_uri="file:///x",
                              sha256="0" * 64, size_bytes=1, code_version="x", torch_version="x"))
    result = rodin.cli("reconstruct", "--model", "1", str(folder / "bomb.obj.bz2"))
    _refused(result)
    assert "RODIN_MAX_INFLATED_BYTES" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert _jobs(rodin) == 1  # only the row written above
