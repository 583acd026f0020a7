"""Small building blocks of MNet: conv-norm-act units, 2D/3D conv blocks and the feature merging unit.

All blocks work on 5D tensors (N, C, *spatial). "2D" means the kernel is 1 along the thick (through-plane) axis, so
the block never mixes information across slices; "3D" means a full 3x3x3 kernel. Which convolution and which norm
kernel run is chosen once, when the network is built (``conv_op`` / ``norm_op``, as nnU-Net and DynUNet inject them);
every choice has the reference's parameters and state_dict keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scripts.networks import channels_last_norm
from scripts.networks.resampling import upsample
from scripts.networks.topology import FMU_MODES
from torch import nn


def axis_kernel(thick_axis: int, thick: int, other: int) -> tuple[int, int, int]:
    """Kernel (or stride) tuple with ``thick`` on the thick spatial axis and ``other`` on the two in-plane axes."""
    return tuple(thick if axis == thick_axis else other for axis in range(3))


class InstanceNormByGroupNorm(nn.GroupNorm):
    """Affine instance norm computed by the group-norm kernel (one group per channel is instance norm).

    Same ``weight``/``bias`` as ``nn.InstanceNorm3d(C, affine=True)``. Its CPU kernel is faster: instance norm's
    reshapes to a batch norm and returns a view, so an in-place activation then costs a copy in backward.
    ``fast_backward``: in CPU training on channels_last tensors, ``channels_last_norm``'s backward (PyTorch's is slow
    there).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True, fast_backward: bool = False):
        super().__init__(num_features, num_features, eps=eps, affine=affine)
        self.fast_backward = fast_backward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting() or not self.fast_backward:
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return self._eager_forward(x)

    @torch.jit.unused
    def _eager_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.affine and channels_last_norm.applies(x):
            return channels_last_norm.instance_norm(x, self.weight, self.bias, self.eps)
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


def instance_norm(num_features: int) -> nn.Module:
    """The reference's norm: InstanceNorm3d(affine), eps 1e-5, no running statistics."""
    return nn.InstanceNorm3d(num_features, eps=1e-5, affine=True, track_running_stats=False)


class ConvNormAct(nn.Module):
    """Conv3d (stride 1, 'same' padding, bias) -> instance norm (affine) -> LeakyReLU(0.01), as in the reference."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int, int],
        conv_op: type[nn.Conv3d] = nn.Conv3d,
        norm_op=instance_norm,
    ):
        super().__init__()
        padding = tuple(k // 2 for k in kernel_size)
        self.conv = conv_op(in_channels, out_channels, kernel_size, stride=1, padding=padding, bias=True)
        self.norm = norm_op(out_channels)
        self.act = nn.LeakyReLU(negative_slope=0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class ConvBlock(nn.Module):
    """Two ConvNormAct units (in -> out -> out channels); ``kind="2d"`` has kernels 1 on the thick axis."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kind: str,
        thick_axis: int,
        conv_op: type[nn.Conv3d] = nn.Conv3d,
        norm_op=instance_norm,
    ):
        super().__init__()
        if kind not in ("2d", "3d"):
            raise ValueError(f"ConvBlock kind must be '2d' or '3d', got {kind!r}")
        kernel = axis_kernel(thick_axis, 1, 3) if kind == "2d" else (3, 3, 3)
        self.conv1 = ConvNormAct(in_channels, out_channels, kernel, conv_op, norm_op)
        self.conv2 = ConvNormAct(out_channels, out_channels, kernel, conv_op, norm_op)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


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
        interpolation then runs once instead of twice. Used when every axis allows it (equal sizes, or the finer one
        already at the target); the reference order otherwise. ``fast``: ``resampling.upsample``'s kernels.
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
