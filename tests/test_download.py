"""The released zip as users get it: `python -m monai.bundle download --url file://...` installs it, the installed
bundle has models/, runs inference from its own folder and with `--bundle_root` from elsewhere, and
`monai.bundle.load` returns the network with its weights without any dataset."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import download
from tests.test_package import TINY, stage

from tools import package

NAME = package.BUNDLE_NAME


def _download(zip_path: Path, bundle_dir: Path, cwd: Path) -> Path:
    cmd = [sys.executable, "-m", "monai.bundle", "download", "--name", NAME, "--url", zip_path.as_uri(),
           "--bundle_dir", str(bundle_dir)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return bundle_dir / NAME


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(staged source tree with test weights, the bundle as `monai.bundle download` installed it)."""
    tmp = tmp_path_factory.mktemp("download")
    staged = stage(tmp / "staged", weights=True)
    zip_path = package.build(staged, tmp / "dist")
    return staged, _download(zip_path, tmp / "bundles", cwd=tmp)


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("scans")
    image = np.random.default_rng(0).normal(40, 30, size=(70, 66, 9)).astype(np.int16)
    affine = np.array([[-0.8, 0, 0, 20.0], [0, 0.78, 0, -11.0], [0, 0, 5.0, 3.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(image, affine), folder / "scan.nii.gz")
    return folder


def test_downloaded_bundle_has_its_files_and_a_models_folder(installed, tmp_path):
    staged, bundle = installed
    assert (bundle / "models" / "model.pt").read_bytes() == (staged / "models" / "model.pt").read_bytes()
    for absent in ("tests", "tools", "benchmarks", "scripts/demo", "large_files.yml"):
        assert not (bundle / absent).exists(), absent
    # a release without weights still has models/ (MONAI's extraction skips directory entries), so the weights
    # can be copied in and a first training run can write there
    bare = package.build(stage(tmp_path / "bare", weights=False), tmp_path / "dist")
    download(name=NAME, url=bare.as_uri(), bundle_dir=str(tmp_path / "bundles"))
    models = tmp_path / "bundles" / NAME / "models"
    assert models.is_dir()
    shutil.copy2(staged / "models" / "model.pt", models)
    assert (models / "model.pt").is_file()


def _infer(bundle: Path, cwd: Path, bundle_root: str, scans: Path, out_dir: Path) -> None:
    config = "configs/inference.json" if cwd == bundle else str(bundle / "configs" / "inference.json")
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config, "--bundle_root", bundle_root,
           "--dataset_dir", str(scans), "--output_dir", str(out_dir), "--num_workers", "0",
           "--kn", json.dumps(TINY["kn"]), "--patch_size", json.dumps(TINY["patch_size"])]  # fmt: skip
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    pred = nib.load(out_dir / "scan_seg.nii.gz")
    image = nib.load(scans / "scan.nii.gz")
    assert pred.shape == image.shape
    np.testing.assert_allclose(pred.affine, image.affine, atol=1e-4)
    assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}


def test_inference_from_the_bundle_folder(installed, scans, tmp_path):
    """cwd = the downloaded bundle, so `scripts` is imported from the copy, not from this checkout."""
    _infer(installed[1], installed[1], ".", scans, tmp_path / "pred")


def test_inference_from_elsewhere_with_bundle_root(installed, scans, tmp_path):
    """Another folder, absolute paths: the bundle's `scripts` must be found without PYTHONPATH (MONAI puts the
    config's bundle folder on sys.path when `run` starts; nothing may import `scripts` before that)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    bundle = installed[1]
    _infer(bundle, elsewhere, str(bundle), scans, tmp_path / "pred")
    assert sorted(p.name for p in elsewhere.iterdir()) == []


LOAD = """
import json, sys, warnings
import torch
import monai.bundle
warnings.simplefilter("ignore")
bundle_dir, name, kn = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
out = {}
for label, kwargs in {"default": {}, "github": {"source": "github"},
                      "inference": {"source": "github", "workflow_type": "inference"}}.items():
    net = monai.bundle.load(name=name, bundle_dir=bundle_dir, device="cpu", net_override={"kn": kn}, **kwargs)
    ref = torch.load(f"{bundle_dir}/{name}/models/model.pt", weights_only=True)
    out[label] = [type(net).__name__, all(torch.equal(v, ref[k]) for k, v in net.state_dict().items()),
                  sorted(net.state_dict()) == sorted(ref)]
print("RESULT " + json.dumps(out))
"""


def test_monai_bundle_load_without_a_dataset(installed):
    """`monai.bundle.load`, as users call it from the bundle's folder (MONAI passes no `bundle_root`, only
    `network_def#` overrides; the test weights are narrow, hence `kn`): the network with the release's weights, no
    data checks, nothing written."""
    bundle = installed[1]
    before = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if "__pycache__" not in p.parts)
    cmd = [sys.executable, "-c", LOAD, str(bundle.parent), NAME, json.dumps(TINY["kn"])]
    proc = subprocess.run(cmd, cwd=bundle, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert result == {k: ["MNet", True, True] for k in ("default", "github", "inference")}
    after = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if "__pycache__" not in p.parts)
    assert after == before  # no eval/, no checkpoint folder, no logs
    assert torch.load(bundle / "models" / "model.pt", weights_only=True)
