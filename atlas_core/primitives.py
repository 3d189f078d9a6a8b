"""Closed solids that the procedural families build their objects from (numpy and trimesh only).

Every primitive is a *part*: ``(vertices (V, 3), faces (F, 3))`` of one closed surface wound
outwards, built by lofting rings of points (:func:`loft`) and capping both ends. An object is a
list of parts that overlap where they meet (no boolean engine is used), put in one mesh by
:func:`to_mesh`; as every part is closed, the mesh is watertight part by part.

Conventions: a primitive is built centred on the origin with its main axis along +Y (a
cylinder's axis, a capsule's length, an extrusion's depth), then posed with :func:`moved` or
:func:`mirrored`. Lengths are whatever the caller uses (the families use metres).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import TypeVar

import numpy as np
import trimesh
from numpy.typing import ArrayLike

__all__ = ["Part", "loft_faces", "loft", "sweep_xy", "superellipse", "rectangle", "revolve", "box", "cylinder",
           "ellipsoid", "capsule", "strut", "beam", "sweep", "ring_tube", "extrude", "rotation",
           "align", "moved", "mirrored", "to_mesh", "ray_hits", "pick", "shape_name"]

#: One closed surface: vertices (V, 3) float64, faces (F, 3) int64.
Part = tuple[np.ndarray, np.ndarray]
_T = TypeVar("_T")


# --------------------------------------------------------------------------------------------
# What every family's generator shares


def pick(rng: np.random.Generator, options: Sequence[_T], weights: Sequence[float]) -> _T:
    """One of `options`, drawn with probabilities proportional to `weights` (one draw of `rng`)."""
    p = np.asarray(weights, dtype=np.float64)
    return options[int(rng.choice(len(options), p=p / p.sum()))]


def shape_name(prefix: str, index: int, count: int) -> str:
    """`prefix_0007`: the index zero-padded to at least 4 digits, or to as many as `count` needs."""
    return f"{prefix}_{index:0{max(4, len(str(max(count - 1, 0))))}d}"


# --------------------------------------------------------------------------------------------
# Lofting (the swords' parts are built this way too)


@lru_cache(maxsize=64)
def loft_faces(m: int, k: int) -> np.ndarray:
    """Triangles (2k(m-1) + 2k, 3) of a tube of ``m`` rings of ``k`` points, capped at both ends.

    Ring i point j is vertex ``i*k + j``; the start cap center is vertex ``m*k`` and the end cap
    center ``m*k + 1``. Caps traverse each boundary edge opposite to the tube, so every edge is
    shared by exactly two triangles with opposite directions (closed, consistently wound).
    """
    i, j = np.meshgrid(np.arange(m - 1), np.arange(k), indexing="ij")
    a = i * k + j
    b = i * k + (j + 1) % k
    c = (i + 1) * k + (j + 1) % k
    d = (i + 1) * k + j
    tube = np.concatenate([np.stack([a, b, c], -1), np.stack([a, c, d], -1)], axis=1).reshape(-1, 3)
    ring = np.arange(k)
    start = np.stack([np.full(k, m * k), (ring + 1) % k, ring], -1)
    end = np.stack([np.full(k, m * k + 1), (m - 1) * k + ring, (m - 1) * k + (ring + 1) % k], -1)
    faces = np.concatenate([tube, start, end]).astype(np.int64)
    faces.setflags(write=False)
    return faces


def _outward(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """``faces``, flipped if needed so that the signed volume is positive (outward winding)."""
    tri = vertices[faces]
    if np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() < 0:
        return faces[:, ::-1]
    return faces


def loft(rings: np.ndarray, start: np.ndarray | None = None, end: np.ndarray | None = None) -> Part:
    """Close a stack of rings (M, K, 3) into a solid: vertices (M*K + 2, 3), faces (F, 3).

    ``start``/``end`` (3,) are the cap apexes (default: the ring's centroid, a flat cap; a ring
    must be star-shaped around its apex). Faces are flipped if needed so the signed volume is
    positive, i.e. the winding is outward.
    """
    m, k, _ = rings.shape
    start = rings[0].mean(axis=0) if start is None else start
    end = rings[-1].mean(axis=0) if end is None else end
    vertices = np.concatenate([rings.reshape(-1, 3), start[None], end[None]])
    return vertices, _outward(vertices, loft_faces(m, k))


def sweep_xy(spine: np.ndarray, section: np.ndarray) -> np.ndarray:
    """Place cross-sections along a spine lying in the XY plane.

    ``spine`` (M, 3) points; ``section`` (M, K, 2) ring coordinates per station, as
    (offset along the in-plane normal, offset along Z). Returns rings (M, K, 3).
    """
    tangent = np.gradient(spine[:, :2], axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    normal = np.stack([tangent[:, 1], -tangent[:, 0], np.zeros(len(spine))], axis=-1)
    return (
        spine[:, None, :]
        + section[..., :1] * normal[:, None, :]
        + section[..., 1:] * np.array([0.0, 0.0, 1.0])
    )


def superellipse(k: int, a: np.ndarray, b: np.ndarray, power: float = 2.0, snap: bool = False) -> np.ndarray:
    """Rings (M, K, 2) of superellipses with half-axes ``a``, ``b`` (M,); power 2 = ellipse,
    larger = boxier. ``snap`` makes the points on the axes exactly 0 across (cos(pi/2) is
    6e-17, which a large power turns into 1e-4 and the ring stops being mirror-symmetric);
    the swords were made without it and keep their vertices."""
    theta = np.linspace(0.0, 2.0 * np.pi, k, endpoint=False)
    c, s = np.cos(theta), np.sin(theta)
    if snap:
        c, s = np.where(np.abs(c) < 1e-12, 0.0, c), np.where(np.abs(s) < 1e-12, 0.0, s)
    e = 2.0 / power
    x = np.sign(c) * np.abs(c) ** e
    y = np.sign(s) * np.abs(s) ** e
    return np.stack([a[:, None] * x, b[:, None] * y], axis=-1)


# --------------------------------------------------------------------------------------------
# Primitives, each centred on the origin with its main axis along +Y


def rectangle(a: np.ndarray, b: np.ndarray, per_side: int = 3) -> np.ndarray:
    """Rings (M, 4 * per_side, 2) of rectangles with half-sides ``a``, ``b`` (M,): sharp
    corners, each side cut in ``per_side`` edges (the same solid in more triangles)."""
    corners = np.array([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])
    f = np.arange(per_side)[:, None] / per_side
    ring = np.concatenate([(1.0 - f) * c + f * corners[(i + 1) % 4] for i, c in enumerate(corners)])
    return np.stack([a[:, None] * ring[:, 0], b[:, None] * ring[:, 1]], axis=-1)


def _stack_y(section: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Rings (M, K, 3) from sections (M, K, 2) in the XZ plane at heights ``y`` (M,)."""
    return np.stack([section[..., 0], np.broadcast_to(y[:, None], section.shape[:2]), section[..., 1]], -1)


