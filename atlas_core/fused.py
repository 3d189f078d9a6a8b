"""
Fused BatchNorm layers for AtlasNet's training step, written with plain PyTorch ops.

Each function here computes exactly what a composition of standard layers computes (values and
gradients, up to float rounding; `tests/atlas_core/test_fused.py` checks both against that
composition, gradients with `torch.autograd.gradcheck` in float64), but moves less memory. On the
CPU a training step of the reference AtlasNet is otherwise dominated, after its matrix products,
by passes over large activations (BatchNorm, ReLU, the max over points) and by the page faults of
allocating them afresh on every step.

    linear_batchnorm_relu(x, linear, bn)
        relu(bn(linear(x))) for x: (R, Cin), or for K patches' channels-first rows x: (K, Cin, R)
        with K stacked Linear layers (`atlas_core.model.PatchLinear`) and bn over K*C channels.
        With batch statistics, one autograd node: the ReLU runs in place on the BatchNorm
        output, the backward is ReLU's mask then BatchNorm's own backward kernel then the two
        products, and the Linear's bias, which BatchNorm cancels, is not added to z (it would
        cost a pass over z; its gradient is exactly zero).

    latent_batchnorm_relu(t, linear, v, bn)
        relu(bn(linear(t) + v)) for every patch k, shape b and template point p, t: (K, P, dim),
        v: (B, C) -> (K, C, B*P). This is the patch decoders' first layer: the embedded template
        points u = linear(t), shared by the batch, plus the latent code of each shape. On each
        patch's full B x P grid the batch statistics follow from u and v alone (mean = mean(u) +
        mean(v), var = var(u) + var(v): the cross term vanishes), and the backward needs only the
        gradient summed over b and over p, never the (K, C, B, P) input.

    linear_batchnorm_max(h, linear, bn, batch)
        max over points of bn(linear(h)), h: (B*N, Cin) -> (B, C). This is PointNet's last point
        layer and the max-pool after it, the largest tensor of the model ((B*N, 1024), 328 MB at
        the reference size). It is never stored:
        - BatchNorm's batch statistics of z = h W^T + b are linear in those of h: mean(z) =
          W mean(h) + b and var(z)_c = w_c^T Cov(h) w_c, with Cov(h) a (Cin, Cin) matrix;
        - BatchNorm is a per-channel affine map y = s_c z + t_c, monotone: increasing where
          gamma_c >= 0 (take the max of z), decreasing where gamma_c < 0 (the min). The sign is
          folded into W, z is computed one shape at a time and only its max and argmax are kept;
        - in the backward the gradient of the pooled output reaches one point per (shape,
          channel), and BatchNorm adds to it a per-channel constant plus a per-channel multiple of
          (z - mean(z)) = (h - mean(h)) W^T. So grad W = (sparse part)^T h + a sum(h)^T +
          diag(k) W (R Cov(h)) and grad h = (sparse part) W + const + h (W^T diag(k) W):
          (Cin x Cin) products instead of (R x C) ones.

All three update BatchNorm's running statistics as nn.BatchNorm1d does in training mode
(momentum, or the cumulative average when momentum is None; the unbiased variance) and use them
in eval mode. Biases that a training-mode BatchNorm cancels get an exact zero gradient, where
autograd through the plain layers gives float rounding noise around zero.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function

if TYPE_CHECKING:
    from atlas_core.model import PatchLinear

# -----------------------------------------------------------------------------
# BatchNorm bookkeeping shared by the fused layers


def _uses_batch_stats(bn: nn.BatchNorm1d) -> bool:
    """nn.BatchNorm1d's rule: batch statistics in training mode or without running statistics."""
    return bn.training or bn.running_mean is None


def _momentum(bn: nn.BatchNorm1d) -> float:
    """The running-average factor for this step; counts the batch as nn.BatchNorm1d does."""
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            return 1.0 / float(bn.num_batches_tracked)
        return bn.momentum
    return 0.0 if bn.momentum is None else bn.momentum


