"""
Test-time refinement: fit a trained AtlasNet's reconstruction to one input by optimisation.

An autoencoder's one forward pass gives the code its encoder predicts, not the code that fits
the input best, and a model trained on a few dozen shapes predicts codes for new shapes poorly.
As in 3D-CODED (Groueix et al. 2018: regression, then optimisation of the code) and deep
optimised priors (Yang et al. 2021: then the network's weights too), refinement starts from the
encoder's code and descends the same Chamfer distance the model was trained with:

    1. latent:   z <- argmin_z chamfer(decode(z, template samples), input)     Adam, the decoders fixed
    2. decoders: (z, decoders) <- a few small Adam steps on both, from a private copy

The registered model is never touched: everything runs on `copy.deepcopy(model)`, in eval mode,
so BatchNorm applies the running statistics of training (one shape is no batch) and the second
phase changes only Linear weights and BatchNorm's affine parameters. Both phases run the model's
own decoders (`atlas_core.model.PatchDecoders`: one batched product per layer for all K patches)
and torch.optim.Adam. Phase 2 is what moves a
patch outside the model's learned shape space; it is kept short and slow so that patches bend
towards the input without tearing into slivers that chase single points (see `refine`'s
defaults and benchmarks/refine.py for the measurements behind them).

Shapes:
    points (1, N, 3)   one input cloud in the model's normalised frame (the unit ball)
    latent (1, D)      D = config.bottleneck
    K patches, P template points per patch per step
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch._dynamo  # noqa: F401  (see below)
from torch import Tensor

from atlas_core.chamfer import chamfer_distance
from atlas_core.config import INFER
from atlas_core.meshing import PatchMesh
from atlas_core.model import AtlasNet

#: Points of the fixed evaluation sample, on both sides of the Chamfer before and after.
EVAL_POINTS = INFER.eval_points
#: The default refinement's phases (`InferConfig.refine_split`).
LATENT_STEPS, DECODER_STEPS = INFER.refine_split()
#: Seeds of the fixed evaluation sample and of the encoder's input subset: the same for every
#: call, so that `chamfer_before` of a shape does not depend on the refinement's generator and
#: matches the figures that `atlas_core.ood` collects at the end of training.
EVAL_SEED, ENCODE_SEED = 12345, 54321

# torch.optim's first optimiser imports torch._dynamo (about 1 s on the 2-core development
# machine). Imported with this module instead, that cost falls where the imports are paid: a
# worker imports its task bodies once, before it forks the job processes that refine.


# -----------------------------------------------------------------------------
# The fixed evaluation: encode, decode a fixed template sample, Chamfer to the input


def _subset(points: Tensor, n: int, seed: int) -> Tensor:
    """A seeded subset of n of the N points (all of them if N <= n): (1, N, 3) -> (1, n, 3)."""
    N = points.shape[1]
    if N <= n:
        return points
    pick = torch.randperm(N, generator=torch.Generator().manual_seed(seed))[:n]
    return points[:, pick.to(points.device)]


def _eval_template(model: AtlasNet, device: torch.device) -> Tensor:
    """Fixed template points (K, EVAL_POINTS // K, dim) for the before/after Chamfer."""
    K = model.config.n_patches
    generator = torch.Generator().manual_seed(EVAL_SEED)
    return model.template.sample(K, max(1, EVAL_POINTS // K), generator=generator).to(device)


@torch.no_grad()
def encode(model: AtlasNet, points: Tensor) -> Tensor:
    """The encoder's code for one shape, from a fixed subset of `config.n_points` of its points
    (what the encoder saw in training: a PointNet's max over more points gives other codes).

    points: (1, N, 3) -> latent (1, D)
    """
    was_training = model.training
    model.eval()
    latent = model.encode(_subset(points, model.config.n_points, ENCODE_SEED))
    model.train(was_training)
    return latent


@torch.no_grad()
def fit_chamfer(model: AtlasNet, latent: Tensor, points: Tensor) -> float:
    """Chamfer (`chamfer_distance` units) between the decoded fixed template sample and a fixed
    subset of EVAL_POINTS input points.

    latent: (1, D), points: (1, N, 3). The same sample for every call: comparable across shapes,
    before and after refinement, and with `atlas_core.ood`'s statistics.
    """
    was_training = model.training
    model.eval()
    template = _eval_template(model, latent.device).to(latent.dtype)
    generated = model.decode(latent, template).flatten(1, 2)  # (1, K*P, 3)
    model.train(was_training)
    return float(chamfer_distance(generated, _subset(points, EVAL_POINTS, EVAL_SEED)))


# -----------------------------------------------------------------------------
# Refinement


@dataclass
class Refinement:
    """The outcome of `refine` for one shape: what meshes it, and what it gained.

    model: a private copy of the input model (eval mode, no gradients) with the refined
        decoders: mesh with `refinement.mesh()`, or `mesh_latent(refinement.model, latent)`.
    latent: (1, D), the refined code; encoded: (1, D), the encoder's code before refinement
        (what `atlas_core.ood` compares with the training shapes' codes).
    chamfer_before / chamfer_after: `fit_chamfer` (`chamfer_distance` units) of the encoder's
        code with the original decoders, and of the result; after <= before always holds, as a
        phase whose result is worse on this fixed sample is undone.
    chamfer_latent: the same after the code phase alone (the best the model's learned shape
        space does for this input; what `atlas_core.ood` compares with its reference shapes).
    latent_steps, decoder_steps: the steps each phase took (an undone phase still counts);
        decoders_refined: whether the result uses refined decoders (phase 2 ran and was kept).
    seconds: wall time of the whole call.
    """

    model: AtlasNet
    latent: Tensor
    encoded: Tensor
    chamfer_before: float
    chamfer_latent: float
    chamfer_after: float
    latent_steps: int
    decoder_steps: int
    decoders_refined: bool
    seconds: float
    losses: list[float] = field(default_factory=list)  # the optimised Chamfer at every step

    def mesh(self, n_vertices: int = INFER.mesh_vertices) -> PatchMesh:
        """The refined reconstruction, meshed like `atlas_core.meshing.reconstruct`."""
        return mesh_latent(self.model, self.latent, n_vertices)[0]

    def as_dict(self) -> dict[str, float | int | bool]:
        """The figures worth storing with an output (JSON-ready)."""
        return {"chamfer_before": self.chamfer_before, "chamfer_latent": self.chamfer_latent,
                "chamfer_after": self.chamfer_after,
                "latent_steps": self.latent_steps, "decoder_steps": self.decoder_steps,
                "decoders_refined": self.decoders_refined, "seconds": round(self.seconds, 3)}


@torch.no_grad()
def mesh_latent(model: AtlasNet, latent: Tensor, n_vertices: int = INFER.mesh_vertices) -> list[PatchMesh]:
    """Mesh every patch of the given codes, as `atlas_core.meshing.reconstruct` does after
    encoding: latent (B, D) -> B meshes with the same patch layout, in the normalised frame."""
    model.eval()
    vertices, faces, patch_ids = model.mesh_vertices(latent, n_vertices)
    faces_np = np.asarray(faces, dtype=np.int64)
    ids = patch_ids.cpu().numpy().astype(np.int64)
    return [PatchMesh(v.cpu().numpy().astype(np.float32), faces_np, ids) for v in vertices]


class _Plateau:
    """Early stopping on a noisy loss: stop when its running mean has not improved by `rel`
    (relative) for `patience` steps (never, with patience 0)."""

    def __init__(self, patience: int, rel: float = 1e-3, smoothing: float = 0.9):
        self.patience, self.rel, self.smoothing = patience, rel, smoothing
        self.mean = math.inf
        self.best, self.best_step = math.inf, 0

    def __call__(self, step: int, loss: float) -> bool:
        self.mean = loss if math.isinf(self.mean) else self.smoothing * self.mean + (1 - self.smoothing) * loss
        if self.mean < self.best * (1 - self.rel):
            self.best, self.best_step = self.mean, step
        return self.patience > 0 and step - self.best_step >= self.patience


def _schedule(step: int, steps: int, warmup: float) -> float:
    """The learning-rate factor: a linear warm-up over the first `warmup` of the steps, then a
    cosine decay to zero (large steps while far off, small ones to settle).

    Adam's first steps move every parameter by about its learning rate in the direction of its
    gradient's sign; on a decoder's weight matrices that is a coherent kick that, at full rate,
    throws a well-fitted surface far off (measured: Chamfer x200 after the first step at lr
    3e-4), while Adam's second-moment estimates are still one gradient old.
    """
    ramp = round(warmup * steps)
    if step < ramp:
        return (step + 1) / ramp
    return 0.5 * (1 + math.cos(math.pi * (step - ramp) / max(1, steps - ramp)))


def _phase(model: AtlasNet, latent: Tensor, target: Tensor, groups: list[tuple[list[Tensor], float]],
           steps: int, points: tuple[int, int], warmup: float, patience: int, generator: torch.Generator,
           losses: list[float]) -> int:
    """Adam on the parameter groups [(tensors, lr)] against the Chamfer to the input, the rates
    scaled by `_schedule`; returns the steps taken.

    model: in eval mode, its decoders decode; latent: (1, D) (a leaf with gradients when it is
    optimised), target: (1, N, 3). points: (generated, input) points per step; the input points
    are a fresh random subset each step and the template points a fresh random sample, as in
    training.
    """
    if steps == 0:
        return 0
    K = model.config.n_patches
    # fused: one kernel per tensor; the loop of small ops per tensor otherwise costs more than
    # the decoders' forward and backward at refinement's sizes (measured: 8 -> 7.5 ms a step).
    optimizer = torch.optim.Adam([{"params": params, "lr": lr} for params, lr in groups],
                                 fused=latent.device.type in ("cpu", "cuda"))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _schedule(step, steps, warmup))
    stop = _Plateau(patience)
    for step in range(steps):
        template_points = model.template.sample(K, max(1, points[0] // K), generator=generator).to(latent)
        seed = int(torch.randint(2**31, (1,), generator=generator))
        generated = model.decoders(template_points, latent).flatten(1, 2)  # (1, K*P, 3)
        loss = chamfer_distance(generated, _subset(target, points[1], seed))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if stop(step, losses[-1]):
            return step + 1
    return steps


@contextmanager
def _threads(n: int | None, device: torch.device) -> Iterator[None]:
    """torch's intra-op threads set to n for the block (CPU only; None leaves them)."""
    if n is None or device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def refine(model: AtlasNet, points: Tensor, *, latent_steps: int = LATENT_STEPS,
           decoder_steps: int = DECODER_STEPS,
           latent_lr: float = 0.1, decoder_lr: float = 1e-4, decoder_latent_lr: float = 1e-3,
           latent_points: tuple[int, int] = (250, 500), decoder_points: tuple[int, int] = (1000, 2000),
           warmup: float = 0.2, patience: int = 20, threads: int | None = 1,
           generator: torch.Generator | None = None) -> Refinement:
    """Fit `model`'s reconstruction of one shape to its points; `model` itself never changes.

    model: a trained AtlasNet (its mode and weights are left as they are).
    points: (1, N, 3), the input in the model's normalised frame, on the model's device.
    latent_steps, latent_lr, latent_points: phase 1, Adam on the code alone, with
        (generated, input) points per step. It stops early once its smoothed loss has not
        improved by 0.1% for `patience` steps (0: never).
    decoder_steps, decoder_lr, decoder_latent_lr, decoder_points: phase 2, Adam on a private
        copy of the decoders (lr `decoder_lr`) and on the code (`decoder_latent_lr`), its rate
        warmed up over the first `warmup` of its steps; 0 steps: latent only. It always runs its
        steps: its loss first rises a little, which early stopping would take for the end.
    threads: torch's CPU threads while refining, restored afterwards (None: leave them). The
        operations are small: on a 2-core machine shared with other work, two threads refined
        no faster than one (3.4 s against 3.2 s a shape) at twice the CPU time.
    generator: the random stream of template samples and input subsets (default: seeded
        with 0); the same generator state gives the same result.

    The defaults were measured with benchmarks/refine.py (CPU-default model, 30 training
    swords, 20 held-out): F-score@1% 0.745 unrefined, 0.933 after the code alone (0.6 s a
    shape), 0.991 after both phases (3.3 s a shape, one core). Per step on one core: 8 ms for
    the code, 28 ms for the decoders (about 16x that for the reference-size model, K=25,
    bottleneck 1024, hidden 512).
    """
    started = time.perf_counter()
    if points.dim() != 3 or points.shape[0] != 1 or points.shape[2] != 3:
        raise ValueError(f"expected one shape's points (1, N, 3), got {tuple(points.shape)}")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    with _threads(threads, points.device):
        work = copy.deepcopy(model).eval()
        work.requires_grad_(False)
        encoded = encode(work, points)
        before = fit_chamfer(work, encoded, points)
        losses: list[float] = []

        latent = encoded.clone().requires_grad_(True)
        taken_latent = _phase(work, latent, points, [([latent], latent_lr)], latent_steps, latent_points, 0.0,
                              patience, generator, losses)
        best_latent, best = encoded, before
        if taken_latent:
            after_latent = fit_chamfer(work, latent.detach(), points)
            if after_latent <= best:
                best_latent, best = latent.detach().clone(), after_latent
        chamfer_latent = best

        refined = False
        if decoder_steps > 0:
            # A second private copy: kept only if it fits better than `work`'s decoders.
            candidate = copy.deepcopy(work)
            decoders: list[Tensor] = list(candidate.decoders.parameters())
            for p in decoders:
                p.requires_grad_(True)
            latent = best_latent.clone().requires_grad_(True)
            _phase(candidate, latent, points, [([latent], decoder_latent_lr), (decoders, decoder_lr)], decoder_steps,
                   decoder_points, warmup, 0, generator, losses)
            candidate.requires_grad_(False)
            after_decoders = fit_chamfer(candidate, latent.detach(), points)
            if after_decoders <= best:
                work, best_latent, best, refined = candidate, latent.detach(), after_decoders, True
    return Refinement(model=work, latent=best_latent, encoded=encoded, chamfer_before=before,
                      chamfer_latent=chamfer_latent, chamfer_after=best, latent_steps=taken_latent, decoder_steps=decoder_steps,
                      decoders_refined=refined, seconds=time.perf_counter() - started, losses=losses)
