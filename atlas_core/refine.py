"""
Test-time refinement: fit a trained AtlasNet's reconstruction to its inputs by optimisation,
several inputs at once.

An autoencoder's one forward pass gives the code its encoder predicts, not the code that fits
the input best, and a model trained on a few dozen shapes predicts codes for new shapes poorly.
As in 3D-CODED (Groueix et al. 2018: regression, then optimisation of the code) and deep
optimised priors (Yang et al. 2021: then the network's weights too), refinement starts from the
encoder's code and descends the same Chamfer distance the model was trained with:

    1. latent:   z <- argmin_z chamfer(decode(z, template samples), input)     Adam, the decoders fixed
    2. decoders: (z, decoders) <- a few small Adam steps on both, from a private copy

The registered model is never touched: everything runs on `copy.deepcopy(model)`, in eval mode,
so BatchNorm applies the running statistics of training (one shape is no batch) and the second
phase changes only Linear weights and BatchNorm's affine parameters. Phase 2 is what moves a
patch outside the model's learned shape space; it is kept short and slow so that patches bend
towards the input without tearing into slivers that chase single points (see `refine_batch`'s
defaults and benchmarks/refine.py for the measurements behind them).

Batches. `refine_batch` refines B inputs together, each as `refine` would refine it alone:
- the decoders run as plain tensors with a leading copy axis G (`_Decoders`): the stacked
  (K, out, in) weights of `atlas_core.model.PatchDecoders`, (G, K, out, in), run as G*K
  patches by one batched product per layer. Phase 1 shares one frozen copy (G = 1: every
  input's template points through the same K patches); phase 2 gives each input its private
  copy (G = B: input b's points through its own K patches only). Eval-mode BatchNorm is an
  affine map, applied with the Linear's bias in one multiply-add;
- one torch.optim.Adam over the stacked tensors is B independent Adams: its state is
  elementwise, and the loss is the sum (not the mean) of the per-input Chamfers, so each
  input's slice gets exactly the gradient it would get alone;
- each input draws its template samples and input subsets from its own generator, and stops
  on its own plateau; an input that stops leaves the batch (its slices of the parameters and
  of Adam's moments are dropped), so it costs nothing more and its result is what it would be
  alone: `refine_batch(model, [a, b])[i]` is `refine(model, x_i)` with the same generator, up
  to float rounding.
Why stacking rather than torch.func.vmap over `functional_call`: vmap runs the same products
one level removed (it cannot run `atlas_core.fused`'s autograd Functions, so the plain layers)
and adds its own dispatch to each of a step's few dozen small operations; measured on the
2-core machine, phase 2 at (1000, 2000) points, one thread, best of 3 interleaved: 11.3 ms per
input and step stacked against 13.2 ms with vmap at B = 8 (10.7 against 12.7 ms at B = 1).
What batching saves is the per-step overhead (Python, autograd's and the optimiser's
bookkeeping, small kernels); the arithmetic and the nearest-neighbour searches grow with B,
and so do the private copies' weights, gradients and Adam moments that phase 2 streams through
every step: phase 1 gains most (one set of weights for the whole batch).

Threads. On a CPU, `refine_parallel` refines several batches side by side, one Python thread
and one torch thread each (torch and scipy release the GIL in their kernels); with fewer batches
than threads (a lone input), phase 2 splits each input's K patches into ranges instead, each
range's forward and backward on its own thread, the ranges joined in each step's Chamfer
(`refine_batch(split=...)`, `_split_step`). Either way every result is what it is alone.

Shapes:
    points (B, N, 3), or B clouds (N_b, 3)   inputs in the model's normalised frame (the unit ball)
    latent (B, D)      D = config.bottleneck
    template points (B, K, P, dim) per step  each input its own sample of P points per patch
    decoder tensors (G, K, ...)   G = 1 shared, G = B private copies
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
import torch._dynamo  # noqa: F401  (see below)
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from atlas_core.chamfer import chamfer_distance
from atlas_core.config import INFER
from atlas_core.meshing import PatchMesh
from atlas_core.model import AtlasNet, PatchDecoders, PatchLinear

#: Points of the fixed evaluation sample, on both sides of the Chamfer before and after.
EVAL_POINTS = INFER.eval_points
#: The default refinement's phases (`InferConfig.refine_split`).
LATENT_STEPS, DECODER_STEPS = INFER.refine_split()
#: Seeds of the fixed evaluation sample and of the encoder's input subset: the same for every
#: call, so that `chamfer_before` of a shape does not depend on the refinement's generator and
#: matches the figures that `atlas_core.ood` collects at the end of training.
EVAL_SEED, ENCODE_SEED = 12345, 54321
#: A patch range refined on a thread of its own (`refine_batch`'s split) holds at least this
#: many patches: measured only at K = 10 in two ranges on two cores (phase 2 of a lone input
#: 3.0 -> 2.55 s); smaller ranges would spend more on each step's joins than they save.
MIN_SPLIT_PATCHES = 5
#: Phase 2's two-sided patches start this far (unit-ball units) to either side of the patch: a
#: little apart, so that each side has points of its own to pull it (at 0 both sides coincide
#: and one of them takes every nearest neighbour).
HALF_THICKNESS_START = 0.005

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
def fit_chamfer(model: AtlasNet, latent: Tensor, points: Tensor, half: Tensor | None = None) -> float:
    """Chamfer (`chamfer_distance` units) between the decoded fixed template sample and a fixed
    subset of EVAL_POINTS input points.

    latent: (1, D), points: (1, N, 3). The same sample for every call: comparable across shapes,
    before and after refinement, and with `atlas_core.ood`'s statistics. half: (1, K), the
    patches' half-thickness of a two-sided result: then the sample is the regular grid of
    EVAL_POINTS / 2 points, each side (`_two_sided`), as many points as one side's sample.
    """
    was_training = model.training
    model.eval()
    if half is None:
        template = _eval_template(model, latent.device).to(latent.dtype)
        generated = model.decode(latent, template).flatten(1, 2)  # (1, K*P, 3)
    else:
        K = model.config.n_patches
        grid, _ = model.template.regular(max(4, EVAL_POINTS // (2 * K)))
        template = grid.to(device=latent.device, dtype=latent.dtype).expand(K, -1, -1)
        generated = _two_sided(model.decode(latent, template).flatten(1, 2), half)
    model.train(was_training)
    return float(chamfer_distance(generated, _subset(points, EVAL_POINTS, EVAL_SEED)))


# -----------------------------------------------------------------------------
# Two-sided patches
#
# A thin solid (a vessel's wall, a chair's leg or slat) has two surfaces a few hundredths of the
# unit ball apart. One patch in the middle of it is a local minimum of the Chamfer (the points of
# either surface pull it opposite ways), and it lies more than 1% from both when the part is
# thicker than 2% of the unit ball: refined vessels scored F 0.56 with every point "near" and
# almost none within 1%. So in phase 2 every patch carries a half-thickness h_k, learnt per input
# like the decoders: its points go to both sides, x +- |h_k| n(x), n the patch's unit normal. On
# a thin part the two sides spread to the two surfaces; on one side of a thick part h_k stays
# small (its inner side has nothing to reach). The normals come from finite differences on each
# patch's grid of template points (a jittered regular grid in phase 2, the regular one in
# meshing), so no second derivative of the decoders is needed.


def _jittered_grid(K: int, n: int, generator: torch.Generator) -> Tensor:
    """About n // K points per patch on a g x g grid over the unit square, shifted by a random
    fraction of a cell per patch: (K, g*g, 2), row i*g + j at ((i, j) + offset) / g. Over steps
    the points cover the square as uniform samples would, more evenly within a step."""
    g = max(2, round(math.sqrt(n / K)))
    ticks = torch.arange(g, dtype=torch.float32)
    u, v = torch.meshgrid(ticks, ticks, indexing="ij")
    offset = torch.rand(K, 1, 1, 2, generator=generator)
    return ((torch.stack([u, v], dim=-1)[None] + offset) / g).reshape(K, g * g, 2)


def _grid_normals(grid: Tensor) -> Tensor:
    """Unit normals of points on g x g grids by central differences: (..., g, g, 3) -> same."""
    du = torch.gradient(grid, dim=-3)[0]
    dv = torch.gradient(grid, dim=-2)[0]
    normal = torch.cross(du, dv, dim=-1)
    return normal / normal.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _two_sided(generated: Tensor, half: Tensor) -> Tensor:
    """Each patch's points moved |h_k| along and against its normal.

    generated: (B, K*g*g, 3), each patch's points in its g x g grid order; half: (B, K)
    returns (B, 2*K*g*g, 3): the outer sides of all patches, then the inner sides.
    """
    B, K = half.shape
    g = math.isqrt(generated.shape[1] // K)
    grid = generated.view(B, K, g, g, 3)
    offset = half.abs()[..., None, None, None] * _grid_normals(grid)
    return torch.cat([grid + offset, grid - offset], dim=1).reshape(B, -1, 3)


def two_sided_mesh(mesh: PatchMesh, half: np.ndarray) -> PatchMesh:
    """A mesh of `mesh_latent` (each patch a regular g x g grid) as two layers, each patch's
    vertices moved |half[k]| along and against its normal; the inner layer's faces reversed, so
    that both face outwards. half: (K,)."""
    K = len(half)
    V = len(mesh.vertices) // K
    g = math.isqrt(V)
    grid = torch.from_numpy(np.ascontiguousarray(mesh.vertices, dtype=np.float64)).view(K, g, g, 3)
    offset = (torch.from_numpy(np.abs(half).astype(np.float64))[:, None, None, None] * _grid_normals(grid))
    outer, inner = (grid + offset).reshape(-1, 3), (grid - offset).reshape(-1, 3)
    vertices = torch.cat([outer, inner]).numpy().astype(np.float32)
    faces = np.concatenate([mesh.faces, mesh.faces[:, ::-1] + len(mesh.vertices)])
    return PatchMesh(vertices, faces, np.concatenate([mesh.patch_ids, mesh.patch_ids]))


# -----------------------------------------------------------------------------
# The outcome


@dataclass
class Refinement:
    """The outcome of refinement for one shape: what meshes it, and what it gained.

    model: a private copy of the input model (eval mode, no gradients) with the refined
        decoders: mesh with `refinement.mesh()`, or `mesh_latent(refinement.model, latent)`.
        Inputs of one batch whose decoders were not refined share one such copy.
    latent: (1, D), the refined code; encoded: (1, D), the encoder's code before refinement
        (what `atlas_core.ood` compares with the training shapes' codes).
    chamfer_before / chamfer_after: `fit_chamfer` (`chamfer_distance` units) of the encoder's
        code with the original decoders, and of the result; after <= before always holds, as a
        phase whose result is worse on this fixed sample is undone.
    chamfer_latent: the same after the code phase alone (the best the model's learned shape
        space does for this input; what `atlas_core.ood` compares with its reference shapes).
    latent_steps, decoder_steps: the steps each phase took before this input stopped (an
        undone phase still counts); decoders_refined: whether the result uses refined decoders
        (phase 2 ran and was kept).
    seconds: wall time of the call that refined it, divided among the `batch` inputs it refined
        together (1: the call's own time).
    patch_ranges: phase 2's patches in this many ranges on as many threads (`refine_batch`'s
        split; 1: one thread), what a lone input's seconds were bought with.
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
    batch: int = 1
    patch_ranges: int = 1
    losses: list[float] = field(default_factory=list)  # the optimised Chamfer at every step
    #: (K,) each patch's half-thickness when the result is two-sided (phase 2 ran two-sided and
    #: was kept), else None.
    half_thickness: np.ndarray | None = None

    def mesh(self, n_vertices: int = INFER.mesh_vertices) -> PatchMesh:
        """The refined reconstruction, meshed like `atlas_core.meshing.reconstruct`; a two-sided
        one as two layers (`two_sided_mesh`: twice the vertices)."""
        mesh = mesh_latent(self.model, self.latent, n_vertices)[0]
        return mesh if self.half_thickness is None else two_sided_mesh(mesh, self.half_thickness)

    def as_dict(self) -> dict[str, float | int | bool]:
        """The figures worth storing with an output (JSON-ready); `seconds` is this input's
        share of its batch's time (`batch` inputs refined together)."""
        return {"chamfer_before": self.chamfer_before, "chamfer_latent": self.chamfer_latent,
                "chamfer_after": self.chamfer_after,
                "latent_steps": self.latent_steps, "decoder_steps": self.decoder_steps,
                "decoders_refined": self.decoders_refined, "seconds": round(self.seconds, 3),
                "batch": self.batch, "patch_ranges": self.patch_ranges,
                "two_sided": self.half_thickness is not None,
                **({} if self.half_thickness is None else
                   {"thickness_max": round(2 * float(np.abs(self.half_thickness).max()), 5),
                    "thickness_median": round(2 * float(np.median(np.abs(self.half_thickness))), 5)})}


@torch.no_grad()
def mesh_latent(model: AtlasNet, latent: Tensor, n_vertices: int = INFER.mesh_vertices) -> list[PatchMesh]:
    """Mesh every patch of the given codes, as `atlas_core.meshing.reconstruct` does after
    encoding: latent (B, D) -> B meshes with the same patch layout, in the normalised frame."""
    model.eval()
    vertices, faces, patch_ids = model.mesh_vertices(latent, n_vertices)
    faces_np = np.asarray(faces, dtype=np.int64)
    ids = patch_ids.cpu().numpy().astype(np.int64)
    return [PatchMesh(v.cpu().numpy().astype(np.float32), faces_np, ids) for v in vertices]


# -----------------------------------------------------------------------------
# The decoders as stacked tensors: one shared copy, or one private copy per input


class _Decoders:
    """`PatchDecoders` in eval mode as plain tensors with a leading copy axis G.

    Per Linear layer (fc_in, fc1, the hidden ones, fc_out): weight (G, K, out, in), bias
    (G, K, out). Per BatchNorm (after every Linear but the last): gamma, beta (G, K, C), the
    optimised affine parameters, and the running statistics (K, C), shared and fixed.
    Eval-mode BatchNorm is the affine map s (z - mean) + beta, s = gamma / sqrt(var + eps), and
    takes the Linear's bias with it: bn(W x + b) = s (W x) + (s (b - mean) + beta), so a layer is
    one batched product (`torch.bmm`), one multiply-add and the activation. (Folding s into W
    instead costs passes over the weights, which at refinement's few points per patch are
    larger than the activations: measured 5.9 against 4.1 ms a step at 250 points.)
    """

    def __init__(self, weights: list[Tensor], biases: list[Tensor], gammas: list[Tensor], betas: list[Tensor],
                 means: list[Tensor], invstds: list[Tensor], act: Callable[[Tensor], Tensor]):
        self.weights, self.biases, self.gammas, self.betas = weights, biases, gammas, betas
        self.means, self.invstds, self.act = means, invstds, act

    @staticmethod
    def _layers(decoders: PatchDecoders) -> tuple[list[PatchLinear], list[nn.BatchNorm1d]]:
        linears = [decoders.fc_in, decoders.fc1, *decoders.fc_hidden, decoders.fc_out]
        norms = [decoders.bn_in, decoders.bn1, *decoders.bn_hidden]
        return [cast(PatchLinear, m) for m in linears], [cast(nn.BatchNorm1d, m) for m in norms]

    @classmethod
    def of(cls, decoders: PatchDecoders) -> _Decoders:
        """The module's own tensors as one copy (G = 1), detached views: read, never written."""
        linears, norms = cls._layers(decoders)
        K = decoders.patches
        stats = [(cast(Tensor, bn.running_mean), cast(Tensor, bn.running_var), bn.eps) for bn in norms]
        return cls([m.weight.detach()[None] for m in linears], [m.bias.detach()[None, ..., 0] for m in linears],
                   [cast(Tensor, bn.weight).detach().view(1, K, -1) for bn in norms],
                   [cast(Tensor, bn.bias).detach().view(1, K, -1) for bn in norms],
                   [mean.view(K, -1) for mean, _, _ in stats],
                   [torch.rsqrt(var + eps).view(K, -1) for _, var, eps in stats], decoders.act)

    def parameters(self) -> list[Tensor]:
        """The optimised tensors, in a fixed order (`with_parameters` reads them back)."""
        return [*self.weights, *self.biases, *self.gammas, *self.betas]

    def with_parameters(self, tensors: Sequence[Tensor]) -> _Decoders:
        """The same decoders with `tensors` (in `parameters()` order) as their parameters."""
        L, N = len(self.weights), len(self.gammas)
        t = list(tensors)
        return _Decoders(t[:L], t[L:2 * L], t[2 * L:2 * L + N], t[2 * L + N:], self.means, self.invstds, self.act)

    def patches(self, start: int, stop: int) -> _Decoders:
        """The decoders of patches start..stop-1 alone (views: the K axis sliced)."""
        k = slice(start, stop)
        return _Decoders([w[:, k] for w in self.weights], [b[:, k] for b in self.biases],
                         [g[:, k] for g in self.gammas], [b[:, k] for b in self.betas],
                         [m[k] for m in self.means], [s[k] for s in self.invstds], self.act)

    @staticmethod
    def cat(parts: Sequence[_Decoders]) -> _Decoders:
        """The decoders of consecutive patch ranges (`patches`) joined back into one."""
        def joined(tensors: Sequence[Sequence[Tensor]], dim: int) -> list[Tensor]:
            return [torch.cat(same, dim) for same in zip(*tensors)]

        return _Decoders(joined([p.weights for p in parts], 1), joined([p.biases for p in parts], 1),
                         joined([p.gammas for p in parts], 1), joined([p.betas for p in parts], 1),
                         joined([p.means for p in parts], 0), joined([p.invstds for p in parts], 0), parts[0].act)

    def copies(self, n: int) -> _Decoders:
        """n private copies (G = n) of a single one: new leaf tensors that require gradients."""
        return self.with_parameters([p.repeat(n, *[1] * (p.dim() - 1)).requires_grad_(True)
                                     for p in self.parameters()])

    @torch.no_grad()
    def write_to(self, decoders: PatchDecoders, g: int) -> None:
        """Copy g's parameters into a `PatchDecoders` module (its running statistics stay)."""
        linears, norms = self._layers(decoders)
        for linear, weight, bias in zip(linears, self.weights, self.biases):
            linear.weight.copy_(weight[g])
            linear.bias.copy_(bias[g, ..., None])
        for bn, gamma, beta in zip(norms, self.gammas, self.betas):
            cast(Tensor, bn.weight).copy_(gamma[g].reshape(-1))
            cast(Tensor, bn.bias).copy_(beta[g].reshape(-1))

    def __call__(self, template: Tensor, latent: Tensor) -> Tensor:
        """template: (B, K, P, dim), latent: (B, D) -> generated points (B, K*P, 3).

        With G copies, the B = G*n inputs go n to a copy: rows (G*K, C, n*P), copy g's patch k
        holding its n inputs' points in (input, point) order. G = 1: one shared copy,
        (K, C, B*P) rows as in `PatchDecoders`; G = B: (B*K, C, P), each input its own K patches.
        """
        G = self.weights[0].shape[0]
        B, K, P, dim = template.shape
        n = B // G
        x = template.reshape(G, n, K, P, dim).permute(0, 2, 4, 1, 3).reshape(G * K, dim, n * P)
        last = len(self.weights) - 1
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            if i == last:
                x = torch.baddbmm(bias.flatten(0, 1)[..., None], weight.flatten(0, 1), x)  # (G*K, 3, n*P)
                break
            z = torch.bmm(weight.flatten(0, 1), x)                                   # (G*K, C, n*P)
            scale = self.gammas[i] * self.invstds[i]                                 # (G, K, C)
            shift = torch.addcmul(self.betas[i], bias - self.means[i], scale)        # (G, K, C)
            if i == 0:  # each input's code is added to its points' embedding, before BatchNorm
                code = latent.reshape(G, n, -1).transpose(1, 2)[:, None]             # (G, 1, D, n)
                shift = torch.addcmul(shift[..., None], code, scale[..., None]).contiguous()  # (G, K, D, n)
                x = torch.addcmul(shift[..., None], z.view(G, K, -1, n, P), scale[..., None, None])
                x = x.view(G * K, -1, n * P)
            else:
                x = torch.addcmul(shift.flatten(0, 1)[..., None], z, scale.flatten(0, 1)[..., None])
            x = x.relu_() if self.act is F.relu else self.act(x)
        return x.view(G, K, 3, n, P).permute(0, 3, 1, 4, 2).reshape(B, K * P, 3)


# -----------------------------------------------------------------------------
# One phase: Adam on per-input tensors, each input stopping on its own


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


Points = tuple[int, int]  # (generated, input) points per step


def _points_at(step: int, steps: int, start: Points, end: Points) -> Points:
    """The points of one step: from `start` at the first step to `end` at the last, linearly."""
    f = step / max(1, steps - 1)
    return round(start[0] + f * (end[0] - start[0])), round(start[1] + f * (end[1] - start[1]))


def _chamfers(generated: Tensor, targets: list[Tensor], pool: ThreadPoolExecutor | None = None) -> Tensor:
    """Each input's Chamfer: generated (B, M, 3), targets B clouds (1, n_b, 3) -> (B,).
    pool: the two directions' searches at once (`chamfer_terms`)."""
    if len({t.shape[1] for t in targets}) == 1:
        return chamfer_distance(generated, torch.cat(targets), reduction="none", pool=pool)
    return torch.cat([chamfer_distance(generated[b:b + 1], t, reduction="none", pool=pool)
                      for b, t in enumerate(targets)])


def _keep_rows(optimizer: torch.optim.Optimizer, rows: Tensor) -> list[Tensor]:
    """Replace every parameter (input axis first) by new leaves holding only `rows`, with Adam's
    moments sliced alike (its step count is the same for all); returns them in group order."""
    kept = []
    for group in optimizer.param_groups:
        new = []
        for p in group["params"]:
            q = p.detach()[rows].requires_grad_(True)
            state = optimizer.state.pop(p, {})
            optimizer.state[q] = {key: value[rows] if isinstance(value, Tensor) and value.dim() > 0 else value
                                  for key, value in state.items()}
            new.append(q)
        group["params"] = new
        kept.extend(new)
    return kept


Decode = Callable[[list[Tensor], Tensor], Tensor]


def _split_step(parts: Sequence[Decode], tensors: list[Tensor], template: Tensor, subsets: list[Tensor],
                pool: ThreadPoolExecutor) -> Tensor:
    """One step's Chamfers and gradients with the patches in parts, one thread each: returns
    the (B',) Chamfers, the gradients left in every tensor's `.grad`.

    Each part decodes its own patches (its own leaves) from a private leaf copy of the codes,
    tensors[0], forward and backward on its thread (torch runs a backward on the thread that
    calls it, without the GIL); the parts' points meet only in the Chamfer, which runs once on
    a detached copy of them all and hands each part the gradient of its points. The codes'
    gradient is the parts' sum. The same gradients as one graph, up to float rounding.
    """
    def forward(decode: Decode) -> tuple[Tensor, Tensor]:
        code = tensors[0].detach().requires_grad_(True)
        return code, decode([code, *tensors[1:]], template)

    decoded = list(pool.map(forward, parts))
    joined = torch.cat([points.detach() for _, points in decoded], dim=1).requires_grad_(True)
    chamfers = _chamfers(joined, subsets, pool)
    chamfers.sum().backward()
    grads = cast(Tensor, joined.grad).split([points.shape[1] for _, points in decoded], dim=1)
    list(pool.map(lambda part, grad: part[1].backward(grad), decoded, grads))
    tensors[0].grad = torch.stack([cast(Tensor, code.grad) for code, _ in decoded]).sum(0)
    return chamfers.detach()


def _phase(groups: list[tuple[list[Tensor], float]], parts: Sequence[Decode],
           targets: list[Tensor], template: Callable[[int, torch.Generator], Tensor],
           generators: list[torch.Generator], *, steps: int, points: tuple[Points, Points], warmup: float,
           patience: int, losses: list[list[float]], pool: ThreadPoolExecutor | None = None,
           on_step: Callable[[], None] | None = None) -> tuple[list[Tensor], list[int]]:
    """Adam on the parameter groups [(tensors, lr)] against each input's Chamfer, the rates
    scaled by `_schedule`; every tensor has the input axis first (B rows), the first group's
    one tensor the codes.

    parts: one decode(tensors, template points (B', K, P, dim)) -> (B', M, 3) per range of
    patches, each the active inputs' points of its patches from the active rows of the tensors
    (in group order); one part: all K patches, (B', K*P, 3). Several parts run side by side,
    one thread each of `pool` (`_split_step`; at least as many threads as parts).
    targets: B clouds (1, N_b, 3).
    template(n, generator) -> (K, P, dim), P = n // K (at least 1). Each step, each active input draws from its own
    generator a template sample and a fresh subset of its points, as in training; points:
    (generated, input) points per step at the first and at the last step. Each input stops
    when its smoothed loss has not improved for `patience` steps after the warm-up (0: never)
    and leaves the batch. on_step() is called after every step. Returns the final tensors
    (B rows, detached) and each input's steps.
    """
    B = len(targets)
    tensors = [t for ts, _ in groups for t in ts]
    final = [t.detach().clone() for t in tensors]
    taken = [0] * B
    if steps == 0:
        return final, taken
    # fused: one kernel per tensor; the loop of small ops per tensor otherwise costs more than
    # the decoders' forward and backward at refinement's sizes (measured: 8 -> 7.5 ms a step).
    optimizer = torch.optim.Adam([{"params": ts, "lr": lr} for ts, lr in groups],
                                 fused=tensors[0].device.type in ("cpu", "cuda"))
    rates = [lr for _, lr in groups]
    ramp = round(warmup * steps)
    stops = [_Plateau(patience) for _ in range(B)]
    active = list(range(B))  # the inputs still in the batch, in row order
    for step in range(steps):
        for group, lr in zip(optimizer.param_groups, rates):
            group["lr"] = lr * _schedule(step, steps, warmup)
        n_generated, n_input = _points_at(step, steps, *points)
        samples, subsets = [], []
        for i in active:
            samples.append(template(n_generated, generators[i]))
            seed = int(torch.randint(2**31, (1,), generator=generators[i]))
            subsets.append(_subset(targets[i], n_input, seed))
        drawn = torch.stack(samples).to(tensors[0])
        optimizer.zero_grad(set_to_none=True)
        if len(parts) == 1:
            chamfers = _chamfers(parts[0](tensors, drawn), subsets)  # (B',)
            chamfers.sum().backward()  # the sum: each input's rows get its own Chamfer's gradient
        else:
            chamfers = _split_step(parts, tensors, drawn, subsets, cast(ThreadPoolExecutor, pool))
        optimizer.step()
        if on_step is not None:
            on_step()
        done = []
        for row, (i, loss) in enumerate(zip(active, chamfers.tolist())):
            losses[i].append(loss)
            taken[i] = step + 1
            if step >= ramp and stops[i](step, loss):
                done.append(row)
        if done or step == steps - 1:
            rows = torch.tensor(active)
            for f, t in zip(final, tensors):
                f[rows] = t.detach()
        if done and step < steps - 1:
            keep = [row for row in range(len(active)) if row not in done]
            active = [active[row] for row in keep]
            if not active:
                break
            tensors = _keep_rows(optimizer, torch.tensor(keep, device=tensors[0].device))
    return final, taken


# -----------------------------------------------------------------------------
# Refinement


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


def _clouds(points: Tensor | Sequence[Tensor]) -> list[Tensor]:
    """The inputs as B clouds (1, N_b, 3), from (B, N, 3) or a sequence of (N_b, 3) / (1, N_b, 3)."""
    clouds = list(points.unbind(0)) if isinstance(points, Tensor) and points.dim() == 3 else list(points)
    out = []
    for cloud in clouds:
        if cloud.dim() == 3 and cloud.shape[0] == 1:
            cloud = cloud[0]
        if cloud.dim() != 2 or cloud.shape[1] != 3 or cloud.shape[0] == 0:
            raise ValueError(f"expected point clouds (N, 3), got {tuple(cloud.shape)}")
        out.append(cloud[None])
    if not out:
        raise ValueError("no inputs to refine")
    if len({c.device for c in out}) > 1:
        raise ValueError("the inputs are on different devices")
    return out


def _spans(K: int, split: int) -> list[tuple[int, int]]:
    """The K patches as `split` consecutive ranges (start, stop), as even as they can be."""
    n = max(1, min(K, split))
    bounds = [round(i * K / n) for i in range(n + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(n)]


def _generators(generators: Sequence[torch.Generator] | None, B: int) -> list[torch.Generator]:
    """One random stream per input: the ones given (exactly B), or input i's seeded with i."""
    if generators is None:
        return [torch.Generator().manual_seed(i) for i in range(B)]
    if len(generators) != B:
        raise ValueError(f"{len(generators)} generators for {B} inputs")
    return list(generators)


def refine_batch(model: AtlasNet, points: Tensor | Sequence[Tensor], *, latent_steps: int = LATENT_STEPS,
                 decoder_steps: int = DECODER_STEPS,
                 latent_lr: float = 0.1, decoder_lr: float = 2e-4, decoder_latent_lr: float = 1e-3,
                 latent_points: Points = (250, 500), decoder_points: Points = (1000, 4000),
                 decoder_points_start: Points | None = None,
                 warmup: float = 0.2, patience: int = 20, decoder_patience: int = 0,
                 two_sided: bool = True, thickness_lr: float = 3e-3, threads: int | None = 1, split: int = 1,
                 generators: Sequence[torch.Generator] | None = None,
                 on_step: Callable[[], None] | None = None) -> list[Refinement]:
    """Fit `model`'s reconstruction of each input to its points, the inputs refined together;
    `model` itself never changes. Returns one `Refinement` per input, in order.

    model: a trained AtlasNet (its mode and weights are left as they are).
    points: the B inputs in the model's normalised frame, on the model's device: (B, N, 3), or
        a sequence of clouds (N_b, 3) or (1, N_b, 3) (their sizes may differ).
    latent_steps, latent_lr, latent_points: phase 1, Adam on the codes alone, with
        (generated, input) points per step. Each input stops early once its smoothed loss has
        not improved by 0.1% for `patience` steps (0: never).
    decoder_steps, decoder_lr, decoder_latent_lr, decoder_points: phase 2, Adam on a private
        copy of the decoders per input (lr `decoder_lr`) and on its code (`decoder_latent_lr`),
        the rates warmed up over the first `warmup` of its steps; 0 steps: latent only.
        decoder_points_start: the points of its first step, growing linearly to
        `decoder_points` at the last (None, the default: `decoder_points` throughout; see
        below for why). decoder_patience: as `patience`, counted from the end of the warm-up
        (its loss first rises a little, which early stopping would take for the end); 0, the
        default: every input runs all its steps.
    two_sided, thickness_lr: phase 2 gives every patch a half-thickness (Adam, `thickness_lr`),
        its points on both sides of it, so that one patch covers both surfaces of a thin part
        (see "Two-sided patches" above; the square template only: a sphere template's patch is
        closed already). Phase 2 then draws its template points as a jittered regular grid per
        patch, whose finite differences give the normals. False: one-sided, random samples.
        thickness_lr 3e-3 (was 1e-3): the walls of large jars and pots are 0.05 to 0.10 thick,
        and at 1e-3 h (starting at 0.005) could not reach half of that within phase 2's
        warm-up and cosine decay, leaving both sides inside the wall, more than 1% from
        either surface (docs/notes/refine_study.md section 9: the 8 worst of 100 held-out
        vessels F 0.797 -> 0.850; the 16 of every family unchanged within 0.002).
    threads: torch's CPU threads while refining, restored afterwards (None: leave them). The
        operations are small: on a 2-core machine shared with other work, two threads refined
        no faster than one (3.4 s against 3.2 s a shape) at twice the CPU time, and a batch of
        8 on two threads took 7x the CPU time of one thread at a load of 4.
    split: phase 2 with the K patches in this many ranges, side by side on as many Python
        threads (at most K; 1: none), so that a lone input uses more than one core
        (`refine_parallel` does this where it has fewer batches than threads). The same results
        up to float rounding. Measured on the 2-core machine, one held-out vessel, CPU-default
        model, quiet: phase 2 3.0 -> 2.55 s in two ranges (4.0 s of CPU). Phase 1 is not split:
        its steps, 250 points through shared decoders, are too small to gain (0.26 -> 0.38 s).
    generators: one per input, the random stream of its template samples and input subsets
        (default: input i's seeded with i); the same generator state gives the same result,
        alone or in any batch.
    on_step: called after every optimisation step (a job's proof of progress).

    The defaults were measured with benchmarks/refine.py (CPU-default model, 30 training
    swords, 20 held-out, one thread; CPU seconds per mesh, refinement and meshing, as the
    2-core machine was shared with other work at a load of 2 to 4.6 and wall times followed
    the load): F-score@1% 0.751 unrefined, 0.938 after the code alone (0.22 s), 0.990 (the
    worst input 0.943) after both phases at the defaults, 0.74 s in batches of 8 and 0.84 s
    one at a time, against 0.994 (0.957) and 1.41 s with the decoder phase's (1000, 2000)
    points of before. Phase 2's cost per step follows its points (5.5 ms at (400, 800), 10.7
    ms at (1000, 2000), per input): (250, 500) gave 0.986 at 0.60 s, (500, 1000) 0.991 at
    0.82 s; growing the points from few to many over the phase did no better than as many
    points throughout at the same cost ((250, 500) to (500, 1000): 0.987 at 0.68 s), and
    stopping phase 2 on a plateau (decoder_patience 10) cut a third of its steps for 0.974,
    as it stops before the cosine decay settles it. The code phase gains most from batches
    (one set of weights for all inputs: 0.25 -> 0.16 s a mesh). The normal consistency is
    what fewer points cost most: 0.763 against 0.801. The default stayed (1000, 2000): on
    generated furniture (benchmarks.small_data --family furniture, 100 held out) (400, 800)
    took the F-score from 0.470 to 0.397 and the Chamfer from 0.753 to 0.903, a loss that
    swords, whose blades are large smooth patches, do not show.

    Phase 2's rate 2e-4 (was 1e-4) and its 4,000 input points a step (was 2,000), measured on
    furniture, vessels and swords (docs/notes/refine_study.md: 30 training shapes, 16 held
    out, batches of 8, one run per family with both settings interleaved at a load of about 1;
    scored at 40,000 points a side, since at 2,500 even the true surface resampled scores only
    F 0.56 on furniture and 0.51 on vessels). Refined furniture lacked coverage more than
    precision (0.788 against 0.883): thin legs, slats and stretchers that a subset of 2,000 of
    the input's points hits only now and then, so the input-to-patch half of the Chamfer rarely
    pulls a patch onto them. More input points a step are cheap: the decoders' forward and
    backward follow the generated points, (B, K*P, 3), and the input side only adds to the
    nearest-neighbour searches (about +0.1 CPU s a mesh). And at 100 steps the decoders move
    too little at 1e-4 (300 steps at 1e-4 gave furniture 0.888, at 3.6 s). Dense F-score
    (worst input), CPU s a mesh: furniture 0.831 (0.676) -> 0.876 (0.793), 1.37 -> 1.47;
    vessels 0.797 (0.358) -> 0.848 (0.555), 1.31 -> 1.40; swords 0.995 (0.968) -> 0.996
    (0.973), 1.31 -> 1.45. At 3e-4 furniture gained a little more (0.885) but vessels less
    (0.843) and swords' worst input a little (0.960): 2e-4 is the rate that helps all three.
    """
    started = time.perf_counter()
    clouds = _clouds(points)
    B = len(clouds)
    device = clouds[0].device
    gens = _generators(generators, B)
    K = model.config.n_patches
    spans = _spans(K, split)
    with _threads(threads, device), (ThreadPoolExecutor(len(spans)) if len(spans) > 1 else nullcontext()) as pool:
        work = copy.deepcopy(model).eval()
        work.requires_grad_(False)
        encoded = [encode(work, cloud) for cloud in clouds]  # (1, D) each
        before = [fit_chamfer(work, z, cloud) for z, cloud in zip(encoded, clouds)]
        losses: list[list[float]] = [[] for _ in range(B)]

        def sample(n: int, generator: torch.Generator) -> Tensor:  # n points over the K patches
            return work.template.sample(K, max(1, n // K), generator=generator)

        # Phase 1: the B codes, through one shared frozen copy of the decoders.
        shared = _Decoders.of(work.decoders)
        start = torch.cat(encoded)  # (B, D)

        [latents], taken_latent = _phase(
            [([start.clone().requires_grad_(True)], latent_lr)], [lambda ts, t: shared(t, ts[0])], clouds, sample,
            gens, steps=latent_steps, points=(latent_points, latent_points), warmup=0.0, patience=patience,
            losses=losses, pool=pool, on_step=on_step)
        best_latent, best = list(encoded), list(before)
        for b in range(B):
            if taken_latent[b]:
                after = fit_chamfer(work, latents[b:b + 1], clouds[b])
                if after <= best[b]:
                    best_latent[b], best[b] = latents[b:b + 1], after
        chamfer_latent = list(best)

        # Phase 2: each input's code and its private copy of the decoders, as B*K patches, and
        # (two-sided, on the square template) each patch's half-thickness.
        models: list[AtlasNet] = [work] * B
        refined = [False] * B
        taken_decoders = [0] * B
        halves: list[np.ndarray | None] = [None] * B
        if decoder_steps > 0:
            # Each patch range its own leaves (a part's backward writes only its own gradients).
            privates = [shared.patches(a, b).copies(B) for a, b in spans]
            counts = [len(private.parameters()) for private in privates]
            offsets = [1 + sum(counts[:c]) for c in range(len(spans))]  # after the codes, tensors[0]
            codes = torch.cat(best_latent).clone().requires_grad_(True)
            groups = [([codes], decoder_latent_lr), ([p for private in privates for p in private.parameters()],
                                                     decoder_lr)]
            sided = two_sided and work.template.name == "square"
            if sided:
                groups.append(([torch.full((B, b - a), HALF_THICKNESS_START, device=device,
                                           dtype=codes.dtype).requires_grad_(True) for a, b in spans],
                               thickness_lr))
            first_half = 1 + sum(counts)

            def refined_part(c: int) -> Decode:  # patch range c, its private copies (and thicknesses)
                a, b = spans[c]

                def decode(ts: list[Tensor], t: Tensor) -> Tensor:
                    generated = privates[c].with_parameters(ts[offsets[c]:offsets[c] + counts[c]])(t[:, a:b], ts[0])
                    return _two_sided(generated, ts[first_half + c]) if sided else generated
                return decode

            def draw(n: int, generator: torch.Generator) -> Tensor:
                return _jittered_grid(K, n, generator) if sided else sample(n, generator)

            final, taken_decoders = _phase(
                groups, [refined_part(c) for c in range(len(spans))], clouds, draw, gens,
                steps=decoder_steps, points=(decoder_points_start or decoder_points, decoder_points),
                warmup=warmup, patience=decoder_patience, losses=losses, pool=pool, on_step=on_step)
            result = _Decoders.cat([private.with_parameters(final[offsets[c]:offsets[c] + counts[c]])
                                    for c, private in enumerate(privates)])
            half = torch.cat(final[first_half:], dim=1) if sided else None  # (B, K)
            for b in range(B):
                candidate = copy.deepcopy(work)
                result.write_to(candidate.decoders, b)
                half_b = half[b:b + 1] if half is not None else None
                after = fit_chamfer(candidate, final[0][b:b + 1], clouds[b], half_b)
                if after <= best[b]:  # else the phase is undone for this input
                    models[b], best_latent[b], best[b], refined[b] = candidate, final[0][b:b + 1], after, True
                    halves[b] = None if half_b is None else half_b[0].abs().cpu().numpy()
    share = (time.perf_counter() - started) / B
    return [Refinement(model=models[b], latent=best_latent[b], encoded=encoded[b], chamfer_before=before[b],
                       chamfer_latent=chamfer_latent[b], chamfer_after=best[b], latent_steps=taken_latent[b],
                       decoder_steps=taken_decoders[b], decoders_refined=refined[b], seconds=share, batch=B,
                       patch_ranges=len(spans) if decoder_steps > 0 else 1, losses=losses[b],
                       half_thickness=halves[b])
            for b in range(B)]


def batch_size(model: AtlasNet, most: int = 8, memory_bytes: int = 512 * 2**20) -> int:
    """How many inputs to refine together: at most `most`, and no more than keep phase 2's
    private copies of the decoders, each with its gradient and Adam's two moments (4 floats per
    parameter), under `memory_bytes`: 8 for the CPU-default model (11 MB an input), 1 for the
    reference-size one (about 420 MB an input), where the arithmetic dwarfs what a batch saves."""
    per_input = 4 * sum(p.numel() * p.element_size() for p in model.decoders.parameters())
    return max(1, min(most, memory_bytes // per_input))


def parallel_width(device: torch.device) -> int:
    """How many batches `refine_parallel` refines at once: torch's CPU thread budget (the
    process's cores, or what it was told to use) on the CPU; 1 on an accelerator, whose one
    stream the batches would only queue on."""
    return max(1, torch.get_num_threads()) if device.type == "cpu" else 1


def refine_parallel(model: AtlasNet, points: Sequence[Tensor], *, width: int | None = None, most: int = 8,
                    generators: Sequence[torch.Generator] | None = None,
                    on_step: Callable[[], None] | None = None, **options: Any) -> list[Refinement]:
    """`refine_batch` on `width` batches at once, one CPU thread each: every input's result is
    what it would be alone (its own generator), and each result's `seconds` is the call's wall
    time divided among all the inputs.

    points: B clouds (N_b, 3) or (1, N_b, 3); width: batches refined at once (default
    `parallel_width`); most: inputs per batch at most (`batch_size`). The inputs are split into
    contiguous batches, as even as they can be, a multiple of `width` of them when there are
    that many inputs; with fewer batches than `width` (a lone input), each batch's phase 2
    splits its patches over the spare threads instead (`refine_batch`'s split, ranges of at
    least MIN_SPLIT_PATCHES). options: the rest of `refine_batch`'s keywords (not `threads`,
    `split`).

    Why threads: refinement is many small operations (a batch's step is a few milliseconds of
    products of (K, C, P) blocks), which torch's own intra-op threads do not speed up (two
    threads: 3.4 s a shape against 3.2 s on one), while two batches on two threads, each
    single-threaded, run side by side (measured on 8 held-out vessels on the 2-core development
    machine, load 0.3: 0.78 to 0.82 s a mesh against 1.43 to 1.48 s for one batch of 8, the
    CPU time the same, every result identical). torch and scipy release the GIL in their
    kernels, so Python threads suffice, with none of a process pool's copies of the model.
    """
    clouds = _clouds(points)
    B = len(clouds)
    generators = _generators(generators, B)
    width = width if width is not None else parallel_width(clouds[0].device)
    # Batches of at most `most`, as many as a multiple of `width`, so that no thread idles at the end.
    count = min(B, width * math.ceil(math.ceil(B / max(1, most)) / width))
    bounds = [round(i * B / count) for i in range(count + 1)]
    groups = [range(bounds[i], bounds[i + 1]) for i in range(count)]
    started = time.perf_counter()

    # Fewer batches than threads (a lone input): each batch's patches in ranges side by side.
    split = max(1, width // count) if width > count else 1
    split = min(split, max(1, model.config.n_patches // MIN_SPLIT_PATCHES))

    def one(group: range) -> list[Refinement]:
        return refine_batch(model, [clouds[i] for i in group], generators=[generators[i] for i in group],
                            threads=None, split=split, on_step=on_step, **options)

    # The thread budget is set once, around all the batches (refine_batch's own setting would
    # be undone by whichever batch finished first).
    with _threads(1, clouds[0].device):
        if width <= 1 or count == 1:
            results = [r for group in groups for r in one(group)]
        else:
            with ThreadPoolExecutor(min(width, count)) as pool:
                results = [r for part in pool.map(one, groups) for r in part]
    share = (time.perf_counter() - started) / B
    for r in results:
        r.seconds = share
    return results


def refine(model: AtlasNet, points: Tensor, *, latent_steps: int = LATENT_STEPS, decoder_steps: int = DECODER_STEPS,
           generator: torch.Generator | None = None, **options: Any) -> Refinement:
    """Fit `model`'s reconstruction of one shape to its points: `refine_batch` of one input.

    points: (1, N, 3); generator: its random stream (default: seeded with 0); the phases' steps
    and the other options (rates, points, patience, threads) are those of `refine_batch`.
    """
    if points.dim() != 3 or points.shape[0] != 1 or points.shape[2] != 3:
        raise ValueError(f"expected one shape's points (1, N, 3), got {tuple(points.shape)}")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    return refine_batch(model, [points], latent_steps=latent_steps, decoder_steps=decoder_steps,
                        generators=[generator], **options)[0]
