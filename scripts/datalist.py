"""The one place that finds, reads and resolves datalists, and lists image files: MSD / nnU-Net v1 ``dataset.json``
with ``training``/``validation``/``test`` lists, nnU-Net v2 raw datasets (``channel_names``, ``file_ending``,
``imagesTr/<case>_0000.nii.gz`` + ``labelsTr/<case>.nii.gz``), or a plain folder of images; plus the deterministic
nnU-Net-style 5-fold split. Training, evaluation, inference, ``scripts.plan`` and ``scripts.check_data`` all read data
through this module, so they agree on which file a relative ``--datalist`` means and on which files are images.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monai.data import load_decathlon_datalist, partition_dataset
from scripts.dicom import is_dicom_file, is_series_folder
from scripts.errors import BundleInputError, install_excepthook

install_excepthook()  # configs import this module: input errors then end the console output with one clear line
logger = logging.getLogger("mnet.datalist")

NUM_FOLDS = 5
SPLIT_SEED = 12345  # nnU-Net's KFold seed
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")  # longest first; matched case-insensitively
NIFTI_SUFFIXES = (".nii.gz", ".nii")
# folder mode: files whose name (without suffix) ends so are labels or earlier outputs, never images to segment
LABEL_MARKERS = ("_label", "_labels", "_seg", "_segmentation", "_mask", "_gt")
CHANNEL_PATTERN = re.compile(r"^(.+)_(\d{4})$")  # nnU-Net's <case>_<channel> file names
LIST_KEYS = ("training", "validation", "test")


def image_suffix(name: str | os.PathLike) -> str:
    """The image suffix of a file name as written (``.NII.GZ`` stays upper case), or "" if it is not an image."""
    name = os.path.basename(os.fspath(name))
    return next((name[-len(s) :] for s in IMAGE_SUFFIXES if name.lower().endswith(s)), "")


def is_nifti(name: str | os.PathLike) -> bool:
    return image_suffix(name).lower() in NIFTI_SUFFIXES


def case_name(path: str | os.PathLike) -> str:
    """'.../case_020.nii.gz' -> 'case_020' (the file name without its image suffix)."""
    name = os.path.basename(os.fspath(path))
    suffix = image_suffix(name)
    return name[: -len(suffix)] if suffix else name


# --------------------------------------------------------------------------------------------------------------------
# finding and reading dataset.json


def resolve_datalist(datalist: str | os.PathLike, dataset_dir: str | os.PathLike) -> Path:
    """Where a datalist is: an absolute path as given; a relative one in ``dataset_dir`` if it exists there, else
    relative to the working directory if it exists there, else (for the error message) in ``dataset_dir``."""
    path = Path(datalist)
    if path.is_absolute():
        return path
    in_dataset = Path(dataset_dir) / path
    return path if not in_dataset.exists() and path.exists() else in_dataset


@dataclass(frozen=True)
class Datalist:
    """A parsed dataset.json: where it is, what it holds, and which layout it follows."""

    path: Path
    content: dict
    layout: str  # "msd" (also nnU-Net v1) or "nnunet_v2"


def _layout(content: dict) -> str:
    if "training" not in content and ("file_ending" in content or "channel_names" in content):
        return "nnunet_v2"
    return "msd"


def read_datalist(datalist: str | os.PathLike, dataset_dir: str | os.PathLike) -> Datalist:
    """Find and parse a datalist; one-line BundleInputError when it is missing, not JSON or not an object."""
    path = resolve_datalist(datalist, dataset_dir)
    if not path.is_file():
        raise BundleInputError(
            f"{path}: datalist file not found (a relative --datalist is looked up in dataset_dir, "
            "then in the working directory)"
        )
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise BundleInputError(f"{path}: not a readable JSON datalist ({err})") from None
    except json.JSONDecodeError as err:
        raise BundleInputError(f"{path}: malformed JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    if not isinstance(content, dict):
        raise BundleInputError(
            f"{path}: a JSON {type(content).__name__}, expected an object with a 'training' list "
            "(MSD) or 'channel_names' and 'file_ending' (nnU-Net v2)"
        )
    return Datalist(path, content, _layout(content))


def class_names(content: dict, source: Any = "dataset.json") -> dict[str, str] | None:
    """Labels as {"0": "background", ...}: MSD writes {"0": name}, nnU-Net v2 {name: 0}; regions are refused."""
    labels = content.get("labels")
    if not labels:
        return None
    if not isinstance(labels, dict):
        raise BundleInputError(f'{source}: \'labels\' must be an object such as {{"0": "background", "1": "organ"}}')
    if any(isinstance(v, (list, tuple, dict)) for v in labels.values()):
        raise BundleInputError(
            f"{source}: region-based 'labels' (a label made of several classes, e.g. "
            f"{next(k for k, v in labels.items() if isinstance(v, (list, tuple, dict)))!r}) are "
            "not supported; give every class one integer"
        )
    if all(isinstance(v, int) and not isinstance(v, bool) for v in labels.values()):
        named = {str(v): str(k) for k, v in labels.items()}
        if len(named) != len(labels):
            raise BundleInputError(f"{source}: two 'labels' share one class value: {labels}")
        return named
    return {str(k): str(v) for k, v in labels.items()}


def channel_names(content: dict) -> dict | None:
    """The declared input channels ({"0": "CT"}): MSD's ``modality`` or nnU-Net v2's ``channel_names``."""
    names = content.get("modality") or content.get("channel_names")
    return names if isinstance(names, dict) and names else None


# --------------------------------------------------------------------------------------------------------------------
# cases of a datalist


def _msd_list(datalist: Datalist, key: str, dataset_dir: str | os.PathLike) -> list[dict]:
    """MONAI's decathlon loader, with one-line errors instead of a traceback for the usual mistakes."""
    content, path = datalist.content, datalist.path
    if key not in content:
        return []
    if not isinstance(content[key], list):
        raise BundleInputError(f"{path}: '{key}' must be a list of cases, got {type(content[key]).__name__}")
    try:
        return load_decathlon_datalist(str(path), True, data_list_key=key, base_dir=str(dataset_dir))
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        raise BundleInputError(f"{path}: malformed '{key}' list ({type(err).__name__}: {err})") from None


