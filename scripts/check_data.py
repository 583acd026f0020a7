"""Integrity checks for a data set, an output folder and the command line, reported before any work.

Like nnU-Net's dataset integrity check, every case is read (header and array) and ALL problems are reported at once,
one line each, so a user fixes a data set in one pass instead of one crash per bad file. The bundle configs call the
same checks on start-up (`check_or_raise`, `check_output_dir`; checkpoints are checked by
scripts.checkpoints); they raise `scripts.errors.BundleInputError`, whose message is the last line the console shows.

Usage: ``python -m scripts.check_data --dataset_dir D [--datalist dataset.json] [--plan configs/plan.json]
[--fold 0]``; exit status 1 when any problem is found.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scripts.datalist import (
    LIST_KEYS,
    channel_names,
    class_names,
    datalist_cases,
    is_nifti,
    load_split,
    missing_reader,
    overlap_problems,
    read_datalist,
)
from scripts.dicom import is_series_folder, series_problems
from scripts.errors import BundleInputError, install_excepthook
from scripts.settings import as_bool

install_excepthook()
logger = logging.getLogger("mnet.check_data")
AFFINE_TOL_MM = 1e-3  # image and label voxel positions may differ by rounding only
MIN_SPACING_MM = 0.01  # below this a header is almost surely in metres (0.8 mm = 0.0008 m); micro-CT is ~0.01 mm
MAX_INTENSITY = 1e10  # no scanner measures this; -3.4e38 (float32 lowest) is a GIS/MR "NoData" fill


@dataclass(frozen=True)
class Problem:
    """One finding: which file, what is wrong, what was expected."""

    file: str
    problem: str
    expected: str = ""

    def __str__(self) -> str:
        return f"{self.file}: {self.problem}" + (f" (expected {self.expected})" if self.expected else "")


@dataclass
class _Volume:
    """What the checks need from one file; `array` is read once."""

    shape: tuple[int, ...]
    affine: np.ndarray
    array: np.ndarray


def _read(path: str) -> _Volume:
    """Header and array; NIfTI through nibabel (fast, no ITK), other formats and DICOM series folders through
    MONAI's LoadImage, as the workflows read them."""
    if is_nifti(path):
        img = nib.load(path)
        return _Volume(tuple(img.shape), np.asarray(img.affine, float), np.asanyarray(img.dataobj))
    from monai.transforms import LoadImage

    data = LoadImage(image_only=True, ensure_channel_first=False)(path)
    return _Volume(tuple(data.shape), np.asarray(data.affine, float), np.asarray(data))


def _load(path: Any, problems: list[Problem]) -> _Volume | None:
    """Read a file or record why not (missing, unreadable, truncated)."""
    if not isinstance(path, (str, os.PathLike)):
        problems.append(Problem(str(path), "not a file path", "a path string"))
        return None
    path = os.fspath(path)
    if os.path.isdir(path) and not is_series_folder(path):
        problems.append(Problem(path, "a folder without DICOM files", "an image file or a DICOM series folder"))
        return None
    if not os.path.exists(path):
        problems.append(Problem(path, "file not found", "an existing file; datalist paths are relative to dataset_dir"))
        return None
    package = missing_reader(path)
    if package:
        problems.append(
            Problem(
                path,
                "no reader for this format is installed",
                f"`pip install {package}` (listed in requirements-optional.txt), or the image converted to NIfTI",
            )
        )
        return None
    if os.path.isdir(path):
        found = series_problems(path)
        problems += [Problem(path, problem) for problem in found]
        if found:
            return None
    try:
        return _read(path)
    except Exception as err:
        problems.append(Problem(path, f"unreadable or truncated ({type(err).__name__}: {err})", "a complete image"))
        return None


def _spatial_problems(path: str, vol: _Volume) -> list[Problem]:
    """2D images, single slices and >4D arrays cannot feed a 3D network."""
    if len(vol.shape) < 3:
        return [Problem(path, f"2D image of shape {vol.shape}", "a 3D volume (x, y, z)")]
    if len(vol.shape) > 4:
        return [Problem(path, f"{len(vol.shape)}D array of shape {vol.shape}", "3D (x, y, z) or 4D (x, y, z, channel)")]
    if min(vol.shape[:3]) < 2:
        return [Problem(path, f"a single slice, shape {vol.shape}", "a 3D volume with at least 2 slices")]
    return []


