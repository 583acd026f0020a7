"""scripts.handlers: the best model survives a kill or a full disk during its save, Ctrl-C ends training with one
line and an intact checkpoint, and the saved record names fold, split and plan."""

from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path

import monai.handlers.metrics_saver
import pytest
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser
from monai.handlers import MetricsSaver
from scripts.checkpoints import training_meta
from scripts.errors import BundleInputError
from scripts.handlers import BestModelSaver, InterruptHandler, LastCheckpointSaver
from scripts.plan_file import DEFAULT_PLAN

BUNDLE = Path(__file__).resolve().parents[1]


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


def evaluate_metrics_saver(save_dir: Path):
    """The metrics saver exactly as configs/evaluate.json builds it, writing to ``save_dir``."""
    handlers = json.loads((BUNDLE / "configs" / "evaluate.json").read_text())["validate#handlers"]
    (entry,) = [h for h in handlers if h["_target_"].endswith("MetricsSaver")]
    return ConfigParser({"eval_output_dir": str(save_dir), "saver": entry}).get_parsed_content("saver")


def score(saver, dice: float) -> None:
    """Hand ``saver`` an evaluation of two cases whose mean Dice is ``dice`` (as the evaluator's EPOCH_COMPLETED)."""
    engine = Engine(lambda e, b: None)
    engine.state.metrics = {"val_mean_dice": dice, "val_hd95_mm": 3.0, "val_surface_dice": 0.5}
    details = torch.tensor([[dice, 0.2], [dice, 0.4]])
    engine.state.metric_details = dict.fromkeys(engine.state.metrics, details)
    saver._filenames = ["/d/a.nii.gz", "/d/b.nii.gz"]
    saver(engine)


def contents(folder: Path) -> dict:
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


def test_evaluate_metrics_csvs_same_as_monai(tmp_path: Path):
    """evaluate.json's saver writes the files MONAI's MetricsSaver writes, byte for byte, and nothing else."""
    score(evaluate_metrics_saver(tmp_path / "ours"), 0.75)
    score(MetricsSaver(str(tmp_path / "monai"), metrics="*", metric_details="*", summary_ops="*"), 0.75)
    ours = contents(tmp_path / "ours")
    assert ours == contents(tmp_path / "monai") and "metrics.csv" in ours and "val_mean_dice_raw.csv" in ours
    assert "0.75" in ours["metrics.csv"]


@pytest.mark.parametrize("fault", ["kill", "disk_full"])
def test_failed_metrics_write_keeps_previous_csvs(tmp_path: Path, monkeypatch, fault):
    """MONAI's MetricsSaver writes its CSVs in place: a kill or a full disk after part of them left truncated files
    under the final names. evaluate.json's saver keeps every previous CSV until all the new ones are complete."""
    score(evaluate_metrics_saver(tmp_path), 0.5)
    before = contents(tmp_path)
    real_write = monai.handlers.metrics_saver.write_metrics_reports

    def crash(save_dir, **kwargs):
        real_write(save_dir=save_dir, **kwargs)
        metrics = Path(save_dir) / "metrics.csv"
        metrics.write_text(metrics.read_text()[:10])
        raise KeyboardInterrupt if fault == "kill" else OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(monai.handlers.metrics_saver, "write_metrics_reports", crash)
    with pytest.raises(
        KeyboardInterrupt if fault == "kill" else BundleInputError,
        match=None if fault == "kill" else rf"{tmp_path}: cannot write, no space left on the disk holding {tmp_path}",
    ):
        score(evaluate_metrics_saver(tmp_path), 0.9)
    assert contents(tmp_path) == before  # no truncated file, no leftover temporary folder
    monkeypatch.undo()
    score(evaluate_metrics_saver(tmp_path), 0.9)
    assert contents(tmp_path).keys() == before.keys() and "0.9" in contents(tmp_path)["metrics.csv"]
