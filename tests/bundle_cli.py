"""The `python -m monai.bundle` command line that subprocess tests build: one place for the bundle's file options."""

from __future__ import annotations

import sys
from pathlib import Path


def bundle_command(*args: str, work: Path, data: Path, plan: str | Path = "configs/plan.json") -> list[str]:
    """``monai.bundle <args>`` with the bundle's metadata, logging, plan and the given bundle root and dataset."""
    return [
        sys.executable, "-m", "monai.bundle", *args,
        "--meta_file", "configs/metadata.json", "--logging_file", "configs/logging.conf",
        "--bundle_root", str(work), "--dataset_dir", str(data), "--plan_file", str(plan),
    ]  # fmt: skip
