"""Write `configs/plan.json` for a dataset: target spacing, normalisation, patch and batch size for a GPU budget.

    python -m scripts.plan --dataset_dir /data/Task_KiTS --datalist dataset.json [--output configs/plan.json]
        [--gpu_memory_gb 32] [--kn "[32,48,64,80,96]"] [--modality auto] [--datastats datastats.yaml] [--workers 4]

The statistics come from MONAI's Auto3DSeg `DataAnalyzer` (after `Orientationd("RAS")`, the same axis order as the
bundle's transforms); `decide_plan` turns a small summary of them into the plan, nnU-Net style, and is pure so it can be
tested without files. Every choice is explained in the plan's `notes` and in the table printed at the end.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from scripts.datalist import Datalist, channel_names, class_names, datalist_cases, is_nifti, read_datalist
from scripts.dicom import is_series_folder
from scripts.plan_file import PLAN_KEYS, PLAN_VERSION, save_plan

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO_ROOT / "configs" / "plan.json"
DEFAULT_KN = (32, 48, 64, 80, 96)
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)  # analyser workers; module level so the default is computed once

# GPU budget calibrated on the paper (section 4.1): KiTS, batch 2 x 32x224x224 voxels, default widths and AMP on a
# 32 GB V100. Activation memory grows ~linearly with voxels and with the widths, so the budget scales with both.
REF_GPU_GB = 32.0
REF_BATCH_VOXELS = 2 * 32 * 224 * 224
ANISOTROPY_RATIO = 3.0  # nnU-Net's threshold for "thick-slice"; the paper's data is 5 mm vs < 1 mm
INPLANE_MULTIPLE = 16  # MNet pools the in-plane axes 4 times
MIN_INPLANE = 16
THICK_MULTIPLE = 4  # MNet pools the thick axis only while it is >= 8; multiples of 4 waste no voxels there
THICK_POOLED_FROM = 8
MIN_THICK = 4
MIN_BATCH, MAX_BATCH = 2, 8
MAX_DATASET_FRACTION = 0.05  # nnU-Net: one batch covers at most 5 % of all dataset voxels
SPACING_DECIMALS = 5  # drops float32 noise such as 0.800000011920929


# --------------------------------------------------------------------------------------------------------------------
# pure decision logic


def _check_stats(stats: dict[str, Any], source: str) -> None:
    """Refuse summaries the plan cannot be made from, with one line naming the source."""
    spacings, shapes = stats.get("spacings") or [], stats.get("shapes") or []
    if not spacings or len(spacings) != len(shapes):
        raise ValueError(f"{source}: no analysed cases (got {len(spacings)} spacings and {len(shapes)} shapes)")
    if any(len(s) != 3 or min(s) <= 0 for s in spacings) or any(len(s) != 3 or min(s) <= 0 for s in shapes):
        raise ValueError(f"{source}: every case needs a 3D shape and spacing with positive values")
    channels = sorted(set(stats.get("channels") or []))
    if len(channels) != 1:
        raise ValueError(f"{source}: images have mixed channel counts {channels}; all cases need the same channels")
    if not any(int(c) > 0 for c in stats.get("classes") or []):
        raise ValueError(f"{source}: the labels are empty (background only) in every case; nothing to learn")


def resolve_labels(labels: dict[str, str] | None, classes: list[int], source: str = "stats") -> dict[str, str]:
    """Class names indexed 0..N-1: from the datalist when given (checked against the data), else from the data."""
    found = sorted({int(c) for c in classes} | {0})
    if not labels:
        return {str(i): "background" if i == 0 else f"class_{i}" for i in range(found[-1] + 1)}
    try:
        named = {int(k): str(v) for k, v in labels.items()}
    except (TypeError, ValueError):
        raise ValueError(f"{source}: 'labels' keys must be class indices, got {sorted(labels)}") from None
    if sorted(named) != list(range(len(named))):
        raise ValueError(f"{source}: 'labels' keys must be 0..N-1 without gaps, got {sorted(named)}")
    extra = [c for c in found if c not in named]
    if extra:
        raise ValueError(f"{source}: label values {extra} occur in the data but 'labels' only names {sorted(named)}")
    return {str(i): named[i] for i in range(len(named))}


def target_spacing(spacings: list[list[float]]) -> tuple[list[float], int, bool, float]:
    """Per-axis median spacing; the thick axis is its largest axis (on near-ties the last one, i.e. axial)."""
    target = np.median(np.asarray(spacings, dtype=float), axis=0)
    target = [round(float(s), SPACING_DECIMALS) for s in target]
    largest = max(target)
    thick_axis = max(a for a in range(3) if target[a] >= largest * (1 - 1e-3))
    ratio = largest / min(target)
    return target, thick_axis, ratio >= ANISOTROPY_RATIO, ratio


def resampled_shapes(shapes: list[list[int]], spacings: list[list[float]], target: list[float]) -> np.ndarray:
    """Voxel shapes after resampling every case to `target` (size in mm is kept)."""
    return np.asarray(shapes, dtype=float) * np.asarray(spacings, dtype=float) / np.asarray(target, dtype=float)


def voxel_budget(gpu_memory_gb: float, kn: list[int]) -> int:
    """Voxels (batch x patch) that fit the GPU, scaled from the paper's KiTS setting on 32 GB."""
    return int(REF_BATCH_VOXELS * (gpu_memory_gb / REF_GPU_GB) * (sum(DEFAULT_KN) / sum(kn)))


