"""Procedural shape families, and the recipe that pre-trains a base model on one.

A family is a generator of meshes of one kind of object: `swords`, `furniture` (chairs, stools,
benches, tables), `vessels` (vases, bottles, mugs, bowls, jars, goblets) and `generic` (random
compositions of primitive parts, for any man-made object without a family of its own). A user
with 30 meshes of that kind fine-tunes a base model pre-trained on many generated ones
(`rodin submit train --dataset mine --pretrain swords`). Adding a family is one entry in
FAMILIES: a `Family` whose generator is `(count, seed) -> iterator of (name, trimesh.Trimesh,
parameters)`, deterministic from the seed, with a one-line description and the names of the
parameters that vary (fields of the parameters' dataclass).

No torch here, and no trimesh until a family generates: the client lists the families,
generates the pre-training set and checks for a base model.
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

#: `(count, seed) -> (name, mesh, parameters)`: the parameters are the family's dataclass.
Generator = Callable[[int, int], Iterator[tuple[str, "trimesh.Trimesh", Any]]]


@dataclass(frozen=True)
class Family:
    """A procedural family: its name, what it makes (one line), its generator and the names of
    the parameters that vary from one shape to the next."""

    name: str
    description: str
    generate: Generator
    parameters: tuple[str, ...]

    def meshes(self, count: int, seed: int) -> Iterator[tuple[str, trimesh.Trimesh]]:
        """``count`` shapes as ``(name, mesh)``, deterministic from ``seed``."""
        for name, mesh, _params in self.generate(count, seed):
            yield name, mesh

    def __call__(self, count: int, seed: int) -> Iterator[tuple[str, trimesh.Trimesh]]:
        return self.meshes(count, seed)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "parameters": list(self.parameters)}


# Each generator imports its module (numpy, trimesh) only when it runs.
def _swords(count: int, seed: int) -> Iterator[tuple[str, trimesh.Trimesh, Any]]:
    from atlas_core.swords import generate_swords

    return generate_swords(count, seed)


def _furniture(count: int, seed: int) -> Iterator[tuple[str, trimesh.Trimesh, Any]]:
    from atlas_core.furniture import generate_furniture

    return generate_furniture(count, seed)


def _vessels(count: int, seed: int) -> Iterator[tuple[str, trimesh.Trimesh, Any]]:
    from atlas_core.vessels import generate_vessels

    return generate_vessels(count, seed)


def _generic(count: int, seed: int) -> Iterator[tuple[str, trimesh.Trimesh, Any]]:
    from atlas_core.parts import generate_generic

    return generate_generic(count, seed)


FAMILIES: dict[str, Family] = {family.name: family for family in (
    Family("swords", "swords: a straight or curved, single- or double-edged blade with a guard, a "
           "grip and a pommel", _swords,
           ("blade_length", "blade_width", "blade_thickness", "taper", "curvature", "edge", "tip", "tip_length",
            "fuller", "fuller_depth", "fuller_width", "fuller_length", "guard", "guard_width", "guard_height",
            "guard_depth", "guard_curve", "grip_length", "grip_radius", "grip_ridges", "pommel", "pommel_size")),
    Family("furniture", "chairs, stools, benches and tables: a seat or top on legs, a pedestal or "
           "panels, with aprons, stretchers, backs and arms", _furniture,
           ("kind", "width", "depth", "height", "top", "top_thickness", "legs", "leg_count", "leg_thickness",
            "leg_taper", "leg_section", "leg_inset", "splay", "apron", "apron_height", "stretchers",
            "stretcher_height", "back", "back_height", "back_tilt", "back_fill", "back_wrap", "slats", "arms",
            "arm_height", "column_shape")),
    Family("vessels", "vases, bottles, mugs, cups, bowls, jars and goblets: a turned profile with "
           "walls, handles, a foot or stem, a lid", _vessels,
           ("kind", "height", "radius", "profile", "wall", "cavity", "handles", "handle_shape", "handle_top",
            "handle_bottom", "handle_reach", "handle_thickness", "handle_width", "lid")),
    Family("generic", "any man-made object: 2-8 primitive parts (boxes, cylinders, ellipsoids, capsules, "
           "tubes, turned and extruded shapes) attached to each other, often mirror-symmetric", _generic,
           ("part_count", "symmetric", "scale", "body", "lying", "kinds", "roles", "parts")),
)}


def family_names() -> list[str]:
    return sorted(FAMILIES)


def describe_families() -> list[dict[str, Any]]:
    """Every family as ``{"name", "description", "parameters"}``, by name."""
    return [FAMILIES[name].describe() for name in family_names()]


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
    for i, (name, mesh) in enumerate(FAMILIES[family].meshes(count, seed)):
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
    #: Fine-tuning on the user's shapes: gentle, so that it does not forget the family, and half
    #: of every batch the family's own shapes (rehearsal): measured on 30 generated swords, 100
    #: held out, the fine-tuned model alone went from Chamfer 0.373 and F-score 0.819 (retrieval
    #: from the 30: 0.248, 0.885) to 0.217 and 0.894 (README, "Thirty meshes in").
    finetune: dict[str, Any] = field(default_factory=lambda: {
        "lr": 1e-4, "epochs": 40, "augment_scale": 0.1, "checkpoint_every": 5, "keep_best": True,
        "rehearsal": 0.5})

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

