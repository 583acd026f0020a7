"""Metric handlers for validation and evaluation: per-class Dice, and surface metrics in millimetres."""

from __future__ import annotations

from collections.abc import Callable

import torch
from monai.handlers import IgniteMetricHandler, MeanDice, from_engine
from monai.metrics import HausdorffDistanceMetric, SurfaceDiceMetric

PRED_AND_LABEL = from_engine(["pred", "label"])


def _channels(items: list[torch.Tensor], index: int) -> list[torch.Tensor]:
    return [item[[0, index]] for item in items]


def per_class_dice(labels: dict[str, str], prefix: str = "val_dice_") -> dict[str, MeanDice]:
    """One MeanDice per foreground class, named after the class, so TensorBoard gets a curve per label."""
    metrics = {}
    for key, name in sorted(labels.items(), key=lambda kv: int(kv[0])):
        index = int(key)
        if index == 0:
            continue

        def pick(output, index=index):
            preds, targets = PRED_AND_LABEL(output)
            return _channels(preds, index), _channels(targets, index)

        metrics[f"{prefix}{name}"] = MeanDice(include_background=False, output_transform=pick)
    return metrics


class SpacingAwareMetricHandler(IgniteMetricHandler):
    """IgniteMetricHandler that passes each prediction's voxel spacing to the metric, so distances are in mm."""

    def update(self, output) -> None:
        y_pred, y = output
        spacing = [getattr(p, "pixdim", None) for p in y_pred]
        if any(s is None for s in spacing):
            self.metric_fn(y_pred, y)
            return
        self.metric_fn(y_pred, y, spacing=[[float(v) for v in s] for s in spacing])


def hausdorff95(output_transform: Callable = PRED_AND_LABEL, save_details: bool = True):
    """95th-percentile Hausdorff distance per class, in mm (the image spacing), background excluded."""
    metric = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="mean")
    return SpacingAwareMetricHandler(metric, output_transform=output_transform, save_details=save_details)


def surface_dice(
    tolerance_mm: float = 2.0,
    num_classes: int = 3,
    output_transform: Callable = PRED_AND_LABEL,
    save_details: bool = True,
):
    """Normalised surface Dice at ``tolerance_mm`` per class (the same tolerance for every foreground class)."""
    metric = SurfaceDiceMetric([tolerance_mm] * (num_classes - 1), include_background=False, reduction="mean")
    return SpacingAwareMetricHandler(metric, output_transform=output_transform, save_details=save_details)
