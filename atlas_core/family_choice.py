"""Which procedural family's base model a collection should be fine-tuned from (`--pretrain auto`).

A base pre-trained on a family reconstructs shapes like that family's well and others poorly,
so the family whose generated shapes come closest to the collection's is the most promising
base. The score needs no base model and no torch: for each of the collection's shapes (a fixed
sample of at most `SHAPES`), the Chamfer distance to its nearest shape in a fixed sample of the
family (`families.family_pose_sample`, turned to lie as the collection does), averaged:

    score(family) = mean over collection shapes s of  min over family shapes f of  Chamfer(s, f)

(×10³, the paper's Chamfer: the mean squared nearest-neighbour distance of each direction,
averaged over the two), both clouds normalised to the unit ball as ingestion leaves them. It
is retrieval from the family: a family that holds near neighbours of every shape of the
collection spans a shape space the collection lies in. It costs about a second per family on
two cores, against minutes to an hour to pre-train a base, which is why it decides which base
is built first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Shapes of the collection scored (a seeded sample of a larger one) and points per cloud.
SHAPES, POINTS = 48, 300
#: A family whose base exists already wins over a better-scoring family without one unless the
#: better one scores at least this much lower (relative): pre-training a base costs minutes to
#: an hour, and a near tie does not pay for it.
REUSE_MARGIN = 0.15


def _sample(clouds: np.ndarray, shapes: int, points: int, seed: int) -> np.ndarray:
    """(S, N, 3) -> (min(S, shapes), min(N, points), 3): a seeded subset of shapes and of points."""
    rng = np.random.default_rng(seed)
    if len(clouds) > shapes:
        clouds = clouds[np.sort(rng.choice(len(clouds), shapes, replace=False))]
    if clouds.shape[1] > points:
        clouds = clouds[:, rng.choice(clouds.shape[1], points, replace=False)]
    return np.ascontiguousarray(clouds, dtype=np.float64)


def nearest_chamfer(queries: np.ndarray, library: np.ndarray) -> np.ndarray:
    """For each query cloud, the Chamfer (×10³, as `atlas_core.metrics.paper_chamfer`) to its
    nearest library cloud.

    queries: (Q, N, 3), library: (T, M, 3) -> (Q,)"""
    from scipy.spatial import cKDTree

    query_trees = [cKDTree(q) for q in queries]
    library_trees = [cKDTree(c) for c in library]
    best = np.full(len(queries), np.inf)
    for i, (q, q_tree) in enumerate(zip(queries, query_trees)):
        for c, c_tree in zip(library, library_trees):
            forward = np.square(c_tree.query(q)[0]).mean()
            if 0.5 * forward >= best[i]:  # the other direction only adds: it cannot win
                continue
            best[i] = min(best[i], 0.5 * (forward + np.square(q_tree.query(c)[0]).mean()))
    return 1e3 * best


@dataclass(frozen=True)
class FamilyScore:
    """One family's fit to a collection: `chamfer`, the mean nearest-family-shape Chamfer (×10³,
    lower is closer); `has_base`, whether a base model for it exists already."""

    family: str
    chamfer: float
    has_base: bool = False


@dataclass(frozen=True)
class Choice:
    """The family chosen and why: every family's score, best first, and the reason in words."""

    family: str
    scores: tuple[FamilyScore, ...]
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"family": self.family, "reason": self.reason,
                "scores": [{"family": s.family, "chamfer": round(s.chamfer, 4), "has_base": s.has_base}
                           for s in self.scores]}


def score_family(collection: np.ndarray, family: np.ndarray, seed: int = 0) -> float:
    """collection: (S, N, 3), family: (F, M, 3) generated shapes already turned to lie as the
    collection's do -> the mean nearest-family-shape Chamfer (×10³)."""
    queries = _sample(collection, SHAPES, POINTS, seed)
    library = _sample(family, len(family), POINTS, seed + 1)
    return float(nearest_chamfer(queries, library).mean())


def choose(scores: Sequence[FamilyScore], margin: float = REUSE_MARGIN) -> Choice:
    """The best-scoring family, unless a family with a base scores within `margin` of it."""
    if not scores:
        raise ValueError("no family to choose from")
    ranked = tuple(sorted(scores, key=lambda s: s.chamfer))
    best = ranked[0]
    runner = ranked[1] if len(ranked) > 1 else None
    ahead = "" if runner is None else \
        f" ({best.chamfer:.3g} against {runner.chamfer:.3g} for {runner.family}, {runner.chamfer / max(best.chamfer, 1e-12):.2f}x)"
    if not best.has_base:
        reusable = next((s for s in ranked if s.has_base and s.chamfer <= best.chamfer * (1 + margin)), None)
        if reusable is not None:
            return Choice(reusable.family, ranked,
                          f"the {reusable.family} base exists and its shapes are within {margin:.0%} of the "
                          f"closest family, {best.family} ({reusable.chamfer:.3g} against {best.chamfer:.3g}): "
                          "no pre-training needed")
    return Choice(best.family, ranked, f"the {best.family} family's shapes are the closest to the collection's{ahead}")
