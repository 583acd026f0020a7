"""Integrity checks for a data set, an output folder and the command line, reported before any work.

Like nnU-Net's dataset integrity check, every case is read (header and array) and ALL problems are reported at once,
one line each, so a user fixes a data set in one pass instead of one crash per bad file. The bundle configs call the
same checks on start-up (`check_or_raise`, `check_output_dir`, `check_overrides`; checkpoints are checked by
scripts.checkpoints); they raise `scripts.errors.BundleInputError`, whose message is the last line the console shows.

Usage: ``python -m scripts.check_data --dataset_dir D [--datalist dataset.json] [--plan configs/plan.json]
[--fold 0]``; exit status 1 when any problem is found.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import json
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from scripts.errors import BundleInputError, install_excepthook

install_excepthook()
logger = logging.getLogger("mnet.check_data")
AFFINE_TOL_MM = 1e-3  # image/label affines may differ by rounding only
NIFTI_SUFFIXES = (".nii", ".nii.gz")
NOT_CONFIGS = ("metadata.json", "plan.json")  # next to the configs but not bundle settings


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
    """Header and array; NIfTI through nibabel (fast, no ITK), other formats through MONAI's LoadImage."""
    if path.endswith(NIFTI_SUFFIXES):
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
    if not os.path.isfile(path):
        problems.append(Problem(path, "file not found", "an existing file; datalist paths are relative to dataset_dir"))
        return None
    try:
        return _read(path)
    except Exception as err:  # noqa: BLE001 - any reader failure means the same thing to the user
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


def _image_problems(path: str, vol: _Volume, in_channels: int | None) -> list[Problem]:
    problems = _spatial_problems(path, vol)
    if not problems and in_channels is not None and _channels(vol) != in_channels:
        problems.append(Problem(path, f"{_channels(vol)} image channel(s), shape {vol.shape}",
                                f"{in_channels} channel(s) as in the plan's in_channels"))
    if np.issubdtype(vol.array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(vol.array)))
        if bad:
            problems.append(Problem(path, f"{bad} NaN/Inf voxel(s) in the image", "finite intensities"))
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
            problems.append(Problem(path, f"label values [{shown}] outside the declared classes",
                                    f"0..{num_classes - 1} ({num_classes} classes)"))
    return problems


def _geometry_problems(label_path: str, image: _Volume, label: _Volume) -> list[Problem]:
    """Image and label must share the voxel grid, otherwise training silently learns shifted masks."""
    if tuple(image.shape[:3]) != tuple(label.shape[:3]):
        return [Problem(label_path, f"label shape {label.shape[:3]} differs from the image's",
                        f"{image.shape[:3]} like the image")]
    if not np.allclose(image.affine, label.affine, rtol=0, atol=AFFINE_TOL_MM):
        spacing_i = np.round(np.linalg.norm(image.affine[:3, :3], axis=0), 4).tolist()
        spacing_l = np.round(np.linalg.norm(label.affine[:3, :3], axis=0), 4).tolist()
        diff = float(np.abs(image.affine - label.affine).max())
        found = f"label geometry differs from the image's (spacing {spacing_l} vs {spacing_i}, max diff {diff:.4g})"
        return [Problem(label_path, found, f"the image's affine within {AFFINE_TOL_MM}")]
    return []


def check_case(case: Any, in_channels: int | None = None, num_classes: int | None = None) -> list[Problem]:
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
            problems += _image_problems(os.fspath(path), vol, in_channels if len(images) == 1 else None)
    if len(images) > 1 and in_channels is not None and len(images) != in_channels:
        problems.append(Problem(os.fspath(images[0]), f"{len(images)} image files", f"{in_channels} (in_channels)"))
    if case.get("label") is not None:
        label = _load(case["label"], problems)
        if label is not None:
            problems += _label_problems(os.fspath(case["label"]), label, num_classes)
            if volumes[0] is not None and not _spatial_problems("", volumes[0]):
                problems += _geometry_problems(os.fspath(case["label"]), volumes[0], label)
    return problems


def check_cases(cases: Any, plan: dict | None = None, num_classes: int | None = None) -> list[Problem]:
    """Check every case against the plan (channels, classes); ``num_classes`` is used when there is no plan."""
    in_channels = plan["in_channels"] if plan else None
    num_classes = plan["out_channels"] if plan else num_classes
    if not isinstance(cases, (list, tuple)) or not cases:
        return [Problem("datalist", "no cases to check (empty list)", "at least one case")]
    return [p for case in cases for p in check_case(case, in_channels, num_classes)]


def _read_datalist(path: Path) -> tuple[dict | None, list[Problem]]:
    if not path.is_file():
        return None, [Problem(str(path), "datalist file not found", "an MSD-style dataset.json")]
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, [Problem(str(path), f"malformed JSON ({err})", "a valid JSON object")]
    if not isinstance(content, dict):
        return None, [Problem(str(path), f"a JSON {type(content).__name__}", 'an object with a "training" list')]
    return content, []


