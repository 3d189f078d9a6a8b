import io

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import atlas_core.model as model_module
from atlas_core.chamfer import chamfer_distance
from atlas_core.checkpoint import dump_checkpoint, load_model
from atlas_core.config import TrainConfig
from atlas_core.model import AtlasNet, ModelConfig, PatchDecoders, PointNetEncoder
from atlas_core.templates import SphereTemplate, SquareTemplate, make_template

TEMPLATES = ["square", "sphere"]


def tiny_config(template, **overrides):
    return ModelConfig(**{**dict(n_patches=4, template=template, bottleneck=32, hidden=32, layers=2, n_points=100), **overrides})


# -----------------------------------------------------------------------------
# templates

def test_make_template():
    assert isinstance(make_template("square"), SquareTemplate)
    assert isinstance(make_template("sphere"), SphereTemplate)
    with pytest.raises(ValueError, match="unknown template 'cube'"):
        make_template("cube")


def test_square_sample():
    g = torch.Generator().manual_seed(0)
    points = make_template("square").sample(5, 300, generator=g)
    assert points.shape == (5, 300, 2) and points.dtype == torch.float32
    assert points.min() >= 0.0 and points.max() <= 1.0
    again = make_template("square").sample(5, 300, generator=torch.Generator().manual_seed(0))
    assert torch.equal(points, again)


def test_sphere_sample():
    points = make_template("sphere").sample(5, 300)
    assert points.shape == (5, 300, 3)
    torch.testing.assert_close(points.norm(dim=-1), torch.ones(5, 300))
    # Uniform on the sphere: the mean is near the centre.
    assert points.reshape(-1, 3).mean(0).abs().max() < 0.1


@pytest.mark.parametrize("n, g", [(1, 2), (4, 2), (100, 10), (99, 10), (120, 11)])
def test_square_regular(n, g):
    vertices, faces = make_template("square").regular(n)
    assert vertices.shape == (g * g, 2)
    assert faces.shape == (2 * (g - 1) ** 2, 3) and faces.dtype == np.int64
    assert faces.min() == 0 and faces.max() == g * g - 1
    assert vertices.min() == 0.0 and vertices.max() == 1.0
    # Counter-clockwise triangles that tile the square exactly.
    v = vertices.numpy()[faces]
    e1, e2 = v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]
    signed = (e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]) / 2
    assert (signed > 0).all() and np.isclose(signed.sum(), 1.0)


@pytest.mark.parametrize("n, V", [(1, 12), (40, 42), (150, 162), (700, 642), (2500, 2562)])
def test_sphere_regular(n, V):
    vertices, faces = make_template("sphere").regular(n)
    assert vertices.shape == (V, 3) and vertices.dtype == torch.float32
    assert faces.shape == (2 * V - 4, 3) and faces.dtype == np.int64
    assert faces.min() == 0 and faces.max() == V - 1
    torch.testing.assert_close(vertices.norm(dim=-1), torch.ones(V))


# -----------------------------------------------------------------------------
# model

def test_config_is_validated():
    with pytest.raises(ValueError, match="template"):
        ModelConfig(template="torus").validate()
    with pytest.raises(ValueError, match="activation"):
        ModelConfig(activation="gelu").validate()
    with pytest.raises(ValueError, match="points"):
        AtlasNet(ModelConfig(n_patches=25, n_points=10))


def test_reference_defaults():
    config = ModelConfig()
    assert (config.n_points, config.bottleneck, config.hidden, config.layers, config.activation) == (2500, 1024, 512, 2, "relu")


def test_encoder_and_decoder_shapes():
    encoder = PointNetEncoder(bottleneck=32)
    assert encoder(torch.randn(3, 50, 3)).shape == (3, 32)
    decoders = PatchDecoders(4, dim=2, bottleneck=32, hidden=16, layers=1)
    assert decoders(torch.rand(4, 20, 2), torch.randn(3, 32)).shape == (3, 4, 20, 3)
    assert decoders.eval()(torch.rand(4, 20, 2), torch.randn(1, 32)).shape == (1, 4, 20, 3)


