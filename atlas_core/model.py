"""
AtlasNet (Groueix et al., "AtlasNet: A Papier-Mâché Approach to Learning 3D Surface Generation",
CVPR 2018), following the layer layout of the authors' AtlasNet v2 code.

A PointNet encodes a point cloud into one latent vector. K patch decoders, each an MLP, map points
of a template (the unit square or the unit sphere) together with that latent vector to 3D; the
union of the K deformed templates is the reconstructed surface. Training compares points sampled
on the templates and pushed through the decoders with points of the input by Chamfer distance;
meshing pushes a regular triangulation of the template through the same decoders instead.

Shapes used throughout:
    B  batch size               N  input points per shape
    D  bottleneck (latent size)  K  patches
    P  points per patch          dim  template dimension (2 for the square, 3 for the sphere)

Point-wise layers are written as nn.Linear on (B*N, C) rows rather than kernel-1 Conv1d on
(B, C, N): the parameters are the same numbers (a Conv1d weight (out, in, 1) is a Linear weight
(out, in) with a trailing axis, and both are initialised alike), but the channels-last layout
runs as one large matrix product and is faster on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from atlas_core.config import ACTIVATION_NAMES, ModelConfig
from atlas_core.fused import latent_batchnorm_relu, linear_batchnorm_max, linear_batchnorm_relu
from atlas_core.templates import Template, make_template

Activation = Callable[[Tensor], Tensor]

# The activations offered by the reference code.
ACTIVATIONS: dict[str, Activation] = {
    "relu": F.relu,
    "sigmoid": torch.sigmoid,
    "softplus": F.softplus,
    "logsigmoid": F.logsigmoid,
    "softsign": F.softsign,
    "tanh": torch.tanh,
}
assert set(ACTIVATIONS) == set(ACTIVATION_NAMES)


def _fusable(x: Tensor) -> bool:
    """Whether atlas_core.fused's fp32/fp64 layers may run: not under autocast (bf16 on CUDA)."""
    try:
        return not torch.is_autocast_enabled(x.device.type)
    except TypeError:  # torch < 2.4: no device argument
        return not torch.is_autocast_enabled()


def _bn(bn: nn.BatchNorm1d, x: Tensor) -> Tensor:
    """BatchNorm over the last (channel) axis of x: (..., C), statistics over all leading axes."""
    return bn(x.reshape(-1, x.shape[-1])).view(x.shape)


# -----------------------------------------------------------------------------
# The layers of the network, each written once. With fused=True a layer runs atlas_core.fused's
# kernel where that kernel applies (same values and gradients, less memory traffic); elsewhere
# (fused=False, autocast, another activation than ReLU, per-shape template points) it runs the
# composition of nn layers that the kernel computes.


def linear_bn_act(x: Tensor, linear: nn.Linear, bn: nn.BatchNorm1d, act: Activation = F.relu,
                  fused: bool = True) -> Tensor:
    """act(bn(linear(x))): x (R, Cin) -> (R, C), R rows (points or shapes)."""
    if fused and act is F.relu and _fusable(x):
        return linear_batchnorm_relu(x, linear, bn)
    return act(bn(linear(x)))


def linear_bn_max(x: Tensor, linear: nn.Linear, bn: nn.BatchNorm1d, batch: int, fused: bool = True) -> Tensor:
    """The max over each shape's points of bn(linear(x)): x (batch*N, Cin) -> (batch, C).

    No activation before the max, as in the reference.
    """
    if fused and _fusable(x):
        return linear_batchnorm_max(x, linear, bn, batch)  # never stores the (batch*N, C) layer
    z = bn(linear(x))
    # On the (B, N, C) layout, Tensor.max(dim=1) is a slow strided reduction on the CPU and .amax
    # keeps the whole input for its backward; max pooling the (B, C, N) view has a channels-last
    # kernel and keeps only the (B, C) argmax indices.
    return F.adaptive_max_pool1d(z.view(batch, -1, z.shape[-1]).transpose(1, 2), 1).squeeze(-1)


