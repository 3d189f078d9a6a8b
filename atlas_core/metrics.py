"""Reconstruction quality, reported the way papers do, plus the retrieval baseline.

All clouds are in the unit ball (the dataset's normalisation). With x the reconstruction and y
the ground truth, d(p, Q) = min_q ||p - q||:

    chamfer  = 10^3 * (mean_x d(x, y)^2 + mean_y d(y, x)^2) / 2     squared distances, mean of both directions
    precision = mean_x [d(x, y) < tau],  recall = coverage = mean_y [d(y, x) < tau]
    fscore   = 2 PR / (P + R)        tau = 1% of the unit ball's diameter = 0.02
    normal consistency = mean over both directions of |n_p . n_nearest|   (patches are unoriented)

The F-score is a statement about surfaces, measured on samples of them, and samples too sparse
measure their own spacing: a shape whose area in the unit ball is 5 (a chair) holds 2,500
points about 0.045 apart, so a point of a perfect reconstruction is often farther than tau from
every ground-truth sample. Two independent 2,500-point samplings of the same generated chair
score F 0.53 against each other (vessels 0.32, swords 1.0). So the F-score is measured densely:
`fscore_points` (30,000) samples of the reconstruction against up to as many of the ground
truth's own points; its `fscore_ceiling` says what those densities still allow (a perfect
reconstruction's score: about 0.85 for a chair sampled at 5,000 points, 0.99 at 30,000).
The Chamfer distance keeps the paper's 2,500 points a side, and is also reported on the dense
samples (`chamfer_dense`): at 2,500 points a side the sampling itself dominates it on shapes of
large area (the true surface of a generated vessel, resampled, scores 0.73 against its own
2,500 points, a fifth of what retrieval scores), so a ratio of two 2,500-point Chamfers
understates how much closer a good reconstruction is; at 30,000 that floor is about 0.06.

The retrieval baseline answers "did the network learn more than a lookup table?": for each
evaluated shape, the Chamfer to the nearest training shape.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from atlas_core.chamfer import nearest_neighbors
from atlas_core.meshing import PatchMesh

#: 1% of the diameter of the unit ball.
FSCORE_THRESHOLD = 0.02
CHAMFER_SCALE = 1e3


@dataclass
class ShapeScores:
    chamfer: float
    fscore: float
    precision: float
    coverage: float  # = recall
    normal_consistency: float
    #: What a perfect reconstruction would score against this ground truth (`fscore_ceiling`).
    fscore_ceiling: float | None = None
    #: The Chamfer (same units) on the F-score's dense samples; None without them.
    chamfer_dense: float | None = None

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).unsqueeze(0)


def paper_chamfer(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x: (B, N, 3), y: (B, M, 3) -> (B,) Chamfer x 10^3, mean of the two directions."""
    _, d_xy = nearest_neighbors(x, y)
    _, d_yx = nearest_neighbors(y, x)
    return CHAMFER_SCALE * 0.5 * (d_xy.mean(1) + d_yx.mean(1))


def _shares(d_pg: np.ndarray, d_gp: np.ndarray, threshold: float) -> tuple[float, float, float]:
    """(precision, recall, F-score) from the squared nearest distances of each side, (N,), (M,)."""
    precision = float((np.sqrt(d_pg) < threshold).mean())
    recall = float((np.sqrt(d_gp) < threshold).mean())
    return precision, recall, 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def fscore_terms(pred: np.ndarray, gt: np.ndarray, threshold: float = FSCORE_THRESHOLD) -> tuple[float, float, float]:
    """(precision, recall, F-score) of pred (N, 3) against gt (M, 3) at `threshold`."""
    return dense_terms(pred, gt, threshold)[:3]


def dense_terms(pred: np.ndarray, gt: np.ndarray,
                threshold: float = FSCORE_THRESHOLD) -> tuple[float, float, float, float]:
    """(precision, recall, F-score, Chamfer x 10^3) of pred (N, 3) against gt (M, 3)."""
    _, sq_pg = nearest_neighbors(_t(pred), _t(gt))
    _, sq_gp = nearest_neighbors(_t(gt), _t(pred))
    d_pg, d_gp = sq_pg[0].double().numpy(), sq_gp[0].double().numpy()
    return (*_shares(d_pg, d_gp, threshold), float(CHAMFER_SCALE * 0.5 * (d_pg.mean() + d_gp.mean())))


