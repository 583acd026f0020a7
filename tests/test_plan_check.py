"""scripts.plan_check: training refuses data whose intensities contradict the plan's modality and says when the plan
is the shipped placeholder."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scripts.errors import BundleInputError
from scripts.plan_check import check_training_data, is_placeholder
from scripts.plan_file import DEFAULT_PLAN

MR_PLAN = {**copy.deepcopy(DEFAULT_PLAN), "modality": "MR", "normalization": {"scheme": "zscore_nonzero"}}


def scan(folder: Path, name: str, background: float, organ: float) -> dict:
    """A 24x24x6 volume: ``background`` everywhere, ``organ`` (plus noise) in the labelled block."""
    rng = np.random.default_rng(0)
    image = np.full((24, 24, 6), background, np.float32)
    label = np.zeros((24, 24, 6), np.uint8)
    label[6:18, 6:18, 1:5] = 1
    image[label > 0] = organ + rng.normal(0, 20, int(label.sum()))
    affine = np.diag([0.8, 0.8, 5.0, 1.0])
    nib.save(nib.Nifti1Image(image, affine), str(folder / f"{name}.nii.gz"))
    nib.save(nib.Nifti1Image(label, affine), str(folder / f"{name}_seg.nii.gz"))
    return {"image": str(folder / f"{name}.nii.gz"), "label": str(folder / f"{name}_seg.nii.gz")}


def test_ct_data_on_ct_plan_passes(tmp_path: Path, caplog):
    with caplog.at_level(logging.WARNING):
        check_training_data([scan(tmp_path, "ct", -1000.0, 60.0)], DEFAULT_PLAN, "configs/plan.json")
    assert "configs/plan.json: is the shipped placeholder plan" in caplog.text


def test_mr_data_on_ct_plan_is_refused(tmp_path: Path):
    with pytest.raises(
        BundleInputError,
        match=r"mr\.nii\.gz: 100% of the labelled voxels lie outside the plan's CT "
        r"window \[-200, 300\] \(plan\.json\); is this CT data\?",
    ):
        check_training_data([scan(tmp_path, "mr", 0.0, 700.0)], DEFAULT_PLAN, "plan.json")


def test_ct_data_on_mr_plan_is_refused(tmp_path: Path, caplog):
    with caplog.at_level(logging.WARNING):
        check_training_data([scan(tmp_path, "mr", 0.0, 700.0)], MR_PLAN)
    assert "placeholder" not in caplog.text and not is_placeholder(MR_PLAN)
    with pytest.raises(
        BundleInputError,
        match=r"ct\.nii\.gz: \d+% of the voxels are below -500 \(air in CT\), but " r"the plan \(plan\) is for MR",
    ):
        check_training_data([scan(tmp_path, "ct", -1000.0, 60.0)], MR_PLAN)
