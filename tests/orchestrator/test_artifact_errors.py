"""A store that refuses writes, on a real filesystem: a tiny tmpfs, full or remounted read-only.

Mounting needs root (as in CI and the development machine); elsewhere these tests skip.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.artifacts import ArtifactError, ArtifactStore


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def small_store(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB filesystem of its own."""
    root = tmp_path / "store"
    root.mkdir()
    if not _mount("-t", "tmpfs", "-o", "size=256k", "tmpfs", str(root)):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root)], capture_output=True)


def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp-" in p.name]


def test_a_full_store_names_itself_and_the_blob_and_leaves_no_temporary_file(small_store: Path) -> None:
    store = ArtifactStore(small_store.as_uri())
    with pytest.raises(ArtifactError) as info:
        store.put_bytes(b"x" * 1024 * 1024, ".pt")
    message = str(info.value)
    assert "the store is full" in message and str(small_store) in message and ".pt" in message
    assert "RODIN_ARTIFACTS_URL" in message  # what to do
    assert _leftovers(small_store) == []
    assert store.put_bytes(b"small", ".pt").size == 5  # what fits still goes in


def test_a_read_only_store_is_named_as_such(small_store: Path) -> None:
    store = ArtifactStore(small_store.as_uri())
    store.put_bytes(b"before", ".bin")  # the shard folder exists: the write itself is refused
    assert _mount("-o", "remount,ro", str(small_store))
    try:
        with pytest.raises(ArtifactError, match="the store is read-only"):
            store.put_bytes(b"during", ".bin")
    finally:
        _mount("-o", "remount,rw", str(small_store))
    assert _leftovers(small_store) == []


def test_a_worker_rides_out_a_store_that_comes_back(small_store: Path) -> None:
    store = ArtifactStore(small_store.as_uri(), write_retry_s=20)
    assert _mount("-o", "remount,ro", str(small_store))
    back = threading.Timer(1.0, _mount, args=("-o", "remount,rw", str(small_store)))
    back.start()
    try:
        blob = store.put_bytes(b"checkpoint", ".pt")
    finally:
        back.join()
    assert store.get_bytes(blob.uri, blob.sha256) == b"checkpoint"
    assert _leftovers(small_store) == []