def fscore_ceiling(gt: np.ndarray, threshold: float = FSCORE_THRESHOLD, pred_points: int | None = None) -> float:
    """The F-score a perfect reconstruction would get against the ground-truth samples gt
    (M, 3), sampled at `pred_points` points (None: densely). Its precision is the share of the
    surface within `threshold` of some ground-truth sample, its recall the same share for its
    own samples. Both are estimated from the ground truth alone: c, the share of one half of it
    within `threshold` of the other half, is the share at half its density; for samples spread
    independently over a locally flat surface the share missed falls as exp(-density x pi
    threshold^2), so at density x k it is (1 - c)^(2k). Checked against perfect reconstructions
    of generated chairs, vessels and parts at 2,500 to 30,000 points: within 0.015 of their
    actual F-score."""
    if len(gt) < 4:
        return 0.0
    half = len(gt) // 2
    _, sq = nearest_neighbors(_t(gt[:half]), _t(gt[half:2 * half]))
    missed = 1.0 - float((sq[0].double().sqrt() < threshold).double().mean())
    precision = 1.0 - missed ** 2
    recall = 1.0 if pred_points is None else 1.0 - missed ** (2 * pred_points / len(gt))
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def surface_scores(
    pred: np.ndarray, pred_normals: np.ndarray, gt: np.ndarray, gt_normals: np.ndarray,
    threshold: float = FSCORE_THRESHOLD, dense: tuple[np.ndarray, np.ndarray] | None = None,
) -> ShapeScores:
    """Scores of one reconstruction. pred: (N, 3), gt: (M, 3), normals unit length. `dense`:
    (pred, gt) samples for the F-score, precision, coverage and `chamfer_dense` (denser than
    the Chamfer's, see the module's doc), (N', 3) and (M', 3); without it the first three are
    scored on pred and gt, and there is no `chamfer_dense`."""
    idx_pg, sq_pg = nearest_neighbors(_t(pred), _t(gt))
    idx_gp, sq_gp = nearest_neighbors(_t(gt), _t(pred))
    d_pg, d_gp = sq_pg[0].double().numpy(), sq_gp[0].double().numpy()
    chamfer_dense = None
    if dense is not None:
        precision, recall, fscore, chamfer_dense = dense_terms(*dense, threshold)
    else:
        precision, recall, fscore = _shares(d_pg, d_gp, threshold)
    cos_pg = np.abs((pred_normals * gt_normals[idx_pg[0].numpy()]).sum(-1))
    cos_gp = np.abs((gt_normals * pred_normals[idx_gp[0].numpy()]).sum(-1))
    return ShapeScores(
        chamfer=float(CHAMFER_SCALE * 0.5 * (d_pg.mean() + d_gp.mean())),
        fscore=fscore, precision=precision, coverage=recall,
        normal_consistency=float(0.5 * (cos_pg.mean() + cos_gp.mean())),
        fscore_ceiling=fscore_ceiling(dense[1], threshold, len(dense[0])) if dense is not None else None,
        chamfer_dense=chamfer_dense,
    )


def sample_mesh(mesh: PatchMesh, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n points spread uniformly over the templates, pushed through the decoders, with normals.

    Faces of the regular template grids all cover the same template area, so picking faces
    uniformly and a uniform point inside each is, up to the piecewise-linear mesh, the network's
    own output at uniform template samples: the point set the paper evaluates. (Area-weighting in
    3D instead would hide folded or stretched patches.) Returns points (n, 3) and unit normals
    (n, 3); a degenerate face gets a zero normal, which scores as inconsistent.
    """
    rng = np.random.default_rng(seed)
    tri = mesh.vertices[mesh.faces].astype(np.float64)  # (F, 3, 3)
    face = rng.integers(0, len(tri), n)
    u, v = rng.random((2, n))
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    t = tri[face]
    points = t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])
    cross = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])
    length = np.linalg.norm(cross, axis=1, keepdims=True)
    normals = np.where(length > 0, cross / np.maximum(length, 1e-30), 0.0)
    return points.astype(np.float32), normals.astype(np.float32)


def retrieval_chamfer(queries: np.ndarray, library: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each query cloud, the paper Chamfer to its nearest library cloud, and which one.

    queries: (Q, N, 3), library: (T, M, 3) -> (distances (Q,), indices (Q,))
    """
    lib = torch.from_numpy(np.ascontiguousarray(library, dtype=np.float32))
    best = np.empty(len(queries))
    which = np.empty(len(queries), dtype=np.int64)
    for i, q in enumerate(queries):
        qs = _t(q).expand(len(lib), -1, -1)
        scores = paper_chamfer(qs, lib).double().numpy()
        which[i] = int(scores.argmin())
        best[i] = float(scores[which[i]])
    return best, which


@dataclass
class PatchHealth:
    """Signs of AtlasNet's failure modes ("several disjoint planes", collapsed patches)."""

    area_fraction: list[float]  # share of the total surface area per patch, mean over shapes
    extent: list[float]  # bounding-box diagonal per patch, mean over shapes (unit ball)
    collapsed: list[int]  # patches that cover next to nothing

    def warnings(self, coverage: float | None = None, min_coverage: float = 0.5) -> list[str]:
        notes = []
        if self.collapsed:
            notes.append(
                f"{len(self.collapsed)} of {len(self.extent)} patches collapsed (ids "
                f"{', '.join(map(str, self.collapsed))}): they cover almost no surface"
            )
        if coverage is not None and coverage < min_coverage:
            notes.append(
                f"low coverage: only {coverage:.0%} of ground-truth points lie within "
                f"{FSCORE_THRESHOLD} of the reconstruction (torn or missing parts)"
            )
        return notes


def patch_health(meshes: list[PatchMesh], n_patches: int) -> PatchHealth:
    """Per-patch area and extent over some reconstructions; flags patches that collapsed.

    A patch is collapsed when its area is below 1% of a fair share (1/K of the total) or its
    points stay within 1% of the unit ball's diameter.
    """
    areas = np.zeros((len(meshes), n_patches))
    extents = np.zeros((len(meshes), n_patches))
    for s, mesh in enumerate(meshes):
        tri = mesh.vertices[mesh.faces].astype(np.float64)
        face_area = 0.5 * np.linalg.norm(
            np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
        face_patch = mesh.patch_ids[mesh.faces[:, 0]]
        areas[s] = np.bincount(face_patch, weights=face_area, minlength=n_patches)
        for k in range(n_patches):
            pts = mesh.vertices[mesh.patch_ids == k]
            extents[s, k] = float(np.linalg.norm(pts.max(0) - pts.min(0))) if len(pts) else 0.0
    fraction = (areas / np.maximum(areas.sum(1, keepdims=True), 1e-30)).mean(0)
    extent = extents.mean(0)
    collapsed = [k for k in range(n_patches)
                 if fraction[k] < 0.01 / n_patches or extent[k] < 2 * 0.01]
    return PatchHealth(fraction.round(6).tolist(), extent.round(6).tolist(), collapsed)
