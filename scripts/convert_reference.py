"""Turn a checkpoint of the authors' MNet (github.com/zfdong-code/MNet, nnU-Net v1 trainer) into this bundle's weights.

People who trained MNet with the authors' code can serve it through this bundle. Their keys are
``<node>.CB2d|CB3d.conv1|conv2.conv|norm.weight|bias`` and ``outputs.<i>.weight``; ours are
``nodes.<node>.block_2d|block_3d...`` and ``heads.<final|node>.weight``. Their arrays are nnU-Net v1's (z, y, x) with
the thick axis first; ours are MONAI's (x, y, z) after ``Orientationd("RAS")``, so every kernel is transposed to
match (``--thick_axis`` says where the thick axis is in this bundle, default last). The result is loaded strictly
into an ``MNet`` of the widths the checkpoint has, so any missing, extra or misshapen key is an error naming it.

Usage: ``python -m scripts.convert_reference --checkpoint model_final_checkpoint.model --out models/model.pt``
"""

from __future__ import annotations

import os
import re
import sys

import fire
import torch
from scripts.atomic import atomic_path
from scripts.checkpoints import refuse_nonfinite
from scripts.errors import BundleInputError, install_excepthook
from scripts.networks.mnet import MNet
from scripts.networks.topology import NUM_LEVELS, deep_supervision_sources, encoder_name

BLOCKS = {"CB2d": "block_2d", "CB3d": "block_3d"}
NODE_KEY = re.compile(r"^(?P<node>\w+?)\.(?P<block>CB2d|CB3d)\.(?P<rest>conv[12]\.(conv|norm)\.(weight|bias))$")
HEAD_KEY = re.compile(r"^outputs\.(?P<index>\d)\.weight$")


def head_names() -> list[str]:
    """Our head names in the authors' ``outputs`` order: the full-resolution head, then deep supervision."""
    return ["final"] + [name for name, _ in deep_supervision_sources()]


def kernel_permutation(thick_axis: int) -> tuple[int, ...]:
    """Axes of an authors' (out, in, z, y, x) kernel in this bundle's spatial order with the thick axis at
    ``thick_axis``: the in-plane axes in (x, y) order, as MONAI's arrays are."""
    spatial = [4, 3]  # x, y of the authors' (z, y, x)
    spatial.insert(thick_axis % 3, 2)
    return (0, 1, *spatial)


def from_reference(state: dict[str, torch.Tensor], thick_axis: int = -1) -> dict[str, torch.Tensor]:
    """The authors' state_dict (a DDP ``module.`` prefix is dropped) renamed and transposed into ours."""
    perm = kernel_permutation(thick_axis)
    heads = head_names()
    converted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        node, head = NODE_KEY.match(key), HEAD_KEY.match(key)
        if node:
            new = f"nodes.{node['node']}.{BLOCKS[node['block']]}.{node['rest']}"
        elif head and int(head["index"]) < len(heads):
            new = f"heads.{heads[int(head['index'])]}.weight"
        else:
            raise BundleInputError(f"{key}: not a key of the authors' MNet (expected <node>.CB2d/CB3d... or outputs.i)")
        converted[new] = value.permute(*perm) if value.dim() == 5 else value
    return converted


def to_reference(state: dict[str, torch.Tensor], thick_axis: int = -1) -> dict[str, torch.Tensor]:
    """Ours back to the authors' layout (the inverse of ``from_reference``)."""
    perm = kernel_permutation(thick_axis)
    inverse = tuple(perm.index(axis) for axis in range(5))
    heads = {name: i for i, name in enumerate(head_names())}
    blocks = {ours: theirs for theirs, ours in BLOCKS.items()}
    converted = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "nodes":
            new = ".".join([parts[1], blocks[parts[2]], *parts[3:]])
        else:
            new = f"outputs.{heads[parts[1]]}.weight"
        converted[new] = value.permute(*inverse) if value.dim() == 5 else value
    return converted


def network_for(state: dict[str, torch.Tensor], fmu: str = "sub", thick_axis: int = -1) -> MNet:
    """An MNet with the channel widths a converted state_dict has (``sum`` and ``sub`` have the same shapes)."""
    try:
        first = state["nodes.down11.block_2d.conv1.conv.weight"]
        final = state["heads.final.weight"]
        branch_1 = [encoder_name(1, level) for level in range(1, NUM_LEVELS + 1)]
        kn = [state[f"nodes.{name}.block_2d.conv1.conv.weight"].shape[0] for name in branch_1]
    except KeyError as missing:
        raise BundleInputError(f"checkpoint: the authors' key for {missing} is missing; is this an MNet?") from None
    return MNet(first.shape[1], final.shape[0], kn=kn, fmu=fmu, thick_axis=thick_axis)


def read_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of an nnU-Net v1 checkpoint (or a bare state_dict), read with ``weights_only=True`` only
    (a full pickle can run code when it is loaded)."""
    if not os.path.isfile(path):
        raise BundleInputError(f"{path}: checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        hint = (
            "; nnU-Net v1 also pickles numpy plotting data: from a file you trust, save only its weights first with "
            "torch.save(torch.load(f, weights_only=False)['state_dict'], 'weights.pt')"
        )
        raise BundleInputError(f"{path}: cannot read the checkpoint ({type(error).__name__}){hint}") from None
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BundleInputError(f"{path}: no state_dict of tensors in the checkpoint")
    refuse_nonfinite(path, state, "convert a checkpoint from before the divergence")
    return state


def convert(checkpoint: str, out: str = "models/model.pt", fmu: str = "sub", thick_axis: int = -1) -> str:
    """Read, convert, load strictly into an MNet of the checkpoint's widths, and write ``out`` atomically."""
    state = from_reference(read_checkpoint(checkpoint), thick_axis)
    net = network_for(state, fmu, thick_axis)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as error:
        problem = " ".join(str(error).split())
        raise BundleInputError(f"{checkpoint}: does not fit MNet{tuple(net.kn)}: {problem}") from None
    if os.path.abspath(out) == os.path.abspath(checkpoint):
        raise BundleInputError(f"{out}: the output would overwrite the checkpoint it is converted from")
    with atomic_path(out, suffix=".pt") as tmp:
        torch.save(net.state_dict(), tmp)
    print(f"wrote {out}: MNet in={net.in_channels} out={net.out_channels} kn={net.kn} fmu={fmu}", file=sys.stderr)
    return out


if __name__ == "__main__":
    install_excepthook()
    fire.Fire(convert)
