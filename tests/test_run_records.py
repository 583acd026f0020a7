"""The run records a person reads: log file, learning-rate curve, JSON metrics summary with class names."""

from __future__ import annotations

import json
import logging
import math

import torch
from ignite.engine import Engine, Events
from monai.handlers import StatsHandler
from scripts.run_records import LearningRateToTensorBoard, LogFile, MetricsSummaryJSON


def test_log_file_holds_the_stats_handler_lines(tmp_path, caplog):
    caplog.set_level(logging.INFO)  # as configs/logging.conf sets it
    engine = Engine(lambda e, b: {"loss": 0.25})
    StatsHandler(output_transform=lambda out: out["loss"], tag_name="train_loss").attach(engine)
    LogFile(str(tmp_path / "logs" / "train.log")).attach(engine)
    engine.run([0, 1], max_epochs=2)
    text = (tmp_path / "logs" / "train.log").read_text()
    assert "Epoch: 2/2, Iter: 2/2 -- train_loss: 0.2500" in text and "Epoch[2] Complete" in text
    size = len(text)
    engine.logger.info("after the run")  # the file handler is detached at the end
    assert len((tmp_path / "logs" / "train.log").read_text()) == size


def test_learning_rate_scalar_per_epoch(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    net = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=4, power=0.9)
    engine = Engine(lambda e, b: None)
    LearningRateToTensorBoard(optimizer, str(tmp_path)).attach(engine)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: scheduler.step())
    engine.run([0], max_epochs=3)
    events = list(tmp_path.glob("events.out.tfevents.*"))
    accumulator = EventAccumulator(str(events[0]))
    accumulator.Reload()
    values = [event.value for event in accumulator.Scalars("learning_rate")]
    expected = [0.01 * (1 - epoch / 4) ** 0.9 for epoch in range(3)]
    assert [round(v, 7) for v in values] == [round(v, 7) for v in expected]


def test_metrics_summary_names_the_classes(tmp_path):
    engine = Engine(lambda e, b: None)
    MetricsSummaryJSON(str(tmp_path), {"0": "background", "1": "organ", "2": "lesion"}).attach(engine)

    @engine.on(Events.STARTED)
    def metrics(e):
        e.state.metrics = {"val_mean_dice": 0.6}
        e.state.metric_details = {"val_mean_dice": torch.tensor([[0.9, 0.3], [0.8, math.nan]])}

    engine.run([0], max_epochs=1)
    report = json.loads((tmp_path / "metrics_summary.json").read_text())
    dice = report["metrics"]["val_mean_dice"]
    assert report["num_cases"] == 2 and dice["mean"] == 0.6
    assert dice["per_class"] == {"organ": 0.85000002384185791, "lesion": 0.30000001192092896}
    assert dice["cases_left_out"] == {"organ": 0, "lesion": 1}
    assert not list(tmp_path.glob(".tmp_*"))
