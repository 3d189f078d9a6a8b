"""Sharded datasets in atlas_core alone: the manifest, the streaming loader, the identity split."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from atlas_core.config import AugmentConfig, ModelConfig, TrainConfig
from atlas_core.data import (
    Manifest,
    ManifestError,
    PointCloudSet,
    Shard,
    ShardedPointClouds,
    shard_sets,
    split_by_identity,
    split_indices,
    split_of,
)
from atlas_core.train import CheckpointEvent, TrainCallbacks, _Loader, evaluate_chamfer, train


def clouds(n: int, points: int = 40, start: int = 0) -> PointCloudSet:
    rng = np.random.default_rng(start)
    pts = rng.normal(size=(n, points, 3)).astype(np.float32)
    pts /= np.linalg.norm(pts, axis=2, keepdims=True).max(axis=1, keepdims=True)
    for i in range(n):  # each shape's first point tells which shape it is
        pts[i, 0] = [(start + i) / 1000.0, 0.0, 0.0]
    names = [f"s{start + i}" for i in range(n)]
    return PointCloudSet(names=names, points=pts, normals=np.ones_like(pts),
                         centers=np.zeros((n, 3)), scales=np.ones(n),
                         source_sha256=[hashlib.sha256(n.encode()).hexdigest() for n in names])


def sharded(data: PointCloudSet, max_bytes: int) -> tuple[ShardedPointClouds, dict[str, bytes]]:
    """A sharded copy of `data` held in a dict by sha256, as a store would."""
    blobs: dict[str, bytes] = {}
    shards = []
    for part in shard_sets(data, max_bytes):
        raw = part.to_bytes()
        digest = hashlib.sha256(raw).hexdigest()
        blobs[digest] = raw
        shards.append(Shard(f"sha256/{digest[:2]}/{digest}.npz", digest, len(raw), tuple(part.names),
                            tuple(part.source_sha256)))
    manifest = Manifest(data.points_per_shape, data.content_sha256(), tuple(shards))
    return ShardedPointClouds(Manifest.from_bytes(manifest.to_bytes()), lambda s: blobs[s.sha256]), blobs


def test_a_manifest_round_trips_and_its_shards_hold_every_shape_once() -> None:
    data = clouds(23)
    source, blobs = sharded(data, max_bytes=4000)
    manifest = source.manifest
    assert len(manifest.shards) > 3 and len(manifest) == 23 == len(source)
    assert manifest.stored_bytes == sum(len(b) for b in blobs.values())
    assert Manifest.from_bytes(manifest.to_bytes()) == manifest
    assert sorted(source.names) == sorted(data.names)
    whole = source.load()
    order = [data.names.index(n) for n in whole.names]
    assert np.array_equal(whole.points, data.points[order])
    picked = source.subset([5, 0, 17])
    assert picked.names == [source.names[i] for i in (5, 0, 17)]
    with pytest.raises(ManifestError, match="format"):
        Manifest.from_bytes(b'{"format": "something else"}')


def test_a_shard_that_is_not_what_its_manifest_lists_is_refused() -> None:
    source, blobs = sharded(clouds(10), max_bytes=4000)
    first, second = source.manifest.shards[:2]
    swapped = ShardedPointClouds(source.manifest, lambda s: blobs[second.sha256 if s == first else s.sha256])
    with pytest.raises(ManifestError, match=first.uri):
        swapped.read_points(0)


def test_the_streaming_loader_visits_every_training_shape_once_per_epoch() -> None:
    data = clouds(41)
    source, _ = sharded(data, max_bytes=3000)
    train_idx, val_idx = split_of(source, 0.2, seed=1)
    per_shape = source.points_per_shape * 12
    loader = _Loader(source, train_idx, val_idx, buffer_bytes=5 * per_shape, device=torch.device("cpu"))
    assert not loader.resident and loader.val_clouds is None  # both streamed
    generator = torch.Generator().manual_seed(0)
    orders = []
    for _ in range(2):
        seen = [round(float(x) * 1000) for clouds_, _ in loader.epoch(4, generator) for x in clouds_[:, 0, 0]]
        assert sorted(seen) == sorted(int(source.names[i][1:]) for i in train_idx)
        orders.append(seen)
    assert orders[0] != orders[1]  # a new shuffle every epoch
    chunks = list(loader.validation(4))
    assert [round(float(x) * 1000) for c in chunks for x in c[:, 0, 0]] == \
        [int(source.names[i][1:]) for i in val_idx]


def test_the_identity_split_keeps_old_shapes_on_their_side_when_shapes_are_added() -> None:
    old, added = clouds(60), clouds(40, start=60)
    first = split_by_identity(old.source_sha256, 0.25, seed=3)
    both = split_by_identity(old.source_sha256 + added.source_sha256, 0.25, seed=3)
    assert np.array_equal(both[1][both[1] < 60], first[1])
    assert np.array_equal(both[0][both[0] < 60], first[0])
    assert 0.1 < len(both[1]) / 100 < 0.4
    assert not np.array_equal(split_by_identity(old.source_sha256, 0.25, seed=4)[1], first[1])
    # Degenerate sizes keep split_indices' promises: one shape trains, two or more hold one out.
    assert [len(x) for x in split_by_identity(old.source_sha256[:1], 0.5, 0)] == [1, 0]
    assert len(split_by_identity(old.source_sha256[:2], 0.01, 0)[1]) == 1


def test_position_is_the_split_of_configs_stored_before_the_identity_split() -> None:
    data = clouds(30)
    stored = TrainConfig().to_dict()
    del stored["split"]
    config = TrainConfig.from_dict(stored)
    assert config.split == "position" and TrainConfig().split == "identity"
    for got, want in zip(split_of(data, 0.1, 3, config.split), split_indices(30, 0.1, 3)):
        assert np.array_equal(got, want)
    with pytest.raises(ValueError, match="split"):
        TrainConfig(split="random").validate()


def tiny(**overrides) -> TrainConfig:  # type: ignore[no-untyped-def]
    model = ModelConfig(n_patches=2, bottleneck=8, hidden=8, layers=1, n_points=24)
    return TrainConfig(model=model, **{"epochs": 2, "batch_size": 4, "checkpoint_every": 1,
                                       "val_fraction": 0.2, **overrides})


def test_training_streams_a_sharded_version_and_resumes_as_the_uninterrupted_run() -> None:
    source, _ = sharded(clouds(30), max_bytes=3000)
    small = source.points_per_shape * 12 * 6  # a buffer of 6 shapes: streamed
    config = tiny(augment=AugmentConfig(rotate=True))
    events: list[CheckpointEvent] = []
    full = train(config, source, TrainCallbacks(on_checkpoint=events.append), buffer_bytes=small)
    assert full.last_epoch == 2 and all(np.isfinite(h["val_chamfer"]) for h in full.history)
    first = next(e for e in events if e.epoch == 1 and e.reason == "periodic")
    resumed = train(config, source, resume_from=first.state, buffer_bytes=small)
    assert resumed.history[1]["train_loss"] == pytest.approx(full.history[1]["train_loss"], abs=1e-6)
    # A streamed validation set gives the Chamfer of the same set held whole.
    val = torch.from_numpy(source.load().points[:9])
    streamed = evaluate_chamfer(full.model, iter(val.split(4)), 24, 4, seed=1)
    assert streamed == pytest.approx(evaluate_chamfer(full.model, val, 24, 4, seed=1))
