"""Does the plan fit the data a training run is about to use? Checked on start-up, before hours of training.

The shipped ``configs/plan.json`` is a CT placeholder; MR data trained on it has most of its foreground clipped by
the CT window without a word. The planner records what it measured (``normalization.clip`` is the foreground
0.5/99.5 percentile range for CT), so a few training cases are enough to see a mismatch: for a CT plan, more than
MAX_CLIPPED of the foreground voxels outside the clip range (about 1 % by construction for the data it was planned
on); for an MR plan, more than MIN_AIR of the voxels below -500 (air in Hounsfield units, which MR does not have).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scripts.checkpoints import plan_fingerprint
from scripts.errors import BundleInputError
from scripts.plan_file import DEFAULT_PLAN
from scripts.settings import as_bool

logger = logging.getLogger("mnet.plan_check")
MAX_CLIPPED = 0.25
MIN_AIR, AIR_HU = 0.05, -500.0
SAMPLE_CASES = 3


def is_placeholder(plan: Mapping[str, Any]) -> bool:
    """True for the plan the bundle ships (same fingerprint as scripts.plan_file.DEFAULT_PLAN)."""
    return plan_fingerprint(plan) == plan_fingerprint(DEFAULT_PLAN)


def _read(path: str) -> np.ndarray:
    from monai.transforms import LoadImage

    return np.asarray(LoadImage(image_only=True)(path), dtype=np.float32)


def check_training_data(
    cases: Sequence[Mapping[str, Any]],
    plan: Mapping[str, Any],
    plan_file: str = "plan",
    sample: int = SAMPLE_CASES,
    enabled: object = True,
) -> None:
    """Warn when ``plan`` is the shipped placeholder; refuse (one line) data whose intensities contradict the plan's
    modality, judged on the first ``sample`` cases (raw intensities, first channel). ``enabled``: ``check_data``."""
    if not as_bool(enabled, "check_data"):
        return
    if is_placeholder(plan):
        logger.warning(
            f"{plan_file}: is the shipped placeholder plan (thick-slice CT, placeholder intensities); run "
            "`python -m scripts.plan --dataset_dir D` to fit it to your data"
        )
    for case in list(cases)[:sample]:
        image = _read(str(case["image"][0] if isinstance(case["image"], (list, tuple)) else case["image"]))
        image = image[0] if image.ndim == 4 else image
        if plan.get("normalization", {}).get("scheme") == "ct":
            if not case.get("label"):
                continue
            label = _read(str(case["label"]))
            label = label[0] if label.ndim == 4 else label
            if label.shape != image.shape or not (label > 0).any():
                continue  # geometry problems and empty labels are check_data's business
            foreground = image[label > 0]
            low, high = plan["normalization"]["clip"]
            clipped = float(np.mean((foreground < low) | (foreground > high)))
            if clipped > MAX_CLIPPED:
                raise BundleInputError(
                    f"{case['image']}: {clipped:.0%} of the labelled voxels lie outside the plan's CT window "
                    f"[{low:g}, {high:g}] ({plan_file}); is this {plan.get('modality')} data? Run `python -m "
                    "scripts.plan --dataset_dir D` (or --check_data False to train anyway)"
                )
        elif image.size and float(np.mean(image < AIR_HU)) > MIN_AIR:
            raise BundleInputError(
                f"{case['image']}: {float(np.mean(image < AIR_HU)):.0%} of the voxels are below {AIR_HU:g} (air in "
                f"CT), but the plan ({plan_file}) is for {plan.get('modality')}; plan this data set with "
                "`python -m scripts.plan --modality CT` (or --check_data False to train anyway)"
            )
