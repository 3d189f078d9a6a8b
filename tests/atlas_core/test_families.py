"""The procedural families (atlas_core.families): every family deterministic from its seed,
varied, made of closed parts, and usable as training shapes; and `rodin datasets families`."""

from __future__ import annotations

import dataclasses
import hashlib
from functools import cache

import numpy as np
import pytest
import trimesh
from scipy.spatial import cKDTree

from atlas_core.families import FAMILIES, Family, describe_families, family_names
from atlas_core.mesh_io import shape_from_mesh
from tests.conftest import Rodin

NEW = ("furniture", "vessels", "generic")


@cache
def _twenty(family: str) -> list[tuple[str, trimesh.Trimesh, object]]:
    return list(FAMILIES[family].generate(20, 0))


def test_the_families_are_registered() -> None:
    assert family_names() == ["furniture", "generic", "swords", "vessels"]
    for name, family in FAMILIES.items():
        assert isinstance(family, Family) and family.name == name
        assert family.description and "\n" not in family.description
    described = describe_families()
    assert [d["name"] for d in described] == family_names()
    assert all(set(d) == {"name", "description", "parameters"} for d in described)


@pytest.mark.parametrize("family", family_names())
def test_parameters_are_the_dataclass_fields_and_vary(family: str) -> None:
    shapes = _twenty(family)
    params = [p for _, _, p in shapes]
    fields = [f.name for f in dataclasses.fields(type(params[0]))]  # type: ignore[arg-type]
    assert list(FAMILIES[family].parameters) == fields
    for name in fields:
        values = {repr(getattr(p, name)) for p in params}
        assert len(values) > 1, f"{family}.{name} is the same in 20 shapes"


@pytest.mark.parametrize("family", family_names())
def test_deterministic_from_the_seed(family: str) -> None:
    generate = FAMILIES[family].generate
    a = list(generate(3, 7))
    b = list(generate(3, 7))
    c = list(generate(3, 8))
    for (na, ma, pa), (nb, mb, pb) in zip(a, b):
        assert na == nb and pa == pb
        assert np.array_equal(ma.vertices, mb.vertices) and np.array_equal(ma.faces, mb.faces)
    for (_, ma, _), (_, mc, _) in zip(a, c):
        assert ma.vertices.shape != mc.vertices.shape or not np.allclose(ma.vertices, mc.vertices)
    # The first shapes do not depend on how many are asked for.
    first = next(iter(generate(1, 7)))
    assert np.array_equal(first[1].vertices, a[0][1].vertices)
    # Names as `rodin datasets make` records them; meshes() drops the parameters.
    assert [name for name, _ in FAMILIES[family].meshes(3, 7)] == [name for name, _, _ in a]


@pytest.mark.parametrize("family", family_names())
def test_every_part_is_a_closed_outward_solid(family: str) -> None:
    for name, mesh, _ in _twenty(family):
        assert np.isfinite(mesh.vertices).all(), name
        assert 100 <= len(mesh.faces) <= 6000, (name, len(mesh.faces))
        assert (mesh.area_faces > 0).all(), name
        assert mesh.is_watertight and mesh.is_winding_consistent, name
        bodies = mesh.split(only_watertight=False)
        assert len(bodies) >= 2 or family == "vessels", name  # parts, not one blob
        for body in bodies:
            assert body.is_watertight and body.volume > 0, name


@pytest.mark.parametrize("family", family_names())
def test_shapes_sample_into_the_unit_ball(family: str) -> None:
    for name, mesh, _ in _twenty(family)[:5]:
        shape = shape_from_mesh(mesh, name, 500, seed=0)
        assert shape.points.shape == (500, 3) and np.isfinite(shape.points).all()
        assert np.linalg.norm(shape.points, axis=1).max() <= 1.0 + 1e-5
        assert np.allclose(np.linalg.norm(shape.normals, axis=1), 1.0, atol=1e-4)


