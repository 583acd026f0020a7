"""`make demo` end to end in its quick mode (tiny data and network), the re-use of a finished run, and the report's
building blocks on hand-made inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scripts.atomic import write_text
from scripts.demo import pipeline as demo
from scripts.demo import report


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    """One quick demo run shared by the end-to-end tests (it is the slow part)."""
    work = tmp_path_factory.mktemp("demo")
    demo.main(work_dir=str(work), quick=True)
    return work


def test_quick_demo_writes_the_report(quick_run):
    out = quick_run / "report"
    for name in ("index.md", "plan.md", "plan.json", "loss.png", "dice.png", "metrics.md", "metrics.json"):
        assert (out / name).stat().st_size > 0, name
    assert list((out / "overlays").glob("case_*.png")), "no overlay PNG"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["classes"] == ["organ", "lesion"]
    assert set(metrics["mean"]) == {"organ", "lesion"}
    assert set(metrics["mean"]["organ"]) == {"dice", "hd95_mm", "surface_dice"}
    assert len(metrics["cases"]) == 2
    assert metrics["lesion_detection"]["total"]["gt"] >= 2
    assert sorted(quick_run.joinpath("predictions").glob("case_*_seg.nii.gz")), "inference wrote nothing"
    assert "val_mean_dice" in metrics["validation_curves"]


def test_second_run_reuses_everything(quick_run, capsys):
    model = quick_run / "models" / "model.pt"
    predictions = sorted((quick_run / "predictions").glob("*.nii.gz"))
    before = [model.stat().st_mtime_ns] + [p.stat().st_mtime_ns for p in predictions]
    demo.main(work_dir=str(quick_run), quick=True)
    after = [model.stat().st_mtime_ns] + [p.stat().st_mtime_ns for p in predictions]
    assert after == before, "the second run retrained or re-predicted"
    printed = capsys.readouterr().out
    assert "re-using the trained model" in printed
    assert "$ " not in printed, "a bundle command ran again"
    assert (quick_run / "report" / "metrics.json").is_file()


def test_the_demo_writes_every_file_temp_then_rename(quick_run, monkeypatch):
    """The report, its plots, the run markers and timings.json are renamed into place complete (scripts.atomic),
    so a run killed mid-write leaves no truncated file (they were written in place before)."""
    import scripts.atomic

    renamed: list[Path] = []
    real_replace = scripts.atomic.os.replace

    def spy(source, target):
        renamed.append(Path(target).resolve())
        return real_replace(source, target)

    monkeypatch.setattr(scripts.atomic.os, "replace", spy)
    demo.main(work_dir=str(quick_run), quick=True)
    written = [p.resolve() for p in (quick_run / "report").rglob("*") if p.is_file()]
    assert len(written) >= 8 and set(written) <= set(renamed)
    assert (quick_run / "timings.json").resolve() in renamed
    assert not list(quick_run.rglob(".tmp_*"))


def test_write_text_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    with pytest.raises(UnicodeEncodeError):
        write_text(target, "new \udc80")  # a lone surrogate cannot be encoded: the write fails part-way
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    write_text(target, "new")
    assert target.read_text() == "new" and target.stat().st_mode & 0o777 == 0o644


def _state(tmp_path: Path, signature: dict, done: bool, last: bool) -> Path:
    models = tmp_path / "models"
    models.mkdir()
    (models / demo.STARTED).write_text(json.dumps(signature))
    (models / "model.pt").write_bytes(b"x")
    if last:
        (models / "checkpoint_last.pt").write_bytes(b"x")
    if done:
        (models / demo.DONE).write_text(json.dumps({"signature": signature}))
    return models


@pytest.mark.parametrize(
    "done,last,same,expected",
    [
        (True, True, True, "reuse"),
        (False, True, True, "resume"),  # interrupted: continue from checkpoint_last.pt
        (False, False, True, "start"),
        (True, True, False, "start"),  # other settings: the old model does not fit
    ],
)
def test_training_action(tmp_path, done, last, same, expected):
    signature = {"plan": "abc", "epochs": 4}
    models = _state(tmp_path, signature, done, last)
    asked = signature if same else {**signature, "epochs": 5}
    assert demo.training_action(models, asked) == expected


def test_resolve_settings_parses_cli_lists():
    settings = demo.resolve_settings("cpu", kn="[4,4,6,6,8]", patch_size="32,32,8", epochs=3, learning_rate=None)
    assert settings.kn == (4, 4, 6, 6, 8) and settings.patch_size == (32, 32, 8) and settings.epochs == 3
    assert settings.learning_rate == demo.PROFILES["cpu"].learning_rate
    with pytest.raises(SystemExit):
        demo.resolve_settings("cpu", kn="[8,16]")


def test_lesion_detection_counts_components():
    gt = np.zeros((20, 20, 6), np.uint8)
    gt[2:18, 2:18, :] = 1
    gt[4:7, 4:7, 1:3] = 2  # lesion A, two slices
    gt[12:15, 12:15, 4] = 2  # lesion B, one slice
    pred = np.where(gt == 2, 1, gt).astype(np.uint8)
    pred[5, 5, 2] = 2  # one voxel of A found
    pred[9, 9, 0] = 2  # a false positive
    assert report.lesion_detection(gt, pred) == {"gt": 2, "hit": 1, "predicted": 2, "false_positive": 1}
    summary = report.detection_summary({"a": report.lesion_detection(gt, pred), "b": report.lesion_detection(gt, gt)})
    assert summary["total"]["gt"] == 4 and summary["total"]["hit"] == 3 and summary["total"]["hit_rate"] == 0.75


def test_pick_slices_prefers_lesions():
    gt = np.zeros((10, 10, 8), np.uint8)
    gt[:, :, 2:7] = 1
    gt[3:5, 3:5, 6] = 2
    assert report.pick_slices(gt, max_slices=2)[-1] == 6
    assert len(report.pick_slices(gt, max_slices=3)) == 3


def test_collect_metrics_reads_monai_csvs(tmp_path):
    rows = {
        "val_mean_dice": ["0.9000", "0.5000"],
        "val_hd95_mm": ["3.0000", "nan"],
        "val_surface_dice": ["0.8000", "0.0000"],
    }
    for tag, (organ, lesion) in rows.items():
        (tmp_path / f"{tag}_raw.csv").write_text(
            "filename,class0,class1,mean\n"
            f"/d/imagesTs/case_001.nii.gz,{organ},{lesion},0\n/d/imagesTs/case_002.nii.gz,{organ},0.7000,0\n"
        )
    metrics = report.collect_metrics(tmp_path, ["organ", "lesion"])
    assert list(metrics["cases"]) == ["case_001", "case_002"]
    assert metrics["mean"]["lesion"]["dice"] == pytest.approx(0.6)
    assert math.isnan(metrics["cases"]["case_001"]["lesion"]["hd95_mm"])
    assert metrics["n_missing"]["lesion"]["hd95_mm"] == 1
    table = report.metrics_markdown(metrics)
    assert "| case_001 | 0.500 | n/a | 0.000 |" in table


def test_curves_from_event_files(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path)) as writer:
        for step in range(1, 11):
            writer.add_scalar("train_loss", 1.0 / step, step)
        writer.add_scalar("val_mean_dice", 0.5, 5)
        writer.add_scalar("val_dice_organ", 0.7, 5)
    scalars = report.read_scalars(tmp_path)
    assert len(scalars["train_loss"]) == 10 and scalars["val_mean_dice"] == [(5, 0.5)]
    assert report.plot_loss(scalars, tmp_path / "loss.png", window=3).stat().st_size > 0
    assert report.plot_dice(scalars, tmp_path / "dice.png").stat().st_size > 0
    assert report.moving_average([1, 2, 3, 4], 2).tolist() == [1.0, 1.5, 2.5, 3.5]
