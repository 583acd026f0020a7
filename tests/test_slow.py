"""Full-size checks behind the ``slow`` marker (`make test-slow`): the real demo must learn, and the default-width
network must train on the reference patch. Minutes on a 2-core CPU, so not in the default suite."""

from __future__ import annotations

import json

import pytest
import torch
from scripts.networks.mnet import MNet

pytestmark = pytest.mark.slow


def test_full_demo_learns(tmp_path):
    from scripts.demo.pipeline import main

    main(work_dir=str(tmp_path / "demo"))
    metrics = json.loads((tmp_path / "demo" / "report" / "metrics.json").read_text())
    assert metrics["mean"]["organ"]["dice"] > 0.8
    detection = metrics["lesion_detection"]["total"]
    assert detection["hit"] >= detection["gt"] / 2
    assert metrics["mean"]["lesion"]["dice"] > 0.2


def test_default_width_train_step_on_reference_patch():
    net = MNet(1, 3).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    outputs = net(torch.randn(2, 1, 128, 128, 16))
    assert [tuple(o.shape[2:]) for o in outputs][0] == (128, 128, 16)
    sum(o.float().square().mean() for o in outputs).backward()
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in net.parameters())
