"""scripts.checkpoints: atomic saves that keep the old file on a kill or a full disk, one-line load errors, the plan
fingerprint and the fold/split/plan record that refuses a wrong resume or a model of another plan."""

from __future__ import annotations

import copy
import errno
import json
import re
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from scripts.checkpoints import (
    check_checkpoint,
    check_resume,
    fold_dir,
    model_state,
    plan_fingerprint,
    save,
    save_model,
    training_meta,
)
from scripts.errors import BundleInputError, find_input_error
from scripts.plan_file import DEFAULT_PLAN

ROOT = Path(__file__).resolve().parents[1]


def net(channels: int = 1) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv3d(channels, 4, 3))


def test_checkpoint_checks(tmp_path: Path):
    model = net()
    good = tmp_path / "good.pt"
    torch.save({"model": model.state_dict()}, good)
    assert check_checkpoint(str(good), model) == str(good)
    other = tmp_path / "other.pt"
    torch.save(net(2).state_dict(), other)
    with pytest.raises(
        BundleInputError,
        match=r"other\.pt: checkpoint does not fit .*0\.weight: checkpoint "
        r"\[4, 2, 3, 3, 3\] vs network \[4, 1, 3, 3, 3\]",
    ):
        check_checkpoint(str(other), model)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(good.read_bytes()[:100])
    with pytest.raises(BundleInputError, match=r"broken\.pt: corrupted or not a PyTorch weights file"):
        check_checkpoint(str(broken), model)
    with pytest.raises(BundleInputError, match=r"none\.pt: checkpoint not found"):
        check_checkpoint(str(tmp_path / "none.pt"), model)


def test_training_checkpoint_and_nan_weights_are_one_line(tmp_path: Path):
    model = net()
    last = tmp_path / "checkpoint_last.pt"
    torch.save({"network": model.state_dict(), "optimizer": {}, "trainer": {"epoch": 1}}, last)
    with pytest.raises(BundleInputError, match=r"checkpoint_last\.pt: is a training checkpoint"):
        model_state(str(last), model)
    state = model.state_dict()
    state["0.weight"][0, 0, 0, 0, 0] = float("nan")
    diverged = tmp_path / "diverged.pt"
    torch.save(state, diverged)
    with pytest.raises(BundleInputError, match=r"diverged\.pt: 1 weight tensor\(s\) hold NaN or Inf, e\.g\. 0\.weight"):
        model_state(str(diverged), model)


def test_fingerprint_follows_what_the_model_sees():
    plan = copy.deepcopy(DEFAULT_PLAN)
    same = {**copy.deepcopy(plan), "notes": ["other"], "batch_size": 7, "patch_size": [96, 96, 16]}
    assert plan_fingerprint(same) == plan_fingerprint(plan)
    for key, value in [
        ("spacing", [1.0, 1.0, 5.0]),
        ("modality", "MR"),
        ("kn", [8, 8, 8, 8, 8]),
        ("normalization", {"scheme": "zscore_nonzero"}),
        ("labels", {"0": "bg", "1": "x"}),
    ]:
        assert plan_fingerprint({**plan, key: value}) != plan_fingerprint(plan), key


def test_fold_dirs_do_not_collide():
    assert fold_dir("models", 0) == "models"  # the zoo / MONAI Label layout: models/model.pt
    assert len({fold_dir("models", k) for k in range(5)}) == 5
    assert fold_dir("models", 3) == "models/fold_3"


def test_model_record_refuses_another_plan(tmp_path: Path):
    model, plan = net(), copy.deepcopy(DEFAULT_PLAN)
    path = tmp_path / "model.pt"
    save_model(model.state_dict(), str(path), training_meta(plan, 0))
    record = json.loads((tmp_path / "model.json").read_text())
    assert record["plan_sha256"] == plan_fingerprint(plan) and record["fold"] == 0
    assert check_checkpoint(str(path), model, plan) == str(path)
    replanned = {**plan, "spacing": [0.7, 0.7, 5.0]}
    with pytest.raises(BundleInputError, match=r"model\.pt: trained with another plan than the current one"):
        check_checkpoint(str(path), model, replanned)
    torch.save(net().state_dict(), path)  # weights replaced behind the record's back
    with pytest.raises(BundleInputError, match=r"model\.json: describes other weights than model\.pt"):
        check_checkpoint(str(path), model, plan)


def test_model_without_record_still_loads(tmp_path: Path, caplog):
    model = net()
    torch.save(model.state_dict(), tmp_path / "model.pt")
    assert check_checkpoint(str(tmp_path / "model.pt"), model, DEFAULT_PLAN)
    assert "no model record" in caplog.text


