"""scripts.transforms: foreground oversampling must not crash on a training case without foreground."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import RandCropByLabelClassesd
from scripts.transforms import RandCropByLabelClassesOrRandomd

ROOT = Path(__file__).resolve().parents[1]
ARGS = {
    "keys": ["image", "label"],
    "label_key": "label",
    "spatial_size": [8, 8, 4],
    "num_classes": 3,
    "ratios": [0, 1, 1],
    "num_samples": 1,
    "warn": False,
}


def case(label_value: int | None = None) -> dict:
    label = torch.zeros(1, 20, 18, 8)
    if label_value is not None:
        label[0, 14:16, 3:5, 6] = label_value
    return {"image": torch.arange(20 * 18 * 8, dtype=torch.float32).reshape(1, 20, 18, 8), "label": label}


def test_empty_label_falls_back_to_a_random_crop():
    with pytest.raises(ValueError, match="probabilities contain NaN"):  # what MONAI's transform does
        RandCropByLabelClassesd(**ARGS)(case())
    crop = RandCropByLabelClassesOrRandomd(**ARGS)
    crop.set_random_state(0)
    starts = set()
    for _ in range(10):
        out = crop(case())[0]
        assert out["image"].shape == (1, 8, 8, 4) and out["label"].sum() == 0
        starts.add(int(out["image"][0, 0, 0, 0]))
    assert len(starts) > 1  # random positions, not one fixed fallback


def test_foreground_is_still_oversampled():
    crop = RandCropByLabelClassesOrRandomd(**ARGS)
    crop.set_random_state(0)
    for _ in range(5):
        assert crop(case(label_value=2))[0]["label"].sum() > 0
    assert crop.cropper.ratios == [0, 1, 1]


def test_train_config_handles_a_healthy_control():
    """The training chain with foreground oversampling always on, applied to an empty label."""
    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs/train.json"))
    parser.update(
        {"plan_file": str(ROOT / "configs/plan.json"), "patch_size": [8, 8, 4], "foreground_oversampling": 1.0}
    )
    oneof = next(t for t in parser.get_parsed_content("train#random_transforms") if type(t).__name__ == "OneOf")
    crop = oneof.transforms[1]
    assert isinstance(crop, RandCropByLabelClassesOrRandomd)
    out = crop(case())[0]
    assert out["image"].shape == (1, 8, 8, 4)
