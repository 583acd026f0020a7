"""Bad inputs through the real CLI: one clear last line on stderr naming the file and problem, exit 1, no outputs.

Each run stops at the data checks that open `run` (or at checkpoint loading), before any training, so these stay
at a few seconds each.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow
from scripts.demo.data import write_dataset
from scripts.errors import find_input_error
from scripts.networks.mnet import MNet
from tests.bundle_cli import bundle_command

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--kn", "[4,4,6,6,8]", "--patch_size", "[32,32,8]", "--num_workers", "0"]


def bundle(kind: str, work: Path, data: Path, *extra: str) -> subprocess.CompletedProcess:
    """`python -m monai.bundle run` as a user types it; returns the finished process."""
    configs = {
        "train": ["run", "training", "--config_file", "configs/train.json"],
        "inference": ["run", "--config_file", "configs/inference.json"],
        "evaluate": ["run", "--config_file", "['configs/train.json','configs/evaluate.json']"],
    }[kind]
    schedule = [] if kind == "inference" else ["--epochs", "1", "--iterations_per_epoch", "1"]
    cmd = [*bundle_command(*configs, work=work, data=data), *schedule, *TINY, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=240)


def in_process(configs: list[str], work: Path, data: Path, **override) -> str:
    """Run a workflow inside pytest (no interpreter start-up) and return the BundleInputError message it ends with."""
    settings = {
        "bundle_root": str(work),
        "dataset_dir": str(data),
        "plan_file": str(ROOT / "configs/plan.json"),
        "kn": [4, 4, 6, 6, 8],
        "patch_size": [32, 32, 8],
        "num_workers": 0,
        **({"epochs": 1, "iterations_per_epoch": 1} if "configs/train.json" in configs else {}),
        **override,
    }
    workflow = ConfigWorkflow(config_file=[str(ROOT / c) for c in configs], workflow_type=None, **settings)
    with pytest.raises(Exception) as info:
        workflow.initialize()
        workflow.run()
    error = find_input_error(info.value)
    assert error is not None, info.value
    assert "\n" not in str(error)
    return str(error)


def last_line(result: subprocess.CompletedProcess) -> str:
    return result.stderr.strip().splitlines()[-1]


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data")
    write_dataset(out, num_cases=6, num_test=1, inplane_range=(32, 36), slices_range=(6, 8))
    return out


def copy_dataset(src: Path, dst: Path) -> Path:
    for path in src.rglob("*"):
        if path.is_file():
            (dst / path.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            (dst / path.relative_to(src)).write_bytes(path.read_bytes())
    return dst


def assert_clean_failure(result: subprocess.CompletedProcess, work: Path, *fragments: str) -> None:
    assert result.returncode != 0, result.stdout[-2000:]
    line = last_line(result)
    assert line.startswith("ERROR: "), result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in line, line
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert files_under(work) == []


def test_nan_image_stops_training(dataset: Path, tmp_path: Path):
    data = copy_dataset(dataset, tmp_path / "data")
    path = data / "imagesTr" / "case_002.nii.gz"
    img = nib.load(path)
    array = np.asarray(img.dataobj, dtype=np.float32)
    array[1, 1, 1] = np.inf
    nib.save(nib.Nifti1Image(array, img.affine), path)
    result = bundle("train", tmp_path / "work", data)
    assert_clean_failure(result, tmp_path / "work", "case_002.nii.gz: 1 NaN/Inf voxel(s) in the image")


def test_truncated_label_and_missing_file_listed(dataset: Path, tmp_path: Path):
    data = copy_dataset(dataset, tmp_path / "data")
    label = data / "labelsTr" / "case_001.nii.gz"
    label.write_bytes(label.read_bytes()[:300])
    (data / "imagesTr" / "case_003.nii.gz").unlink()
    message = in_process(["configs/train.json"], tmp_path / "work", data)
    assert "(+1 more problem(s) listed above)" in message
    assert (
        "labelsTr/case_001.nii.gz: unreadable or truncated" in message
        or "imagesTr/case_003.nii.gz: file not found" in message
    )
    assert files_under(tmp_path / "work") == []


def test_malformed_plan(dataset: Path, tmp_path: Path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({**json.loads((ROOT / "configs/plan.json").read_text()), "thick_axis": 5}))
    message = in_process(["configs/train.json"], tmp_path / "work", dataset, plan_file=str(plan))
    assert message.endswith("plan.json: 'thick_axis' must be 0, 1 or 2, got 5")
    assert files_under(tmp_path / "work") == []


def test_empty_datalist(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "dataset.json").write_text('{"training": []}')
    message = in_process(["configs/train.json"], tmp_path / "work", data)
    assert message.endswith("dataset.json: the 'training' list is empty or missing")
    assert files_under(tmp_path / "work") == []


def test_misspelt_override(dataset: Path, tmp_path: Path):
    result = bundle("train", tmp_path / "work", dataset, "--epoch", "3")
    assert_clean_failure(result, tmp_path / "work", "--epoch: unknown setting", "did you mean --epochs?")


def test_checkpoint_from_another_network(dataset: Path, tmp_path: Path):
    models = tmp_path / "work" / "models"
    models.mkdir(parents=True)
    torch.save(MNet(1, 3, kn=(4, 4, 6, 6, 10)).state_dict(), models / "model.pt")
    result = bundle("inference", tmp_path / "work", dataset, "--output_dir", str(tmp_path / "pred"))
    assert_clean_failure(
        result,
        tmp_path / "pred",
        "model.pt: checkpoint does not fit this network",
        "parameter(s) differ in shape",
        "vs network [",
    )


def test_corrupted_checkpoint_in_evaluation(dataset: Path, tmp_path: Path):
    models = tmp_path / "work" / "models"
    models.mkdir(parents=True)
    (models / "model.pt").write_bytes(b"PK\x03\x04 not really a zip")
    message = in_process(["configs/train.json", "configs/evaluate.json"], tmp_path / "work", dataset)
    assert "model.pt: corrupted or not a PyTorch weights file" in message
    assert not (tmp_path / "work" / "eval").exists()


def test_output_folder_not_writable(dataset: Path, tmp_path: Path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    message = in_process(
        ["configs/inference.json"], tmp_path / "work", dataset, output_dir=str(blocker / "pred"), load_pretrain=False
    )
    assert message.endswith("not_a_folder/pred: output folder cannot be created, " + str(blocker) + " is not a folder")
    assert files_under(tmp_path / "work") == []


def test_full_disk_during_training_is_one_line_without_a_traceback(dataset: Path, tmp_path: Path, monkeypatch, capsys):
    """A BundleInputError raised in a training handler (the disk fills up while a checkpoint is saved) ends the run
    as its one line: StatsHandler used to log it first with a traceback screens long."""
    import scripts.atomic

    work = tmp_path / "work"
    real_fsync = scripts.atomic._fsync

    def full_disk(path: str) -> None:
        if (work / "models") in Path(path).parents:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        real_fsync(path)

    monkeypatch.setattr(scripts.atomic, "_fsync", full_disk)
    capsys.readouterr()
    message = in_process(["configs/train.json"], work, dataset, val_interval=1)
    assert "cannot write, no space left on the disk holding" in message, message
    log = capsys.readouterr()
    assert "Traceback" not in log.out + log.err, (log.out + log.err)[-3000:]
    assert [p.name for p in (work / "models").iterdir() if p.is_file()] == []
