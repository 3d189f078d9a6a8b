"""A trained AtlasNet scored on some shapes the way papers do, against a retrieval baseline.

Usable alone, e.g. from a notebook::

    model, config, _ = load_model(Path("model.pt").read_bytes())
    shapes, library = validation_and_library(PointCloudSet.from_bytes(data), config)
    report = evaluate(model, shapes, library)
    print(report.chamfer, report.retrieval_chamfer, report.warnings)

The scores are defined in :mod:`atlas_core.metrics`; the library is the model's own training
split, so "beats retrieval" means the network learned more than a lookup table of those shapes.

Retrieval is exact where the library is small (every pair's Chamfer, up to
EXACT_RETRIEVAL_UP_TO shapes); past that, each shape's exact Chamfer is computed only against
its `retrieval_candidates` nearest library shapes by a cheap descriptor, its distance field (the
distance from a fixed set of probe points to the nearest point of the cloud; the probes are
points of the library itself, where surfaces are), reduced to a few principal components and
searched with a KD-tree: sub-quadratic overall, exact on the candidates. `preselection_recall`
says how often that finds the shape the exact search finds (README: the figure on 200 against
2,000 swords). The report records which search ran (`retrieval_search`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from atlas_core.config import INFER, TrainConfig
from atlas_core.data import PointCloudSet, split_of
from atlas_core.meshing import PatchMesh, reconstruct
from atlas_core.metrics import (
    FSCORE_THRESHOLD,
    paper_chamfer,
    patch_health,
    retrieval_chamfer,
    sample_mesh,
    surface_scores,
)
from atlas_core.model import AtlasNet

#: Points per shape for the Chamfer distance, as the paper reports it.
EVAL_POINTS = INFER.eval_points
#: Points of a reconstruction (and at most of its ground truth) for the F-score and coverage.
FSCORE_POINTS = INFER.fscore_points
MESH_VERTICES = INFER.mesh_vertices
BATCH = 16
#: Reconstructions kept for the patch-health check: enough to see a collapse, few enough to
#: keep memory flat on large evaluation sets.
HEALTH_MESHES, HEALTH_PER_BATCH = 16, 4

#: A library of up to this many shapes is searched exactly (every pair's Chamfer).
EXACT_RETRIEVAL_UP_TO = 64
#: Past it, library shapes per evaluated shape whose exact Chamfer is computed, picked by descriptor.
RETRIEVAL_CANDIDATES = 32
#: The descriptor: distances from this many probe points (drawn from the library's points) to
#: the nearest point of a cloud, reduced to DESCRIPTOR_DIMS principal components.
PROBES, DESCRIPTOR_DIMS = 512, 32

#: on_progress(done, total, stage): shapes done of total; stage "reconstruct" or "retrieval".
ProgressCallback = Callable[[int, int, str], object]
#: One evaluated shape: its name (str) and scores (float).
Row = dict[str, Any]


@dataclass
class EvaluationReport:
    """Mean scores over the evaluated shapes, the retrieval baseline, and one row per shape.

    Per-shape rows: name, chamfer, fscore, precision, coverage, normal_consistency,
    fscore_ceiling (what a perfect reconstruction would score against that ground truth's
    samples), retrieval_chamfer and retrieved (the name of the nearest library shape, by
    Chamfer), and that shape's retrieval_fscore, retrieval_coverage,
    retrieval_normal_consistency and retrieval_chamfer_dense.
    """

    shapes: int
    retrieval_library: int
    chamfer: float
    fscore: float
    normal_consistency: float
    coverage: float
    retrieval_chamfer: float
    fscore_threshold: float
    chamfer_units: str
    collapsed_patches: list[int]
    per_shape: list[Row]
    beats_retrieval: bool
    shapes_beating_retrieval: int
    warnings: list[str]
    #: How the nearest library shape was found: "exact" (every pair) or "preselected" (the exact
    #: Chamfer of `retrieval_candidates` shapes picked by descriptor; see the module's doc).
    retrieval_search: str = "exact"
    retrieval_candidates: int | None = None
    #: The retrieved shapes scored as the model's reconstructions are (the same points).
    retrieval_fscore: float | None = None
    retrieval_coverage: float | None = None
    retrieval_normal_consistency: float | None = None
    #: The F-score a perfect reconstruction would get against these shapes' own samples (mean):
    #: below 1 where they are too sparse for the threshold (atlas_core.metrics.fscore_ceiling).
    fscore_ceiling: float | None = None
    #: Points of each reconstruction the F-score and coverage are measured on.
    fscore_points: int | None = None
    #: The Chamfer of the model and of retrieval on those dense samples (metrics' module doc:
    #: at 2,500 points the sampling's own floor dominates shapes of large area).
    chamfer_dense: float | None = None
    retrieval_chamfer_dense: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, keys in the order of the stored evaluation report."""
        return asdict(self)


