"""Procedural generic objects: random compositions of primitive parts, a prior for any man-made
object that has no family of its own.

An object is 2 to 8 parts (boxes, cylinders, ellipsoids, capsules, tubes swept along a curve,
turned profiles, extruded polygons). The first is the body; each next one plays a role that
made things have (a leg, a plate, a tier stacked on, a handle, a knob, an arm, a fin) and is
attached to a part before it: it stands on one side of that part's bounding box, sized from
that box, at the side's middle or off to a side, sunk a little into the part's actual surface
(found by casting a ray), so that the object is one connected thing. Parts are aligned with the
axes as in made things, sometimes tilted; legs and knobs come in rows or 2x2 grids. Many
objects are mirror-symmetric about the plane x = 0: a part on the plane is itself symmetric
across it, any other comes with its mirror image.

Layout (metres-ish, Y up): the body is centred on the origin. Parts are closed solids from
atlas_core.primitives that overlap where they meet; no booleans.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import trimesh

from atlas_core.primitives import (
    Part,
    box,
    capsule,
    cylinder,
    ellipsoid,
    extrude,
    mirrored,
    moved,
    pick,
    ray_hits,
    revolve,
    rotation,
    shape_name,
    sweep,
    to_mesh,
)

__all__ = ["GenericParams", "PartSpec", "KINDS", "ROLES", "sample_generic_params", "make_generic",
           "generate_generic"]

KINDS = ("box", "cylinder", "ellipsoid", "capsule", "tube", "revolved", "extrusion")
#: What a part does on its parent, which sets its kinds, size, side and pose:
#: leg (long and thin, often in a grid, mostly underneath), plate (thin, covering a side),
#: tier (a smaller block stacked on a side), handle (an arch standing on a side), knob (small,
#: often in a row), arm (long and thin, sticking out), fin (a thin upright blade).
ROLES = ("leg", "plate", "tier", "handle", "knob", "arm", "fin")
FACES = ("+x", "-x", "+y", "-y", "+z", "-z")
_ROLE_WEIGHTS = (0.16, 0.14, 0.22, 0.1, 0.14, 0.16, 0.08)
_ROLE_KINDS = {
    "leg": (("cylinder", "box", "capsule", "revolved"), (0.4, 0.3, 0.15, 0.15)),
    "plate": (("box", "cylinder", "extrusion"), (0.5, 0.3, 0.2)),
    "tier": (("box", "cylinder", "revolved", "extrusion", "ellipsoid", "capsule"), (0.3, 0.25, 0.15, 0.1, 0.1, 0.1)),
    "handle": (("tube",), (1.0,)),
    "knob": (("cylinder", "ellipsoid", "revolved", "box"), (0.35, 0.3, 0.2, 0.15)),
    "arm": (("cylinder", "capsule", "box", "tube"), (0.3, 0.25, 0.25, 0.2)),
    "fin": (("box",), (1.0,)),
}
#: Which sides a role's part stands on, as weights over FACES.
_ROLE_FACES = {
    "leg": (0.05, 0.05, 0.0, 0.8, 0.05, 0.05),
    "plate": (0.1, 0.1, 0.3, 0.3, 0.1, 0.1),
    "tier": (0.1, 0.1, 0.5, 0.1, 0.1, 0.1),
    "handle": (0.2, 0.2, 0.3, 0.0, 0.15, 0.15),
    "knob": (0.15, 0.15, 0.3, 0.0, 0.2, 0.2),
    "arm": (0.3, 0.3, 0.1, 0.0, 0.15, 0.15),
    "fin": (0.15, 0.15, 0.3, 0.1, 0.15, 0.15),
}
#: Which local axes each kind of part is mirror-symmetric across (what may lie across the
#: plane of symmetry x = 0).
_MIRROR_AXES = {"box": "xyz", "cylinder": "xyz", "ellipsoid": "xyz", "capsule": "xyz", "tube": "x",
                "revolved": "xz", "extrusion": "xy"}


@dataclass(frozen=True)
class PartSpec:
    """One part (and its copies) of a generic object.

    Attributes:
        role: one of ROLES ("body" for the first part).
        kind: one of KINDS.
        size: for the body, its extents (x, y, z) in metres; for a part on a parent, its extent
            along the side's outward normal and across the side (its two other axes, in x, y,
            z order), each as a fraction of the parent's bounding box along that axis.
        shape: a kind's own draws: a box's bevel and corner power; a cylinder's top radius;
            a tube's curve (0 straight, 1 an arch, 2 an S, 3 an L) and bulge; a turned
            profile's radii; an extrusion's polygon (sides, how star-like, bevel).
        parent: which part it is attached to: an index into the parts placed before it
            (mirror images aside; the last one if there are fewer), -1 for the body.
        face: which side of its parent's bounding box it stands on ("" for the body).
        anchor: where on that side, as fractions (-1..1) of the side's half-extents along its
            two other axes, in x, y, z order (the normal's own entry is unused).
        spin: quarter turns about the normal.
        tilt: radians it leans over (0: upright on the side).
        sink: how deep it is sunk into its parent, as a fraction of its own extent there.
        repeat: 1, 2 (a row) or 4 (a 2x2 grid) copies, mirrored across the side's middle.
    """

    role: str
    kind: str
    size: tuple[float, float, float]
    shape: tuple[float, ...] = ()
    parent: int = -1
    face: str = ""
    anchor: tuple[float, float, float] = (0.0, 0.0, 0.0)
    spin: int = 0
    tilt: float = 0.0
    sink: float = 0.2
    repeat: int = 1


@dataclass
class GenericParams:
    """Everything that defines one generic object.

    Attributes:
        part_count: parts in the mesh, mirror images and copies included (2-8): drawn as how
            many to place at most, then set to how many fitted.
        symmetric: whether the object is mirror-symmetric about the plane x = 0.
        scale: the body's largest extent, in metres.
        body: the kind of the first part.
        lying: whether a turned or round body lies on its side (its axis along Z) instead of
            standing (along Y).
        kinds: the kind of each part in the mesh (mirror images and copies included).
        roles: the role of each part in the mesh, in the same order.
        parts: the drawn parts, placed in turn while they fit (a few more than part_count).
    """

    part_count: int
    symmetric: bool
    scale: float
    body: str
    lying: bool = False
    kinds: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    parts: tuple[PartSpec, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        """Plain JSON-serialisable dict of the parameters."""
        return asdict(self)


# --------------------------------------------------------------------------------------------
# One part in its own frame: centred, its own axis along Y, extents (x, y, z)


def _draw_shape(kind: str, rng: np.random.Generator) -> tuple[float, ...]:
    u = rng.uniform
    if kind == "box":
        return (float(rng.choice([0.0, u(0.02, 0.15)])), float(rng.choice([0.0, u(3.0, 8.0)], p=[0.75, 0.25])))
    if kind == "cylinder":
        return (float(rng.choice([1.0, u(0.5, 1.3)], p=[0.65, 0.35])),)
    if kind == "tube":
        return (float(rng.choice([0, 2, 3], p=[0.5, 0.2, 0.3])), float(u(0.2, 0.6)))
    if kind == "revolved":
        return tuple(float(v) for v in u(0.3, 1.0, size=int(rng.integers(3, 6))))
    if kind == "extrusion":
        return (float(rng.integers(3, 13)), float(rng.choice([0.0, u(0.15, 0.45)], p=[0.65, 0.35])),
                float(u(0.0, 0.12)))
    return ()


def _build(kind: str, size: np.ndarray, shape: tuple[float, ...]) -> Part:
    """One part of ``kind`` with extents ``size`` (x, y, z), centred on the origin."""
    sx, sy, sz = (float(s) for s in size)
    if kind == "box":
        bevel, power = shape
        return box((sx, sy, sz), bevel=bevel * min(sx, sy, sz), roundness=power or None, stations=4)
    if kind == "cylinder":
        (top,) = shape
        vertices, faces = cylinder(1.0, sy, 20, top_radius=top, stations=4)
        return vertices * [0.5 * sx / max(1.0, top), 1.0, 0.5 * sz / max(1.0, top)], faces
    if kind == "ellipsoid":
        return ellipsoid((0.5 * sx, 0.5 * sy, 0.5 * sz), 18, 10)
    if kind == "capsule":
        r = 0.5 * min(sx, sz)
        vertices, faces = capsule(max(sy, 2.0 * r), r, 16, 4)
        return vertices * [0.5 * sx / r, 1.0, 0.5 * sz / r], faces
    if kind == "tube":
        return _tube(sx, sy, sz, int(shape[0]))
    if kind == "revolved":
        t = np.linspace(0.0, 1.0, 16)
        control = np.array(shape)
        radius = np.interp(t, np.linspace(0.0, 1.0, len(control)), control)
        radius = np.convolve(np.pad(radius, 1, mode="edge"), np.ones(3) / 3.0, mode="valid")
        vertices, faces = revolve(radius, (t - 0.5) * sy, 20)
        return vertices * [0.5 * sx, 1.0, 0.5 * sz], faces
    sides, star, bevel = shape
    return _extrusion(sx, sy, sz, int(sides), star, bevel)


def _tube(diameter: float, run: float, bulge: float, curve: int) -> Part:
    """A round tube swept along a curve in its own YZ plane, ``run`` along Y: straight, an
    arch (a handle: both feet at z = 0, rising ``bulge`` to +z), an S or an L (a bend of
    ``bulge`` towards +z at the top)."""
    s = np.linspace(0.0, 1.0, 20)
    r = 0.5 * diameter
    if curve == 1:
        a = np.pi * s
        y, z = -0.5 * run * np.cos(a), (bulge - r) * np.sin(a)
    elif curve == 2:
        y, z = (s - 0.5) * run, 0.5 * bulge * np.sin(2.0 * np.pi * s)
    elif curve == 3:
        bend = min(0.5 * bulge, 0.4 * run, max(2.0 * r, 0.25 * bulge))
        a = np.linspace(0.0, 0.5 * np.pi, 7)
        y = np.concatenate([np.linspace(-0.5 * run, 0.5 * run - bend, 7)[:-1],
                            0.5 * run - bend + bend * np.sin(a),
                            np.full(6, 0.5 * run)[1:]])
        z = np.concatenate([np.zeros(6), bend * (1.0 - np.cos(a)), np.linspace(bend, bulge, 6)[1:]])
    else:
        y, z = (s - 0.5) * run, np.zeros_like(s)
    path = np.stack([np.zeros_like(y), y, z], -1)
    theta = np.linspace(0.0, 2.0 * np.pi, 12, endpoint=False)
    section = np.stack([r * np.cos(theta), r * np.sin(theta)], -1)
    vertices, faces = sweep(path, section, up=np.array([1.0, 0.0, 0.0]))
    if curve != 1:  # centred (an arch keeps its feet on z = 0)
        vertices = vertices - 0.5 * (vertices.min(axis=0) + vertices.max(axis=0))
    return vertices, faces


def _extrusion(sx: float, sy: float, sz: float, sides: int, star: float, bevel: float) -> Part:
    """A prism over a polygon in the XZ plane, symmetric across x = 0 (a regular polygon, or a
    star or gear with 5 sides or more), ``sy`` deep along Y."""
    if star > 0.0 and sides >= 5:
        angles = np.linspace(0.0, 2.0 * np.pi, 2 * sides, endpoint=False) + 0.5 * np.pi
        radius = np.where(np.arange(2 * sides) % 2 == 0, 1.0, 1.0 - star)
    else:
        angles = np.linspace(0.0, 2.0 * np.pi, sides, endpoint=False) + 0.5 * np.pi
        radius = np.ones(sides)
    polygon = np.stack([radius * np.cos(angles) * 0.5 * sx, radius * np.sin(angles) * 0.5 * sz], -1)
    # Each side in three edges: the same prism in more triangles.
    f = np.arange(3)[:, None, None] / 3.0
    polygon = ((1.0 - f) * polygon + f * np.roll(polygon, -1, axis=0)).transpose(1, 0, 2).reshape(-1, 2)
    return extrude(polygon, sy, bevel=bevel)


# --------------------------------------------------------------------------------------------
# Posing on a parent


def _turn(normal_axis: int, sign: float, own_normal: int, spin: int) -> np.ndarray:
    """The axis-aligned rotation that sends the part's own axis ``own_normal`` (1 = Y: it
    stands on the side; 2 = Z: an arch standing on its feet) onto the side's outward normal,
    turned ``spin`` quarter turns about it."""
    a = normal_axis
    frame = np.zeros((3, 3))  # column j: where own axis j goes
    frame[a, own_normal] = sign
    other = 2 if own_normal == 1 else 1
    frame[(a + 1) % 3, other] = 1.0
    rest = 3 - own_normal - other  # own X
    frame[:, rest] = np.cross(frame[:, (rest + 1) % 3], frame[:, (rest + 2) % 3])
    return rotation(frame[:, own_normal], 0.5 * np.pi * spin) @ frame


def _surface_point(parent: Part, axis: int, sign: float, at: np.ndarray) -> np.ndarray | None:
    """Where a ray along the side's outward normal through ``at`` (its other two coordinates
    matter) leaves ``parent`` last; None if it misses."""
    origin = at.copy()
    lo, hi = parent[0][:, axis].min(), parent[0][:, axis].max()
    origin[axis] = lo - 1.0 if sign > 0 else hi + 1.0
    direction = np.zeros(3)
    direction[axis] = sign
    hits = ray_hits(parent, origin, direction)
    return None if len(hits) == 0 else origin + direction * hits.max()


def _attach(part: Part, parent: Part, axis: int, sign: float, anchor: np.ndarray, sink: float,
            on_plane: bool) -> Part | None:
    """``part`` (posed, centred) moved onto ``parent``'s side at ``anchor`` (fractions of the
    side's half-extents), sunk into its surface by ``sink`` of its own extent there; None
    where the ray misses the parent."""
    lo, hi = parent[0].min(axis=0), parent[0].max(axis=0)
    centre, half = 0.5 * (lo + hi), 0.5 * (hi - lo)
    at = centre + anchor * half
    if on_plane:
        at[0] = 0.0
    point = _surface_point(parent, axis, sign, at)
    if point is None:
        return None
    depth = part[0][:, axis] * sign
    offset = point - sign * np.eye(3)[axis] * (depth.min() + sink * np.ptp(depth))
    if on_plane:
        offset[0] = 0.0
    return moved(part, offset=offset)


def _anchors(anchor: tuple[float, float, float], axis: int, repeat: int, row: int) -> list[np.ndarray]:
    """The anchors of a part's copies: one, a row mirrored across the side's middle along one
    of its axes (``row``: 0 or 1), or a 2x2 grid; copies that would coincide are one."""
    base = np.array(anchor)
    others = [k for k in range(3) if k != axis]
    flips = [np.ones(3)]
    if repeat == 2:
        flips.append(np.where(np.arange(3) == others[row], -1.0, 1.0))
    elif repeat == 4:
        flips = [np.where(np.arange(3) == others[0], a, 1.0) * np.where(np.arange(3) == others[1], b, 1.0)
                 for a in (1.0, -1.0) for b in (1.0, -1.0)]
    out: list[np.ndarray] = []
    for flip in flips:
        point = base * flip + 0.0
        if not any(np.allclose(point, other) for other in out):
            out.append(point)
    return out


def _symmetric_ok(kind: str, turn: np.ndarray) -> bool:
    """Whether a part posed by ``turn`` is itself mirror-symmetric across world x = 0 (the own
    axis that lands on world X is one it is symmetric across)."""
    own = int(np.argmax(np.abs(turn[0])))
    return abs(turn[0, own]) > 0.999 and "xyz"[own] in _MIRROR_AXES[kind]


# --------------------------------------------------------------------------------------------
# Drawing and building


def _draw_part(rng: np.random.Generator, index: int) -> PartSpec:
    """One part after the body: its role, then what suits the role."""
    u = rng.uniform
    role = str(pick(rng, ROLES, _ROLE_WEIGHTS))
    kind = str(pick(rng, *_ROLE_KINDS[role]))
    face = str(pick(rng, FACES, _ROLE_FACES[role]))
    spot = lambda: float(rng.choice([0.0, 1.0, -1.0], p=[0.5, 0.25, 0.25]) * u(0.3, 0.85))  # noqa: E731
    anchor = (spot(), spot(), spot())
    repeat, tilt = 1, 0.0
    thin = float(u(0.04, 0.15))
    if role == "leg":
        size = (float(u(0.3, 1.3)), thin, thin)
        anchor = (float(u(0.5, 0.9)), float(u(0.5, 0.9)), float(u(0.5, 0.9)))
        repeat = int(rng.choice([1, 2, 4], p=[0.15, 0.3, 0.55]))
        tilt = float(u(0.1, 0.35)) if rng.random() < 0.2 else 0.0
    elif role == "plate":
        span = float(u(0.6, 1.25))
        size = (float(u(0.05, 0.25)), span, span * float(u(0.8, 1.2)))
        anchor = (0.0, 0.0, 0.0)
    elif role == "tier":
        span = float(u(0.3, 0.9))
        size = (float(u(0.2, 1.0)), span, span * float(rng.choice([1.0, u(0.5, 1.5)])))
        if rng.random() < 0.7:
            anchor = (0.0, 0.0, 0.0)
    elif role == "handle":
        size = (float(u(0.2, 0.6)), float(u(0.35, 0.8)), float(u(0.04, 0.1)))
        repeat = int(rng.choice([1, 2], p=[0.8, 0.2]))
    elif role == "knob":
        small = float(u(0.06, 0.25))
        size = (float(u(0.05, 0.25)), small, small)
        repeat = int(rng.choice([1, 2, 4], p=[0.5, 0.3, 0.2]))
    elif role == "arm":
        size = (float(u(0.3, 1.0)), thin, thin)
        tilt = float(u(0.2, 0.6)) if rng.random() < 0.25 else 0.0
    else:  # fin
        size = (float(u(0.2, 0.7)), float(u(0.3, 0.8)), float(u(0.02, 0.08)))
        repeat = int(rng.choice([1, 2], p=[0.6, 0.4]))
    shape = (1.0, 0.0) if role == "handle" else _draw_shape(kind, rng)
    return PartSpec(role=role, kind=kind, size=size, shape=shape,
                    parent=int(rng.integers(0, index)) if rng.random() < 0.4 else 0, face=face,
                    anchor=anchor, spin=int(rng.integers(0, 4)), tilt=tilt * float(rng.choice([-1.0, 1.0])),
                    sink=float(u(0.1, 0.3)), repeat=repeat)


def sample_generic_params(rng: np.random.Generator) -> GenericParams:
    """Draw one object: its part count and symmetry, the body, then each next part. More parts
    are drawn than asked for: one that does not fit (off its parent, breaking the symmetry,
    too many copies) makes way for the next (:func:`make_generic` decides)."""
    u = rng.uniform
    part_count = int(rng.integers(2, 9))
    symmetric = bool(rng.random() < 0.6)
    scale = float(np.exp(u(np.log(0.1), np.log(1.5))))
    body = str(pick(rng, KINDS, (0.3, 0.22, 0.1, 0.1, 0.03, 0.12, 0.13)))
    ratios = np.exp(u(np.log(0.15), 0.0, size=2))
    extents = scale * rng.permutation(np.array([1.0, *ratios]))
    if body == "tube":
        extents[0] = extents[2] = scale * float(u(0.05, 0.15))
    lying = bool(body in ("cylinder", "capsule", "revolved", "tube") and rng.random() < 0.3)
    specs = [PartSpec(role="body", kind=body, size=(float(extents[0]), float(extents[1]), float(extents[2])),
                      shape=_draw_shape(body, rng))]
    specs += [_draw_part(rng, index) for index in range(1, part_count + 4)]
    return GenericParams(part_count=part_count, symmetric=symmetric, scale=scale, body=body, lying=lying,
                         parts=tuple(specs))


def _own_size(spec: PartSpec, turn: np.ndarray, parent: Part, axis: int) -> np.ndarray:
    """The part's extents in its own frame, from its role's fractions of the parent's box."""
    box_extent = np.maximum(np.ptp(parent[0], axis=0), 1e-3)
    others = [k for k in range(3) if k != axis]
    world = np.empty(3)
    world[axis] = spec.size[0] * box_extent[axis]
    world[others[0]] = spec.size[1] * box_extent[others[0]]
    world[others[1]] = spec.size[2] * box_extent[others[1]]
    if spec.role == "arm":  # it reaches out by a share of the parent's size
        world[axis] = spec.size[0] * box_extent.max()
    if spec.role in ("leg", "arm"):  # as thick as a share of its length, and fits on the side
        world[others] = min(spec.size[1] * 1.6 * world[axis], 0.45 * box_extent[others].min())
    elif spec.role == "knob":  # round: the thinner side sets it
        world[others] = min(spec.size[1] * box_extent[others[0]], spec.size[2] * box_extent[others[1]])
    if spec.role == "handle":  # own frame: (thickness, span, height)
        runs_along = int(np.argmax(np.abs(turn[:, 1])))
        span = spec.size[1] * box_extent[runs_along]
        return np.array([spec.size[2] * span, span, spec.size[0] * span])
    own = np.abs(turn.T) @ world
    if spec.kind == "tube" and spec.role != "handle":  # the bend of an S or an L
        own[2] = own[1] * spec.shape[1] if spec.shape[0] in (2, 3) else own[0]
    return own


