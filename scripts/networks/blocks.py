"""Small building blocks of MNet: conv-norm-act units, 2D/3D conv blocks and the feature merging unit.

All blocks work on 5D tensors (N, C, *spatial). "2D" means the kernel is 1 along the thick (through-plane) axis,
so the block never mixes information across slices; "3D" means a full 3x3x3 kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from scripts.networks.inference_kernels import conv3d, upsample

FMU_MODES = ("sub", "sum", "cat")


def axis_kernel(thick_axis: int, thick: int, other: int) -> tuple[int, int, int]:
    """Kernel (or stride) tuple with ``thick`` on the thick spatial axis and ``other`` on the two in-plane axes."""
    return tuple(thick if axis == thick_axis else other for axis in range(3))


class ConvNormAct(nn.Sequential):
    """Conv3d (stride 1, 'same' padding, bias) -> InstanceNorm3d(affine) -> LeakyReLU(0.01), as in the reference.

    Optional fast paths give the same outputs (up to float rounding) with the same parameters and state_dict:

    * ``skip_bias``: do not add the conv bias. Instance norm subtracts the per-channel mean right after the conv, so a
      per-channel bias cancels exactly; the Parameter stays (for checkpoint compatibility) but gets no gradient.
    * ``group_norm``: compute the instance norm with ``F.group_norm`` (one group per channel is instance norm). Its
      CPU kernel is faster than instance norm's (which reshapes to a batch norm and returns a view, so the in-place
      LeakyReLU then costs a copy in backward).
    * ``fast_inference``: the convolution of ``inference_kernels.conv3d`` (oneDNN for batch-1 CPU inference).

    ``forward(x, x2)`` with a second input computes ``conv(cat([x, x2]))`` as ``conv(x) + conv(x2)`` by splitting the
    weight along its input channels, which avoids materialising the concatenation (the decoder's fast path).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int, int],
        skip_bias: bool = False,
        group_norm: bool = False,
        fast_inference: bool = False,
    ):
        padding = tuple(k // 2 for k in kernel_size)
        super().__init__(
            nn.Conv3d(in_channels, out_channels, kernel_size, stride=1, padding=padding, bias=True),
            nn.InstanceNorm3d(out_channels, eps=1e-5, affine=True, track_running_stats=False),
            nn.LeakyReLU(negative_slope=0.01, inplace=True),
        )
        self.padding = list(padding)
        self.out_channels = out_channels
        self.skip_bias = skip_bias
        self.group_norm = group_norm
        self.fast_inference = fast_inference

    def _conv(self, x: torch.Tensor, x2: torch.Tensor | None) -> torch.Tensor:
        conv = self[0]
        bias = None if self.skip_bias else conv.bias
        if x2 is None:
            return conv3d(x, conv.weight, bias, self.padding, self.fast_inference)
        split = x.shape[1]
        y = conv3d(x, conv.weight[:, :split], bias, self.padding, self.fast_inference)
        return y + conv3d(x2, conv.weight[:, split:], None, self.padding, self.fast_inference)

    def forward(self, x: torch.Tensor, x2: torch.Tensor | None = None) -> torch.Tensor:
        y = self._conv(x, x2)
        norm = self[1]
        if self.group_norm:
            y = F.group_norm(y, self.out_channels, norm.weight, norm.bias, 1e-5)
        else:
            y = norm(y)
        return F.leaky_relu(y, 0.01, inplace=True)


class ConvBlock(nn.Sequential):
    """Two ConvNormAct units: in -> out -> out channels.

    ``kind="2d"`` uses a (1,3,3)-style kernel (1 on the thick axis), ``kind="3d"`` a (3,3,3) kernel. ``forward(x, x2)``
    treats the two inputs as their channel concatenation (see ``ConvNormAct``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kind: str,
        thick_axis: int,
        skip_bias: bool = False,
        group_norm: bool = False,
        fast_inference: bool = False,
    ):
        if kind not in ("2d", "3d"):
            raise ValueError(f"ConvBlock kind must be '2d' or '3d', got {kind!r}")
        kernel = axis_kernel(thick_axis, 1, 3) if kind == "2d" else (3, 3, 3)
        super().__init__(
            ConvNormAct(in_channels, out_channels, kernel, skip_bias, group_norm, fast_inference),
            ConvNormAct(out_channels, out_channels, kernel, skip_bias, group_norm, fast_inference),
        )

    def forward(self, x: torch.Tensor, x2: torch.Tensor | None = None) -> torch.Tensor:
        return self[1](self[0](x, x2))


class NoBlock(nn.Module):
    """Stands in for the conv block of a stream a mesh node does not emit (never called; no parameters)."""

    def forward(self, x: torch.Tensor, x2: torch.Tensor | None = None) -> torch.Tensor:
        return x


class FeatureMerge(nn.Module):
    """Feature merging unit (FMU) of the paper: |a - b| ("sub"), a + b ("sum") or channel concatenation ("cat")."""

    def __init__(self, mode: str = "sub"):
        super().__init__()
        if mode not in FMU_MODES:
            raise ValueError(f"fmu must be one of {FMU_MODES}, got {mode!r}")
        self.mode = mode

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.mode == "sub":
            return torch.abs(a - b)
        if self.mode == "sum":
            return a + b
        return torch.cat([a, b], dim=1)

    def upsampled(
        self, a: torch.Tensor, b: torch.Tensor, size: list[int], merge_first: bool = False, fast: bool = False
    ) -> torch.Tensor:
        """FMU(up(a), up(b)) with ``up`` = trilinear interpolation to ``size`` (align_corners=False).

        ``merge_first``: trilinear interpolation is linear and separable, so for "sub" and "sum"
        ``up(a) -/+ up(b) == up(a' -/+ b')``, where a' and b' are a and b interpolated along the axes on which only
        one of them is coarser (each axis is still interpolated once, source to target). The full-resolution
        interpolation then runs once instead of twice, and the difference is taken at the coarse size. Used when
        every axis allows it (equal sizes, or the finer one already at the target); the reference order otherwise.
        ``fast``: the exact inference kernels of ``inference_kernels.upsample``.
        """
        if merge_first and self.mode != "cat":
            common: list[int] = []
            possible = True
            for x, y, target in zip(a.shape[2:], b.shape[2:], size):
                common.append(max(x, y))
                possible = possible and (x == y or max(x, y) == target)
            if possible:
                a, b = upsample(a, common, fast), upsample(b, common, fast)
                merged = upsample(a - b if self.mode == "sub" else a + b, size, fast)
                return torch.abs(merged) if self.mode == "sub" else merged
        return self.forward(upsample(a, size, fast), upsample(b, size, fast))


def fmu_channel_factor(mode: str) -> int:
    """How many times the input channels a merged tensor has (2 for concatenation, else 1)."""
    return 2 if mode == "cat" else 1
