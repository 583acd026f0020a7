"""What the benchmark scripts share: this process's peak memory, the tables' header line, writing JSON."""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from scripts.atomic import write_text


def peak_rss_bytes() -> int:
    """This process's RSS high-water mark: Linux ``/proc/self/status`` VmHWM (``ru_maxrss`` is inherited by a child
    from its parent across exec), else ``ru_maxrss``."""
    try:
        peak = _vm_hwm_bytes(Path("/proc/self/status").read_text())
        if peak is not None:
            return peak
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _vm_hwm_bytes(status: str) -> int | None:
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def children_peak_rss_bytes() -> int | None:
    """The largest RSS high-water mark among this process's live children (data loader workers), from ``/proc``;
    ``None`` where there is no ``/proc`` or no child. A forked worker's figure includes the parent's pages that it
    still shares (copy-on-write), as ``ps`` counts them."""
    peaks = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])  # the name in parentheses may contain spaces
            if ppid == os.getpid():
                peak = _vm_hwm_bytes((stat.parent / "status").read_text())
                if peak is not None:
                    peaks.append(peak)
        except (OSError, IndexError, ValueError):  # a process that ended while we read
            continue
    return max(peaks) if peaks else None


def header(report: dict) -> str:
    """The line every benchmark table starts with: when, which torch, which machine, how many threads, which patch."""
    return (
        f"{report['date']}  torch {report['torch']}  {report['device_name']}  {report['threads']} threads  "
        f"patch {report['patch']}"
    )


def write_json(result: dict, out: str) -> None:
    path = Path(out)
    write_text(path, json.dumps(result, indent=2))
    print(f"wrote {path}")


def timed(fn: Callable[[], None], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes, with CUDA's queue drained before and after (kernels run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start
