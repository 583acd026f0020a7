"""The bundle commands run as users type them: train one epoch, resume, evaluate, infer, and train with torchrun.

One tiny dataset and one tiny training run are shared by the module (the CPU is the bottleneck); each command runs
as a subprocess of ``python -m monai.bundle`` from the bundle root, exactly as documented.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scripts.cpu_autocast import bf16_supported
from scripts.demo.data import write_dataset
from scripts.networks.mnet import MNet

BUNDLE = Path(__file__).resolve().parents[1]
TINY = ["--kn", "[4,4,6,6,8]", "--patch_size", "[48,48,8]", "--num_workers", "0"]


def bundle_run(*args: str, cwd: Path = BUNDLE, extra_env: dict | None = None, launcher: list[str] | None = None):
    """Run a bundle command; fail the test with the tail of its output if it exits non-zero."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", **(extra_env or {})}
    cmd = (launcher or [sys.executable, "-m"]) + ["monai.bundle", "run", *args]
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def common(work: Path, data: Path) -> list[str]:
    return [
        "--meta_file", "configs/metadata.json", "--logging_file", "configs/logging.conf",
        "--bundle_root", str(work), "--plan_file", str(BUNDLE / "configs" / "plan.json"),
        "--dataset_dir", str(data), *TINY,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data")
    write_dataset(out, num_cases=7, num_test=2, seed=3, inplane_range=(48, 56), slices_range=(9, 12))
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data) -> Path:
    work = tmp_path_factory.mktemp("bundle")
    bundle_run(
        "training", "--config_file", "configs/train.json", *common(work, data),
        "--epochs", "1", "--iterations_per_epoch", "2",
    )  # fmt: skip
    return work