def _channels(vol: _Volume) -> int:
    return 1 if len(vol.shape) == 3 else int(vol.shape[3])


def _spacing(affine: np.ndarray) -> list[float]:
    return np.round(np.linalg.norm(affine[:3, :3], axis=0), 6).tolist()


def _image_problems(path: str, vol: _Volume, in_channels: int | None, channels_from: str = "the plan") -> list[Problem]:
    problems = _spatial_problems(path, vol)
    if not problems and in_channels is not None and _channels(vol) != in_channels:
        problems.append(
            Problem(
                path,
                f"{_channels(vol)} image channel(s), shape {vol.shape}",
                f"{in_channels} channel(s) as {channels_from} declares",
            )
        )
    if not problems and min(_spacing(vol.affine)) < MIN_SPACING_MM:
        problems.append(
            Problem(
                path,
                f"voxel spacing {_spacing(vol.affine)} mm is implausibly small, a header " "written in metres?",
                f"spacing in millimetres (>= {MIN_SPACING_MM} mm)",
            )
        )
    if np.issubdtype(vol.array.dtype, np.floating):
        finite = np.isfinite(vol.array)
        bad = int(np.count_nonzero(~finite))
        if bad:
            problems.append(Problem(path, f"{bad} NaN/Inf voxel(s) in the image", "finite intensities"))
        extreme = finite & ((vol.array >= MAX_INTENSITY) | (vol.array <= -MAX_INTENSITY))  # no float copy
        if extreme.any():
            value = float(vol.array[extreme].flat[0])
            problems.append(
                Problem(
                    path,
                    f"{int(extreme.sum())} voxel(s) at {value:.3g}, a NoData fill?",
                    f"real intensities (|value| < {MAX_INTENSITY:g}); replace the fill by the " "background value",
                )
            )
    return problems


def _label_problems(path: str, vol: _Volume, num_classes: int | None) -> list[Problem]:
    problems = _spatial_problems(path, vol)
    if not problems and _channels(vol) != 1:
        problems.append(Problem(path, f"label has {_channels(vol)} channels, shape {vol.shape}", "one channel"))
    arr = vol.array
    if np.issubdtype(arr.dtype, np.floating):
        finite = np.isfinite(arr)
        if not finite.all() or np.any(arr[finite] != np.round(arr[finite])):
            return [*problems, Problem(path, "non-integer label values", "integer class indices")]
    if num_classes is not None:
        outside = (arr < 0) | (arr >= num_classes)
        if outside.any():
            values = np.unique(arr[outside])
            shown = ", ".join(str(v) for v in values[:5].tolist()) + (", ..." if len(values) > 5 else "")
            problems.append(
                Problem(
                    path,
                    f"label values [{shown}] outside the declared classes",
                    f"0..{num_classes - 1} ({num_classes} classes)",
                )
            )
    return problems


