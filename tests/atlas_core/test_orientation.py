"""A collection's pose, and the turn that makes a generated family lie as a user's shapes do."""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import asdict

import numpy as np
import pytest

from atlas_core.families import PretrainRecipe, family_pose_sample, family_source, generate_family
from atlas_core.orientation import IDENTITY, describe, frame, long_axis, turn_between


def _turned(points: np.ndarray, turn: tuple[tuple[int, ...], ...]) -> np.ndarray:
    """points: (S, N, 3) turned by the matrix: each point p -> turn @ p."""
    return points @ np.asarray(turn, dtype=np.float64).T


def _proper_turns() -> list[tuple[tuple[int, ...], ...]]:
    turns = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            m = np.zeros((3, 3), dtype=int)
            for row, (col, sign) in enumerate(zip(perm, signs)):
                m[row, col] = sign
            if round(np.linalg.det(m)) == 1:
                turns.append(tuple(tuple(int(v) for v in r) for r in m))
    return turns


@pytest.fixture(scope="module")
def family() -> np.ndarray:
    return family_pose_sample("swords").points


@pytest.fixture(scope="module")
def users() -> np.ndarray:
    """30 other swords, as a user's collection (another seed than the pose sample)."""
    return generate_family("swords", 30, seed=2, points_per_shape=800).points


def test_generated_swords_lie_along_y(family: np.ndarray) -> None:
    assert long_axis(family) == "+y"
    assert frame(family)[:, 0].tolist() == [0, 1, 0]


def test_a_collection_posed_like_the_family_needs_no_turn(family: np.ndarray, users: np.ndarray) -> None:
    assert turn_between(family, users) == IDENTITY
    assert describe(IDENTITY) == "identity"


def test_the_turn_brings_the_family_onto_a_turned_collection(family: np.ndarray, users: np.ndarray) -> None:
    """For the turns that move the long axis (the one whose direction the data fixes), the
    family turned by the answer lies along the same signed axis as the user's shapes."""
    for turn in _proper_turns():
        theirs = _turned(users, turn)
        found = turn_between(family, theirs)
        assert round(np.linalg.det(np.asarray(found))) == 1  # never a mirror
        assert long_axis(_turned(family, found)) == long_axis(theirs), (turn, found)


def test_blade_along_minus_x() -> None:
    quarter = ((0, -1, 0), (1, 0, 0), (0, 0, 1))  # about z: y -> -x, x -> y
    theirs = generate_family("swords", 30, seed=2, points_per_shape=800, turn=quarter).points
    assert long_axis(theirs) == "-x"
    assert turn_between(family_pose_sample("swords").points, theirs) == quarter
    assert describe(quarter) == "x->y y->-x z->z"


def test_a_turn_is_part_of_the_recipe_and_of_the_source_text() -> None:
    quarter = ((0, -1, 0), (1, 0, 0), (0, 0, 1))
    plain, turned = PretrainRecipe(), PretrainRecipe(turn=quarter)
    architecture = {"n_patches": 10}
    assert plain.key(architecture) != turned.key(architecture)
    # The key of an unturned recipe is the one bases registered before turns existed have.
    described = {k: v for k, v in asdict(plain).items() if k not in ("finetune", "turn")}
    before = json.dumps({"recipe": described, "architecture": architecture}, sort_keys=True)
    assert plain.key(architecture) == hashlib.sha256(before.encode()).hexdigest()[:16]
    assert family_source("swords", 5, 1) == "procedural swords (count=5, seed=1)"
    assert family_source("swords", 5, 1, quarter).endswith("turned x->y y->-x z->z)")
