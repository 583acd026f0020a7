"""Release packaging (`make package`, scripts/package.py): a reproducible zoo-style zip that `monai.bundle download`
installs and that runs inference from the downloaded copy; and large_files.yml."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from monai.bundle import ConfigParser, download_large_files

from scripts import package

BUNDLE = Path(__file__).resolve().parents[1]
TINY = {"kn": [4, 4, 6, 6, 8], "patch_size": [64, 64, 8]}
TOP = package.BUNDLE_NAME + "/"
ALLOWED_TOP = {"configs", "scripts", "models", "docs", "LICENSE", "README.md", "requirements.txt", "large_files.yml"}


def _version() -> str:
    return json.loads((BUNDLE / "configs" / "metadata.json").read_text())["version"]


def _stage(dst: Path, weights: bool) -> Path:
    """A bundle tree with exactly the packaged files of this checkout, with or without test weights."""
    for rel in package.bundle_files(BUNDLE):
        if not rel.startswith("models/"):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(BUNDLE / rel, dst / rel)
    (dst / "models").mkdir(exist_ok=True)
    if weights:
        parser = ConfigParser()
        parser.read_config(str(dst / "configs" / "inference.json"))
        parser.update({"bundle_root": str(dst), "kn": TINY["kn"]})
        torch.save(parser.get_parsed_content("network_def").state_dict(), dst / "models" / "model.pt")
    return dst


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
    for bad in ("__pycache__", ".pyc", "/tests/", "/benchmarks/", "/eval/", "/.venv", "/demo/", "/dist/", "/.git"):
        assert not [n for n in names if bad in n], bad
    files = {n[len(TOP) :] for n in names if not n.endswith("/")}
    for required in ("configs/metadata.json", "configs/inference.json", "configs/train.json", "LICENSE",
                     "README.md", "requirements.txt", "large_files.yml", "docs/README.md",
                     "docs/data_license.txt", "scripts/__init__.py", "scripts/networks/mnet.py"):  # fmt: skip
        assert required in files, required
    on_disk = {p.relative_to(BUNDLE).as_posix() for top in ("configs", "scripts") for p in (BUNDLE / top).rglob("*")
               if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}  # fmt: skip
    assert on_disk <= files
    assert ("models/model.pt" in files) == (BUNDLE / "models" / "model.pt").is_file()
    assert TOP + "models/" in names  # the folder exists even without weights
    assert not [f for f in files if f.startswith("models/") and f != "models/model.pt"]


def test_build_without_weights_has_no_model_and_with_weights_has_it(tmp_path):
    bare = package.build(_stage(tmp_path / "bare", weights=False), tmp_path / "dist_bare")
    with zipfile.ZipFile(bare) as archive:
        assert TOP + "models/model.pt" not in archive.namelist()
    staged = _stage(tmp_path / "weighted", weights=True)
    weighted = package.build(staged, tmp_path / "dist_weighted")
    with zipfile.ZipFile(weighted) as archive:
        assert archive.read(TOP + "models/model.pt") == (staged / "models" / "model.pt").read_bytes()


def test_cli_writes_the_zip(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.package", "--bundle_root", str(BUNDLE), "--out_dir", str(tmp_path)],
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
    staged = _stage(tmp_path / "bundle", weights=True)
    before = (staged / "models" / "model.pt").read_bytes()
    download_large_files(bundle_path=str(staged))
    assert (staged / "models" / "model.pt").read_bytes() == before


def test_downloaded_zip_runs_inference(tmp_path):
    """`monai.bundle download --url file://...` installs the zip; inference from that copy writes a segmentation on
    the input's grid."""
    staged = _stage(tmp_path / "staged", weights=True)
    zip_path = package.build(staged, tmp_path / "dist")
    bundle_dir = tmp_path / "bundles"
    cmd = [sys.executable, "-m", "monai.bundle", "download", "--name", package.BUNDLE_NAME,
           "--url", zip_path.as_uri(), "--bundle_dir", str(bundle_dir)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    downloaded = bundle_dir / package.BUNDLE_NAME
    assert (downloaded / "models" / "model.pt").read_bytes() == (staged / "models" / "model.pt").read_bytes()
    assert not (downloaded / "tests").exists()

    scans = tmp_path / "scans"
    scans.mkdir()
    rng = np.random.default_rng(0)
    image = rng.normal(40, 30, size=(70, 66, 9)).astype(np.int16)
    affine = np.array([[-0.8, 0, 0, 20.0], [0, 0.78, 0, -11.0], [0, 0, 5.0, 3.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(image, affine), scans / "scan.nii.gz")
    out_dir = tmp_path / "predictions"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
           "--meta_file", "configs/metadata.json", "--bundle_root", ".", "--dataset_dir", str(scans),
           "--output_dir", str(out_dir), "--num_workers", "0", "--kn", json.dumps(TINY["kn"]),
           "--patch_size", json.dumps(TINY["patch_size"])]  # fmt: skip
    # cwd = the downloaded bundle, so `scripts` is imported from the copy, not from this checkout
    proc = subprocess.run(cmd, cwd=downloaded, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    pred = nib.load(out_dir / "scan_seg.nii.gz")
    assert pred.shape == image.shape
    np.testing.assert_allclose(pred.affine, nib.load(scans / "scan.nii.gz").affine, atol=1e-4)
    assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}


@pytest.mark.parametrize("missing", ["configs/metadata.json", "LICENSE"])
def test_build_refuses_a_tree_that_is_not_a_bundle(tmp_path, missing):
    staged = _stage(tmp_path / "bundle", weights=False)
    (staged / missing).unlink()
    with pytest.raises(FileNotFoundError, match=missing):
        package.build(staged, tmp_path / "dist")
