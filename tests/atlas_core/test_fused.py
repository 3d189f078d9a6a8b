"""The fused layers against the plain PyTorch composition they replace: values, gradients
(and torch.autograd.gradcheck in float64) and BatchNorm's running statistics, in training and in
eval mode."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import atlas_core.fused as fused
from atlas_core.fused import batchnorm, latent_batchnorm_relu, linear_batchnorm_max, linear_batchnorm_relu
from atlas_core.model import PatchLinear


def make_bn(C, dtype=torch.float32, seed=0, **kwargs):
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm1d(C, **kwargs).to(dtype)
    with torch.no_grad():
        if bn.weight is not None:
            bn.weight.copy_(torch.randn(C, generator=g, dtype=dtype))  # some gammas negative
            bn.bias.copy_(torch.randn(C, generator=g, dtype=dtype))
        if bn.running_mean is not None:
            bn.running_mean.copy_(torch.randn(C, generator=g, dtype=dtype))
            bn.running_var.copy_(torch.rand(C, generator=g, dtype=dtype) + 0.5)
    return bn


def make_linear(Cin, C, dtype=torch.float32, seed=1, patches=None):
    """An nn.Linear, or with `patches` K a PatchLinear (K stacked Linear layers)."""
    g = torch.Generator().manual_seed(seed)
    linear = (nn.Linear(Cin, C) if patches is None else PatchLinear(patches, Cin, C)).to(dtype)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=g, dtype=dtype))
        linear.bias.copy_(torch.randn(linear.bias.shape, generator=g, dtype=dtype))
    return linear


def with_params(module, **params):
    """A shallow copy of module whose parameters are the given tensors (for gradcheck)."""
    clone = copy.copy(module)
    clone._parameters = {**module._parameters, **params}
    return clone


# The fused layers and the plain compositions they replace: fn(inputs, linear, bn), and the
# patches K of a stacked layer (a PatchLinear, bn over K*C channels; None: an nn.Linear).
K = 3
LAYERS = {
    "linear_batchnorm_relu": (
        lambda x, lin, bn: linear_batchnorm_relu(x[0], lin, bn),
        lambda x, lin, bn: F.relu(bn(lin(x[0]))),
        lambda g, dt: [torch.randn(40, 5, generator=g, dtype=dt)],
        None,
    ),
    "linear_batchnorm_relu_stacked": (
        lambda x, lin, bn: linear_batchnorm_relu(x[0], lin, bn),
        lambda x, lin, bn: F.relu(batchnorm(bn, lin(x[0]))),
        lambda g, dt: [torch.randn(K, 5, 40, generator=g, dtype=dt)],
        K,
    ),
    "latent_batchnorm_relu": (
        lambda x, lin, bn: latent_batchnorm_relu(x[0], lin, x[1], bn),
        lambda x, lin, bn: F.relu(batchnorm(bn, (lin(x[0].transpose(1, 2))[:, :, None, :] + x[1].t()[None, :, :, None])
                                            .reshape(K, x[1].shape[1], -1))),
        lambda g, dt: [torch.rand(K, 7, 5, generator=g, dtype=dt), torch.randn(4, 6, generator=g, dtype=dt)],
        K,
    ),
    "linear_batchnorm_max": (
        lambda x, lin, bn: linear_batchnorm_max(x[0], lin, bn, 4),
        lambda x, lin, bn: bn(lin(x[0])).view(4, -1, lin.out_features).amax(dim=1),
        lambda g, dt: [torch.randn(4 * 10, 5, generator=g, dtype=dt)],  # no ties for the max
        None,
    ),
}
C = 6


def make_layer(name, dtype=torch.float32, **bn_options):
    """The Linear and BatchNorm that the layer `name` runs with."""
    patches = LAYERS[name][3]
    return make_linear(5, C, dtype, patches=patches), make_bn(C * (patches or 1), dtype, **bn_options)


def assert_same_stats(a: nn.BatchNorm1d, b: nn.BatchNorm1d, **tol):
    if a.running_mean is None:
        assert b.running_mean is None
        return
    torch.testing.assert_close(a.running_mean, b.running_mean, **tol)
    torch.testing.assert_close(a.running_var, b.running_var, **tol)
    assert int(a.num_batches_tracked) == int(b.num_batches_tracked)


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_values_gradients_and_running_stats_match(name, training, dtype):
    fused_fn, plain_fn, make_inputs, _ = LAYERS[name]
    inputs = make_inputs(torch.Generator().manual_seed(0), dtype)
    lin_a, bn_a = make_layer(name, dtype)
    bn_a.train(training)
    lin_b, bn_b = copy.deepcopy(lin_a), copy.deepcopy(bn_a)
    xa = [x.clone().requires_grad_() for x in inputs]
    xb = [x.clone().requires_grad_() for x in inputs]
    ya, yb = fused_fn(xa, lin_a, bn_a), plain_fn(xb, lin_b, bn_b)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ya, yb, **tol)
    w = torch.randn(ya.shape, generator=torch.Generator().manual_seed(3), dtype=dtype)
    (ya * w).sum().backward()
    (yb * w).sum().backward()
    pairs = list(zip(xa, xb)) + [(getattr(m_a, p), getattr(m_b, p)) for m_a, m_b in [(lin_a, lin_b), (bn_a, bn_b)] for p in ("weight", "bias")]
    for a, b in pairs:
        torch.testing.assert_close(a.grad, b.grad, **tol)
    assert_same_stats(bn_a, bn_b, **tol)
    if training:  # BatchNorm cancels the Linear's bias: an exact zero, where autograd gives ~0
        assert torch.count_nonzero(lin_a.bias.grad) == 0


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("training", [True, False])
def test_gradcheck(name, training):
    fused_fn, _, make_inputs, _ = LAYERS[name]
    inputs = [x.requires_grad_() for x in make_inputs(torch.Generator().manual_seed(0), torch.float64)]
    lin, bn = make_layer(name, torch.float64)
    bn.train(training)
    bn.track_running_stats = not training  # gradcheck's repeated calls must not move them
    params = [p.detach().clone().requires_grad_() for p in (lin.weight, lin.bias, bn.weight, bn.bias)]

    def f(*args):
        *xs, weight, bias, gamma, beta = args
        return fused_fn(xs, with_params(lin, weight=weight, bias=bias), with_params(bn, weight=gamma, bias=beta))

    # fast_mode checks the Jacobian along random directions, not column by column: the same
    # verdict on a wrong gradient at a fraction of the cost (11 s -> 2 s here, 2 cores under load).
    assert torch.autograd.gradcheck(f, (*inputs, *params), fast_mode=True)


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("kwargs", [dict(momentum=None), dict(track_running_stats=False), dict(affine=False)])
def test_batchnorm_options(name, kwargs):
    # The cumulative average, no running statistics, no affine parameters; over three steps.
    fused_fn, plain_fn, make_inputs, _ = LAYERS[name]
    lin, bn_a = make_layer(name, **kwargs)
    bn_b = copy.deepcopy(bn_a)
    for seed in range(3):
        inputs = make_inputs(torch.Generator().manual_seed(seed), torch.float32)
        torch.testing.assert_close(fused_fn(inputs, lin, bn_a), plain_fn(inputs, lin, bn_b), rtol=1e-4, atol=1e-5)
    assert_same_stats(bn_a, bn_b, rtol=1e-5, atol=1e-6)


def test_single_row_is_rejected_in_training():
    with pytest.raises(ValueError, match="more than 1 value"):
        linear_batchnorm_relu(torch.randn(1, 5), make_linear(5, C), make_bn(C))


def test_linear_batchnorm_max_chunks(monkeypatch):
    # Several shapes per chunk, and a last chunk that is shorter.
    batch, N = 5, 20
    h = torch.randn(batch * N, 5)
    lin, bn = make_linear(5, C), make_bn(C)
    expected = bn(lin(h)).view(batch, N, C).amax(dim=1)
    monkeypatch.setattr(fused, "MAX_CHUNK_BYTES", 2 * N * C * 4)
    torch.testing.assert_close(linear_batchnorm_max(h, lin, copy.deepcopy(bn), batch), expected)
    with pytest.raises(ValueError, match="rows"):
        linear_batchnorm_max(h[:-1], lin, bn, batch)


def test_linear_batchnorm_max_statistics_when_the_mean_dominates():
    # Activations far from zero compared with their spread: the batch variance must not come
    # from cancelling sums of squares. float32 against a float64 reference, no worse than the
    # plain float32 composition.
    torch.manual_seed(0)
    batch, N = 4, 500
    h = 3 + 0.01 * torch.randn(batch * N, 16)
    lin, bn = nn.Linear(16, 8), nn.BatchNorm1d(8)
    reference = copy.deepcopy(bn).double()(copy.deepcopy(lin).double()(h.double())).view(batch, N, 8).amax(1)
    plain = copy.deepcopy(bn)(lin(h)).view(batch, N, 8).amax(1)
    ours = linear_batchnorm_max(h, lin, bn, batch)
    plain_error = (plain.double() - reference).abs().max()
    assert (ours.double() - reference).abs().max() <= max(2 * plain_error, 1e-5)
