"""Procedural furniture: chairs, stools, benches and tables as closed meshes that vary widely.

Layout (metres, right-handed, Y up): the floor is y = 0, the seat or table top's upper face is
at y = ``height``; the width runs along X, the depth along Z, and a chair's or bench's back is
on the -Z side (it faces +Z).

Every object is a seat or top (a box, a rounded slab or a disc), carried by legs (straight,
tapered, splayed outwards, a pedestal on feet or a disc, or two side panels), with optional
aprons under the top, stretchers between the legs, a back (solid, slatted, spindles, or a
rounded shell) and arms. Parts are closed solids from atlas_core.primitives that overlap where
they meet; no booleans. A piece has a few hundred to about two thousand triangles.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import trimesh

from atlas_core.primitives import (
    Part,
    beam,
    box,
    cylinder,
    loft,
    moved,
    pick,
    rectangle,
    revolve,
    ring_tube,
    rotation,
    shape_name,
    strut,
    superellipse,
    sweep_xy,
    to_mesh,
)

__all__ = ["FurnitureParams", "KINDS", "TOPS", "LEGS", "BACKS", "STRETCHERS", "sample_furniture_params",
           "make_furniture", "generate_furniture"]

KINDS = ("chair", "stool", "bench", "table")
TOPS = ("box", "rounded", "disc")
LEGS = ("straight", "tapered", "splayed", "pedestal", "panel")
BACKS = ("none", "solid", "slatted", "spindles", "rounded")
STRETCHERS = ("none", "box", "H", "ring")


@dataclass
class FurnitureParams:
    """Everything that defines one piece; lengths in metres.

    Attributes:
        kind: "chair", "stool", "bench" or "table".
        width, depth: the seat's or top's extent along X and Z.
        height: from the floor to the top face of the seat or table top.
        top: the seat's or top's outline: "box" (square corners), "rounded" (a superellipse)
            or "disc" (a circle or an oval).
        top_thickness: the seat's or top's thickness.
        legs: "straight", "tapered", "splayed" (feet pushed outwards), "pedestal" (a turned
            column on feet or a disc) or "panel" (two side slabs).
        leg_count: legs for straight/tapered/splayed (3, 4 or 6), feet under a pedestal (0 for
            a disc base), 2 for panels.
        leg_thickness: a leg's width or diameter at its top (a pedestal's column is thicker).
        leg_taper: a leg's width at the floor relative to its top (1 = even).
        leg_section: "square" or "round".
        leg_inset: how far in from the outline the legs stand, relative to the half-size.
        splay: how far splayed legs lean out, in radians.
        apron: whether rails run under the top between the legs.
        apron_height: their height.
        stretchers: "none", "box" (rails all round), "H" (two sides and a middle) or "ring"
            (a hoop, on round pieces); at ``stretcher_height``.
        stretcher_height: as a fraction of the leg's height.
        back: "none", "solid" (a panel), "slatted" (horizontal rails), "spindles" (upright
            rods under a top rail) or "rounded" (a curved shell).
        back_height: from the seat up to the top of the back.
        back_tilt: how far the back leans back, in radians.
        back_fill: how much of the back's height a solid panel fills.
        back_wrap: how far a rounded back wraps round the seat, in radians each side.
        slats: rails or spindles in a slatted or spindle back.
        arms: whether the piece has armrests.
        arm_height: the armrests' height above the seat.
        column_shape: bulges of a pedestal's turned column, (3,) relative radii along it.
    """

    kind: str
    width: float
    depth: float
    height: float
    top: str
    top_thickness: float
    legs: str
    leg_count: int
    leg_thickness: float
    leg_taper: float
    leg_section: str
    leg_inset: float
    splay: float
    apron: bool
    apron_height: float
    stretchers: str
    stretcher_height: float
    back: str
    back_height: float
    back_tilt: float
    back_fill: float
    back_wrap: float
    slats: int
    arms: bool
    arm_height: float
    column_shape: tuple[float, float, float]

    def to_dict(self) -> dict:
        """Plain JSON-serialisable dict of the parameters."""
        return asdict(self)


def sample_furniture_params(rng: np.random.Generator) -> FurnitureParams:
    """Draw the parameters of one piece from ``rng``: the kind first, then sizes and styles
    that suit it (a stool has no back, a long bench no pedestal), each drawn broadly."""
    u = rng.uniform
    kind = pick(rng, KINDS, [0.35, 0.15, 0.15, 0.35])
    if kind == "chair":
        width = u(0.36, 0.65)
        depth = width * u(0.8, 1.25)
        height = u(0.38, 0.5) if rng.random() < 0.8 else u(0.6, 0.8)
        top = pick(rng, TOPS, [0.5, 0.35, 0.15])
        legs = pick(rng, LEGS, [0.3, 0.3, 0.2, 0.2, 0.0])
        back = pick(rng, BACKS, [0.0, 0.3, 0.25, 0.25, 0.2])
        thickness = u(0.025, 0.09)
    elif kind == "stool":
        width = u(0.26, 0.48)
        depth = width if rng.random() < 0.7 else width * u(0.6, 0.95)
        height = u(0.4, 0.85)
        top = pick(rng, TOPS, [0.25, 0.2, 0.55])
        legs = pick(rng, LEGS, [0.3, 0.25, 0.3, 0.15, 0.0])
        back = "none"
        thickness = u(0.025, 0.08)
    elif kind == "bench":
        width = u(0.8, 2.0)
        depth = u(0.28, 0.55)
        height = u(0.38, 0.5)
        top = pick(rng, TOPS, [0.6, 0.4, 0.0])
        legs = pick(rng, LEGS, [0.3, 0.25, 0.2, 0.0, 0.25])
        back = pick(rng, BACKS, [0.55, 0.15, 0.2, 0.1, 0.0])
        thickness = u(0.03, 0.1)
    else:
        width = u(0.45, 2.2)
        depth = float(np.clip(width * u(0.35, 1.0), 0.35, 1.2))
        height = float(rng.choice([u(0.3, 0.5), u(0.68, 0.78), u(0.9, 1.1)], p=[0.3, 0.5, 0.2]))
        top = pick(rng, TOPS, [0.45, 0.3, 0.25])
        legs = pick(rng, LEGS, [0.3, 0.2, 0.15, 0.15 if width < 1.3 else 0.0, 0.2])
        back = "none"
        thickness = u(0.018, 0.07)
    if top == "disc" and kind in ("table", "stool") and rng.random() < 0.6:
        depth = width  # round, not oval

    if legs == "pedestal":
        leg_count = int(rng.choice([0, 3, 4, 5]))
    elif legs == "panel":
        leg_count = 2
    elif kind in ("bench", "table") and width > 1.4 and top != "disc" and rng.random() < 0.5:
        leg_count = 6
    elif top == "disc" and rng.random() < 0.4:
        leg_count = 3
    else:
        leg_count = 4
    leg_scale = min(width, depth, 1.0)
    round_top = top == "disc" or (leg_count == 3)
    if legs == "pedestal":
        stretchers = "none"
    elif legs == "panel":
        stretchers = pick(rng, ("none", "box"), [0.4, 0.6])
    elif round_top:
        stretchers = pick(rng, ("none", "box", "ring"), [0.4, 0.2, 0.4])
    else:
        stretchers = pick(rng, ("none", "box", "H"), [0.45, 0.3, 0.25])
    arms = kind in ("chair", "bench") and back != "none" and rng.random() < (0.35 if kind == "chair" else 0.3)
    return FurnitureParams(
        kind=kind,
        width=float(width),
        depth=float(depth),
        height=float(height),
        top=top,
        top_thickness=float(thickness),
        legs=legs,
        leg_count=leg_count,
        leg_thickness=float(leg_scale * u(0.05, 0.14)),
        leg_taper=float(u(0.4, 0.8)) if legs in ("tapered", "splayed") else 1.0,
        leg_section=pick(rng, ("square", "round"), [0.5, 0.5]),
        leg_inset=float(u(0.03, 0.3)),
        splay=float(u(0.06, 0.25)) if legs == "splayed" else 0.0,
        apron=bool(legs not in ("pedestal", "panel") and rng.random() < 0.5),
        apron_height=float(u(0.04, 0.12)),
        stretchers=stretchers,
        stretcher_height=float(u(0.12, 0.45)),
        back=back,
        back_height=float(u(0.25, 0.65) if kind == "chair" else u(0.25, 0.45)),
        back_tilt=float(u(0.0, 0.3)),
        back_fill=float(u(0.35, 1.0)),
        back_wrap=float(u(0.4, 1.3)),
        slats=int(rng.integers(2, 7)),
        arms=bool(arms),
        arm_height=float(u(0.16, 0.28)),
        column_shape=(float(u(0.6, 1.6)), float(u(0.6, 1.6)), float(u(0.7, 1.8))),
    )


# --------------------------------------------------------------------------------------------
# Parts

_ROUND = 16  # points around a round leg, column or rim


def _top(p: FurnitureParams) -> Part:
    """The seat or top: a slab with slightly bevelled edges, upper face at y = height."""
    t = p.top_thickness
    w, d = 0.5 * p.width, 0.5 * p.depth
    bevel = min(0.25 * t, 0.01)
    y = p.height - t + np.array([0.0, bevel, t - bevel, t])
    inset = np.array([bevel, 0.0, 0.0, bevel])
    if p.top == "box":
        section = rectangle(w - inset, d - inset, per_side=4)
    else:
        power = 2.0 if p.top == "disc" else 5.0
        section = superellipse(40, w - inset, d - inset, power=power, snap=True)
    rings = np.stack([section[..., 0], np.broadcast_to(y[:, None], section.shape[:2]), section[..., 1]], -1)
    return loft(rings)


def _power(p: FurnitureParams) -> float:
    """The superellipse power of the top's outline (a box's is infinite)."""
    return {"box": np.inf, "rounded": 5.0, "disc": 2.0}[p.top]


def _edge_z(p: FurnitureParams, x: float) -> float:
    """How far the top's outline reaches along Z (either way) at ``x``."""
    power = _power(p)
    if np.isinf(power):
        return 0.5 * p.depth
    return 0.5 * p.depth * float(max(1.0 - abs(2.0 * x / p.width) ** power, 0.0) ** (1.0 / power))


