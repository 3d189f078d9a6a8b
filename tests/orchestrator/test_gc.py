"""`rodin gc`: unreferenced artifacts older than the grace period, and only those."""

from __future__ import annotations

import os
import time
from pathlib import Path

from orchestrator.artifacts import open_store
from tests.conftest import Rodin


def _age(uri: str, seconds: float) -> None:
    path = Path(uri.removeprefix("file://"))
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_gc_lists_and_deletes_only_old_unreferenced_blobs(rodin: Rodin) -> None:
    made = rodin.json("datasets", "make", "swords", "--count", "2", "--points-per-shape", "200")
    dataset_uri = made["dataset"]["artifact_uri"]
    store = open_store(rodin.settings())
    old = store.put_bytes(b"a checkpoint whose row was never written", ".pt")
    young = store.put_bytes(b"a checkpoint being registered right now", ".pt")
    _age(old.uri, 7200)
    _age(dataset_uri, 7200)  # old, but referenced

    listed = rodin.json("gc")
    assert [o["uri"] for o in listed["orphans"]] == [old.uri] and listed["deleted"] is False
    assert Path(old.uri.removeprefix("file://")).exists()

    deleted = rodin.json("gc", "--yes")
    assert [o["uri"] for o in deleted["orphans"]] == [old.uri]
    assert not Path(old.uri.removeprefix("file://")).exists()
    assert Path(young.uri.removeprefix("file://")).exists()
    assert Path(dataset_uri.removeprefix("file://")).exists()
    assert rodin.json("gc")["orphans"] == []
