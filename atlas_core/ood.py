"""
Is an input like the shapes a model was trained on? Statistics kept with a model, and warnings.

A model trained on a few dozen shapes of one kind reconstructs that kind; given something else
(a cube to a sword model) it still returns a surface, and test-time refinement
(`atlas_core.refine`) may even fit it, but not from what the model learned. Three signals, each
compared with the same figure on reference shapes of the model's own training data:

    fit       the Chamfer after refining the code alone (`Refinement.chamfer_latent`): how well
              the model's learned shape space can represent the input at all. Shapes of the
              model's kind fit about as well as its training and validation shapes (measured:
              held-out ones at most 1.1x (swords) and 1.9x (box chairs) the reference's 95th
              percentile), foreign ones do not (66x and more for the sword model, above 3x for
              most for the chair model). The reference: training and validation shapes pooled,
              as both fit alike once the code is optimised.
    before    the Chamfer of the encoder's own reconstruction (`Refinement.chamfer_before`),
              against the validation shapes (the training shapes when there are none). A
              weaker signal: held-out shapes of the model's kind vary a lot here (up to 32x
              the 95th percentile of 3 validation swords), so it only catches the extreme.
    code      the encoder's code z (D,), as a standardised distance from the training codes,
              r(z) = sqrt(mean_d ((z_d - mean_d) / scale_d)^2). For shapes like the training
              ones r is about 1 whatever the collection (an RMS of standardised coordinates);
              a PointNet meeting a foreign shape may produce features far outside its
              BatchNorm statistics (a cube to a sword model: 5x-17x the reference's 95th
              percentile), or not (box-like shapes to a box-chair model).

A warning fires when an input's ratio to the reference's 95th percentile exceeds FIT_FACTOR,
BEFORE_FACTOR or CODE_FACTOR, each chosen between the worst held-out shape of a model's own
kind and the foreign shapes, on two kinds of collection (benchmarks/refine.py prints the rates).

    stats = collect(model, validation_clouds, training_clouds)   # at the end of training; store as_dict()
    r = refine(model, points)
    warnings = ood_warnings(stats, r.chamfer_before, r.encoded, r.chamfer_latent)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor

from atlas_core.model import AtlasNet
from atlas_core.refine import encode, fit_chamfer, refine

#: Warn when the input's Chamfer after refining its code exceeds this multiple of the
#: reference's 95th percentile. Measured (benchmarks/refine.py, models trained on 30 shapes):
#: held-out shapes of the model's kind reach 1.1x (swords) and 1.9x (box chairs); foreign shapes
#: start at 66x for the sword model, and 22 of 28 are above 3x for the chair model (not: a cone,
#: a real chair, three box-like machined parts, a rabbit).
FIT_FACTOR = 3.0
#: The same for the encoder's own reconstruction: held-out swords reach 32x the 95th percentile
#: of their 3 validation swords (chairs 2.8x), foreign shapes start at 2,700x for the sword
#: model (5x for the chair model: 6 of 28 warn on this alone).
BEFORE_FACTOR = 100.0
#: The same for the code's standardised distance: held-out shapes reach 1.2x (swords) and
#: 1.4x (chairs); foreign shapes start at 5.7x for the sword model, 0.7x for the chair model.
CODE_FACTOR = 3.0
#: Shapes encoded for the statistics at most (a seeded choice): enough for a mean and a spread,
#: a bounded cost on large datasets.
MAX_SHAPES = 512
#: Shapes whose code is refined for the fit reference at most (each costs a refinement's code
#: phase: 0.6 s for the CPU-default model on one core).
MAX_FIT_SHAPES = 32
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

    All Chamfer figures in `atlas_core.refine.fit_chamfer` units (`chamfer_distance`: squared
    distances, sum of both directions, unit ball).

    reference, shapes: "validation" or "training", and how many: the shapes of chamfer_q50 /
        q95 / max, the encoder's reconstruction (`Refinement.chamfer_before`).
    fit_shapes: training and validation shapes (at most MAX_FIT_SHAPES) of fit_q50 / q95 /
        max, the Chamfer after refining the code alone (`Refinement.chamfer_latent`); None in
        statistics written before this signal existed.
    latent_shapes: the training shapes whose codes give latent_mean and latent_scale (D,);
        latent_q50 / q95 / max: the standardised distance r of those and the validation codes.
    chamfer_factor, latent_factor, fit_factor: the thresholds the warnings use, stored with the
        figures so that a model keeps the judgement it was registered with.
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
    chamfer_factor: float = BEFORE_FACTOR
    latent_factor: float = CODE_FACTOR
    fit_shapes: int = 0
    fit_q50: float | None = None
    fit_q95: float | None = None
    fit_max: float | None = None
    fit_factor: float = FIT_FACTOR
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

    def ratios(self, chamfer_before: float, latent: Tensor | np.ndarray,
               chamfer_latent: float | None = None) -> dict[str, float]:
        """How far an input is from the reference, as multiples of the 95th percentiles:
        "chamfer_ratio", "latent_ratio", and "fit_ratio" when chamfer_latent is given and the
        statistics have the fit reference. A warning fires above the factors."""
        ratios = {"chamfer_ratio": chamfer_before / max(self.chamfer_q95, 1e-30),
                  "latent_ratio": self.latent_distance(latent) / max(self.latent_q95, 1e-30)}
        if chamfer_latent is not None and self.fit_q95 is not None:
            ratios["fit_ratio"] = chamfer_latent / max(self.fit_q95, 1e-30)
        return ratios


def ood_warnings(stats: OodStats, chamfer_before: float, latent: Tensor | np.ndarray,
                 chamfer_latent: float | None = None) -> list[str]:
    """One-line warnings for an input unlike the model's training shapes; [] when it looks like them.

    chamfer_before: `Refinement.chamfer_before` (or `fit_chamfer` of the encoder's code);
    latent: the encoder's code, (D,) or (1, D) (`Refinement.encoded`);
    chamfer_latent: `Refinement.chamfer_latent` of a refinement with the default code phase
        (None when no refinement ran: the fit signal, the strongest, is then not used).
    """
    ratios = stats.ratios(chamfer_before, latent, chamfer_latent)
    unlike = "input looks unlike the model's training shapes:"
    notes = []
    fit = ratios.get("fit_ratio")
    if fit is not None and fit > stats.fit_factor:
        notes.append(
            f"{unlike} even with its code refined, the model's shape space fits it with Chamfer "
            f"{chamfer_latent:.3g}, {fit:.1f}x the 95th percentile of {stats.fit_shapes} of its own "
            f"shapes (warns above {stats.fit_factor:g}x)")
    if ratios["chamfer_ratio"] > stats.chamfer_factor:
        notes.append(
            f"{unlike} the model reconstructs it with Chamfer {chamfer_before:.3g}, "
            f"{ratios['chamfer_ratio']:.0f}x the 95th percentile of its {stats.shapes} {stats.reference} "
            f"shape{'s' if stats.shapes != 1 else ''} (warns above {stats.chamfer_factor:g}x)")
    if ratios["latent_ratio"] > stats.latent_factor:
        notes.append(
            f"{unlike} its code is {ratios['latent_ratio']:.1f}x farther from the training shapes' codes "
            f"than the 95th percentile of theirs (warns above {stats.latent_factor:g}x)")
    return notes


# -----------------------------------------------------------------------------
# The statistics, at the end of training


def _tensor(cloud: np.ndarray, device: torch.device) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(cloud, dtype=np.float32)).unsqueeze(0).to(device)


def _signals(model: AtlasNet, clouds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Chamfer (S,) and codes (S, D) of clouds (S, P, 3), as `refine` measures one input."""
    device = next(model.parameters()).device
    chamfers, codes = [], []
    for cloud in clouds:
        x = _tensor(cloud, device)
        z = encode(model, x)
        chamfers.append(fit_chamfer(model, z, x))
        codes.append(z[0].double().cpu().numpy())
    return np.asarray(chamfers), np.stack(codes)


def _fits(model: AtlasNet, clouds: np.ndarray) -> np.ndarray:
    """`Refinement.chamfer_latent` (S,) of clouds (S, P, 3), with refine's default code phase."""
    device = next(model.parameters()).device
    return np.asarray([refine(model, _tensor(cloud, device), decoder_steps=0,
                              generator=torch.Generator().manual_seed(i)).chamfer_latent
                       for i, cloud in enumerate(clouds)])


def _cap(clouds: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """At most `limit` of the clouds (S, P, 3), a seeded choice."""
    if len(clouds) <= limit:
        return clouds
    return clouds[np.sort(np.random.default_rng(seed).choice(len(clouds), limit, replace=False))]


def collect(model: AtlasNet, reference: np.ndarray, training: np.ndarray,
            reference_name: str | None = None) -> OodStats:
    """The statistics of a trained model, at the end of its training.

    reference: (R, P, 3) clouds whose encoder Chamfer is the yardstick of `chamfer_before`: the
        validation shapes, or the training shapes when there are too few of those (the worker
        takes validation from 2).
    training: (T, P, 3) the training shapes, whose codes give the latent mean and spread.
    reference_name: "validation" or "training" for the warnings' text (default: "training"
        when `reference` holds the same clouds as `training`, else "validation").
    All clouds in the unit ball. At most MAX_SHAPES of each are encoded and MAX_FIT_SHAPES of
    both together refined (seeded choices): about 20 s for the CPU-default model on one core.
    """
    if len(reference) == 0 or len(training) == 0:
        raise ValueError(f"OOD statistics need reference and training shapes, got {len(reference)} "
                         f"and {len(training)}")
    same = reference is training or (reference.shape == training.shape and np.array_equal(reference, training))
    reference_name = reference_name or ("training" if same else "validation")
    train_chamfer, train_codes = _signals(model, _cap(training, MAX_SHAPES, 0))
    if same:
        ref_chamfer, ref_codes = train_chamfer, train_codes[:0]
    else:
        ref_chamfer, ref_codes = _signals(model, _cap(reference, MAX_SHAPES, 1))
    mean = train_codes.mean(0)
    spread = train_codes.std(0)
    scale = spread + SCALE_FLOOR * max(float(spread.mean()), 1e-12)
    distances = np.sqrt((((np.concatenate([train_codes, ref_codes]) - mean) / scale) ** 2).mean(1))
    # Once the code is optimised, training and validation shapes fit alike (the decoders'
    # capacity, not the encoder's generalisation, is left): both make the fit reference, which
    # a handful of validation shapes alone would set poorly.
    pooled = training if same else np.concatenate([training, reference])
    fits = _fits(model, _cap(pooled, MAX_FIT_SHAPES, 2))
    c50, c95, cmax = _quantiles(ref_chamfer)
    l50, l95, lmax = _quantiles(distances)
    f50, f95, fmax = _quantiles(fits)
    return OodStats(reference=reference_name, shapes=len(ref_chamfer),
                    chamfer_q50=c50, chamfer_q95=c95, chamfer_max=cmax, latent_shapes=len(train_codes),
                    latent_mean=mean.tolist(), latent_scale=scale.tolist(),
                    latent_q50=l50, latent_q95=l95, latent_max=lmax,
                    fit_shapes=len(fits), fit_q50=f50, fit_q95=f95, fit_max=fmax)