@pytest.mark.parametrize("template", TEMPLATES)
def test_forward_encode_decode_shapes(template):
    torch.manual_seed(0)
    model = AtlasNet(tiny_config(template))
    points = torch.randn(3, 120, 3)
    assert model(points).shape == (3, 4 * 25, 3)
    assert model(points, n_points=50).shape == (3, 4 * 12, 3)
    latent = model.encode(points)
    assert latent.shape == (3, 32)
    dim = model.template.dim
    assert model.decode(latent, torch.rand(4, 7, dim)).shape == (3, 4, 7, 3)
    with pytest.raises(ValueError, match="template points"):
        model.decode(latent, torch.rand(3, 7, dim))


@pytest.mark.parametrize("template", TEMPLATES)
def test_forward_is_repeatable_with_a_generator(template):
    model = AtlasNet(tiny_config(template)).eval()
    points = torch.randn(2, 60, 3)
    a = model(points, generator=torch.Generator().manual_seed(1))
    b = model(points, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


@pytest.mark.parametrize("template", TEMPLATES)
def test_mesh_vertices(template):
    model = AtlasNet(tiny_config(template)).eval()
    with torch.no_grad():
        latent = model.encode(torch.randn(2, 80, 3))
        vertices, faces, patch_ids = model.mesh_vertices(latent, n_vertices=600)
    V, F = {"square": (144, 2 * 121), "sphere": (162, 320)}[template]  # ~150 per patch
    assert vertices.shape == (2, 4 * V, 3)
    assert faces.shape == (4 * F, 3) and faces.dtype == np.int64
    assert faces.min() == 0 and faces.max() == 4 * V - 1
    assert patch_ids.shape == (4 * V,) and patch_ids.dtype == torch.long
    assert torch.equal(patch_ids.bincount(), torch.full((4,), V))
    # Each face stays inside one patch.
    face_patches = patch_ids.numpy()[faces]
    assert (face_patches == face_patches[:, :1]).all()


@pytest.mark.parametrize("template", TEMPLATES)
def test_gradients_reach_every_decoder_and_the_encoder(template):
    torch.manual_seed(0)
    model = AtlasNet(tiny_config(template))
    points = torch.randn(3, 100, 3)
    chamfer_distance(model(points), points).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        if name.endswith(".bias") and ".bn" not in name and "fc_out" not in name:
            # A Linear's bias that a training-mode BatchNorm cancels: its gradient is exactly
            # zero (the fused layers give that zero; autograd through the plain ones, ~1e-9 noise).
            assert torch.count_nonzero(p.grad) == 0, name
        else:
            assert p.grad.abs().sum() > 0, name


def test_double_precision():
    model = AtlasNet(tiny_config("sphere")).double()
    assert model(torch.randn(2, 40, 3, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.slow  # 150 optimiser steps: ~12 s on 2 cores, the fast tier's largest item
def test_overfits_one_cloud():
    # A tiny AtlasNet learns to cover one fixed shape (256 points on a saddle z = x^2 - y^2): a
    # check that the model, the template sampling and the Chamfer gradients fit together. A
    # small-area surface keeps the floor that two independent 256-point samples of it leave in
    # the Chamfer distance (~0.004 here) well below the starting value (~0.2).
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 256, generator=g) - 0.5
    target = torch.stack([a, b, a * a - b * b], -1)
    # Two copies: BatchNorm in training mode needs more than one shape per batch.
    batch = target.expand(2, -1, -1)

    model = AtlasNet(tiny_config("square", bottleneck=64, hidden=64, n_points=256))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        loss = chamfer_distance(model(batch), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = losses[0], sum(losses[-10:]) / 10
    print(f"overfit: Chamfer {first:.4f} -> {last:.4f}")
    assert last < first / 5, f"Chamfer went from {first:.4f} to {last:.4f}"


# -----------------------------------------------------------------------------
# the specification: the plain composition of nn layers, on the model's layout before its K
# decoders were stacked (K separate modules of nn.Linear and nn.BatchNorm1d layers, the layout of
# the checkpoints registered then). The model runs stacked layers, and atlas_core.fused's kernels
# where they apply, and must compute the same thing.


class OldPatchDecoder(nn.Module):
    """One patch's decoder as `AtlasNet.decoders[k]` held it before the decoders were stacked."""

    def __init__(self, dim, bottleneck, hidden, layers, activation="relu"):
        super().__init__()
        self.act = model_module.ACTIVATIONS[activation]
        self.fc_in = nn.Linear(dim, bottleneck)
        self.bn_in = nn.BatchNorm1d(bottleneck)
        self.fc1 = nn.Linear(bottleneck, hidden)
        self.bn1 = nn.BatchNorm1d(hidden)
        self.fc_hidden = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(layers)])
        self.bn_hidden = nn.ModuleList([nn.BatchNorm1d(hidden) for _ in range(layers)])
        self.fc_out = nn.Linear(hidden, 3)


class OldAtlasNet(nn.Module):
    """AtlasNet's parameters as they were laid out before: `decoders.{k}.fc_in.weight`, ..."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.template = make_template(config.template)
        self.encoder = PointNetEncoder(config.bottleneck, fused=False)
        self.decoders = nn.ModuleList([
            OldPatchDecoder(self.template.dim, config.bottleneck, config.hidden, config.layers, config.activation)
            for _ in range(config.n_patches)])


def old_layout(tensors: dict[str, torch.Tensor], K: int) -> dict[str, torch.Tensor]:
    """The model's parameters, buffers or gradients by name, in the old layout: written here
    independently of the model's own converter (which goes the other way)."""
    out = {}
    for name, t in tensors.items():
        if not name.startswith("decoders."):
            out[name] = t
            continue
        rest = name[len("decoders."):]
        for k in range(K):
            if t.dim() == 0:  # num_batches_tracked: the same count in every patch
                out[f"decoders.{k}.{rest}"] = t
            elif t.dim() == 3:  # a stacked Linear: weight (K, out, in), bias (K, out, 1)
                out[f"decoders.{k}.{rest}"] = t[k] if rest.endswith("weight") else t[k, :, 0]
            else:  # BatchNorm over K*C channels
                out[f"decoders.{k}.{rest}"] = t.view(K, -1)[k]
    return out


def as_old(model: AtlasNet) -> OldAtlasNet:
    """An old-layout copy of the model, in its mode and dtype."""
    old = OldAtlasNet(model.config).to(next(model.parameters()).dtype).train(model.training)
    old.load_state_dict(old_layout(model.state_dict(), model.config.n_patches))
    return old


def reference_encode(encoder: PointNetEncoder, points: torch.Tensor) -> torch.Tensor:
    """points (B, N, 3) -> latent (B, D)."""
    B, N, _ = points.shape
    x = points.reshape(B * N, 3)
    x = F.relu(encoder.bn1(encoder.conv1(x)))
    x = F.relu(encoder.bn2(encoder.conv2(x)))
    x = encoder.bn3(encoder.conv3(x)).view(B, N, -1).amax(dim=1)  # no ReLU before the max
    x = F.relu(encoder.bn4(encoder.lin1(x)))
    return F.relu(encoder.bn5(encoder.lin2(x)))


def reference_decode(decoder: OldPatchDecoder, template_points: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    """template_points (1, P, dim), latent (B, D) -> (B, P, 3); BatchNorm over all B*P points."""
    x = decoder.fc_in(template_points) + latent[:, None]  # (B, P, D)
    B, P, D = x.shape
    x = decoder.act(decoder.bn_in(x.reshape(B * P, D)))
    x = decoder.act(decoder.bn1(decoder.fc1(x)))
    for fc, bn in zip(decoder.fc_hidden, decoder.bn_hidden):
        x = decoder.act(bn(fc(x)))
    return decoder.fc_out(x).view(B, P, 3)


def reference_forward(model: OldAtlasNet, points: torch.Tensor, seed: int) -> torch.Tensor:
    """points (B, N, 3) -> (B, K*P, 3), the template drawn as AtlasNet(points, generator=...) draws it."""
    K = len(model.decoders)
    latent = reference_encode(model.encoder, points)
    g = torch.Generator().manual_seed(seed)
    template_points = model.template.sample(K, model.config.n_points // K, generator=g).to(latent.dtype)
    return torch.cat([reference_decode(d, t[None], latent) for d, t in zip(model.decoders, template_points)], dim=1)


def _refuse(*args, **kwargs):
    raise AssertionError("a fused kernel ran where it does not apply")


@pytest.fixture
def no_fused_kernels(monkeypatch):
    """Makes any call of atlas_core.fused's kernels from the model fail: for the cases where
    every layer must run the plain composition."""
    for name in ("linear_batchnorm_relu", "latent_batchnorm_relu", "linear_batchnorm_max"):
        monkeypatch.setattr(model_module, name, _refuse)


def assert_matches_reference(model: AtlasNet, points: torch.Tensor, rtol: float = 1e-9, atol: float = 1e-11) -> None:
    """model's forward and backward against the specification on an old-layout copy: same
    outputs, gradients and BatchNorm running statistics, up to float rounding."""
    K = model.config.n_patches
    reference = as_old(model)
    out = model(points, generator=torch.Generator().manual_seed(1))
    expected = reference_forward(reference, points, seed=1)
    torch.testing.assert_close(out, expected, rtol=rtol, atol=atol)
    chamfer_distance(out, points).backward()
    chamfer_distance(expected, points).backward()
    grads = old_layout({name: p.grad for name, p in model.named_parameters()}, K)
    assert grads.keys() == dict(reference.named_parameters()).keys()
    for name, b in reference.named_parameters():
        torch.testing.assert_close(grads[name], b.grad, rtol=100 * rtol, atol=100 * atol, msg=name)
    buffers = old_layout(dict(model.named_buffers()), K)
    for name, b in reference.named_buffers():
        torch.testing.assert_close(buffers[name], b, rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("training", [True, False])
def test_fused_model_matches_the_specification(template, training):
    torch.manual_seed(0)
    model = AtlasNet(tiny_config(template)).double().train(training)
    with torch.no_grad():  # negative gammas exercise the min side of the fused max-pool
        for name, p in model.named_parameters():
            if name.endswith("bn3.weight") or name.endswith("bn_in.weight"):
                p.uniform_(-1, 1)
    assert_matches_reference(model, torch.randn(3, 60, 3, dtype=torch.float64))


@pytest.mark.parametrize("training", [True, False])
def test_unfused_model_matches_the_specification(training, no_fused_kernels):
    torch.manual_seed(0)
    model = AtlasNet(tiny_config("square"), fused=False).double().train(training)
    assert_matches_reference(model, torch.randn(3, 60, 3, dtype=torch.float64))


def test_other_activations_fall_back_in_the_decoders():
    # The encoder's layers are ReLU whatever the configuration (fused); the decoders' are not, and
    # a ReLU kernel run there would not match the specification.
    torch.manual_seed(0)
    model = AtlasNet(tiny_config("sphere", activation="tanh")).double()
    assert_matches_reference(model, torch.randn(3, 60, 3, dtype=torch.float64))


def test_autocast_falls_back(no_fused_kernels):
    # bf16 autocast (what --bf16 training uses on CUDA; the CPU has it too): the fused kernels are
    # fp32/fp64 only, so every layer runs the plain composition, in autocast's dtypes.
    torch.manual_seed(0)
    model = AtlasNet(tiny_config("square"))
    reference = as_old(model)
    points = torch.randn(3, 60, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(points, generator=torch.Generator().manual_seed(1))
        expected = reference_forward(reference, points, seed=1)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected)


def test_state_dict_round_trip():
    model = AtlasNet(tiny_config("square"))
    again = AtlasNet(tiny_config("square"))
    again.load_state_dict(model.state_dict())
    assert list(again.state_dict()) == list(model.state_dict())
    points = torch.randn(2, 50, 3)
    model.eval(), again.eval()
    g = torch.Generator().manual_seed(0)
    assert torch.equal(model(points, generator=g), again(points, generator=torch.Generator().manual_seed(0)))


def _bytes(state) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("template", TEMPLATES)
def test_checkpoints_of_separate_decoders_load(template):
    # A checkpoint registered before the decoders were stacked: K separate decoders' keys, as
    # atlas_core.checkpoint wrote them, read back with weights_only.
    torch.manual_seed(0)
    config = tiny_config(template, activation="tanh" if template == "sphere" else "relu")
    old = OldAtlasNet(config)
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for p in old.parameters():
            p.uniform_(-0.5, 0.5)
        for seed in range(3):
            reference_forward(old, torch.randn(3, 60, 3), seed)
    train_config = TrainConfig(model=config)
    optimizer = torch.optim.Adam(old.parameters())
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[1])
    data = dump_checkpoint(config=train_config, model=old, optimizer=optimizer, scheduler=scheduler, epoch=1,
                           generator=torch.Generator(), history=[])
    assert any(key.startswith("decoders.3.fc_hidden.1.") for key in torch.load(io.BytesIO(data), weights_only=True)["model"])

    model, _, _ = load_model(data)  # torch.load(weights_only=True), eval mode
    assert old_layout(model.state_dict(), config.n_patches).keys() == old.state_dict().keys()
    for name, tensor in old_layout(model.state_dict(), config.n_patches).items():
        assert torch.equal(tensor, old.state_dict()[name]), name
    points = torch.randn(2, 60, 3)
    with torch.no_grad():
        old.eval()
        torch.testing.assert_close(model(points, generator=torch.Generator().manual_seed(1)),
                                   reference_forward(old, points, seed=1))
        old.train(), model.train()
        torch.testing.assert_close(model(points, generator=torch.Generator().manual_seed(2)),
                                   reference_forward(old, points, seed=2))


def test_a_model_saved_now_loads_now_with_weights_only():
    torch.manual_seed(0)
    model = AtlasNet(tiny_config("sphere"))
    with torch.no_grad():
        model(torch.randn(3, 60, 3))  # running statistics moved
    state = torch.load(io.BytesIO(_bytes(model.state_dict())), weights_only=True)
    assert all(not key.split(".")[1].isdigit() for key in state if key.startswith("decoders."))
    again = AtlasNet(tiny_config("sphere"))
    again.load_state_dict(state)
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name


def test_an_old_checkpoint_of_another_size_is_refused():
    old = OldAtlasNet(tiny_config("square", n_patches=5, n_points=100))
    with pytest.raises(RuntimeError, match="decoders"):
        AtlasNet(tiny_config("square")).load_state_dict(old.state_dict())


def test_an_old_optimizer_state_is_restacked_with_its_parameters():
    # A job registered before the decoders were stacked resumes with its Adam moments.
    torch.manual_seed(0)
    config = tiny_config("square")
    old = OldAtlasNet(config)
    optimizer = torch.optim.Adam(old.parameters())
    for p in old.parameters():  # one step's worth of moments, different for every tensor
        p.grad = torch.randn_like(p)
    optimizer.step()
    model = AtlasNet(config)
    model.load_state_dict(old.state_dict())
    restacked = model_module.restack_optimizer_state(model, old.state_dict(), optimizer.state_dict())
    fresh = torch.optim.Adam(model.parameters())
    fresh.load_state_dict(restacked)  # the shapes fit
    moments = {name: fresh.state[p]["exp_avg"] for name, p in model.named_parameters()}
    expected = old_layout(moments, config.n_patches)
    for name, p in old.named_parameters():
        torch.testing.assert_close(expected[name], optimizer.state[p]["exp_avg"], rtol=0, atol=0)
    # A state of the current layout is left alone.
    current = fresh.state_dict()
    assert model_module.restack_optimizer_state(model, model.state_dict(), current) is current
