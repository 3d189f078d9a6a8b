"""
Is an input like the shapes a model was trained on? Statistics kept with a model, and warnings.

A model trained on a few dozen shapes of one kind reconstructs that kind; given something else
(a cube to a sword model) it still returns a surface, and test-time refinement
(`atlas_core.refine`) may even fit it, but it is not the model's knowledge any more. Two signals,
both measured before refinement, tell the user:

    reconstruction  the Chamfer between the model's reconstruction and the input (`refine`'s
                    `chamfer_before`), against the same figure on the model's validation shapes
                    (its training shapes when it has none);
    code            the encoder's code z (D,), as a standardised distance from the training
                    shapes' codes, r(z) = sqrt(mean_d ((z_d - mean_d) / scale_d)^2), against
                    the same distance of the training and validation shapes themselves.

For shapes like the training ones, r is about 1 whatever the collection (it is an RMS of
standardised coordinates), and the Chamfer is about the validation figure; a PointNet meeting a
foreign shape produces features far outside its BatchNorm statistics, its code lands far away
(measured: 5x-25x the reference's 95th percentile), and the decoders extrapolate it into a
surface well outside the unit ball (Chamfer thousands of times the validation figure). A warning
fires when the ratio to the reference's 95th percentile exceeds CHAMFER_FACTOR or LATENT_FACTOR,
chosen between the worst held-out shape of the model's own kind and the closest foreign shape
(benchmarks/refine.py prints both rates).

    stats = collect(model, validation_clouds, training_clouds)   # at the end of training; store as_dict()
    warnings = ood_warnings(stats, refinement.chamfer_before, refinement.encoded)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor

from atlas_core.model import AtlasNet
from atlas_core.refine import encode, fit_chamfer

#: Warn when the input's Chamfer exceeds this multiple of the reference's 95th percentile.
#: Measured (benchmarks/refine.py): held-out shapes of the model's own kind reach ~30x (a model
#: trained on 27 shapes meets new variations; its 3 validation shapes set a low reference),
#: foreign shapes start at ~2,500x. 100 sits between them on a log scale.
CHAMFER_FACTOR = 100.0
#: Warn when the code's standardised distance exceeds this multiple of the reference's 95th
#: percentile. Measured: held-out shapes of the model's own kind reach ~1.2x, foreign shapes
#: start at ~5x.
LATENT_FACTOR = 3.0
#: Shapes encoded for the statistics at most (seeded choice): enough for a mean and a spread,
#: a bounded cost on large datasets.
MAX_SHAPES = 512
#: Floor on each code dimension's spread, as a share of the mean spread: a dimension that no
#: training shape moved (a ReLU that never fired) must not make any activity there infinitely
#: far.
SCALE_FLOOR = 0.1
FORMAT = 1


def _quantiles(values: np.ndarray) -> tuple[float, float, float]:
    """(median, 95th percentile, max) of a non-empty array."""
    return float(np.median(values)), float(np.quantile(values, 0.95)), float(values.max())


@dataclass
class OodStats:
    """What "in distribution" means for one model; JSON-ready with `as_dict` / `from_dict`.

    reference: "validation" or "training", the shapes the Chamfer figures come from.
    shapes: how many; chamfer_q50 / q95 / max over them (`atlas_core.refine.fit_chamfer`
        units: `chamfer_distance`, squared distances, sum of both directions, unit ball).
    latent_shapes: the training shapes whose codes give latent_mean and latent_scale (D,);
        latent_q50 / q95 / max: the standardised distance r of those and the validation codes.
    chamfer_factor, latent_factor: the thresholds the warnings use (stored with the figures so
        that a model keeps the judgement it was registered with).
    """

    reference: str
    shapes: int
    chamfer_q50: float
    chamfer_q95: float
    chamfer_max: float
    latent_shapes: int
    latent_mean: list[float]
    latent_scale: list[float]
    latent_q50: float
    latent_q95: float
    latent_max: float
    chamfer_factor: float = CHAMFER_FACTOR
    latent_factor: float = LATENT_FACTOR
    format: int = FORMAT

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OodStats:
        """The inverse of as_dict; unknown keys or another format are a ValueError."""
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown OOD statistics key(s) {', '.join(unknown)}: written by a newer rodin")
        if d.get("format", FORMAT) != FORMAT:
            raise ValueError(f"unsupported OOD statistics format {d.get('format')}")
        return cls(**d)

    def latent_distance(self, latent: Tensor | np.ndarray) -> float:
        """The standardised distance r of a code (D,) or (1, D) from the training codes."""
        z = latent.detach().cpu().double().numpy() if isinstance(latent, Tensor) else np.asarray(latent, np.float64)
        z = z.reshape(-1)
        mean, scale = np.asarray(self.latent_mean), np.asarray(self.latent_scale)
        if z.shape != mean.shape:
            raise ValueError(f"code of size {z.size} for statistics of size {mean.size}")
        return float(np.sqrt((((z - mean) / scale) ** 2).mean()))

    def ratios(self, chamfer_before: float, latent: Tensor | np.ndarray) -> dict[str, float]:
        """How far an input is from the reference, as multiples of its 95th percentiles:
        {"chamfer_ratio", "latent_ratio"} (a warning fires above the factors)."""
        return {"chamfer_ratio": chamfer_before / max(self.chamfer_q95, 1e-30),
                "latent_ratio": self.latent_distance(latent) / max(self.latent_q95, 1e-30)}


def ood_warnings(stats: OodStats, chamfer_before: float, latent: Tensor | np.ndarray) -> list[str]:
    """One-line warnings for an input unlike the model's training shapes; [] when it looks like them.

    chamfer_before: `Refinement.chamfer_before` (or `fit_chamfer` of the encoder's code);
    latent: the encoder's code, (D,) or (1, D) (`Refinement.encoded`).
    """
    ratios = stats.ratios(chamfer_before, latent)
    notes = []
    if ratios["chamfer_ratio"] > stats.chamfer_factor:
        notes.append(
            f"input looks unlike the model's training shapes: the model reconstructs it with Chamfer "
            f"{chamfer_before:.3g}, {ratios['chamfer_ratio']:.0f}x the 95th percentile of its "
            f"{stats.shapes} {stats.reference} shape{'s' if stats.shapes != 1 else ''} "
            f"(warns above {stats.chamfer_factor:g}x); refinement may fit it, but not from what "
            "the model learned")
    if ratios["latent_ratio"] > stats.latent_factor:
        notes.append(
            f"input looks unlike the model's training shapes: its code is {ratios['latent_ratio']:.1f}x "
            f"farther from the training shapes' codes than the 95th percentile of theirs "
            f"(warns above {stats.latent_factor:g}x)")
    return notes


# -----------------------------------------------------------------------------
# The statistics, at the end of training


def _signals(model: AtlasNet, clouds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Chamfer (S,) and codes (S, D) of clouds (S, P, 3), as `refine` measures one input."""
    device = next(model.parameters()).device
    chamfers, codes = [], []
    for cloud in clouds:
        x = torch.from_numpy(np.ascontiguousarray(cloud, dtype=np.float32)).unsqueeze(0).to(device)
        z = encode(model, x)
        chamfers.append(fit_chamfer(model, z, x))
        codes.append(z[0].double().cpu().numpy())
    return np.asarray(chamfers), np.stack(codes)


def _cap(clouds: np.ndarray, seed: int) -> np.ndarray:
    """At most MAX_SHAPES of the clouds (S, P, 3), a seeded choice."""
    if len(clouds) <= MAX_SHAPES:
        return clouds
    return clouds[np.sort(np.random.default_rng(seed).choice(len(clouds), MAX_SHAPES, replace=False))]


def collect(model: AtlasNet, reference: np.ndarray, training: np.ndarray,
            reference_name: str | None = None) -> OodStats:
    """The statistics of a trained model, at the end of its training.

    reference: (R, P, 3) clouds whose Chamfer is the yardstick: the validation shapes, or the
        training shapes when there are too few of those (the worker takes validation from 2).
    training: (T, P, 3) the training shapes, whose codes give the latent mean and spread.
    reference_name: "validation" or "training" for the warnings' text (default: "training"
        when `reference` is `training`, else "validation").
    All clouds in the unit ball; at most MAX_SHAPES of each are used (a seeded choice).
    """
    if len(reference) == 0 or len(training) == 0:
        raise ValueError(f"OOD statistics need reference and training shapes, got {len(reference)} "
                         f"and {len(training)}")
    same = reference is training or (reference.shape == training.shape and np.array_equal(reference, training))
    reference_name = reference_name or ("training" if same else "validation")
    train_chamfer, train_codes = _signals(model, _cap(training, 0))
    if same:
        ref_chamfer, ref_codes = train_chamfer, train_codes[:0]
    else:
        ref_chamfer, ref_codes = _signals(model, _cap(reference, 1))
    mean = train_codes.mean(0)
    spread = train_codes.std(0)
    scale = spread + SCALE_FLOOR * max(float(spread.mean()), 1e-12)
    distances = np.sqrt((((np.concatenate([train_codes, ref_codes]) - mean) / scale) ** 2).mean(1))
    c50, c95, cmax = _quantiles(ref_chamfer)
    l50, l95, lmax = _quantiles(distances)
    return OodStats(reference=reference_name, shapes=len(ref_chamfer),
                    chamfer_q50=c50, chamfer_q95=c95, chamfer_max=cmax, latent_shapes=len(train_codes),
                    latent_mean=mean.tolist(), latent_scale=scale.tolist(),
                    latent_q50=l50, latent_q95=l95, latent_max=lmax)
