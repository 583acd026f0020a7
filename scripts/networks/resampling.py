"""Exact x2 max pooling and x2 trilinear upsampling on strided views, for MNet's CPU inference.

Why: in a CPU inference forward, ``F.max_pool3d`` (~7 %) and trilinear ``F.interpolate`` (~12 %) cost a fifth of
MNet's time (docs/benchmarks.md). With exact factors of 2, pooling is ``maximum`` of the even and odd slices per
pooled axis, and linear x2 upsampling (align_corners=False) gives every output 0.75 of its source voxel plus 0.25 of
the neighbour on its side (the edge voxel at the borders): a few elementwise passes, ~10x faster. Pooling is bit for
bit PyTorch's, upsampling equal to float rounding. They run only where autograd is off, in eager mode on the CPU:
in training (where the CPU preset's channels_last tensors have fast PyTorch kernels), under TorchScript, ONNX export
or ``torch.compile`` (which picks its own kernels) and on other devices PyTorch's ops run.
"""

# no `from __future__ import annotations`: TorchScript cannot resolve string annotations of a jit.unused function
import torch
import torch.nn.functional as F


def eager_cpu(x: torch.Tensor) -> bool:
    """True where the strided kernels may replace PyTorch's op: eager CPU code, not scripted, exported or compiled."""
    if torch.jit.is_scripting() or x.device.type != "cpu":
        return False
    return not (torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling())


def _strided(x: torch.Tensor, fast: bool) -> bool:
    return fast and not torch.is_grad_enabled() and eager_cpu(x)


def max_pool(x: torch.Tensor, kernel: list[int], fast: bool = False) -> torch.Tensor:
    """``F.max_pool3d(x, kernel, stride=kernel)`` for kernels of 1s and 2s (floor mode drops an odd last voxel)."""
    if not _strided(x, fast):
        return F.max_pool3d(x, kernel_size=kernel, stride=kernel)
    for dim in _pooled_dims(kernel):
        x = _pair_max(x, dim)
    return x


def upsample(x: torch.Tensor, size: list[int], fast: bool = False) -> torch.Tensor:
    """``F.interpolate(x, size, mode="trilinear", align_corners=False)``; ``x`` itself when it already has ``size``."""
    if list(x.shape[2:]) == list(size):
        return x
    factors_of_two = True
    for source, target in zip(x.shape[2:], size):
        factors_of_two = factors_of_two and target in (source, 2 * source)
    if not (factors_of_two and _strided(x, fast)):
        return F.interpolate(x, size=size, mode="trilinear", align_corners=False)
    for axis, target in enumerate(size):
        if target != x.shape[axis + 2]:
            x = _double(x, axis + 2)
    return x


def _pooled_dims(kernel: list[int]) -> list[int]:
    """The pooled tensor dims."""
    dims: list[int] = []
    for axis in [0, 1, 2]:
        if kernel[axis] == 2:
            dims.append(axis + 2)
    return dims


def _pairs(x: torch.Tensor, dim: int) -> torch.Tensor:
    """View of ``x`` with ``dim`` split into (pairs, 2); an odd last voxel is left out."""
    return x.narrow(dim, 0, x.shape[dim] // 2 * 2).unflatten(dim, (x.shape[dim] // 2, 2))


def _pair_max(x: torch.Tensor, dim: int) -> torch.Tensor:
    pairs = _pairs(x, dim)
    return torch.maximum(pairs.select(dim + 1, 0), pairs.select(dim + 1, 1))


def _like(x: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """An empty tensor of ``shape`` in ``x``'s memory layout (channels_last_3d stays channels_last_3d)."""
    channels_last = x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous()
    layout = torch.channels_last_3d if channels_last else torch.contiguous_format
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=layout)


def _double(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Linear x2 upsampling along ``dim``: out[2i] = .75 x[i] + .25 x[i-1], out[2i+1] = .75 x[i] + .25 x[i+1]."""
    n = x.shape[dim]
    shape = list(x.shape)
    shape[dim] = 2 * n
    out = _like(x, shape)
    pairs = out.unflatten(dim, (n, 2))
    even, odd = pairs.select(dim + 1, 0), pairs.select(dim + 1, 1)
    torch.mul(x, 0.75, out=even)
    odd.copy_(even)
    even.narrow(dim, 1, n - 1).add_(x.narrow(dim, 0, n - 1), alpha=0.25)
    even.narrow(dim, 0, 1).add_(x.narrow(dim, 0, 1), alpha=0.25)
    odd.narrow(dim, 0, n - 1).add_(x.narrow(dim, 1, n - 1), alpha=0.25)
    odd.narrow(dim, n - 1, 1).add_(x.narrow(dim, n - 1, 1), alpha=0.25)
    return out