def _round_axis(size: int, pooled_like_inplane: bool) -> int:
    """Round down to a pooling-friendly size (but never below the minimum the network can pool)."""
    if pooled_like_inplane:
        return max(MIN_INPLANE, size // INPLANE_MULTIPLE * INPLANE_MULTIPLE)
    return size if size < THICK_POOLED_FROM else size // THICK_MULTIPLE * THICK_MULTIPLE


def _shrink_step(size: int, pooled_like_inplane: bool) -> int:
    """How much one shrink removes from an axis while keeping it pooling-friendly; 0 when at its minimum."""
    if pooled_like_inplane:
        return INPLANE_MULTIPLE if size - INPLANE_MULTIPLE >= MIN_INPLANE else 0
    if size > THICK_POOLED_FROM:
        return THICK_MULTIPLE
    return 1 if size > MIN_THICK else 0


def fit_patch(
    median_shape: list[int], spacing: list[float], thick_axis: int, anisotropic: bool, budget: int
) -> tuple[list[int], bool, bool]:
    """Patch = median shape, shrunk nnU-Net style (largest physical extent first) until batch 2 fits the budget.

    Returns (patch, shrunk, fits). Without anisotropy every axis may be pooled 4 times, so all use multiples of 16.
    """
    like_inplane = [not anisotropic or a != thick_axis for a in range(3)]
    patch = [_round_axis(int(s), like_inplane[a]) for a, s in enumerate(median_shape)]
    shrunk = False
    while MIN_BATCH * math.prod(patch) > budget:
        axes = [a for a in range(3) if _shrink_step(patch[a], like_inplane[a]) > 0]
        if not axes:
            return patch, shrunk, False
        axis = max(axes, key=lambda a: (patch[a] * spacing[a], -a))
        patch[axis] -= _shrink_step(patch[axis], like_inplane[axis])
        shrunk = True
    return patch, shrunk, True


def choose_batch(patch: list[int], shrunk: bool, budget: int, dataset_voxels: float) -> int:
    """Batch 2, raised only when the whole median image fits with room to spare (capped at 8 and 5 % of the data)."""
    if shrunk:
        return MIN_BATCH
    voxels = math.prod(patch)
    by_memory = budget // voxels
    by_data = int(MAX_DATASET_FRACTION * dataset_voxels // voxels)
    return max(MIN_BATCH, min(MAX_BATCH, by_memory, by_data))


def normalization_for(modality: str, fg: dict[str, float] | None, source: str = "stats") -> dict[str, Any]:
    """CT: clip to the foreground 0.5-99.5 percentiles, then z-score with foreground mean/std (nnU-Net); else MR."""
    if modality != "CT":
        return {"scheme": "zscore_nonzero"}
    values = [float((fg or {}).get(k, float("nan"))) for k in ("p00_5", "p99_5", "mean", "std")]
    low, high, mean, std = values
    if not all(math.isfinite(v) for v in values) or low >= high or std <= 0:
        raise ValueError(f"{source}: foreground intensity statistics are unusable for CT normalisation: {fg}")
    return {"scheme": "ct", "clip": [round(low, 2), round(high, 2)], "mean": round(mean, 2), "std": round(std, 2)}


def _check_args(gpu_memory_gb: float, kn: list[int], source: str) -> None:
    if not (isinstance(gpu_memory_gb, (int, float)) and gpu_memory_gb > 0):
        raise ValueError(f"{source}: gpu_memory_gb must be a positive number, got {gpu_memory_gb!r}")
    if len(kn) != 5 or any(not isinstance(k, int) or k <= 0 for k in kn):
        raise ValueError(f"{source}: kn must be 5 positive integers (MNet widths per level), got {kn!r}")


def _fmt(values: list[float] | list[int]) -> str:
    return "x".join(f"{v:g}" for v in values)


def decide_plan(
    stats: dict[str, Any],
    modality: str,
    labels: dict[str, str] | None = None,
    gpu_memory_gb: float = REF_GPU_GB,
    kn: list[int] | tuple[int, ...] = DEFAULT_KN,
    source: str = "stats",
) -> dict[str, Any]:
    """Turn a dataset summary into a plan (docs/plan_format.md); pure, so it is unit-tested without images.

    `stats`: {"spacings": [[sx,sy,sz], ...], "shapes": [[x,y,z], ...], "channels": [c, ...],
    "classes": [label values found], "fg_intensity": {"p00_5", "p99_5", "mean", "std"}} (see `summarize_report`).
    Axes are in RAS (H, W, D) order. Errors are ValueError("<source>: <problem>").
    """
    kn = [int(k) for k in kn]
    _check_args(gpu_memory_gb, kn, source)
    _check_stats(stats, source)
    modality = "CT" if str(modality).upper() == "CT" else "MR"
    spacing, thick_axis, anisotropic, ratio = target_spacing(stats["spacings"])
    resampled = resampled_shapes(stats["shapes"], stats["spacings"], spacing)
    median_shape = [max(1, round(float(s))) for s in np.median(resampled, axis=0)]
    budget = voxel_budget(gpu_memory_gb, kn)
    patch, shrunk, fits = fit_patch(median_shape, spacing, thick_axis, anisotropic, budget)
    dataset_voxels = float(np.prod(resampled, axis=1).sum())
    plan = {
        "plan_version": PLAN_VERSION,
        "modality": modality,
        "in_channels": int(stats["channels"][0]),
        "out_channels": 0,
        "labels": resolve_labels(labels, stats["classes"], source),
        "spacing": spacing,
        "thick_axis": thick_axis,
        "anisotropic": anisotropic,
        "normalization": normalization_for(modality, stats.get("fg_intensity"), source),
        "patch_size": patch,
        "batch_size": choose_batch(patch, shrunk, budget, dataset_voxels),
        "kn": kn,
        "median_shape": median_shape,
        "notes": [],
    }
    plan["out_channels"] = len(plan["labels"])
    facts = {
        "ratio": ratio,
        "shrunk": shrunk,
        "fits": fits,
        "budget": budget,
        "gpu_memory_gb": gpu_memory_gb,
        "dataset_voxels": dataset_voxels,
        "labels_given": bool(labels),
        "classes": sorted({int(c) for c in stats["classes"]}),
        "cases_with_foreground": stats.get("cases_with_foreground"),
    }
    plan["notes"] = explain(plan, facts, n_cases=len(stats["spacings"]))
    return {k: plan[k] for k in PLAN_KEYS}


def explain(plan: dict[str, Any], facts: dict[str, Any], n_cases: int) -> list[str]:
    """One '<key>: why' note per decision, so the user knows what to override and what it costs."""
    aniso, ratio = plan["anisotropic"], facts["ratio"]
    return [
        f"modality: {plan['modality']} -> "
        + ("clip + z-score with foreground statistics." if plan["modality"] == "CT" else "not CT, normalised like MR."),
        f"in_channels: {plan['in_channels']} channel(s) per image, the same in all {n_cases} cases.",
        f"labels: {'names from the datalist' if facts['labels_given'] else 'numbered (no names in the datalist)'}; "
        f"label values found in the data: {facts['classes']}"
        + (
            f"; foreground in {facts['cases_with_foreground']} of {n_cases} cases."
            if facts["cases_with_foreground"] is not None
            else "."
        ),
        f"spacing: per-axis median {_fmt(plan['spacing'])} mm. The thick axis keeps its median, as in the paper "
        "(5 mm); nnU-Net would take its 10th percentile for very anisotropic data. Override spacing to change it.",
        f"thick_axis: axis {plan['thick_axis']} has the largest spacing ({plan['spacing'][plan['thick_axis']]:g} mm).",
        f"anisotropic: largest/smallest spacing = {ratio:.2f} ({'>=' if aniso else '<'} {ANISOTROPY_RATIO:g}); "
        + ("rotate only about the thick axis." if aniso else "all axes are treated alike (multiples of 16)."),
        _norm_note(plan["modality"]),
        f"median_shape: median over cases of shape x spacing / target = {_fmt(plan['median_shape'])} voxels.",
        _patch_note(plan, facts),
        _batch_note(plan, facts),
        f"kn: MNet widths {plan['kn']}; the memory budget scales with {sum(DEFAULT_KN)}/sum(kn).",
    ]


def _norm_note(modality: str) -> str:
    if modality != "CT":
        return "normalization: zscore_nonzero per image (MR intensities have no absolute scale)."
    return (
        "normalization: clip to the foreground 0.5/99.5 percentiles, then subtract the foreground mean and divide by "
        "its std (nnU-Net CT scheme); MONAI's DataAnalyzer averages these per case (nnU-Net pools all voxels)."
    )


def _patch_note(plan: dict[str, Any], facts: dict[str, Any]) -> str:
    if plan["anisotropic"]:
        rule = (
            f"in-plane multiples of {INPLANE_MULTIPLE}, thick axis {plan['thick_axis']} a multiple of "
            f"{THICK_MULTIPLE} when >= {THICK_POOLED_FROM}"
        )
    else:
        rule = f"all axes multiples of {INPLANE_MULTIPLE}"
    if facts["shrunk"]:
        how = (
            "shrunk from the median shape, largest physical extent (size x spacing) first, until batch 2 fits "
            f"{facts['gpu_memory_gb']:g} GB with kn={plan['kn']}"
        )
    else:
        how = "the median shape fits, so the patch covers it"
    warn = "" if facts["fits"] else " WARNING: even the smallest patch exceeds the budget; expect out-of-memory."
    return f"patch_size: {_fmt(plan['patch_size'])} ({how}; median {_fmt(plan['median_shape'])}; {rule}).{warn}"


def _batch_note(plan: dict[str, Any], facts: dict[str, Any]) -> str:
    batch, voxels = plan["batch_size"], math.prod(plan["patch_size"])
    used_gb = batch * voxels / facts["budget"] * facts["gpu_memory_gb"]
    if facts["shrunk"]:
        why = "the patch was shrunk to fit, so the minimum of 2 is kept."
    else:
        by_memory = facts["budget"] // voxels
        by_data = int(MAX_DATASET_FRACTION * facts["dataset_voxels"] // voxels)
        why = (
            f"the whole median image fits, so batch = min({MAX_BATCH}, {by_memory} by memory, {by_data} by 5 % of "
            f"the dataset voxels), at least {MIN_BATCH}."
        )
    return (
        f"batch_size: {batch} x {voxels / 1e6:.2f} M voxels ~ {used_gb:.1f} of {facts['gpu_memory_gb']:g} GB "
        f"(calibrated on the paper: 2 x 32x224x224 with AMP on 32 GB); {why}"
    )


# --------------------------------------------------------------------------------------------------------------------
# datalist, files and MONAI's DataAnalyzer


def training_entries(datalist: Datalist, dataset_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Image/label pairs of the training list (MSD or nnU-Net v2) with absolute paths; other keys dropped."""
    training = datalist_cases(datalist, "training", dataset_dir)
    if not training:
        raise ValueError(
            f"{datalist.path}: 'training' must be a non-empty list of {{'image': ..., 'label': ...}} "
            "entries (or, nnU-Net v2, imagesTr/labelsTr must hold cases)"
        )
    for i, item in enumerate(training):
        if not (isinstance(item, dict) and item.get("image") and item.get("label")):
            raise ValueError(f"{datalist.path}: training entry {i} needs both 'image' and 'label', got {item!r}")
    return [{k: item[k] for k in ("image", "label")} for item in training]


def _nifti_channels(path: str) -> int | None:
    """Channel count from a NIfTI header (cheap); None for other formats, which only MONAI checks."""
    if not is_nifti(path):
        return None
    import nibabel as nib

    try:
        shape = nib.load(path).shape
    except Exception as err:  # nibabel raises several types for broken files
        raise ValueError(f"{path}: unreadable image ({_one_line(err)})") from None
    return int(np.prod(shape[3:])) if len(shape) > 3 else 1


def check_files(entries: list[dict[str, Any]], source: Path) -> None:
    """Fail early, naming the file, on missing/unreadable files or mixed channel counts (MONAI would crash later)."""
    channels: dict[int, str] = {}
    for entry in entries:
        for key in ("image", "label"):
            for path in entry[key] if isinstance(entry[key], list) else [entry[key]]:
                if not (os.path.isfile(path) or is_series_folder(path)):  # a DICOM series is a folder
                    raise ValueError(f"{source}: {key} file not found: {path}")
        images = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
        counts = [_nifti_channels(p) for p in images]
        if isinstance(entry["label"], str):
            _nifti_channels(entry["label"])  # only to fail early on an unreadable label header
        if None not in counts:
            channels.setdefault(sum(counts), images[0])
    if len(channels) > 1:
        examples = ", ".join(f"{c} in {p}" for c, p in sorted(channels.items()))
        raise ValueError(f"{source}: images have mixed channel counts ({examples}); all cases need the same channels")


def _one_line(err: BaseException) -> str:
    """The root cause of an exception chain as one short line (MONAI wraps loader errors several times)."""
    while err.__cause__ is not None:
        err = err.__cause__
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300] if text else ''}"


def _find_unreadable(entries: list[dict[str, Any]]) -> str | None:
    """After the analyser failed: load files one by one to name the culprit (slow, so only on the error path)."""
    from monai.transforms import LoadImage

    loader = LoadImage(image_only=True)
    for entry in entries:
        for key in ("image", "label"):
            try:
                loader(entry[key])
            except Exception as err:  # any reader error means this file is the problem
                return f"{entry[key]}: unreadable {key} ({_one_line(err)})"
    return None


class _SkippedCases(logging.Handler):
    """Collects DataAnalyzer's 'Unable to process data <file> ...' log lines: it skips such cases silently."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Unable to process data"):
            self.messages.append(re.sub(r" object at 0x[0-9a-f]+", "", message))


def run_analyzer(entries: list[dict[str, Any]], source: Path, datastats: str = "", workers: int = 0) -> dict:
    """Run MONAI's DataAnalyzer on CPU (no histograms, no connected components: not needed for a plan)."""
    from monai.apps.auto3dseg import DataAnalyzer

    if datastats:
        Path(datastats).parent.mkdir(parents=True, exist_ok=True)
    analyzer = DataAnalyzer(
        {"training": entries},
        dataroot="",
        output_path=str(datastats) if datastats else "",
        device="cpu",
        worker=int(workers),
        hist_bins=0,
        do_ccp=False,
        fmt="yaml",
    )
    skipped = _SkippedCases()
    logger = logging.getLogger("monai.apps.auto3dseg.data_analyzer")
    logger.addHandler(skipped)
    try:
        with warnings.catch_warnings():  # MONAI's own Orientationd call warns about a default it does not set
            warnings.filterwarnings("ignore", message=".*Orientationd.*", category=FutureWarning)
            report = analyzer.get_all_case_stats(key="training")
    except Exception as err:  # MONAI raises many types; the user needs one line naming the problem
        culprit = _find_unreadable(entries)
        raise ValueError(f"{source}: MONAI DataAnalyzer failed: {culprit or _one_line(err)}") from err
    finally:
        logger.removeHandler(skipped)
    if skipped.messages or len(report.get("stats_by_cases") or []) != len(entries):
        reason = skipped.messages[0] if skipped.messages else "no reason logged"
        n_skipped = len(entries) - len(report.get("stats_by_cases") or [])
        raise ValueError(f"{source}: MONAI DataAnalyzer skipped {n_skipped} case(s); first: {reason}")
    return report


FG_KEYS = {"p00_5": "percentile_00_5", "p99_5": "percentile_99_5", "mean": "mean", "std": "stdev"}


def _has_foreground(case: dict) -> bool:
    return any(int(round(v)) > 0 for v in case["label_stats"]["labels"])


def summarize_report(report: dict) -> dict[str, Any]:
    """Extract the few numbers `decide_plan` needs from the DataAnalyzer report.

    Foreground intensities are MONAI's per-case values (first channel) averaged over cases, like its own summary,
    but only over cases that have foreground: MONAI reports zeros for an empty label, which would bias the CT clip.
    """
    cases = report["stats_by_cases"]
    with_fg = [c for c in cases if _has_foreground(c)]
    fg = [c["image_foreground_stats"]["intensity"][0] for c in with_fg]
    return {
        "spacings": [[float(s) for s in c["image_stats"]["spacing"]] for c in cases],
        "shapes": [[int(s) for s in c["image_stats"]["shape"][0]] for c in cases],
        "channels": [int(c["image_stats"]["channels"]) for c in cases],
        "classes": sorted({int(round(v)) for c in cases for v in c["label_stats"]["labels"]}),
        "fg_intensity": {k: float(np.mean([f[m] for f in fg])) if fg else math.nan for k, m in FG_KEYS.items()},
        "cases_with_foreground": len(with_fg),
    }


def resolve_modality(flag: str, data: dict[str, Any], source: Path) -> tuple[str, int | None]:
    """'CT' or 'MR' from --modality, else from dataset.json 'modality' (MSD) or 'channel_names' (nnU-Net v2)."""
    names = channel_names(data)
    if str(flag).lower() != "auto":
        return ("CT" if str(flag).upper() == "CT" else "MR"), len(names) if names else None
    if not names:
        raise ValueError(f'{source}: no \'modality\' (e.g. {{"0": "CT"}}); add it or pass --modality CT or MR')
    is_ct = all(str(v).upper() == "CT" for v in names.values())
    return ("CT" if is_ct else "MR"), len(names)


def _parse_kn(kn: Any) -> list[int]:
    """Accept what fire passes: a list/tuple, or a string such as "[32,48,64,80,96]" or "32,48,64,80,96"."""
    try:
        if isinstance(kn, str):
            text = kn.strip()
            kn = json.loads(text if text.startswith("[") else f"[{text}]")
        return [int(k) for k in kn]
    except (TypeError, ValueError):
        raise ValueError(f'arguments: kn must be 5 integers such as "[32,48,64,80,96]", got {kn!r}') from None


# --------------------------------------------------------------------------------------------------------------------
# entry points


def plan_dataset(
    dataset_dir: str,
    datalist: str = "dataset.json",
    output: str | None = None,
    gpu_memory_gb: float = REF_GPU_GB,
    kn: Any = DEFAULT_KN,
    modality: str = "auto",
    datastats: str = "",
    workers: int = 0,
) -> dict[str, Any]:
    """Analyse the dataset, decide the plan, save it; raise ValueError (one line, naming the file) on bad input."""
    kn = _parse_kn(kn)
    _check_args(gpu_memory_gb, kn, "arguments")  # before the (possibly long) analysis
    if not Path(dataset_dir).is_dir():
        raise ValueError(f"{dataset_dir}: dataset_dir is not a folder")
    found = read_datalist(datalist, dataset_dir)
    source, data = found.path, found.content
    entries = training_entries(found, dataset_dir)
    modality, named_channels = resolve_modality(modality, data, source)
    labels = class_names(data, source)
    check_files(entries, source)
    _integrity_check(entries, labels, named_channels)
    stats = summarize_report(run_analyzer(entries, source, datastats, workers))
    plan = decide_plan(stats, modality, labels, gpu_memory_gb, kn, source=str(source))
    save_plan(plan, output or DEFAULT_OUTPUT)
    return plan


def _integrity_check(entries: list[dict[str, Any]], labels: dict[str, str] | None, channels: int | None) -> None:
    """The same per-case checks as training's start-up (scripts.check_data): print every problem, raise on the
    first, so a bad case is found before the analysis rather than skewing the plan."""
    from scripts.check_data import check_cases

    problems = check_cases(entries, None, num_classes=len(labels) if labels else None, in_channels=channels)
    for problem in problems:
        print(problem)
    if problems:
        first = problems[0]
        raise ValueError(f"{first.file}: {first.problem} ({len(problems)} problem(s) found, all listed above)")


STATIC_WHY = {"plan_version": "format version of docs/plan_format.md.", "out_channels": "number of labels."}


def format_table(plan: dict[str, Any], why_width: int = 70) -> str:
    """Readable key | value | why table; the 'why' comes from the notes that start with '<key>: '."""
    why = dict(STATIC_WHY)
    for note in plan["notes"]:
        key, _, text = note.partition(": ")
        why[key] = f"{why[key]} {text}" if key in why and key not in STATIC_WHY else text
    rows = [(k, json.dumps(plan[k]), why.get(k, "")) for k in PLAN_KEYS if k != "notes"]
    wk, wv = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    lines = [f"{'key':<{wk}} | {'value':<{wv}} | why", f"{'-' * wk}-+-{'-' * wv}-+-{'-' * why_width}"]
    for key, value, text in rows:
        wrapped = textwrap.wrap(text, why_width) or [""]
        lines.append(f"{key:<{wk}} | {value:<{wv}} | {wrapped[0]}")
        lines += [f"{'':<{wk}} | {'':<{wv}} | {more}" for more in wrapped[1:]]
    return "\n".join(lines)


def main(
    dataset_dir: str,
    datalist: str = "dataset.json",
    output: str | None = None,
    gpu_memory_gb: float = REF_GPU_GB,
    kn: Any = DEFAULT_KN,
    modality: str = "auto",
    datastats: str = "",
    workers: int = DEFAULT_WORKERS,
) -> None:
    """Plan a dataset, write configs/plan.json and print a key | value | why table.

    Errors exit with one line ("error: <file>: <problem>") instead of a traceback.

    Args:
        dataset_dir: dataset root; datalist paths (MSD) and imagesTr/labelsTr (nnU-Net v2) are relative to it.
        datalist: MSD or nnU-Net v2 dataset.json (docs/configs.md); relative: in dataset_dir, else the working dir.
        output: where to write the plan (default: <bundle>/configs/plan.json).
        gpu_memory_gb: training GPU memory; 32 reproduces the paper's V100 setting.
        kn: MNet widths per level, e.g. "[32,48,64,80,96]".
        modality: "auto" (from dataset.json), "CT" or "MR".
        datastats: optional path to also save MONAI's DataAnalyzer report (YAML).
        workers: data-loading workers for the analyser.
    """
    try:
        plan = plan_dataset(dataset_dir, datalist, output, gpu_memory_gb, kn, modality, datastats, workers)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    print(format_table(plan))
    print(f"\nwrote {output or DEFAULT_OUTPUT}")
    warn_if_cpu(plan)


def warn_if_cpu(plan: dict[str, Any]) -> None:
    """On a machine without CUDA, say (one line on stderr) that training this GPU-sized plan here is very slow, and
    what the demo's CPU sizing is. The demo calls `plan_dataset` and resizes the plan itself, so it is not warned."""
    import torch
    from scripts.runtime import cpu_sizing_advice

    advice = (
        None if torch.cuda.is_available() else cpu_sizing_advice(plan["patch_size"], plan["batch_size"], plan["kn"])
    )
    if advice:
        print(f"WARNING: no CUDA GPU on this machine; {advice}", file=sys.stderr)


if __name__ == "__main__":
    import fire

    fire.Fire(main)