def latent_bn_act(template_points: Tensor, linear: nn.Linear, latent: Tensor, bn: nn.BatchNorm1d,
                  act: Activation = F.relu, fused: bool = True) -> Tensor:
    """act(bn(linear(template_points) + latent)), BatchNorm over all B*P rows.

    template_points: (B, P, dim), or (1, P, dim) shared by the whole batch
    latent: (B, C)
    returns (B, P, C)

    The latent code is added to the embedded template points rather than concatenated, as in the
    reference: the encoder's last Linear already plays the part of the latent half of a
    concatenated weight, and the template half is computed once when P points are shared.
    """
    if fused and act is F.relu and template_points.shape[0] == 1 and _fusable(latent):
        return latent_batchnorm_relu(template_points[0], linear, latent, bn)
    return act(_bn(bn, linear(template_points) + latent.unsqueeze(1)))


# -----------------------------------------------------------------------------
# The network


class PointNetEncoder(nn.Module):
    """PointNet: (B, N, 3) -> (B, D).

    A shared per-point MLP 3 -> 64 -> 128 -> 1024, a max over the points (so the code does not
    depend on their order), then two fully connected layers 1024 -> D -> D.

    fused: run atlas_core.fused's kernels where they apply (see linear_bn_act).
    """

    def __init__(self, bottleneck: int = 1024, width: int = 1024, *, fused: bool = True):
        super().__init__()
        self.fused = fused
        self.conv1 = nn.Linear(3, 64)
        self.conv2 = nn.Linear(64, 128)
        self.conv3 = nn.Linear(128, width)
        self.bn1 = nn.BatchNorm1d(64)
        self.bn2 = nn.BatchNorm1d(128)
        self.bn3 = nn.BatchNorm1d(width)
        self.lin1 = nn.Linear(width, bottleneck)
        self.lin2 = nn.Linear(bottleneck, bottleneck)
        self.bn4 = nn.BatchNorm1d(bottleneck)
        self.bn5 = nn.BatchNorm1d(bottleneck)

    def forward(self, points: Tensor) -> Tensor:
        """points: (B, N, 3) -> (B, D)."""
        B, N, _ = points.shape
        x = points.reshape(B * N, 3)
        x = linear_bn_act(x, self.conv1, self.bn1, fused=self.fused)     # (B*N, 64)
        x = linear_bn_act(x, self.conv2, self.bn2, fused=self.fused)     # (B*N, 128)
        x = linear_bn_max(x, self.conv3, self.bn3, B, fused=self.fused)  # (B, width)
        x = linear_bn_act(x, self.lin1, self.bn4, fused=self.fused)      # (B, D)
        return linear_bn_act(x, self.lin2, self.bn5, fused=self.fused)   # (B, D)


class PatchDecoder(nn.Module):
    """One patch: template points and a latent code -> 3D points.

    template_points: (B, P, dim), or (1, P, dim) shared by the whole batch
    latent: (B, D)
    returns (B, P, 3)

    fused: run atlas_core.fused's kernels where they apply (see linear_bn_act).
    """

    def __init__(self, dim: int, bottleneck: int = 1024, hidden: int = 512, layers: int = 2, activation: str = "relu",
                 *, fused: bool = True):
        super().__init__()
        self.fused = fused
        self.act = ACTIVATIONS[activation]
        self.fc_in = nn.Linear(dim, bottleneck)
        self.bn_in = nn.BatchNorm1d(bottleneck)
        self.fc1 = nn.Linear(bottleneck, hidden)
        self.bn1 = nn.BatchNorm1d(hidden)
        self.fc_hidden = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(layers)])
        self.bn_hidden = nn.ModuleList([nn.BatchNorm1d(hidden) for _ in range(layers)])
        self.fc_out = nn.Linear(hidden, 3)

    def forward(self, template_points: Tensor, latent: Tensor) -> Tensor:
        x = latent_bn_act(template_points, self.fc_in, latent, self.bn_in, self.act, self.fused)  # (B, P, D)
        B, P, _ = x.shape
        x = x.flatten(0, 1)  # (B*P, D): one BatchNorm over every point of every shape
        x = linear_bn_act(x, self.fc1, self.bn1, self.act, self.fused)  # (B*P, hidden)
        for fc, bn in zip(self.fc_hidden, self.bn_hidden):
            x = linear_bn_act(x, cast(nn.Linear, fc), cast(nn.BatchNorm1d, bn), self.act, self.fused)  # (B*P, hidden)
        return self.fc_out(x).view(B, P, 3)


