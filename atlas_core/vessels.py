"""Procedural vessels: vases, bottles, mugs, cups, bowls, jars and goblets, as closed meshes.

Layout (metres, right-handed, Y up): the vessel stands on y = 0 with its axis on Y; handles
are on the +X side (a second one on -X).

A vessel is a smooth outer profile r(y) (a monotone cubic through a few control points drawn
per kind) turned about Y. An open vessel is one closed solid with walls: the profile runs up the
outside, over a rounded rim and down the inside to a floor (the cavity may reach only part way
down, like a bottle's bore); a closed one (a lidded jar) is solid under its lid. Handles are
tubes swept along a curve from the wall and back, their ends sunk in the wall. Parts are closed
solids from atlas_core.primitives that overlap where they meet; no booleans.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import trimesh

from atlas_core.primitives import (
    Part,
    cylinder,
    ellipsoid,
    loft,
    moved,
    pick,
    revolve,
    rotation,
    shape_name,
    superellipse,
    sweep_xy,
    to_mesh,
)

__all__ = ["VesselParams", "KINDS", "HANDLES", "sample_vessel_params", "make_vessel", "generate_vessels"]

KINDS = ("vase", "bottle", "mug", "cup", "bowl", "jar", "goblet")
HANDLES = ("round", "square", "ear")

_SEGMENTS = 24  # points around the axis
_STATIONS = 30  # profile stations up the outside


@dataclass
class VesselParams:
    """Everything that defines one vessel; lengths in metres.

    Attributes:
        kind: "vase", "bottle", "mug", "cup", "bowl", "jar" or "goblet".
        height: from the floor to the rim (a lid sits above it).
        radius: the outer profile's scale: control radii are relative to it.
        profile: the outer profile's control points, bottom to top, as (y / height,
            r / radius); a monotone cubic runs through them.
        wall: wall thickness.
        cavity: how far down the inside reaches, as a fraction of the height (0 = solid).
        handles: 0, 1 or 2.
        handle_shape: "round" (a C), "square" (a D with straight upright) or "ear" (a small loop).
        handle_top, handle_bottom: where a handle meets the wall, as fractions of the height.
        handle_reach: how far a handle stands out from the wall, relative to the radius.
        handle_thickness: the handle's tube radius (at most 40% of the body's radius where it
            meets the wall).
        handle_width: the handle section's width across (along Z) over its thickness (a flat
            strap above 1).
        lid: whether a lid with a knob closes it (a jar).
    """

    kind: str
    height: float
    radius: float
    profile: tuple[tuple[float, float], ...]
    wall: float
    cavity: float
    handles: int
    handle_shape: str
    handle_top: float
    handle_bottom: float
    handle_reach: float
    handle_thickness: float
    handle_width: float
    lid: bool

    def to_dict(self) -> dict:
        """Plain JSON-serialisable dict of the parameters."""
        return asdict(self)


def _profile_for(kind: str, rng: np.random.Generator) -> tuple[list[tuple[float, float]], float]:
    """Control points (t, r) of the outer profile of one ``kind``, and how far down the
    cavity reaches (fraction of the height)."""
    u = rng.uniform
    if kind == "vase":
        style = pick(rng, ("ovoid", "cylinder", "trumpet", "gourd", "amphora"), [0.3, 0.15, 0.2, 0.15, 0.2])
        if style == "ovoid":
            belly = u(0.25, 0.6)
            neck = u(belly + 0.2, 0.92)
            rn = u(0.3, 0.7)
            points = [(0.0, u(0.4, 0.8)), (belly, 1.0), (neck, rn), (1.0, rn * u(1.0, 1.6))]
        elif style == "cylinder":
            r0 = u(0.75, 1.0)
            points = [(0.0, r0), (0.5, u(0.85, 1.0)), (1.0, u(0.85, 1.0))]
        elif style == "trumpet":
            points = [(0.0, u(0.5, 0.8)), (0.08, u(0.3, 0.45)), (u(0.3, 0.5), u(0.25, 0.4)), (1.0, 1.0)]
        elif style == "gourd":
            a, b = u(0.15, 0.3), u(0.5, 0.7)
            points = [(0.0, u(0.5, 0.7)), (a, 1.0), (0.5 * (a + b), u(0.35, 0.55)), (b, u(0.6, 0.8)),
                      (u(0.82, 0.92), u(0.2, 0.35)), (1.0, u(0.3, 0.45))]
        else:  # amphora: narrow foot, round shoulder, tall neck
            points = [(0.0, u(0.25, 0.4)), (0.06, u(0.2, 0.3)), (u(0.4, 0.6), 1.0),
                      (u(0.75, 0.8), u(0.3, 0.45)), (1.0, u(0.35, 0.55))]
        wide = min(r for _, r in points[1:]) if style != "trumpet" else 1.0
        cavity = 1.0 if points[-1][1] > 0.6 else u(0.2, 0.5) if wide < 0.5 else u(0.4, 0.9)
        return points, cavity
    if kind == "bottle":
        shoulder = u(0.4, 0.7)
        neck = min(shoulder + u(0.1, 0.25), 0.88)
        rn = u(0.18, 0.4)
        points = [(0.0, u(0.85, 0.95)), (0.03, 1.0), (shoulder, 1.0), (neck, rn), (0.95, rn), (0.97, rn * 1.2),
                  (1.0, rn * 1.15)]
        return points, 1.0 - neck + u(0.0, 0.05)
    if kind == "mug":
        style = pick(rng, ("straight", "tapered", "barrel", "flared"), [0.4, 0.2, 0.2, 0.2])
        r0 = {"straight": 1.0, "tapered": u(0.7, 0.85), "barrel": u(0.85, 0.95), "flared": u(0.75, 0.9)}[style]
        mid = {"straight": 1.0, "tapered": 0.5 * (1 + r0), "barrel": 1.0, "flared": 0.5 * (1 + r0)}[style]
        r1 = {"straight": 1.0, "tapered": 1.0, "barrel": r0, "flared": 1.0}[style]
        return [(0.0, r0 * 0.96), (0.02, r0), (0.5, mid), (1.0, r1)], 1.0
    if kind == "cup":
        r0 = u(0.4, 0.6)
        return [(0.0, r0 * 0.9), (0.06, r0 * 0.85), (0.12, r0 * 1.05), (u(0.5, 0.7), u(0.85, 0.95)), (1.0, 1.0)], 1.0
    if kind == "bowl":
        r0 = u(0.3, 0.55)
        foot = rng.random() < 0.6
        base = [(0.0, r0), (0.08, r0 * 0.92), (0.14, r0 * 1.08)] if foot else [(0.0, r0 * 0.95), (0.04, r0 * 1.05)]
        top = base[-1][0]
        belly = u(0.45, 0.8)
        return [*base, (top + belly * (1 - top), u(0.9, 0.98)), (1.0, 1.0)], 1.0
    if kind == "jar":
        shoulder = u(0.55, 0.8)
        rn = u(0.55, 0.85)
        return [(0.0, u(0.8, 0.95)), (0.04, 1.0), (shoulder, 1.0), (min(shoulder + 0.1, 0.9), rn), (1.0, rn)], 1.0
    # goblet: a foot, a stem (with a knop), a bowl
    stem = u(0.25, 0.55)
    rs = u(0.07, 0.15)
    rf = u(0.6, 0.9)
    bowl = u(0.3, 0.8)
    points = [(0.0, rf), (0.025, rf * 0.97), (0.05, rs * 1.4), (0.1, rs), (0.5 * stem, rs * u(1.0, 2.0)),
              (stem, rs), (stem + 0.1, bowl * 0.6), (stem + 0.1 + 0.5 * (0.9 - stem), bowl), (1.0, 1.0)]
    return points, 1.0 - stem - 0.1


def sample_vessel_params(rng: np.random.Generator) -> VesselParams:
    """Draw the parameters of one vessel from ``rng``: the kind, then its profile and fittings."""
    u = rng.uniform
    kind = pick(rng, KINDS, [0.22, 0.15, 0.15, 0.1, 0.15, 0.12, 0.11])
    height, slender = {
        "vase": (u(0.15, 0.6), u(0.15, 0.4)), "bottle": (u(0.15, 0.4), u(0.1, 0.22)),
        "mug": (u(0.07, 0.14), u(0.3, 0.6)), "cup": (u(0.045, 0.09), u(0.6, 1.0)),
        "bowl": (u(0.04, 0.15), u(0.9, 2.6)), "jar": (u(0.08, 0.3), u(0.25, 0.6)),
        "goblet": (u(0.1, 0.25), u(0.2, 0.45)),
    }[kind]
    radius = height * slender
    points, cavity = _profile_for(kind, rng)
    lid = kind == "jar" and rng.random() < 0.6
    if lid:
        cavity = 0.0
    if kind in ("mug", "cup"):
        handles = 1
    elif kind == "vase":
        handles = int(rng.choice([0, 1, 2], p=[0.6, 0.1, 0.3]))
    elif kind in ("jar", "bowl"):
        handles = int(rng.choice([0, 2], p=[0.75, 0.25]))
    else:
        handles = 0
    shape = pick(rng, HANDLES, [0.5, 0.3, 0.2])
    if kind in ("bowl", "jar"):
        shape = "ear"
    top, bottom = u(0.7, 0.9), u(0.15, 0.45)
    if kind == "vase":
        top, bottom = u(0.75, 0.92), u(0.4, 0.65)
    elif shape == "ear":
        top, bottom = u(0.75, 0.9), 0.0
        bottom = top - u(0.12, 0.25)
    return VesselParams(
        kind=kind,
        height=float(height),
        radius=float(radius),
        profile=tuple((float(t), float(r)) for t, r in points),
        wall=float(radius * u(0.04, 0.12) + 0.001),
        cavity=float(cavity),
        handles=handles,
        handle_shape=shape,
        handle_top=float(top),
        handle_bottom=float(bottom),
        handle_reach=float(u(0.25, 0.7) if shape != "ear" else u(0.12, 0.25)),
        handle_thickness=float(height * u(0.025, 0.05)),
        handle_width=float(u(0.7, 2.0)),
        lid=lid,
    )


# --------------------------------------------------------------------------------------------
# Profile and body


def _pchip(x: np.ndarray, y: np.ndarray, at: np.ndarray) -> np.ndarray:
    """A monotone cubic (Fritsch-Carlson) through (x, y), evaluated at ``at``: smooth, and
    never above or below its neighbouring control points (radii stay positive); flat at both
    ends."""
    h = np.diff(x)
    delta = np.diff(y) / h
    slope = np.zeros_like(y)
    for i in range(1, len(x) - 1):
        if delta[i - 1] * delta[i] > 0:
            w1, w2 = 2 * h[i] + h[i - 1], h[i] + 2 * h[i - 1]
            slope[i] = (w1 + w2) / (w1 / delta[i - 1] + w2 / delta[i])
    k = np.clip(np.searchsorted(x, at, side="right") - 1, 0, len(x) - 2)
    s = (at - x[k]) / h[k]
    h00, h10 = 2 * s**3 - 3 * s**2 + 1, s**3 - 2 * s**2 + s
    h01, h11 = -2 * s**3 + 3 * s**2, s**3 - s**2
    return h00 * y[k] + h10 * h[k] * slope[k] + h01 * y[k + 1] + h11 * h[k] * slope[k + 1]


class _Profile:
    """The outer radius as a function of height, r(y), in metres."""

    def __init__(self, p: VesselParams) -> None:
        control = np.asarray(p.profile, dtype=np.float64)
        self.t, self.r = control[:, 0], control[:, 1]
        self.height, self.radius = p.height, p.radius

    def __call__(self, y: np.ndarray) -> np.ndarray:
        t = np.clip(np.asarray(y, dtype=np.float64) / self.height, 0.0, 1.0)
        return self.radius * np.maximum(_pchip(self.t, self.r, t), 0.02)

    def stations(self, n: int) -> np.ndarray:
        """Heights (>= n) up the outside: even steps plus every control point (its corners)."""
        t = np.union1d(np.linspace(0.0, 1.0, n), self.t)
        keep = np.concatenate([[True], np.diff(t) > 1e-3])
        return t[keep] * self.height


def _body(p: VesselParams, profile: _Profile) -> Part:
    """The body: up the outside, over the rim, down the inside to the floor (or flat on top)."""
    y_out = profile.stations(_STATIONS)
    r_out = profile(y_out)
    if p.cavity <= 0.0:
        return revolve(r_out, y_out, _SEGMENTS)
    top = p.height
    floor = max(top * (1.0 - p.cavity), 1.5 * p.wall)
    # The inside: a wall in from the outside, also from the outside a little above and below
    # (so that the wall keeps its thickness where the outside turns, at a shoulder).
    y_in = np.linspace(top, floor, max(6, int(_STATIONS * (top - floor) / top) + 2))
    near = y_in[:, None] + p.wall * np.array([-1.5, -0.75, 0.0, 0.75, 1.5])
    r_in = profile(near.ravel()).reshape(near.shape).min(axis=1) - p.wall
    r_in = np.maximum(r_in, 0.25 * profile(y_in))
    # The rim: a round lip (a half circle) from the outer to the inner wall.
    lip = np.linspace(0.0, np.pi, 7)[1:-1]
    gap = r_out[-1] - r_in[0]
    r_rim = r_out[-1] - 0.5 * gap * (1.0 - np.cos(lip))
    y_rim = top + 0.5 * gap * np.sin(lip)
    radius = np.concatenate([r_out, r_rim, r_in])
    height = np.concatenate([y_out, y_rim, y_in])
    return revolve(radius, height, _SEGMENTS, start=np.array([0.0, 0.0, 0.0]), end=np.array([0.0, floor, 0.0]))


def _lid(p: VesselParams, profile: _Profile) -> list[Part]:
    """A cap over the neck with a knob on top."""
    r = float(profile(np.array([p.height]))[0])
    h = max(0.12 * p.height, 2.0 * p.wall)
    cap = moved(cylinder(r * 1.06, h, _SEGMENTS, top_radius=r * 0.9, bevel=0.15 * h), offset=(0.0, p.height + 0.3 * h, 0.0))
    knob_r = max(0.25 * r, 0.01)
    knob = moved(ellipsoid((knob_r, 0.7 * knob_r, knob_r), 14, 8), offset=(0.0, p.height + 0.8 * h + 0.5 * knob_r, 0.0))
    return [cap, knob]


def _handle(p: VesselParams, profile: _Profile) -> Part:
    """A handle on the +X side: a tube from the wall out and back into it (a cubic Bezier in
    the XY plane), its ends sunk into the wall."""
    y0, y1 = p.handle_top * p.height, p.handle_bottom * p.height
    r0, r1 = (float(v) for v in profile(np.array([y0, y1])))
    thick = min(p.handle_thickness, 0.4 * min(r0, r1))
    sink = min(0.6 * p.wall + thick**2 / min(r0, r1), 0.8 * min(r0, r1))
    reach = max(p.handle_reach * p.radius, 3.0 * thick)
    s = np.linspace(0.0, 1.0, 20)[:, None]
    for _ in range(4):
        if p.handle_shape == "square":
            c1, c2 = (r0 + reach, y0 + 0.1 * reach), (r0 + reach, y1 + 0.2 * (y0 - y1))
        elif p.handle_shape == "ear":
            c1, c2 = (r0 + reach, y0 + 0.3 * reach), (r1 + reach, y1 - 0.3 * reach)
        else:
            c1, c2 = (r0 + 1.3 * reach, y0 + 0.35 * reach), (r1 + 1.3 * reach, y1 - 0.1 * reach)
        control = np.array([(r0 - sink, y0), c1, c2, (r1 - sink, y1)])
        curve = ((1 - s) ** 3 * control[0] + 3 * (1 - s) ** 2 * s * control[1]
                 + 3 * (1 - s) * s**2 * control[2] + s**3 * control[3])
        # Clear of the body in between, else reach further.
        middle = curve[4:-4]
        if np.all(middle[:, 0] > profile(middle[:, 1]) + 1.2 * thick):
            break
        reach *= 1.5
    spine = np.stack([curve[:, 0], curve[:, 1], np.zeros(len(curve))], -1)
    section = superellipse(12, np.full(len(s), thick), np.full(len(s), thick * p.handle_width), snap=True)
    return loft(sweep_xy(spine, section))


def make_vessel(params: VesselParams) -> trimesh.Trimesh:
    """Build one vessel as ONE mesh of closed, outward-wound parts that overlap where they meet."""
    profile = _Profile(params)
    parts = [_body(params, profile)]
    if params.lid:
        parts += _lid(params, profile)
    if params.handles:
        handle = _handle(params, profile)
        parts.append(handle)
        if params.handles == 2:
            parts.append(moved(handle, rotation("y", np.pi)))
    return to_mesh(parts)


def generate_vessels(count: int, seed: int = 0) -> Iterator[tuple[str, trimesh.Trimesh, VesselParams]]:
    """Yield ``count`` vessels as ``(name, mesh, params)`` named ``vessel_0000``, ...

    Deterministic for a given ``seed``; the first ``n`` do not depend on ``count``.
    """
    rng = np.random.default_rng(seed)
    for index in range(count):
        params = sample_vessel_params(rng)
        yield shape_name("vessel", index, count), make_vessel(params), params
