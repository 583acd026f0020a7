"""model-zoo unit test (`ci/unit_tests/test_<bundle>_dist.py`): 2-process training, then 2-process evaluation.

As the zoo does it: the overrides are merged into `configs/train_override.json` / `eval_override.json` and launched
with `torchrun --standalone --nproc_per_node=<n>` (`utils.export_config_and_run_mgpu_cmd`). One process per GPU, or
2 gloo processes on the CPU. Two epochs of 2 iterations each, so DDP must survive more than one backward pass.
"""

import os
import shutil
import sys
import tempfile
import unittest

import torch
from test_mnet_anisotropic_segmentation import BUNDLE_ROOT, PATCH, write_fake_dataset, write_tiny_plan
from utils import export_config_and_run_mgpu_cmd

TEST_CASE_TRAIN = {
    "bundle_root": BUNDLE_ROOT,
    "epochs": 2,
    "iterations_per_epoch": 2,
    "patch_size": PATCH,
    "cache_rate": 0.0,
    "num_workers": 1,
}


class TestMNetAnisotropicSegMGPU(unittest.TestCase):
    def setUp(self):
        sys.path.insert(0, BUNDLE_ROOT)
        self.dataset_dir = tempfile.mkdtemp()
        self.cases = write_fake_dataset(self.dataset_dir)
        self.plan_file = write_tiny_plan(BUNDLE_ROOT, os.path.join(self.dataset_dir, "plan.json"))

    def tearDown(self):
        sys.path.remove(BUNDLE_ROOT)
        shutil.rmtree(self.dataset_dir)

    def test_train_mgpu_config(self):
        override = dict(TEST_CASE_TRAIN)
        override["dataset_dir"] = self.dataset_dir
        override["plan_file"] = self.plan_file
        override["train#dataset#data"] = self.cases[:-1]
        override["validate#dataset#data"] = self.cases[-1:]
        bundle_root = override["bundle_root"]
        n_proc = max(2, torch.cuda.device_count())
        train_file = os.path.join(bundle_root, "configs/train.json")
        mgpu_train_file = os.path.join(bundle_root, "configs/multi_gpu_train.json")
        export_config_and_run_mgpu_cmd(
            config_file=[train_file, mgpu_train_file],
            logging_file=os.path.join(bundle_root, "configs/logging.conf"),
            meta_file=os.path.join(bundle_root, "configs/metadata.json"),
            override_dict=override,
            output_path=os.path.join(bundle_root, "configs/train_override.json"),
            ngpu=n_proc,
        )
        self.assertTrue(os.path.isfile(os.path.join(bundle_root, "models", "model.pt")))

        eval_file = os.path.join(bundle_root, "configs/evaluate.json")
        mgpu_eval_file = os.path.join(bundle_root, "configs/multi_gpu_evaluate.json")
        export_config_and_run_mgpu_cmd(
            config_file=[train_file, eval_file, mgpu_eval_file],
            logging_file=os.path.join(bundle_root, "configs/logging.conf"),
            meta_file=os.path.join(bundle_root, "configs/metadata.json"),
            override_dict=override,
            output_path=os.path.join(bundle_root, "configs/eval_override.json"),
            ngpu=n_proc,
            check_config=True,
        )


if __name__ == "__main__":
    unittest.main()
