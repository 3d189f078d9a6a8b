"""Procedural swords: a synthetic data set of closed meshes that look like swords and vary.

Layout of every sword (metres, right-handed):
    * the blade runs along +Y from the guard (y = 0) to the tip; its width is along X and its
      thickness along Z; a single-edged blade has its edge on the +X side and its back on -X,
      and a curved blade bends towards -X, so the edge is on the convex side (as on a sabre);
    * the guard sits just below y = 0, the grip below it and the pommel at the bottom.

Each part is built as its own closed solid by lofting a closed cross-section ring along a spine
and capping both ends (blade, guard arms, knuckle bow, grip, pommel; the lofting is shared with
the other families in atlas_core.primitives), then the parts are put in one mesh. Parts overlap where they meet instead of being joined by booleans (no boolean engine
is available); every part is closed, so the mesh as a whole is watertight with outward winding.

Uses numpy and trimesh only. A sword has roughly 1,500-2,000 triangles; generation is
vectorised per part, so 1,000 swords take a few seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import trimesh

from atlas_core.primitives import loft as _loft
from atlas_core.primitives import shape_name, to_mesh
from atlas_core.primitives import superellipse as _superellipse
from atlas_core.primitives import sweep_xy as _sweep_xy

__all__ = ["SwordParams", "sample_sword_params", "make_sword", "generate_swords"]

EDGES = ("single", "double")
TIPS = ("pointed", "rounded", "clipped")
GUARDS = ("cross", "disc", "swept")
POMMELS = ("sphere", "disc", "pear", "faceted")

# Resolution: stations along each spine x points around each cross-section.
_BLADE_BODY_STATIONS = 20
_BLADE_TIP_STATIONS = 12
_BLADE_SIDE_POINTS = 8  # per face of the blade; the ring has twice as many
_GUARD_STATIONS, _GUARD_RING = 15, 10
_BOW_STATIONS, _BOW_RING = 14, 8
_GRIP_STATIONS, _GRIP_RING = 20, 12
_POMMEL_RING = 14
# Blade edges are slightly blunt: it keeps the two faces of the cross-section apart, so no two
# vertices coincide and every triangle has area.
_EDGE_BLUNTNESS = 0.07


@dataclass
class SwordParams:
    """Everything that defines one sword; all lengths in metres.

    Attributes:
        blade_length: from the guard to the tip, along the (possibly curved) spine.
        blade_width: full width at the guard.
        blade_thickness: full thickness at the guard (back or centre ridge).
        taper: relative width lost from guard to the start of the tip (negative flares).
        curvature: total bend of the blade in radians, 0 = straight, ~0.6 = scimitar.
        edge: "single" (back on -X, edge on +X) or "double".
        tip: "pointed", "rounded" or "clipped" (a clip point: the back drops to the point).
        tip_length: length of the tip section along the spine.
        fuller: whether the blade has a groove (fuller) on both faces.
        fuller_depth: groove depth relative to the local half-thickness.
        fuller_width: groove half-width relative to the blade's half-width.
        fuller_length: groove length relative to the blade length.
        guard: "cross" (straight or gently curved quillons), "disc" (round or oval plate,
            like a tsuba), or "swept" (S-curved quillons plus a knuckle bow).
        guard_width: span of the guard along X (diameter for a disc).
        guard_height: extent of the guard along Y.
        guard_depth: extent of the guard along Z (for a disc: its roundness, oval below 3 cm).
        guard_curve: how far the quillon ends bend along Y (towards the blade when positive).
        grip_length: length of the grip along Y.
        grip_radius: radius of the grip across X (across Z it is 85% of this).
        grip_ridges: number of turns of a wrapped-cord pattern, 0 for a smooth grip.
        pommel: "sphere", "disc" (a wheel), "pear" or "faceted".
        pommel_size: pommel radius.
    """

    blade_length: float
    blade_width: float
    blade_thickness: float
    taper: float
    curvature: float
    edge: str
    tip: str
    tip_length: float
    fuller: bool
    fuller_depth: float
    fuller_width: float
    fuller_length: float
    guard: str
    guard_width: float
    guard_height: float
    guard_depth: float
    guard_curve: float
    grip_length: float
    grip_radius: float
    grip_ridges: int
    pommel: str
    pommel_size: float

    def to_dict(self) -> dict:
        """Plain JSON-serialisable dict of the parameters."""
        return asdict(self)


def sample_sword_params(rng: np.random.Generator) -> SwordParams:
    """Draw the parameters of one sword from ``rng``.

    The draws are correlated the way real swords are: curved blades are single-edged, often
    with a swept or disc guard; double-edged blades are straight and mostly pointed.
    """
    u = rng.uniform
    edge = "single" if rng.random() < 0.45 else "double"
    if edge == "single":
        curvature = float(u(0.15, 0.6)) if rng.random() < 0.6 else float(u(0.0, 0.05))
        tip = str(rng.choice(TIPS, p=[0.45, 0.1, 0.45]))
        taper = float(u(-0.15, 0.45))
        guard = str(rng.choice(GUARDS, p=[0.3, 0.3, 0.4]))
    else:
        curvature = 0.0
        tip = str(rng.choice(TIPS, p=[0.6, 0.2, 0.2]))
        taper = float(u(0.15, 0.6))
        guard = str(rng.choice(GUARDS, p=[0.6, 0.15, 0.25]))

    blade_length = float(u(0.55, 1.0))
    blade_width = float(u(0.035, 0.07))
    tip_width = blade_width * (1.0 - max(taper, 0.0))
    tip_length = float(
        tip_width * {"pointed": u(1.5, 4.0), "rounded": u(0.5, 0.9), "clipped": u(2.0, 4.0)}[tip]
    )
    tip_length = min(tip_length, 0.3 * blade_length)

    guard_width = {"cross": u(0.14, 0.30), "disc": u(0.07, 0.11), "swept": u(0.10, 0.18)}[guard]
    guard_curve = {"cross": u(-0.02, 0.05), "disc": 0.0, "swept": u(0.02, 0.05)}[guard]
    ridged = rng.random() < 0.5
    return SwordParams(
        blade_length=blade_length,
        blade_width=blade_width,
        blade_thickness=float(u(0.005, 0.011)),
        taper=taper,
        curvature=curvature,
        edge=edge,
        tip=tip,
        tip_length=tip_length,
        fuller=bool(rng.random() < 0.6),
        fuller_depth=float(u(0.25, 0.45)),
        fuller_width=float(u(0.15, 0.35)),
        fuller_length=float(u(0.35, 0.75)),
        guard=guard,
        guard_width=float(guard_width),
        guard_height=float(u(0.012, 0.03)),
        guard_depth=float(u(0.018, 0.035)),
        guard_curve=float(guard_curve),
        grip_length=float(u(0.09, 0.24)),
        grip_radius=float(u(0.011, 0.018)),
        grip_ridges=int(rng.integers(3, 9)) if ridged else 0,
        pommel=str(rng.choice(POMMELS)),
        pommel_size=float(u(0.018, 0.04)),
    )


# --------------------------------------------------------------------------------------------
# Parts


def _blade(p: SwordParams, base_y: float) -> tuple[np.ndarray, np.ndarray]:
    """The blade as one closed solid; starts at ``base_y`` (inside the guard)."""
    length = p.blade_length
    tip_start = 1.0 - p.tip_length / length  # as a fraction of the blade length
    t_body = np.linspace(0.0, tip_start, _BLADE_BODY_STATIONS, endpoint=False)
    # Denser towards the point, where the outline turns fastest; the last ring stops short of
    # the apex so that it keeps a non-zero width.
    s_tip = 0.985 * np.sin(np.linspace(0.0, 0.5 * np.pi, _BLADE_TIP_STATIONS))
    t = np.concatenate([t_body, tip_start + s_tip * (1.0 - tip_start)])
    s = np.concatenate([np.zeros_like(t_body), s_tip])  # progress through the tip, 0..1

    half = 0.5 * p.blade_width * (1.0 - p.taper * np.minimum(t, tip_start))
    w0 = 2.0 * half[-1]
    single = p.edge == "single"
    # The two outlines (back/left at -X, edge/right at +X) converge on the point at x_tip;
    # gl and gr say how much of their distance to it remains.
    if p.tip == "rounded":
        x_tip = -0.2 * w0 if single else 0.0
        gl = gr = np.sqrt(np.clip(1.0 - s**2, 0.0, 1.0))
    elif p.tip == "clipped":
        x_tip = -0.15 * w0
        gl, gr = 1.0 - s**0.8, 1.0 - s**2  # a straight clip off the back; the edge bellies up
    else:  # pointed; a single-edged blade keeps its back straight longer
        x_tip = -0.35 * w0 if single else 0.0
        gl, gr = 1.0 - s ** (2.0 if single else 1.3), 1.0 - s**1.3
    left = x_tip + (-half - x_tip) * gl
    right = x_tip + (half - x_tip) * gr

    half_thick = 0.5 * p.blade_thickness * (1.0 - 0.4 * t) * (1.0 - 0.8 * s)
    u = np.linspace(-1.0, 1.0, _BLADE_SIDE_POINTS)  # across the width, back/left to edge/right
    if single:
        profile = 1.0 - ((u + 1.0) / 2.0) ** 2.2  # full thickness at the back, thin at the edge
        groove_center = -0.35
    else:
        profile = (1.0 - u**2) ** 0.7  # lenticular
        groove_center = 0.0
    profile = _EDGE_BLUNTNESS + (1.0 - _EDGE_BLUNTNESS) * profile
    z = half_thick[:, None] * profile[None, :]
    if p.fuller:
        offset = (u - groove_center) / p.fuller_width
        bump = np.where(np.abs(offset) < 1.0, 0.5 * (1.0 + np.cos(np.pi * offset)), 0.0)
        along = np.clip(t / 0.03, 0.0, 1.0) * np.clip((p.fuller_length - t) / 0.05, 0.0, 1.0)
        z = z - p.fuller_depth * half_thick[:, None] * along[:, None] * bump[None, :]

    lateral = left[:, None] + (u[None, :] + 1.0) * 0.5 * (right - left)[:, None]
    # Top face left->right, then bottom face right->left: one closed ring per station.
    section = np.concatenate(
        [np.stack([lateral, z], axis=-1), np.stack([lateral[:, ::-1], -z[:, ::-1]], axis=-1)],
        axis=1,
    )
    spine, normal = _arc(t * length, p.curvature, length, base_y)
    rings = spine[:, None, :] + section[..., :1] * normal[:, None, :]
    rings[..., 2] += section[..., 1]
    end, end_normal = _arc(np.array([length]), p.curvature, length, base_y)
    return _loft(rings, start=spine[0], end=end[0] + x_tip * end_normal[0])


def _arc(
    arc: np.ndarray, curvature: float, length: float, base_y: float
) -> tuple[np.ndarray, np.ndarray]:
    """Points (M, 3) and unit in-plane normals (M, 3) at arc lengths ``arc`` (M,) along a
    circular arc in the XY plane that starts at (0, base_y) heading +Y and turns by
    ``curvature`` radians over ``length`` towards -X (straight when 0). The normals point to
    the +X (edge, convex) side."""
    heading = curvature * arc / length
    if curvature < 1e-9:
        x, y = np.zeros_like(arc), arc
    else:
        radius = length / curvature
        x, y = -radius * (1.0 - np.cos(heading)), radius * np.sin(heading)
    zeros = np.zeros_like(arc)
    points = np.stack([x, y + base_y, zeros], axis=-1)
    normals = np.stack([np.cos(heading), np.sin(heading), zeros], axis=-1)
    return points, normals


def _guard(p: SwordParams) -> list[tuple[np.ndarray, np.ndarray]]:
    """The guard (and for a swept hilt its knuckle bow); spans y in [-guard_height, 0]."""
    h, d = p.guard_height, p.guard_depth
    y_mid = -0.5 * h
    if p.guard == "disc":
        # A thick plate in the XZ plane, lofted along -Y, with bevelled rims.
        rx = 0.5 * p.guard_width
        rz = rx * float(np.clip(p.guard_depth / 0.03, 0.7, 1.0))  # round or oval
        y = np.array([0.0, -0.2 * h, -0.8 * h, -h])
        scale = np.array([0.88, 1.0, 1.0, 0.88])
        ring = _superellipse(_POMMEL_RING * 2, rx * scale, rz * scale, power=2.2)
        rings = np.stack(
            [ring[..., 0], np.broadcast_to(y[:, None], ring.shape[:2]), ring[..., 1]], -1
        )
        return [_loft(rings)]

    x = np.linspace(-0.5, 0.5, _GUARD_STATIONS) * p.guard_width
    r = np.abs(2.0 * x / p.guard_width)
    if p.guard == "swept":
        bend = p.guard_curve * np.sign(x) * r**2  # S-shape: one arm up, one down
    else:
        bend = p.guard_curve * r**2
    spine = np.stack([x, y_mid + bend, np.zeros_like(x)], axis=-1)
    # Quillons thin out from the block at the centre and swell a little at the ends.
    size = 1.0 - 0.35 * np.sin(np.pi * np.clip(r, 0.0, 1.0) * 0.9) + 0.25 * r**6
    section = _superellipse(_GUARD_RING, 0.5 * h * size, 0.5 * d * size, power=3.0)
    parts = [_loft(_sweep_xy(spine, section))]

    if p.guard == "swept":
        # Knuckle bow on the edge side, from the guard arm down to the pommel.
        y0 = y_mid + bend[-3]
        y1 = -h - p.grip_length - 0.3 * p.pommel_size
        x0, x1 = x[-3], 0.6 * p.pommel_size
        a = np.linspace(0.0, 1.0, _BOW_STATIONS)
        bulge = 0.25 * p.grip_length + 1.5 * p.grip_radius
        bow = np.stack(
            [x0 + (x1 - x0) * a + bulge * np.sin(np.pi * a), y0 + (y1 - y0) * a, np.zeros_like(a)],
            axis=-1,
        )
        thick = np.full(_BOW_STATIONS, 0.3 * h + 0.002)
        section = _superellipse(_BOW_RING, thick, thick * 1.2)
        parts.append(_loft(_sweep_xy(bow, section)))
    return parts


def _grip(p: SwordParams) -> tuple[np.ndarray, np.ndarray]:
    """The grip: from inside the guard down into the pommel, along -Y."""
    # Starts a little above the blade's base so their cap centres never coincide (bodies may
    # overlap, but a shared vertex would fuse them into one non-manifold body when merged).
    top = -0.3 * p.guard_height
    bottom = -p.guard_height - p.grip_length - 0.5 * p.pommel_size
    a = np.linspace(0.0, 1.0, _GRIP_STATIONS)
    y = top + (bottom - top) * a
    theta = np.linspace(0.0, 2.0 * np.pi, _GRIP_RING, endpoint=False)
    # Barrel-shaped; a wrapped cord shows as a helical ripple of the radius.
    radius = p.grip_radius * (0.9 + 0.12 * np.sin(np.pi * a))[:, None] * np.ones_like(theta)
    if p.grip_ridges:
        ripple = np.cos(2.0 * theta[None, :] - 2.0 * np.pi * p.grip_ridges * a[:, None])
        radius = radius * (1.0 + 0.06 * ripple)
    rings = np.stack(
        [
            radius * np.cos(theta),
            np.broadcast_to(y[:, None], radius.shape),
            0.85 * radius * np.sin(theta),
        ],
        axis=-1,
    )
    return _loft(rings)


def _pommel(p: SwordParams) -> tuple[np.ndarray, np.ndarray]:
    """The pommel, centred below the grip (its top overlaps the grip's end)."""
    size = p.pommel_size
    center_y = -p.guard_height - p.grip_length - 0.75 * size
    if p.pommel == "disc":
        # A wheel: a short cylinder with axis along Z and bevelled faces.
        z = np.array([-0.45, -0.3, 0.3, 0.45]) * size
        scale = np.array([0.75, 1.0, 1.0, 0.75])
        ring = _superellipse(_POMMEL_RING * 2, size * scale, size * scale)
        rings = np.stack(
            [ring[..., 0], ring[..., 1] + center_y, np.broadcast_to(z[:, None], ring.shape[:2])],
            -1,
        )
        return _loft(rings)

    if p.pommel == "faceted":
        k, polar = 8, np.array([0.5, 0.62]) * np.pi  # an octagonal gem with a narrow band
    else:
        k, polar = _POMMEL_RING, np.linspace(0.0, np.pi, 9)[1:-1]
    radius = size * np.sin(polar)
    stretch = 1.0
    if p.pommel == "pear":
        # Narrow on top where it meets the grip, full below.
        radius = radius * (0.6 + 0.2 * (1.0 - np.cos(polar)))
        stretch = 1.35
    height = stretch * size * np.cos(polar)
    ring = _superellipse(k, radius, radius)
    rings = np.stack(
        [ring[..., 0], center_y + np.broadcast_to(height[:, None], ring.shape[:2]), ring[..., 1]],
        -1,
    )
    top = np.array([0.0, center_y + stretch * size, 0.0])
    bottom = np.array([0.0, center_y - stretch * size, 0.0])
    return _loft(rings, start=top, end=bottom)


def make_sword(params: SwordParams) -> trimesh.Trimesh:
    """Build one sword as ONE watertight mesh with outward winding.

    The mesh holds several closed bodies (blade, guard, grip, pommel, maybe a knuckle bow) that
    overlap where they meet; see the module docstring for the layout.
    """
    parts = [_blade(params, base_y=-0.5 * params.guard_height)]
    parts += _guard(params)
    parts.append(_grip(params))
    parts.append(_pommel(params))
    return to_mesh(parts)


def generate_swords(
    count: int, seed: int = 0
) -> Iterator[tuple[str, trimesh.Trimesh, SwordParams]]:
    """Yield ``count`` swords as ``(name, mesh, params)`` with names ``sword_0000``, ...

    Deterministic for a given ``seed``: the same seed yields the same swords, and the first
    ``n`` swords do not depend on ``count``.
    """
    rng = np.random.default_rng(seed)
    for index in range(count):
        params = sample_sword_params(rng)
        yield shape_name("sword", index, count), make_sword(params), params
