"""The one prediction wrapper of validation, evaluation and inference: logits averaged over checkpoints (fold
ensemble) and mirrored inputs (TTA).

Every workflow predicts the same way (docs/configs.md, "How a prediction is made"): this wrapper averages *logits*
over members and flips, the Gaussian sliding window blends those logits, and only the blended whole volume goes
through softmax, inversion to the input geometry (one interpolation of all class channels) and argmax. nnU-Net v2
blends logits the same way. Softmax per window before blending gave another segmentation than validation did.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from scripts import checkpoints as _checkpoints
from scripts.errors import BundleInputError
from torch import nn


class LogitEnsemble(nn.Module):
    """Return class logits averaged over networks and mirror flips.

    ``network`` keeps whatever weights it has (the bundle's ``models/model.pt``); each path in ``checkpoints`` adds
    one more copy of it with those weights (plain state dicts, validated by scripts.checkpoints.model_state: a missing,
    truncated or other-width file, a training checkpoint or, with ``plan``, a model of another plan is one line before
    any case is read; fold k's model is ``models/fold_k/model.pt``). ``mirror_axes``
    are spatial axes (0..2) to flip, all 2^k combinations being averaged. With no checkpoints and no axes this is
    just ``network(x)`` in float32. The output is (N, classes, *spatial) logits; apply softmax after blending.
    """

    def __init__(
        self,
        network: nn.Module,
        checkpoints: Sequence[str] = (),
        mirror_axes: Sequence[int] = (),
        plan: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        members = [network]
        device = next(network.parameters()).device
        for path in _paths(checkpoints):
            member = copy.deepcopy(network)
            member.load_state_dict(_checkpoints.model_state(path, network, plan, map_location=device))
            members.append(member)
        self.members = nn.ModuleList(members)
        self.flips = _flip_combinations(_spatial_axes(mirror_axes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for member in self.members:
            for dims in self.flips:
                x_in = torch.flip(x, dims) if dims else x
                logits = member(x_in).float()
                logits = torch.flip(logits, dims) if dims else logits
                total = logits if total is None else total + logits
        return total / (len(self.members) * len(self.flips))


def _spatial_axes(mirror_axes: Sequence[Any]) -> list[int]:
    """Mirror axes as given by the user: spatial 0..2 only (-1 would flip the class axis of the logits)."""
    if isinstance(mirror_axes, (str, bytes)) or not all(isinstance(a, int) and 0 <= a <= 2 for a in mirror_axes):
        raise BundleInputError(f"--tta_mirror_axes: spatial axes 0, 1, 2 only, got {mirror_axes!r}")
    return [int(a) for a in mirror_axes]


def _flip_combinations(axes: list[int]) -> list[list[int]]:
    """All subsets of the spatial axes as tensor dims (N, C come first), the empty subset (no flip) included."""
    combos: list[list[int]] = [[]]
    for axis in axes:
        combos += [c + [axis + 2] for c in combos]
    return combos


def _paths(value: Any) -> list[str]:
    """``ensemble_checkpoints`` must be a list of paths; a bare string (``--ensemble_checkpoints a.pt``) would be
    iterated character by character."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise BundleInputError(
            f"--ensemble_checkpoints: expected a list of model files, e.g. "
            f"\"['models/fold_1/model.pt']\", got {value!r}"
        )
    bad = [p for p in value if not isinstance(p, str) or not p]
    if bad:
        raise BundleInputError(f"--ensemble_checkpoints: every entry must be a file path, got {bad[0]!r}")
    return list(value)