def revolve(radius: np.ndarray, height: np.ndarray, segments: int = 24,
            start: np.ndarray | None = None, end: np.ndarray | None = None) -> Part:
    """A solid of revolution about Y: the profile (``radius``, ``height``) (M,), radii > 0, is
    turned into M circles of ``segments`` points, capped flat at both ends (or with an apex on
    the axis: ``start``/``end``). The profile may go up and come back down (a hollow vessel's
    outer then inner wall) as long as it does not cross itself."""
    theta = np.linspace(0.0, 2.0 * np.pi, segments, endpoint=False)
    radius = np.asarray(radius, dtype=np.float64)
    height = np.asarray(height, dtype=np.float64)
    rings = np.stack([radius[:, None] * np.cos(theta),
                      np.broadcast_to(height[:, None], (len(radius), segments)),
                      radius[:, None] * np.sin(theta)], axis=-1)
    return loft(rings, start, end)


def box(size: tuple[float, float, float] | np.ndarray, bevel: float = 0.0,
        roundness: float | None = None, stations: int = 2) -> Part:
    """A box of ``size`` (x, y, z): sharp, or with ``bevel`` (a chamfer of that width on the
    edges around Y) and ``roundness`` (a superellipse power for its corners seen along Y:
    2 = an ellipse, 4-8 = a rounded rectangle; None = square corners). Without a bevel its
    sides are cut in ``stations`` - 1 bands along Y (the same box in more triangles)."""
    sx, sy, sz = (0.5 * float(s) for s in size)
    bevel = min(bevel, 0.45 * sx, 0.45 * sy, 0.45 * sz)
    if bevel > 0.0:
        y = np.array([-sy, -sy + bevel, sy - bevel, sy])
        inset = np.array([bevel, 0.0, 0.0, bevel])
    else:
        y, inset = np.linspace(-sy, sy, stations), np.zeros(stations)
    if roundness is None:
        section = rectangle(sx - inset, sz - inset)
    else:
        section = superellipse(32, sx - inset, sz - inset, power=roundness, snap=True)
    return loft(_stack_y(section, y))


