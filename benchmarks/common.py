"""What the benchmark scripts share: this process's peak memory, the tables' header line, writing JSON."""

from __future__ import annotations

import json
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
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


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