def _update_running_stats(bn: nn.BatchNorm1d, mean: Tensor, var: Tensor, count: int) -> None:
    """Running averages from the batch mean and (biased) variance over `count` rows."""
    if not (bn.training and bn.track_running_stats and bn.running_mean is not None):
        return
    factor = _momentum(bn)
    with torch.no_grad():
        unbiased = var * (count / max(count - 1, 1))
        bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), factor)
        bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), factor)


def _affine(bn: nn.BatchNorm1d, like: Tensor) -> tuple[Tensor, Tensor]:
    """gamma and beta, ones and zeros when the layer has no affine parameters."""
    C = bn.num_features
    gamma = bn.weight if bn.weight is not None else torch.ones(C, dtype=like.dtype, device=like.device)
    beta = bn.bias if bn.bias is not None else torch.zeros(C, dtype=like.dtype, device=like.device)
    return gamma, beta


def _running(bn: nn.BatchNorm1d) -> tuple[Tensor | None, Tensor | None]:
    """The statistics to normalise with: None for batch statistics, else the running ones."""
    if _uses_batch_stats(bn):
        return None, None
    return bn.running_mean, bn.running_var


def batchnorm(bn: nn.BatchNorm1d, z: Tensor) -> Tensor:
    """bn over z's channels: z (R, C), rows; or (K, C, R), K patches' channels-first rows, with bn
    over K*C channels (patch k's channel c is channel k*C + c), so that each patch's channels are
    normalised over its own R rows, as K separate BatchNorm1d(C) layers would."""
    if z.dim() == 2:
        return bn(z)
    return bn(z.reshape(1, -1, z.shape[-1])).view(z.shape)


# -----------------------------------------------------------------------------
# relu(bn(linear(x)))


class _LinearBatchNormReLU(Function):
    @staticmethod
    def forward(ctx, x, weight, bias, gamma, beta, running_mean, running_var, momentum, eps):
        # Batch statistics only. The Linear's bias shifts z and its batch mean alike, so it
        # changes neither the output nor any gradient (its own is zero): it is left out of z
        # and added to the running mean only. Stacked patches (x (K, Cin, R)) normalise the
        # (1, K*C, R) view of z: BatchNorm's channels-first layout, without a copy.
        x = x.contiguous()
        stacked = x.dim() == 3
        z = torch.bmm(weight, x) if stacked else x @ weight.t()
        flat = z.view(1, -1, z.shape[-1]) if stacked else z
        y, save_mean, save_invstd = torch.native_batch_norm(
            flat, gamma, beta, running_mean, running_var, True, momentum, eps)
        if running_mean is not None:
            running_mean.add_(bias.reshape(-1), alpha=momentum)
        y.relu_()
        ctx.save_for_backward(x, weight, flat, y, gamma, save_mean, save_invstd)
        ctx.eps, ctx.bias_shape = eps, bias.shape
        return y.view(z.shape)

    @staticmethod
    def backward(ctx, dy):
        x, weight, z, y, gamma, save_mean, save_invstd = ctx.saved_tensors
        g = torch.ops.aten.threshold_backward(dy.contiguous().view(y.shape), y, 0)
        need_x, need_w, need_b, need_gamma, need_beta = ctx.needs_input_grad[:5]
        dz, dgamma, dbeta = torch.ops.aten.native_batch_norm_backward(
            g, z, gamma, None, None, save_mean, save_invstd, True, ctx.eps,
            [need_x or need_w, need_gamma, need_beta])
        del g
        if x.dim() == 3:
            dz = dz.view(weight.shape[0], weight.shape[1], -1) if dz is not None else None
            dx = torch.bmm(weight.transpose(1, 2), dz) if need_x else None
            dweight = torch.bmm(dz, x.transpose(1, 2)) if need_w else None
        else:
            dx = dz @ weight if need_x else None
            dweight = dz.t() @ x if need_w else None
        dbias = weight.new_zeros(ctx.bias_shape) if need_b else None
        return dx, dweight, dbias, dgamma, dbeta, None, None, None, None


