"""MNet computed with the thick axis first, so the 2D blocks run as true 2D convolutions over the slices.

Why: a 2D block's (3,3,1) kernel is a 2D convolution of every slice. With activations laid out (N, thick, H, W, C)
in memory (``channels_last_3d`` of the thick-axis-first tensor), the batch and the slices fold into one axis without
a copy, and the convolution runs as ``conv2d`` on a channels_last (N x slices, C, H, W) view: oneDNN's and cuDNN's
tuned 2D kernels instead of a degenerate 3D one (benchmarks/conv_layouts.py on the CPU: 0.86x the channels_last
conv3d's forward + backward at MNet's first two levels in one run, 1.05-1.18x in another; opt-in,
docs/benchmarks.md). Every other op (3x3x3 conv, norm, pooling, interpolation, merging) keeps standard
``channels_last_3d`` inputs, so nothing is copied between layers.

The parameters stay as the reference stores them (kernels (3,3,1) for a thick last axis): the convolution views its
weight in the thick-first frame at every call, so the state_dict, checkpoints and exports are unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scripts.networks.inference_kernels import conv3d, conv3d_of
from torch import nn


def to_thick_first(x: torch.Tensor, thick_axis: int, channels_last: bool) -> torch.Tensor:
    """(N, C, *S) with the thick axis at ``thick_axis`` -> (N, C, thick, a, b), stored (N, thick, a, b, C) when
    ``channels_last`` (the layout in which the 2D blocks run as conv2d), else row-major."""
    layout = torch.channels_last_3d if channels_last else torch.contiguous_format
    return x.movedim(2 + thick_axis, 2).contiguous(memory_format=layout)


def from_thick_first(x: torch.Tensor, thick_axis: int) -> torch.Tensor:
    """The inverse view of ``to_thick_first`` (no copy): the caller's axis order again."""
    return x.movedim(2, 2 + thick_axis)


class ThickFirstConv3d(nn.Conv3d):
    """``nn.Conv3d`` whose parameters are stored for a thick axis at ``stored_axis`` but which convolves tensors
    that have the thick axis first. ``kernel_size`` is given in the thick-first frame, as the mesh builds it. With
    ``channels_last`` (the mesh's training layout), a kernel 1 on the thick axis runs in training as ``conv2d`` over
    (batch x slices); inference, row-major, runs the same kernel as a conv3d."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stored_axis: int = 2, fast: bool = False,
                 channels_last: bool = False, **kwargs):  # fmt: skip
        kernel = [int(k) for k in kernel_size]
        stored = kernel[1:]
        stored.insert(stored_axis, kernel[0])  # the thick-first kernel's first entry belongs at stored_axis
        super().__init__(in_channels, out_channels, tuple(stored), **kwargs)
        self.stored_dim = stored_axis + 2
        self.slice_conv = kernel[0] == 1 and channels_last  # in training, where the mesh runs channels-last
        self.thick_first_padding = [k // 2 for k in kernel]
        self.fast = fast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.movedim(self.stored_dim, 2)
        if not (self.slice_conv and self.training):  # not from the strides: a 1-channel input fits both layouts
            if torch.jit.is_scripting():
                return conv3d(x, weight, self.bias, self.thick_first_padding, self.fast)
            return conv3d_of(self, x, weight, self.bias, self.thick_first_padding, self.fast)
        n, depth, h, w = x.shape[0], x.shape[2], x.shape[3], x.shape[4]
        slices = x.transpose(1, 2).reshape(n * depth, x.shape[1], h, w)  # a view: x is stored (N, thick, H, W, C)
        out = F.conv2d(slices, weight.squeeze(2), self.bias, 1, self.thick_first_padding[1:])
        return out.reshape(n, depth, out.shape[1], h, w).transpose(1, 2)
