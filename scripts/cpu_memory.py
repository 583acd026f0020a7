"""Keep the memory PyTorch frees on the CPU inside the process (glibc's malloc), so the next train step reuses pages
that are already mapped instead of faulting fresh ones in.

Why: PyTorch has no caching allocator for the CPU. glibc serves every block above its mmap threshold (at most 32 MB)
with fresh pages from the kernel and unmaps them on free, so each large activation of each step pays a page fault
per 4 KB page on first touch: a copy of a 64 MB tensor took 25 ms with them and 4.7 ms without, and MNet's train
step on the 2-core CPU 12.3 s and 7.6 s (docs/benchmarks.md). The price is memory: freed blocks stay with the
process, so its peak resident memory grows (measured +15-45 %). Results do not change: only where memory comes from.
Linux with glibc only; elsewhere (macOS, musl) nothing changes.
"""

from __future__ import annotations

import ctypes
import logging
import sys

import torch
from scripts.settings import as_bool

logger = logging.getLogger("mnet.cpu_memory")

# glibc's mallopt parameters (malloc.h) and defaults
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536


def _libc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (the only one whose mallopt takes these parameters)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None)
    return libc if hasattr(libc, "gnu_get_libc_version") else None


def takes_effect(device: str | torch.device = "cpu", enabled: object = True) -> bool:
    """Whether ``keep_freed_memory(device, enabled)`` applies here: enabled, a CPU device, glibc."""
    return as_bool(enabled, "keep_freed_memory") and torch.device(device).type == "cpu" and _libc() is not None


def keep_freed_memory(device: str | torch.device = "cpu", enabled: object = True) -> bool:
    """With ``enabled`` and a CPU ``device``: glibc serves large blocks from its heap (no mmap) and never trims it.
    Returns whether it was set. A GPU run keeps glibc's defaults (its tensors are not in host memory)."""
    if not takes_effect(device, enabled):
        return False
    libc = _libc()
    if libc is None:
        return False
    if libc.mallopt(M_MMAP_MAX, 0) != 1 or libc.mallopt(M_TRIM_THRESHOLD, -1) != 1:  # -1: SIZE_MAX, never trim
        return False
    logger.info("keep_freed_memory: freed CPU memory stays in the process (faster steps, higher peak memory)")
    return True


def release_freed_memory() -> None:
    """glibc's defaults again, and the freed memory handed back to the kernel (tests, in-process comparisons)."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(0)
