"""bfloat16 mixed precision on the CPU, which MONAI's engines do not give: they open ``torch.autocast("cuda")`` only.

Why: on CPUs with bf16 instructions (AVX512-BF16, AMX) oneDNN's bf16 convolutions make a train step about 2x faster
than float32 (docs/benchmarks.md). Asked for with ``--amp_dtype bfloat16`` on a CPU device. The network's forward
runs inside CPU autocast and hands back float32 outputs, so the loss, post-processing and writers
see float32 as without it; parameters, state_dict and checkpoints do not change. Backward runs each op in the type
autocast chose for it in forward, as on a GPU.
"""

from __future__ import annotations

import logging

import torch
from scripts.settings import as_bool
from torch import nn

logger = logging.getLogger("mnet.cpu_autocast")


def bf16_supported() -> bool:
    """oneDNN is built in and the CPU has bf16 instructions (without them oneDNN emulates bf16, slower than fp32)."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def wanted(amp: object, amp_dtype: str, device: str | torch.device) -> bool:
    """CPU autocast is asked for: ``amp`` on, ``amp_dtype`` bfloat16, and the network on the CPU (float16 on a CPU
    stays float32: no fast CPU kernels)."""
    return as_bool(amp, "amp") and amp_dtype == "bfloat16" and torch.device(device).type == "cpu"


def active(amp: object, amp_dtype: str, device: str | torch.device) -> bool:
    """CPU autocast is asked for and this CPU can do it: what ``with_cpu_autocast`` turns on (the CPU speed preset
    reads it too)."""
    return wanted(amp, amp_dtype, device) and bf16_supported()


def _to_float32(output):
    if isinstance(output, torch.Tensor):
        return output.float() if output.is_floating_point() else output
    if isinstance(output, (list, tuple)):
        return type(output)(_to_float32(o) for o in output)
    return output


class Bf16Forward:
    """The network's own forward inside bf16 CPU autocast, float32 outputs out. Set as the instance's ``forward``:
    ``nn.Module.__call__``, DDP and ``torch.compile`` all go through it, and the state_dict keeps its keys. (Forward
    hooks that enter and leave autocast cannot be traced: ``torch.compile`` crashed in the closing hook.)"""

    def __init__(self, network: nn.Module):
        self.network = network  # deepcopy maps this to the copy, so a copied network computes on its own weights

    def __call__(self, *args, **kwargs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output = type(self.network).forward(self.network, *args, **kwargs)
        return _to_float32(output)


def has_cpu_autocast(network: nn.Module) -> bool:
    """``with_cpu_autocast`` already wrapped this network's forward (wrapping twice would nest autocast)."""
    return isinstance(network.__dict__.get("forward"), Bf16Forward)


def with_cpu_autocast(network: nn.Module, amp: object, amp_dtype: str, device: str | torch.device) -> nn.Module:
    """``network`` itself, its forward under bf16 CPU autocast when ``wanted`` and the CPU supports it (one warning
    and float32 when it does not). Idempotent: a network is wrapped once."""
    if not wanted(amp, amp_dtype, device) or has_cpu_autocast(network):
        return network
    if not bf16_supported():
        logger.warning("--amp_dtype bfloat16: this CPU has no bf16 instructions; running in float32")
        return network
    network.forward = Bf16Forward(network)
    logger.info("bf16 autocast on the CPU (--amp_dtype bfloat16)")
    return network
