"""Speed and memory choices for MNet, in one frozen object with named presets.

None of them changes the parameters, the state_dict or the result beyond float rounding (tests/test_fast_paths.py),
so a checkpoint trained with one preset loads into a network built with any other. docs/benchmarks.md has what each
buys on which device.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

PRESETS = ("auto", "reference", "cpu", "gpu")


@dataclass(frozen=True)
class MNetOptions:
    """group_norm: instance norm computed by the (faster on the CPU) group-norm kernel, one group per channel.
    merge_first: decoder nodes merge the two upsampled streams ("sub"/"sum") at the coarse size and interpolate once
    (exact: interpolation is linear).
    fast_inference: with autograd off on the CPU, exact x2 pooling/upsampling on strided views (``resampling.py``) and
    oneDNN for batch-1 convolutions (``inference_kernels.py``).
    fast_training: in CPU training on channels_last tensors, an instance-norm backward of our own
    (``channels_last_norm.py``; PyTorch's is ~10x slower on that layout); needs group_norm.
    checkpointing: in training, recompute each mesh node's activations in backward instead of storing them.
    channels_last: weights, and in training the activations, in ``torch.channels_last_3d`` (no oneDNN layout reorders
    around the convolutions). Inference keeps the input's layout.
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
        """Measured fastest on the CPU in float32 at every width tried, kn 8 to 64 (docs/benchmarks.md); ``preset``
        drops channels_last under bf16 autocast."""
        return cls(group_norm=True, merge_first=True, fast_inference=True, fast_training=True, channels_last=True)

    @classmethod
    def gpu(cls) -> MNetOptions:
        """Measured fastest on CUDA: the CPU kernels made GPU inference 1.2x slower, so none of them."""
        return cls()


def preset(
    name: str = "auto", device: str | torch.device = "cpu", checkpointing: bool = False, bf16_autocast: bool = False
) -> MNetOptions:
    """The options a config asks for by name; ``auto`` picks the CPU or GPU preset by ``device``.

    Under CPU bf16 autocast the CPU preset trains row-major: PyTorch's channels_last group norm is pathological in
    bf16, and the backward of ``fast_training`` runs in float32 only (docs/benchmarks.md)."""
    if name not in PRESETS:
        raise ValueError(f"--speed_preset: expected one of {', '.join(PRESETS)}, got {name!r}")
    if name == "auto":
        name = "gpu" if torch.device(device).type == "cuda" else "cpu"
    options = replace(getattr(MNetOptions, name)(), checkpointing=bool(checkpointing))
    if name == "cpu" and bf16_autocast:
        options = replace(options, channels_last=False)
    return options
