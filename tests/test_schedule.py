"""scripts.schedule: a resumed run follows the schedule it is given (new --epochs, new --learning_rate) exactly as an
uninterrupted run with those settings would; impossible lengths are one line before any work."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigWorkflow
from monai.handlers import LrScheduleHandler
from scripts.errors import BundleInputError, find_input_error
from scripts.handlers import LastCheckpointSaver, ResumeHandler
from scripts.schedule import check_settings
from tests.bundle_cli import bundle_command

ROOT = Path(__file__).resolve().parents[1]


def train(epochs: int, lr: float, save_dir: Path, resume: bool = False) -> list[float]:
    """A 2-iteration-per-epoch SGD + PolynomialLR run wired like configs/train.json; the LR of each epoch."""
    net = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.99, nesterov=True)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=epochs, power=0.9)
    trainer = Engine(lambda engine, batch: None)
    parts = {"network": net, "optimizer": optimizer, "lr_scheduler": scheduler}
    ResumeHandler(str(save_dir / "checkpoint_last.pt"), parts, enabled=resume).attach(trainer)
    rates: list[float] = []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: rates.append(optimizer.param_groups[0]["lr"]))
    LrScheduleHandler(scheduler, print_lr=False).attach(trainer)
    LastCheckpointSaver(str(save_dir), parts).attach(trainer)
    trainer.run(range(2), max_epochs=epochs)
    return rates


def test_resume_with_more_epochs_continues_the_schedule(tmp_path: Path):
    uninterrupted = train(4, 0.01, tmp_path / "full")
    train(2, 0.01, tmp_path / "short")
    resumed = train(4, 0.01, tmp_path / "short", resume=True)
    assert len(resumed) == 2 and resumed[0] > 0.0  # the old code trained these epochs at learning rate 0.0
    assert resumed == pytest.approx(uninterrupted[2:], rel=1e-9)


def test_resume_with_new_learning_rate_is_honoured(tmp_path: Path):
    uninterrupted = train(4, 0.02, tmp_path / "full")
    train_once = tmp_path / "two"
    train(2, 0.01, train_once)
    resumed = train(4, 0.02, train_once, resume=True)
    assert resumed == pytest.approx(uninterrupted[2:], rel=1e-9)


def test_resume_with_fewer_epochs_than_done_is_refused(tmp_path: Path):
    train(3, 0.01, tmp_path)
    with pytest.raises(BundleInputError, match=r"--epochs 2: the checkpoint has already trained 3 epoch\(s\)"):
        train(2, 0.01, tmp_path, resume=True)


def test_check_settings():
    check_settings(epochs=1, batch_size=2, learning_rate=0.01)
    for name, value in [
        ("epochs", 0),
        ("batch_size", 0),
        ("epochs", -1),
        ("iterations_per_epoch", 2.5),
        ("learning_rate", 0.0),
        ("batch_size", "2"),
        ("epochs", True),
    ]:
        with pytest.raises(BundleInputError, match=rf"^--{name}: must be a positive"):
            check_settings(**{name: value})


def test_zero_epochs_on_the_command_line_is_one_line(tmp_path: Path):
    run_training = ("run", "training", "--config_file", "configs/train.json")
    cmd = [*bundle_command(*run_training, work=tmp_path, data=tmp_path / "none"), "--epochs", "0"]
    result = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == "ERROR: --epochs: must be a positive integer, got 0"
    assert not (tmp_path / "models").exists()


def test_zero_batch_size_stops_before_any_work(tmp_path: Path):
    workflow = ConfigWorkflow(
        config_file=str(ROOT / "configs/train.json"),
        workflow_type="train",
        bundle_root=str(tmp_path),
        plan_file=str(ROOT / "configs/plan.json"),
        dataset_dir=str(tmp_path / "none"),
        batch_size=0,
    )
    workflow.initialize()  # resolves nothing: the checks run first in `run`, before any data is read
    with pytest.raises(Exception) as info:
        workflow.run()
    assert str(find_input_error(info.value)) == "--batch_size: must be a positive integer, got 0"
    assert not (tmp_path / "models").exists()