def _corners(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """World positions (mm) of the 8 corner voxel centres of a grid."""
    index = np.array([[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    return (affine @ index.T).T[:, :3]


def same_grid(shape_a: tuple[int, ...], affine_a: np.ndarray, shape_b: tuple[int, ...], affine_b: np.ndarray) -> bool:
    """True when two voxel grids put their voxels at the same positions in space, whatever the storage order: one
    grid's index axes map onto the other's by a permutation and flips (RAS vs LAS, axes swapped), and the corner
    voxels coincide within AFFINE_TOL_MM. Orientationd + Spacingd then align the two exactly."""
    try:
        mapping = np.linalg.solve(affine_b, affine_a)[:3, :3]  # voxel steps of grid a in voxels of grid b
    except np.linalg.LinAlgError:  # a degenerate (zero-spacing) header matches nothing
        return False
    signed_permutation = np.round(mapping)
    if not np.allclose(mapping, signed_permutation, atol=1e-4) or not np.array_equal(
        np.sort(np.abs(signed_permutation), axis=0), np.array([[0, 0, 0], [0, 0, 0], [1, 1, 1]])
    ):
        return False
    if sorted(shape_a[:3]) != sorted(shape_b[:3]):
        return False
    corners_a, corners_b = _corners(shape_a, affine_a), _corners(shape_b, affine_b)
    distance = np.linalg.norm(corners_a[:, None, :] - corners_b[None, :, :], axis=-1)
    return bool(distance.min(axis=1).max() <= AFFINE_TOL_MM and distance.min(axis=0).max() <= AFFINE_TOL_MM)


def _geometry_problems(label_path: str, image: _Volume, label: _Volume, what: str = "label") -> list[Problem]:
    """Image and label must cover the same voxels in space (storage order may differ: the transforms reorient both
    to RAS), otherwise training silently learns shifted masks."""
    if sorted(image.shape[:3]) != sorted(label.shape[:3]):
        return [
            Problem(
                label_path,
                f"{what} shape {label.shape[:3]} differs from the image's",
                f"{image.shape[:3]} like the image",
            )
        ]
    if not same_grid(image.shape, image.affine, label.shape, label.affine):
        offset = float(np.abs(_corners(image.shape, image.affine) - _corners(label.shape, label.affine)).max())
        found = (
            f"{what} geometry differs from the image's in world space (spacing {_spacing(label.affine)} vs "
            f"{_spacing(image.affine)} mm, corner voxels up to {offset:.4g} mm apart)"
        )
        return [Problem(label_path, found, f"the image's voxel positions within {AFFINE_TOL_MM} mm")]
    return []


def check_case(
    case: Any, in_channels: int | None = None, num_classes: int | None = None, channels_from: str = "the plan"
) -> list[Problem]:
    """All problems of one datalist entry ({"image": path, "label": path} or a bare image path)."""
    if isinstance(case, (str, os.PathLike)):
        case = {"image": case}
    if not isinstance(case, dict) or "image" not in case:
        return [Problem(str(case)[:80], "datalist entry without an 'image'", '{"image": ..., "label": ...}')]
    problems: list[Problem] = []
    images = case["image"] if isinstance(case["image"], (list, tuple)) else [case["image"]]
    volumes = [_load(p, problems) for p in images]
    for path, vol in zip(images, volumes):
        if vol is not None:
            problems += _image_problems(os.fspath(path), vol, in_channels if len(images) == 1 else 1, channels_from)
    if len(images) > 1 and in_channels is not None and len(images) != in_channels:
        problems.append(
            Problem(
                os.fspath(images[0]),
                f"{len(images)} image files",
                f"{in_channels} channel(s) as {channels_from} declares",
            )
        )
    first = volumes[0] if volumes[0] is not None and not _spatial_problems("", volumes[0]) else None
    for path, vol in zip(images[1:], volumes[1:]):
        if first is not None and vol is not None and not _spatial_problems("", vol):
            problems += _geometry_problems(os.fspath(path), first, vol, what="channel")
    if case.get("label") is not None:
        label = _load(case["label"], problems)
        if label is not None:
            problems += _label_problems(os.fspath(case["label"]), label, num_classes)
            if first is not None and not _spatial_problems("", label):
                problems += _geometry_problems(os.fspath(case["label"]), first, label)
    return problems


def check_cases(
    cases: Any, plan: dict | None = None, num_classes: int | None = None, in_channels: int | None = None
) -> list[Problem]:
    """Check every case against the plan (channels, classes); ``num_classes`` and ``in_channels`` (declared by the
    datalist) are used when there is no plan."""
    channels_from = "the plan's in_channels" if plan else "the datalist"
    in_channels = plan["in_channels"] if plan else in_channels
    num_classes = plan["out_channels"] if plan else num_classes
    if not isinstance(cases, (list, tuple)) or not cases:
        return [Problem("datalist", "no cases to check (empty list)", "at least one case")]
    return [p for case in cases for p in check_case(case, in_channels, num_classes, channels_from)]


def _from_error(err: BundleInputError, expected: str = "") -> Problem:
    """A BundleInputError "<file>: <problem>" as a Problem."""
    file, _, problem = str(err).partition(": ")
    return Problem(file, problem, expected) if problem else Problem("datalist", file, expected)


def _fold_problems(path: Path, dataset_dir: str, fold: int) -> list[Problem]:
    try:
        split = load_split(str(path), dataset_dir, fold=fold)
    except BundleInputError as err:
        return [_from_error(err)]
    return [
        Problem(str(path), f"fold {fold}: '{k}' is empty", "a non-empty list")
        for k in ("train", "validation")
        if not split[k]
    ]


def _plan_or_problem(plan: str | dict | None) -> tuple[dict | None, list[Problem]]:
    if plan is None or isinstance(plan, dict):
        return plan, []
    from scripts.plan_file import load_plan

    try:
        return load_plan(plan), []
    except BundleInputError as err:
        return None, [Problem(str(plan), str(err).split(": ", 1)[-1], "a plan as in docs/plan_format.md")]


def check_dataset(
    dataset_dir: str, datalist: str = "dataset.json", plan: str | dict | None = None, fold: int | None = None
) -> list[Problem]:
    """Every problem of a data set: datalist (MSD or nnU-Net v2), plan, folds, duplicates, and each case's files."""
    plan_dict, problems = _plan_or_problem(plan)
    try:
        found = read_datalist(datalist, dataset_dir)
    except BundleInputError as err:
        return [*problems, _from_error(err, "an MSD or nnU-Net v2 dataset.json")]
    path, lists = found.path, {}
    for key in LIST_KEYS:
        try:
            lists[key] = datalist_cases(found, key, dataset_dir)
        except BundleInputError as err:
            problems.append(_from_error(err))
    if "training" in lists and not lists["training"]:
        problems.append(Problem(str(path), "'training' list is empty or missing", "a non-empty list of cases"))
    overlaps = [Problem(str(path), p) for p in overlap_problems(lists)]
    problems += overlaps
    if fold is not None and not overlaps:
        problems += _fold_problems(path, dataset_dir, int(fold))
    try:
        labels = class_names(found.content, path)
    except BundleInputError as err:
        problems.append(_from_error(err))
        labels = None
    names = channel_names(found.content)
    if plan_dict and names and len(names) != plan_dict["in_channels"]:
        problems.append(
            Problem(
                str(path),
                f"declares {len(names)} channel(s) but the plan has in_channels " f"{plan_dict['in_channels']}",
                "the same number (re-run scripts.plan?)",
            )
        )
    cases = [case for key in LIST_KEYS for case in lists.get(key, [])]
    if cases:
        problems += check_cases(
            cases, plan_dict, num_classes=len(labels) if labels else None, in_channels=len(names) if names else None
        )
    return list(dict.fromkeys(problems))


def check_or_raise(
    cases: Any, plan: dict | None = None, what: str = "the data", enabled: object = True, allow_empty: bool = False
) -> None:
    """Start-up check for the configs: log every problem, then raise one BundleInputError naming the first.

    Takes the data lists the workflow will really use (MONAI Label replaces them and may have no datalist file).
    """
    if not as_bool(enabled, "check_data") or (allow_empty and cases is not None and len(cases) == 0):
        return  # allow_empty: a re-run of inference whose every output already exists has nothing left to check
    if plan is not None and not plan.get("anisotropic", True):
        logger.info("note: the plan says the data are isotropic; MNet works, but its advantage is for thick slices")
    problems = check_cases(list(cases) if cases is not None else [], plan)
    if not problems:
        logger.info(f"check_data: {len(cases)} case(s) of {what} passed the integrity check")
        return
    for problem in problems:
        logger.error(str(problem))
    more = f" (+{len(problems) - 1} more problem(s) listed above)" if len(problems) > 1 else ""
    raise BundleInputError(f"{problems[0]}{more}; `python -m scripts.check_data` lists all, --check_data False skips")


def check_output_dir(path: str) -> str:
    """Fail before the first (slow) case when predictions could not be saved; creates nothing: a probe file in the
    folder, or in its nearest existing parent, is deleted at once (the writers create the folder when saving)."""
    target = Path(path).absolute()
    existing = next((p for p in (target, *target.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        raise BundleInputError(f"{path}: output folder cannot be created, {existing} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise BundleInputError(f"{path}: output folder is not writable ({err.strerror or err} in {existing})") from None
    return path


def main(dataset_dir: str, datalist: str = "dataset.json", plan: str | None = None, fold: int | None = None) -> None:
    """CLI (fire): print every problem, one line each, and exit 1 if there is any."""
    problems = check_dataset(dataset_dir, datalist, plan, fold)
    for problem in problems:
        print(problem)
    if problems:
        print(f"check_data: {len(problems)} problem(s) found", file=sys.stderr)
        sys.exit(1)
    print(f"check_data: {dataset_dir} passed ({datalist}{', plan ' + str(plan) if plan else ''})")


if __name__ == "__main__":
    import fire

    fire.Fire(main)
