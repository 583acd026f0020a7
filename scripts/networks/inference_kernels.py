"""Exact, faster CPU convolutions for MNet's batch-1 inference (the x2 pooling and upsampling are ``resampling.py``).

Why: PyTorch sends batch-1 convolutions of the small deep levels (N*C*D*H <= 20480) to its slow reference kernel
(~11 % of a CPU inference forward, 2-3x slower there than oneDNN; docs/benchmarks.md); these go to oneDNN, with the
results of PyTorch's to float rounding. They run only where autograd is off, on the CPU, in float32 outside CPU
autocast, TorchScript and ONNX export; anything else takes PyTorch's op, and so does ``torch.compile`` (it picks its
own kernels).
"""

# no `from __future__ import annotations`: TorchScript cannot resolve string annotations of a jit.unused function
import weakref

import torch
import torch.nn.functional as F
from scripts.networks.resampling import eager_cpu
from torch import nn

MKLDNN = torch.backends.mkldnn.is_available()


def _fast_path(x: torch.Tensor, enabled: bool) -> bool:
    """Eager CPU inference only: under ``torch.compile`` the compiler picks the kernels (and cannot trace oneDNN's
    op with fake tensors), in training PyTorch's convolutions and their backward run."""
    return enabled and not torch.is_grad_enabled() and eager_cpu(x)


def _onednn_conv(x: torch.Tensor, fast: bool) -> bool:
    """Where PyTorch's heuristic picks its slow reference kernel and oneDNN is exact: batch-1 float32 CPU inference.
    Not under CPU autocast: oneDNN's op is not on autocast's list, so the network would silently run in float32."""
    return x.shape[0] == 1 and x.dtype == torch.float32 and _fast_path(x, fast) and not _cpu_autocast()


@torch.jit.unused
def _cpu_autocast() -> bool:
    return torch.is_autocast_enabled("cpu")


def conv3d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: list[int], fast: bool = False
) -> torch.Tensor:
    """``F.conv3d(x, weight, bias, stride=1, padding=padding)``; batch-1 float32 inference through oneDNN."""
    if _onednn_conv(x, fast):
        return _onednn_conv3d(x, weight, bias, padding)
    return F.conv3d(x, weight, bias, 1, padding)


@torch.jit.unused
def _onednn_conv3d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: list[int]
) -> torch.Tensor:
    if not MKLDNN:
        return F.conv3d(x, weight, bias, 1, padding)
    return torch.ops.aten.mkldnn_convolution(x, _row_major(weight), bias, padding, [1, 1, 1], [1, 1, 1], 1)


def _row_major(t: torch.Tensor) -> torch.Tensor:
    """``t`` with plain row-major strides. oneDNN picks the output layout from the weight's strides, and a
    channels_last weight of a 1-channel conv counts as contiguous, so ``.contiguous()`` would keep its strides and the
    whole inference would run channels_last (with results that then depend on the thread count)."""
    expected, step = [], 1
    for size in reversed(t.shape):
        expected.insert(0, step)
        step *= size
    return t if list(t.stride()) == expected else t.clone(memory_format=torch.contiguous_format)


_ROW_MAJOR_WEIGHTS: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


@torch.jit.unused
def row_major_weight(owner: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """``_row_major(weight)``, kept per module until the weight changes (its storage, version counter or strides):
    channels_last and thick-first-viewed weights were copied again at every call of every inference convolution
    (~5 % of a CPU inference forward, docs/benchmarks.md). Held outside the module: no new attribute or state."""
    key = (weight.data_ptr(), weight._version, tuple(weight.shape), tuple(weight.stride()))
    cached = _ROW_MAJOR_WEIGHTS.get(owner)
    if cached is None or cached[0] != key:
        cached = (key, _row_major(weight.detach()))
        _ROW_MAJOR_WEIGHTS[owner] = cached
    return cached[1]


def conv3d_of(
    owner: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: list[int], fast: bool
) -> torch.Tensor:
    """``conv3d`` for a module's own weight: the batch-1 oneDNN path reuses the module's row-major copy. Eager
    only: modules call it under ``not torch.jit.is_scripting()`` and take ``conv3d`` in TorchScript."""
    if _onednn_conv(x, fast):
        return _onednn_conv3d(x, row_major_weight(owner, weight), bias, padding)
    return F.conv3d(x, weight, bias, 1, padding)


class InferenceConv3d(nn.Conv3d):
    """``nn.Conv3d`` (stride 1, same parameters and state_dict) whose batch-1 CPU inference runs through oneDNN."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stride_one_padding = [int(p) for p in self.padding]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return conv3d(x, self.weight, self.bias, self.stride_one_padding, True)
        return conv3d_of(self, x, self.weight, self.bias, self.stride_one_padding, True)