def _datalist_cases(path: Path, content: dict, dataset_dir: str) -> tuple[list, list[Problem]]:
    """Entries of training/validation/test with absolute paths, plus structural problems."""
    from scripts.datalist import _read_list

    if not isinstance(content.get("training"), list) or not content["training"]:
        problems = [Problem(str(path), "'training' list is empty or missing", "a non-empty list of cases")]
    else:
        problems = []
    cases = []
    for key in ("training", "validation", "test"):
        try:
            cases += _read_list(path, key, dataset_dir)
        except BundleInputError as err:
            problems.append(Problem(str(path), str(err).split(": ", 1)[-1]))
    return cases, problems


def _fold_problems(path: Path, dataset_dir: str, fold: int) -> list[Problem]:
    from scripts.datalist import load_split

    try:
        split = load_split(str(path), dataset_dir, fold=fold)
    except BundleInputError as err:
        return [Problem(str(path), str(err).split(": ", 1)[-1])]
    return [Problem(str(path), f"fold {fold}: '{k}' is empty", "a non-empty list")
            for k in ("train", "validation") if not split[k]]


def _plan_or_problem(plan: str | dict | None) -> tuple[dict | None, list[Problem]]:
    if plan is None or isinstance(plan, dict):
        return plan, []
    from scripts.plan_file import load_plan

    try:
        return load_plan(plan), []
    except BundleInputError as err:
        return None, [Problem(str(plan), str(err).split(": ", 1)[-1], "a plan as in docs/plan_format.md")]


def _declared_classes(content: dict) -> int | None:
    labels = content.get("labels")
    return len(labels) if isinstance(labels, dict) and labels else None


def check_dataset(dataset_dir: str, datalist: str = "dataset.json", plan: str | dict | None = None,
                  fold: int | None = None) -> list[Problem]:
    """Every problem of a data set: datalist, plan, folds, and each case's files (headers and arrays)."""
    path = Path(datalist) if Path(datalist).is_absolute() else Path(dataset_dir) / datalist
    plan_dict, problems = _plan_or_problem(plan)
    content, found = _read_datalist(path)
    problems += found
    if content is None:
        return problems
    cases, found = _datalist_cases(path, content, dataset_dir)
    problems += found
    if fold is not None:
        problems += _fold_problems(path, dataset_dir, int(fold))
    if cases:
        problems += check_cases(cases, plan_dict, num_classes=_declared_classes(content))
    return list(dict.fromkeys(problems))


def check_or_raise(cases: Any, plan: dict | None = None, what: str = "the data") -> None:
    """Start-up check for the configs: log every problem, then raise one BundleInputError naming the first.

    Takes the data lists the workflow will really use (MONAI Label replaces them and may have no datalist file).
    """
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


def _known_run_args() -> set[str]:
    from monai.bundle import ConfigWorkflow
    from monai.bundle.scripts import create_workflow, run
    from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS

    names = set(DEFAULT_MLFLOW_SETTINGS["configs"])  # --tracking mlflow adds these ids (tracking_uri, run_name ...)
    for fn in (run, create_workflow, ConfigWorkflow.__init__):
        names |= {p.name for p in inspect.signature(fn).parameters.values() if p.kind != p.VAR_KEYWORD}
    return names - {"self"}


def _parse_cli(argv: list[str]) -> dict[str, str | None]:
    """``--key value`` / ``--key=value`` pairs as fire sees them (a bare ``--flag`` maps to None)."""
    pairs: dict[str, str | None] = {}
    tokens = [t for t in argv if t != "--"]
    for i, tok in enumerate(tokens):
        if tok.startswith("--") and len(tok) > 2:
            name, eq, value = tok[2:].partition("=")
            nxt = tokens[i + 1] if i + 1 < len(tokens) else None
            pairs[name] = value if eq else (nxt if nxt is not None and not nxt.startswith("--") else None)
    return pairs


def _as_files(value: Any) -> list[str]:
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            value = value.split(",")
    return [str(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def check_overrides(argv: list[str] | None = None) -> None:
    """MONAI accepts any ``--key value`` and silently adds it to the config, so ``--epoch 3`` (for ``--epochs``) is
    ignored without a word; refuse top-level override ids that no config file defines. Only for the CLI."""
    argv = sys.argv if argv is None else argv
    if not argv or not Path(argv[0]).as_posix().endswith("monai/bundle/__main__.py"):
        return  # called from Python (MONAI Label, tests): overrides are the caller's business
    pairs = _parse_cli(argv[1:])
    known = _known_run_args() | {"_meta_"}
    from monai.bundle import ConfigParser

    if pairs.get("args_file"):
        pairs.update(ConfigParser.load_config_file(pairs["args_file"]))
    for config in _as_files(pairs.get("config_file") or []):
        # ids of the sibling configs count too: one argument list shared by train and inference is not a typo
        siblings = [p for p in Path(config).parent.glob("*.json") if p.name not in NOT_CONFIGS]
        for path in [Path(config), *siblings]:
            content = ConfigParser.load_config_file(str(path)) if path.is_file() else {}
            known |= set(content) if isinstance(content, dict) else set()
    for name in pairs:
        top = name.split("#", 1)[0]
        if top not in known:
            hint = difflib.get_close_matches(top, sorted(known), n=1)
            guess = f" (did you mean --{hint[0]}?)" if hint else ""
            raise BundleInputError(f"--{name}: unknown setting, the configs define no '{top}'{guess}; MONAI would "
                                   "silently ignore it (--check_data False skips this check)")


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
