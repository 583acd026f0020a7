"""Input formats users bring: multi-channel MR as a list of files, NRRD, a plain folder of images."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scripts.networks.mnet import MNet
from scripts.plan_file import DEFAULT_PLAN, save_plan
from tests.test_workflows import BUNDLE, bundle_run

SPACING = (0.8, 0.8, 5.0)
TINY = ["--kn", "[4,4,6,6,8]", "--patch_size", "[48,48,8]", "--num_workers", "0"]


def _blob(shape, rng) -> np.ndarray:
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, s) for s in shape), indexing="ij")
    return ((x / 0.5) ** 2 + (y / 0.4) ** 2 + (z / 0.9) ** 2 < 1).astype(np.uint8)


def _mr_plan(path, in_channels: int) -> None:
    plan = json.loads(json.dumps(DEFAULT_PLAN))
    plan.update(modality="MR", in_channels=in_channels, out_channels=2, labels={"0": "background", "1": "tumour"})
    plan["normalization"] = {"scheme": "zscore_nonzero"}
    save_plan(plan, path)


def train_two_channels_and_infer(data: Path, plan: Path, tmp_path: Path) -> Path:
    """One-iteration training on a 2-channel dataset (the model must have learned 2 input channels), then inference
    on its test cases; returns the output folder."""
    work = tmp_path / "work"
    common = ["--bundle_root", str(work), "--plan_file", str(plan), "--dataset_dir", str(data), *TINY]
    bundle_run("training", "--config_file", "configs/train.json", "--meta_file", "configs/metadata.json", *common,
               "--epochs", "1", "--iterations_per_epoch", "1")  # fmt: skip
    state = torch.load(work / "models" / "model.pt", map_location="cpu", weights_only=True)
    MNet(2, 2, kn=(4, 4, 6, 6, 8)).load_state_dict(state)
    out = tmp_path / "pred"
    bundle_run("--config_file", "configs/inference.json", *common, "--output_dir", str(out))
    return out


def test_multichannel_mr_as_list_of_files_trains_and_infers(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    affine = np.diag([*SPACING, 1.0])
    training = []
    for case in range(5):
        label = _blob((40, 40, 9), rng)
        images = []
        for channel in ("t1", "t2"):
            image = rng.normal(100, 10, label.shape) + 50.0 * label * (1 if channel == "t1" else -1)
            nib.save(nib.Nifti1Image(image.astype(np.float32), affine), data / f"c{case}_{channel}.nii.gz")
            images.append(f"./c{case}_{channel}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), data / f"c{case}_seg.nii.gz")
        training.append({"image": images, "label": f"./c{case}_seg.nii.gz"})
    test = [{"image": item["image"]} for item in training[:1]]
    (data / "dataset.json").write_text(json.dumps({"training": training, "test": test}))
    plan = tmp_path / "plan.json"
    _mr_plan(plan, in_channels=2)
    out = train_two_channels_and_infer(data, plan, tmp_path)
    pred = nib.load(out / "c0_t1_seg.nii.gz")
    assert pred.shape == (40, 40, 9)


def test_nrrd_folder_without_datalist(tmp_path):
    nrrd = pytest.importorskip("nrrd")
    folder = tmp_path / "scans"
    folder.mkdir()
    image = np.random.default_rng(0).normal(40, 20, (50, 44, 10)).astype(np.int16)
    header = {"space": "right-anterior-superior", "space directions": np.diag(SPACING), "space origin": [0, 0, 0]}
    nrrd.write(str(folder / "scan.nrrd"), image, header)
    out = tmp_path / "pred"
    bundle_run(
        "--config_file", "configs/inference.json", "--bundle_root", str(BUNDLE), "--dataset_dir", str(folder),
        "--output_dir", str(out), "--load_pretrain", "false", *TINY,
    )  # fmt: skip
    pred = nib.load(out / "scan_seg.nii.gz")
    assert pred.shape == image.shape
    np.testing.assert_allclose(pred.header.get_zooms(), SPACING, atol=1e-4)


def test_multichannel_mr_as_one_4d_nifti_plans_trains_and_infers(tmp_path):
    """Channels in the 4th axis of one NIfTI, where the datalist declares two channels (modality)."""
    from scripts.check_data import check_dataset
    from scripts.plan import plan_dataset

    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    affine = np.diag([*SPACING, 1.0])
    training = []
    for case in range(5):
        label = _blob((40, 40, 9), rng)
        t1, t2 = (rng.normal(100, 10, label.shape) + sign * 50.0 * label for sign in (1, -1))
        image = np.stack([t1, t2], axis=-1)
        nib.save(nib.Nifti1Image(image.astype(np.float32), affine), data / f"c{case}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), data / f"c{case}_seg.nii.gz")
        training.append({"image": f"./c{case}.nii.gz", "label": f"./c{case}_seg.nii.gz"})
    datalist = {
        "modality": {"0": "T1", "1": "T2"},
        "labels": {"0": "background", "1": "tumour"},
        "training": training,
        "test": [{"image": "./new.nii.gz"}],
    }
    (data / "dataset.json").write_text(json.dumps(datalist))
    (data / "new.nii.gz").write_bytes((data / "c0.nii.gz").read_bytes())  # a test case must not be a training case
    assert check_dataset(str(data)) == []
    assert plan_dataset(str(data), output=str(tmp_path / "planned.json"), workers=0)["in_channels"] == 2
    plan = tmp_path / "plan.json"
    _mr_plan(plan, in_channels=2)
    out = train_two_channels_and_infer(data, plan, tmp_path)
    pred = nib.load(out / "new_seg.nii.gz")
    assert pred.shape == (40, 40, 9)
