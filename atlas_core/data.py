"""Datasets as dense point clouds sampled once per dataset version (numpy only, no torch).

Training draws a fresh subset of each shape's dense cloud every epoch, as the reference AtlasNet
does, so the cloud here is larger than the points the network sees at once.

A dataset is a `ShapeSource`: its shapes' names and identities (`source_sha256`) known up
front, its points read block by block. `PointCloudSet` holds everything in memory (one block;
what a notebook passes to `train`); `ShardedPointClouds` reads a stored version's shards one at
a time through a function that opens a shard (a worker's cache, a folder, anything), so that
training streams and its memory does not grow with the number of shapes. A shard is a small
`PointCloudSet` in the `.npz` format below; a `Manifest` (JSON) lists them with their sha256.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Protocol

import numpy as np

from atlas_core.mesh_io import Shape

FORMAT_VERSION = 1
#: What a manifest says it is, and the version of its layout.
MANIFEST_FORMAT = "rodin.pointcloud-shards"
MANIFEST_VERSION = 1
#: A shard's target size: large enough that a worker reads few objects per epoch (ShapeNet Core
#: at 5,000 points: about 80 shards), small enough that one in memory is cheap.
SHARD_BYTES = 64 * 1024 * 1024
#: How the validation split is drawn (TrainConfig.split): "identity" puts a shape on its side by
#: a hash of its content and the seed, so a dataset's next version keeps its old shapes on the
#: same side; "position" is the seeded permutation of positions used before (stored configs
#: without the field), kept so that their jobs resume, evaluate and reconstruct on their split.
SPLIT_METHODS = ("identity", "position")


@dataclass
class PointCloudSet:
    """S shapes, each a dense normalised surface sample with the transform that undoes it."""

    names: list[str]
    points: np.ndarray  # (S, P, 3) float32, each shape in the unit ball
    normals: np.ndarray  # (S, P, 3) float32, unit length
    centers: np.ndarray  # (S, 3) float64, original-coordinates centroid
    scales: np.ndarray  # (S,) float64, original-coordinates radius
    source_sha256: list[str]

    def __len__(self) -> int:
        return len(self.names)

    @property
    def points_per_shape(self) -> int:
        return int(self.points.shape[1])

    @classmethod
    def from_shapes(cls, shapes: Iterable[Shape]) -> PointCloudSet:
        shapes = list(shapes)
        if not shapes:
            raise ValueError("a dataset needs at least one shape")
        return cls(
            names=[s.name for s in shapes],
            points=np.stack([s.points for s in shapes]).astype(np.float32, copy=False),
            normals=np.stack([s.normals for s in shapes]).astype(np.float32, copy=False),
            centers=np.stack([np.asarray(s.center, np.float64) for s in shapes]),
            scales=np.asarray([s.scale for s in shapes], np.float64),
            source_sha256=[s.source_sha256 for s in shapes],
        )

    def subset(self, indices: Iterable[int]) -> PointCloudSet:
        idx = np.asarray(list(indices), dtype=np.int64)
        return PointCloudSet(
            names=[self.names[i] for i in idx],
            points=self.points[idx],
            normals=self.normals[idx],
            centers=self.centers[idx],
            scales=self.scales[idx],
            source_sha256=[self.source_sha256[i] for i in idx],
        )

    def blocks(self) -> list[np.ndarray]:
        """ShapeSource: one block, every shape."""
        return [np.arange(len(self))]

    def read_points(self, block: int) -> np.ndarray:
        """ShapeSource: the points of block 0 (all of them)."""
        if block != 0:
            raise IndexError(f"a PointCloudSet has one block, not {block + 1}")
        return self.points

    def content_sha256(self) -> str:
        """Identity of the source shapes (names and source bytes), independent of sampling."""
        return content_sha256(self.names, self.source_sha256)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(
            buf,
            format_version=np.int64(FORMAT_VERSION),
            names=np.asarray(self.names, dtype=np.str_),
            points=self.points,
            normals=self.normals,
            centers=self.centers,
            scales=self.scales,
            source_sha256=np.asarray(self.source_sha256, dtype=np.str_),
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> PointCloudSet:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            if int(z["format_version"]) != FORMAT_VERSION:
                raise ValueError(f"unsupported dataset format {int(z['format_version'])}")
            return cls(
                names=[str(n) for n in z["names"]],
                points=z["points"],
                normals=z["normals"],
                centers=z["centers"],
                scales=z["scales"],
                source_sha256=[str(s) for s in z["source_sha256"]],
            )


def content_sha256(names: Sequence[str], source_sha256: Sequence[str]) -> str:
    """A dataset's identity: its shapes' names and source bytes in order, not their sampling."""
    h = hashlib.sha256()
    for name, digest in zip(names, source_sha256):
        h.update(f"{name}\0{digest}\n".encode())
    return h.hexdigest()


class ShapeRows(Protocol):
    """What a version is stored from (`shard_sets`): every shape's name and identity up front,
    any few of them in memory on request. A PointCloudSet holds them all; the ingest's spool
    (orchestrator/spool.py) holds them on disk, so that a client registering 44,000 shapes
    keeps one shard's worth in memory."""

    @property
    def names(self) -> list[str]: ...

    @property
    def source_sha256(self) -> list[str]: ...

    def __len__(self) -> int: ...

    @property
    def points_per_shape(self) -> int: ...

    def subset(self, indices: Iterable[int]) -> PointCloudSet: ...