def _round_layout(p: FurnitureParams) -> bool:
    return p.top == "disc" or p.leg_count == 3


def _leg_tops(p: FurnitureParams) -> np.ndarray:
    """Where each leg meets the top (N, 2) as (x, z); legs go around in order."""
    w, d = 0.5 * p.width, 0.5 * p.depth
    margin = 0.5 * p.leg_thickness
    if _round_layout(p):
        n = p.leg_count
        angles = 2.0 * np.pi * np.arange(n) / n + (np.pi / 4 if n == 4 else np.pi / 2)
        scale = 1.0 - p.leg_inset
        x = (w * scale - margin) * np.cos(angles)
        z = (d * scale - margin) * np.sin(angles)
        return np.stack([x, z], -1)
    cx = w - p.leg_inset * w - margin
    cz = d - p.leg_inset * d - margin
    power = _power(p)
    if not np.isinf(power):  # keep a corner leg under a rounded outline
        reach = float(((cx / w) ** power + (cz / d) ** power) ** (1.0 / power))
        cx, cz = cx * min(1.0, 0.9 / reach), cz * min(1.0, 0.9 / reach)
    if p.leg_count == 6:
        return np.array([[cx, cz], [0.0, cz], [-cx, cz], [-cx, -cz], [0.0, -cz], [cx, -cz]])
    return np.array([[cx, cz], [-cx, cz], [-cx, -cz], [cx, -cz]])


