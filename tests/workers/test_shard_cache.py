"""Sharded dataset versions in the store and the worker machine's shard cache: a version
round-trips with every sha256 checked, a version stored before shards still loads and trains,
several processes filling the cache at once leave one good copy each, eviction keeps the cap,
and `rodin gc` keeps the shards a manifest lists."""

from __future__ import annotations

import hashlib
import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from atlas_core.config import ModelConfig, TrainConfig
from atlas_core.data import PointCloudSet, ShardedPointClouds
from atlas_core.train import train
from orchestrator import datasets, gc
from orchestrator.artifacts import ArtifactError, ArtifactStore, open_store
from orchestrator.registry.db import session_scope
from orchestrator.registry.models import Dataset
from orchestrator.settings import Settings, load_settings
from orchestrator.shard_cache import ShardCache
from tests.conftest import Rodin


def clouds(n: int, points: int = 60) -> PointCloudSet:
    rng = np.random.default_rng(n)
    pts = rng.uniform(-0.5, 0.5, size=(n, points, 3)).astype(np.float32)
    names = [f"shape{i}" for i in range(n)]
    return PointCloudSet(names=names, points=pts, normals=np.ones_like(pts), centers=rng.normal(size=(n, 3)),
                         scales=rng.uniform(1, 2, n), source_sha256=[hashlib.sha256(x.encode()).hexdigest() for x in names])


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings({"RODIN_HOME": str(tmp_path / "home"), "RODIN_CACHE_BYTES": str(10**9)})


@pytest.fixture
def store(settings: Settings) -> ArtifactStore:
    return open_store(settings)


def _version(settings: Settings, store: ArtifactStore, n: int = 25) -> tuple[PointCloudSet, dict]:
    data = clouds(n)
    summary = datasets.register_dataset(settings, store, "d", data, "test", [], shard_bytes=6000)
    return data, datasets.get(settings, summary["ref"], store)


def _row(settings: Settings, ref: str) -> tuple[str, str]:
    name, version = ref.split("@")
    with session_scope(settings) as s:
        row = s.query(Dataset).filter_by(name=name, version=int(version)).one()
        return row.artifact_uri, row.artifact_sha256


def test_a_sharded_version_round_trips_with_its_sha256s_checked(settings: Settings, store: ArtifactStore) -> None:
    data, shown = _version(settings, store)
    assert shown["storage"] == "shards" and shown["shards"] >= 4 and shown["shapes"] == 25
    uri, sha256 = _row(settings, shown["ref"])
    manifest = datasets.read_manifest(store, uri, sha256)
    assert manifest is not None and shown["stored_bytes"] == manifest.stored_bytes > 0
    for cache in (None, ShardCache.for_settings(settings, store)):
        version = datasets.open_version(store, uri, sha256, cache)
        assert isinstance(version, ShardedPointClouds)
        whole = version.load()
        order = [data.names.index(n) for n in whole.names]
        assert np.array_equal(whole.points, data.points[order]) and np.array_equal(whole.scales, data.scales[order])

    # A tampered shard is refused, in one line that names it.
    shard_uri = store.uri_of(manifest.shards[2].uri)
    path = Path(store.fs._strip_protocol(shard_uri))
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0xFF
    path.write_bytes(bytes(raw))
    version = datasets.open_version(store, uri, sha256)
    with pytest.raises(ArtifactError, match="sha256") as refused:
        version.read_points(2)
    assert shard_uri in str(refused.value) and "\n" not in str(refused.value)
    fresh = ShardCache(settings.cache_folder / "other", 10**9, store)
    with pytest.raises(ArtifactError, match="sha256"):
        datasets.open_version(store, uri, sha256, fresh).read_points(2)
    assert not any(p.name.startswith(manifest.shards[2].sha256) and p.parent.name != "locks"
                   for p in (settings.cache_folder / "other").rglob("*"))  # nothing bad entered


def test_show_gives_shard_count_and_bytes(tmp_path: Path) -> None:
    rodin = Rodin(tmp_path / "home")
    rodin.json("datasets", "make", "swords", "--count", "3", "--points-per-shape", "200")
    shown = rodin.json("datasets", "show", "swords")
    assert shown["storage"] == "shards" and shown["shards"] == 1 and shown["stored_bytes"] > 3 * 200 * 24
    text = rodin.cli("datasets", "show", "swords").stdout
    assert "1 shard(s)" in text