def _channel_files(folder: Path, file_ending: str) -> dict[str, dict[int, str]]:
    """{case: {channel: path}} of the nnU-Net-named files ``<case>_<XXXX><file_ending>`` in ``folder``."""
    found: dict[str, dict[int, str]] = {}
    if folder.is_dir():
        for entry in sorted(folder.iterdir()):
            if entry.name.lower().endswith(file_ending.lower()) and not entry.name.startswith("."):
                match = CHANNEL_PATTERN.match(entry.name[: -len(file_ending)])
                if match:
                    found.setdefault(match.group(1), {})[int(match.group(2))] = str(entry)
    return found


def _v2_case(images: list[str], label: str | None = None) -> dict:
    case: dict = {"image": images[0] if len(images) == 1 else images}
    return case if label is None else {**case, "label": label}


def _v2_list(datalist: Datalist, key: str, dataset_dir: str | os.PathLike) -> list[dict]:
    """nnU-Net v2: ``training`` from imagesTr + labelsTr (or the explicit ``dataset`` entry), ``test`` from imagesTs
    (+ labelsTs where present), cases sorted by identifier as nnU-Net does; a missing channel or label file stays in
    the list for check_data to name."""
    content, root, path = datalist.content, Path(dataset_dir), datalist.path
    if key == "validation":
        return []
    ending = content.get("file_ending")
    names = channel_names(content)
    if not isinstance(ending, str) or not ending.startswith(".") or names is None:
        raise BundleInputError(
            f"{path}: an nnU-Net v2 dataset.json needs 'file_ending' (e.g. \".nii.gz\") and "
            '\'channel_names\' (e.g. {"0": "CT"})'
        )
    channels = sorted(int(c) for c in names)
    if key == "training" and isinstance(content.get("dataset"), dict):  # nnU-Net v2's explicit file listing
        items = sorted(content["dataset"].items())
        return [
            _v2_case([os.path.normpath(root / p) for p in item["images"]], os.path.normpath(root / item["label"]))
            for _, item in items
        ]
    folder = root / ("imagesTr" if key == "training" else "imagesTs")
    found = _channel_files(folder, ending)
    cases = []
    for case in sorted(found):
        images = [found[case].get(c, str(folder / f"{case}_{c:04d}{ending}")) for c in channels]
        label = root / ("labelsTr" if key == "training" else "labelsTs") / f"{case}{ending}"
        cases.append(_v2_case(images, str(label) if key == "training" or label.is_file() else None))
    expected = content.get("numTraining")
    if key == "training" and isinstance(expected, int) and expected != len(cases):
        raise BundleInputError(
            f"{path}: numTraining is {expected} but {folder} holds {len(cases)} case(s) named <case>_XXXX{ending}"
        )
    return cases