def linear_batchnorm_relu(x: Tensor, linear: nn.Linear | PatchLinear, bn: nn.BatchNorm1d) -> Tensor:
    """relu(bn(linear(x))) for x: (R, Cin) -> (R, C), or for x: (K, Cin, R) -> (K, C, R) with a
    PatchLinear and bn over K*C channels (see `batchnorm`); updates bn's running statistics.

    With batch statistics (training mode) one autograd node that skips the Linear's bias, which
    BatchNorm cancels (its gradient is exactly zero); otherwise the plain composition.
    """
    if not _uses_batch_stats(bn) or linear.bias is None:
        return F.relu(batchnorm(bn, linear(x)))
    if x.shape[-1 if x.dim() == 3 else 0] < 2:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}")
    gamma, beta = _affine(bn, x)
    track = bn.track_running_stats and bn.running_mean is not None
    # native_batch_norm updates the running statistics itself (unbiased variance) when given them.
    momentum = _momentum(bn) if track else 0.0
    running = (bn.running_mean, bn.running_var) if track else (None, None)
    return _LinearBatchNormReLU.apply(x, linear.weight, linear.bias, gamma, beta, *running, momentum, bn.eps)


# -----------------------------------------------------------------------------
# relu(bn(linear(t) + v)) over K patches x B shapes x P template points


class _LatentBatchNormReLU(Function):
    @staticmethod
    def forward(ctx, u, v, bias, gamma, beta, mean_u, mean_v, var, eps, batch_stats):
        # u (K, C, P) = linear(t) without the bias, which is added here (in eval mode; with
        # batch statistics it cancels); v (B, C); bias, gamma, beta, mean_u, var (K, C); mean_v
        # (C,). mean_u + mean_v and var: the statistics to normalise with, constants here: the
        # backward adds their gradient itself when they are the batch's own.
        invstd = torch.rsqrt(var + eps)
        scale = gamma * invstd
        if not batch_stats:
            mean_u = mean_u - bias
        us = (u - mean_u[..., None]) * scale[..., None]                       # (K, C, P)
        vs = torch.addcmul(beta[..., None], (v - mean_v).t(), scale[..., None])  # (K, C, B)
        # Written into a (K, C, B, P) tensor: left to itself, broadcasting may lay out its
        # output otherwise, and the rows must be (b, p) in order.
        K, C, P = u.shape
        y = torch.add(us.unsqueeze(2), vs.unsqueeze(3), out=u.new_empty(K, C, v.shape[0], P)).relu_()
        ctx.save_for_backward(u, v, y, gamma, mean_u, mean_v, invstd)
        ctx.batch_stats = batch_stats
        return y.view(*y.shape[:2], -1)

    @staticmethod
    def backward(ctx, dy):
        u, v, y, gamma, mean_u, mean_v, invstd = ctx.saved_tensors
        _, _, B, P = y.shape
        g = torch.ops.aten.threshold_backward(dy.contiguous().view(y.shape), y, 0)
        g_p = g.sum(2)  # (K, C, P): summed over the shapes
        g_b = g.sum(3)  # (K, C, B): summed over the template points
        del g
        xu = (u - mean_u[..., None]) * invstd[..., None]      # (K, C, P)
        xv = (v - mean_v).t() * invstd[..., None]             # (K, C, B)
        dbeta = g_b.sum(2)
        dgamma = (g_p * xu).sum(2) + (g_b * xv).sum(2)
        scale = (gamma * invstd)[..., None]
        if ctx.batch_stats:
            # BatchNorm's backward, dx = scale (g - mean(g) - xhat mean(g xhat)), summed over b or
            # over p; xhat = xu[p] + xv[b], and xv (xu) sums to zero over b (over p).
            R = B * P
            mg, mgx = (dbeta / R)[..., None], (dgamma / R)[..., None]
            du = scale * (g_p - B * mg - B * xu * mgx)
            dv = scale * (g_b - P * mg - P * xv * mgx)
            dbias = torch.zeros_like(dbeta)
        else:
            du, dv = scale * g_p, scale * g_b
            dbias = du.sum(2)
        return du, dv.sum(0).t(), dbias, dgamma, dbeta, None, None, None, None, None


