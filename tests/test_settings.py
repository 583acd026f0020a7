"""The command-line boundary: boolean spellings and overrides the running workflow does not read."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from scripts.errors import BundleInputError
from scripts.settings import as_bool, check_overrides
from tests.conftest import BUNDLE_ROOT

MONAI_CLI = str(Path(sys.prefix) / "lib/monai/bundle/__main__.py")
TRAIN = [MONAI_CLI, "run", "training", "--config_file", str(BUNDLE_ROOT / "configs/train.json")]
INFER = [MONAI_CLI, "run", "--config_file", str(BUNDLE_ROOT / "configs/inference.json")]


@pytest.mark.parametrize("value", [True, "true", "True", "1", 1, "yes", " on "])
def test_true_spellings(value):
    assert as_bool(value) is True


@pytest.mark.parametrize("value", [False, "false", "FALSE", "0", 0, "no", "off"])
def test_false_spellings(value):
    assert as_bool(value) is False


def test_anything_else_is_an_error_naming_the_setting():
    with pytest.raises(ValueError, match="--resume: expected true or false, got 'maybe'"):
        as_bool("maybe", "resume")


def test_unknown_override_is_refused_with_a_hint():
    with pytest.raises(BundleInputError, match=r"--epoch: unknown setting.*did you mean --epochs\?"):
        check_overrides([*TRAIN, "--epoch", "3", "--num_workers", "0"])
    check_overrides([*TRAIN, "--epochs", "3", "--train#handlers#0#enabled", "False", "--resume"])
    check_overrides(["pytest", "--epoch", "3"])  # not the MONAI CLI: nothing to check
    check_overrides([*TRAIN, "--resume", "false", "--tracking_uri", "file:///tmp/mlruns"])


@pytest.mark.parametrize("argv,name", [
    ([*TRAIN, "--ckpt_path", "models/x.pt"], "ckpt_path"),  # an inference setting given to training
    ([*TRAIN, "--tta_mirror_axes", "[0]"], "tta_mirror_axes"),
    ([*INFER, "--cache_rate", "1.0"], "cache_rate"),  # a training setting given to inference
    ([*INFER, "--epoch", "3"], "epoch"),
])  # fmt: skip
def test_settings_the_running_workflow_does_not_read_are_refused(argv, name):
    """Only the config files of this run count: a setting of another workflow would do nothing here."""
    with pytest.raises(BundleInputError, match=f"--{name}: unknown setting, this workflow's configs define no"):
        check_overrides(argv)


def test_the_check_does_not_depend_on_check_data():
    """`--check_data false --epoch 1` used to skip the setting check and run 500 epochs."""
    with pytest.raises(BundleInputError, match="--epoch: unknown setting"):
        check_overrides([*TRAIN, "--check_data", "false", "--epoch", "1"])


@pytest.mark.parametrize("flag", ["--resume", "--check_data", "--cudnn_benchmark", "--amp"])
def test_misspelt_booleans_are_one_line_errors_before_any_work(flag):
    with pytest.raises(BundleInputError, match=f"{flag}: expected true or false, got 'ture'"):
        check_overrides([*TRAIN, flag, "ture"])


def test_excepthook_installed_once_survives_a_wrapping_hook(monkeypatch, capsys):
    """torch.distributed wraps the installed hook; a second install must not chain back into the wrapper."""
    from scripts import errors

    monkeypatch.setattr(errors, "_installed", False)
    monkeypatch.setattr(errors.sys, "excepthook", errors.sys.__excepthook__)
    errors.install_excepthook()
    inner = errors.sys.excepthook

    def wrapper(*args):  # as torch.distributed's _distributed_excepthook: calls the hook it found
        inner(*args)

    monkeypatch.setattr(errors.sys, "excepthook", wrapper)
    errors.install_excepthook()  # e.g. another module importing scripts.errors later
    assert errors.sys.excepthook is wrapper
    try:
        raise RuntimeError("plain failure")
    except RuntimeError as exc:
        errors.sys.excepthook(type(exc), exc, exc.__traceback__)  # no RecursionError
    assert "RuntimeError: plain failure" in capsys.readouterr().err


def _workflow(configs: list[str], **overrides):
    from monai.bundle import ConfigWorkflow

    files = [str(BUNDLE_ROOT / "configs" / c) for c in configs]
    return ConfigWorkflow(config_file=files, workflow_type=None, **overrides)


@pytest.mark.parametrize("configs,overrides,message", [
    (["train.json"], {"epoch": 3}, r"--epoch: unknown setting.*did you mean --epochs\?"),
    (["train.json"], {"ckpt_path": "models/x.pt"}, "--ckpt_path: unknown setting"),  # inference's id
    (["train.json"], {"tta_mirror_axes": "[0]"}, "--tta_mirror_axes: unknown setting"),  # evaluation/inference id
    (["inference.json"], {"cache_rate": 1.0}, "--cache_rate: unknown setting"),
    (["train.json"], {"resume": "ture"}, "--resume: expected true or false, got 'ture'"),
])  # fmt: skip
def test_keyword_overrides_of_python_callers_are_checked_at_run(configs, overrides, message):
    """ConfigWorkflow / monai.bundle.run callers pass overrides as keywords; MONAI merges them silently, so the
    set-up step finds the running workflow and refuses what its configs do not define, before any work."""
    from scripts.errors import find_input_error

    workflow = _workflow(configs, **overrides)
    workflow.initialize()
    with pytest.raises(Exception) as info:  # MONAI wraps it in "Failed to instantiate component ..."
        workflow.run()
    assert re.search(message, str(find_input_error(info.value))), info.value


@pytest.mark.parametrize("configs,overrides", [
    (["train.json"], {"epochs": 2, "resume": "false", "train#handlers#0#_disabled_": True}),
    (["train.json", "evaluate.json"], {"eval_split": "validation"}),
    (["train.json", "multi_gpu_train.json"], {}),
    (["inference.json"], {"output_dir": "out", "tta_mirror_axes": "[0]"}),
])  # fmt: skip
def test_keyword_overrides_the_configs_define_pass(configs, overrides):
    from scripts.settings import _check_keyword_overrides

    _check_keyword_overrides(_workflow(configs, **overrides))
