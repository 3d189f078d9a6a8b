"""Tests for atlas_core.swords: every sword a closed, outward-wound mesh that looks like a sword."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
import trimesh

from atlas_core.mesh_io import shape_from_mesh
from atlas_core.swords import (
    EDGES,
    GUARDS,
    POMMELS,
    TIPS,
    SwordParams,
    generate_swords,
    make_sword,
    sample_sword_params,
)


@pytest.fixture(scope="module")
def twenty() -> list[tuple[str, trimesh.Trimesh, SwordParams]]:
    return list(generate_swords(20, seed=0))


def _check_closed_solid(mesh: trimesh.Trimesh) -> None:
    assert np.isfinite(mesh.vertices).all()
    assert mesh.is_watertight
    assert mesh.is_winding_consistent
    assert mesh.volume > 0
    assert (mesh.area_faces > 0).all()
    # Each body on its own is closed and wound outwards.
    for body in mesh.split(only_watertight=False):
        assert body.is_watertight and body.volume > 0


def test_twenty_swords_are_closed_finite_and_distinct(twenty) -> None:
    names = [name for name, _, _ in twenty]
    assert names == [f"sword_{i:04d}" for i in range(20)]
    for _, mesh, params in twenty:
        _check_closed_solid(mesh)
        assert 300 <= len(mesh.faces) <= 3000
        assert isinstance(params, SwordParams)
    keys = {tuple(sorted(params.to_dict().items())) for _, _, params in twenty}
    assert len(keys) == 20


def test_swords_stay_closed_when_vertices_are_merged(twenty) -> None:
    # Downstream code may load with process=True; bodies touching at a vertex would then fuse
    # into a non-manifold mesh.
    for _, mesh, _ in twenty[:5]:
        merged = trimesh.Trimesh(mesh.vertices, mesh.faces, process=True)
        assert len(merged.vertices) == len(mesh.vertices)
        assert merged.is_watertight


def test_layout_blade_up_hilt_down(twenty) -> None:
    for _, mesh, params in twenty:
        (x0, y0, z0), (x1, y1, z1) = mesh.bounds
        assert y1 == pytest.approx(params.blade_length - 0.5 * params.guard_height, rel=0.02) or (
            params.curvature > 0 and y1 < params.blade_length
        )
        hilt = params.guard_height + params.grip_length + params.pommel_size
        assert -y0 > 0.8 * hilt
        assert y1 - y0 > max(x1 - x0, z1 - z0), "a sword is long along +Y"
        blade = mesh.vertices[mesh.vertices[:, 1] > 0.1]
        assert np.ptp(blade[:, 2]) <= params.blade_thickness + 1e-9, "blade thickness is along Z"
        assert np.ptp(blade[:, 0]) > 0.5 * params.blade_width, "blade width is along X"


def test_seed_determinism() -> None:
    a = list(generate_swords(5, seed=11))
    b = list(generate_swords(5, seed=11))
    c = list(generate_swords(5, seed=12))
    for (_, ma, pa), (_, mb, pb) in zip(a, b):
        assert pa == pb
        np.testing.assert_array_equal(ma.vertices, mb.vertices)
        np.testing.assert_array_equal(ma.faces, mb.faces)
    assert a[0][2] != c[0][2]
    # The first swords do not depend on how many are asked for.
    assert list(generate_swords(2, seed=11))[1][2] == a[1][2]


def test_parameters_vary_visibly() -> None:
    rng = np.random.default_rng(0)
    params = [sample_sword_params(rng) for _ in range(300)]
    assert {p.edge for p in params} == set(EDGES)
    assert {p.tip for p in params} == set(TIPS)
    assert {p.guard for p in params} == set(GUARDS)
    assert {p.pommel for p in params} == set(POMMELS)
    assert any(p.fuller for p in params) and not all(p.fuller for p in params)
    assert any(p.curvature > 0.3 for p in params) and any(p.curvature == 0 for p in params)
    assert all(p.curvature == 0 for p in params if p.edge == "double")
    lengths = [p.blade_length for p in params]
    assert max(lengths) - min(lengths) > 0.3


def test_every_combination_is_closed() -> None:
    base = sample_sword_params(np.random.default_rng(3))
    for edge, tip, guard, pommel, fuller, curvature in itertools.product(
        EDGES, TIPS, GUARDS, POMMELS, (False, True), (0.0, 0.6)
    ):
        params = replace(
            base, edge=edge, tip=tip, guard=guard, pommel=pommel, fuller=fuller,
            curvature=curvature, grip_ridges=5 if fuller else 0,
        )
        mesh = make_sword(params)
        assert mesh.is_watertight, params
        assert mesh.is_winding_consistent and mesh.volume > 0, params


def test_extreme_parameters_are_closed() -> None:
    base = sample_sword_params(np.random.default_rng(5))
    extremes = [
        dict(taper=0.6, tip="pointed", tip_length=0.3 * base.blade_length),
        dict(taper=-0.15, curvature=0.6, edge="single", tip="clipped"),
        dict(fuller=True, fuller_depth=0.45, fuller_width=0.35, fuller_length=0.75),
        dict(guard="swept", guard_width=0.10, guard_curve=0.05, guard_height=0.03),
        dict(guard="cross", guard_width=0.14, guard_curve=-0.02),
    ]
    for change in extremes:
        _check_closed_solid(make_sword(replace(base, **change)))


def test_swords_feed_the_ingestion_pipeline(twenty) -> None:
    _, mesh, _ = twenty[0]
    shape = shape_from_mesh(mesh, "sword_0000", 2000, seed=0)
    assert np.isfinite(shape.points).all()
    assert np.linalg.norm(shape.points, axis=1).max() <= 1.0 + 1e-5


def test_params_are_json_ready() -> None:
    import json

    params = sample_sword_params(np.random.default_rng(0))
    assert json.loads(json.dumps(params.to_dict())) == params.to_dict()
