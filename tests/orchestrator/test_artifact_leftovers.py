"""Temporary files of writes that never finished: a writer killed mid-write, a removal the
store refused. Neither may wait an hour for `rodin gc`."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import artifacts
from orchestrator.artifacts import ArtifactError, ArtifactStore
from workers.liveness import process_alive

#: A child that starts a blob's write exactly as the store does, then hangs before the rename.
_WRITER = """
import sys, time
from orchestrator import artifacts
tmp = artifacts._tmp_name(sys.argv[1])
with open(tmp, "wb") as fh:
    fh.write(b"half a checkpoint")
print(tmp, flush=True)
time.sleep(600)
"""


def _hung_writer(blob: Path) -> tuple[subprocess.Popen[str], Path]:
    blob.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(blob)], stdout=subprocess.PIPE,
                            text=True, cwd=Path(__file__).resolve().parents[2])
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


def _shard(root: Path) -> Path:
    return root / "sha256" / "ab" / ("ab" + "0" * 62 + ".pt")


def test_a_killed_writers_file_is_removed_and_a_live_ones_kept(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path.as_uri())
    dead, dead_tmp = _hung_writer(_shard(tmp_path))
    live, live_tmp = _hung_writer(_shard(tmp_path))
    elsewhere = dead_tmp.with_name(dead_tmp.name.replace(f"@{socket.gethostname()}-", "@other-host-"))
    elsewhere.write_bytes(b"another machine's write")
    try:
        dead.send_signal(signal.SIGKILL)
        dead.wait(10)
        removed = store.remove_dead_writers(process_alive)
        assert removed == [str(dead_tmp)]
        assert not dead_tmp.exists()
        assert live_tmp.exists()  # still being written
        assert elsewhere.exists()  # its machine's workers judge it
    finally:
        live.kill()
        live.wait(10)
    assert store.remove_dead_writers(process_alive) == [str(live_tmp)]


def test_the_name_says_who_writes(tmp_path: Path) -> None:
    name = artifacts._tmp_name(str(tmp_path / "blob.pt"))
    found = artifacts._TMP.search(name)
    assert found is not None
    assert (int(found.group(1)), found.group(2)) == (os.getpid(), socket.gethostname())


def test_an_object_store_has_nothing_to_sweep(tmp_path: Path) -> None:
    store = ArtifactStore("memory://sweep")
    store.put_bytes(b"x", ".pt")
    assert store.remove_dead_writers(lambda pid: False) == []


def test_a_removal_the_store_refused_is_tried_at_the_next_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ArtifactStore(tmp_path.as_uri())
    real_rm = store.fs.rm_file

    def read_only(*_args, **_kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    # The store turns read-only between the write and the rename: both the rename and the
    # removal of the temporary file are refused.
    monkeypatch.setattr(store.fs, "mv", read_only)
    monkeypatch.setattr(store.fs, "rm_file", read_only)
    with pytest.raises(ArtifactError, match="read-only"):
        store.put_bytes(b"checkpoint", ".pt")
    assert len([p for p in tmp_path.rglob("*.tmp-*")]) == 1
    monkeypatch.undo()
    assert store.fs.rm_file == real_rm
    store.put_bytes(b"the next one", ".pt")
    assert [p for p in tmp_path.rglob("*.tmp-*")] == []


def test_a_refused_sweep_says_so_after_removing_what_it_could(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ArtifactStore(tmp_path.as_uri())
    dead, tmp = _hung_writer(_shard(tmp_path))
    dead.kill()
    dead.wait(10)

    def read_only(*_args, **_kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(store.fs, "rm_file", read_only)
    with pytest.raises(ArtifactError, match="could not remove 1 temporary file"):
        store.remove_dead_writers(process_alive)
    assert tmp.exists()
