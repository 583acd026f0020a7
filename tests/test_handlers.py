"""scripts.handlers: the best model survives a kill or a full disk during its save, Ctrl-C ends training with one
line and an intact checkpoint, and the saved record names fold, split and plan."""

from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from scripts.checkpoints import training_meta
from scripts.errors import BundleInputError
from scripts.handlers import BestModelSaver, InterruptHandler, LastCheckpointSaver
from scripts.plan_file import DEFAULT_PLAN


def validation(save_dir: Path, scores: list[float]) -> tuple[Engine, BestModelSaver]:
    """An evaluator whose key metric takes ``scores`` in turn (one per run) and a saver for a 1x1 linear network."""
    evaluator = Engine(lambda engine, batch: None)
    values = iter(scores)
    evaluator.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(val=next(values)))
    saver = BestModelSaver(
        str(save_dir), torch.nn.Linear(1, 1), key_metric_name="val", meta=training_meta(DEFAULT_PLAN, 2)
    )
    saver.attach(evaluator)
    return evaluator, saver


def weight(path: Path) -> float:
    return torch.load(path, weights_only=True)["weight"].item()


def test_best_model_saved_only_on_improvement_with_record(tmp_path: Path):
    evaluator, saver = validation(tmp_path, [0.5, 0.4, 0.7])
    for value in (1.0, 2.0, 3.0):
        torch.nn.init.constant_(saver.network.weight, value)
        evaluator.run([0])
    assert weight(tmp_path / "model.pt") == 3.0 and saver.best == 0.7
    record = json.loads((tmp_path / "model.json").read_text())
    assert record["fold"] == 2 and record["val"] == 0.7 and len(record["plan_sha256"]) == 64


@pytest.mark.parametrize("fault", ["kill", "disk_full"])
def test_failed_best_save_keeps_previous_best(tmp_path: Path, monkeypatch, fault):
    """MONAI's CheckpointSaver deleted the old best file first and wrote in place; here a kill (an exception raised
    inside torch.save after it wrote part of the file) or a full disk keeps the previous best model loadable."""
    evaluator, saver = validation(tmp_path, [0.5, 0.9])
    torch.nn.init.constant_(saver.network.weight, 1.0)
    evaluator.run([0])
    real_save = torch.save

    def crash(obj, f, *args, **kwargs):
        real_save(obj, f)
        Path(f).write_bytes(Path(f).read_bytes()[:64])
        raise KeyboardInterrupt if fault == "kill" else OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", crash)
    torch.nn.init.constant_(saver.network.weight, 2.0)
    with pytest.raises(
        KeyboardInterrupt if fault == "kill" else BundleInputError,
        match=(
            None
            if fault == "kill"
            else rf"{tmp_path}/model\.pt: cannot write, no space left on the disk holding {tmp_path}"
        ),
    ):
        evaluator.run([0])
    monkeypatch.undo()
    assert weight(tmp_path / "model.pt") == 1.0
    assert json.loads((tmp_path / "model.json").read_text())["val"] == 0.5
    assert sorted(os.listdir(tmp_path)) == ["model.json", "model.pt"]


def test_sigint_ends_training_in_one_line_with_checkpoint_intact(tmp_path: Path, capsys):
    """Ctrl-C in the middle of epoch 2: exit status 130, one line saying how to resume, epoch 1's checkpoint intact."""
    net = torch.nn.Linear(1, 1)

    def step(engine, batch):
        if engine.state.epoch == 2 and engine.state.iteration == 5:
            os.kill(os.getpid(), signal.SIGINT)
        return 0.0

    trainer = Engine(step)
    path = tmp_path / "checkpoint_last.pt"
    InterruptHandler(str(path)).attach(trainer)
    LastCheckpointSaver(str(tmp_path), {"network": net}).attach(trainer)
    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit) as info:
        trainer.run(range(3), max_epochs=3)
    assert info.value.code == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ERROR: interrupted at epoch 2, iteration 5; {path} is intact, resume with --resume true"]
    assert torch.load(path, weights_only=True)["trainer"]["iteration"] == 3
    assert signal.getsignal(signal.SIGINT) is previous


def test_interrupt_handler_lets_other_errors_through(tmp_path: Path):
    """Attached first on EXCEPTION_RAISED, it must neither swallow an ordinary error nor keep its SIGINT handler."""

    def step(engine, batch):
        raise ValueError("boom")

    trainer = Engine(step)
    InterruptHandler(str(tmp_path / "checkpoint_last.pt")).attach(trainer)
    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(ValueError, match="boom"):
        trainer.run(range(2), max_epochs=1)
    assert signal.getsignal(signal.SIGINT) is previous
    seen = []
    trainer = Engine(step)
    InterruptHandler(str(tmp_path / "checkpoint_last.pt")).attach(trainer)
    trainer.add_event_handler(Events.EXCEPTION_RAISED, lambda engine, error: seen.append(error))
    trainer.run(range(2), max_epochs=1)  # a later handler (StatsHandler in the configs) decides, as without it
    assert [str(e) for e in seen] == ["boom"] and signal.getsignal(signal.SIGINT) is previous