def make_generic(params: GenericParams) -> trimesh.Trimesh:
    """Build one object as ONE mesh of closed, outward-wound parts that overlap where they
    meet; a symmetric one is symmetric part for part."""
    return to_mesh(_compose(params)[0])


def _compose(params: GenericParams) -> tuple[list[Part], list[tuple[str, str]]]:
    """The parts of the object, and each one's (kind, role) (mirror images and copies
    included): drawn parts are placed in turn while they fit ``part_count``."""
    body_spec = params.parts[0]
    size = np.array(body_spec.size)
    if body_spec.kind == "tube":  # a body tube is an arch (a hoop, a hook, a frame)
        body = _tube(size[0], size[1], 0.5 * size[1], 1)
        body = moved(body, offset=(0.0, 0.0, -0.5 * (body[0][:, 2].min() + body[0][:, 2].max())))
    else:
        body = _build(body_spec.kind, size, body_spec.shape)
    if params.lying:  # own Y onto Z: still symmetric across x = 0
        body = moved(body, rotation("x", 0.5 * np.pi))
    placed: list[tuple[Part, bool]] = [(body, True)]  # a surface, and whether it is on the plane
    meshes: list[Part] = [body]
    labels = [(body_spec.kind, "body")]
    budget = params.part_count - 1
    for spec in params.parts[1:]:
        if budget <= 0:
            break
        parent, parent_on_plane = placed[min(spec.parent, len(placed) - 1)]
        axis = "xyz".index(spec.face[1])
        sign = 1.0 if spec.face[0] == "+" else -1.0
        mirror_pairs = params.symmetric and parent_on_plane
        if mirror_pairs and axis == 0:
            sign = 1.0  # its mirror image goes on -x
        own_normal = 2 if spec.role == "handle" else 1
        spin = spec.spin
        if spec.role == "fin" or spec.kind == "tube":
            spin = spin % 2
        turn = _turn(axis, sign, own_normal, spin)
        own = _own_size(spec, turn, parent, axis)
        if spec.role == "handle":
            shape = _tube(own[0], own[1], own[2], 1)
        else:
            shape = _build(spec.kind, own, spec.shape)
        normal = np.eye(3)[axis] * sign
        copies: list[tuple[Part, bool]] = []
        for anchor in _anchors(spec.anchor, axis, spec.repeat, spin % 2):
            on_plane = mirror_pairs and axis != 0 and abs(anchor[0]) < 1e-9
            if mirror_pairs and axis != 0 and anchor[0] < -1e-9:
                continue  # the mirror image of the copy at +x
            if on_plane and not _symmetric_ok(spec.kind, turn):
                continue
            posed = turn
            if spec.tilt:  # lean away from the side's middle (splayed legs), or to one side
                away = anchor * (np.arange(3) != axis)
                if on_plane:
                    away[0] = 0.0
                if np.abs(away).max() < 1e-9:
                    away = np.eye(3)[2 if axis != 2 else 1]
                posed = rotation(np.cross(normal, away), abs(spec.tilt)) @ turn
            attached = _attach(moved(shape, posed), parent, axis, sign, anchor, spec.sink, on_plane)
            if attached is not None:
                copies.append((attached, on_plane or not params.symmetric))
        cost = sum(1 if single else 2 for _, single in copies)
        while copies and cost > budget:
            cost -= 1 if copies.pop()[1] else 2
        for copy, single in copies:
            placed.append((copy, single))
            meshes.append(copy)
            labels.append((spec.kind, spec.role))
            if not single:
                meshes.append(mirrored(copy))
                labels.append((spec.kind, spec.role))
        budget -= cost
    if len(meshes) == 1:  # nothing fitted: a post on top, on the plane
        post = _build("cylinder", np.ptp(body[0], axis=0) * [0.2, 0.4, 0.2], (1.0,))
        attached = _attach(post, body, 1, 1.0, np.zeros(3), 0.2, True)
        meshes.append(attached if attached is not None else moved(post, offset=(0.0, body[0][:, 1].max(), 0.0)))
        labels.append(("cylinder", "tier"))
    return meshes, labels


def generate_generic(count: int, seed: int = 0) -> Iterator[tuple[str, trimesh.Trimesh, GenericParams]]:
    """Yield ``count`` objects as ``(name, mesh, params)`` named ``generic_0000``, ...

    Deterministic for a given ``seed``; the first ``n`` do not depend on ``count``.
    """
    rng = np.random.default_rng(seed)
    for index in range(count):
        params = sample_generic_params(rng)
        parts, labels = _compose(params)
        # What fitted: building again from these gives the same parts.
        params = replace(params, part_count=len(parts), kinds=tuple(k for k, _ in labels),
                         roles=tuple(r for _, r in labels))
        yield shape_name("generic", index, count), to_mesh(parts), params