def test_furniture_stands_on_the_floor_and_varies_in_kind() -> None:
    from atlas_core.furniture import KINDS

    shapes = _twenty("furniture")
    assert {p.kind for _, _, p in shapes} == set(KINDS)  # type: ignore[attr-defined]
    for name, mesh, p in shapes:
        assert mesh.bounds[0, 1] == pytest.approx(0.0, abs=1e-3), name  # on the floor
        top = p.height + (p.back_height if p.back != "none" else 0.0)  # type: ignore[attr-defined]
        assert mesh.bounds[1, 1] <= top + 0.02, name  # (a leaning back's posts round off)


def test_vessels_are_turned_about_y_and_hollow_when_open() -> None:
    shapes = _twenty("vessels")
    assert len({p.kind for _, _, p in shapes}) >= 5  # type: ignore[attr-defined]
    for name, mesh, p in shapes:
        assert mesh.bounds[0, 1] == pytest.approx(0.0, abs=1e-9), name
        body = mesh.split(only_watertight=False)[0]
        solid = np.pi * p.radius**2 * p.height  # type: ignore[attr-defined]
        if p.cavity > 0.5:  # type: ignore[attr-defined]
            assert body.volume < 0.9 * solid, name  # a wall, not a solid
        if not p.handles and not p.lid:  # type: ignore[attr-defined]
            x, _, z = np.ptp(mesh.vertices, axis=0)
            assert x == pytest.approx(z, rel=0.02), name


def test_generic_objects_are_connected_and_often_symmetric() -> None:
    shapes = list(FAMILIES["generic"].generate(60, 0))
    assert sum(p.symmetric for _, _, p in shapes) >= 20  # type: ignore[attr-defined]
    for name, mesh, p in shapes:
        assert 2 <= p.part_count <= 8 and p.part_count == len(mesh.split(only_watertight=False)), name  # type: ignore[attr-defined]
        if p.symmetric:  # type: ignore[attr-defined]
            # The mirror image of every vertex is a vertex.
            distance, _ = cKDTree(mesh.vertices).query(mesh.vertices * [-1.0, 1.0, 1.0])
            assert distance.max() < 1e-9 * mesh.scale, name
    # Parts overlap or touch: every part's box meets another's.
    for name, mesh, _ in shapes[:20]:
        boxes = [body.bounds for body in mesh.split(only_watertight=False)]
        for i, (lo, hi) in enumerate(boxes):
            assert any(np.all(lo <= b_hi + 1e-9) and np.all(b_lo <= hi + 1e-9)
                       for j, (b_lo, b_hi) in enumerate(boxes) if j != i), name


def test_swords_unchanged_by_the_shared_primitives() -> None:
    """The first five swords of seed 0, as they were before their lofting moved to
    atlas_core.primitives (vertices to 1e-9, faces exactly)."""
    digest = hashlib.sha256()
    for _, mesh, _ in FAMILIES["swords"].generate(5, 0):
        digest.update((np.round(mesh.vertices, 9) + 0.0).tobytes())
        digest.update(mesh.faces.astype(np.int64).tobytes())
    assert digest.hexdigest() == "3064e0acc9fddb4ec8afa8e5846a088a535922cb6a75c475cb654afd4d87137b"


def test_cli_lists_the_families(rodin: Rodin) -> None:
    out = rodin.json("datasets", "families")
    assert out == {"families": describe_families()}
    shown = rodin.cli("datasets", "families")
    assert shown.returncode == 0
    for name in family_names():
        assert name in shown.stdout


@pytest.mark.parametrize("family", NEW)
def test_cli_makes_a_dataset_of_each_new_family(rodin: Rodin, family: str) -> None:
    made = rodin.json("datasets", "make", family, "--count", "3", "--points-per-shape", "200")
    assert made["dataset"]["shapes"] == 3
    assert made["dataset"]["source"] == f"procedural {family} (count=3, seed=0)"
