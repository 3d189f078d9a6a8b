"""What one rank of a data-parallel training needs: its process group, its part of each global
batch, and BatchNorm over the global batch.

    with process_group(RankSpec(rank, world_size, "127.0.0.1", port), "cpu"):
        train(config, data, callbacks if rank == 0 else None)   # config.devices == world_size

A multi-device run is `world_size` processes (ranks), each with a replica of the model, each
drawing the same global batches from the same seeded generator and computing on its own part
(`batch_part`); gradients are averaged across ranks (DistributedDataParallel, in
`atlas_core.train`) and BatchNorm's batch statistics are those of the whole global batch
(`SyncBatchNorm` on the CPU, torch's `nn.SyncBatchNorm` on CUDA), so that N ranks compute what
one process computes on the global batch, up to float rounding. Gloo on the CPU, NCCL on CUDA.

No queue, registry or store here: whoever starts the ranks (a worker, a test, a benchmark) gives
each its rank, the world size and where rank 0's c10d store listens.
"""

from __future__ import annotations

import datetime
import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

#: How long a collective (and the rendezvous) may wait for the other ranks before it fails.
DEFAULT_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class RankSpec:
    """One rank's place in a process group: rank in [0, world_size), the address and port of
    the c10d TCP store that rank 0 serves (the rendezvous), and the rank's place on its own
    machine (`local_rank`: which of the machine's devices it takes; its rank when the group
    is one machine's)."""

    rank: int
    world_size: int
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    local_rank: int | None = None

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in a world of {self.world_size}")

    @property
    def local(self) -> int:
        """The rank's index among its machine's ranks (its device there)."""
        return self.rank if self.local_rank is None else self.local_rank


def backend_for(device: str) -> str:
    """The collective backend for a device: NCCL for CUDA, gloo for the CPU."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def rank_device(device: str, local_rank: int) -> torch.device:
    """The device a rank trains on: the CPU for every rank, or its machine's `local_rank`-th
    visible GPU."""
    base = torch.device(device)
    if base.type == "cuda":
        return torch.device("cuda", local_rank)
    return base


def serve_store(master_addr: str = "127.0.0.1", world_size: int = 2, port: int = 0,
                timeout_s: float = DEFAULT_TIMEOUT_S) -> dist.TCPStore:
    """Rank 0's c10d store, listening at once (port 0: a free port the system picks; read it
    back from `.port`), so that the other ranks can be told the port before they start."""
    return dist.TCPStore(master_addr, port, world_size, is_master=True,
                         timeout=datetime.timedelta(seconds=timeout_s), wait_for_workers=False)


def init_process_group(spec: RankSpec, device: str, *, store: dist.Store | None = None,
                       timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Join the default process group as `spec.rank` (blocks until every rank has joined, or
    `timeout_s`). `store`: rank 0's own `serve_store`, when it made one first; otherwise rank 0
    serves the store at `spec.master_port` and the others connect to it."""
    timeout = datetime.timedelta(seconds=timeout_s)
    if rank_device(device, spec.local).type == "cuda":
        torch.cuda.set_device(rank_device(device, spec.local))
    if store is None:
        store = dist.TCPStore(spec.master_addr, spec.master_port, spec.world_size,
                              is_master=spec.rank == 0, timeout=timeout)
    dist.init_process_group(backend_for(device), store=store, rank=spec.rank,
                            world_size=spec.world_size, timeout=timeout)