def _legs(p: FurnitureParams) -> tuple[list[Part], np.ndarray, np.ndarray]:
    """Straight, tapered or splayed legs; also each leg's top and foot points (N, 3)."""
    tops2 = _leg_tops(p)
    y_top = p.height - 0.5 * p.top_thickness
    tops = np.stack([tops2[:, 0], np.full(len(tops2), y_top), tops2[:, 1]], -1)
    feet = tops.copy()
    feet[:, 1] = 0.0
    r = 0.5 * p.leg_thickness
    if p.splay > 0.0:
        out = tops2 / np.maximum(np.linalg.norm(tops2, axis=1, keepdims=True), 1e-9)
        feet[:, [0, 2]] += out * np.tan(p.splay) * y_top
    square = p.leg_section == "square"
    parts = [strut(foot, top, r * p.leg_taper, r, segments=_ROUND, square=square) for foot, top in zip(feet, tops)]
    # A splayed leg's end is square to the leg: lift it so that its low edge is on the floor.
    parts = [moved(leg, offset=(0.0, -leg[0][:, 1].min(), 0.0)) for leg in parts]
    return parts, tops, feet


def _on_legs(tops: np.ndarray, feet: np.ndarray, fraction: float) -> np.ndarray:
    """Points on each leg's axis at ``fraction`` of the way up."""
    return feet + fraction * (tops - feet)


