"""Read, validate and write `configs/plan.json` (format: docs/plan_format.md).

Kept to the standard library because the bundle configs import it at run time: a broken plan must stop a run with
one readable line that names the file, not with a KeyError deep inside a transform.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from scripts.atomic import atomic_path
from scripts.errors import BundleInputError, install_excepthook

PLAN_VERSION = 1
PLAN_KEYS = (
    "plan_version",
    "modality",
    "in_channels",
    "out_channels",
    "labels",
    "spacing",
    "thick_axis",
    "anisotropic",
    "normalization",
    "patch_size",
    "batch_size",
    "kn",
    "median_shape",
    "notes",
)
NORM_SCHEMES = ("ct", "zscore_nonzero")

# Defaults for axial thick-slice CT (0.8 x 0.8 x 5 mm). The patch is smaller than the paper's 224x224x32 (32 GB V100)
# so a first run also fits a ~12 GB GPU; the intensities are placeholders until `python -m scripts.plan` measures them.
# Copy (copy.deepcopy) before changing it: it is a shared module-level dict.
DEFAULT_PLAN: dict[str, Any] = {
    "plan_version": PLAN_VERSION,
    "modality": "CT",
    "in_channels": 1,
    "out_channels": 3,
    "labels": {"0": "background", "1": "organ", "2": "lesion"},
    "spacing": [0.8, 0.8, 5.0],
    "thick_axis": 2,
    "anisotropic": True,
    "normalization": {"scheme": "ct", "clip": [-200.0, 300.0], "mean": 80.0, "std": 60.0},
    "patch_size": [160, 160, 24],
    "batch_size": 2,
    "kn": [32, 48, 64, 80, 96],
    "median_shape": [480, 480, 64],
    "notes": [
        "Default plan for thick-slice CT; the intensity statistics are placeholders.",
        "Run `python -m scripts.plan --dataset_dir D --datalist dataset.json` to fit spacing, normalisation, "
        "patch and batch size to a dataset and a GPU.",
    ],
}


class _PlanError(ValueError):
    """Internal: a problem without the file name; `validate_plan` adds the name."""


def _is_int(value: Any) -> bool:
    """True for real integers; bool is an int subclass in Python but never a valid count or size here."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """True for finite ints/floats (not bool), so NaN/inf from a failed statistic cannot slip through."""
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _positive_ints(plan: dict, key: str, length: int) -> None:
    value = plan[key]
    if not (isinstance(value, list) and len(value) == length and all(_is_int(v) and v > 0 for v in value)):
        raise _PlanError(f"'{key}' must be a list of {length} positive integers, got {value!r}")


def _check_scalars(plan: dict) -> None:
    if not _is_int(plan["plan_version"]) or plan["plan_version"] != PLAN_VERSION:
        raise _PlanError(f"'plan_version' must be {PLAN_VERSION}, got {plan['plan_version']!r}")
    if not (isinstance(plan["modality"], str) and plan["modality"]):
        raise _PlanError(f'\'modality\' must be a non-empty string such as "CT" or "MR", got {plan["modality"]!r}')
    for key in ("in_channels", "out_channels", "batch_size"):
        if not (_is_int(plan[key]) and plan[key] > 0):
            raise _PlanError(f"'{key}' must be a positive integer, got {plan[key]!r}")
    if not (_is_int(plan["thick_axis"]) and 0 <= plan["thick_axis"] <= 2):
        raise _PlanError(f"'thick_axis' must be 0, 1 or 2, got {plan['thick_axis']!r}")
    if not isinstance(plan["anisotropic"], bool):
        raise _PlanError(f"'anisotropic' must be true or false, got {plan['anisotropic']!r}")
    if not (isinstance(plan["notes"], list) and all(isinstance(n, str) for n in plan["notes"])):
        raise _PlanError("'notes' must be a list of strings")


def _check_labels(plan: dict) -> None:
    labels = plan["labels"]
    if not (isinstance(labels, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())):
        raise _PlanError(f"'labels' must be an object of string keys and string names, got {labels!r}")
    if "0" not in labels:
        raise _PlanError(f"'labels' must contain \"0\" (background), got keys {sorted(labels)}")
    expected = [str(i) for i in range(len(labels))]
    if sorted(labels, key=lambda k: (len(k), k)) != expected:
        raise _PlanError(f"'labels' keys must be the class indices 0..{len(labels) - 1}, got {sorted(labels)}")
    if plan["out_channels"] != len(labels):
        raise _PlanError(f"'out_channels' ({plan['out_channels']}) must equal the number of labels ({len(labels)})")


def _check_geometry(plan: dict) -> None:
    spacing = plan["spacing"]
    if not (isinstance(spacing, list) and len(spacing) == 3 and all(_is_number(s) and s > 0 for s in spacing)):
        raise _PlanError(f"'spacing' must be a list of 3 positive numbers (mm), got {spacing!r}")
    _positive_ints(plan, "patch_size", 3)
    _positive_ints(plan, "median_shape", 3)
    _positive_ints(plan, "kn", 5)


def _check_normalization(plan: dict) -> None:
    norm = plan["normalization"]
    if not (isinstance(norm, dict) and norm.get("scheme") in NORM_SCHEMES):
        raise _PlanError(f"'normalization' must be an object with 'scheme' in {list(NORM_SCHEMES)}, got {norm!r}")
    if norm["scheme"] != "ct":
        return
    clip = norm.get("clip")
    if not (isinstance(clip, list) and len(clip) == 2 and all(_is_number(c) for c in clip) and clip[0] < clip[1]):
        raise _PlanError(f"'normalization.clip' must be [low, high] numbers with low < high, got {clip!r}")
    if not _is_number(norm.get("mean")):
        raise _PlanError(f"'normalization.mean' must be a number, got {norm.get('mean')!r}")
    if not (_is_number(norm.get("std")) and norm["std"] > 0):
        raise _PlanError(f"'normalization.std' must be a positive number, got {norm.get('std')!r}")


def validate_plan(plan: Any, source: str | os.PathLike = "plan") -> dict[str, Any]:
    """Check `plan` against docs/plan_format.md; raise ValueError("<source>: <problem>") on the first problem."""
    try:
        if not isinstance(plan, dict):
            raise _PlanError(f"the plan must be a JSON object, got {type(plan).__name__}")
        missing = [k for k in PLAN_KEYS if k not in plan]
        if missing:
            raise _PlanError(f"missing keys {missing}")
        unknown = sorted(k for k in plan if k not in PLAN_KEYS)
        if unknown:
            raise _PlanError(f"unknown keys {unknown} (see docs/plan_format.md)")
        _check_scalars(plan)
        _check_labels(plan)
        _check_geometry(plan)
        _check_normalization(plan)
    except _PlanError as err:
        raise BundleInputError(f"{source}: {err}") from None
    return plan


def load_plan(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a plan.json so a bad or hand-edited plan fails before training starts."""
    install_excepthook()  # a config that loads a plan reports a bad one as one line on the console
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise BundleInputError(f"{path}: cannot read the plan file ({err.strerror or err})") from None
    try:
        plan = json.loads(text)
    except json.JSONDecodeError as err:
        raise BundleInputError(f"{path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    return validate_plan(plan, path)


def save_plan(plan: dict[str, Any], path: str | os.PathLike) -> Path:
    """Validate, then write atomically (temp file + os.replace) so a crash never leaves a half-written plan."""
    path = Path(path)
    validate_plan(plan, path)
    with atomic_path(path, suffix=".json") as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(plan, f, indent=4)  # the zoo's pretty-format-json style, as the configs
        f.write("\n")
    return path
