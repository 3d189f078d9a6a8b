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

The K decoders are one module, `PatchDecoders`: each layer holds the K patches' weights stacked,
(K, out, in), and computes every patch with one batched product on channels-first rows (K, C, R),
R = B*P; their BatchNorm is one nn.BatchNorm1d over K*C channels applied to the (1, K*C, R) view,
so that each patch's channels are normalised over that patch's own rows, exactly as K separate
BatchNorm1d(C) layers would. Training, meshing and test-time refinement (atlas_core.refine) all
run this one implementation. Checkpoints written when the decoders were K separate modules
(`decoders.{k}.fc_in.weight`, ...) load through `PatchDecoders._load_from_state_dict`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from atlas_core.config import ACTIVATION_NAMES, ModelConfig
from atlas_core.fused import batchnorm, latent_batchnorm_relu, linear_batchnorm_max, linear_batchnorm_relu
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


# -----------------------------------------------------------------------------
# The layers of the network, each written once. With fused=True a layer runs atlas_core.fused's
# kernel where that kernel applies (same values and gradients, less memory traffic); elsewhere
# (fused=False, autocast, another activation than ReLU) it runs the composition of nn layers
# that the kernel computes.


class PatchLinear(nn.Module):
    """K Linear layers, one per patch, on channels-first rows: x (K, in, R) -> (K, out, R).

    weight (K, out, in), bias (K, out, 1): nn.Linear's layout with a leading patch axis, and
    nn.Linear's initialisation for each patch (initialise=False: left to the caller, who calls
    `reset_patch`).
    """

    def __init__(self, patches: int, in_features: int, out_features: int, *, initialise: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(patches, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(patches, out_features, 1))
        if initialise:
            for k in range(patches):
                self.reset_patch(k)

    def reset_patch(self, k: int) -> None:
        """Initialise patch k as nn.Linear initialises itself, with the same random draws."""
        nn.init.kaiming_uniform_(self.weight[k], a=math.sqrt(5))
        bound = 1 / math.sqrt(self.weight.shape[2])
        nn.init.uniform_(self.bias[k], -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        return torch.baddbmm(self.bias, self.weight, x)


def linear_bn_act(x: Tensor, linear: nn.Linear | PatchLinear, bn: nn.BatchNorm1d, act: Activation = F.relu,
                  fused: bool = True) -> Tensor:
    """act(bn(linear(x))): x (R, Cin) -> (R, C), R rows (points or shapes); or, with a PatchLinear
    and bn over K*C channels, K patches' rows x (K, Cin, R) -> (K, C, R)."""
    if fused and act is F.relu and _fusable(x):
        return linear_batchnorm_relu(x, linear, bn)
    return act(batchnorm(bn, linear(x)))


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


def latent_bn_act(template_points: Tensor, linear: PatchLinear, latent: Tensor, bn: nn.BatchNorm1d,
                  act: Activation = F.relu, fused: bool = True) -> Tensor:
    """act(bn(linear(template_points) + latent)) for every patch, shape and template point,
    BatchNorm per patch over its B*P rows.

    template_points: (K, P, dim), each patch's points, shared by the whole batch
    latent: (B, C)
    returns (K, C, B*P), rows in (shape, point) order

    The latent code is added to the embedded template points rather than concatenated, as in the
    reference: the encoder's last Linear already plays the part of the latent half of a
    concatenated weight, and the template half is computed once for the whole batch.
    """
    if fused and act is F.relu and _fusable(latent):
        return latent_batchnorm_relu(template_points, linear, latent, bn)
    K, P, _ = template_points.shape
    x = linear(template_points.transpose(1, 2))[:, :, None, :] + latent.t()[None, :, :, None]  # (K, C, B, P)
    return act(batchnorm(bn, x.reshape(K, -1, latent.shape[0] * P)))


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


class PatchDecoders(nn.Module):
    """The K patch decoders, each an MLP from a template point and the latent code to 3D, as one
    module: every layer computes all patches at once (see the module's docstring).

    template_points: (K, P, dim), each patch's points, shared by the whole batch
    latent: (B, D)
    returns (B, K, P, 3)

    Per patch: dim -> D (+ the latent code) -> hidden -> `layers` x hidden -> 3, BatchNorm and
    the activation after every layer but the last.
    fused: run atlas_core.fused's kernels where they apply (see linear_bn_act).
    """

    def __init__(self, patches: int, dim: int, bottleneck: int = 1024, hidden: int = 512, layers: int = 2,
                 activation: str = "relu", *, fused: bool = True):
        super().__init__()
        self.patches = patches
        self.fused = fused
        self.act = ACTIVATIONS[activation]
        self.fc_in = PatchLinear(patches, dim, bottleneck, initialise=False)
        self.bn_in = nn.BatchNorm1d(patches * bottleneck)
        self.fc1 = PatchLinear(patches, bottleneck, hidden, initialise=False)
        self.bn1 = nn.BatchNorm1d(patches * hidden)
        self.fc_hidden = nn.ModuleList([PatchLinear(patches, hidden, hidden, initialise=False) for _ in range(layers)])
        self.bn_hidden = nn.ModuleList([nn.BatchNorm1d(patches * hidden) for _ in range(layers)])
        self.fc_out = PatchLinear(patches, hidden, 3, initialise=False)
        # Drawn patch by patch, in the order K separate decoders drew them: a seed gives the
        # initial model it gave before the decoders were stacked.
        linears = [self.fc_in, self.fc1, *self.fc_hidden, self.fc_out]
        for k in range(patches):
            for linear in linears:
                cast(PatchLinear, linear).reset_patch(k)

    def forward(self, template_points: Tensor, latent: Tensor) -> Tensor:
        K, P, _ = template_points.shape
        B = latent.shape[0]
        x = latent_bn_act(template_points, self.fc_in, latent, self.bn_in, self.act, self.fused)  # (K, D, B*P)
        x = linear_bn_act(x, self.fc1, self.bn1, self.act, self.fused)  # (K, hidden, B*P)
        for fc, bn in zip(self.fc_hidden, self.bn_hidden):
            x = linear_bn_act(x, cast(PatchLinear, fc), cast(nn.BatchNorm1d, bn), self.act, self.fused)
        return self.fc_out(x).view(K, 3, B, P).permute(2, 0, 3, 1).contiguous()

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Also loads checkpoints of the K separate decoders, `{prefix}{k}.{name}` for k < K:
        each tensor here is the stack of the K old ones (a Linear's weight (out, in) -> (K, out,
        in), its bias -> (K, out, 1), BatchNorm's (C,) -> (K*C,) in patch order), and BatchNorm's
        batch count, the same in every patch, is patch 0's."""
        named = [*self.named_parameters(), *self.named_buffers()]
        for name, current in named:
            keys = [f"{prefix}{k}.{name}" for k in range(self.patches)]
            if f"{prefix}{name}" in state_dict or not all(key in state_dict for key in keys):
                continue  # the current layout, or not an old one that fits: load_state_dict says why
            old = [state_dict.pop(key) for key in keys]
            if name.endswith("num_batches_tracked"):
                state_dict[f"{prefix}{name}"] = old[0]
                continue
            stacked = torch.stack(old)
            # A mismatched size is left as it is, for load_state_dict to report.
            state_dict[f"{prefix}{name}"] = stacked.reshape(current.shape) if stacked.numel() == current.numel() else stacked
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


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
        self.decoders = PatchDecoders(config.n_patches, self.template.dim, config.bottleneck, config.hidden,
                                      config.layers, config.activation, fused=fused)

    def encode(self, points: Tensor) -> Tensor:
        """points: (B, N, 3) -> latent (B, D)."""
        return self.encoder(points)

    def decode(self, latent: Tensor, template_points: Tensor) -> Tensor:
        """latent: (B, D), template_points: (K, P, dim), one set per patch -> (B, K, P, 3).

        Every shape in the batch uses the same template points, as in the reference.
        """
        K = self.decoders.patches
        if template_points.dim() != 3 or template_points.shape[0] != K or template_points.shape[2] != self.template.dim:
            raise ValueError(f"expected template points (K={K}, P, dim={self.template.dim}), got {tuple(template_points.shape)}")
        return self.decoders(template_points, latent)

    def forward(self, points: Tensor, n_points: int | None = None, generator: torch.Generator | None = None) -> Tensor:
        """points: (B, N, 3) -> generated points (B, K*P, 3), P = (n_points or config.n_points) // K.

        The template is sampled afresh on every call (pass `generator` for repeatable draws), so
        that the decoders are trained, and validated, as continuous maps.
        """
        K = self.decoders.patches
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
        K = self.decoders.patches
        template_vertices, template_faces = self.template.regular(max(1, n_vertices // K))
        V = template_vertices.shape[0]
        template_points = template_vertices.to(device=latent.device, dtype=latent.dtype).expand(K, -1, -1)
        vertices = self.decode(latent, template_points).flatten(1, 2)
        faces = (template_faces[None] + V * np.arange(K, dtype=np.int64)[:, None, None]).reshape(-1, 3)
        patch_ids = torch.arange(K, device=latent.device).repeat_interleave(V)
        return vertices, faces, patch_ids


def restack_optimizer_state(model: AtlasNet, saved_model: dict[str, Tensor],
                            saved: dict[str, Any]) -> dict[str, Any]:
    """An optimiser state saved beside a checkpoint of the K separate decoders
    (`decoders.{k}.*`), restacked as `PatchDecoders._load_from_state_dict` restacks the
    parameters, so that a job registered before the decoders were stacked resumes with its
    Adam moments (each has its parameter's shape). A state of the current layout, or one this
    does not recognise, comes back as it is (`load_state_dict` then says what is wrong)."""
    params = dict(model.named_parameters())
    names = list(params)
    ids = [i for group in saved["param_groups"] for i in group["params"]]
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    # A state dict lists each module's parameters in `named_parameters` order, buffers between.
    old_names = [k for k in saved_model if not k.endswith(buffers)]
    if len(ids) == len(names) or len(ids) != len(old_names) or len(saved["param_groups"]) != 1:
        return saved
    old = {name: saved["state"].get(i) for name, i in zip(old_names, ids)}
    patches = model.config.n_patches
    state: dict[int, Any] = {}
    for j, name in enumerate(names):
        if name in old:
            entry = old[name]
        else:
            parts = [old.get(f"decoders.{k}.{name.removeprefix('decoders.')}") for k in range(patches)]
            if any(p is None for p in parts):
                continue  # never stepped: Adam starts its moments at zero, as it would have
            first = cast(dict[str, Any], parts[0])
            entry = {key: torch.stack([cast(dict[str, Tensor], p)[key] for p in parts]).reshape(params[name].shape)
                     if isinstance(value, Tensor) and value.dim() > 0 else value
                     for key, value in first.items()}
        if entry is not None:
            state[j] = entry
    group = {key: value for key, value in saved["param_groups"][0].items() if key != "params"}
    return {"state": state, "param_groups": [{**group, "params": list(range(len(names)))}]}