def _aprons(p: FurnitureParams, tops: np.ndarray) -> list[Part]:
    """Rails just under the top, from leg to leg all round."""
    y = p.height - p.top_thickness - 0.5 * p.apron_height + 0.25 * min(p.top_thickness, p.apron_height)
    th = 0.6 * p.leg_thickness
    points = tops.copy()
    points[:, 1] = y
    return [beam(a, b, p.apron_height, th) for a, b in zip(points, np.roll(points, -1, axis=0))]


def _stretchers(p: FurnitureParams, tops: np.ndarray, feet: np.ndarray) -> list[Part]:
    """Rails between the legs low down: all round, an H, or a hoop."""
    at = _on_legs(tops, feet, p.stretcher_height)
    r = 0.3 * p.leg_thickness
    if p.stretchers == "ring":
        angles = np.linspace(0.0, 2.0 * np.pi, 32, endpoint=False)
        ax, az = np.max(np.abs(at[:, 0])), np.max(np.abs(at[:, 2]))
        if len(at) == 3:  # legs at (0, z0) and (+-x1, z1): the ellipse through all three
            az = float(np.abs(at[0, 2]))
            ax = float(np.abs(at[1, 0])) / np.sqrt(max(1.0 - (at[1, 2] / az) ** 2, 1e-3))
        elif len(at) == 4:  # legs on the diagonals of an ellipse
            ax, az = ax * np.sqrt(2.0), az * np.sqrt(2.0)
        path = np.stack([ax * np.cos(angles), np.full(32, at[:, 1].mean()), az * np.sin(angles)], -1)
        return [ring_tube(path, r, segments=10)]
    if p.stretchers == "H" and len(at) == 4:
        # Legs in order: front right, front left, back left, back right.
        left = strut(at[1], at[2], r, segments=10)
        right = strut(at[0], at[3], r, segments=10)
        mid = strut(0.5 * (at[1] + at[2]), 0.5 * (at[0] + at[3]), r, segments=10)
        return [left, right, mid]
    if p.stretchers == "H" and len(at) == 6:
        return [strut(at[0], at[5], r, segments=10), strut(at[2], at[3], r, segments=10),
                strut(0.5 * (at[2] + at[3]), 0.5 * (at[0] + at[5]), r, segments=10)]
    return [strut(a, b, r, segments=10) for a, b in zip(at, np.roll(at, -1, axis=0))]


