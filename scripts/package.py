"""Build the release zip `dist/<bundle>_v<version>.zip` reproducibly, like the zoo's `ci/utils.py::compress_bundle`.

The zip holds one top-level folder `mnet_anisotropic_segmentation/` with configs/, scripts/, docs/, models/ (only
`model.pt`, when it exists), LICENSE, README.md, requirements.txt and large_files.yml. Every entry is dated
2022-05-30 00:00 (the zoo's `touch -t 202205300000`), entries are sorted, deflated at level 9, and carry fixed
permissions, so two builds of the same tree are byte-identical. `python -m monai.bundle download --url file://<zip>`
installs it.

Usage: ``python -m scripts.package [--bundle_root .] [--out_dir dist]`` (prints the zip path).
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import fire

from scripts.atomic import atomic_path

BUNDLE_NAME = "mnet_anisotropic_segmentation"
ZIP_DATE = (2022, 5, 30, 0, 0, 0)
INCLUDE_DIRS = ("configs", "scripts", "docs")
INCLUDE_FILES = ("LICENSE", "README.md", "requirements.txt", "large_files.yml")
WEIGHTS = ("models/model.pt",)  # training state (checkpoint_last.pt) and exports stay out of a release
REQUIRED = ("configs/metadata.json", "configs/inference.json", "LICENSE")
SKIP_DIR_NAMES = {"__pycache__", ".ipynb_checkpoints"}
SKIP_SUFFIXES = (".pyc", ".pyo", ".tmp", ".swp")


def bundle_version(bundle_root: str | Path) -> str:
    return str(json.loads((Path(bundle_root) / "configs" / "metadata.json").read_text())["version"])


def zip_name(version: str) -> str:
    return f"{BUNDLE_NAME}_v{version}.zip"


def bundle_files(bundle_root: str | Path) -> list[str]:
    """Relative POSIX paths of the files a release ships, sorted; hidden files and caches are left out."""
    root = Path(bundle_root)
    missing = [name for name in REQUIRED if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{root}: not a bundle, missing {', '.join(missing)}")
    files = [name for name in (*INCLUDE_FILES, *WEIGHTS) if (root / name).is_file()]
    for top in INCLUDE_DIRS:
        for dirpath, dirnames, filenames in os.walk(root / top):
            dirnames[:] = [d for d in dirnames if d not in SKIP_DIR_NAMES and not d.startswith(".")]
            for name in filenames:
                if not name.startswith(".") and not name.endswith(SKIP_SUFFIXES):
                    files.append((Path(dirpath) / name).relative_to(root).as_posix())
    return sorted(files)


def _entry(name: str, is_dir: bool) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
    info.create_system = 3  # unix, whatever the building OS
    if is_dir:
        info.external_attr = (0o40755 << 16) | 0x10
        info.compress_type = zipfile.ZIP_STORED
    else:
        info.external_attr = 0o100644 << 16
        info.compress_type = zipfile.ZIP_DEFLATED
    return info


def build(bundle_root: str | Path = ".", out_dir: str | Path = "dist") -> Path:
    """Write `<out_dir>/<bundle>_v<version>.zip` and return its path."""
    root = Path(bundle_root).resolve()
    files = bundle_files(root)
    dirs = {f"{BUNDLE_NAME}/", f"{BUNDLE_NAME}/models/"}  # models/ exists even before weights are trained
    for rel in files:
        parts = rel.split("/")[:-1]
        dirs.update(f"{BUNDLE_NAME}/{'/'.join(parts[: i + 1])}/" for i in range(len(parts)))
    entries = sorted([(d, None) for d in dirs] + [(f"{BUNDLE_NAME}/{rel}", root / rel) for rel in files])

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / zip_name(bundle_version(root))
    with (
        atomic_path(target, suffix=".zip") as partial,
        zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive,
    ):
        for name, source in entries:
            if source is None:
                archive.writestr(_entry(name, is_dir=True), b"")
            else:
                archive.writestr(_entry(name, is_dir=False), source.read_bytes(), compresslevel=9)
    return target


def main(bundle_root: str = ".", out_dir: str = "dist") -> None:
    """CLI entry point (fire): build the zip and print its path."""
    path = build(bundle_root, out_dir)
    with zipfile.ZipFile(path) as archive:
        n_files = sum(1 for i in archive.infolist() if not i.is_dir())
        weights = any(i.filename.endswith("/models/model.pt") for i in archive.infolist())
    note = "with models/model.pt" if weights else "without weights (train first, or see large_files.yml)"
    print(f"package: {path} ({n_files} files, {path.stat().st_size / 1e6:.2f} MB, {note})")


if __name__ == "__main__":
    fire.Fire(main)
