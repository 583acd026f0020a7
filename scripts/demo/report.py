"""The demo's report: training curves, metric tables, lesion detection and slice overlays a person can look at.

Everything reads files the bundle already wrote (TensorBoard events, the evaluation CSVs, NIfTI predictions), so the
report is rebuilt cheaply whenever ``make demo`` runs again (training, evaluation and inference are re-used).
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and in tests

import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from scipy import ndimage  # noqa: E402
from scripts.atomic import atomic_path, write_text  # noqa: E402
from scripts.datalist import case_name  # noqa: E402

CT_WINDOW = (-60.0, 240.0)  # level 90 / width 300 HU: organ (~100-140 HU) and its darker lesions stand out
CLASS_COLOURS = [(0.0, 0.0, 0.0, 0.0), (0.1, 0.85, 0.3, 0.35), (1.0, 0.15, 0.15, 0.6)]  # background, label 1, label 2
CONTOUR_COLOURS = ["#2ee05a", "#ff3030", "#3fa0ff", "#ffd000"]
METRICS = {"dice": "val_mean_dice", "hd95_mm": "val_hd95_mm", "surface_dice": "val_surface_dice"}
DIGITS = {"dice": 3, "hd95_mm": 1, "surface_dice": 3}
METRIC_TITLES = {"dice": "Dice", "hd95_mm": "HD95 (mm)", "surface_dice": "surface Dice"}
FULL_CONNECTIVITY = np.ones((3, 3, 3), bool)  # lesions span 1-3 thick slices; count diagonal neighbours as connected


# --------------------------------------------------------------------------------------------------------------------
# training curves


def read_scalars(log_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """All scalar series of the TensorBoard event files in `log_dir`, sorted by step; a resumed run's repeats of a
    step keep the latest value."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not Path(log_dir).is_dir():
        return {}
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    series = {}
    for tag in acc.Tags().get("scalars", []):
        by_step = {int(e.step): float(e.value) for e in sorted(acc.Scalars(tag), key=lambda e: e.wall_time)}
        series[tag] = sorted(by_step.items())
    return series


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing mean over up to `window` values, so a noisy per-iteration loss shows its trend from the first point."""
    values = np.asarray(values, float)
    cumsum = np.concatenate([[0.0], np.cumsum(values)])
    idx = np.arange(1, len(values) + 1)
    start = np.maximum(0, idx - max(1, window))
    return (cumsum[idx] - cumsum[start]) / (idx - start)


def plot_loss(scalars: dict[str, list[tuple[int, float]]], out: str | Path, window: int = 10,
              tag: str = "train_loss") -> Path:
    """Per-iteration training loss (faint) and its moving average."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    points = scalars.get(tag, [])
    if points:
        steps, values = zip(*points)
        ax.plot(steps, values, color="tab:blue", alpha=0.25, lw=0.8, label=f"{tag} (per iteration)")
        ax.plot(steps, moving_average(values, window), color="tab:blue", lw=2, label=f"moving average ({window} it)")
        ax.legend(loc="upper right")
    else:
        ax.text(0.5, 0.5, f"no '{tag}' scalars found", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel="iteration", ylabel="deep-supervision Dice + CE loss", title="Training loss")
    ax.grid(alpha=0.3)
    return _save(fig, out)