def cylinder(radius: float, height: float, segments: int = 16, top_radius: float | None = None,
             bevel: float = 0.0, stations: int = 2) -> Part:
    """A cylinder (a cone's frustum with ``top_radius``) along Y, optionally bevelled; without
    a bevel its side is cut in ``stations`` - 1 bands along Y."""
    top = radius if top_radius is None else top_radius
    h = 0.5 * height
    bevel = min(bevel, 0.4 * min(radius, top), 0.4 * h)
    if bevel > 0.0:
        r = np.array([radius - bevel, radius, top, top - bevel])
        y = np.array([-h, -h + bevel, h - bevel, h])
    else:
        r, y = np.linspace(radius, top, stations), np.linspace(-h, h, stations)
    return revolve(r, y, segments)


def ellipsoid(radii: tuple[float, float, float] | np.ndarray, segments: int = 16,
              stacks: int = 10) -> Part:
    """An ellipsoid with half-axes ``radii`` (x, y, z); its poles are on Y."""
    polar = np.linspace(0.0, np.pi, stacks + 1)[1:-1]
    vertices, faces = revolve(np.sin(polar), -np.cos(polar), segments,
                              start=np.array([0.0, -1.0, 0.0]), end=np.array([0.0, 1.0, 0.0]))
    return vertices * np.asarray(radii, dtype=np.float64), faces


def capsule(length: float, radius: float, segments: int = 16, cap_stacks: int = 4) -> Part:
    """A capsule along Y: ``length`` end to end, hemispherical ends of ``radius``."""
    half = max(0.5 * length - radius, 0.0)
    a = np.linspace(0.0, 0.5 * np.pi, cap_stacks + 1)[1:]  # from near the pole to the equator
    r = np.concatenate([np.sin(a), np.sin(a[::-1])]) * radius
    y = np.concatenate([-half - radius * np.cos(a), half + radius * np.cos(a[::-1])])
    if half == 0.0:  # the two equators are one ring
        r, y = np.delete(r, cap_stacks), np.delete(y, cap_stacks)
    return revolve(r, y, segments, start=np.array([0.0, -half - radius, 0.0]),
                   end=np.array([0.0, half + radius, 0.0]))


def extrude(polygon: np.ndarray, depth: float, bevel: float = 0.0) -> Part:
    """A prism: ``polygon`` (K, 2) in the XZ plane, star-shaped around the origin, extruded
    along Y over ``depth`` (centred), with a ``bevel`` that shrinks the end faces towards the
    origin by that fraction."""
    h = 0.5 * depth
    if bevel > 0.0:
        y = np.array([-h, -h + bevel * depth, h - bevel * depth, h])
        scale = np.array([1.0 - bevel, 1.0, 1.0, 1.0 - bevel])
    else:
        y, scale = np.array([-h, h]), np.ones(2)
    section = scale[:, None, None] * np.asarray(polygon, dtype=np.float64)[None]
    return loft(_stack_y(section, y), start=np.array([0.0, -h, 0.0]), end=np.array([0.0, h, 0.0]))


