"""Model and training configuration: typed dataclasses, recorded verbatim with every checkpoint.

Each training setting is declared once, on its own field: its metadata (`declare`) gives its
help text, its flag and whether it belongs to the architecture, and `training_settings()` reads
them back in order with each setting's flat name (what `TrainConfig.with_overrides` and a
sweep's grid take) and stored path (`flatten` of a stored config). `rodin submit train` and
`rodin submit sweep` build their options from it; compare, the report and the pre-training
key read it.

No torch here, so a client can validate a configuration without loading it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from functools import lru_cache
from typing import Any, TypeVar, get_origin, get_type_hints

_T = TypeVar("_T")


def declare(help: str | None = None, *, flag: str | None = None, off: str | None = None,
            architecture: bool = False) -> dict[str, Any]:
    """A field's metadata as a training setting.

    help: the setting is a command-line flag, `--` and its flat name with dashes unless `flag`
    names it otherwise (`--patches`); an on/off setting's flag that turns it off is `off`, by
    default `--no-` and the flag. architecture: a fine-tune keeps its parent's value, and a base
    model is reused only for the same value (the weights mean nothing under another).
    """
    return {"help": help, "flag": flag, "off": off, "architecture": architecture}


def group(prefix: str) -> dict[str, Any]:
    """The metadata of a field that holds a group of settings: their flat names start with
    `prefix` (`augment_scale` for `augment.scale`)."""
    return {"prefix": prefix}


@dataclass(frozen=True)
class Setting:
    """One training setting, as `training_settings()` reads it from its field."""

    #: What `TrainConfig.with_overrides`, `flat()` and a sweep's grid call it: `n_patches`,
    #: `augment_scale`.
    name: str
    #: Where it is stored in `TrainConfig.to_dict()`, as `flatten` names it: `model.n_patches`.
    path: str
    #: The field's type: int, float, str, bool (tuple for `lr_decay_at`).
    kind: type
    help: str | None
    #: `--patches`; None for a setting no command offers (`device`, `lr_decay_at`).
    flag: str | None
    #: The flag that turns an on/off setting off (`--keep-last`); None for the others.
    off_flag: str | None
    architecture: bool


#: The decoder activations the reference code offers (implemented in atlas_core.model).
ACTIVATION_NAMES = ("relu", "sigmoid", "softplus", "logsigmoid", "softsign", "tanh")
TEMPLATE_NAMES = ("square", "sphere")


@dataclass
class ModelConfig:
    """AtlasNet's shape; the defaults are the paper's reference configuration."""

    n_patches: int = field(default=25, metadata=declare(
        "Atlas patches K", flag="--patches", architecture=True))
    template: str = field(default="square", metadata=declare(
        "Patch template: square or sphere", architecture=True))
    bottleneck: int = field(default=1024, metadata=declare("Latent size", architecture=True))
    hidden: int = field(default=512, metadata=declare("Decoder width", architecture=True))
    layers: int = field(default=2, metadata=declare("Hidden layers per decoder", architecture=True))
    #: Points generated per shape while training; each patch makes n_points // n_patches.
    n_points: int = field(default=2500, metadata=declare("Points per shape per step", flag="--points"))
    #: No flag: the reference code's other activations, for atlas_core users. Architecture: the
    #: weights were trained through this nonlinearity, so a fine-tune keeps it.
    activation: str = field(default="relu", metadata=declare(architecture=True))

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

    #: Random rotation about each shape's principal axis.
    rotate: bool = field(default=False, metadata=declare("Rotate each shape about its principal axis"))
    #: Anisotropic scaling, factor per axis in [1 - scale, 1 + scale].
    scale: float = field(default=0.0, metadata=declare("Anisotropic scaling by up to ±S per axis"))
    #: Std of Gaussian noise added to every point (unit-ball units).
    jitter: float = field(default=0.0, metadata=declare("Gaussian point noise, std in unit-ball units"))

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

    #: Test-time refinement steps per input (`--refine STEPS`; 0: the encoder alone). 260 (was
    #: 160: 60 + 100): phase 2's 200 steps took the held-out F-score@1% of the varied families
    #: past 0.95 on all 100 (vessels 0.941 -> 0.951, generic 0.947 -> 0.961), and two batches
    #: side by side on a 2-core worker keep it at 1.5 s a mesh (docs/notes/refine_study.md,
    #: section 11).
    refine_steps: int = 260
    #: The share of the steps spent on the code alone (phase 1 of atlas_core.refine.refine);
    #: the rest fits the code and a private copy of the decoders. 3/13 keeps the code phase at
    #: the 60 steps that the out-of-distribution statistics (atlas_core.ood) are measured with;
    #: 120 did no better (vessels: F 0.963 against 0.965, 0.1 s a mesh more).
    latent_share: float = 3 / 13
    #: Points of the fixed evaluation sample on both sides of a score's Chamfer (as many as the
    #: paper's scores use).
    eval_points: int = 2500
    #: Points sampled from a reconstruction for its F-score and coverage, and the most of the
    #: ground truth's own points they are scored against: dense enough that the F-score at 1%
    #: measures the surface, not the samples' spacing (atlas_core.metrics).
    fscore_points: int = 30_000
    #: Vertices per reconstructed mesh, over all patches.
    mesh_vertices: int = 10_000
    #: A refined reconstruction loses the faces farther from every input point than this many
    #: times the input's median point spacing (atlas_core.trim; 0: keep every face).
    trim_factor: float = 2.5
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
    names of `training_settings()`: a field of this class, of `ModelConfig`, or `augment_<field>`.
    A new setting is a field here (or in ModelConfig/AugmentConfig) with `declare(...)`
    metadata; the commands, sweeps, compare and the report follow.
    """

    model: ModelConfig = field(default_factory=ModelConfig, metadata=group(""))
    epochs: int = field(default=150, metadata=declare("Epochs"))
    batch_size: int = field(default=32, metadata=declare("Shapes per step (the global batch, over every device)"))
    #: Devices (ranks) that train one job data-parallel on one machine: GPUs, or CPU processes
    #: of one thread each. Each rank computes `batch_size // devices` shapes of every step.
    devices: int = field(default=1, metadata=declare(
        "Devices that train this job data-parallel on each worker machine it uses; each takes "
        "batch-size / (nodes x devices) shapes of every step"))
    #: Worker machines one job trains on, `devices` ranks on each: nodes x devices ranks in all
    #: (rank r on machine r // devices). The job's worker is machine 0 and rank 0.
    nodes: int = field(default=1, metadata=declare(
        "Worker machines that train this job together, --devices on each (they meet through "
        "the queue; see docs/ARCHITECTURE.md)"))
    lr: float = field(default=1e-3, metadata=declare("Adam learning rate, /10 at 80, 93, 97% of epochs"))
    lr_decay_at: tuple[float, ...] = REFERENCE_LR_DECAY_AT
    val_fraction: float = field(default=0.1, metadata=declare("Shapes held out for validation"))
    #: How shapes are held out (no flag): "identity", by a hash of each shape's content and the
    #: seed, so a dataset's next version keeps its old shapes on the same side; "position", the
    #: seeded permutation of positions of configs stored before the field existed (`from_dict`
    #: reads a stored config without it so), which their resumed jobs and their models'
    #: evaluations and reconstructions keep. One rule for all: `atlas_core.data.split_of`.
    split: str = "identity"
    checkpoint_every: int = field(default=10, metadata=declare("Register a checkpoint every E epochs"))
    seed: int = field(default=0, metadata=declare("Seed for the split, sampling and initialisation"))
    device: str = "cpu"
    augment: AugmentConfig = field(default_factory=AugmentConfig, metadata=group("augment_"))
    #: The final model is the checkpoint with the lowest validation Chamfer, not the last one.
    keep_best: bool = field(default=True, metadata=declare(
        "Final model: the best validation Chamfer (on) or the last epoch (off)", off="--keep-last"))
    #: Stop after this many epochs without a better validation Chamfer (0: never).
    patience: int = field(default=0, metadata=declare(
        "Stop after P epochs without a better validation Chamfer, 0: never"))
    #: Fine-tuning a family's base: the share of every training batch drawn from the shapes the
    #: base was pre-trained on (rehearsal), so that a few dozen shapes are not memorised and the
    #: family's shape space is not forgotten. Validation stays on the dataset's own shapes.
    rehearsal: float = field(default=0.0, metadata=declare(
        "With --pretrain: share of each batch drawn from the base's generated shapes (rehearsal), 0: none"))

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

    @property
    def world_size(self) -> int:
        """Ranks that train the job: `devices` on each of `nodes` machines."""
        return max(1, self.nodes) * max(1, self.devices)

    @property
    def device_batch(self) -> int:
        """Shapes each device computes per step: the global batch over every rank."""
        return self.batch_size // self.world_size

    def lr_milestones(self) -> list[int]:
        return sorted({max(1, round(f * self.epochs)) for f in self.lr_decay_at})

    def validate(self) -> None:
        """Raise ValueError with a one-line reason for settings that cannot train."""
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (self.devices >= 1, f"devices must be >= 1, got {self.devices}"),
            (self.nodes >= 1, f"nodes must be >= 1, got {self.nodes}"),
            (self.devices < 1 or self.nodes < 1 or self.batch_size % self.world_size == 0,
             f"batch size {self.batch_size} is not divisible by the {self.world_size} devices "
             f"({self.nodes} node(s) x {self.devices}): the batch is split evenly among them; pick "
             f"a multiple of {self.world_size}"),
            (math.isfinite(self.lr) and self.lr > 0, f"learning rate must be > 0, got {self.lr}"),
            (self.checkpoint_every >= 1, "checkpoint-every must be >= 1"),
            (0.0 <= self.val_fraction < 1.0, "val-fraction must be in [0, 1)"),
            (self.split in ("identity", "position"),
             f"split must be identity or position, not {self.split!r}"),
            (self.patience >= 0, "patience must be >= 0"),
            (0.0 <= self.rehearsal <= 0.9, f"rehearsal must be in [0, 0.9], got {self.rehearsal}"),
            (self.rehearsal == 0 or self.world_size == 1,
             "rehearsal runs on one device only for now; drop --devices/--nodes or --rehearsal"),
        ]
        for ok, reason in checks:
            if not ok:
                raise ValueError(reason)
        self.model.validate()
        self.augment.validate()

    def flat(self) -> dict[str, Any]:
        """Every setting under its flat name (`n_patches`, `augment_scale`), in stored order."""
        names = {s.path: s.name for s in training_settings()}
        return {names[path]: value for path, value in flatten(asdict(self)).items()}

    def architecture(self) -> dict[str, Any]:
        """The settings that a fine-tune shares with its parent and a base model with its
        fine-tunes, by flat name."""
        flat = self.flat()
        return {s.name: flat[s.name] for s in training_settings() if s.architecture}

    def with_overrides(self, **values: Any) -> TrainConfig:
        """A copy with the given flat settings replaced; an unknown name is a ConfigError."""
        by_name = {s.name: s for s in training_settings()}
        unknown = sorted(set(values) - set(by_name))
        if unknown:
            raise ConfigError(f"unknown training setting(s): {', '.join(unknown)}")
        groups: dict[str, dict[str, Any]] = {}
        for name, value in values.items():
            where, _, leaf = by_name[name].path.rpartition(".")
            groups.setdefault(where, {})[leaf] = value
        top = groups.pop("", {})
        return replace(self, **{where: replace(getattr(self, where), **changed)
                                for where, changed in groups.items()}, **top)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lr_decay_at"] = list(self.lr_decay_at)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """The inverse of to_dict; a key this version does not know is a ConfigError, so that a
        setting is never silently dropped."""
        d = dict(d)
        # Stored before the identity split existed: those jobs split by position.
        d.setdefault("split", "position")
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


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A stored config as dotted paths, in its stored order: `{"model": {"n_patches": 4}}` ->
    `{"model.n_patches": 4}`. The one flattening of configs: `TrainConfig.flat`, `rodin models
    compare` and the report read it (a stored config of another version flattens too)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@lru_cache(maxsize=1)
def training_settings() -> tuple[Setting, ...]:
    """Every setting of TrainConfig, in declaration order (the order of `--help`), read from
    the fields' metadata (`declare`, `group`)."""
    return tuple(_settings_of(TrainConfig, "", ""))


