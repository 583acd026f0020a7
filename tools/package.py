"""Build the release zip `dist/<bundle>_v<version>.zip` reproducibly, like the zoo's `ci/utils.py::compress_bundle`.

The zip holds what a zoo bundle holds, under one top-level folder `mnet_anisotropic_segmentation/`: configs/, docs/,
LICENSE, README.md, requirements.txt, `models/.gitkeep` (MONAI's extraction skips directory entries, so models/ needs
a file to exist after `monai.bundle download`), `models/model.pt` when it exists, and of scripts/ exactly the modules
the configs import, followed through their own imports (plus the packages' `__init__.py`). The demo, its report and
this tool are not in it, so their libraries (matplotlib) are not runtime requirements. `large_files.yml` ships only
once every URL in it is real: a placeholder (`.invalid` host) would make the zoo CI try to download it.

Every entry is dated 2022-05-30 00:00 (the zoo's `touch -t 202205300000`), entries are sorted, deflated at level 9,
and carry fixed permissions, so two builds of the same tree are byte-identical.

Usage: ``python -m tools.package [--bundle_root .] [--out_dir dist]`` (prints the zip path).
"""

from __future__ import annotations

import ast
import json
import re
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import fire
import yaml
from scripts.atomic import atomic_path

BUNDLE_NAME = "mnet_anisotropic_segmentation"
ZIP_DATE = (2022, 5, 30, 0, 0, 0)
INCLUDE_DIRS = ("configs", "docs")
INCLUDE_FILES = ("LICENSE", "README.md", "requirements.txt", "models/.gitkeep")
LARGE_FILES = "large_files.yml"
WEIGHTS = ("models/model.pt",)  # training state (checkpoint_last.pt) and exports stay out of a release
REQUIRED = ("configs/metadata.json", "configs/inference.json", "LICENSE")
SKIP_DIR_NAMES = {"__pycache__", ".ipynb_checkpoints"}
SKIP_SUFFIXES = (".pyc", ".pyo", ".tmp", ".swp")
PACKAGE = "scripts"
_DOTTED = re.compile(rf"\b{PACKAGE}(?:\.[A-Za-z_]\w*)+")


def bundle_version(bundle_root: str | Path) -> str:
    return str(json.loads((Path(bundle_root) / "configs" / "metadata.json").read_text())["version"])


def zip_name(version: str) -> str:
    return f"{BUNDLE_NAME}_v{version}.zip"


def _module_file(root: Path, dotted: str) -> str | None:
    """`scripts.a.b` -> `scripts/a/b.py` or `scripts/a/b/__init__.py` (relative), None if neither exists."""
    base = dotted.replace(".", "/")
    for rel in (f"{base}.py", f"{base}/__init__.py"):
        if (root / rel).is_file():
            return rel
    return None


def _longest_module(root: Path, dotted: str) -> str | None:
    """The module a dotted reference lives in: `scripts.check_data.check_or_raise` -> `scripts/check_data.py`."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        found = _module_file(root, ".".join(parts[:end]))
        if found:
            return found
    return None


def _imported_names(path: Path) -> set[str]:
    """Dotted `scripts.*` names a module imports anywhere (also inside functions), `from a import b` as `a.b`."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in names if n == PACKAGE or n.startswith(PACKAGE + ".")}


def shipped_modules(bundle_root: str | Path) -> list[str]:
    """Relative paths of the scripts/ files the configs need: what they name (`_target_`, `$import`, `$` code),
    closed over the modules' own imports, plus every package `__init__.py` on the way."""
    root = Path(bundle_root)
    todo = [m for f in sorted((root / "configs").glob("*.json")) for m in _DOTTED.findall(f.read_text())]
    todo.append(PACKAGE)
    found: set[str] = set()
    while todo:
        rel = _longest_module(root, todo.pop())
        if rel is None or rel in found:
            continue
        found.add(rel)
        todo.extend(_imported_names(root / rel))
        parent = Path(rel).parent
        while parent.parts:  # a module's packages are imported first
            todo.append(".".join(parent.parts))
            parent = parent.parent
    return sorted(found)


def large_files_ready(bundle_root: str | Path) -> bool:
    """True when large_files.yml exists and none of its URLs is a placeholder (reserved `.invalid` host)."""
    path = Path(bundle_root) / LARGE_FILES
    if not path.is_file():
        return False
    entries = (yaml.safe_load(path.read_text()) or {}).get("large_files") or []
    hosts = [urlparse(str(e.get("url", ""))).hostname or "" for e in entries]
    return bool(hosts) and all(h and not h.endswith(".invalid") for h in hosts)


def bundle_files(bundle_root: str | Path) -> list[str]:
    """Relative POSIX paths of the files a release ships, sorted; hidden files and caches are left out."""
    root = Path(bundle_root)
    missing = [name for name in REQUIRED if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{root}: not a bundle, missing {', '.join(missing)}")
    files = [name for name in (*INCLUDE_FILES, *WEIGHTS) if (root / name).is_file()]
    if large_files_ready(root):
        files.append(LARGE_FILES)
    for top in INCLUDE_DIRS:
        for path in (root / top).rglob("*"):
            rel = path.relative_to(root)
            hidden = any(p.startswith(".") or p in SKIP_DIR_NAMES for p in rel.parts)
            if path.is_file() and not hidden and not path.name.endswith(SKIP_SUFFIXES):
                files.append(rel.as_posix())
    return sorted(files + shipped_modules(root))


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
    dirs = {f"{BUNDLE_NAME}/"}
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
    note = "with models/model.pt" if weights else "without weights (train first, see docs/README.md)"
    print(f"package: {path} ({n_files} files, {path.stat().st_size / 1e6:.2f} MB, {note})")


if __name__ == "__main__":
    fire.Fire(main)
