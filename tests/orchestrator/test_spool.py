"""Registering from the spool (`orchestrator.spool`): shapes whose points stay on disk until
their shard is written register exactly what the same shapes in memory register, the points
are read one shard at a time, and an entry that went bad registers nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from atlas_core.data import PointCloudSet
from atlas_core.mesh_io import Shape
from orchestrator import datasets
from orchestrator.artifacts import open_store
from orchestrator.errors import RodinError
from orchestrator.registry.db import session_scope
from orchestrator.registry.models import Dataset
from orchestrator.settings import Settings, load_settings
from orchestrator.spool import SpooledShape, SpooledShapes, read_entry, write_entry

POINTS = 64


def _shapes(count: int) -> list[Shape]:
    rng = np.random.default_rng(3)
    shapes = []
    for i in range(count):
        points = rng.normal(size=(POINTS, 3)).astype(np.float32)
        normals = points / np.linalg.norm(points, axis=1, keepdims=True)
        shapes.append(Shape(f"shape-{i:03d}", points, normals, rng.normal(size=3), float(1 + i), f"{i:064x}"))
    return shapes


def _spooled(shapes: list[Shape], folder: Path) -> SpooledShapes:
    spooled = []
    for i, shape in enumerate(shapes):
        entry = write_entry(folder, f"k{i}", shape)
        assert entry is not None
        spooled.append(SpooledShape(shape.name, shape.source_sha256, str(entry), f"k{i}"))
    return SpooledShapes(list(spooled), POINTS)


def _settings(tmp_path: Path) -> Settings:
    return load_settings({"RODIN_HOME": str(tmp_path / "home")})


def test_an_entry_reads_back_whole_and_refuses_what_does_not_match(tmp_path: Path) -> None:
    shape = _shapes(1)[0]
    entry = write_entry(tmp_path, "key", shape)
    assert entry is not None and not list(tmp_path.glob(".*.tmp"))
    back = read_entry(entry, "key", "renamed", shape.source_sha256, POINTS)
    assert back is not None and back.name == "renamed" and back.scale == shape.scale
    np.testing.assert_array_equal(back.points, shape.points)
    assert read_entry(entry, "other-key", "x", shape.source_sha256, POINTS) is None
    assert read_entry(entry, "key", "x", "f" * 64, POINTS) is None  # another file's identity
    assert read_entry(entry, "key", "x", shape.source_sha256, POINTS + 1) is None
    entry.write_bytes(entry.read_bytes()[:-100])  # truncated
    assert read_entry(entry, "key", "x", shape.source_sha256, POINTS) is None


def test_spooled_shapes_register_what_the_same_shapes_in_memory_register(tmp_path: Path) -> None:
    shapes = _shapes(40)
    settings = _settings(tmp_path)
    store = open_store(settings)
    in_memory = datasets.register_dataset(settings, store, "mem", PointCloudSet.from_shapes(shapes), "src", [],
                                          shard_bytes=8 * POINTS * 24)
    spooled = _spooled(shapes, tmp_path / "spool")
    asked: list[int] = []
    subset = spooled.subset

    def counting(indices):  # noqa: ANN001, ANN202 - records how many points are read at once
        indices = list(indices)
        asked.append(len(indices))
        return subset(indices)

    spooled.subset = counting  # type: ignore[method-assign]
    progress: list[tuple[int, int]] = []
    on_disk = datasets.register_dataset(settings, store, "disk", spooled, "src", [], shard_bytes=8 * POINTS * 24,
                                        on_shard=lambda done, total: progress.append((done, total)))
    # the same manifest, byte for byte (so the same shards), whether the points were in memory or not
    assert on_disk["artifact_uri"] == in_memory["artifact_uri"]
    assert on_disk["content_sha256"] == in_memory["content_sha256"]
    assert len(asked) > 4 and max(asked) < 10 and sum(asked) == 40  # a shard's worth at a time
    assert progress[-1] == (40, 40) and len(progress) == len(asked)


def test_an_entry_that_went_bad_before_its_shard_registers_nothing(tmp_path: Path) -> None:
    shapes = _shapes(12)
    settings = _settings(tmp_path)
    spooled = _spooled(shapes, tmp_path / "spool")
    Path(spooled.shapes[7].path).unlink()  # as another add's prune would
    with pytest.raises(RodinError, match="shape-007.*run the same command again"):
        datasets.register_dataset(settings, open_store(settings), "gone", spooled, "src", [])
    with session_scope(settings) as s:
        assert s.query(Dataset).count() == 0
