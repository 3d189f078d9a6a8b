"""Procedural shape families, and the recipe that pre-trains a base model on one.

A family is a generator of meshes of one kind of object (`swords` is the one that exists). A
user with 30 meshes of that kind fine-tunes a base model pre-trained on many generated ones
(`rodin submit train --dataset mine --pretrain swords`). Adding a family is one entry in
FAMILIES: a function `(count, seed) -> iterator of (name, trimesh.Trimesh)`.

No torch here: the client generates the pre-training set and checks for a base model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

from atlas_core.config import TrainConfig
from atlas_core.orientation import IDENTITY, Turn, describe

if TYPE_CHECKING:
    import trimesh

    from atlas_core.data import PointCloudSet

Generator = Callable[[int, int], Iterator[tuple[str, "trimesh.Trimesh"]]]


def _swords(count: int, seed: int) -> Iterator[tuple[str, trimesh.Trimesh]]:
    from atlas_core.swords import generate_swords

    for name, mesh, _params in generate_swords(count, seed):
        yield name, mesh


FAMILIES: dict[str, Generator] = {"swords": _swords}


def family_names() -> list[str]:
    return sorted(FAMILIES)


def generate_family(family: str, count: int, seed: int, points_per_shape: int,
                    on_shape: Callable[[], None] | None = None, turn: Turn = IDENTITY) -> PointCloudSet:
    """`count` generated shapes of `family`, each sampled to `points_per_shape` surface points,
    turned by `turn` (a rotation of world axes, see atlas_core.orientation) first."""
    import numpy as np

    from atlas_core.data import PointCloudSet
    from atlas_core.mesh_io import shape_from_mesh

    if family not in FAMILIES:
        raise ValueError(f"no procedural family {family!r}; known: {', '.join(family_names())}")
    shapes = []
    for i, (name, mesh) in enumerate(FAMILIES[family](count, seed)):
        if turn != IDENTITY:
            transform = np.eye(4)
            transform[:3, :3] = np.asarray(turn, dtype=np.float64)
            mesh = mesh.copy()
            mesh.apply_transform(transform)
        shapes.append(shape_from_mesh(mesh, name, points_per_shape, seed=seed * 100003 + i))
        if on_shape is not None:
            on_shape()
    return PointCloudSet.from_shapes(shapes)


def family_source(family: str, count: int, seed: int, turn: Turn = IDENTITY) -> str:
    """The dataset `source` text of a generated set (what `rodin datasets make` records)."""
    turned = "" if turn == IDENTITY else f", turned {describe(turn)}"
    return f"procedural {family} (count={count}, seed={seed}{turned})"


@cache
def family_pose_sample(family: str) -> PointCloudSet:
    """A few dozen shapes of the family as it is generated, to read its pose from
    (atlas_core.orientation.frame) and to compare collections with (atlas_core.family_choice):
    the same for every call, generated once per process (callers only read it)."""
    return generate_family(family, 48, seed=424_242, points_per_shape=1000)


@dataclass(frozen=True)
class PretrainRecipe:
    """How a base model is pre-trained on a family; the fine-tune recipe that follows it.

    The generated set is disjoint from a user's own shapes by construction, and from other
    generated sets of the family by its seed. Chosen by measurement (benchmarks/small_data.py):
    enough shapes and epochs that the base transfers, few enough to pre-train in minutes on a
    laptop CPU.
    """

    family: str = "swords"
    count: int = 500
    seed: int = 1_000_003
    points_per_shape: int = 2500
    #: Pre-training schedule (the architecture is the fine-tune's).
    epochs: int = 30
    batch_size: int = 16
    lr: float = 1e-3
    n_points: int = 1000
    #: How the generated shapes are turned before pre-training, so that they lie as the user's
    #: shapes do (atlas_core.orientation.turn_between); part of what makes two bases the same.
    turn: Turn = IDENTITY
    #: Fine-tuning on the user's shapes: gentle, so that it does not forget the family.
    finetune: dict[str, Any] = field(default_factory=lambda: {
        "lr": 1e-4, "epochs": 40, "augment_scale": 0.1, "checkpoint_every": 5, "keep_best": True})

    def pretrain_config(self, architecture: dict[str, Any], base: TrainConfig) -> TrainConfig:
        """The pre-training job's config: the fine-tune's architecture (`TrainConfig.architecture`),
        this schedule."""
        return base.with_overrides(**architecture, epochs=self.epochs, batch_size=self.batch_size,
                                   lr=self.lr, n_points=self.n_points, checkpoint_every=5,
                                   augment_scale=0.0, augment_rotate=False, augment_jitter=0.0,
                                   keep_best=True, patience=0, val_fraction=0.05)

    def key(self, architecture: dict[str, Any]) -> str:
        """What makes two base models interchangeable: the family, the pre-training settings
        and the architecture (a base is reused only when all three match)."""
        described = {k: v for k, v in asdict(self).items() if k != "finetune"}
        if self.turn == IDENTITY:  # the key of the bases registered before turns existed
            del described["turn"]
        else:
            described["turn"] = [list(row) for row in self.turn]
        blob = json.dumps({"recipe": described, "architecture": architecture}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

