"""
Chamfer distance between batched point clouds, exact and memory-bounded.

    d_xy[b, n] = min_m ||x[b, n] - y[b, m]||^2        x: (B, N, 3), y: (B, M, 3)
    chamfer(x, y)[b] = mean_n d_xy[b, n] + mean_m d_yx[b, m]

This is AtlasNet's training loss. The straightforward version builds the full (B, N, M) distance
matrix and lets autograd differentiate through it; at B=32, N=M=2500 that is 200M entries (800 MB
in float32, more again for the backward). But the gradient of a min only involves the point
that attains it, so the work splits in two:

1. find each point's nearest neighbour with no autograd at all (a KD-tree on the CPU, a chunked
   matrix product on the GPU), giving integer indices;
2. gather the matched points and recompute the squared distances with autograd, so that autograd
   only ever sees (B, N, 3) tensors and the gradients reach both clouds exactly as through the min.

The neighbours are exact (the same as brute force, ties aside), so values and gradients match the
brute-force version, which is kept below as `chamfer_brute_force` for tests and benchmarks.
"""

from __future__ import annotations

from concurrent.futures import Executor, ThreadPoolExecutor

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor

# Upper bound on the distance block that the matmul path keeps alive at once.
MATMUL_CHUNK_BYTES = 64 * 2**20


