"""The strided x2 pooling and upsampling of CPU inference equal PyTorch's ops, and step aside where they must."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from scripts.networks.resampling import max_pool, upsample

SHAPES = [(2, 3, 8, 9, 5), (1, 2, 1, 4, 3), (1, 4, 17, 16, 1), (1, 1, 2, 2, 2)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kernel", [[2, 2, 1], [2, 2, 2], [1, 2, 2], [2, 1, 2]])
def test_max_pool_is_bit_exact(shape, kernel):
    if any(size < k for size, k in zip(shape[2:], kernel)):
        pytest.skip("input smaller than the kernel")
    x = torch.randn(shape)
    with torch.no_grad():
        assert torch.equal(max_pool(x, kernel, fast=True), F.max_pool3d(x, kernel, kernel))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("factors", [[2, 2, 1], [2, 2, 2], [1, 1, 2], [2, 1, 1]])
def test_upsample_matches_trilinear(shape, factors):
    x = torch.randn(shape, dtype=torch.float64)
    size = [s * f for s, f in zip(shape[2:], factors)]
    with torch.no_grad():
        fast = upsample(x, size, fast=True)
    reference = F.interpolate(x, size=size, mode="trilinear", align_corners=False)
    torch.testing.assert_close(fast, reference, rtol=0, atol=1e-12)


def test_other_factors_and_autograd_use_pytorch_ops():
    x = torch.randn(1, 2, 5, 6, 3, requires_grad=True)
    up = upsample(x, [11, 12, 3], fast=True)  # not x2 on the first axis: PyTorch's interpolation
    torch.testing.assert_close(up, F.interpolate(x, size=[11, 12, 3], mode="trilinear", align_corners=False))
    pooled = max_pool(x, [2, 2, 1], fast=True)  # autograd on: PyTorch's op and its backward
    assert pooled.grad_fn is not None and "MaxPool3D" in type(pooled.grad_fn).__name__
    assert "UpsampleTrilinear3D" in type(upsample(x, [10, 12, 3], fast=True).grad_fn).__name__
    assert upsample(x, [5, 6, 3]) is x


def test_a_channels_last_input_keeps_its_layout():
    x = torch.randn(1, 4, 6, 6, 4).contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        up = upsample(x, [12, 12, 4], fast=True)
    assert up.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(up, F.interpolate(x, size=[12, 12, 4], mode="trilinear", align_corners=False))
