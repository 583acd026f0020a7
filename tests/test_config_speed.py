"""The configs' speed settings: cuDNN autotuning switchable from the command line, and training batches without
MONAI's per-operation metadata tracking (MetaTensor), which costs Python time in every one of MNet's many ops."""

from __future__ import annotations

import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor

from scripts.demo.data import write_dataset
from tests.conftest import BUNDLE_ROOT

CONFIGS = [
    ["configs/train.json"],
    ["configs/inference.json"],
    ["configs/train.json", "configs/multi_gpu_train.json"],
    ["configs/train.json", "configs/evaluate.json", "configs/multi_gpu_evaluate.json"],
]


@pytest.fixture
def restore_cudnn():
    saved = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    yield
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved


@pytest.mark.parametrize("files", CONFIGS, ids=lambda f: "+".join(p.split("/")[-1] for p in f))
@pytest.mark.parametrize("flag,benchmark", [(True, True), ("false", False), ("true", True)])
def test_cudnn_benchmark_setting(files, flag, benchmark, restore_cudnn):
    """`--cudnn_benchmark false` selects cuDNN's deterministic kernels, the default lets it time its algorithms."""
    parser = ConfigParser()
    parser.read_config([str(BUNDLE_ROOT / f) for f in files])
    parser["cudnn_benchmark"] = flag
    steps = [i for i, expr in enumerate(parser["run"]) if "cudnn" in str(expr)]
    assert len(steps) == 2
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = (not benchmark), benchmark
    for i in steps:
        parser.get_parsed_content(f"run#{i}")
    assert torch.backends.cudnn.benchmark is benchmark
    assert torch.backends.cudnn.deterministic is (not benchmark)


def test_training_batches_are_plain_tensors(tmp_path):
    write_dataset(tmp_path, num_cases=6, num_test=1, seed=0, inplane_range=(40, 44), slices_range=(8, 9))
    parser = ConfigParser()
    parser.read_config(str(BUNDLE_ROOT / "configs/train.json"))
    parser.update(
        {"dataset_dir": str(tmp_path), "bundle_root": str(tmp_path), "kn": [4, 4, 6, 6, 8],
         "plan_file": str(BUNDLE_ROOT / "configs/plan.json"),
         "patch_size": [32, 32, 8], "num_workers": 0, "cache_rate": 0.0}
    )  # fmt: skip
    batch = next(iter(parser.get_parsed_content("train#dataloader")))
    for key in ("image", "label"):
        assert type(batch[key]) is torch.Tensor and not isinstance(batch[key], MetaTensor)
        assert batch[key].shape == (2, 1, 32, 32, 8)
    # validation keeps its metadata: evaluation inverts the preprocessing with it
    item = parser.get_parsed_content("validate#dataset")[0]
    assert isinstance(item["image"], MetaTensor)


@pytest.mark.parametrize("config", ["configs/train.json", "configs/inference.json"])
@pytest.mark.parametrize("device,fast", [("cpu", True), ("cuda:0", False)])
def test_cpu_kernels_follow_the_device(config, device, fast):
    """The CPU options (skip_bias, group_norm, merge_first, fast_inference) pay on the CPU, but skip_bias + group_norm
    made H200 inference 1.2x slower and the rest is unmeasured there, so the configs switch them on for the CPU only;
    `--cpu_kernels` overrides (the state_dict is the same either way)."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLE_ROOT / config))
    parser["device"] = f"$torch.device('{device}')"
    assert parser.get_parsed_content("network_def#skip_bias") is fast
    assert parser.get_parsed_content("network_def#group_norm") is fast
    assert parser.get_parsed_content("network_def#merge_first") is fast
    assert parser.get_parsed_content("network_def#fast_inference") is fast
    parser["cpu_kernels"] = "false"
    assert parser.get_parsed_content("network_def#group_norm") is False