def test_one_epoch_training_writes_plain_state_dict(trained):
    weights = trained / "models" / "model.pt"
    assert weights.is_file()
    state = torch.load(weights, map_location="cpu", weights_only=True)
    net = MNet(1, 3, kn=(4, 4, 6, 6, 8))
    net.load_state_dict(state)  # a plain state dict of network_def, no "model"/"module." wrapping
    checkpoint = torch.load(trained / "models" / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert {"network", "optimizer", "lr_scheduler", "trainer"} <= set(checkpoint)
    assert checkpoint["trainer"]["iteration"] == 2  # ignite stores iterations; epoch = iteration / epoch_length
    events = list((trained / "eval").glob("events.out.tfevents.*"))
    assert events, "TensorBoard scalars are written"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for path in events:
        accumulator = EventAccumulator(str(path))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    assert {"train_loss", "learning_rate", "val_mean_dice"} <= tags, tags
    log = (trained / "eval" / "train.log").read_text()
    assert "Epoch: 1/1" in log and "log file:" in log


def test_resume_continues_from_saved_epoch(trained, data, tmp_path):
    work = tmp_path / "resume"
    shutil.copytree(trained, work)
    result = bundle_run(
        "training", "--config_file", "configs/train.json", *common(work, data),
        "--epochs", "2", "--iterations_per_epoch", "2", "--resume", "true",
    )  # fmt: skip
    log = result.stdout + result.stderr
    assert "resumed from" in log and "at epoch 1" in log
    assert "Epoch: 1/2" not in log and "Epoch: 2/2" in log  # epoch 1 is not trained again
    checkpoint = torch.load(work / "models" / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert checkpoint["trainer"]["iteration"] == 4
    assert checkpoint["lr_scheduler"]["last_epoch"] == 2  # the poly schedule continued, not restarted


def test_evaluation_writes_per_case_metrics(trained, data):
    bundle_run(
        "--config_file", "['configs/train.json','configs/evaluate.json']", *common(trained, data),
        "--eval_split", "test",
    )  # fmt: skip
    out = trained / "eval" / "evaluation"
    for metric in ("val_mean_dice", "val_hd95_mm", "val_surface_dice"):
        with open(out / f"{metric}_raw.csv") as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["filename", "class0", "class1", "mean"]
        assert len(rows) == 1 + 2  # header + the two held-out cases
    summary = dict(csv.reader(open(out / "metrics.csv")))
    assert 0.0 <= float(summary["val_mean_dice"]) <= 1.0
    report = json.loads((out / "metrics_summary.json").read_text())
    assert report["num_cases"] == 2
    dice = report["metrics"]["val_mean_dice"]
    assert set(dice["per_class"]) == set(
        json.loads((BUNDLE / "configs" / "plan.json").read_text())["labels"].values()
    ) - {"background"}
    assert abs(dice["mean"] - float(summary["val_mean_dice"])) < 1e-4
    assert (out / "evaluate.log").is_file()


def test_inference_writes_labels_in_input_geometry(trained, data, tmp_path):
    out = tmp_path / "predictions"
    bundle_run(
        "--config_file", "configs/inference.json", *common(trained, data), "--output_dir", str(out),
    )  # fmt: skip
    test_images = json.loads((data / "dataset.json").read_text())["test"]
    assert len(list(out.glob("*_seg.nii.gz"))) == len(test_images)
    for item in test_images:
        image = nib.load(data / item["image"])
        name = Path(item["image"]).name.replace(".nii.gz", "_seg.nii.gz")
        pred = nib.load(out / name)
        assert pred.shape == image.shape
        np.testing.assert_allclose(pred.affine, image.affine, atol=1e-4)
        np.testing.assert_allclose(pred.header.get_zooms(), image.header.get_zooms(), atol=1e-4)
        values = np.unique(np.asarray(pred.dataobj))
        assert pred.get_data_dtype() == np.uint8 and set(values) <= {0, 1, 2}
    assert not list(out.glob(".tmp_*")), "no temporary files are left behind"


def test_compile_setting_trains_and_infers(trained, data, tmp_path):
    """`--compile true` hands the network to torch.compile through MONAI's engines (training, its validation and
    inference), while the checkpoints keep the plain network's keys (a compiled module's state_dict would prefix
    every key with `_orig_mod.`). TorchDynamo's `eager` backend traces the same graphs without inductor's minutes of
    C++ compilation on this CPU; the predictions equal the uncompiled run's."""
    work = tmp_path / "compiled"
    compiled = ["--compile", "true", "--compile_options", "{'backend': 'eager'}"]
    bundle_run(
        "training", "--config_file", "configs/train.json", *common(work, data),
        "--epochs", "1", "--iterations_per_epoch", "2", *compiled,
    )  # fmt: skip
    state = torch.load(work / "models" / "model.pt", map_location="cpu", weights_only=True)
    MNet(1, 3, kn=(4, 4, 6, 6, 8)).load_state_dict(state)  # strict: plain keys
    assert not [k for k in state if "_orig_mod" in k]
    outputs = {}
    for name, extra in (("plain", []), ("compiled", compiled)):
        outputs[name] = tmp_path / name
        bundle_run(
            "--config_file", "configs/inference.json", *common(trained, data), "--output_dir", str(outputs[name]),
            *extra,
        )  # fmt: skip
    for path in sorted(outputs["plain"].glob("*_seg.nii.gz")):
        np.testing.assert_array_equal(
            np.asarray(nib.load(path).dataobj), np.asarray(nib.load(outputs["compiled"] / path.name).dataobj)
        )
    assert len(list(outputs["compiled"].glob("*_seg.nii.gz"))) == 2


@pytest.mark.skipif(not bf16_supported(), reason="this CPU has no bf16 instructions")
def test_bf16_on_the_cpu_trains_and_infers(data, tmp_path):
    """`--amp_dtype bfloat16` on a CPU runs the commands as typed under CPU autocast (MONAI's engines autocast on
    CUDA only): training, here also with `--compile true`, writes a plain float32 state_dict, inference writes every
    case in the input's shape."""
    work, out = tmp_path / "bf16", tmp_path / "bf16_predictions"
    trained_run = bundle_run(
        "training", "--config_file", "configs/train.json", *common(work, data),
        "--epochs", "1", "--iterations_per_epoch", "2", "--amp_dtype", "bfloat16",
        "--compile", "true", "--compile_options", "{'backend': 'eager'}",
    )  # fmt: skip
    assert "bf16 autocast on the CPU" in trained_run.stdout + trained_run.stderr
    state = torch.load(work / "models" / "model.pt", map_location="cpu", weights_only=True)
    MNet(1, 3, kn=(4, 4, 6, 6, 8)).load_state_dict(state)
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    inferred = bundle_run(
        "--config_file", "configs/inference.json", *common(work, data), "--output_dir", str(out),
        "--amp_dtype", "bfloat16",
    )  # fmt: skip
    assert "bf16 autocast on the CPU" in inferred.stdout + inferred.stderr
    for item in json.loads((data / "dataset.json").read_text())["test"]:
        name = Path(item["image"]).name.replace(".nii.gz", "_seg.nii.gz")
        assert nib.load(out / name).shape == nib.load(data / item["image"]).shape


# two ranks on the CPU (gloo) even where one GPU is present: two ranks cannot share a single device under NCCL
CPU_ONLY = {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2", "-m"]


def test_torchrun_two_processes_on_cpu(data, tmp_path):
    """Four iterations over two epochs with the CPU preset: DDP fails from the second iteration on when any
    parameter gets no gradient (the removed skip_bias option did that), so one iteration could not catch it."""
    work = tmp_path / "ddp"
    launcher = TORCHRUN
    result = bundle_run(
        "--config_file", "['configs/train.json','configs/multi_gpu_train.json']", *common(work, data),
        "--epochs", "2", "--iterations_per_epoch", "2", "--speed_preset", "cpu", launcher=launcher, extra_env=CPU_ONLY,
    )  # fmt: skip
    last = torch.load(work / "models" / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert last["trainer"]["iteration"] == 4 and last["trainer"]["epoch_length"] == 2  # 2 epochs of 2
    assert "Epoch: 2/2, Iter: 2/2" in result.stdout + result.stderr, "rank 0 logs every iteration"
    state = torch.load(work / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in state), "DDP wrapper is stripped from the saved weights"
    bundle_run(
        "--config_file", "['configs/train.json','configs/evaluate.json','configs/multi_gpu_evaluate.json']",
        *common(work, data), "--eval_split", "test", launcher=launcher, extra_env=CPU_ONLY,
    )  # fmt: skip
    rows = list(csv.reader(open(work / "eval" / "evaluation" / "val_mean_dice_raw.csv")))
    assert len(rows) == 1 + 2, "both ranks' cases are gathered into one table"


RANK0_ONLY = {
    "StatsHandler",
    "TensorBoardStatsHandler",
    "scripts.run_records.LearningRateToTensorBoard",
    "scripts.run_records.LogFile",
    "scripts.run_records.MetricsSummaryJSON",
    "scripts.handlers.BestModelSaver",
}


def test_rank0_only_handlers_are_marked_where_defined():
    """Rank-0 handlers carry ``_disabled_: @is_not_rank0`` themselves; the overlays set only ``is_not_rank0``, so a
    handler added to train.json cannot shift which ones the overlays disable (they used list indices)."""
    configs = {name: json.loads((BUNDLE / "configs" / f"{name}.json").read_text()) for name in ("train", "evaluate")}
    lists = [configs["train"]["train"]["handlers"], configs["train"]["validate"]["handlers"],
             configs["evaluate"]["validate#handlers"]]  # fmt: skip
    marked = [h["_target_"] for handlers in lists for h in handlers if h.get("_disabled_") == "@is_not_rank0"]
    unmarked = [h["_target_"] for handlers in lists for h in handlers if h.get("_disabled_") != "@is_not_rank0"]
    assert set(marked) == RANK0_ONLY and not RANK0_ONLY & set(unmarked)
    assert (
        "scripts.handlers.AtomicMetricsSaver" in unmarked
    ), "MetricsSaver gathers from every rank, so it must run on every rank"
    checks = {s["_target_"] for s in configs["train"]["train_setup"] if isinstance(s, dict) and "_disabled_" in s}
    assert checks == {"scripts.check_data.check_or_raise", "scripts.plan_check.check_training_data"}
    assert configs["train"]["is_not_rank0"] is False
    for overlay in ("multi_gpu_train", "multi_gpu_evaluate"):
        keys = json.loads((BUNDLE / "configs" / f"{overlay}.json").read_text())
        assert not [k for k in keys if k.endswith("#_disabled_")] and keys["is_not_rank0"] == "$dist.get_rank() > 0"


def test_torchrun_failure_is_one_line(data, tmp_path):
    """A bad input under torchrun ends in the one-line message, not a RecursionError wall from the excepthook."""
    cmd = [*TORCHRUN, "monai.bundle", "run", "--config_file",
           "['configs/train.json','configs/multi_gpu_train.json']", *common(tmp_path / "bad", data),
           "--dataset_dir", str(tmp_path / "no_such_dataset")]  # fmt: skip
    env = {**os.environ, **CPU_ONLY}
    result = subprocess.run(cmd, cwd=BUNDLE, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "RecursionError" not in result.stderr and "maximum recursion depth" not in result.stderr
    assert f"ERROR: {tmp_path / 'no_such_dataset'}" in result.stderr
