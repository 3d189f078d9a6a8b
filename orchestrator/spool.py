"""Shapes kept on disk while a version is put together, so that registering one does not hold
every shape's points in memory.

An entry is one shape's points, normals, centre and scale in an `.npz` named by a key, with
the sha256 of its arrays: written under a temporary name and renamed (a reader never sees half
of one), checked whole when read back. The ingest cache (`orchestrator/ingest.py`) is a folder
of such entries, keyed by content; an ingest's readers write each shape there and hand the
client a `SpooledShape` (a name, an identity and where the points are) instead of the points.
`SpooledShapes` is the version to be: the names and identities in memory, the points read back
a shard's worth at a time by `store_shards` (`atlas_core.data.shard_sets`). The client's memory
then holds one shard (64 MB) and about 200 bytes per shape, whatever the count: 44,000 shapes
of 5,000 points would be 5 GB of points held at once otherwise.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from orchestrator.errors import RodinError

if TYPE_CHECKING:
    from atlas_core.data import PointCloudSet
    from atlas_core.mesh_io import Shape

#: The arrays of an entry, besides the sha256 that covers them.
_FIELDS = ("points", "normals", "center", "scale", "source_sha256", "key")


@dataclass
class SpooledShape:
    """A shape whose points are in an entry file: what a reader sends the client."""

    name: str
    source_sha256: str
    path: str
    key: str


#: A shape of a version to be: in memory (an entry that could not be written), or on disk.
Spoolable = Union["Shape", SpooledShape]


def write_entry(folder: Path, key: str, shape: Shape) -> Path | None:
    """Write `shape` as entry `key` (temporary name, then rename); its path, or None when the
    folder cannot be written (a full disk: the caller keeps the shape in memory instead)."""
    import numpy as np

    arrays = {"points": shape.points, "normals": shape.normals,
              "center": np.asarray(shape.center, np.float64), "scale": np.float64(shape.scale),
              "source_sha256": np.str_(shape.source_sha256), "key": np.str_(key)}
    tmp, final = folder / f".{key}.{os.getpid()}.tmp", folder / f"{key}.npz"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            np.savez(fh, arrays_sha256=np.str_(_arrays_sha256(arrays)), **arrays)
        os.replace(tmp, final)
    except OSError:
        tmp.unlink(missing_ok=True)
        return None
    return final


def read_entry(path: Path, key: str, name: str, content: str, points: int) -> Shape | None:
    """The shape in entry `path`, named `name`, checked whole (its arrays' sha256, its key, its
    source identity `content`, `points` per shape); None when absent or not sound."""
    import numpy as np

    from atlas_core.mesh_io import Shape

    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {field: npz[field] for field in _FIELDS}
            stored = str(npz["arrays_sha256"])
    except FileNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - truncated, not a zip, a member missing: not sound
        return None
    points_, normals = arrays["points"], arrays["normals"]
    sound = (stored == _arrays_sha256(arrays) and str(arrays["key"]) == key
             and str(arrays["source_sha256"]) == content
             and points_.shape == (points, 3) and normals.shape == (points, 3)
             and points_.dtype == np.float32 and normals.dtype == np.float32
             and arrays["center"].shape == (3,) and arrays["scale"].shape == ())
    if not sound:
        return None
    return Shape(name=name, points=points_, normals=normals, center=arrays["center"].astype(np.float64),
                 scale=float(arrays["scale"]), source_sha256=content)


def _arrays_sha256(arrays: dict[str, Any]) -> str:
    import numpy as np

    digest = hashlib.sha256()
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        digest.update(f"{name} {value.dtype.str} {value.shape}\n".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


class SpooledShapes:
    """The shapes of a version to be (`atlas_core.data.ShapeRows`), in order: names and
    identities in memory, points read from their entries only for the shapes asked for."""

    def __init__(self, shapes: list[Spoolable], points_per_shape: int):
        if not shapes:
            raise ValueError("a dataset needs at least one shape")
        self.shapes, self._points = shapes, points_per_shape

    def __len__(self) -> int:
        return len(self.shapes)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.shapes]

    @property
    def source_sha256(self) -> list[str]:
        return [s.source_sha256 for s in self.shapes]

    @property
    def points_per_shape(self) -> int:
        return self._points

    def content_sha256(self) -> str:
        from atlas_core.data import content_sha256

        return content_sha256(self.names, self.source_sha256)

    def subset(self, indices: Iterable[int]) -> PointCloudSet:
        """The given shapes in memory, in the order given. An entry that went missing or changed
        since it was written (another add pruned the cache, a disk error) is a RodinError that
        says to run the add again; nothing is registered then."""
        from atlas_core.data import PointCloudSet

        return PointCloudSet.from_shapes(self._load(self.shapes[i]) for i in indices)

    def _load(self, shape: Spoolable) -> Shape:
        if not isinstance(shape, SpooledShape):
            return shape
        loaded = read_entry(Path(shape.path), shape.key, shape.name, shape.source_sha256, self._points)
        if loaded is None:
            raise RodinError(f"the points of {shape.name!r}, read a moment ago, are no longer sound in "
                             f"{shape.path} (another add may have pruned the cache, or the disk failed); "
                             "nothing was registered: run the same command again")
        return loaded