def destroy_process_group() -> None:
    """Leave the default process group, if this process is in one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def process_group(spec: RankSpec, device: str, *, store: dist.Store | None = None,
                  timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[None]:
    """The default process group for the block: `init_process_group`, then its teardown."""
    init_process_group(spec, device, store=store, timeout_s=timeout_s)
    try:
        yield
    finally:
        destroy_process_group()


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` now (the system's pick; another process could take it before it is
    used: `serve_store(port=0)` has no such gap, where rank 0 can tell the others its port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def spawn(fn: Callable[..., object], world_size: int, *args: object, device: str = "cpu",
          threads: int | None = 1) -> None:
    """Run `fn(rank, *args)` in `world_size` fresh processes (torch.multiprocessing's spawn), each
    inside the default process group on loopback, with `threads` torch threads (None: torch's
    default); returns when all have, and raises if one failed. `fn` and `args` must pickle (a
    module-level function). For scripts, tests and benchmarks; a worker starts its ranks itself."""
    import torch.multiprocessing as mp

    mp.spawn(_spawned, args=(fn, world_size, free_port(), device, threads, args), nprocs=world_size,
             join=True)


def _spawned(rank: int, fn: Callable[..., object], world_size: int, port: int, device: str,
             threads: int | None, args: tuple[object, ...]) -> None:
    if threads:
        torch.set_num_threads(threads)
    with process_group(RankSpec(rank, world_size, "127.0.0.1", port), device):
        fn(rank, *args)


def world() -> tuple[int, int]:
    """(rank, world size) of this process in the default group; (0, 1) outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# -----------------------------------------------------------------------------------------
# The global batch, split


def part_bounds(size: int, world_size: int, rank: int) -> tuple[int, int]:
    """[start, stop) of a rank's rows of a global batch of `size` rows: contiguous parts whose
    sizes differ by at most one, the larger first (as `Tensor.tensor_split`)."""
    base, extra = divmod(size, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def batch_part(batch: Tensor, world_size: int, rank: int) -> Tensor:
    """A rank's part of a global batch, the same split on every rank for the same batch.

    batch: (G, ...) -> (g_rank, ...), g_rank = G // world_size or one more.
    """
    start, stop = part_bounds(batch.shape[0], world_size, rank)
    return batch[start:stop]


# -----------------------------------------------------------------------------------------
# Small agreements between ranks


def all_reduce_sum(value: Tensor) -> Tensor:
    """The sum over ranks of a tensor without gradient (a copy; the input is left as it is)."""
    out = value.detach().clone()
    if world()[1] > 1:
        dist.all_reduce(out)
    return out


def broadcast_floats(values: Sequence[float], device: torch.device | str = "cpu") -> list[float]:
    """Rank 0's values on every rank (float64; a NaN or an infinity passes as it is)."""
    if world()[1] == 1:
        return [float(v) for v in values]
    out = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.broadcast(out, src=0)
    return [float(v) for v in out.cpu()]


# -----------------------------------------------------------------------------------------
# BatchNorm over the global batch


class _GlobalBatchNorm(torch.autograd.Function):
    """BatchNorm's training-mode forward and backward with the statistics of the global batch,
    as torch's SyncBatchNorm computes them on CUDA (whose kernels have no CPU version).

    x: (R, C) or (N, C, L), this rank's part; weight, bias: (C,) or None. Returns y (x's
    shape), and the global mean and biased variance (C,) and row count (1,) for the running
    statistics (no gradient).

    Forward: each rank's mean and variance in one pass (`torch.var_mean`), one all-reduce of
    (rows x mean, rows x (variance + mean^2), rows) in float64, then the normalisation as one
    kernel (`F.batch_norm` given those statistics). Backward: the local sums of g and g x xhat
    in one kernel (aten's BatchNorm backward, asked for the parameters' gradients only), one
    all-reduce of them, then dx = k (g - mean(g) - xhat mean(g xhat)), k = weight x invstd, the
    means over the global batch: one affine map of x (again `F.batch_norm`) plus k g. The
    parameters' gradients are this rank's sums: DDP adds the ranks' (and averages)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None,
                eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        C = x.shape[1]
        dims = [0] if x.dim() == 2 else [0, 2]
        rows = x.numel() // C
        var_r, mean_r = torch.var_mean(x, dims, correction=0)
        m = mean_r.double()
        stats = torch.cat([m * rows, (var_r.double() + m * m) * rows, m.new_tensor([float(rows)])])
        dist.all_reduce(stats)
        count = stats[2 * C:]
        if float(count) <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got {int(count)} "
                             "over every rank")
        mean64 = stats[:C] / count
        var64 = (stats[C:2 * C] / count - mean64 * mean64).clamp_min(0.0)
        mean, var = mean64.to(x.dtype), var64.to(x.dtype)
        y = F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)
        invstd = torch.rsqrt(var64 + eps)
        ctx.save_for_backward(x, weight, mean64, invstd)
        ctx.eps, ctx.count, ctx.has_bias = eps, float(count), bias is not None
        ctx.mark_non_differentiable(mean, var, count)
        return y, mean, var, count

    @staticmethod
    def backward(ctx, g: Tensor, *_unused: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, mean64, invstd64 = ctx.saved_tensors
        g = g.contiguous()
        C = x.shape[1]
        shape = (1, C) if x.dim() == 2 else (1, C, 1)
        _, sum_g_xhat, sum_g = torch.ops.aten.native_batch_norm_backward(
            g, x, weight, None, None, mean64.to(x.dtype), invstd64.to(x.dtype), True, ctx.eps,
            [False, True, True])
        sums = torch.cat([sum_g, sum_g_xhat]).double()
        dist.all_reduce(sums)
        mean_g, mean_g_xhat = sums[:C] / ctx.count, sums[C:] / ctx.count
        k = invstd64 * (weight.double() if weight is not None else 1.0)
        # dx = k g + s x + c, with s = -k invstd mean(g xhat), c = -s mean - k mean(g)
        slope = -k * invstd64 * mean_g_xhat
        offset = -slope * mean64 - k * mean_g
        zeros = torch.zeros(C, dtype=x.dtype, device=x.device)
        ones = torch.ones(C, dtype=x.dtype, device=x.device)
        dx = F.batch_norm(x, zeros, ones, slope.to(x.dtype), offset.to(x.dtype), False, 0.0, 0.0)
        dx.addcmul_(g, k.to(x.dtype).view(shape))
        return (dx, sum_g_xhat if weight is not None else None, sum_g if ctx.has_bias else None, None)


class SyncBatchNorm(nn.BatchNorm1d):
    """nn.BatchNorm1d whose training-mode statistics are those of the global batch, for the CPU
    (torch's nn.SyncBatchNorm runs on CUDA only).

    x: (R, C) rows, or (N, C, L) (statistics over N and L), as nn.BatchNorm1d takes them. In
    training mode with more than one rank, the mean and variance are those of every rank's
    rows together and the backward carries every rank's gradient through them
    (`_GlobalBatchNorm`: two small all-reduces a layer, one forward, one backward); the
    running statistics are updated as nn.BatchNorm1d updates them (momentum, unbiased
    variance). In eval mode, or with one rank, it is nn.BatchNorm1d. The state dict is
    nn.BatchNorm1d's, so checkpoints load into the plain model.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and world()[1] > 1):
            return super().forward(x)
        if x.dim() not in (2, 3):
            raise ValueError(f"expected (R, C) or (N, C, L) input, got {tuple(x.shape)}")
        y, mean, var, count = _GlobalBatchNorm.apply(x, self.weight, self.bias, self.eps)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                if self.num_batches_tracked is not None:
                    self.num_batches_tracked.add_(1)
                if self.momentum is None:
                    factor = 1.0 / float(self.num_batches_tracked if self.num_batches_tracked is not None else 1)
                else:
                    factor = self.momentum
                n = float(count)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_((var * (n / (n - 1))).to(self.running_var.dtype), factor)
        return y


def sync_batchnorm(module: nn.Module, device: torch.device | str) -> nn.Module:
    """`module` with every BatchNorm1d computing global-batch statistics: torch's
    nn.SyncBatchNorm on CUDA, `SyncBatchNorm` above on the CPU. The layers' parameters and
    buffers are kept (the same tensors); the module is changed in place and returned."""
    if torch.device(device).type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert(module)


def _convert(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.BatchNorm1d) and not isinstance(module, SyncBatchNorm):
        sync = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                             module.track_running_stats)
        if module.affine:
            sync.weight, sync.bias = module.weight, module.bias
        sync.running_mean, sync.running_var = module.running_mean, module.running_var
        sync.num_batches_tracked = module.num_batches_tracked
        sync.train(module.training)
        return sync
    for name, child in module.named_children():
        converted = _convert(child)
        if converted is not child:
            module.add_module(name, converted)
    return module