def test_a_version_stored_as_one_blob_still_loads_and_trains(settings: Settings, store: ArtifactStore) -> None:
    data = clouds(8)
    blob = store.put_bytes(data.to_bytes(), ".npz")  # what register_dataset wrote before shards
    with session_scope(settings) as s:
        s.add(Dataset(name="old", version=1, content_sha256=data.content_sha256(), shape_count=8,
                      points_per_shape=60, source="before shards", skipped=[], artifact_uri=blob.uri,
                      artifact_sha256=blob.sha256))
    shown = datasets.get(settings, "old", store)
    assert (shown["storage"], shown["shards"], shown["stored_bytes"]) == ("one blob", 1, blob.size)
    version = datasets.open_version(store, blob.uri, blob.sha256, ShardCache.for_settings(settings, store))
    assert isinstance(version, PointCloudSet) and version.names == data.names
    stored = TrainConfig(model=ModelConfig(n_patches=2, bottleneck=8, hidden=8, layers=1, n_points=24),
                         epochs=1, batch_size=4, val_fraction=0.25).to_dict()
    del stored["split"]  # a config stored before the identity split: its job keeps the old split
    result = train(TrainConfig.from_dict(stored), version)
    assert result.last_epoch == 1 and np.isfinite(result.history[0]["val_chamfer"])
    assert datasets.pictures(settings, store, "old")[1]["shapes"].startswith(b"\x89PNG")


def _fill(folder: str, root: str, shards: list[tuple[str, str]], out: multiprocessing.Queue) -> None:
    cache = ShardCache(Path(folder), 10**9, ArtifactStore(root))
    for uri, sha256 in shards:
        cache.read(uri, sha256)
    out.put(cache.counters.fetched_bytes)


def test_processes_filling_the_cache_at_once_leave_one_good_copy_each(settings: Settings, store: ArtifactStore) -> None:
    _, shown = _version(settings, store, n=40)
    manifest = datasets.read_manifest(store, *_row(settings, shown["ref"]))
    assert manifest is not None
    shards = [(store.uri_of(s.uri), s.sha256) for s in manifest.shards]
    folder = settings.cache_folder
    out: multiprocessing.Queue = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=_fill, args=(str(folder), store.root_url, shards[::step], out))
             for step in (1, 1, -1, -1)]
    for p in procs:
        p.start()
    fetched = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    files = [p for p in folder.rglob("*") if p.is_file() and p.parent.name != "locks"]
    assert sorted(f.name for f in files) == sorted(f"{sha}.npz" for _, sha in shards)  # no temporary left
    assert all(hashlib.sha256(f.read_bytes()).hexdigest() == f.name[:64] for f in files)
    assert sum(fetched) == manifest.stored_bytes  # every shard fetched once, by one of them


def test_eviction_keeps_the_cache_under_its_cap_least_recently_used_first(settings: Settings, store: ArtifactStore) -> None:
    _, shown = _version(settings, store, n=40)
    manifest = datasets.read_manifest(store, *_row(settings, shown["ref"]))
    assert manifest is not None
    sizes = sorted(s.bytes for s in manifest.shards)
    cap = sizes[-1] * 3
    cache = ShardCache(settings.cache_folder, cap, store)
    first = manifest.shards[0]
    for shard in manifest.shards:
        cache.read(store.uri_of(shard.uri), shard.sha256)
        cache.read(store.uri_of(first.uri), first.sha256)  # kept in use: never the oldest
        assert cache.size() <= cap
    names = {p.name for p, _ in cache.entries()}
    assert f"{first.sha256}.npz" in names and f"{manifest.shards[-1].sha256}.npz" in names
    assert cache.counters.evicted >= len(manifest.shards) - 3


def test_a_damaged_cached_copy_is_fetched_again(settings: Settings, store: ArtifactStore) -> None:
    _, shown = _version(settings, store, n=10)
    manifest = datasets.read_manifest(store, *_row(settings, shown["ref"]))
    assert manifest is not None
    shard = manifest.shards[0]
    ShardCache.for_settings(settings, store).read(store.uri_of(shard.uri), shard.sha256)
    cached = settings.cache_folder / shard.sha256[:2] / f"{shard.sha256}.npz"
    cached.write_bytes(b"garbage")
    again = ShardCache.for_settings(settings, store)  # another process: checks its first use
    assert hashlib.sha256(again.read(store.uri_of(shard.uri), shard.sha256)).hexdigest() == shard.sha256
    assert again.counters.fetched == 1


def test_gc_keeps_the_shards_a_manifest_lists(settings: Settings, store: ArtifactStore) -> None:
    _, shown = _version(settings, store, n=10)
    orphan = store.put_bytes(b"nobody's", ".bin")
    found = {o.uri for o in gc.find_orphans(settings, store, grace_s=-1)}
    assert found == {orphan.uri}