def _frames(path: np.ndarray, up: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Unit normals and binormals (M, 3) along a path (M, 3): perpendicular to its tangent,
    turned as little as possible from one station to the next (parallel transport), starting
    from ``up`` projected off the first tangent (or any perpendicular)."""
    tangent = np.gradient(path, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    first = tangent[0]
    if up is None or np.linalg.norm(np.cross(first, up)) < 1e-6:
        up = np.eye(3)[int(np.argmin(np.abs(first)))]
    normal = np.empty_like(path)
    n = up - np.dot(up, first) * first
    for i, t in enumerate(tangent):
        n = n - np.dot(n, t) * t
        n /= np.linalg.norm(n)
        normal[i] = n
    return normal, np.cross(tangent, normal)


def sweep(path: np.ndarray, section: np.ndarray, up: np.ndarray | None = None) -> Part:
    """A tube along a 3D ``path`` (M, 3) with cross-sections ``section`` (K, 2) or (M, K, 2)
    (coordinates along the normal and the binormal), capped flat at both ends."""
    normal, binormal = _frames(path, up)
    section = np.broadcast_to(np.asarray(section, dtype=np.float64), (len(path), *np.shape(section)[-2:]))
    rings = path[:, None, :] + section[..., :1] * normal[:, None, :] + section[..., 1:] * binormal[:, None, :]
    return loft(rings)


def ring_tube(path: np.ndarray, radius: float, segments: int = 10) -> Part:
    """A closed loop of tube (a torus when ``path`` (M, 3) is a circle): the path's last point
    joins its first, so there are no caps."""
    m = len(path)
    closed = np.concatenate([path, path[:1]])
    tangent = np.roll(closed[1:] - closed[:-1], 1, axis=0) + (closed[1:] - closed[:-1])
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    centre = path.mean(axis=0)
    out = path - centre
    out -= np.einsum("ij,ij->i", out, tangent)[:, None] * tangent
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    side = np.cross(tangent, out)
    theta = np.linspace(0.0, 2.0 * np.pi, segments, endpoint=False)
    rings = (path[:, None, :] + radius * np.cos(theta)[None, :, None] * out[:, None, :]
             + radius * np.sin(theta)[None, :, None] * side[:, None, :])
    k = segments
    i, j = np.meshgrid(np.arange(m), np.arange(k), indexing="ij")
    a, b = i * k + j, i * k + (j + 1) % k
    c, d = ((i + 1) % m) * k + (j + 1) % k, ((i + 1) % m) * k + j
    faces = np.concatenate([np.stack([a, b, c], -1), np.stack([a, c, d], -1)], axis=1).reshape(-1, 3)
    vertices = rings.reshape(-1, 3)
    # A torus encloses volume like any closed surface: the same outward test applies.
    return vertices, _outward(vertices - vertices.mean(axis=0), faces.astype(np.int64))


def strut(p0: ArrayLike, p1: ArrayLike, radius0: float, radius1: float | None = None,
          segments: int = 12, square: bool = False) -> Part:
    """A straight rod from ``p0`` to ``p1``: round (``segments`` around) or square (its sides
    facing the horizontal where it can), ``radius0`` at p0 tapering to ``radius1`` at p1."""
    a, b = np.asarray(p0, dtype=np.float64), np.asarray(p1, dtype=np.float64)
    radius1 = radius0 if radius1 is None else radius1
    radii = np.array([radius0, radius1])
    section = rectangle(radii, radii) if square else superellipse(segments, radii, radii, snap=True)
    axis = (b - a) / np.linalg.norm(b - a)
    up = np.array([0.0, 1.0, 0.0]) if abs(axis[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
    normal = up - np.dot(up, axis) * axis
    normal /= np.linalg.norm(normal)
    binormal = np.cross(axis, normal)
    path = np.stack([a, b])
    rings = path[:, None, :] + section[..., :1] * normal + section[..., 1:] * binormal
    return loft(rings)


def beam(p0: ArrayLike, p1: ArrayLike, height: float, thickness: float) -> Part:
    """A rectangular bar from ``p0`` to ``p1`` (not vertical), ``height`` along the vertical
    and ``thickness`` across: a rail, an apron, a slat."""
    a, b = np.asarray(p0, dtype=np.float64), np.asarray(p1, dtype=np.float64)
    axis = (b - a) / np.linalg.norm(b - a)
    vertical = np.array([0.0, 1.0, 0.0]) - axis[1] * axis
    vertical /= np.linalg.norm(vertical)
    across = np.cross(axis, vertical)
    half = rectangle(np.full(2, 0.5 * height), np.full(2, 0.5 * thickness))
    path = np.stack([a, b])
    rings = path[:, None, :] + half[..., :1] * vertical + half[..., 1:] * across
    return loft(rings)


# --------------------------------------------------------------------------------------------
# Posing and joining


def rotation(axis: str | ArrayLike, angle: float) -> np.ndarray:
    """The 3x3 rotation by ``angle`` radians about ``axis`` ("x", "y", "z" or a vector)."""
    vector = np.eye(3)["xyz".index(axis)] if isinstance(axis, str) else np.asarray(axis, dtype=np.float64)
    vector = vector / np.linalg.norm(vector)
    x, y, z = vector
    c, s = np.cos(angle), np.sin(angle)
    cross = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return c * np.eye(3) + s * cross + (1.0 - c) * np.outer(vector, vector)


def align(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The smallest rotation that turns direction ``source`` onto ``target``."""
    a = np.asarray(source, dtype=np.float64) / np.linalg.norm(source)
    b = np.asarray(target, dtype=np.float64) / np.linalg.norm(target)
    axis = np.cross(a, b)
    sin, cos = np.linalg.norm(axis), float(np.dot(a, b))
    if sin < 1e-12:
        if cos > 0:
            return np.eye(3)
        other = np.eye(3)[int(np.argmin(np.abs(a)))]
        return rotation(np.cross(a, other), np.pi)
    return rotation(axis, float(np.arctan2(sin, cos)))


def moved(part: Part, turn: np.ndarray | None = None, offset: ArrayLike | None = None) -> Part:
    """``part`` rotated by ``turn`` (3x3, about the origin), then translated by ``offset``."""
    vertices, faces = part
    if turn is not None:
        vertices = vertices @ np.asarray(turn).T
    if offset is not None:
        vertices = vertices + np.asarray(offset, dtype=np.float64)
    return vertices, faces


def mirrored(part: Part, axis: int = 0) -> Part:
    """The mirror image of ``part`` across the plane where coordinate ``axis`` is 0 (its winding
    reversed, so it stays outward)."""
    vertices, faces = part
    vertices = vertices.copy()
    vertices[:, axis] *= -1.0
    return vertices, faces[:, ::-1].copy()


def to_mesh(parts: list[Part]) -> trimesh.Trimesh:
    """The parts as ONE mesh (each part stays a separate closed body; nothing is merged)."""
    vertices, faces, offset = [], [], 0
    for v, f in parts:
        vertices.append(v)
        faces.append(f + offset)
        offset += len(v)
    return trimesh.Trimesh(
        vertices=np.concatenate(vertices), faces=np.concatenate(faces), process=False
    )


def ray_hits(part: Part, origin: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Distances along the ray ``origin`` + t ``direction`` (t > 0) where it crosses ``part``'s
    surface (Moller-Trumbore over every triangle; parts are small)."""
    vertices, faces = part
    tri = vertices[faces]
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    p = np.cross(direction, e2)
    det = np.einsum("ij,ij->i", e1, p)
    ok = np.abs(det) > 1e-14
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    s = origin - tri[:, 0]
    u = np.einsum("ij,ij->i", s, p) * inv
    q = np.cross(s, e1)
    v = (q @ direction) * inv
    t = np.einsum("ij,ij->i", e2, q) * inv
    hit = ok & (u >= 0.0) & (v >= 0.0) & (u + v <= 1.0) & (t > 0.0)
    return t[hit]