class AtlasNet(nn.Module):
    """PointNet encoder + K patch decoders over a shared template.

    fused: run atlas_core.fused's kernels where they apply (the default; see linear_bn_act).
    False runs the plain composition of nn layers throughout. Either way the parameters and
    the state dict are the same.
    """

    def __init__(self, config: ModelConfig, *, fused: bool = True):
        super().__init__()
        config.validate()
        self.config = config
        self.template: Template = make_template(config.template)
        self.encoder = PointNetEncoder(config.bottleneck, fused=fused)
        self.decoders = nn.ModuleList([
            PatchDecoder(self.template.dim, config.bottleneck, config.hidden, config.layers, config.activation,
                         fused=fused)
            for _ in range(config.n_patches)
        ])

    def encode(self, points: Tensor) -> Tensor:
        """points: (B, N, 3) -> latent (B, D)."""
        return self.encoder(points)

    def decode(self, latent: Tensor, template_points: Tensor) -> Tensor:
        """latent: (B, D), template_points: (K, P, dim), one set per patch -> (B, K, P, 3).

        Every shape in the batch uses the same template points, as in the reference.
        """
        K = len(self.decoders)
        if template_points.dim() != 3 or template_points.shape[0] != K or template_points.shape[2] != self.template.dim:
            raise ValueError(f"expected template points (K={K}, P, dim={self.template.dim}), got {tuple(template_points.shape)}")
        return torch.stack([decoder(points.unsqueeze(0), latent) for decoder, points in zip(self.decoders, template_points)], dim=1)

    def forward(self, points: Tensor, n_points: int | None = None, generator: torch.Generator | None = None) -> Tensor:
        """points: (B, N, 3) -> generated points (B, K*P, 3), P = (n_points or config.n_points) // K.

        The template is sampled afresh on every call (pass `generator` for repeatable draws), so
        that the decoders are trained, and validated, as continuous maps.
        """
        K = len(self.decoders)
        n_points = n_points or self.config.n_points
        P = n_points // K
        if P < 1:
            raise ValueError(f"n_points ({n_points}) must be at least the number of patches ({K})")
        latent = self.encode(points)
        template_points = self.template.sample(K, P, device=latent.device, generator=generator).to(latent.dtype)
        return self.decode(latent, template_points).flatten(1, 2)

    def mesh_vertices(self, latent: Tensor, n_vertices: int) -> tuple[Tensor, np.ndarray, Tensor]:
        """The regular template, about n_vertices // K vertices per patch, through every decoder.

        latent: (B, D)
        returns vertices (B, K*V, 3); faces (K*F, 3) int64, offset per patch so that one array
        indexes the merged vertices of any shape in the batch; patch_ids (K*V,) long.

        Meant for eval mode (BatchNorm's running statistics), usually under torch.no_grad().
        """
        K = len(self.decoders)
        template_vertices, template_faces = self.template.regular(max(1, n_vertices // K))
        V = template_vertices.shape[0]
        template_points = template_vertices.to(device=latent.device, dtype=latent.dtype).expand(K, -1, -1)
        vertices = self.decode(latent, template_points).flatten(1, 2)
        faces = (template_faces[None] + V * np.arange(K, dtype=np.int64)[:, None, None]).reshape(-1, 3)
        patch_ids = torch.arange(K, device=latent.device).repeat_interleave(V)
        return vertices, faces, patch_ids
