"""The batch-1 oneDNN inference convolutions equal PyTorch's, and their row-major weights are made once."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from scripts.networks.inference_kernels import conv3d


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
