"""`--pretrain auto`'s choice (`atlas_core.family_choice`): the family whose generated shapes are
nearest a collection's wins, every family's generated shapes choose their own family, and an
existing base wins a near tie (no pre-training for a few percent)."""

from __future__ import annotations

import numpy as np
import pytest

from atlas_core.families import family_names, family_pose_sample, generate_family
from atlas_core.family_choice import FamilyScore, choose, nearest_chamfer, score_family


def test_nearest_chamfer_is_the_chamfer_to_the_nearest_cloud() -> None:
    rng = np.random.default_rng(0)
    library = rng.normal(size=(4, 50, 3))
    queries = library[[2, 0]] + 1e-3
    distances = nearest_chamfer(queries, library)
    assert distances.shape == (2,) and np.allclose(distances, 1e3 * 3e-6, rtol=1e-6)
    far = nearest_chamfer(library[:1] + 1.0, library[1:])
    assert far[0] > 100 * distances[0]


def test_the_closer_family_wins_and_a_base_wins_a_near_tie() -> None:
    scores = [FamilyScore("a", 2.0), FamilyScore("b", 1.0), FamilyScore("c", 1.1, has_base=True)]
    chosen = choose(scores)
    assert chosen.family == "c" and "no pre-training" in chosen.reason
    assert [s.family for s in chosen.scores] == ["b", "c", "a"]
    assert choose(scores, margin=0.05).family == "b"  # outside the margin: the closer one is built
    assert choose([FamilyScore("a", 2.0, True), FamilyScore("b", 1.0)]).family == "b"
    assert choose([FamilyScore("b", 1.0, True)]).as_dict()["scores"] == [
        {"family": "b", "chamfer": 1.0, "has_base": True}]
    with pytest.raises(ValueError):
        choose([])


@pytest.mark.parametrize("family", family_names())
def test_each_familys_own_shapes_choose_it(family: str) -> None:
    collection = generate_family(family, 12, seed=77, points_per_shape=400).points  # unseen shapes
    scores = [FamilyScore(f, score_family(collection, family_pose_sample(f).points)) for f in family_names()]
    assert choose(scores).family == family, scores
