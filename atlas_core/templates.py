"""
Templates: the parameter domains that AtlasNet's patches are deformed from.

Each patch decoder maps points of a fixed template (the unit square, or the unit sphere) to
3D. Training samples the template at random so that the decoders learn a continuous map, not
a fixed point set; meshing evaluates them on a regular triangulation of the same template, so
the faces of the template become the faces of the reconstructed surface.

    sample(k, n)  -> (k, n, dim)   k independent random draws of n points, one per patch
    regular(n)    -> vertices (V, dim) with V close to n, faces (F, 3) int64
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np
import torch
import trimesh
from torch import Tensor


class Template(ABC):
    """A parameter domain of dimension `dim` that can be sampled at random or triangulated."""

    name: str
    dim: int

    @abstractmethod
    def sample(self, k: int, n: int, device=None, generator: torch.Generator | None = None) -> Tensor:
        """Random points for training: (k, n, dim) float32 on `device`.

        `generator`, when given, must live on `device` (torch's rule for random ops).
        """

    @abstractmethod
    def regular(self, n: int) -> tuple[Tensor, np.ndarray]:
        """A triangulation for meshing: vertices (V, dim) float32 on the CPU with V close to n,
        and faces (F, 3) int64 indexing into them."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SquareTemplate(Template):
    """The unit square [0, 1]^2, the template of the original AtlasNet patches."""

    name = "square"
    dim = 2

    def sample(self, k: int, n: int, device=None, generator: torch.Generator | None = None) -> Tensor:
        return torch.rand(k, n, 2, device=device, generator=generator)

    def regular(self, n: int) -> tuple[Tensor, np.ndarray]:
        g = max(2, round(math.sqrt(n)))
        ticks = torch.linspace(0.0, 1.0, g)
        u, v = torch.meshgrid(ticks, ticks, indexing="ij")
        vertices = torch.stack([u.reshape(-1), v.reshape(-1)], dim=-1)  # vertex (i, j) is row i * g + j

        # Two triangles per grid cell, both counter-clockwise in (u, v), so that every patch
        # keeps the same orientation as the square itself.
        i, j = np.meshgrid(np.arange(g - 1), np.arange(g - 1), indexing="ij")
        a = (i * g + j).reshape(-1)  # (u, v)
        b = a + g                    # (u + 1, v)
        c = a + g + 1                # (u + 1, v + 1)
        d = a + 1                    # (u, v + 1)
        faces = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)]).astype(np.int64)
        return vertices, faces


class SphereTemplate(Template):
    """The unit sphere S^2, for closed surfaces (AtlasNet's sphere variant)."""

    name = "sphere"
    dim = 3
    max_subdivisions = 8  # 655,362 vertices; beyond that meshing is not what limits quality

    def sample(self, k: int, n: int, device=None, generator: torch.Generator | None = None) -> Tensor:
        # A standard Gaussian is rotation invariant, so its direction is uniform on the sphere.
        points = torch.randn(k, n, 3, device=device, generator=generator)
        return points / points.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def regular(self, n: int) -> tuple[Tensor, np.ndarray]:
        # An icosphere with s subdivisions has 10 * 4^s + 2 vertices; take the closest count.
        s = min(range(self.max_subdivisions + 1), key=lambda s: abs(10 * 4**s + 2 - n))
        mesh = trimesh.creation.icosphere(subdivisions=s, radius=1.0)
        vertices = torch.as_tensor(np.asarray(mesh.vertices), dtype=torch.float32)
        return vertices, np.asarray(mesh.faces, dtype=np.int64)


TEMPLATES = {"square": SquareTemplate, "sphere": SphereTemplate}


def make_template(name: str) -> Template:
    """The template called `name`: "square" or "sphere"."""
    if name not in TEMPLATES:
        raise ValueError(f"unknown template {name!r}: choose one of {', '.join(map(repr, TEMPLATES))}")
    return TEMPLATES[name]()
