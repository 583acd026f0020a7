"""The strided x2 pooling and upsampling equal PyTorch's ops, forward and backward, and step aside where they must."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from scripts.networks.resampling import max_pool, upsample

SHAPES = [(2, 3, 8, 9, 5), (1, 2, 1, 4, 3), (1, 4, 17, 16, 1), (1, 1, 2, 2, 2)]
KERNELS = [[2, 2, 1], [2, 2, 2], [1, 2, 2], [2, 1, 2]]
FACTORS = [[2, 2, 1], [2, 2, 2], [1, 1, 2], [2, 1, 1]]


def _fits(shape, kernel) -> bool:
    return all(size >= k for size, k in zip(shape[2:], kernel))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kernel", KERNELS)
def test_max_pool_is_bit_exact(shape, kernel):
    if not _fits(shape, kernel):
        pytest.skip("input smaller than the kernel")
    x = torch.randn(shape)
    with torch.no_grad():
        assert torch.equal(max_pool(x, kernel, fast=True), F.max_pool3d(x, kernel, kernel))


@pytest.mark.parametrize("values", ["random", "ties", "constant"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kernel", KERNELS)
def test_max_pool_in_training_routes_the_gradient_as_pytorch(values, shape, kernel):
    """Forward and gradient bit for bit PyTorch's, also where a window holds equal maxima (the first in scan order
    gets the gradient: constant regions of a scan, such as air, give such windows) and for odd sizes."""
    if not _fits(shape, kernel):
        pytest.skip("input smaller than the kernel")
    generator = torch.Generator().manual_seed(0)
    if values == "random":
        data = torch.randn(shape, generator=generator)
    elif values == "ties":
        data = torch.randint(0, 2, shape, generator=generator).float()
    else:
        data = torch.zeros(shape)
    x_fast, x_ref = data.clone().requires_grad_(), data.clone().requires_grad_()
    fast, reference = max_pool(x_fast, kernel, fast_training=True), F.max_pool3d(x_ref, kernel, kernel)
    assert fast.grad_fn is not None and "MaxPool3D" not in type(fast.grad_fn).__name__  # the strided kernel ran
    grad = torch.randn(reference.shape, generator=generator)
    fast.backward(grad)
    reference.backward(grad)
    assert torch.equal(fast, reference)
    assert torch.equal(x_fast.grad, x_ref.grad)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("factors", FACTORS)
def test_upsample_matches_trilinear(shape, factors):
    x = torch.randn(shape, dtype=torch.float64)
    size = [s * f for s, f in zip(shape[2:], factors)]
    with torch.no_grad():
        fast = upsample(x, size, fast=True)
    reference = F.interpolate(x, size=size, mode="trilinear", align_corners=False)
    torch.testing.assert_close(fast, reference, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("factors", FACTORS)
def test_upsample_in_training_has_pytorchs_gradient(shape, factors):
    x_fast = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    x_ref = x_fast.detach().clone().requires_grad_()
    size = [s * f for s, f in zip(shape[2:], factors)]
    fast = upsample(x_fast, size, fast_training=True)
    reference = F.interpolate(x_ref, size=size, mode="trilinear", align_corners=False)
    assert "UpsampleTrilinear3D" not in type(fast.grad_fn).__name__  # the strided kernel ran
    grad = torch.randn(reference.shape, dtype=torch.float64)
    fast.backward(grad)
    reference.backward(grad)
    torch.testing.assert_close(fast, reference, rtol=0, atol=1e-12)
    torch.testing.assert_close(x_fast.grad, x_ref.grad, rtol=0, atol=1e-12)


def test_upsample_backward_passes_gradcheck():
    x = torch.randn(1, 2, 3, 4, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: upsample(t, [6, 8, 2], fast_training=True), (x,))


def test_pytorchs_ops_run_where_the_strided_kernels_step_aside():
    x = torch.randn(1, 2, 6, 6, 4, requires_grad=True)
    assert "MaxPool3D" in type(max_pool(x, [2, 2, 1], fast=True).grad_fn).__name__  # training without fast_training
    assert "UpsampleTrilinear3D" in type(upsample(x, [12, 12, 4], fast=True).grad_fn).__name__
    channels_last = x.detach().contiguous(memory_format=torch.channels_last_3d).requires_grad_()
    assert "MaxPool3D" in type(max_pool(channels_last, [2, 2, 1], fast_training=True).grad_fn).__name__
    assert "UpsampleTrilinear3D" in type(upsample(channels_last, [12, 12, 4], fast_training=True).grad_fn).__name__
    with torch.autocast("cpu", dtype=torch.bfloat16):  # PyTorch's ops keep autocast's precision rules
        assert "MaxPool3D" in type(max_pool(x, [2, 2, 1], fast_training=True).grad_fn).__name__
    up = upsample(x, [11, 12, 4], fast_training=True)  # not x2 on the first axis: PyTorch's interpolation
    torch.testing.assert_close(up, F.interpolate(x, size=[11, 12, 4], mode="trilinear", align_corners=False))
    assert upsample(x, [6, 6, 4], fast_training=True) is x
    scripted = torch.jit.script(max_pool)
    torch.testing.assert_close(scripted(x, [2, 2, 1], True, True), F.max_pool3d(x, [2, 2, 1], [2, 2, 1]))
