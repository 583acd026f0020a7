"""Datalists in the Medical Segmentation Decathlon format and nnU-Net-style deterministic 5-fold splits."""

from __future__ import annotations

import json
from pathlib import Path

from monai.data import load_decathlon_datalist, partition_dataset

from scripts.errors import BundleInputError, install_excepthook

install_excepthook()  # configs import this module: input errors then end the console output with one clear line

NUM_FOLDS = 5
SPLIT_SEED = 12345  # nnU-Net's KFold seed


def _read_list(datalist_file: Path, key: str, dataset_dir: str) -> list[dict]:
    """MONAI's decathlon loader, with one-line errors instead of a traceback for the usual mistakes."""
    if not datalist_file.is_file():
        raise BundleInputError(f"{datalist_file}: datalist file not found")
    try:
        content = json.loads(datalist_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleInputError(f"{datalist_file}: not a readable JSON datalist ({err})") from None
    if not isinstance(content, dict) or key not in content:
        return []
    if not isinstance(content[key], list):
        raise BundleInputError(f"{datalist_file}: '{key}' must be a list of cases, got {type(content[key]).__name__}")
    try:
        return load_decathlon_datalist(str(datalist_file), True, data_list_key=key, base_dir=dataset_dir)
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        raise BundleInputError(f"{datalist_file}: malformed '{key}' list ({type(err).__name__}: {err})") from None


def load_split(datalist_file: str, dataset_dir: str, fold: int = 0, num_folds: int = NUM_FOLDS) -> dict[str, list]:
    """Return {"train": [...], "validation": [...], "test": [...]} with absolute paths.

    An explicit ``validation`` list in the datalist is used as is; otherwise ``training`` is split into
    ``num_folds`` folds with a fixed seed and fold ``fold`` is held out, so every run sees the same split.
    """
    path = Path(datalist_file)
    if not 0 <= int(fold) < num_folds:
        raise BundleInputError(f"{path}: fold must be in 0..{num_folds - 1}, got {fold}")
    training = _read_list(path, "training", dataset_dir)
    if not training:
        raise BundleInputError(f"{path}: the 'training' list is empty or missing")
    validation = _read_list(path, "validation", dataset_dir)
    if not validation:
        if len(training) < num_folds:
            raise BundleInputError(f"{path}: {len(training)} training cases cannot be split into {num_folds} folds")
        folds = partition_dataset(training, num_partitions=num_folds, shuffle=True, seed=SPLIT_SEED)
        validation = folds[int(fold)]
        training = [case for i, part in enumerate(folds) if i != int(fold) for case in part]
    return {"train": training, "validation": validation, "test": _read_list(path, "test", dataset_dir)}


IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def inference_list(dataset_dir: str, datalist_file: str | None = None, key: str = "test") -> list[dict]:
    """Images to segment: the datalist's ``key`` list when the datalist exists, else every image file directly in
    ``dataset_dir`` (sorted), so ``--dataset_dir folder_of_scans`` works without writing a datalist."""
    if datalist_file and Path(datalist_file).is_file():
        items = _read_list(Path(datalist_file), key, dataset_dir)
        if not items:
            raise BundleInputError(f"{datalist_file}: the '{key}' list is empty or missing; nothing to segment")
        return [{"image": item["image"]} if isinstance(item, dict) else {"image": item} for item in items]
    folder = Path(dataset_dir)
    if not folder.is_dir():
        raise BundleInputError(f"{folder}: input folder not found")
    files = sorted(str(p) for p in folder.iterdir() if p.is_file() and p.name.endswith(IMAGE_SUFFIXES))
    if not files:
        raise BundleInputError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) found and no datalist given")
    return [{"image": f} for f in files]