class ShapeSource(Protocol):
    """What `atlas_core.train.train` reads: every shape's name and identity up front, the
    points one block at a time (a PointCloudSet is one block; a sharded version one per shard)."""

    names: list[str]
    source_sha256: list[str]

    def __len__(self) -> int: ...

    @property
    def points_per_shape(self) -> int: ...

    def blocks(self) -> list[np.ndarray]:
        """The shapes' indices in each block, in order; together 0..len-1 once each."""
        ...

    def read_points(self, block: int) -> np.ndarray:
        """(n, P, 3) float32 points of the block's shapes, in the order of `blocks()[block]`."""
        ...


@dataclass(frozen=True)
class Shard:
    """One stored shard as its manifest lists it."""

    #: Where the shard lives, relative to the store that holds the manifest
    #: (`sha256/ab/ab12....npz`): the manifest stays true when the store moves.
    uri: str
    sha256: str
    bytes: int
    names: tuple[str, ...]
    source_sha256: tuple[str, ...]

    @property
    def shapes(self) -> int:
        return len(self.names)

    def as_dict(self) -> dict[str, object]:
        return {"uri": self.uri, "sha256": self.sha256, "bytes": self.bytes, "shapes": self.shapes,
                "names": list(self.names), "source_sha256": list(self.source_sha256)}


class ManifestError(ValueError):
    """Bytes that are not a manifest this version can read, or a shard that is not what its
    manifest says."""