def datalist_cases(datalist: Datalist, key: str, dataset_dir: str | os.PathLike) -> list[dict]:
    """The ``key`` list ("training", "validation", "test") as {"image": ..., "label": ...} dicts, absolute paths."""
    if datalist.layout == "nnunet_v2":
        return _v2_list(datalist, key, dataset_dir)
    return _msd_list(datalist, key, dataset_dir)


def _identity(case: dict) -> tuple[str, ...]:
    images = case.get("image") if isinstance(case, dict) else case
    images = images if isinstance(images, (list, tuple)) else [images]
    return tuple(os.path.realpath(os.fspath(p)) if isinstance(p, (str, os.PathLike)) else repr(p) for p in images)


def overlap_problems(lists: dict[str, list[dict]]) -> list[str]:
    """Cases listed twice, and validation/test cases that are also training cases (they would leak)."""
    problems, seen = [], {}
    for key, cases in lists.items():
        for case in cases:
            ident = _identity(case)
            name = case_name(ident[0])
            if ident in seen and seen[ident] == key:
                problems.append(f"case {name} is listed twice in '{key}'")
            elif ident in seen and "training" in (seen[ident], key):
                problems.append(f"case {name} is in both '{seen[ident]}' and '{key}'; it would leak into evaluation")
            seen.setdefault(ident, key)
    return list(dict.fromkeys(problems))


def load_split(datalist_file: str, dataset_dir: str, fold: int = 0, num_folds: int = NUM_FOLDS) -> dict[str, list]:
    """Return {"train": [...], "validation": [...], "test": [...]} with absolute paths.

    An explicit ``validation`` list in the datalist is used as is; otherwise ``training`` is split into
    ``num_folds`` folds with a fixed seed and fold ``fold`` is held out, so every run sees the same split.
    Duplicate cases and validation cases that are also training cases are refused (they leak into validation);
    test cases that are also training cases are logged as a warning (and listed by scripts.check_data).
    """
    datalist = read_datalist(datalist_file, dataset_dir)
    path = datalist.path
    if not 0 <= int(fold) < num_folds:
        raise BundleInputError(f"{path}: fold must be in 0..{num_folds - 1}, got {fold}")
    lists = {key: datalist_cases(datalist, key, dataset_dir) for key in LIST_KEYS}
    training, validation = lists["training"], lists["validation"]
    if not training:
        raise BundleInputError(f"{path}: the 'training' list is empty or missing")
    leaks = overlap_problems({key: lists[key] for key in ("training", "validation")})
    if leaks:
        more = f" (+{len(leaks) - 1} more)" if len(leaks) > 1 else ""
        raise BundleInputError(f"{path}: {leaks[0]}{more}")
    for problem in overlap_problems(lists):  # a test list may reuse training images for a look; scores on it may not
        if problem not in leaks:
            logger.warning(f"{path}: {problem}")
    if not validation:
        if len(training) < num_folds:
            raise BundleInputError(f"{path}: {len(training)} training cases cannot be split into {num_folds} folds")
        folds = partition_dataset(training, num_partitions=num_folds, shuffle=True, seed=SPLIT_SEED)
        validation = folds[int(fold)]
        training = [case for i, part in enumerate(folds) if i != int(fold) for case in part]
    return {"train": training, "validation": validation, "test": lists["test"]}


# --------------------------------------------------------------------------------------------------------------------
# images to segment