def latent_batchnorm_relu(t: Tensor, linear: PatchLinear, v: Tensor, bn: nn.BatchNorm1d) -> Tensor:
    """relu(bn(linear(t) + v)) for every patch k, shape b and template point p: t (K, P, dim),
    v (B, C) -> (K, C, B*P), rows in (b, p) order; linear: K stacked Linear layers (dim -> C).

    BatchNorm (over K*C channels) normalises each patch's channels over its B*P rows, exactly as
    `batchnorm(bn, linear(t.transpose(1, 2))[:, :, None, :] + v.t()[None, :, :, None])` on the
    (K, C, B*P) view of that sum.
    """
    K = t.shape[0]
    u = torch.bmm(linear.weight, t.transpose(1, 2))  # (K, C, P), without the bias
    C = u.shape[1]
    bias = linear.bias.view(K, C)
    gamma, beta = (p.view(K, C) for p in _affine(bn, u))
    batch_stats = _uses_batch_stats(bn)
    with torch.no_grad():
        if batch_stats:
            mean_u, mean_v = u.mean(2), v.mean(0)
            var = (u - mean_u[..., None]).square().mean(2) + (v - mean_v).square().mean(0)
            _update_running_stats(bn, (mean_u + mean_v + bias).view(-1), var.view(-1), u.shape[2] * v.shape[0])
        else:
            mean_u, var = bn.running_mean.view(K, C), bn.running_var.view(K, C)
            mean_v = torch.zeros_like(mean_u[0])
    return _LatentBatchNormReLU.apply(u, v, bias, gamma, beta, mean_u, mean_v, var, bn.eps, batch_stats)


# -----------------------------------------------------------------------------
# max over points of bn(linear(h))

#: Bytes of z = h W^T computed at once while looking for the max (whole shapes at a time).
MAX_CHUNK_BYTES = 16 * 2**20