@dataclass(frozen=True)
class Manifest:
    """A sharded dataset version: its shards in order, each with its sha256, size and shapes."""

    points_per_shape: int
    content_sha256: str
    shards: tuple[Shard, ...]

    def __len__(self) -> int:
        return sum(s.shapes for s in self.shards)

    @property
    def stored_bytes(self) -> int:
        """The shards' bytes together (the manifest's own not counted)."""
        return sum(s.bytes for s in self.shards)

    def to_bytes(self) -> bytes:
        return json.dumps({
            "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "shapes": len(self),
            "points_per_shape": self.points_per_shape, "content_sha256": self.content_sha256,
            "bytes": self.stored_bytes, "shards": [s.as_dict() for s in self.shards],
        }, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        try:
            d = json.loads(data)
            if d.get("format") != MANIFEST_FORMAT:
                raise ManifestError(f"not a rodin shard manifest (format {d.get('format')!r})")
            if d.get("version") != MANIFEST_VERSION:
                raise ManifestError(f"unsupported shard manifest version {d.get('version')!r}: "
                                    "written by a newer rodin; upgrade this one")
            shards = tuple(Shard(uri=str(s["uri"]), sha256=str(s["sha256"]), bytes=int(s["bytes"]),
                                 names=tuple(map(str, s["names"])),
                                 source_sha256=tuple(map(str, s["source_sha256"])))
                           for s in d["shards"])
            manifest = cls(int(d["points_per_shape"]), str(d["content_sha256"]), shards)
        except ManifestError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ManifestError(f"unreadable shard manifest ({type(exc).__name__}: {exc})") from None
        if any(len(s.names) != len(s.source_sha256) or not s.names for s in shards) or \
                len(manifest) != int(d["shapes"]):
            raise ManifestError("inconsistent shard manifest (shape counts do not add up)")
        return manifest


def is_manifest(data: bytes) -> bool:
    """A stored version's artifact: a manifest (JSON) or, before shards, one `.npz` (a zip)."""
    return data[:1] == b"{"


def shard_sets(data: ShapeRows, max_bytes: int = SHARD_BYTES) -> Iterator[PointCloudSet]:
    """`data` cut into shards of at most about `max_bytes` (at least one shape each), its shapes
    in an order shuffled once, seeded by the content: a folder read in order (one category after
    another) would otherwise make category-pure shards, and a streaming reader's batches would
    see one or two categories at a time. One shard is in memory at a time."""
    identity = content_sha256(data.names, data.source_sha256)
    order = np.random.default_rng(int(identity[:16], 16)).permutation(len(data))
    longest = max(len(n) for n in data.names) + 64
    per_shape = 2 * data.points_per_shape * 3 * 4 + 32 + 4 * longest  # points, normals, the rest
    step = max(1, int(max_bytes // per_shape))
    for start in range(0, len(data), step):
        yield data.subset(order[start:start + step])


#: A function that opens a shard's bytes (sha256 already checked): a path or a binary file
#: that np.load reads, or the bytes.
ShardOpener = Callable[[Shard], "str | IO[bytes] | bytes"]


class ShardedPointClouds:
    """A sharded version read shard by shard through `open_shard`: the names and identities
    come from the manifest, the points only when a block is read (and only the points)."""

    def __init__(self, manifest: Manifest, open_shard: ShardOpener):
        self.manifest, self.open_shard = manifest, open_shard
        self.names = [n for s in manifest.shards for n in s.names]
        self.source_sha256 = [h for s in manifest.shards for h in s.source_sha256]
        bounds = np.cumsum([0] + [s.shapes for s in manifest.shards])
        self._blocks = [np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:])]

    def __len__(self) -> int:
        return len(self.names)

    @property
    def points_per_shape(self) -> int:
        return self.manifest.points_per_shape

    def blocks(self) -> list[np.ndarray]:
        return self._blocks

    def _load(self, block: int, keys: Sequence[str]) -> dict[str, np.ndarray]:
        shard = self.manifest.shards[block]
        opened = self.open_shard(shard)
        source = io.BytesIO(opened) if isinstance(opened, bytes) else opened
        try:
            with np.load(source, allow_pickle=False) as z:
                names = [str(n) for n in z["names"]]
                if names != list(shard.names):
                    raise ManifestError(f"shard {shard.uri} does not hold the shapes its manifest lists")
                return {k: z[k] for k in keys}
        finally:
            if not isinstance(opened, (bytes, str)):
                opened.close()

    def read_points(self, block: int) -> np.ndarray:
        return self._load(block, ("points",))["points"]

    def read_set(self, block: int) -> PointCloudSet:
        """One shard whole, as a PointCloudSet."""
        shard = self.manifest.shards[block]
        z = self._load(block, ("points", "normals", "centers", "scales"))
        return PointCloudSet(list(shard.names), z["points"], z["normals"], z["centers"], z["scales"],
                             list(shard.source_sha256))

    def subset(self, indices: Iterable[int]) -> PointCloudSet:
        """The given shapes in memory, in the order given; only the shards that hold them are read."""
        idx = np.asarray(list(indices), dtype=np.int64)
        parts: list[PointCloudSet] = []
        where: dict[int, int] = {}  # global index -> row in the concatenation
        for b, members in enumerate(self._blocks):
            wanted = idx[(idx >= members[0]) & (idx <= members[-1])] if len(idx) else idx
            if not len(wanted):
                continue
            chosen = np.unique(wanted)
            part = self.read_set(b).subset(chosen - members[0])
            offset = sum(len(p) for p in parts)
            where.update({int(g): offset + k for k, g in enumerate(chosen)})
            parts.append(part)
        if not parts:
            return PointCloudSet([], np.zeros((0, self.points_per_shape, 3), np.float32),
                                 np.zeros((0, self.points_per_shape, 3), np.float32),
                                 np.zeros((0, 3)), np.zeros(0), [])
        whole = concatenate(parts)
        return whole.subset(where[int(i)] for i in idx)

    def load(self) -> PointCloudSet:
        """Every shape in memory (small versions, or callers that need them all at once)."""
        return concatenate([self.read_set(b) for b in range(len(self._blocks))])


def concatenate(parts: Sequence[PointCloudSet]) -> PointCloudSet:
    return PointCloudSet(
        names=[n for p in parts for n in p.names],
        points=np.concatenate([p.points for p in parts]),
        normals=np.concatenate([p.normals for p in parts]),
        centers=np.concatenate([p.centers for p in parts]),
        scales=np.concatenate([p.scales for p in parts]),
        source_sha256=[h for p in parts for h in p.source_sha256],
    )


def gather_points(source: ShapeSource, indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """(len(indices), P, 3) points of the given shapes, in the order given, reading only the
    blocks that hold them (one at a time)."""
    idx = np.asarray(indices, dtype=np.int64)
    if isinstance(source, PointCloudSet):
        return source.points[idx]
    out = np.empty((len(idx), source.points_per_shape, 3), np.float32)
    for b, members in enumerate(source.blocks()):
        if not len(members):
            continue
        rows = np.flatnonzero((idx >= members[0]) & (idx <= members[-1]))
        if len(rows):
            out[rows] = source.read_points(b)[idx[rows] - members[0]]
    return out


def _identity_draw(source_sha256: str, seed: int) -> float:
    """A shape's place in [0, 1) for the identity split: its content and the seed, nothing else."""
    digest = hashlib.sha256(f"rodin-split\0{seed}\0{source_sha256}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_by_identity(source_sha256: Sequence[str], val_fraction: float,
                      seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx), both sorted: a shape is held out when the hash of its content
    sha256 and the seed falls under `val_fraction`, whatever the other shapes are, so a
    version with shapes added keeps its old shapes on the same side (the shares are
    `val_fraction` on average, not exactly). As `split_indices`: at least one shape trains, and
    with `val_fraction` > 0 and two shapes or more at least one is held out (the nearest to the
    threshold moves)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    draws = np.asarray([_identity_draw(h, seed) for h in source_sha256], dtype=np.float64)
    held = draws < val_fraction
    n = len(draws)
    if n and held.all():
        held[int(np.argmax(draws))] = False
    if val_fraction > 0 and n >= 2 and not held.any():
        held[int(np.argmin(draws))] = True
    return np.flatnonzero(~held), np.flatnonzero(held)


def split_of(source: ShapeSource, val_fraction: float, seed: int,
             method: str = "identity") -> tuple[np.ndarray, np.ndarray]:
    """The one split rule of training, evaluation and reconstruction: (train_idx, val_idx)."""
    if method == "position":
        return split_indices(len(source), val_fraction, seed)
    if method == "identity":
        return split_by_identity(source.source_sha256, val_fraction, seed)
    raise ValueError(f"split method must be one of {', '.join(SPLIT_METHODS)}, not {method!r}")


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded train/validation split of `n` shapes: (train_idx, val_idx), both sorted.

    At least one shape stays in training; with a single shape the validation set is empty and
    callers validate on the training shape.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(n - 1, int(round(n * val_fraction)))
    if val_fraction > 0 and n >= 2:
        n_val = max(1, n_val)
    return np.sort(order[n_val:]), np.sort(order[:n_val])

