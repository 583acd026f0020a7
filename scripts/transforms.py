"""Plan-driven pieces of the transform chains that a JSON config cannot express as a plain constructor call."""

from __future__ import annotations

import math

from monai.transforms import NormalizeIntensityd, RandCropByLabelClassesd, ScaleIntensityRanged
from monai.transforms.utils import map_classes_to_indices


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


class RandCropByLabelClassesOrRandomd(RandCropByLabelClassesd):
    """RandCropByLabelClassesd that also works on a case without any foreground (a healthy control).

    With ratios that exclude the background (nnU-Net's foreground oversampling), MONAI sets the ratio of every absent
    class to zero and then draws from ratios / sum(ratios) = 0 / 0: "probabilities contain NaN", hours into a run.
    When none of the wanted classes is present this crop falls back to a centre drawn from every class that is
    present (for an empty label: a random background voxel, i.e. a random crop).
    """

    def randomize(self, label, indices=None, image=None) -> None:
        cropper = self.cropper
        if indices is None:
            indices = map_classes_to_indices(
                label, cropper.num_classes, image, cropper.image_threshold, cropper.max_samples_per_class
            )
        original = cropper.ratios
        wanted = original if original is not None else [1] * len(indices)
        if any(r > 0 and len(i) > 0 for r, i in zip(wanted, indices)):
            cropper.randomize(label=label, indices=indices, image=image)
            return
        cropper.ratios = [1 if len(i) > 0 else 0 for i in indices]
        try:
            cropper.randomize(label=label, indices=indices, image=image)
        finally:
            cropper.ratios = original