def _check_clouds(x: Tensor, y: Tensor) -> None:
    if x.dim() != 3 or y.dim() != 3 or x.shape[0] != y.shape[0] or x.shape[2] != y.shape[2]:
        raise ValueError(f"expected point clouds (B, N, 3) and (B, M, 3), got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[1] == 0 or y.shape[1] == 0:
        raise ValueError(f"point clouds must not be empty, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.device != y.device:
        raise ValueError(f"point clouds are on different devices: {x.device} and {y.device}")


def _gather(points: Tensor, idx: Tensor) -> Tensor:
    """points: (B, M, D), idx: (B, N) long -> points[b, idx[b, n]]: (B, N, D)."""
    return points.gather(1, idx.unsqueeze(-1).expand(-1, -1, points.shape[-1]))


# -----------------------------------------------------------------------------
# nearest-neighbour search (no autograd)

def _nn_index_kdtree(x: Tensor, y: Tensor) -> Tensor:
    """x: (B, N, D), y: (B, M, D) on the CPU -> idx (B, N) long.

    One KD-tree per batch element, built and queried in float64, so the answer is exact for
    float32 inputs: O((N + M) log M) per element and no (N, M) matrix anywhere.
    """
    xs = x.detach().to(torch.float64).numpy()
    ys = y.detach().to(torch.float64).numpy()
    idx = np.empty(xs.shape[:2], dtype=np.int64)

    # scipy releases the GIL while building and querying, so batch elements run on threads:
    # this also parallelises the tree builds, which query(workers=-1) alone would leave serial.
    # The pool is made per call, not kept, so that forked worker processes never inherit one;
    # its size follows torch's thread budget, so a process told to use one thread uses one.
    B, cpus = xs.shape[0], torch.get_num_threads()
    threads = min(B, cpus)
    workers = max(1, cpus // threads)  # cores left over go to each query (B=1: all of them)

    def search(b: int) -> None:
        tree = cKDTree(ys[b], balanced_tree=False, compact_nodes=False)  # faster builds, same answers
        _, idx[b] = tree.query(xs[b], k=1, workers=workers)

    if threads == 1:
        for b in range(B):
            search(b)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(search, range(B)))
    return torch.from_numpy(idx)


def _nn_index_matmul(x: Tensor, y: Tensor, max_bytes: int = MATMUL_CHUNK_BYTES) -> Tensor:
    """x: (B, N, D), y: (B, M, D) on any device -> idx (B, N) long.

    argmin_m ||x_n - y_m||^2 = argmin_m (||y_m||^2 - 2 x_n . y_m): ||x_n||^2 is the same for the
    whole row, so it is left out. Rows of x are processed in chunks so that the live (rows, M)
    block stays under `max_bytes`.

    The expansion loses precision when the coordinates are large compared to the gaps between
    neighbours (float32 gives only ~1e-4 relative accuracy on a squared distance at the point
    spacing of a 2500-point unit-sized shape, enough to swap near neighbours). Centring both
    clouds on y's mean and computing the block in float64 brings the error down to ~1e-16 of the
    cloud's squared extent, far below the float32 resolution at which brute force itself
    separates neighbours. (GPUs are slow at float64 arithmetic, but this block is bound by
    memory traffic, not arithmetic: three multiply-adds per entry.)
    """
    B, N, _ = x.shape
    M = y.shape[1]
    centre = y.detach().to(torch.float64).mean(dim=1, keepdim=True)
    x64 = x.detach().to(torch.float64) - centre
    y64 = y.detach().to(torch.float64) - centre
    y_sq = (y64 * y64).sum(-1).unsqueeze(1)  # (B, 1, M)
    y_t = y64.transpose(1, 2)                # (B, D, M)

    # A chunk covers whole batch elements when a full (N, M) block fits, else part of one.
    rows = max(1, max_bytes // (8 * M))
    bb, n_rows = (min(B, rows // N), N) if rows >= N else (1, rows)

    idx = torch.empty(B, N, dtype=torch.long, device=x.device)
    for b0 in range(0, B, bb):
        for n0 in range(0, N, n_rows):
            block = torch.baddbmm(y_sq[b0:b0 + bb], x64[b0:b0 + bb, n0:n0 + n_rows], y_t[b0:b0 + bb], alpha=-2.0)
            idx[b0:b0 + bb, n0:n0 + n_rows] = block.argmin(dim=-1)
    return idx


def _nn_index(x: Tensor, y: Tensor, method: str | None = None) -> Tensor:
    method = method or ("kdtree" if x.device.type == "cpu" else "matmul")
    if method == "kdtree":
        return _nn_index_kdtree(x.cpu(), y.cpu()).to(x.device)
    if method == "matmul":
        return _nn_index_matmul(x, y)
    raise ValueError(f"unknown nearest-neighbour method {method!r}: choose 'kdtree' or 'matmul'")


def nearest_neighbors(x: Tensor, y: Tensor, method: str | None = None) -> tuple[Tensor, Tensor]:
    """Exact nearest neighbour in y of every point of x, per batch element.

    x: (B, N, 3), y: (B, M, 3)
    returns idx (B, N) long, the index in y[b] of x[b, n]'s nearest neighbour, and
            dist2 (B, N), the squared distance to it (in x's dtype, detached).

    method: "kdtree" (default on the CPU) or "matmul" (default elsewhere, chunked to ~64 MB).
    """
    _check_clouds(x, y)
    with torch.no_grad():
        idx = _nn_index(x, y, method)
        dist2 = ((x - _gather(y, idx)) ** 2).sum(-1)
    return idx, dist2


# -----------------------------------------------------------------------------
# Chamfer distance

def chamfer_terms(x: Tensor, y: Tensor, method: str | None = None,
                  pool: Executor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Both directions of the Chamfer distance, per point.

    x: (B, N, 3), y: (B, M, 3)
    returns d_xy (B, N): squared distance from each x point to its nearest y point,
            d_yx (B, M): the same from y to x,
            idx_xy (B, N), idx_yx (B, M): the matched indices (long, no grad).

    The distances are recomputed from the gathered neighbours, so they carry gradients to both
    x and y: the gradient of a min is the gradient of the term that attains it.
    pool: run the two directions' searches at once on it (each direction's KD-trees are built
    and queried without the GIL): what lets one cloud pair use two cores, which its own
    search, one tree built after the other, does not.
    """
    _check_clouds(x, y)
    if pool is None:
        idx_xy, idx_yx = _nn_index(x, y, method), _nn_index(y, x, method)
    else:
        idx_xy, idx_yx = pool.map(lambda a, b: _nn_index(a, b, method), (x, y), (y, x))
    d_xy = ((x - _gather(y, idx_xy)) ** 2).sum(-1)
    d_yx = ((y - _gather(x, idx_yx)) ** 2).sum(-1)
    return d_xy, d_yx, idx_xy, idx_yx


def _reduce(per_cloud: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return per_cloud.mean()
    if reduction == "none":
        return per_cloud
    raise ValueError(f"unknown reduction {reduction!r}: choose 'mean' or 'none'")


def chamfer_distance(x: Tensor, y: Tensor, reduction: str = "mean", method: str | None = None,
                     pool: Executor | None = None) -> Tensor:
    """Chamfer distance, mean_n d_xy + mean_m d_yx, for each pair of clouds.

    x: (B, N, 3), y: (B, M, 3)
    returns a scalar (the average over the batch) for reduction="mean", (B,) for "none".
    pool: as `chamfer_terms`.
    """
    d_xy, d_yx, _, _ = chamfer_terms(x, y, method, pool)
    return _reduce(d_xy.mean(1) + d_yx.mean(1), reduction)


def chamfer_brute_force(x: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
    """The same Chamfer distance through the full (B, N, M) distance matrix.

    x: (B, N, 3), y: (B, M, 3) -> scalar or (B,), as `chamfer_distance`.
    O(B N M) memory: for tests and benchmarks. The distances are computed from coordinate
    differences rather than the ||x||^2 - 2 x.y + ||y||^2 expansion, so they are exact.
    """
    _check_clouds(x, y)
    d = torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist") ** 2  # (B, N, M)
    return _reduce(d.min(dim=2).values.mean(1) + d.min(dim=1).values.mean(1), reduction)
