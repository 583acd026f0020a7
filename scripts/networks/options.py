"""Speed and memory choices for MNet, in one frozen object with named presets.

None of them changes the parameters, the state_dict or the result beyond float rounding (tests/test_fast_paths.py),
so a checkpoint trained with one preset loads into a network built with any other. docs/benchmarks.md has what each
buys on which device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

PRESETS = ("auto", "reference", "cpu", "gpu")
# With freed memory kept, CPU training in channels_last paid for networks narrower than this first width (train step
# 0.78x row-major's at kn 8, 0.90x at 24, 0.96x at 28) and lost from it on (1.08-1.11x at the paper's 32, 1.02x at
# 40): oneDNN's layout copies weigh more than the slow channels_last group norm in narrow layers (docs/benchmarks.md).
CHANNELS_LAST_BELOW_WIDTH = 32


@dataclass(frozen=True)
class MNetOptions:
    """group_norm: instance norm computed by the (faster on the CPU) group-norm kernel, one group per channel.
    merge_first: decoder nodes merge the two upsampled streams ("sub"/"sum") at the coarse size and interpolate once
    (exact: interpolation is linear).
    fast_inference: with autograd off on the CPU, exact x2 pooling/upsampling on strided views (``resampling.py``) and
    oneDNN for batch-1 convolutions (``inference_kernels.py``).
    fast_training: in CPU training too, the strided x2 pooling/upsampling, with their own backward (exact: pooling's
    gradient goes where PyTorch's goes, upsampling's equals PyTorch's to float rounding).
    checkpointing: in training, recompute each mesh node's activations in backward instead of storing them.
    channels_last: weights, and in training the activations, in ``torch.channels_last_3d`` (no oneDNN layout reorders
    around the convolutions; on the CPU it pays while glibc unmaps freed memory and in narrow networks, see
    ``preset``). Inference keeps the input's layout.
    thick_first: compute with the thick axis first (``slice_frame.py``); with channels_last the 2D blocks' convolutions
    then run as conv2d over (batch x slices) on a zero-copy view."""

    group_norm: bool = False
    merge_first: bool = False
    fast_inference: bool = False
    fast_training: bool = False
    checkpointing: bool = False
    channels_last: bool = False
    thick_first: bool = False

    @classmethod
    def reference(cls) -> MNetOptions:
        """The authors' computation, op for op."""
        return cls()

    @classmethod
    def cpu(cls) -> MNetOptions:
        """Measured fastest on the CPU at the paper's widths with freed memory kept (the configs' default); ``preset``
        adds channels_last where that is faster (docs/benchmarks.md)."""
        return cls(group_norm=True, merge_first=True, fast_inference=True, fast_training=True)

    @classmethod
    def gpu(cls) -> MNetOptions:
        """Measured fastest on CUDA: the CPU kernels made GPU inference 1.2x slower, so none of them."""
        return cls()


def preset(
    name: str = "auto",
    device: str | torch.device = "cpu",
    checkpointing: bool = False,
    bf16_autocast: bool = False,
    freed_memory_kept: bool = True,
    widths: Sequence[int] | None = None,
) -> MNetOptions:
    """The options a config asks for by name; ``auto`` picks the CPU or GPU preset by ``device``.

    The CPU preset trains in float32 in channels_last where that measured faster: while glibc unmaps freed memory
    (``freed_memory_kept`` false: oneDNN's layout copies around every convolution fault in fresh pages each step and
    channels_last has none), and for networks whose first width (``widths[0]``, MNet's ``kn``) is below
    ``CHANNELS_LAST_BELOW_WIDTH``. At the paper's widths with freed memory kept, and under bf16 autocast, PyTorch's
    slow channels_last group norm makes the row-major layout faster (docs/benchmarks.md)."""
    if name not in PRESETS:
        raise ValueError(f"--speed_preset: expected one of {', '.join(PRESETS)}, got {name!r}")
    if name == "auto":
        name = "gpu" if torch.device(device).type == "cuda" else "cpu"
    options = replace(getattr(MNetOptions, name)(), checkpointing=bool(checkpointing))
    narrow = widths is not None and int(widths[0]) < CHANNELS_LAST_BELOW_WIDTH
    if name == "cpu" and not bf16_autocast and (narrow or not freed_memory_kept):
        options = replace(options, channels_last=True)
    return options
