"""Process set-up that every workflow shares: seeds, cuDNN mode, AMP and where the volume lives.

One place instead of the same lines in four configs and the benchmarks. ``cudnn_benchmark`` (default true) lets
cuDNN time its algorithms, which MONAI's ``set_determinism`` switches off; false selects deterministic kernels.
"""

from __future__ import annotations

import torch
from monai.utils import set_determinism
from scripts.settings import as_bool


def configure(seed: int | None = 0, cudnn_benchmark: object = True) -> None:
    """Seed Python, NumPy and torch, then set cuDNN's mode (after the seeding, which resets it)."""
    if seed is not None:
        set_determinism(seed=int(seed))
    benchmark = as_bool(cudnn_benchmark, "cudnn_benchmark")
    torch.backends.cudnn.benchmark = benchmark
    torch.backends.cudnn.deterministic = not benchmark


def use_amp(amp: object, device: str | torch.device) -> bool:
    """Mixed precision where it pays and works: on CUDA devices, when ``amp`` is on."""
    return as_bool(amp, "amp") and torch.device(device).type == "cuda"


def volume_device(volume_on_cpu: object, device: str | torch.device) -> str | None:
    """Where the sliding window keeps the whole volume and its output: the CPU when asked (large volumes on a small
    GPU), else the compute device (``None`` = the input's device for MONAI's inferer)."""
    return "cpu" if as_bool(volume_on_cpu, "volume_on_cpu") else None
