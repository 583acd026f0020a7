"""Process set-up that every workflow shares: seeds, cuDNN mode, AMP and where the volume lives.

One place instead of the same lines in four configs and the benchmarks. ``cudnn_benchmark`` (default true) lets
cuDNN time its algorithms, which MONAI's ``set_determinism`` switches off; false selects deterministic kernels.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from monai.utils import set_determinism
from scripts.errors import BundleInputError
from scripts.settings import as_bool

logger = logging.getLogger("mnet.runtime")


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


AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def amp_kwargs(dtype: str = "float16") -> dict:
    """``torch.autocast`` arguments for MONAI's engines: float16 (with loss scaling) or bfloat16 (float32's exponent
    range, no overflow; Ampere and newer GPUs). A one-line error for anything else, before any case is read."""
    if dtype not in AMP_DTYPES:
        raise BundleInputError(f"--amp_dtype: expected one of {', '.join(AMP_DTYPES)}, got {dtype!r}")
    return {"dtype": AMP_DTYPES[dtype]}


def use_compile(compile: object) -> bool:
    """``torch.compile`` of the network by MONAI's engines (``compile_options`` are its keyword arguments, e.g.
    ``{'mode': 'reduce-overhead'}`` for CUDA graphs). Off by default: compiling takes minutes (docs/benchmarks.md)."""
    return as_bool(compile, "compile")


def volume_device(volume_on_cpu: object, device: str | torch.device) -> str | None:
    """Where the sliding window keeps the whole volume and its output: the CPU when asked (large volumes on a small
    GPU), else the compute device (``None`` = the input's device for MONAI's inferer)."""
    return "cpu" if as_bool(volume_on_cpu, "volume_on_cpu") else None


# The CPU sizing of the demo's "cpu" profile (scripts/demo/pipeline.py imports it; the demo is not shipped, so the
# shipped warning cannot import the demo): 1/4 of the paper's widths, 64x64x16 patches, batch 2.
CPU_KN = (8, 12, 16, 20, 24)
CPU_PATCH_SIZE = (64, 64, 16)
CPU_BATCH_SIZE = 2


def cpu_sizing_advice(patch_size: Sequence[int], batch_size: int, kn: Sequence[int]) -> str | None:
    """How to shrink a training that is larger than the demo's CPU sizing (docs/demo.md), or None when it is not
    larger. An iteration's work grows with the patch's voxels, the batch and the widths; the planner sizes all three
    for a GPU."""
    work = math.prod(patch_size) * int(batch_size) * sum(kn)
    if work <= math.prod(CPU_PATCH_SIZE) * CPU_BATCH_SIZE * sum(CPU_KN):
        return None
    return (
        f"training on a CPU at patch {_compact(patch_size)}, batch {batch_size}, kn {_compact(kn)} (a GPU sizing) "
        f'is very slow; for a CPU use the demo\'s sizing: plan with `python -m scripts.plan --kn "{_compact(CPU_KN)}"`'
        f', train with `--patch_size "{_compact(CPU_PATCH_SIZE)}" --batch_size {CPU_BATCH_SIZE}` (docs/demo.md, '
        '"Settings")'
    )


def _compact(values: Sequence[int]) -> str:
    return "[" + ",".join(str(int(v)) for v in values) + "]"


def warn_cpu_training(
    device: str | torch.device, patch_size: Sequence[int], batch_size: int, kn: Sequence[int]
) -> None:
    """Log one warning when training runs on a CPU at a size the demo's CPU sizing undercuts (training's set-up)."""
    advice = cpu_sizing_advice(patch_size, batch_size, kn) if torch.device(device).type == "cpu" else None
    if advice:
        logger.warning(advice)
