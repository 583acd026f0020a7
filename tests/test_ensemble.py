"""scripts.ensemble.LogitEnsemble: mirror TTA is the mean of the flipped predictions flipped back, N identical
checkpoints give the single model's prediction, and every bad ``ensemble_checkpoints`` entry is one line."""

from __future__ import annotations

import copy
import itertools
import re
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from scripts.checkpoints import save_model, training_meta
from scripts.ensemble import LogitEnsemble
from scripts.errors import BundleInputError, find_input_error
from scripts.networks.mnet import MNet
from scripts.plan_file import DEFAULT_PLAN

ROOT = Path(__file__).resolve().parents[1]


def conv(seed: int, channels: int = 3) -> torch.nn.Module:
    """A network whose output depends on orientation (random 3x3x3 kernels), so a missing flip-back shows."""
    torch.manual_seed(seed)
    return torch.nn.Conv3d(1, channels, 3, padding=1).eval()


@torch.no_grad()
def test_mirror_tta_is_mean_of_flipped_predictions_flipped_back():
    net, x = conv(0), torch.randn(1, 1, 8, 6, 4)
    tta = LogitEnsemble(net, mirror_axes=[0, 2])(x)
    expected = []
    for axes in ([], [0], [2], [0, 2]):
        dims = [a + 2 for a in axes]
        flipped = torch.flip(x, dims) if dims else x
        prob = net(flipped)
        expected.append(torch.flip(prob, dims) if dims else prob)
    torch.testing.assert_close(tta, torch.stack(expected).mean(0))
    assert not torch.allclose(tta, net(x), atol=1e-3)  # the flips do change the result
    all_axes = LogitEnsemble(net, mirror_axes=[0, 1, 2])
    assert sorted(map(tuple, all_axes.flips)) == sorted(
        tuple(a + 2 for a in c) for n in range(4) for c in itertools.combinations(range(3), n)
    )


@torch.no_grad()
def test_identical_checkpoints_equal_one_model_and_different_ones_average(tmp_path: Path):
    net, x = conv(0), torch.randn(1, 1, 8, 6, 4)
    single = net(x)
    torch.save(net.state_dict(), tmp_path / "same.pt")
    same = LogitEnsemble(copy.deepcopy(net), [str(tmp_path / "same.pt")] * 3)
    assert len(same.members) == 4
    torch.testing.assert_close(same(x), single)
    other = conv(1)
    torch.save(other.state_dict(), tmp_path / "other.pt")
    mixed = LogitEnsemble(copy.deepcopy(net), [str(tmp_path / "other.pt")])(x)
    torch.testing.assert_close(mixed, (single + other(x)) / 2)


def bad_entries(tmp_path: Path) -> list[tuple[object, str]]:
    net = MNet(1, 3, kn=(4, 4, 6, 6, 8))
    wider = tmp_path / "wider.pt"
    torch.save(MNet(1, 3, kn=(4, 4, 6, 6, 10)).state_dict(), wider)
    last = tmp_path / "checkpoint_last.pt"
    torch.save({"network": net.state_dict(), "optimizer": {}, "trainer": {"epoch": 3}}, last)
    good = tmp_path / "good.pt"
    torch.save(net.state_dict(), good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    replanned = tmp_path / "fold_1" / "model.pt"
    save_model(net.state_dict(), str(replanned), training_meta({**DEFAULT_PLAN, "spacing": [1.0, 1.0, 3.0]}, 1))
    return [
        ([str(tmp_path / "missing.pt")], r"missing\.pt: checkpoint not found"),
        ([str(wider)], r"wider\.pt: checkpoint does not fit this network \(\d+ parameter\(s\) differ in shape"),
        ([str(last)], r"checkpoint_last\.pt: is a training checkpoint \(checkpoint_last\.pt\), not a model"),
        ([str(truncated)], r"truncated\.pt: corrupted or not a PyTorch weights file"),
        (str(good), r"--ensemble_checkpoints: expected a list of model files"),
        ([None], r"--ensemble_checkpoints: every entry must be a file path, got None"),
        ([str(replanned)], r"fold_1/model\.pt: trained with another plan than the current one"),
    ]


def test_every_bad_entry_is_one_line(tmp_path: Path):
    net = MNet(1, 3, kn=(4, 4, 6, 6, 8))
    for entry, message in bad_entries(tmp_path):
        with pytest.raises(BundleInputError, match=message) as info:
            LogitEnsemble(net, entry, plan=DEFAULT_PLAN)
        assert "\n" not in str(info.value)


def test_inference_config_checks_entries_against_the_plan(tmp_path: Path):
    """The config passes its plan to the ensemble: a fold model of another plan is refused when it is built."""
    entry, message = bad_entries(tmp_path)[-1]
    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs/inference.json"))
    parser.update(
        {
            "plan_file": str(ROOT / "configs/plan.json"),
            "kn": [4, 4, 6, 6, 8],
            "ensemble_checkpoints": entry,
            "device": "$torch.device('cpu')",
        }
    )
    with pytest.raises(Exception) as info:
        parser.get_parsed_content("predictor")
    assert re.search(message, str(find_input_error(info.value)))


@pytest.mark.parametrize("axes", [[-1], [3], ["x"]])
def test_mirror_axes_are_spatial_only(axes):
    """`--tta_mirror_axes [-1]` used to flip the class axis (lesions vanished)."""
    with pytest.raises(BundleInputError, match="tta_mirror_axes: spatial axes 0, 1, 2 only"):
        LogitEnsemble(conv(0), mirror_axes=axes)
