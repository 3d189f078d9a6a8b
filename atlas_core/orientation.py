"""How a collection of shapes lies in space, and the turn that brings one collection onto another.

A base model pre-trained on a procedural family only transfers to a user's shapes that lie the
same way: measured on 30 generated swords turned to lie along X instead of the family's Y, the
fine-tuned model's Chamfer before refinement was 9.5 (x10^3) against 0.27 for swords lying along
Y (benchmarks/small_data.py's sets). Collections are usually posed consistently (a scanner's or
a modelling tool's up axis), but not necessarily along the family's axes, so `--pretrain` turns
the generated family to lie as the user's shapes do before pre-training on it.

The pose of a collection is read from all its shapes at once: the principal axes of the pooled,
centred points, each snapped to the nearest world axis, the longest signed by the third moment
of the points along it (a sword's blade side is long and thin, its hilt short and heavy, so the
distribution along its length is skewed, and the sign of the skew tells tip from pommel).
Only turns that map world axes onto world axes are considered (24 proper rotations), which is
what consistently posed collections differ by, and which no noise in the estimate can tilt.

Shapes:
    points (S, N, 3)   S shapes of N points each, each centred and in the unit ball
    frame  (3, 3)      columns: the world directions of the collection's 1st, 2nd, 3rd axes
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

#: A rotation that maps world axes onto world axes, as rows of a 3x3 matrix of 0 and +-1.
Turn = tuple[tuple[int, ...], ...]
#: The turn that changes nothing.
IDENTITY: Turn = ((1, 0, 0), (0, 1, 0), (0, 0, 1))
#: Below this third moment of the longest axis (relative to its spread cubed) a collection
#: counts as symmetric along it: its sign is left as the world's. Measured on generated swords:
#: 0.16 to 0.40 along the blade; across it 0.39 one way to 0.16 the other between samples of
#: 30, which is why only the longest axis is signed.
SYMMETRIC_SKEW = 0.1


def frame(points: np.ndarray) -> np.ndarray:
    """The collection's principal axes snapped to signed world axes.

    points: (S, N, 3) -> (3, 3) integer matrix with one +-1 per row and column; column j is the
    world direction of the j-th longest axis. The longest points where its points are skewed
    towards (+1 where it is symmetric); the others are +1 along their world axis: their skew
    is too weak to read from a few dozen shapes."""
    import numpy as np  # here, not at the top: `rodin status` imports IDENTITY and describe

    centred = points - points.mean(axis=1, keepdims=True)
    pooled = centred.reshape(-1, 3).astype(np.float64)
    _, vectors = np.linalg.eigh(pooled.T @ pooled / len(pooled))
    vectors = vectors[:, ::-1]  # longest axis first
    snapped = np.zeros((3, 3), dtype=np.int64)
    free = [0, 1, 2]
    for j in range(3):
        world = max(free, key=lambda i: abs(vectors[i, j]))
        free.remove(world)
        along = pooled[:, world]
        skew = float(np.mean(along ** 3) / (np.mean(along ** 2) ** 1.5 + 1e-12))
        snapped[world, j] = -1 if j == 0 and skew < -SYMMETRIC_SKEW else 1
    return snapped


def turn_between(source: np.ndarray, target: np.ndarray) -> Turn:
    """The proper rotation R (a signed permutation, det +1) with target ~ R @ source for the two
    collections' frames: turning the source's shapes by R makes them lie as the target's do.

    source, target: (S, N, 3) and (T, M, 3) -> R as a (3, 3) tuple of ints.
    A mirror is never returned: where the frames differ by one, the shortest axis of the
    target (a sword's thickness, the least telling) is flipped back."""
    import numpy as np

    f_source, f_target = frame(source), frame(target)
    if round(np.linalg.det(f_source)) != round(np.linalg.det(f_target)):
        f_target = f_target.copy()
        f_target[:, 2] *= -1
    turn = f_target @ f_source.T
    return tuple(tuple(int(v) for v in row) for row in turn)


def describe(turn: Turn) -> str:
    """'identity', or where each of the source's axes goes, e.g. 'x->y y->-x z->z'."""
    if turn == IDENTITY:
        return "identity"
    names = "xyz"
    parts = []
    for j in range(3):
        i = next(i for i in range(3) if turn[i][j] != 0)
        parts.append(f"{names[j]}->{'-' if turn[i][j] < 0 else ''}{names[i]}")
    return " ".join(parts)


def long_axis(points: np.ndarray) -> str:
    """The world axis the collection's longest principal axis lies along, e.g. '+y' or '-x'.

    points: (S, N, 3) -> str"""
    import numpy as np

    column = frame(points)[:, 0]
    i = int(np.flatnonzero(column)[0])
    return f"{'-' if column[i] < 0 else '+'}{'xyz'[i]}"
