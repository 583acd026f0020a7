"""model-zoo unit test (`ci/unit_tests/test_<bundle>_dist.py`): 2-process training, then 2-process evaluation.

As the zoo does it: the overrides are merged into `configs/train_override.json` / `eval_override.json` and launched
with `torchrun --standalone --nproc_per_node=<n>` (`utils.export_config_and_run_mgpu_cmd`). One process per GPU, or
2 gloo processes on the CPU. Two epochs of 2 iterations each, so DDP must survive more than one backward pass.
"""

import os
import unittest

import torch
from test_mnet_anisotropic_segmentation import BUNDLE_ROOT, PATCH, FakeDatasetTestCase
from utils import export_config_and_run_mgpu_cmd

TEST_CASE_TRAIN = {
    "bundle_root": BUNDLE_ROOT,
    "epochs": 2,
    "iterations_per_epoch": 2,
    "patch_size": PATCH,
    "cache_rate": 0.0,
    "num_workers": 1,
}


class TestMNetAnisotropicSegMGPU(FakeDatasetTestCase):
    def test_train_mgpu_config(self):
        override = self.train_override(TEST_CASE_TRAIN)
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
