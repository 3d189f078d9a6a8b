"""Shape augmentation for small datasets: rotation about the principal axis, anisotropic
scaling, jitter. Each is switchable and recorded in the training config.

Rotation is about each shape's own principal (longest) axis rather than a world axis: it keeps
what makes the shape what it is (a sword stays a sword along its blade) while showing the network
the poses it will meet.
"""

from __future__ import annotations

import numpy as np
import torch

from atlas_core.config import AugmentConfig


def principal_axes(clouds: np.ndarray) -> np.ndarray:
    """Unit direction of largest variance per shape. clouds: (S, P, 3) -> (S, 3)."""
    centred = clouds - clouds.mean(axis=1, keepdims=True)
    cov = np.einsum("spi,spj->sij", centred, centred) / clouds.shape[1]
    _, vectors = np.linalg.eigh(cov)  # ascending eigenvalues
    return vectors[:, :, -1].astype(np.float32)


def _rotation_about(axes: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula. axes: (B, 3) unit, angles: (B,) -> rotation matrices (B, 3, 3)."""
    x, y, z = axes.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).view(-1, 3, 3)
    eye = torch.eye(3, dtype=axes.dtype, device=axes.device).expand_as(k)
    s, c = angles.sin()[:, None, None], angles.cos()[:, None, None]
    return eye + s * k + (1 - c) * (k @ k)


def augment(points: torch.Tensor, axes: torch.Tensor, config: AugmentConfig,
            generator: torch.Generator) -> torch.Tensor:
    """A randomly transformed copy of each cloud, kept inside the unit ball.

    points: (B, N, 3), axes: (B, 3) principal axes -> (B, N, 3)
    """
    b = points.shape[0]
    out = points
    if config.rotate:
        angles = torch.rand(b, generator=generator) * (2 * torch.pi)
        rot = _rotation_about(axes.cpu(), angles).to(points)
        out = out @ rot.transpose(1, 2)
    if config.scale > 0:
        factors = 1 + (torch.rand(b, 1, 3, generator=generator) * 2 - 1) * config.scale
        out = out * factors.to(points)
    if config.jitter > 0:
        out = out + torch.randn(out.shape, generator=generator).to(points) * config.jitter
    if config.scale > 0 or config.jitter > 0:
        # Scaling and noise can push points out of the unit ball the network was promised.
        radius = out.norm(dim=-1).amax(dim=1, keepdim=True).clamp(min=1.0)
        out = out / radius.unsqueeze(-1)
    return out
