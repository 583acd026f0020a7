"""Instance norm of channels_last tensors in CPU training: PyTorch's forward, a faster backward.

Why: the CPU preset trains in channels_last (float32), where PyTorch's group-norm backward was MNet's largest cost
after the convolutions (17-19 % of a train step at the demo's widths): on channels_last input its CPU kernel is ~10x
slower than on row-major input, and it hands the gradient on in another layout, which slows the LeakyReLU backward
before it 3-4x. The same gradient written as a few reductions and fused multiply-adds over the (N, voxels, C) view
of the memory keeps the layout; with it channels_last became the faster layout at every width measured
(docs/benchmarks.md). The forward stays PyTorch's; its per-(sample, channel) mean and 1/std are kept for the
backward.

With x^ = (x - mean) * rstd over the S voxels of one (sample, channel) and g = dy * weight:
dx = rstd * (g - sum(g) / S - x^ * sum(g * x^) / S), dweight = sum(dy * x^), dbias = sum(dy); written as
dx = a * dy + b * x + c with per-(sample, channel) a, b, c, two passes over the voxels after the two sums.
"""

from __future__ import annotations

import torch
from scripts.networks.resampling import eager_cpu
from torch.autograd.function import Function, once_differentiable


def applies(x: torch.Tensor) -> bool:
    """Where the faster backward runs: CPU training on a channels_last (not also row-major) 5D float tensor, in eager
    mode and outside CPU autocast (where PyTorch's op follows autocast's rules)."""
    return (
        x.dim() == 5
        and x.dtype in (torch.float32, torch.float64)
        and torch.is_grad_enabled()
        and x.is_contiguous(memory_format=torch.channels_last_3d)
        and not x.is_contiguous()
        and not torch.is_autocast_enabled("cpu")
        and eager_cpu(x)
    )


def _voxels_by_channel(t: torch.Tensor) -> torch.Tensor:
    """(N, C, *spatial) in channels_last memory as its (N, S, C) view (a copy only if ``t`` is not channels_last)."""
    return t.permute(0, 2, 3, 4, 1).reshape(t.shape[0], -1, t.shape[1])


class ChannelsLastInstanceNorm(Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
        n, c = x.shape[:2]
        voxels = x[0, 0].numel()
        y, mean, rstd = torch.ops.aten.native_group_norm(x, weight, bias, n, c, voxels, c, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: torch.Tensor):
        x, weight, mean, rstd = ctx.saved_tensors
        n, c = x.shape[:2]
        voxels = x[0, 0].numel()
        dy3, x3 = _voxels_by_channel(dy), _voxels_by_channel(x)
        mean3, rstd3 = mean.view(n, 1, c), rstd.view(n, 1, c)
        sum_dy = dy3.sum(1, keepdim=True)
        product = dy3 * x3  # its buffer then takes dx: one voxel-sized allocation instead of two
        # sum(dy * x^) from sum(dy * x), as PyTorch's own group-norm backward computes it
        sum_dy_xhat = (product.sum(1, keepdim=True) - mean3 * sum_dy) * rstd3
        dx = dweight = dbias = None
        if ctx.needs_input_grad[0]:
            scale = rstd3 * weight.view(1, 1, c)
            x_coef = -scale * rstd3 * sum_dy_xhat / voxels  # dx = scale * dy + x_coef * x + shift
            shift = -scale * sum_dy / voxels - x_coef * mean3
            dx3 = torch.addcmul(shift, dy3, scale, out=product)
            dx3.addcmul_(x3, x_coef)
            dx = dx3.view(n, *x.shape[2:], c).permute(0, 4, 1, 2, 3)
        if ctx.needs_input_grad[1]:
            dweight = sum_dy_xhat.sum((0, 1))
        if ctx.needs_input_grad[2]:
            dbias = sum_dy.sum((0, 1))
        return dx, dweight, dbias, None


def instance_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """Affine instance norm of a channels_last tensor with the faster backward (see ``applies``)."""
    return ChannelsLastInstanceNorm.apply(x, weight, bias, eps)