def folder_images(folder: str | os.PathLike) -> list[dict]:
    """Folder mode's rule: every image file directly in ``folder`` (suffixes of IMAGE_SUFFIXES in any case), except
    hidden files and names ending in a LABEL_MARKERS word (``x_label.nrrd``, earlier ``x_seg.nii.gz`` outputs); files
    named ``<case>_0000``, ``<case>_0001``... (nnU-Net) form one multi-channel case. Broken links are an error.
    DICOM: ``folder`` itself when it directly holds DICOM files (one series), and every sub-folder that does (a
    folder of series folders); such a folder is the case's image, read by MONAI as one series."""
    root = Path(folder)
    if root.is_file():
        raise BundleInputError(
            f"{root}: --dataset_dir is a file; give the folder that holds the images (every image "
            "in it is segmented) or a datalist with --datalist_file"
        )
    if not root.is_dir():
        raise BundleInputError(f"{root}: input folder not found")
    images, skipped = [str(root)] if _holds_slices(root) else [], []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and is_series_folder(entry):
            if entry.name.lower().endswith(LABEL_MARKERS):
                skipped.append(entry.name)
            else:
                images.append(str(entry))
            continue
        if not image_suffix(entry.name):
            continue
        if entry.is_symlink() and not entry.exists():
            raise BundleInputError(f"{entry}: broken symbolic link (its target {os.readlink(entry)} does not exist)")
        if not entry.is_file():
            continue
        if case_name(entry).lower().endswith(LABEL_MARKERS):
            skipped.append(entry.name)
        else:
            images.append(str(entry))
    if skipped:
        logger.info(f"{root}: not segmented (label or output names): {', '.join(skipped)}")
    if not images:
        raise BundleInputError(
            f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) or DICOM series folders found and no datalist given"
            + (f"; skipped label/output files {', '.join(skipped[:3])}" if skipped else "")
        )
    return _group_channels(images)


def _holds_slices(folder: Path) -> bool:
    """``folder`` is itself a series: it directly holds DICOM files other than earlier outputs (``x_seg.dcm``)."""
    return any(
        entry.is_file()
        and not entry.name.startswith(".")
        and not re.sub(r"\.dcm$", "", entry.name, flags=re.IGNORECASE).lower().endswith(LABEL_MARKERS)
        and is_dicom_file(entry)
        for entry in sorted(folder.iterdir())
    )


def _group_channels(images: list[str]) -> list[dict]:
    """nnU-Net's ``<case>_XXXX`` naming (every file follows it) -> one case per identifier with its channel files."""
    matches = [CHANNEL_PATTERN.match(case_name(p)) for p in images]
    if not all(matches):
        return [{"image": p} for p in images]
    groups: dict[str, list[tuple[int, str]]] = {}
    for match, path in zip(matches, images):
        groups.setdefault(match.group(1), []).append((int(match.group(2)), path))
    return [_v2_case([p for _, p in sorted(files)]) for _, files in sorted(groups.items())]


def inference_list(dataset_dir: str, datalist_file: str | None = None, key: str = "test") -> list[dict]:
    """Images to segment: the datalist's ``key`` list when the datalist exists, else every image file directly in
    ``dataset_dir`` (`folder_images`), so ``--dataset_dir folder_of_scans`` works without writing a datalist."""
    if datalist_file and resolve_datalist(datalist_file, dataset_dir).is_file():
        datalist = read_datalist(datalist_file, dataset_dir)
        items = datalist_cases(datalist, key, dataset_dir)
        if not items:
            raise BundleInputError(f"{datalist.path}: the '{key}' list is empty or missing; nothing to segment")
        return [{"image": item["image"]} if isinstance(item, dict) else {"image": item} for item in items]
    return folder_images(dataset_dir)


# which Python package can read which image suffix (MONAI picks the reader by what is installed)
READER_PACKAGES = {
    ".nrrd": (("nrrd", "pynrrd"), ("itk", "itk")),
    ".nhdr": (("nrrd", "pynrrd"), ("itk", "itk")),
    ".mha": (("itk", "itk"),),
    ".mhd": (("itk", "itk"),),
}


def missing_reader(path: str | os.PathLike) -> str | None:
    """The pip package to install when no reader for ``path``'s format is importable, else None (a folder is a
    DICOM series: the bundle checks its headers with pydicom, and MONAI reads it with PydicomReader or ITKReader)."""
    import importlib

    options = (("pydicom", "pydicom"),) if os.path.isdir(path) else READER_PACKAGES.get(image_suffix(path).lower(), ())
    for module, _ in options:
        try:
            importlib.import_module(module)
            return None
        except ImportError:
            continue
    return " or ".join(package for _, package in options) or None
