"""The fast inference kernels for x2 pooling and upsampling equal PyTorch's ops, and step aside where they must."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from scripts.networks.inference_kernels import conv3d, max_pool, upsample

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
    assert upsample(x, [5, 6, 3]) is x


@pytest.mark.parametrize("shape,kernel", [((1, 80, 16, 16, 4), (3, 3, 3)), ((1, 6, 9, 7, 3), (3, 3, 1))])
def test_batch1_convolution_matches_pytorch(shape, kernel):
    """The small batch-1 inputs PyTorch would run on its reference kernel give the same result through oneDNN."""
    x, weight, bias = torch.randn(shape), torch.randn(shape[1], shape[1], *kernel) / 10, torch.randn(shape[1])
    padding = [k // 2 for k in kernel]
    with torch.no_grad():
        fast = conv3d(x, weight, bias, padding, fast=True)
        split = conv3d(x[:, :3], weight[:, :3], None, padding, fast=True)  # a non-contiguous weight slice
    torch.testing.assert_close(fast, F.conv3d(x, weight, bias, 1, padding), rtol=1e-4, atol=5e-5)
    torch.testing.assert_close(split, F.conv3d(x[:, :3], weight[:, :3], None, 1, padding), rtol=1e-4, atol=5e-5)


def test_inference_weights_are_laid_out_once_and_follow_weight_changes():
    """The row-major copy of a channels_last / thick-first-viewed weight is made once per module, not at every call,
    and a changed weight (load_state_dict, an in-place update) is picked up at the next call."""
    from scripts.networks import inference_kernels
    from scripts.networks.mnet import MNet
    from scripts.networks.options import MNetOptions

    torch.manual_seed(0)
    options = replace(MNetOptions.cpu(), channels_last=True)  # the preset with freed memory released
    net = MNet(1, 3, kn=(4, 4, 6, 6, 8), options=options).eval()
    plain = MNet(1, 3, kn=(4, 4, 6, 6, 8)).eval()
    x = torch.randn(1, 1, 48, 48, 8)
    copies = []
    real = inference_kernels._row_major

    def counting(t: torch.Tensor) -> torch.Tensor:
        out = real(t)
        if out is not t:
            copies.append(tuple(t.shape))
        return out

    inference_kernels._row_major = counting
    try:
        with torch.no_grad():
            first = net(x)
            made = len(copies)
            assert made > 0 and torch.equal(net(x), first) and len(copies) == made  # no copy on the second call
            plain.load_state_dict(net.state_dict())
            torch.testing.assert_close(first, plain(x), rtol=1e-4, atol=1e-4)
            for p in net.parameters():
                p.mul_(0.5)  # in place: the version counter moves
            plain.load_state_dict(net.state_dict())
            torch.testing.assert_close(net(x), plain(x), rtol=1e-4, atol=1e-4)
            net.load_state_dict(MNet(1, 3, kn=(4, 4, 6, 6, 8)).state_dict())
            plain.load_state_dict(net.state_dict())
            torch.testing.assert_close(net(x), plain(x), rtol=1e-4, atol=1e-4)
    finally:
        inference_kernels._row_major = real
