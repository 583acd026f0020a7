"""The training loss of configs/train.json: Dice + CE with the paper's seven deep-supervision weights, each head's
target resized to that head's own output size (odd patch sizes included, where the authors' trainer breaks)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser
from monai.losses import DiceCELoss
from scripts.networks.mnet import MNet
from tests.conftest import BUNDLE_ROOT


@pytest.fixture(scope="module")
def loss_fn():
    parser = ConfigParser()
    parser.read_config(str(BUNDLE_ROOT / "configs" / "train.json"))
    return parser.get_parsed_content("loss")


def test_weights_are_the_papers_normalised(loss_fn):
    weights = loss_fn.get_weights(7)
    expected = torch.tensor([1, 0.5, 0.5, 0.25, 0.25, 0.125, 0.125]) / 2.75
    torch.testing.assert_close(torch.tensor(weights), expected)
    assert abs(sum(weights) - 1.0) < 1e-6


@pytest.mark.parametrize("patch", [(63, 65, 15), (48, 48, 16), (33, 47, 9)])
def test_each_head_gets_a_target_of_its_own_size(loss_fn, patch):
    net = MNet(1, 3, kn=(4, 4, 6, 6, 8)).train()
    outputs = net(torch.randn(2, 1, *patch))
    label = torch.randint(0, 3, (2, 1, *patch)).float()
    loss = loss_fn(outputs, label)
    assert torch.isfinite(loss)
    base = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, smooth_nr=1e-5, smooth_dr=1e-5)
    expected = 0.0
    for weight, out in zip(loss_fn.get_weights(7), outputs):
        target = F.interpolate(label, size=out.shape[2:], mode="nearest-exact")
        assert target.shape[2:] == out.shape[2:]
        expected = expected + weight * base(out, target)
    torch.testing.assert_close(loss, expected)
    loss.backward()
