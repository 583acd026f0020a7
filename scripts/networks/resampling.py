"""Exact x2 max pooling and x2 trilinear upsampling on strided views, with their own backward for CPU training.

Why: PyTorch's CPU ``max_pool3d`` and trilinear ``interpolate`` are generic kernels. With exact factors of 2, pooling
is ``maximum`` of the even and odd slices per pooled axis, and linear x2 upsampling (align_corners=False) gives every
output 0.75 of its source voxel plus 0.25 of the neighbour on its side (the edge voxel at the borders): a few
elementwise passes, ~10x faster in inference and, with the backward below, 2-3x faster forward + backward in training
(docs/benchmarks.md). Pooling is bit for bit PyTorch's, including its gradient routing (the first maximum of a window
in scan order gets the gradient); upsampling and its backward equal PyTorch's to float rounding.

They run in eager mode on the CPU only: under TorchScript, ONNX export or ``torch.compile`` (which picks its own
kernels) and on other devices PyTorch's ops run. The training path also steps aside for channels_last tensors
(PyTorch's channels_last kernels are faster) and under CPU autocast, where PyTorch's ops follow its precision rules.
"""

# no `from __future__ import annotations`: TorchScript cannot resolve string annotations of a jit.unused function
import torch
import torch.nn.functional as F
from torch.autograd.function import Function, once_differentiable


def eager_cpu(x: torch.Tensor) -> bool:
    """True where the strided kernels may replace PyTorch's op: eager CPU code, not scripted, exported or compiled."""
    if torch.jit.is_scripting() or x.device.type != "cpu":
        return False
    return not (torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling())


@torch.jit.unused
def cpu_autocast() -> bool:
    return torch.is_autocast_enabled("cpu")


def _strided(x: torch.Tensor, fast: bool, fast_training: bool) -> bool:
    """``fast``: the strided kernels where autograd is off; ``fast_training``: also where it is on, for row-major
    tensors (PyTorch's channels_last kernels are 2-3x faster than these)."""
    if not eager_cpu(x):
        return False
    if torch.is_grad_enabled():
        return fast_training and x.is_contiguous() and not cpu_autocast()
    return fast


def max_pool(x: torch.Tensor, kernel: list[int], fast: bool = False, fast_training: bool = False) -> torch.Tensor:
    """``F.max_pool3d(x, kernel, stride=kernel)`` for kernels of 1s and 2s (floor mode drops an odd last voxel)."""
    if not _strided(x, fast, fast_training):
        return F.max_pool3d(x, kernel_size=kernel, stride=kernel)
    if torch.is_grad_enabled():
        return _max_pool_with_backward(x, kernel)
    for dim in _pooled_dims(kernel):
        x = _pair_max(x, dim)
    return x


def upsample(x: torch.Tensor, size: list[int], fast: bool = False, fast_training: bool = False) -> torch.Tensor:
    """``F.interpolate(x, size, mode="trilinear", align_corners=False)``; ``x`` itself when it already has ``size``."""
    if list(x.shape[2:]) == list(size):
        return x
    factors_of_two = True
    for source, target in zip(x.shape[2:], size):
        factors_of_two = factors_of_two and target in (source, 2 * source)
    if not (factors_of_two and _strided(x, fast, fast_training)):
        return F.interpolate(x, size=size, mode="trilinear", align_corners=False)
    if torch.is_grad_enabled():
        return _upsample_with_backward(x, size)
    for axis, target in enumerate(size):
        if target != x.shape[axis + 2]:
            x = _double(x, axis + 2)
    return x


def _pooled_dims(kernel: list[int]) -> list[int]:
    """The pooled tensor dims, last first: keeping the first of two equal values per pair, reduced in this order,
    keeps the window's first maximum in PyTorch's scan order (first axis outermost)."""
    dims: list[int] = []
    for axis in [2, 1, 0]:
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


def _double_backward(grad: torch.Tensor, dim: int) -> torch.Tensor:
    """The adjoint of ``_double``: x[i] collects .75 of out[2i] and out[2i+1], .25 of out[2i+2] and out[2i-1], and at
    the borders the .25 that ``_double`` took from the edge voxel itself."""
    n = grad.shape[dim] // 2
    pairs = grad.unflatten(dim, (n, 2))
    even, odd = pairs.select(dim + 1, 0), pairs.select(dim + 1, 1)
    out = torch.add(even, odd).mul_(0.75)
    out.narrow(dim, 0, n - 1).add_(even.narrow(dim, 1, n - 1), alpha=0.25)
    out.narrow(dim, 0, 1).add_(even.narrow(dim, 0, 1), alpha=0.25)
    out.narrow(dim, 1, n - 1).add_(odd.narrow(dim, 0, n - 1), alpha=0.25)
    out.narrow(dim, n - 1, 1).add_(odd.narrow(dim, n - 1, 1), alpha=0.25)
    return out


def _route_pair_max(x: torch.Tensor, grad: torch.Tensor, dim: int) -> torch.Tensor:
    """Backward of ``_pair_max(x, dim)``: each pair's gradient goes to its larger voxel, to the first on a tie."""
    pairs = _pairs(x, dim)
    second = pairs.select(dim + 1, 1) > pairs.select(dim + 1, 0)
    out = _like(x, list(x.shape))
    if x.shape[dim] % 2:
        out.narrow(dim, x.shape[dim] - 1, 1).zero_()  # floor mode: the odd last voxel reached no output
    out_pairs = _pairs(out, dim)
    torch.mul(grad, second, out=out_pairs.select(dim + 1, 1))
    torch.sub(grad, out_pairs.select(dim + 1, 1), out=out_pairs.select(dim + 1, 0))
    return out


class _MaxPool(Function):
    """Pair maxima forward; backward recomputes the intermediate maxima from the saved input (the next layer keeps
    that input alive anyway) and routes the gradient back pair by pair."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dims: list[int]) -> torch.Tensor:
        ctx.dims = dims
        ctx.save_for_backward(x)
        for dim in dims:
            x = _pair_max(x, dim)
        return x

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        stages = [x]
        for dim in ctx.dims[:-1]:
            stages.append(_pair_max(stages[-1], dim))
        for stage, dim in zip(reversed(stages), reversed(ctx.dims)):
            grad = _route_pair_max(stage, grad, dim)
        return grad, None


class _Upsample(Function):
    """``_double`` per upsampled axis; backward is its adjoint, axis by axis in reverse."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dims: list[int]) -> torch.Tensor:
        ctx.dims = dims
        for dim in dims:
            x = _double(x, dim)
        return x

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        for dim in reversed(ctx.dims):
            grad = _double_backward(grad, dim)
        return grad, None


@torch.jit.unused
def _max_pool_with_backward(x: torch.Tensor, kernel: list[int]) -> torch.Tensor:
    return _MaxPool.apply(x, _pooled_dims(kernel))


@torch.jit.unused
def _upsample_with_backward(x: torch.Tensor, size: list[int]) -> torch.Tensor:
    dims = [axis + 2 for axis, target in enumerate(size) if target != x.shape[axis + 2]]
    return _Upsample.apply(x, dims)
