"""The one prediction wrapper of validation, evaluation and inference: logits averaged over checkpoints (fold
ensemble) and mirrored inputs (TTA).

Every workflow predicts the same way (docs/configs.md, "How a prediction is made"): this wrapper averages *logits*
over members and flips, the Gaussian sliding window blends those logits, and only the blended whole volume goes
through softmax, inversion to the input geometry (one interpolation of all class channels) and argmax. nnU-Net v2
blends logits the same way. Softmax per window before blending gave another segmentation than validation did.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn


class LogitEnsemble(nn.Module):
    """Return class logits averaged over networks and mirror flips.

    ``network`` keeps whatever weights it has (the bundle's ``models/model.pt``); each path in ``checkpoints`` adds
    one more copy of it with those weights (plain state dicts, loaded with ``weights_only=True``). ``mirror_axes``
    are spatial axes (0..2) to flip, all 2^k combinations being averaged. With no checkpoints and no axes this is
    just ``network(x)`` in float32. The output is (N, classes, *spatial) logits; apply softmax after blending.
    """

    def __init__(self, network: nn.Module, checkpoints: Sequence[str] = (), mirror_axes: Sequence[int] = ()):
        super().__init__()
        members = [network]
        for path in checkpoints:
            member = copy.deepcopy(network)
            device = next(network.parameters()).device
            state = torch.load(path, map_location=device, weights_only=True)
            member.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
            members.append(member)
        self.members = nn.ModuleList(members)
        self.flips = _flip_combinations([int(a) for a in mirror_axes])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for member in self.members:
            for dims in self.flips:
                x_in = torch.flip(x, dims) if dims else x
                logits = member(x_in).float()
                logits = torch.flip(logits, dims) if dims else logits
                total = logits if total is None else total + logits
        return total / (len(self.members) * len(self.flips))


def _flip_combinations(axes: list[int]) -> list[list[int]]:
    """All subsets of the spatial axes as tensor dims (N, C come first), the empty subset (no flip) included."""
    combos: list[list[int]] = [[]]
    for axis in axes:
        combos += [c + [axis + 2] for c in combos]
    return combos
