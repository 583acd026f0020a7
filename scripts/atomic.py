"""Atomic file writes: write to a temporary file in the target's folder, then rename it onto the target, so readers
(and a run killed mid-write) see either the old file or the complete new one, never a truncated file. Standard
library only: plan_file (imported by the configs) uses it too."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path next to ``target``; when the block succeeds, make it world-readable (mkstemp creates
    0600) and rename it onto ``target``; when it fails, remove it. ``suffix`` keeps writers that pick the format from
    the extension (e.g. ``.nii.gz``) working."""
    target = os.fspath(target)
    folder = os.path.dirname(os.path.abspath(target))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