def plot_dice(scalars: dict[str, list[tuple[int, float]]], out: str | Path) -> Path:
    """Validation Dice per class and their mean, one point per validation round (x = training epoch)."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    tags = sorted(t for t in scalars if t.startswith("val_dice_")) + (["val_mean_dice"] if "val_mean_dice" in scalars
                                                                      else [])
    for tag in tags:
        steps, values = zip(*scalars[tag])
        style = {"color": "black", "lw": 2.2} if tag == "val_mean_dice" else {"lw": 1.5}
        ax.plot(steps, values, marker="o", label=tag.removeprefix("val_").replace("_", " "), **style)
    if tags:
        ax.legend(loc="lower right")
    else:
        ax.text(0.5, 0.5, "no validation scalars found", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel="epoch", ylabel="Dice (validation cases)", title="Validation Dice", ylim=(0, 1))
    ax.grid(alpha=0.3)
    return _save(fig, out)


def _save(fig: plt.Figure, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    with atomic_path(out, suffix=out.suffix) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return out


# --------------------------------------------------------------------------------------------------------------------
# plan


def plan_markdown(plan: dict[str, Any]) -> str:
    """The plan as a key | value | why table (the planner's own printout), fenced so any Markdown viewer keeps it."""
    from scripts.plan import format_table

    return "\n".join([
        "# Plan", "",
        "Written by `scripts.plan.plan_dataset` for the demo data; `plan.json` next to this file is the exact copy "
        "that training, evaluation and inference read.", "",
        "```text", format_table(plan, why_width=80), "```", "",
    ])


# --------------------------------------------------------------------------------------------------------------------
# evaluation metrics


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def read_raw_csv(path: str | Path, class_names: Sequence[str]) -> dict[str, dict[str, float]]:
    """MONAI MetricsSaver's `<metric>_raw.csv` (filename, class0, class1, ..., mean) as {case: {class name: value}}."""
    rows = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            rows[case_name(row["filename"])] = {
                name: _number(row.get(f"class{i}", "nan")) for i, name in enumerate(class_names)
            }
    return rows


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def collect_metrics(eval_dir: str | Path, class_names: Sequence[str]) -> dict[str, Any]:
    """Per-case and mean Dice / HD95 (mm) / surface Dice per class from the evaluation CSVs.

    Means skip non-finite values (HD95 is undefined when a class is missing from the prediction); `n_missing` counts
    them so a mean is never quietly better than the data.
    """
    per_metric = {key: read_raw_csv(Path(eval_dir) / f"{tag}_raw.csv", class_names) for key, tag in METRICS.items()}
    cases = sorted(per_metric["dice"])
    table = {c: {n: {k: per_metric[k].get(c, {}).get(n, math.nan) for k in METRICS} for n in class_names}
             for c in cases}
    mean = {n: {k: _nanmean([table[c][n][k] for c in cases]) for k in METRICS} for n in class_names}
    missing = {n: {k: sum(not math.isfinite(table[c][n][k]) for c in cases) for k in METRICS} for n in class_names}
    return {"classes": list(class_names), "cases": table, "mean": mean, "n_missing": missing}


def _fmt(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "n/a"


def metrics_markdown(metrics: dict[str, Any], detection: dict[str, Any] | None = None) -> str:
    """One table per class (rows: cases and their mean) plus the lesion-detection table."""
    lines = ["# Test-set metrics", "",
             "Held-out test cases, computed by `configs/evaluate.json` (`--eval_split test`) in the original image "
             "geometry. HD95 and surface Dice (2 mm tolerance) are in millimetres; n/a = class absent from the "
             "prediction.", ""]
    for name in metrics["classes"]:
        lines += [f"## {name}", "", "| case | " + " | ".join(METRIC_TITLES.values()) + " |",
                  "|---|" + "---:|" * len(METRICS)]
        for case, row in metrics["cases"].items():
            lines.append(f"| {case} | " + " | ".join(_fmt(row[name][k], DIGITS[k]) for k in METRICS) + " |")
        lines.append("| **mean** | " + " | ".join(f"**{_fmt(metrics['mean'][name][k], DIGITS[k])}**" for k in METRICS)
                     + " |")
        lines.append("")
    if detection:
        lines += detection_markdown(detection)
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------------
# lesion detection


def lesion_detection(gt: np.ndarray, pred: np.ndarray, label: int = 2) -> dict[str, int]:
    """Count ground-truth lesion components (26-connected) and how many the prediction touches with the same label;
    predicted components touching no ground-truth lesion are false positives."""
    gt_cc, n_gt = ndimage.label(gt == label, FULL_CONNECTIVITY)
    pred_cc, n_pred = ndimage.label(pred == label, FULL_CONNECTIVITY)
    hit = np.unique(gt_cc[(pred == label) & (gt_cc > 0)])
    touched = np.unique(pred_cc[(gt == label) & (pred_cc > 0)])
    return {"gt": int(n_gt), "hit": int(len(hit)), "predicted": int(n_pred),
            "false_positive": int(n_pred - len(touched))}


def detection_summary(per_case: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Per-case counts plus totals and the fraction of ground-truth lesions hit."""
    total = {k: int(sum(c[k] for c in per_case.values())) for k in ("gt", "hit", "predicted", "false_positive")}
    total["hit_rate"] = total["hit"] / total["gt"] if total["gt"] else math.nan
    return {"cases": per_case, "total": total}


def detection_markdown(detection: dict[str, Any]) -> list[str]:
    """Lesion-detection table lines."""
    lines = ["## Lesion detection", "",
             "A ground-truth lesion (26-connected component of label 2) counts as hit when at least one predicted "
             "lesion voxel overlaps it; a predicted component overlapping no ground-truth lesion is a false positive.",
             "", "| case | GT lesions | hit | predicted components | false positives |", "|---|---:|---:|---:|---:|"]
    for case, c in detection["cases"].items():
        lines.append(f"| {case} | {c['gt']} | {c['hit']} | {c['predicted']} | {c['false_positive']} |")
    t = detection["total"]
    lines += [f"| **total** | **{t['gt']}** | **{t['hit']}** | **{t['predicted']}** | **{t['false_positive']}** |", "",
              f"Hit rate: {_fmt(t['hit_rate'] * 100, 0) if math.isfinite(t['hit_rate']) else 'n/a'} %.", ""]
    return lines


# --------------------------------------------------------------------------------------------------------------------
# overlays


def load_ras(path: str | Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """Volume reoriented to RAS (x, y, z) and its voxel spacing, so every file is displayed the same way."""
    img = nib.as_closest_canonical(nib.load(str(path)))
    return np.asanyarray(img.dataobj), tuple(float(v) for v in img.header.get_zooms()[:3])


def pick_slices(gt: np.ndarray, max_slices: int = 3, lesion: int = 2) -> list[int]:
    """The largest slice of each ground-truth lesion first, then the slices with the most foreground."""
    chosen: list[int] = []
    cc, n = ndimage.label(gt == lesion, FULL_CONNECTIVITY)
    for i in range(1, n + 1):
        chosen.append(int(np.argmax((cc == i).sum(axis=(0, 1)))))
    for k in np.argsort(-(gt > 0).sum(axis=(0, 1)), kind="stable"):
        chosen.append(int(k))
    unique = list(dict.fromkeys(chosen))[:max_slices]
    return sorted(unique)


def _contours(ax: plt.Axes, label: np.ndarray, extent: list[float], style: str = "-") -> None:
    for value in range(1, int(label.max()) + 1):
        if (label == value).any():
            ax.contour((label == value).astype(float), levels=[0.5], extent=extent, origin="lower",
                       colors=CONTOUR_COLOURS[(value - 1) % len(CONTOUR_COLOURS)], linewidths=1.0, linestyles=style)


def plot_overlay(image: np.ndarray, gt: np.ndarray, pred: np.ndarray, spacing: Sequence[float],
                 slices: Sequence[int], out: str | Path, title: str = "",
                 window: tuple[float, float] = CT_WINDOW) -> Path:
    """Rows = thick slices; columns = CT image, ground truth (filled + contour), prediction (filled) with the
    ground-truth contour on top. Radiological view: patient's right on the left, anterior up."""
    cmap = ListedColormap(CLASS_COLOURS[: max(3, int(max(gt.max(), pred.max())) + 1)])
    fig, axes = plt.subplots(len(slices), 3, figsize=(10.5, 3.5 * len(slices)), dpi=100, squeeze=False)
    extent = [0, image.shape[0] * spacing[0], 0, image.shape[1] * spacing[1]]
    for row, k in zip(axes, slices):
        for ax, (label, name) in zip(row, [(None, "image"), (gt, "ground truth"), (pred, "prediction")]):
            ax.imshow(image[:, :, k].T, cmap="gray", vmin=window[0], vmax=window[1], origin="lower", extent=extent,
                      interpolation="nearest")
            if label is not None:
                ax.imshow(label[:, :, k].T, cmap=cmap, vmin=0, vmax=cmap.N - 1, origin="lower", extent=extent,
                          interpolation="nearest")
                _contours(ax, gt[:, :, k].T, extent, "-" if label is gt else "--")
            ax.set_title(f"{name}, slice {k}", fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{title}   (green: organ, red: lesion; dashed = ground-truth contour; "
                 f"window {window[0]:g}..{window[1]:g} HU)", fontsize=10)
    return _save(fig, out)


# --------------------------------------------------------------------------------------------------------------------
# the whole report


def write_report(work_dir: str | Path, plan: dict[str, Any], test_cases: Sequence[dict[str, str]],
                 predictions_dir: str | Path, eval_dir: str | Path, log_dir: str | Path,
                 timings: dict[str, float] | None = None, command: str = "", loss_window: int = 10,
                 max_slices: int = 3) -> dict[str, Any]:
    """Write `<work_dir>/report/` (see docs/demo.md) and return the headline numbers."""
    report = Path(work_dir) / "report"
    if report.exists():
        shutil.rmtree(report)
    (report / "overlays").mkdir(parents=True)
    write_text(report / "plan.json", json.dumps(plan, indent=2) + "\n")
    write_text(report / "plan.md", plan_markdown(plan))

    scalars = read_scalars(log_dir)
    plot_loss(scalars, report / "loss.png", window=loss_window)
    plot_dice(scalars, report / "dice.png")

    class_names = [plan["labels"][str(i)] for i in range(1, int(plan["out_channels"]))]
    metrics = collect_metrics(eval_dir, class_names)
    detection, overlays = _cases(test_cases, predictions_dir, report / "overlays", max_slices)
    metrics["lesion_detection"] = detection
    metrics["validation_curves"] = {t: v for t, v in scalars.items() if t.startswith("val_")}
    if timings:
        metrics["timings_s"] = timings
    write_text(report / "metrics.json", json.dumps(_json_safe(metrics), indent=2) + "\n")
    write_text(report / "metrics.md", metrics_markdown(metrics, detection))
    headline = headline_numbers(metrics)
    write_text(report / "index.md", index_markdown(headline, metrics, overlays, timings or {}, command))
    return headline


def _cases(test_cases: Sequence[dict[str, str]], predictions_dir: str | Path, overlay_dir: Path,
           max_slices: int) -> tuple[dict[str, Any], list[Path]]:
    """Lesion detection and an overlay PNG for every test case that has a prediction."""
    per_case, overlays = {}, []
    for item in test_cases:
        case = case_name(item["image"])
        pred_path = Path(predictions_dir) / f"{case}_seg.nii.gz"
        if not pred_path.is_file():
            print(f"report: no prediction for {case} ({pred_path}); skipped")
            continue
        image, spacing = load_ras(item["image"])
        gt, _ = load_ras(item["label"])
        pred, _ = load_ras(pred_path)
        if pred.shape != gt.shape:
            print(f"report: {case}: prediction shape {pred.shape} != label shape {gt.shape}; skipped")
            continue
        per_case[case] = lesion_detection(gt, pred)
        overlays.append(plot_overlay(image, gt, pred, spacing, pick_slices(gt, max_slices),
                                     overlay_dir / f"{case}.png", title=case))
    return detection_summary(per_case), overlays


def headline_numbers(metrics: dict[str, Any]) -> dict[str, Any]:
    """Mean Dice per class and lesions hit: the numbers the demo prints at the end."""
    dice = {name: metrics["mean"][name]["dice"] for name in metrics["classes"]}
    total = metrics["lesion_detection"]["total"]
    return {"dice": dice, "lesions_hit": total["hit"], "lesions_gt": total["gt"],
            "false_positives": total["false_positive"], "cases": len(metrics["cases"])}


def index_markdown(headline: dict[str, Any], metrics: dict[str, Any], overlays: Sequence[Path],
                   timings: dict[str, float], command: str) -> str:
    """Front page linking every artefact, with the headline numbers and timings."""
    dice = ", ".join(f"{name} {_fmt(v)}" for name, v in headline["dice"].items())
    lines = ["# MNet demo report", "",
             f"Mean test Dice over {headline['cases']} held-out cases: {dice}. "
             f"Lesions hit: {headline['lesions_hit']} of {headline['lesions_gt']} "
             f"({headline['false_positives']} false-positive components).", ""]
    if command:
        lines += ["Reproduce with:", "", "```bash", command, "```", ""]
    lines += ["## Contents", "",
              "- [plan.md](plan.md): the dataset plan (spacing, normalisation, patch, widths) and why; "
              "[plan.json](plan.json) is the file the configs read",
              "- [metrics.md](metrics.md): per-case Dice / HD95 / surface Dice and lesion detection; "
              "[metrics.json](metrics.json) holds the same numbers", "",
              "## Training curves", "", "![training loss](loss.png)", "", "![validation Dice](dice.png)", ""]
    if timings:
        lines += ["## Timings", "", "| step | seconds |", "|---|---:|"]
        lines += [f"| {step} | {sec:.0f} |" for step, sec in timings.items()] + [""]
    lines += ["## Overlays (held-out test cases)", ""]
    lines += [f"### {p.stem}\n\n![{p.stem}](overlays/{p.name})\n" for p in overlays]
    return "\n".join(lines)


def _json_safe(value: Any) -> Any:
    """NaN/inf are not JSON: write them as null."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