def _settings_of(kind: type, name_prefix: str, path_prefix: str) -> Iterator[Setting]:
    hints = get_type_hints(kind)
    for f in fields(kind):
        hint = hints[f.name]
        if isinstance(hint, type) and is_dataclass(hint):
            yield from _settings_of(hint, name_prefix + f.metadata["prefix"], f"{path_prefix}{f.name}.")
            continue
        name = name_prefix + f.name
        help_text = f.metadata.get("help")
        flag = (f.metadata.get("flag") or "--" + name.replace("_", "-")) if help_text else None
        kind_of = get_origin(hint) or hint
        off = (f.metadata.get("off") or f"--no-{flag.removeprefix('--')}") \
            if flag and kind_of is bool else None
        yield Setting(name=name, path=path_prefix + f.name, kind=kind_of, help=help_text, flag=flag,
                      off_flag=off, architecture=bool(f.metadata.get("architecture")))


def setting_flags() -> dict[str, str]:
    """Each setting that is a flag, by flat name: `n_patches` -> `--patches`."""
    return {s.name: s.flag for s in training_settings() if s.flag}


def as_flags(values: Mapping[str, Any]) -> str:
    """Settings as the flags that give them: `--patches 5 --template sphere` (a name that is
    no flag stays as it is)."""
    flags = setting_flags()
    return " ".join(f"{flags.get(name, name)} {value}" for name, value in values.items())
