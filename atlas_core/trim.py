"""Trim a refined reconstruction to its input: remove the faces that lie far from every input point.

An AtlasNet patch is a deformed square, so a patch that covers two chair legs also spans the gap
between them, and one that follows a table's top folds over its edge into empty space. Those webs
are surface the input does not have: they cost precision (furniture's refined precision 0.928
against coverage 0.873, docs/notes/refine_study.md) and read as "several disjoint planes" in a
picture. Refinement already fits the reconstruction to the input's points; trimming uses the same
points to drop what no point supports.

"Far" is relative to how densely the input samples its surface: a face goes when its centroid is
more than `factor` times the input's median nearest-neighbour spacing from every input point, so
the same factor holds for 2,500 or 100,000 input points and any shape's area. The default, 2.5
(`InferConfig.trim_factor`), was measured with two-sided refinement (docs/notes/refine_study.md,
section 8): against 3, dense F-score +0.004 to +0.009 on furniture, vessels and generic parts and
nothing on swords; at 2 swords' worst input loses true surface (0.991 -> 0.986). One-sided
patches wanted more room (3): a sheet in the middle of a thin wall is 0.015 to 0.05 from the
input, and at 2 a fifth of a sword's faces went. A trim that would remove more than
`MAX_TRIMMED` of the faces is not done: the input does not describe the reconstruction's
surface (another frame, a partial scan), and a mesh cut to ribbons would hide that.

Shapes:
    mesh.vertices (V, 3), mesh.faces (F, 3)   in the input's frame
    points (N, 3)                              the input refinement fitted
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from atlas_core.meshing import PatchMesh

#: The most of a mesh's faces a trim may remove; above it the mesh is kept whole.
MAX_TRIMMED = 0.5


@dataclass(frozen=True)
class Trim:
    """What trimming did to one reconstruction."""

    mesh: PatchMesh
    faces_before: int
    faces_removed: int
    distance: float  # the cut-off, in the input's units
    skipped: bool = False  # more than MAX_TRIMMED would have gone: the mesh is kept whole

    def as_dict(self) -> dict[str, float | int | bool]:
        return {"faces_trimmed": self.faces_removed, "faces_before_trim": self.faces_before,
                "trim_distance": round(self.distance, 6), "trim_skipped": self.skipped}


def input_spacing(points: np.ndarray, tree: cKDTree | None = None) -> float:
    """The median distance from an input point to its nearest other point. points: (N, 3);
    tree: a cKDTree of them, if one is at hand."""
    if len(points) < 2:
        return 0.0
    distances, _ = (tree if tree is not None else cKDTree(points)).query(points, k=2)
    return float(np.median(distances[:, 1]))


def trim_to_input(mesh: PatchMesh, points: np.ndarray, factor: float) -> Trim:
    """Remove the faces whose centroid is farther than `factor` x the input's spacing from every
    input point, and the vertices no face uses. factor <= 0: the mesh as it is."""
    n_faces = len(mesh.faces)
    if factor <= 0 or n_faces == 0 or len(points) < 2:
        return Trim(mesh, n_faces, 0, 0.0)
    points = np.asarray(points, dtype=np.float64)
    tree = cKDTree(points)
    distance = factor * input_spacing(points, tree)
    centroids = mesh.vertices[mesh.faces].astype(np.float64).mean(axis=1)  # (F, 3)
    nearest, _ = tree.query(centroids, distance_upper_bound=distance)
    keep = np.isfinite(nearest)  # beyond the bound the query answers inf
    removed = int(n_faces - keep.sum())
    if removed == 0:
        return Trim(mesh, n_faces, 0, distance)
    if removed > MAX_TRIMMED * n_faces:
        return Trim(mesh, n_faces, 0, distance, skipped=True)
    return Trim(_compact(mesh, mesh.faces[keep]), n_faces, removed, distance)


def _compact(mesh: PatchMesh, faces: np.ndarray) -> PatchMesh:
    """The mesh with only `faces` (F', 3) and the vertices they use, renumbered."""
    used = np.unique(faces)
    index = np.full(len(mesh.vertices), -1, dtype=np.int64)
    index[used] = np.arange(len(used))
    return PatchMesh(mesh.vertices[used], index[faces], mesh.patch_ids[used])
