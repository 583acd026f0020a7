"""model-zoo unit test (`ci/unit_tests/test_<bundle>.py`): train, train+evaluate and infer on fake NIfTI data.

Written as the zoo's runner expects, so it can be copied to the zoo unchanged: `bundle_root` is
`models/mnet_anisotropic_segmentation` relative to the current directory (the zoo runs from its repository root;
`tests/zoo_ci/runner.py` stages a copy of this bundle the same way), `utils` is the zoo's helper module. The data and
datalist come in as the overrides MONAI Label and the zoo pass (`dataset_dir`, `train#dataset#data` as a list of dicts,
`epochs`, `patch_size`), and a tiny plan file (`plan_file`) keeps the network small.
"""

import json
import os
import shutil
import sys
import tempfile
import unittest

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigWorkflow
from utils import check_workflow

BUNDLE_ROOT = "models/mnet_anisotropic_segmentation"
PATCH = [32, 32, 8]
TINY_PLAN = {"patch_size": PATCH, "batch_size": 1, "kn": [4, 4, 6, 6, 8]}
SPACING = (0.8, 0.8, 5.0)  # thick-slice, as the default plan expects

TEST_CASE_TRAIN = {
    "bundle_root": BUNDLE_ROOT,
    "epochs": 1,
    "iterations_per_epoch": 2,
    "patch_size": PATCH,
    "cache_rate": 0.0,
    "num_workers": 1,
}

TEST_CASE_INFER = {"bundle_root": BUNDLE_ROOT, "load_pretrain": False, "num_workers": 1}  # no weights needed


def write_fake_dataset(root: str, num_cases: int = 4, shape=(48, 48, 10)) -> list:
    """Random CT-like images (HU) with random 3-class labels; returns [{"image": ..., "label": ...}]."""
    rng = np.random.default_rng(0)
    affine = np.diag([*SPACING, 1.0])
    cases = []
    for i in range(num_cases):
        image = rng.integers(-200, 300, size=shape).astype(np.int16)
        label = rng.integers(0, 3, size=shape).astype(np.uint8)
        case = {"image": os.path.join(root, f"image_{i}.nii.gz"), "label": os.path.join(root, f"label_{i}.nii.gz")}
        nib.save(nib.Nifti1Image(image, affine), case["image"])
        nib.save(nib.Nifti1Image(label, affine), case["label"])
        cases.append(case)
    return cases


def write_tiny_plan(bundle_root: str, path: str) -> str:
    """The bundle's plan with a small patch, batch and width, so one epoch takes seconds on a CPU."""
    with open(os.path.join(bundle_root, "configs", "plan.json")) as f:
        plan = json.load(f)
    plan.update(TINY_PLAN)
    with open(path, "w") as f:
        json.dump(plan, f, indent=4)
    return path


def test_order(test_name1, test_name2):
    """Train (which writes models/model.pt) before infer, as the zoo's tests order them."""

    def get_order(name):
        return 1 if "train" in name else 2

    return get_order(test_name1) - get_order(test_name2)


class FakeDatasetTestCase(unittest.TestCase):
    """A fresh fake dataset and tiny plan per test (shared by the one-process and the 2-process tests)."""

    def setUp(self):
        sys.path.insert(0, BUNDLE_ROOT)  # the configs import `scripts` during initialize, as other zoo bundles do
        self.dataset_dir = tempfile.mkdtemp()
        self.cases = write_fake_dataset(self.dataset_dir)
        self.plan_file = write_tiny_plan(BUNDLE_ROOT, os.path.join(self.dataset_dir, "plan.json"))

    def tearDown(self):
        sys.path.remove(BUNDLE_ROOT)
        shutil.rmtree(self.dataset_dir)

    def train_override(self, test_case: dict) -> dict:
        """``test_case`` plus this dataset: all cases but the last train, the last one validates."""
        override = dict(test_case, dataset_dir=self.dataset_dir, plan_file=self.plan_file)
        override["train#dataset#data"] = self.cases[:-1]
        override["validate#dataset#data"] = self.cases[-1:]
        return override


class TestMNetAnisotropicSeg(FakeDatasetTestCase):
    def test_train_eval_config(self):
        override = self.train_override(TEST_CASE_TRAIN)
        bundle_root = override["bundle_root"]
        train_file = os.path.join(bundle_root, "configs/train.json")
        eval_file = os.path.join(bundle_root, "configs/evaluate.json")

        trainer = ConfigWorkflow(
            workflow_type="train",
            config_file=train_file,
            logging_file=os.path.join(bundle_root, "configs/logging.conf"),
            meta_file=os.path.join(bundle_root, "configs/metadata.json"),
            **override,
        )
        check_workflow(trainer, check_properties=True)
        state = torch.load(os.path.join(bundle_root, "models", "model.pt"), map_location="cpu", weights_only=True)
        self.assertTrue(state and all(isinstance(v, torch.Tensor) for v in state.values()))

        validator = ConfigWorkflow(
            # evaluate.json overrides train.json, so the workflow type stays "train"
            workflow_type="train",
            config_file=[train_file, eval_file],
            logging_file=os.path.join(bundle_root, "configs/logging.conf"),
            meta_file=os.path.join(bundle_root, "configs/metadata.json"),
            **override,
        )
        check_workflow(validator, check_properties=True)

    def test_infer_config(self):
        override = dict(TEST_CASE_INFER)
        override["dataset_dir"] = self.dataset_dir
        override["plan_file"] = self.plan_file
        override["datalist"] = [{"image": c["image"]} for c in self.cases[:1]]
        override["output_dir"] = os.path.join(self.dataset_dir, "pred")
        bundle_root = override["bundle_root"]

        inferrer = ConfigWorkflow(
            workflow_type="infer",
            config_file=os.path.join(bundle_root, "configs/inference.json"),
            logging_file=os.path.join(bundle_root, "configs/logging.conf"),
            meta_file=os.path.join(bundle_root, "configs/metadata.json"),
            **override,
        )
        check_workflow(inferrer, check_properties=True)
        pred = nib.load(os.path.join(override["output_dir"], "image_0_seg.nii.gz"))
        self.assertEqual(pred.shape, nib.load(self.cases[0]["image"]).shape)
        self.assertTrue(set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2})


if __name__ == "__main__":
    loader = unittest.TestLoader()
    loader.sortTestMethodsUsing = test_order
    unittest.main(testLoader=loader)