def _pedestal(p: FurnitureParams) -> list[Part]:
    """A turned column from a base (a disc or feet) up into the top."""
    size = min(p.width, p.depth)
    r = max(0.5 * p.leg_thickness * 1.8, 0.02)
    y_top = p.height - 0.5 * p.top_thickness
    base_h = 0.03 + 0.02 * min(size, 1.0)
    a = np.linspace(0.0, 1.0, 9)
    # A smooth profile through the column's three bulges (bottom, middle, top).
    c0, c1, c2 = p.column_shape
    shape = c0 * (1 - a) ** 2 + 2 * c1 * a * (1 - a) + c2 * a**2
    y = base_h * 0.5 + a * (y_top - base_h * 0.5)
    parts = [revolve(r * shape, y, _ROUND)]
    reach = 0.5 * size * (0.75 if p.kind == "table" else 0.9)
    if p.leg_count == 0:
        parts.append(moved(cylinder(reach, base_h, 2 * _ROUND, bevel=0.3 * base_h), offset=(0.0, 0.5 * base_h, 0.0)))
    else:
        for k in range(p.leg_count):
            angle = 2.0 * np.pi * k / p.leg_count + np.pi / 2
            out = np.array([np.cos(angle), 0.0, np.sin(angle)])
            start = np.array([0.0, base_h * 1.5, 0.0])
            foot = out * reach + np.array([0.0, 0.8 * base_h, 0.0])
            parts.append(beam(start, foot, base_h * 1.4, max(0.6 * r, 0.015)))
            parts.append(moved(cylinder(0.4 * base_h + 0.01, 0.5 * base_h, 10), offset=foot * [1.0, 0.0, 1.0] + [0.0, 0.25 * base_h, 0.0]))
    # A plate under the top, where the column spreads into it.
    plate = 0.5 * min(size * 0.6, 0.5)
    parts.append(moved(cylinder(plate, 0.6 * p.top_thickness, 2 * _ROUND),
                       offset=(0.0, p.height - p.top_thickness, 0.0)))
    return parts


def _panels(p: FurnitureParams) -> list[Part]:
    """Two side slabs from the floor into the top, maybe joined by a low rail."""
    t = max(p.leg_thickness * 0.6, 0.02)
    x = 0.5 * p.width * (1.0 - p.leg_inset) - 0.5 * t
    y_top = p.height - 0.5 * p.top_thickness
    depth = p.depth * (1.0 - 0.5 * p.leg_inset)
    parts = [moved(box((t, y_top, depth), bevel=0.2 * t), offset=(s * x, 0.5 * y_top, 0.0)) for s in (1.0, -1.0)]
    if p.stretchers != "none":
        y = p.stretcher_height * y_top
        parts.append(beam((x, y, 0.0), (-x, y, 0.0), max(0.08 * y_top, 0.04), t))
    return parts


def _back(p: FurnitureParams, leg_tops: np.ndarray | None) -> list[Part]:
    """The back on the -Z side, built upright and then leaned back about the seat's rear edge."""
    seat = p.height
    h = p.back_height
    post_r = 0.5 * max(p.leg_thickness, 0.025)
    if p.top == "box" and leg_tops is not None and not _round_layout(p):
        # The posts carry on from the rear legs.
        x = float(np.max(np.abs(leg_tops[:, 0])))
        z = float(np.min(leg_tops[:, 1]))
    else:
        x = (0.65 if p.top == "disc" else 0.8) * 0.5 * p.width - post_r
        z = -(_edge_z(p, x) - 1.5 * post_r)
    bottom = seat - 0.75 * p.top_thickness
    parts: list[Part] = []
    square = p.leg_section == "square"
    if p.back == "rounded":
        parts += _shell(p, bottom, h, z)
    else:
        for sx in (1.0, -1.0):
            parts.append(strut((sx * x, bottom, z), (sx * x, seat + h, z), post_r, segments=_ROUND, square=square))
        rail_t = max(0.6 * post_r, 0.012)
        if p.back == "solid":
            panel_h = h * p.back_fill
            parts.append(beam((x, seat + h - 0.5 * panel_h, z), (-x, seat + h - 0.5 * panel_h, z), panel_h, rail_t * 1.3))
        elif p.back == "slatted":
            rail_h = min(0.6 * h / p.slats, 0.08)
            for k in range(p.slats):
                y = seat + h - 0.5 * rail_h - k * (h * 0.75 / p.slats)
                parts.append(beam((x, y, z), (-x, y, z), rail_h, rail_t))
        else:  # spindles under a top rail
            rail_h = min(0.18 * h, 0.08)
            y_rail = seat + h - 0.5 * rail_h
            parts.append(beam((x, y_rail, z), (-x, y_rail, z), rail_h, rail_t * 1.4))
            for k in range(p.slats):
                sx = x * (2.0 * (k + 1) / (p.slats + 1) - 1.0)
                parts.append(strut((sx, seat - 0.5 * p.top_thickness, z), (sx, y_rail, z),
                                   0.45 * post_r, segments=8))
    if p.back_tilt > 0.0:
        pivot = np.array([0.0, seat, z])
        turn = rotation("x", -p.back_tilt)
        parts = [moved(moved(part, offset=-pivot), turn, pivot) for part in parts]
    if p.arms:
        parts += _arms(p, x, z, post_r)
    return parts


