from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from atlas_core.chamfer import (
    _nn_index_matmul,
    chamfer_brute_force,
    chamfer_distance,
    chamfer_terms,
    nearest_neighbors,
)

METHODS = ["kdtree", "matmul"]


def clouds(dtype, B=3, N=200, M=150, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, 3, generator=g, dtype=dtype)
    y = torch.randn(B, M, 3, generator=g, dtype=dtype) * 0.8 + 0.1
    return x, y


def brute_force_argmin(x, y):
    return ((x[:, :, None, :] - y[:, None, :, :]) ** 2).sum(-1).argmin(dim=2)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nearest_neighbors_match_brute_force(method, dtype):
    x, y = clouds(dtype)
    idx, dist2 = nearest_neighbors(x, y, method=method)
    assert idx.shape == (3, 200) and idx.dtype == torch.long
    assert dist2.shape == (3, 200) and dist2.dtype == dtype
    assert torch.equal(idx, brute_force_argmin(x, y))
    assert torch.equal(dist2, ((x - y[torch.arange(3)[:, None], idx]) ** 2).sum(-1))


def test_matmul_chunks_give_the_same_neighbours():
    # Far from the origin and with budgets that split rows unevenly and batch elements apart.
    x, y = clouds(torch.float32)
    x, y = x + 1000.0, y + 1000.0
    expected = brute_force_argmin(x.double(), y.double())
    for max_bytes in [8 * 150 * 7, 8 * 150 * 200, 8 * 150 * 200 * 2, 2**30]:
        assert torch.equal(_nn_index_matmul(x, y, max_bytes=max_bytes), expected)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chamfer_values_and_gradients_match_brute_force(method, dtype):
    x, y = clouds(dtype)
    x1, y1 = x.clone().requires_grad_(), y.clone().requires_grad_()
    x2, y2 = x.clone().requires_grad_(), y.clone().requires_grad_()

    ours = chamfer_distance(x1, y1, method=method)
    reference = chamfer_brute_force(x2, y2)
    ours.backward()
    reference.backward()

    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours, reference, **tol)
    torch.testing.assert_close(x1.grad, x2.grad, **tol)
    torch.testing.assert_close(y1.grad, y2.grad, **tol)


def test_terms_shapes_and_indices():
    x, y = clouds(torch.float64)
    d_xy, d_yx, idx_xy, idx_yx = chamfer_terms(x, y)
    assert d_xy.shape == idx_xy.shape == (3, 200)
    assert d_yx.shape == idx_yx.shape == (3, 150)
    assert torch.equal(idx_xy, brute_force_argmin(x, y))
    assert torch.equal(idx_yx, brute_force_argmin(y, x))


def test_identical_clouds_give_zero():
    x, _ = clouds(torch.float32)
    x = x.requires_grad_()
    loss = chamfer_distance(x, x.detach().clone())
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(x.grad) == 0


def test_hand_computed_cases():
    # Single points: both directions are the squared distance, so chamfer = 2 * |t|^2.
    x = torch.tensor([[[0.0, 0.0, 0.0]]])
    y = torch.tensor([[[1.0, 2.0, 2.0]]])
    assert chamfer_distance(x, y).item() == pytest.approx(18.0)

    # x on the x-axis at 0 and 1, y two points far along z: every x point's neighbour is the
    # nearer y point (z = 10), every y point's neighbour is the x point at 1 (nearer in x).
    x = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]])
    y = torch.tensor([[[1.0, 0.0, 10.0], [1.0, 0.0, 20.0]]])
    d_xy, d_yx, idx_xy, idx_yx = chamfer_terms(x, y)
    assert idx_xy.tolist() == [[0, 0]] and idx_yx.tolist() == [[1, 1]]
    torch.testing.assert_close(d_xy, torch.tensor([[101.0, 100.0]]))
    torch.testing.assert_close(d_yx, torch.tensor([[100.0, 400.0]]))
    assert chamfer_distance(x, y).item() == pytest.approx(100.5 + 250.0)


def test_reduction():
    x, y = clouds(torch.float32)
    per_cloud = chamfer_distance(x, y, reduction="none")
    assert per_cloud.shape == (3,)
    torch.testing.assert_close(per_cloud, chamfer_brute_force(x, y, reduction="none"))
    torch.testing.assert_close(per_cloud.mean(), chamfer_distance(x, y))
    with pytest.raises(ValueError, match="reduction"):
        chamfer_distance(x, y, reduction="sum")


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="point clouds"):
        chamfer_distance(torch.zeros(2, 5, 3), torch.zeros(3, 5, 3))


def test_kdtree_with_one_thread():
    x, y = clouds(torch.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        idx, _ = nearest_neighbors(x, y, method="kdtree")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(idx, brute_force_argmin(x, y))


@pytest.mark.parametrize("method", METHODS)
def test_both_directions_searched_at_once_give_the_same_terms(method):
    x, y = clouds(torch.float32)
    with ThreadPoolExecutor(2) as pool:
        together = chamfer_terms(x, y, method=method, pool=pool)
    for a, b in zip(chamfer_terms(x, y, method=method), together):
        assert torch.equal(a, b)