def validation_and_library(own: PointCloudSet,
                           config: TrainConfig) -> tuple[PointCloudSet, PointCloudSet]:
    """The model's own validation split and its training split (the retrieval library).

    The split is the one training used (`data.split_of` with the config's rule, fraction and
    seed). The validation set is empty when the split left none (e.g. a single shape):
    evaluate on another set then.
    """
    train_idx, val_idx = split_of(own, config.val_fraction, config.seed, config.split)
    return own.subset(val_idx), own.subset(train_idx)


def subsample(data: PointCloudSet, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The same n points of every shape, seeded: (S, n, 3) points and normals.

    Shapes with fewer than n points keep all of theirs: (S, P, 3).
    """
    rng = np.random.default_rng(seed)
    pick = np.stack([rng.permutation(data.points_per_shape)[:n] for _ in range(len(data))])
    rows = np.arange(len(data))[:, None]
    return data.points[rows, pick], data.normals[rows, pick]


def dense_points(shapes: PointCloudSet, index: int, n: int = FSCORE_POINTS) -> np.ndarray:
    """Up to n of shape `index`'s own points (all of them when it has fewer), seeded by its
    index: the ground truth of its F-score. (P', 3)"""
    points = shapes.points[index]
    if len(points) <= n:
        return points
    return points[np.random.default_rng(1_000 + index).permutation(len(points))[:n]]


def _score_batch(meshes: list[PatchMesh], first: int, shapes: PointCloudSet, gt: np.ndarray,
                 gt_normals: np.ndarray, eval_points: int) -> list[Row]:
    """Rows for shapes first.. of one batch; gt, gt_normals: (S, M, 3) for all shapes (the
    Chamfer's samples); the F-score's are drawn here, dense."""
    rows: list[Row] = []
    for i, mesh in enumerate(meshes, first):
        # Seeded by the shape's index, so a shape scores the same whatever the batch size.
        pred, pred_normals = sample_mesh(mesh, eval_points, seed=i)
        pred_dense, _ = sample_mesh(mesh, FSCORE_POINTS, seed=2_000_003 + i)
        scores = surface_scores(pred, pred_normals, gt[i], gt_normals[i],
                                dense=(pred_dense, dense_points(shapes, i)))
        rows.append({"name": shapes.names[i], **scores.as_dict()})
    return rows


def _reconstruct_and_score(model: AtlasNet, shapes: PointCloudSet, gt: np.ndarray,
                           gt_normals: np.ndarray, eval_points: int, mesh_vertices: int,
                           batch: int, on_progress: ProgressCallback | None,
                           refine: dict[str, Any] | None = None) -> tuple[list[Row], list[PatchMesh]]:
    """Per-shape rows and a few meshes for patch health; gt, gt_normals: (S, M, 3)."""
    device = next(model.parameters()).device
    net_in, _ = subsample(shapes, model.config.n_points, seed=2)  # (S, n_points, 3)
    per_shape: list[Row] = []
    kept: list[PatchMesh] = []
    for start in range(0, len(shapes), batch):
        if refine is None:
            x = torch.from_numpy(net_in[start:start + batch]).to(device)
            meshes = reconstruct(model, x, mesh_vertices)
        else:
            meshes = _refined(model, shapes.points[start:start + batch], mesh_vertices, refine, device, start)
        kept.extend(meshes[:HEALTH_PER_BATCH] if len(kept) < HEALTH_MESHES else [])
        per_shape.extend(_score_batch(meshes, start, shapes, gt, gt_normals, eval_points))
        if on_progress is not None:
            on_progress(min(start + batch, len(shapes)), len(shapes), "reconstruct")
    return per_shape, kept


def _refined(model: AtlasNet, clouds: np.ndarray, mesh_vertices: int, options: dict[str, Any],
             device: torch.device, first: int) -> list[PatchMesh]:
    """Each cloud (B, P, 3) reconstructed, then fitted to its own points (atlas_core.refine) and
    trimmed to them (atlas_core.trim), as `rodin reconstruct` does: in batches, several at
    once on a CPU, cloud i (of the whole evaluation: first + i) with the random stream that
    input i of a reconstruct job gets."""
    from atlas_core.refine import batch_size, refine_parallel
    from atlas_core.trim import trim_to_input

    points = [torch.from_numpy(np.ascontiguousarray(cloud, dtype=np.float32)).to(device) for cloud in clouds]
    fits = refine_parallel(model, points, most=batch_size(model),
                           generators=[torch.Generator().manual_seed(first + i) for i in range(len(points))],
                           **options)
    return [trim_to_input(fit.mesh(mesh_vertices), cloud, INFER.trim_factor).mesh for fit, cloud in zip(fits, clouds)]


def _add_retrieval(per_shape: list[Row], shapes: PointCloudSet, gt: np.ndarray, gt_normals: np.ndarray,
                   library: PointCloudSet, eval_points: int, candidates: int = RETRIEVAL_CANDIDATES,
                   exact_up_to: int = EXACT_RETRIEVAL_UP_TO) -> tuple[str, int | None]:
    """Adds retrieval_chamfer and retrieved to every row, and the retrieved shape's other
    scores as the model's are scored (retrieval_fscore, retrieval_coverage,
    retrieval_normal_consistency; the F-score on the retrieved shape's own points, up to
    FSCORE_POINTS: a library stored sparser than that is scored at its own density); gt,
    gt_normals: (S, M, 3). Returns the search used and
    its candidates per shape (None: exact)."""
    lib, lib_normals = subsample(library, eval_points, seed=3)  # (T, M, 3) each
    distances, nearest, search = nearest_library_shapes(gt, lib, candidates, exact_up_to)
    for i, (row, dist, j) in enumerate(zip(per_shape, distances, nearest)):
        row["retrieval_chamfer"] = float(dist)
        row["retrieved"] = library.names[j]
        scores = surface_scores(lib[j], lib_normals[j], gt[i], gt_normals[i],
                                dense=(dense_points(library, int(j)), dense_points(shapes, i)))
        row["retrieval_fscore"], row["retrieval_coverage"] = scores.fscore, scores.coverage
        row["retrieval_normal_consistency"] = scores.normal_consistency
        row["retrieval_chamfer_dense"] = scores.chamfer_dense
    return search, (None if search == "exact" else min(candidates, len(lib)))


def nearest_library_shapes(queries: np.ndarray, library: np.ndarray, candidates: int = RETRIEVAL_CANDIDATES,
                           exact_up_to: int = EXACT_RETRIEVAL_UP_TO) -> tuple[np.ndarray, np.ndarray, str]:
    """For each query cloud, the Chamfer (as `metrics.retrieval_chamfer`) to its nearest library
    cloud and which one, and the search used: "exact" when the library holds at most
    `exact_up_to` clouds or `candidates` covers it, else "preselected".

    queries: (Q, N, 3), library: (T, M, 3) -> (distances (Q,), indices (Q,), search)"""
    if len(library) <= max(exact_up_to, candidates):
        distances, nearest = retrieval_chamfer(queries, library)
        return distances, nearest, "exact"
    picks = preselect(queries, library, candidates)  # (Q, k)
    lib = torch.from_numpy(np.ascontiguousarray(library, dtype=np.float32))
    best = np.empty(len(queries))
    which = np.empty(len(queries), dtype=np.int64)
    for i, (q, pick) in enumerate(zip(queries, picks)):
        qs = torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32))[None].expand(len(pick), -1, -1)
        scores = paper_chamfer(qs, lib[torch.from_numpy(pick)]).double().numpy()
        which[i] = int(pick[int(scores.argmin())])
        best[i] = float(scores.min())
    return best, which, "preselected"


