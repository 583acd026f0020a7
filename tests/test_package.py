"""Release packaging (`make package`, tools/package.py): a reproducible zoo-style zip that holds what a zoo bundle
holds (configs, the scripts modules the configs import, docs, LICENSE), and large_files.yml."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from monai.bundle import ConfigParser, download_large_files

from tools import package

BUNDLE = Path(__file__).resolve().parents[1]
TINY = {"kn": [4, 4, 6, 6, 8], "patch_size": [64, 64, 8]}
TOP = package.BUNDLE_NAME + "/"
ALLOWED_TOP = {"configs", "scripts", "models", "docs", "LICENSE", "README.md", "requirements.txt"}
# import name -> distribution name, for the metadata's required packages whose names differ
IMPORT_NAMES = {"ignite": "pytorch-ignite", "yaml": "pyyaml"}


def _version() -> str:
    return json.loads((BUNDLE / "configs" / "metadata.json").read_text())["version"]


def stage(dst: Path, weights: bool) -> Path:
    """A bundle tree with exactly the packaged files of this checkout, with or without test weights."""
    for rel in package.bundle_files(BUNDLE):
        if rel != "models/model.pt":
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(BUNDLE / rel, dst / rel)
    (dst / "models").mkdir(exist_ok=True)
    if weights:
        parser = ConfigParser()
        parser.read_config(str(dst / "configs" / "inference.json"))
        parser.update({"bundle_root": str(dst), "kn": TINY["kn"]})
        torch.save(parser.get_parsed_content("network_def").state_dict(), dst / "models" / "model.pt")
    return dst


def _zip_files(path: Path) -> set[str]:
    with zipfile.ZipFile(path) as archive:
        return {n[len(TOP) :] for n in archive.namelist() if not n.endswith("/")}


def test_build_is_reproducible_and_contains_only_the_bundle(tmp_path):
    first = package.build(BUNDLE, tmp_path / "a")
    second = package.build(BUNDLE, tmp_path / "b")
    assert first.name == second.name == f"mnet_anisotropic_segmentation_v{_version()}.zip"
    assert first.read_bytes() == second.read_bytes()

    with zipfile.ZipFile(first) as archive:
        infos = archive.infolist()
        assert archive.testzip() is None
    names = [i.filename for i in infos]
    assert names == sorted(names)
    assert all(n.startswith(TOP) for n in names)
    assert {n[len(TOP) :].split("/")[0] for n in names if n != TOP} <= ALLOWED_TOP
    assert all(i.date_time == (2022, 5, 30, 0, 0, 0) for i in infos)
    assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in infos if not i.is_dir())
    for bad in ("__pycache__", ".pyc", "/tests/", "/benchmarks/", "/tools/", "/eval/", "/.venv", "/dist/", "/.git/"):
        assert not [n for n in names if bad in n], bad
    files = _zip_files(first)
    for required in ("configs/metadata.json", "configs/inference.json", "configs/train.json", "LICENSE",
                     "README.md", "requirements.txt", "docs/README.md", "docs/data_license.txt",
                     "scripts/__init__.py", "scripts/networks/__init__.py", "scripts/networks/mnet.py",
                     "models/.gitkeep"):  # fmt: skip
        assert required in files, required
    configs = {p.relative_to(BUNDLE).as_posix() for p in (BUNDLE / "configs").rglob("*") if p.is_file()}
    assert configs <= files
    assert ("models/model.pt" in files) == (BUNDLE / "models" / "model.pt").is_file()
    assert not [f for f in files if f.startswith("models/") and f not in ("models/model.pt", "models/.gitkeep")]


def test_zip_ships_exactly_the_scripts_the_configs_import(tmp_path):
    files = _zip_files(package.build(BUNDLE, tmp_path))
    shipped = {f for f in files if f.startswith("scripts/")}
    assert shipped == set(package.shipped_modules(BUNDLE))
    # what the configs name directly is shipped, and so is what those modules import
    for name in ("check_data", "datalist", "handlers", "metrics", "plan_file", "transforms", "writers", "errors",
                 "atomic", "networks/blocks", "networks/inference_kernels", "networks/resampling"):  # fmt: skip
        assert f"scripts/{name}.py" in shipped, name
    # the demo, its report and the release tool are not runtime parts of the bundle
    assert not [f for f in shipped if f.startswith("scripts/demo/")]
    assert not [f for f in files if f.startswith("tools/") or f.endswith("package.py")]


def test_shipped_modules_follow_imports_inside_functions_and_skip_the_rest(tmp_path):
    root = tmp_path / "b"
    (root / "configs").mkdir(parents=True)
    (root / "scripts" / "sub").mkdir(parents=True)
    (root / "configs" / "inference.json").write_text(json.dumps({"net": {"_target_": "scripts.sub.a.Net"}}))
    (root / "scripts" / "__init__.py").write_text("")
    (root / "scripts" / "sub" / "__init__.py").write_text("")
    (root / "scripts" / "sub" / "a.py").write_text("def f():\n    from scripts import b\n")
    (root / "scripts" / "b.py").write_text("import os\nfrom scripts.c import helper\n")
    (root / "scripts" / "c.py").write_text("def helper(): pass\n")
    (root / "scripts" / "unused.py").write_text("import matplotlib\n")
    assert package.shipped_modules(root) == ["scripts/__init__.py", "scripts/b.py", "scripts/c.py",
                                             "scripts/sub/__init__.py", "scripts/sub/a.py"]  # fmt: skip


def test_shipped_code_imports_only_the_metadata_requirements():
    """Everything the released scripts import is the standard library, the bundle itself or a package that
    metadata.json pins (required, or optional as pydicom for DICOM), so e.g. matplotlib (the demo's report) is not a
    hidden runtime requirement."""
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    declared = {**meta["required_packages_version"], **meta.get("optional_packages_version", {})}
    allowed = {"torch", "monai", "numpy", *(k.lower() for k in declared)}
    assert "matplotlib" not in allowed
    for rel in package.shipped_modules(BUNDLE):
        for node in ast.walk(ast.parse((BUNDLE / rel).read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            for top in {n.split(".")[0] for n in names}:
                if top in sys.stdlib_module_names or top == "scripts":
                    continue
                assert IMPORT_NAMES.get(top, top) in allowed, f"{rel} imports {top}, not in metadata.json"


def test_placeholder_large_files_yml_is_left_out_and_a_real_one_ships(tmp_path):
    assert not package.large_files_ready(BUNDLE)  # no weights published yet: the URL is a .invalid placeholder
    assert "large_files.yml" not in _zip_files(package.build(BUNDLE, tmp_path / "now"))
    staged = stage(tmp_path / "bundle", weights=False)
    content = yaml.safe_load((BUNDLE / "large_files.yml").read_text())
    content["large_files"][0]["url"] = "https://example.org/releases/model.pt"
    (staged / "large_files.yml").write_text(yaml.safe_dump(content))
    assert "large_files.yml" in _zip_files(package.build(staged, tmp_path / "real"))


def test_build_without_weights_has_no_model_and_with_weights_has_it(tmp_path):
    bare = package.build(stage(tmp_path / "bare", weights=False), tmp_path / "dist_bare")
    with zipfile.ZipFile(bare) as archive:
        assert TOP + "models/model.pt" not in archive.namelist()
        assert TOP + "models/.gitkeep" in archive.namelist()
    staged = stage(tmp_path / "weighted", weights=True)
    weighted = package.build(staged, tmp_path / "dist_weighted")
    with zipfile.ZipFile(weighted) as archive:
        assert archive.read(TOP + "models/model.pt") == (staged / "models" / "model.pt").read_bytes()


def test_cli_writes_the_zip(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tools.package", "--bundle_root", str(BUNDLE), "--out_dir", str(tmp_path)],
        cwd=BUNDLE, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / f"mnet_anisotropic_segmentation_v{_version()}.zip").is_file()
    assert "package:" in proc.stdout


def test_large_files_yml_lists_the_weights():
    content = yaml.safe_load((BUNDLE / "large_files.yml").read_text())
    entries = content["large_files"]
    assert [e["path"] for e in entries] == ["models/model.pt"]
    for entry in entries:
        assert set(entry) == {"path", "url", "hash_val", "hash_type"}
        assert entry["url"].startswith("https://")
        assert entry["hash_type"] in ("", "md5", "sha1", "sha256", "sha512")
        assert bool(entry["hash_val"]) == bool(entry["hash_type"])


def test_download_large_files_keeps_existing_weights(tmp_path):
    """With models/model.pt present (and no hash given), the zoo's large-file step must not touch the network."""
    staged = stage(tmp_path / "bundle", weights=True)
    shutil.copy2(BUNDLE / "large_files.yml", staged / "large_files.yml")
    before = (staged / "models" / "model.pt").read_bytes()
    download_large_files(bundle_path=str(staged))
    assert (staged / "models" / "model.pt").read_bytes() == before


@pytest.mark.parametrize("missing", ["configs/metadata.json", "LICENSE"])
def test_build_refuses_a_tree_that_is_not_a_bundle(tmp_path, missing):
    staged = stage(tmp_path / "bundle", weights=False)
    (staged / missing).unlink()
    with pytest.raises(FileNotFoundError, match=missing):
        package.build(staged, tmp_path / "dist")


def test_license_is_the_full_apache_2_text_and_docs_credit_the_authors_code():
    text = (BUNDLE / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License")
    for part in ("TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION", "1. Definitions.",
                 "4. Redistribution.", "9. Accepting Warranty or Additional Liability.", "END OF TERMS AND CONDITIONS",
                 "Copyright 2026 MNet Bundle contributors"):  # fmt: skip
        assert part in text, part
    assert len(text.splitlines()) > 190
    for doc in ("README.md", "docs/README.md"):
        content = (BUNDLE / doc).read_text()
        assert "github.com/zfdong-code/MNet" in content and "Apache License 2.0" in content, doc
