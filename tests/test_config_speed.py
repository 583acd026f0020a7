"""The configs' speed settings: cuDNN autotuning switchable from the command line, and training batches without
MONAI's per-operation metadata tracking (MetaTensor), which costs Python time in every one of MNet's many ops."""

from __future__ import annotations

import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from scripts.demo.data import write_dataset
from scripts.networks.options import MNetOptions
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
    """`--cudnn_benchmark false` selects cuDNN's deterministic kernels, the default lets it time its algorithms;
    every workflow runs the one set-up helper (scripts.runtime.configure)."""
    parser = ConfigParser()
    parser.read_config([str(BUNDLE_ROOT / f) for f in files])
    parser["cudnn_benchmark"] = flag
    setup = "train_setup" if "train_setup" in parser else "inference_setup"
    steps = parser[setup]
    index = [
        i for i, step in enumerate(steps) if isinstance(step, dict) and step["_target_"] == "scripts.runtime.configure"
    ]
    assert len(index) == 1
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = (not benchmark), benchmark
    parser.get_parsed_content(f"{setup}#{index[0]}")
    assert torch.backends.cudnn.benchmark is benchmark
    assert torch.backends.cudnn.deterministic is (not benchmark)


def _tiny_training_parser(tmp_path, **overrides) -> ConfigParser:
    write_dataset(tmp_path, num_cases=6, num_test=1, seed=0, inplane_range=(40, 44), slices_range=(8, 9))
    parser = ConfigParser()
    parser.read_config(str(BUNDLE_ROOT / "configs/train.json"))
    parser.update(
        {"dataset_dir": str(tmp_path), "bundle_root": str(tmp_path), "kn": [4, 4, 6, 6, 8],
         "plan_file": str(BUNDLE_ROOT / "configs/plan.json"),
         "patch_size": [32, 32, 8], "num_workers": 0, "cache_rate": 0.0, **overrides}
    )  # fmt: skip
    return parser


def test_training_batches_are_plain_tensors(tmp_path):
    parser = _tiny_training_parser(tmp_path)
    batch = next(iter(parser.get_parsed_content("train#dataloader")))
    for key in ("image", "label"):
        assert type(batch[key]) is torch.Tensor and not isinstance(batch[key], MetaTensor)
        assert batch[key].shape == (2, 1, 32, 32, 8)
    # validation keeps its metadata: evaluation inverts the preprocessing with it
    item = parser.get_parsed_content("validate#dataset")[0]
    assert isinstance(item["image"], MetaTensor)


@pytest.mark.parametrize("config", ["configs/train.json", "configs/inference.json"])
@pytest.mark.parametrize("device,expected", [("cpu", MNetOptions.cpu()), ("cuda:0", MNetOptions.gpu())])
def test_speed_preset_follows_the_device(config, device, expected):
    """The CPU kernels pay on the CPU but made H200 inference 1.2x slower, so `speed_preset auto` picks them for the
    CPU only; one id overrides it (the state_dict is the same either way)."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLE_ROOT / config))
    parser["device"] = f"$torch.device('{device}')"
    assert parser.get_parsed_content("network_def").options == expected
    parser["speed_preset"] = "reference"
    parser["activation_checkpointing"] = "true"
    assert parser.get_parsed_content("network_def").options == MNetOptions(checkpointing=True)


@pytest.mark.parametrize("config", ["configs/train.json", "configs/inference.json"])
def test_cpu_preset_is_channels_last_at_any_width_and_memory_setting(config):
    """In float32 the CPU preset trains in channels_last with the instance-norm backward of fast_training, whatever
    the widths and keep_freed_memory (it measured fastest at kn 8 to 64, docs/benchmarks.md)."""

    def options(**overrides):
        parser = ConfigParser()
        parser.read_config(str(BUNDLE_ROOT / config))
        parser.update({"device": "$torch.device('cpu')", **overrides})
        return parser.get_parsed_content("network_def").options

    assert options() == MNetOptions.cpu() and options().channels_last and options().fast_training
    assert options(keep_freed_memory=False) == MNetOptions.cpu()
    assert options(kn=[8, 12, 16, 20, 24]) == MNetOptions.cpu()


@pytest.mark.parametrize("flag,compiled", [(False, False), ("false", False), ("true", True)])
def test_compile_setting_reaches_both_engines(tmp_path, flag, compiled):
    """`compile` hands the network to torch.compile in the trainer and in its validation (MONAI's engines do it, with
    `compile_options` as the keyword arguments); the network the checkpoints save stays the plain module."""
    from torch._dynamo.eval_frame import OptimizedModule

    parser = _tiny_training_parser(tmp_path, compile=flag, compile_options={"backend": "eager"})
    trainer = parser.get_parsed_content("train#trainer")
    evaluator = parser.get_parsed_content("validate#evaluator")
    assert isinstance(trainer.network, OptimizedModule) is compiled
    assert isinstance(evaluator.network, OptimizedModule) is compiled
    assert not isinstance(parser.get_parsed_content("network"), OptimizedModule)


@pytest.mark.parametrize("dtype,expected", [("float16", torch.float16), ("bfloat16", torch.bfloat16)])
def test_amp_dtype_setting_reaches_both_engines(tmp_path, dtype, expected):
    """`amp_dtype bfloat16` selects bf16 autocast (Ampere and newer GPUs: no overflow, no loss scaling needed)."""
    parser = _tiny_training_parser(tmp_path, amp_dtype=dtype)
    assert parser.get_parsed_content("train#trainer").amp_kwargs["dtype"] is expected
    assert parser.get_parsed_content("validate#evaluator").amp_kwargs["dtype"] is expected


def test_an_unknown_amp_dtype_is_one_line():
    from scripts.errors import BundleInputError
    from scripts.runtime import amp_kwargs

    with pytest.raises(BundleInputError, match=r"--amp_dtype: expected one of float16, bfloat16, got 'float32'"):
        amp_kwargs("float32")


def test_tensorrt_overlay_builds_the_inference_network(capfd):
    """`configs/inference_trt.json` (merged after inference.json, as zoo bundles ship it) wraps the network with
    MONAI's trt_compile: TensorRT engines are built on the first forward on a GPU (fp16, batch 1 to sw_batch_size)
    and saved next to the weights. Without TensorRT or a GPU, trt_compile leaves the network as it is and says so."""
    from scripts.networks.mnet import MNet

    parser = ConfigParser()
    parser.read_config([str(BUNDLE_ROOT / "configs/inference.json"), str(BUNDLE_ROOT / "configs/inference_trt.json")])
    parser["device"] = "$torch.device('cpu')"
    assert parser.get_parsed_content("trt_options")["dynamic_batchsize"] == [1, 1, 1]
    assert parser.get_parsed_content("trt_plan_path") == parser.get_parsed_content("ckpt_path")
    network = parser.get_parsed_content("network")
    assert isinstance(network, MNet) and not hasattr(network, "_trt_compiler")
    assert "trt_compile() has no effect" in "".join(capfd.readouterr())  # MONAI's logger writes to stderr
    assert parser.get_parsed_content("predictor").members[0] is network
