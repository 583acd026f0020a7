"""Plan-driven pieces of the transform chains that a JSON config cannot express as a plain constructor call."""

from __future__ import annotations

import math

from monai.transforms import NormalizeIntensityd, ScaleIntensityRanged


def intensity_normalization(plan: dict, keys: str | list[str] = "image"):
    """CT: clip to the foreground 0.5/99.5 percentiles, then z-score with the dataset's foreground mean/std, done as
    one linear map with clipping. Anything else (MR): per-image, per-channel z-score over non-zero voxels."""
    norm = plan["normalization"]
    if norm["scheme"] == "ct":
        low, high = norm["clip"]
        mean, std = norm["mean"], max(norm["std"], 1e-8)
        return ScaleIntensityRanged(
            keys=keys, a_min=low, a_max=high, b_min=(low - mean) / std, b_max=(high - mean) / std, clip=True
        )
    return NormalizeIntensityd(keys=keys, nonzero=True, channel_wise=True)


def rotation_range(plan: dict, degrees: float = 30.0) -> list[float]:
    """Rotation range per spatial axis for RandAffined: about the thick axis only when the data is anisotropic
    (nnU-Net's "dummy 2D" rule: never rotate thick slices into the plane), about all axes otherwise."""
    radians = math.radians(degrees)
    if plan["anisotropic"]:
        return [radians if axis == plan["thick_axis"] else 0.0 for axis in range(3)]
    return [radians] * 3


def scale_range(low: float = 0.7, high: float = 1.4) -> list[tuple[float, float]]:
    """RandAffined's scale_range is an offset from 1: the paper's 0.7-1.4 zoom becomes (-0.3, 0.4) on each axis."""
    return [(low - 1.0, high - 1.0)] * 3
