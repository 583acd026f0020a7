"""What a run leaves behind for a person to read: a log file, the learning-rate curve, and a JSON metrics summary.

The console log scrolls away and MONAI's ``MetricsSaver`` writes CSV columns ``class0, class1, ...``; these handlers
add the log file in the output folder, a ``learning_rate`` scalar in TensorBoard next to the loss, and
``metrics_summary.json`` with each metric's mean per class *name* (from the plan's labels). Every file is written
temp-then-rename, except the log, which is appended line by line.
"""

from __future__ import annotations

import json
import logging
import math
import os

import torch
from ignite.engine import Engine, Events
from scripts.atomic import atomic_path

LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"


def _non_propagating_loggers() -> list[logging.Logger]:
    """Loggers that do not pass their records to the root (MONAI's handlers log through such loggers)."""
    loggers = logging.Logger.manager.loggerDict.values()
    return [lg for lg in loggers if isinstance(lg, logging.Logger) and not lg.propagate]


class LogFile:
    """Copy every log record of the process (INFO and up) into ``path`` while the engine runs: the root logger's
    and those of loggers that do not propagate to it (MONAI's StatsHandler lines)."""

    def __init__(self, path: str):
        self.path = path
        self._handler: logging.FileHandler | None = None
        self._loggers: list[logging.Logger] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._open)
        engine.add_event_handler(Events.COMPLETED, self._close)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._close)

    def _open(self, engine: Engine) -> None:
        if self._handler is None:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            self._handler = logging.FileHandler(self.path, encoding="utf-8")
            self._handler.setFormatter(logging.Formatter(LOG_FORMAT))
            self._handler.setLevel(logging.INFO)
            self._loggers = [logging.getLogger(), *_non_propagating_loggers()]
            for logger in self._loggers:
                logger.addHandler(self._handler)
            engine.logger.info(f"log file: {self.path}")

    def _close(self, engine: Engine, *args) -> None:
        if self._handler is not None:
            for logger in self._loggers:
                logger.removeHandler(self._handler)
            self._handler.close()
            self._handler = None


class LearningRateToTensorBoard:
    """The optimizer's learning rate per epoch as TensorBoard scalar ``learning_rate`` (log_dir as the loss's)."""

    def __init__(self, optimizer: torch.optim.Optimizer, log_dir: str, tag: str = "learning_rate"):
        self.optimizer, self.log_dir, self.tag = optimizer, log_dir, tag
        self._writer = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)
        engine.add_event_handler(Events.COMPLETED, self._close)

    def __call__(self, engine: Engine) -> None:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=self.log_dir)
        self._writer.add_scalar(self.tag, self.optimizer.param_groups[0]["lr"], engine.state.epoch)
        self._writer.flush()

    def _close(self, engine: Engine) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _finite_mean(values: torch.Tensor) -> float | None:
    values = values[torch.isfinite(values)]
    return float(values.mean()) if values.numel() else None


class MetricsSummaryJSON:
    """After an evaluation, write ``<save_dir>/metrics_summary.json``: per metric the mean over cases and the mean
    per class name (NaN cases, e.g. a class absent from both prediction and label, are left out and counted)."""

    def __init__(self, save_dir: str, labels: dict, filename: str = "metrics_summary.json"):
        self.path = os.path.join(save_dir, filename)
        self.names = [name for key, name in sorted(labels.items(), key=lambda kv: int(kv[0])) if int(key) != 0]

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def summary(self, engine: Engine) -> dict:
        details = getattr(engine.state, "metric_details", {}) or {}
        result: dict = {"num_cases": None, "metrics": {}}
        for name, value in engine.state.metrics.items():
            entry: dict = {"mean": float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None}
            table = details.get(name)
            if isinstance(table, torch.Tensor) and table.dim() == 2:
                table = table.detach().float().cpu()
                result["num_cases"] = int(table.shape[0])
                if table.shape[1] == len(self.names):
                    entry["per_class"] = {cls: _finite_mean(table[:, i]) for i, cls in enumerate(self.names)}
                    entry["cases_left_out"] = {
                        cls: int((~torch.isfinite(table[:, i])).sum()) for i, cls in enumerate(self.names)
                    }
            result["metrics"][name] = entry
        return result

    def __call__(self, engine: Engine) -> None:
        with atomic_path(self.path, suffix=".json") as tmp, open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.summary(engine), f, indent=4)
            f.write("\n")
