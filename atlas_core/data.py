"""Datasets as dense point clouds sampled once per dataset version (numpy only, no torch).

Training draws a fresh subset of each shape's dense cloud every epoch, as the reference AtlasNet
does, so the cloud here is larger than the points the network sees at once.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from atlas_core.mesh_io import Shape

FORMAT_VERSION = 1


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
            points=np.stack([s.points for s in shapes]).astype(np.float32),
            normals=np.stack([s.normals for s in shapes]).astype(np.float32),
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

    def content_sha256(self) -> str:
        """Identity of the source shapes (names and source bytes), independent of sampling."""
        h = hashlib.sha256()
        for name, digest in zip(self.names, self.source_sha256):
            h.update(f"{name}\0{digest}\n".encode())
        return h.hexdigest()

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