class _LinearBatchNormMax(Function):
    @staticmethod
    def forward(ctx, h, weight, bias, gamma, beta, running_mean, running_var, eps, batch):
        # running_mean/var: the statistics to normalise with in eval mode; None for the batch's.
        # Returns the pooled output and the statistics used, mean and biased var of z (float64).
        R, Cin = h.shape
        C = weight.shape[0]
        N = R // batch
        batch_stats = running_mean is None

        # max_n of (gamma invstd) z + const: the max of z where gamma >= 0, else the min, i.e.
        # the max of sign * z; computed transposed, (C, rows), so that it reduces along rows, and
        # without the bias, a constant along them.
        sign = torch.where(gamma >= 0, 1.0, -1.0).to(h.dtype)
        w_signed = weight * sign[:, None]
        per_chunk = max(1, min(batch, MAX_CHUNK_BYTES // max(1, N * C * h.element_size())))
        zmax = torch.empty(batch, C, dtype=h.dtype, device=h.device)
        argmax = torch.empty(batch, C, dtype=torch.long, device=h.device)
        buf = torch.empty(C, per_chunk * N, dtype=h.dtype, device=h.device)
        if batch_stats:
            # The statistics of h from the same chunks, while they are in cache: each shape's
            # mean and scatter about it (no cancellation), combined across shapes afterwards.
            shape_means = torch.empty(batch, Cin, dtype=h.dtype, device=h.device)
            scatter_h = torch.zeros(Cin, Cin, dtype=torch.float64, device=h.device)
        for b0 in range(0, batch, per_chunk):
            b1 = min(batch, b0 + per_chunk)
            hb = h[b0 * N:b1 * N]
            zt = torch.mm(w_signed, hb.t(), out=buf[:, :(b1 - b0) * N])
            values, index = zt.view(C, b1 - b0, N).max(dim=2)  # (C, shapes)
            zmax[b0:b1] = values.t()
            argmax[b0:b1] = index.t()
            if batch_stats:
                hb = hb.view(b1 - b0, N, Cin)
                means = hb.mean(1)
                centred = (hb - means[:, None]).view(-1, Cin)
                scatter_h += (centred.t() @ centred).to(torch.float64)
                shape_means[b0:b1] = means
        zmax.mul_(sign).add_(bias)

        w64 = weight.to(torch.float64)
        if batch_stats:
            # z = h W^T + b: mean(z) = W mean(h) + b, var(z)_c = w_c^T Cov(h) w_c, with
            # R Cov(h) = within-shape scatter + N * between-shape scatter of the shape means.
            shape_means = shape_means.to(torch.float64)
            mean_h = shape_means.mean(0)
            between = shape_means - mean_h
            scatter_h += N * (between.t() @ between)
            mean = w64 @ mean_h + bias.to(torch.float64)
            var = ((w64 @ scatter_h) * w64).sum(1).div_(R).clamp_(min=0)
        else:
            mean_h = scatter_h = None
            mean, var = running_mean.to(torch.float64), running_var.to(torch.float64)
        invstd = torch.rsqrt(var + eps).to(h.dtype)
        mean_z = mean.to(h.dtype)
        out = torch.addcmul(beta, zmax - mean_z, gamma * invstd)
        ctx.save_for_backward(h, weight, gamma, zmax, argmax, mean_z, invstd, mean_h, scatter_h)
        ctx.batch_stats = batch_stats
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    def backward(ctx, dout, _dmean, _dvar):
        h, weight, gamma, zmax, argmax, mean_z, invstd, mean_h, scatter_h = ctx.saved_tensors
        R, Cin = h.shape
        batch, C = zmax.shape
        N = R // batch
        xhat = (zmax - mean_z) * invstd
        dbeta = dout.sum(0)
        dgamma = (dout * xhat).sum(0)
        scale = gamma * invstd
        ws = scale * dout  # (B, C): the gradient reaching z at each argmax
        rows = (argmax + torch.arange(0, R, N, device=h.device)[:, None]).view(-1)  # rows of h

        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dh = dweight = None
        dbias = ws.sum(0)
        if need_w:
            dweight = torch.einsum("bc,bci->ci", ws, h[rows].view(batch, C, Cin))
        if ctx.batch_stats:
            # Through the batch statistics z's gradient gains a_c + k_c (z - mean(z))_c, and
            # z - mean(z) = (h - mean(h)) W^T.
            a = -scale * dbeta / R
            k = (-scale * dgamma * invstd / R).to(torch.float64)
            w64 = weight.to(torch.float64)
            dbias = torch.zeros_like(dbias)  # BatchNorm cancels it: ws.sum(0) + R a = 0
            if need_w:
                dweight = dweight + torch.outer(a, (R * mean_h).to(h.dtype)) + (k[:, None] * (w64 @ scatter_h)).to(h.dtype)
            if need_h:
                m = w64.t() @ (k[:, None] * w64)  # (Cin, Cin)
                offset = a.to(torch.float64) @ w64 - mean_h @ m
                dh = torch.addmm(offset.to(h.dtype), h, m.to(h.dtype))
        if need_h:
            if dh is None:
                dh = torch.zeros_like(h)
            dh.index_add_(0, rows, (ws[:, :, None] * weight[None]).view(-1, Cin))
        return dh, dweight, dbias, dgamma, dbeta, None, None, None, None


def linear_batchnorm_max(h: Tensor, linear: nn.Linear, bn: nn.BatchNorm1d, batch: int) -> Tensor:
    """max over points of bn(linear(h)): h (batch*N, Cin) -> (batch, C), as

        bn(linear(h)).view(batch, N, C).amax(dim=1)

    without the (batch*N, C) tensor; updates bn's running statistics like bn would.
    """
    R = h.shape[0]
    if R % batch:
        raise ValueError(f"{R} rows do not split into {batch} shapes")
    if _uses_batch_stats(bn) and R < 2:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {(R, linear.out_features)}")
    gamma, beta = _affine(bn, h)
    bias = linear.bias if linear.bias is not None else torch.zeros(linear.out_features, dtype=h.dtype, device=h.device)
    running = _running(bn)
    out, mean, var = _LinearBatchNormMax.apply(h.contiguous(), linear.weight, bias, gamma, beta, *running, bn.eps, batch)
    if running[0] is None:
        _update_running_stats(bn, mean, var, R)
    return out