def _shell(p: FurnitureParams, bottom: float, h: float, z: float) -> list[Part]:
    """A curved back: a band swept along an arc round the rear of the seat."""
    half = 0.5 * p.width * 0.85
    # How far round it wraps, so that its ends stay on the seat.
    spread = min(p.back_wrap, 2.0 * np.arctan(0.8 * p.depth / half))
    radius = half / np.sin(spread)
    a = np.linspace(-spread, spread, 17)
    # An arc in the XY plane (its bulge towards -Y), swept with a section of (thickness, height)
    # and turned so that Y becomes -Z and Z becomes Y.
    spine = np.stack([radius * np.sin(a), -radius * (1.0 - np.cos(a)), np.zeros_like(a)], -1)
    thick = max(0.5 * p.leg_thickness, 0.012)
    height = p.height + h - bottom
    section = np.broadcast_to(
        np.array([[thick, 0.0], [0.0, 0.0], [0.0, height], [thick, height]]) - [0.5 * thick, 0.0],
        (len(a), 4, 2))
    rings = sweep_xy(spine, np.ascontiguousarray(section))
    vertices, faces = loft(rings)
    turn = rotation("x", -np.pi / 2)  # y -> -z, z -> y
    vertices = vertices @ turn.T
    vertices[:, 1] += bottom
    # Its deepest point sits at the back; its ends wrap forwards.
    vertices[:, 2] += z - np.min(vertices[:, 2])
    return [(vertices, faces)]


def _arms(p: FurnitureParams, x: float, z: float, post_r: float) -> list[Part]:
    """An armrest each side, from the back forwards, on a support rising from the seat."""
    y = p.height + p.arm_height
    front = _edge_z(p, x) - 0.5 * post_r
    back = z - p.arm_height * np.tan(p.back_tilt)
    rest_h, rest_w = max(0.5 * post_r, 0.015), max(2.0 * post_r, 0.04)
    parts: list[Part] = []
    for sx in (1.0, -1.0):
        parts.append(beam((sx * x, y, back), (sx * x, y, front), rest_h, rest_w))
        parts.append(strut((sx * x, p.height - 0.5 * p.top_thickness, front - 2 * post_r),
                           (sx * x, y, front - 2 * post_r), 0.8 * post_r, segments=10,
                           square=p.leg_section == "square"))
    return parts


def make_furniture(params: FurnitureParams) -> trimesh.Trimesh:
    """Build one piece as ONE mesh of closed, outward-wound parts that overlap where they meet."""
    p = params
    parts: list[Part] = [_top(p)]
    leg_tops = None
    if p.legs == "pedestal":
        parts += _pedestal(p)
    elif p.legs == "panel":
        parts += _panels(p)
    else:
        legs, leg_tops, feet = _legs(p)
        parts += legs
        if p.apron:
            parts += _aprons(p, leg_tops)
        if p.stretchers != "none":
            parts += _stretchers(p, leg_tops, feet)
        leg_tops = leg_tops[:, [0, 2]]
    if p.back != "none":
        parts += _back(p, leg_tops)
    return to_mesh(parts)


def generate_furniture(count: int, seed: int = 0) -> Iterator[tuple[str, trimesh.Trimesh, FurnitureParams]]:
    """Yield ``count`` pieces as ``(name, mesh, params)`` named ``furniture_0000``, ...

    Deterministic for a given ``seed``; the first ``n`` do not depend on ``count``.
    """
    rng = np.random.default_rng(seed)
    for index in range(count):
        params = sample_furniture_params(rng)
        yield shape_name("furniture", index, count), make_furniture(params), params
