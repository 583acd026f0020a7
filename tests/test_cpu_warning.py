"""CPU users are told: the planner and training warn once, on a machine without CUDA, that training at a GPU sizing
is very slow and what the demo's CPU sizing is (the README's plan + train commands ran 90 s per iteration in
silence)."""

from __future__ import annotations

import logging
import re

import pytest
import torch
from monai.bundle import ConfigParser
from scripts.demo.data import write_dataset
from scripts.demo.pipeline import PROFILES
from scripts.plan import main as plan_main
from tests.conftest import BUNDLE_ROOT

CPU = PROFILES["cpu"]
ADVICE = (
    r'for a CPU use the demo\'s sizing: plan with `python -m scripts.plan --kn "\[8,12,16,20,24\]"`, train with '
    r'`--patch_size "\[64,64,16\]" --batch_size 2` \(docs/demo.md, "Settings"\)'
)


def training_config(**overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(BUNDLE_ROOT / "configs" / "train.json"))
    parser["bundle_root"] = str(BUNDLE_ROOT)
    for key, value in overrides.items():
        parser[key] = value
    return parser


def warnings_of(caplog, parser: ConfigParser) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mnet.runtime"):
        parser.get_parsed_content("cpu_warning")
    return [r.getMessage() for r in caplog.records if r.name == "mnet.runtime"]


def test_training_on_cpu_at_the_plan_size_warns_once(caplog):
    """train.json's run warns before the trainer starts (configs/plan.json is GPU-sized: 160x160x24, kn 32..96)."""
    parser = training_config(device="$torch.device('cpu')")
    (line,) = warnings_of(caplog, parser)
    assert re.match(r"training on a CPU at patch \[160,160,24\], batch 2, kn \[32,48,64,80,96\] \(a GPU sizing\) is "
                    r"very slow; " + ADVICE + "$", line)  # fmt: skip
    run = parser["run"]
    assert run.index("@cpu_warning") == run.index("@train_setup") + 1 and run[-1].endswith("trainer.run()")


def test_no_warning_at_the_demo_cpu_sizing_or_on_a_gpu(caplog):
    demo = {"patch_size": list(CPU.patch_size), "batch_size": CPU.batch_size, "kn": list(CPU.kn)}
    assert warnings_of(caplog, training_config(device="$torch.device('cpu')", **demo)) == []
    assert warnings_of(caplog, training_config(device="$torch.device('cuda:0')")) == []


def test_evaluation_does_not_warn_about_training():
    """evaluate.json (merged over train.json) replaces train.json's run and never trains."""
    parser = ConfigParser()
    parser.read_config([str(BUNDLE_ROOT / "configs" / f) for f in ("train.json", "evaluate.json")])
    assert "@cpu_warning" not in parser["run"]


@pytest.mark.parametrize("cuda", [False, True])
def test_planner_warns_on_a_machine_without_cuda(tmp_path, monkeypatch, capsys, cuda):
    write_dataset(tmp_path / "data", num_cases=6, num_test=1, inplane_range=(64, 72), slices_range=(16, 18))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    plan_main(str(tmp_path / "data"), output=str(tmp_path / "plan.json"), workers=0)
    warned = [line for line in capsys.readouterr().err.splitlines() if "WARNING" in line]
    if cuda:
        assert warned == []
    else:
        (line,) = warned
        assert re.match(r"WARNING: no CUDA GPU on this machine; training on a CPU at patch \[\d+,\d+,\d+\], batch \d+, "
                        r"kn \[32,48,64,80,96\] \(a GPU sizing\) is very slow; " + ADVICE + "$", line)  # fmt: skip