def distance_field(clouds: np.ndarray, probes: np.ndarray, chunk_bytes: int = 64 << 20) -> np.ndarray:
    """(S, P, 3) clouds -> (S, R): the distance from each of the R probes to the cloud's nearest point."""
    r = torch.from_numpy(np.ascontiguousarray(probes, dtype=np.float32))
    out = np.empty((len(clouds), len(probes)), dtype=np.float32)
    step = max(1, chunk_bytes // max(1, 4 * len(probes) * clouds.shape[1]))
    for start in range(0, len(clouds), step):
        x = torch.from_numpy(np.ascontiguousarray(clouds[start:start + step], dtype=np.float32))
        out[start:start + step] = torch.cdist(r[None].expand(len(x), -1, -1), x).min(2).values.numpy()
    return out


def preselect(queries: np.ndarray, library: np.ndarray, candidates: int = RETRIEVAL_CANDIDATES,
              probes: int = PROBES, dims: int = DESCRIPTOR_DIMS, seed: int = 4) -> np.ndarray:
    """(Q, k) indices of the `candidates` library clouds nearest each query by descriptor: the
    distance field at `probes` points drawn (seeded) from the library's own points, projected on
    its first `dims` principal components, searched with a KD-tree (O(log T) a query)."""
    from scipy.spatial import cKDTree

    pool = library.reshape(-1, 3)
    rng = np.random.default_rng(seed)
    at = pool[rng.choice(len(pool), size=min(probes, len(pool)), replace=False)]
    lib_d, query_d = distance_field(library, at), distance_field(queries, at)
    mean = lib_d.mean(0)
    _, _, vt = np.linalg.svd(lib_d - mean, full_matrices=False)
    basis = vt[:dims].T
    k = min(candidates, len(library))
    _, picks = cKDTree((lib_d - mean) @ basis).query((query_d - mean) @ basis, k=k)
    return np.asarray(picks, dtype=np.int64).reshape(len(queries), k)


def preselection_recall(queries: np.ndarray, library: np.ndarray,
                        candidates: int = RETRIEVAL_CANDIDATES) -> dict[str, float]:
    """How the pre-selection compares with the exact search on these clouds (both run here):
    `recall`, the share of queries whose exact nearest library cloud is among their candidates;
    `same_chamfer`, the share whose retrieval Chamfer comes out the same; `mean_excess` and
    `max_excess`, by how much (relative) the pre-selected retrieval Chamfer exceeds the exact one."""
    exact, nearest = retrieval_chamfer(queries, library)
    found, _, _ = nearest_library_shapes(queries, library, candidates, exact_up_to=0)
    picks = preselect(queries, library, candidates)
    excess = found / np.maximum(exact, 1e-12) - 1
    return {"queries": float(len(queries)), "library": float(len(library)), "candidates": float(candidates),
            "recall": float((picks == nearest[:, None]).any(1).mean()),
            "same_chamfer": float(np.isclose(found, exact, rtol=1e-6).mean()),
            "mean_excess": float(excess.mean()), "max_excess": float(excess.max())}


def _report(per_shape: list[Row], meshes: list[PatchMesh], n_patches: int, library_size: int,
            eval_points: int, search: tuple[str, int | None] = ("exact", None)) -> EvaluationReport:
    def mean(key: str) -> float:
        return float(np.mean([r[key] for r in per_shape]))

    health = patch_health(meshes, n_patches)
    chamfer, retrieval, coverage = mean("chamfer"), mean("retrieval_chamfer"), mean("coverage")
    return EvaluationReport(
        shapes=len(per_shape),
        retrieval_library=library_size,
        chamfer=chamfer,
        fscore=mean("fscore"),
        normal_consistency=mean("normal_consistency"),
        coverage=coverage,
        retrieval_chamfer=retrieval,
        fscore_threshold=FSCORE_THRESHOLD,
        chamfer_units=(f"squared distance x 1e3, mean of both directions, {eval_points} points, "
                       "unit ball"),
        collapsed_patches=health.collapsed,
        per_shape=per_shape,
        beats_retrieval=chamfer < retrieval,
        shapes_beating_retrieval=sum(r["chamfer"] < r["retrieval_chamfer"] for r in per_shape),
        warnings=health.warnings(coverage),
        retrieval_search=search[0],
        retrieval_candidates=search[1],
        retrieval_fscore=mean("retrieval_fscore"),
        retrieval_coverage=mean("retrieval_coverage"),
        retrieval_normal_consistency=mean("retrieval_normal_consistency"),
        fscore_ceiling=mean("fscore_ceiling"),
        fscore_points=FSCORE_POINTS,
        chamfer_dense=mean("chamfer_dense"),
        retrieval_chamfer_dense=mean("retrieval_chamfer_dense"),
    )


def evaluate(model: AtlasNet, shapes: PointCloudSet, library: PointCloudSet, *,
             eval_points: int = EVAL_POINTS, mesh_vertices: int = MESH_VERTICES,
             batch: int = BATCH, on_progress: ProgressCallback | None = None,
             refine: dict[str, Any] | None = None, retrieval_candidates: int = RETRIEVAL_CANDIDATES,
             exact_retrieval_up_to: int = EXACT_RETRIEVAL_UP_TO) -> EvaluationReport:
    """Scores `model` on `shapes` and compares it with retrieval from `library`.

    shapes: S evaluated clouds (points (S, P, 3) in the unit ball); library: T clouds, usually
    the model's training split (see :func:`validation_and_library`). Each shape is encoded from
    `model.config.n_points` of its points, meshed with about `mesh_vertices` vertices, and
    scored on `eval_points` points sampled from the mesh against as many of its own (Chamfer,
    normal consistency) and on FSCORE_POINTS of them against up to as many of its own (F-score,
    precision, coverage; `fscore_ceiling` says what those allow); the model
    runs on whichever device its weights are on. Subsampling is seeded, so repeated calls agree.
    `on_progress(done, total, stage)` is called after every batch ("reconstruct") and once
    before retrieval ("retrieval"). With `refine` (keyword arguments of
    `atlas_core.refine.refine`), each reconstruction is first fitted to the shape's own points,
    as `rodin reconstruct` does by default: the scores are then those of what a user gets.
    Retrieval searches a library of up to `exact_retrieval_up_to` shapes exactly, a larger one
    through `retrieval_candidates` pre-selected shapes per evaluated shape (`retrieval_search`
    in the report says which).
    """
    if len(shapes) == 0 or len(library) == 0:
        raise ValueError(f"evaluation needs shapes and a library, got {len(shapes)} shapes and "
                         f"{len(library)} library shapes")
    gt, gt_normals = subsample(shapes, eval_points, seed=1)  # (S, M, 3) each
    per_shape, meshes = _reconstruct_and_score(model, shapes, gt, gt_normals, eval_points,
                                               mesh_vertices, batch, on_progress, refine)
    if on_progress is not None:
        on_progress(len(shapes), len(shapes), "retrieval")
    search = _add_retrieval(per_shape, shapes, gt, gt_normals, library, eval_points, retrieval_candidates,
                            exact_retrieval_up_to)
    return _report(per_shape, meshes, model.config.n_patches, len(library), eval_points, search)
