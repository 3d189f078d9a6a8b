"""Model and training configuration: typed dataclasses, recorded verbatim with every checkpoint.

No torch here, so a client can validate a configuration without loading it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, TypeVar

_T = TypeVar("_T")


#: The decoder activations the reference code offers (implemented in atlas_core.model).
ACTIVATION_NAMES = ("relu", "sigmoid", "softplus", "logsigmoid", "softsign", "tanh")
TEMPLATE_NAMES = ("square", "sphere")


@dataclass
class ModelConfig:
    """AtlasNet's shape; the defaults are the paper's reference configuration."""

    n_patches: int = 25
    template: str = "square"
    bottleneck: int = 1024
    hidden: int = 512
    layers: int = 2
    #: Points generated per shape while training; each patch makes n_points // n_patches.
    n_points: int = 2500
    activation: str = "relu"

    def validate(self) -> None:
        """Raise ValueError with a one-line reason for a model that cannot be built."""
        if self.template not in TEMPLATE_NAMES:
            raise ValueError(f"template must be square or sphere, not {self.template!r}")
        if self.activation not in ACTIVATION_NAMES:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATION_NAMES)}, "
                             f"not {self.activation!r}")
        if self.n_patches < 1 or self.bottleneck < 1 or self.hidden < 1 or self.layers < 0:
            raise ValueError("patches, bottleneck and hidden must be >= 1 and layers >= 0")
        if self.n_points < self.n_patches:
            raise ValueError(f"points ({self.n_points}) must be at least the number of "
                             f"patches ({self.n_patches})")

#: The reference schedule divides the learning rate by 10 at 120, 140 and 145 of 150 epochs.
REFERENCE_LR_DECAY_AT = (0.8, 14 / 15, 29 / 30)


@dataclass
class AugmentConfig:
    """Shape augmentation for small datasets (see atlas_core.augment)."""

    rotate: bool = False  # random rotation about each shape's principal axis
    scale: float = 0.0  # anisotropic scaling, factor per axis in [1 - scale, 1 + scale]
    jitter: float = 0.0  # std of Gaussian noise added to every point (unit-ball units)

    @property
    def enabled(self) -> bool:
        return self.rotate or self.scale > 0 or self.jitter > 0

    def validate(self) -> None:
        if not 0.0 <= self.scale < 1.0:
            raise ValueError(f"augment scale must be in [0, 1), got {self.scale}")
        if not 0.0 <= self.jitter <= 0.1:
            raise ValueError(f"augment jitter must be in [0, 0.1], got {self.jitter}")


@dataclass(frozen=True)
class InferConfig:
    """Inference settings, declared once: what `rodin reconstruct` and `rodin evaluate` do to an
    input unless told otherwise, and what the scores are measured on."""

    #: Test-time refinement steps per input (`--refine STEPS`; 0: the encoder alone).
    refine_steps: int = 160
    #: The share of the steps spent on the code alone (phase 1 of atlas_core.refine.refine);
    #: the rest fits the code and a private copy of the decoders.
    latent_share: float = 3 / 8
    #: Points of the fixed evaluation sample on both sides of a score's Chamfer (as many as the
    #: paper's scores use).
    eval_points: int = 2500
    #: Vertices per reconstructed mesh, over all patches.
    mesh_vertices: int = 10_000
    #: Points sampled from an input mesh (or kept of a point cloud) to reconstruct it.
    input_points: int = 10_000

    def refine_split(self, steps: int | None = None) -> tuple[int, int]:
        """`steps` (default `refine_steps`) as (code steps, code-and-decoder steps); (0, 0) for 0."""
        steps = self.refine_steps if steps is None else steps
        if steps <= 0:
            return 0, 0
        latent = max(1, round(steps * self.latent_share))
        return latent, steps - latent


#: The defaults every inference path reads.
INFER = InferConfig()


class ConfigError(ValueError):
    """A stored or given configuration that rodin cannot use as it stands."""


@dataclass
class TrainConfig:
    """Everything that decides a training run; the field defaults are the paper's configuration.

    Presets: `TrainConfig.reference()` (the paper) and `TrainConfig.cpu()` (what `rodin submit
    train` uses unless told `--reference`). Flags are applied with `with_overrides`, by the flat
    names of `flat()`: a field of this class, of `ModelConfig`, or `augment_<field>`.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    epochs: int = 150
    batch_size: int = 32
    lr: float = 1e-3
    lr_decay_at: tuple[float, ...] = REFERENCE_LR_DECAY_AT
    val_fraction: float = 0.1
    checkpoint_every: int = 10
    seed: int = 0
    device: str = "cpu"
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    #: The final model is the checkpoint with the lowest validation Chamfer, not the last one.
    keep_best: bool = True
    #: Stop after this many epochs without a better validation Chamfer (0: never).
    patience: int = 0

    @classmethod
    def reference(cls) -> TrainConfig:
        """The paper's configuration: K=25 patches, 2500 points, bottleneck 1024, 150 epochs."""
        return cls()

    @classmethod
    def cpu(cls) -> TrainConfig:
        """A small AtlasNet that trains in minutes on a laptop CPU."""
        return cls(
            model=ModelConfig(n_patches=10, n_points=1000, bottleneck=256, hidden=128),
            epochs=30, batch_size=16, checkpoint_every=5,
        )

    def lr_milestones(self) -> list[int]:
        return sorted({max(1, round(f * self.epochs)) for f in self.lr_decay_at})

    def validate(self) -> None:
        """Raise ValueError with a one-line reason for settings that cannot train."""
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (math.isfinite(self.lr) and self.lr > 0, f"learning rate must be > 0, got {self.lr}"),
            (self.checkpoint_every >= 1, "checkpoint-every must be >= 1"),
            (0.0 <= self.val_fraction < 1.0, "val-fraction must be in [0, 1)"),
            (self.patience >= 0, "patience must be >= 0"),
        ]
        for ok, reason in checks:
            if not ok:
                raise ValueError(reason)
        self.model.validate()
        self.augment.validate()

    def flat(self) -> dict[str, Any]:
        """The settings under their flag names: top-level fields, model fields, augment_*."""
        values = {f.name: getattr(self, f.name) for f in fields(self)
                  if f.name not in ("model", "augment")}
        values.update(asdict(self.model))
        values.update({f"augment_{k}": v for k, v in asdict(self.augment).items()})
        return values

    def with_overrides(self, **values: Any) -> TrainConfig:
        """A copy with the given flat settings replaced; an unknown name is a ConfigError."""
        unknown = sorted(set(values) - set(self.flat()))
        if unknown:
            raise ConfigError(f"unknown training setting(s): {', '.join(unknown)}")
        model_names = {f.name for f in fields(ModelConfig)}
        model = {k: v for k, v in values.items() if k in model_names}
        augment = {k.removeprefix("augment_"): v for k, v in values.items() if k.startswith("augment_")}
        top = {k: v for k, v in values.items() if k not in model and not k.startswith("augment_")}
        return replace(self, model=replace(self.model, **model),
                       augment=replace(self.augment, **augment), **top)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lr_decay_at"] = list(self.lr_decay_at)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """The inverse of to_dict; a key this version does not know is a ConfigError, so that a
        setting is never silently dropped."""
        d = dict(d)
        model = _build(ModelConfig, d.pop("model", {}), "model")
        augment = _build(AugmentConfig, d.pop("augment", {}), "augment")
        if "lr_decay_at" in d:
            d["lr_decay_at"] = tuple(d["lr_decay_at"])
        return _build(cls, {**d, "model": model, "augment": augment}, "training")


def _build(kind: type[_T], values: dict[str, Any], what: str) -> _T:
    unknown = sorted(set(values) - {f.name for f in fields(kind)})  # type: ignore[arg-type]
    if unknown:
        raise ConfigError(f"unknown {what} setting(s) {', '.join(unknown)}: the configuration was "
                          "written by a newer rodin; upgrade this one")
    return kind(**values)