def test_resume_of_other_fold_split_or_plan_is_refused(tmp_path: Path):
    cases = [{"image": f"/d/case_{i}.nii.gz"} for i in range(5)]
    meta = training_meta(DEFAULT_PLAN, 0, cases[1:], cases[:1])
    assert meta["split"]["validation"] == ["case_0.nii.gz"]
    path = str(tmp_path / "checkpoint_last.pt")
    check_resume(path, {"meta": meta}, meta)
    fold1 = training_meta(DEFAULT_PLAN, 1, cases[:1] + cases[2:], cases[1:2])
    with pytest.raises(BundleInputError, match=r"is a checkpoint of fold 0, this run trains fold 1"):
        check_resume(path, {"meta": meta}, fold1)
    with pytest.raises(BundleInputError, match=r"was trained with another plan"):
        check_resume(
            path, {"meta": meta}, training_meta({**DEFAULT_PLAN, "spacing": [1, 1, 3]}, 0, cases[1:], cases[:1])
        )
    with pytest.raises(BundleInputError, match=r"was trained on another split"):
        check_resume(path, {"meta": meta}, training_meta(DEFAULT_PLAN, 0, cases[2:], cases[:2]))


@pytest.mark.parametrize("error", [KeyboardInterrupt(), OSError(errno.ENOSPC, "No space left on device")])
def test_failed_save_keeps_previous_file(tmp_path: Path, monkeypatch, error):
    """A kill (simulated by an exception inside torch.save after it wrote half a file) or a full disk leaves the
    previous file byte for byte, and no temporary file."""
    path = tmp_path / "model.pt"
    save_model(net().state_dict(), str(path), {"epoch": 1})
    before = path.read_bytes(), (tmp_path / "model.json").read_text()
    real_save = torch.save

    def crash(obj, f, *args, **kwargs):
        real_save(obj, f)
        Path(f).write_bytes(Path(f).read_bytes()[:50])
        raise error

    monkeypatch.setattr(torch, "save", crash)
    expected = KeyboardInterrupt if isinstance(error, KeyboardInterrupt) else BundleInputError
    with pytest.raises(expected) as info:
        save_model(net().state_dict(), str(path), {"epoch": 2})
    if expected is BundleInputError:
        message = str(info.value)
        assert (
            "\n" not in message
            and str(path) in message
            and f"no space left on the disk holding {tmp_path}" in message
            and "previous version of the file is kept" in message
        )
    with pytest.raises(expected):
        save({"epoch": 2}, str(tmp_path / "checkpoint_last.pt"))
    assert (path.read_bytes(), (tmp_path / "model.json").read_text()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.pt"]


def test_torch_write_error_on_a_full_disk_is_one_line(tmp_path: Path, monkeypatch):
    """torch.save's C++ writer raises RuntimeError without errno; with (almost) no space left it is the disk."""
    monkeypatch.setattr(
        torch,
        "save",
        lambda *a, **k: (_ for _ in ()).throw(
            RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file data/0")
        ),
    )
    monkeypatch.setattr("shutil.disk_usage", lambda folder: type("Usage", (), {"free": 1024})())
    with pytest.raises(BundleInputError, match=r"checkpoint_last\.pt: cannot write, no space left .*0 MiB free"):
        save({}, str(tmp_path / "checkpoint_last.pt"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "configs, target",
    [(["inference.json"], "checkpointloader"), (["train.json", "evaluate.json"], "validate#handlers")],
)
def test_inference_and_evaluation_refuse_a_model_of_another_plan(tmp_path: Path, configs, target):
    """The configs pass the current plan to the checkpoint check: a model.pt whose model.json records another plan
    (e.g. the planner was re-run after training) is refused before any case is read."""
    plan = json.loads((ROOT / "configs/plan.json").read_text())
    old_plan = {**plan, "normalization": {**plan["normalization"], "mean": 12.0}}
    parser = ConfigParser()
    parser.read_config([str(ROOT / "configs" / name) for name in configs])
    parser.update(
        {
            "bundle_root": str(tmp_path),
            "plan_file": str(ROOT / "configs/plan.json"),
            "kn": [4, 4, 6, 6, 8],
            "device": "$torch.device('cpu')",
        }
    )
    network = parser.get_parsed_content("network_def")
    save_model(network.state_dict(), str(tmp_path / "models" / "model.pt"), training_meta(old_plan))
    with pytest.raises(Exception) as info:
        parser.get_parsed_content(target)
    assert re.search(
        r"models/model\.pt: trained with another plan than the current one", str(find_input_error(info.value))
    )
    save_model(network.state_dict(), str(tmp_path / "models" / "model.pt"), training_meta(plan))
    parser.parse(reset=True)
    assert parser.get_parsed_content(target)
