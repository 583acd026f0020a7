"""MNet: the 5x5 mesh of 2D and 3D conv blocks of Dong et al., IJCAI 2022, for anisotropic 3D segmentation.

The mesh is data (``topology.mesh_topology``) built from one node type, so the wiring reads in one place and the
state_dict reads like the paper: ``nodes.down11.block_2d.conv1.conv.weight``, ``heads.final.weight``. Tensors are
(N, C, *spatial); ``thick_axis`` (0, 1, 2 or -1) names the spatial axis with the thick slices, which gets the 1-wide
kernels of the 2D blocks and the conditional pooling. MONAI data after ``Orientationd("RAS")`` has the thick axis of
an axial scan last (the default); the authors' code assumes it first (``thick_axis=0``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.utils.checkpoint
from scripts.networks.blocks import ConvBlock, FeatureMerge, InstanceNormByGroupNorm, axis_kernel, instance_norm
from scripts.networks.inference_kernels import InferenceConv3d
from scripts.networks.options import MNetOptions
from scripts.networks.resampling import max_pool
from scripts.networks.slice_frame import ThickFirstConv3d, from_thick_first, to_thick_first
from scripts.networks.topology import NUM_LEVELS, NodeSpec, deep_supervision_sources, mesh_topology
from torch import nn

MIN_IN_PLANE = 16  # four in-plane poolings by 2
FINAL_HEAD = "final"  # the head on up14's 2D + 3D sum; the others are named after the node they read


class MeshNode(nn.Module):
    """One mesh module: merges its inputs, then runs a 2D and/or a 3D conv block on the merged tensor.

    Encoder nodes pool their inputs first (in-plane for the 2D stream; in 3D for the 3D stream while its thick-axis
    depth is >= min_z). Decoder nodes upsample (trilinear, to the skip's exact size) and concatenate
    [FMU(skip2d, skip3d), FMU(up2d, up3d)], skip first. Only the blocks of emitted streams exist; a stream that is not
    emitted is returned as an empty tensor.
    """

    def __init__(
        self,
        spec: NodeSpec,
        fmu: str,
        thick_axis: int,
        min_z: int,
        options: MNetOptions,
        conv_op: type[nn.Conv3d],
        norm_op,
    ):
        super().__init__()
        self.decoder = spec.decoder
        self.reads_image = spec.reads_image
        self.has_2d_input, self.has_3d_input = spec.src_2d is not None, spec.src_3d is not None
        self.src_2d, self.src_3d, self.skip = spec.src_2d or "", spec.src_3d or "", spec.skip or ""
        self.thick_dim = thick_axis + 2
        self.min_z = min_z
        self.pool_2d = list(axis_kernel(thick_axis, 1, 2))
        self.merge = FeatureMerge(fmu)
        self.checkpointing = options.checkpointing
        self.merge_first = options.merge_first
        self.fast = options.fast_inference
        blocks = {"conv_op": conv_op, "norm_op": norm_op, "thick_axis": thick_axis}
        if spec.emits_2d:
            self.block_2d = ConvBlock(spec.in_channels, spec.out_channels, "2d", **blocks)
        if spec.emits_3d:
            self.block_3d = ConvBlock(spec.in_channels, spec.out_channels, "3d", **blocks)

    def _pool_3d(self, x: torch.Tensor) -> torch.Tensor:
        kernel = [2, 2, 2] if x.shape[self.thick_dim] >= self.min_z else self.pool_2d
        return max_pool(x, kernel, self.fast)

    def _encoder_input(
        self, image: torch.Tensor, f2d: dict[str, torch.Tensor], f3d: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        if self.reads_image:
            return image
        if not self.has_2d_input:
            return self._pool_3d(f3d[self.src_3d])
        x2d = max_pool(f2d[self.src_2d], self.pool_2d, self.fast)
        if not self.has_3d_input:
            return x2d
        return self.merge(x2d, self._pool_3d(f3d[self.src_3d]))

    def _decoder_input(self, f2d: dict[str, torch.Tensor], f3d: dict[str, torch.Tensor]) -> torch.Tensor:
        skip_2d, skip_3d = f2d[self.skip], f3d[self.skip]
        size = list(skip_2d.shape[2:])
        up = self.merge.upsampled(f2d[self.src_2d], f3d[self.src_3d], size, self.merge_first, self.fast)
        return torch.cat([self.merge(skip_2d, skip_3d), up], dim=1)

    def forward(
        self, image: torch.Tensor, f2d: dict[str, torch.Tensor], f3d: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not torch.jit.is_scripting() and self.checkpointing and self.training and torch.is_grad_enabled():
            return self._checkpointed(image, f2d, f3d)
        return self._forward(image, f2d, f3d)

    @torch.jit.unused
    def _checkpointed(
        self, image: torch.Tensor, f2d: dict[str, torch.Tensor], f3d: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep only the node's outputs; its inner activations are recomputed in backward."""
        return torch.utils.checkpoint.checkpoint(self._forward, image, f2d, f3d, use_reentrant=False)

    def _forward(
        self, image: torch.Tensor, f2d: dict[str, torch.Tensor], f3d: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._decoder_input(f2d, f3d) if self.decoder else self._encoder_input(image, f2d, f3d)
        out_2d = out_3d = torch.empty(0, dtype=x.dtype, device=x.device)
        if hasattr(self, "block_2d"):
            out_2d = self.block_2d(x)
        if hasattr(self, "block_3d"):
            out_3d = self.block_3d(x)
        return out_2d, out_3d


class MNet(nn.Module):
    """MNet for anisotropic 3D segmentation, faithful to the authors' PyTorch implementation.

    Args:
        in_channels: image channels.
        out_channels: classes including background (outputs are logits, no softmax).
        kn: channels per level (5 values); smaller values give a reduced-width net of the same topology.
        fmu: feature merging unit, ``"sub"`` (|a-b|, the paper's default), ``"sum"`` or ``"cat"``.
        deep_supervision: in training mode return the 7 outputs (highest resolution first); in eval mode, or when
            False, return only the full-resolution logits.
        thick_axis: spatial axis (0, 1, 2, or negative) with the thick slices. Default -1: the last spatial axis, as
            MONAI arrays (H, W, D) of axial scans are after ``Orientationd("RAS")``.
        min_z: the 3D stream pools the thick axis only while its depth is >= min_z (8 in the reference).
        init: ``"default"`` (PyTorch's init, as the reference) or ``"he"`` (nnU-Net's He init, a=0.01).
        options: speed/memory choices (``MNetOptions``, e.g. ``MNetOptions.cpu()``); none changes the parameters.

    Input (N, in_channels, *spatial) of any size with in-plane sizes >= 16; output (N, out_channels, *spatial).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kn: Sequence[int] = (32, 48, 64, 80, 96),
        fmu: str = "sub",
        deep_supervision: bool = True,
        thick_axis: int = -1,
        min_z: int = 8,
        init: str = "default",
        options: MNetOptions | None = None,
    ):
        super().__init__()
        if not -3 <= thick_axis <= 2:
            raise ValueError(f"thick_axis must be a spatial axis in -3..2, got {thick_axis}")
        if init not in ("default", "he"):
            raise ValueError(f"init must be 'default' or 'he', got {init!r}")
        options = options or MNetOptions()
        if not isinstance(options, MNetOptions):
            raise TypeError(f"options must be an MNetOptions, got {type(options).__name__}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kn = [int(k) for k in kn]
        self.fmu = fmu
        self.deep_supervision = deep_supervision
        self.thick_axis = thick_axis % 3
        self.min_z = min_z
        self.options = options

        specs = mesh_topology(in_channels, self.kn, fmu)
        conv_op = InferenceConv3d if options.fast_inference else nn.Conv3d
        compute_axis = self.thick_axis  # the thick axis of the tensors inside the mesh
        if options.thick_first:
            conv_op = partial(ThickFirstConv3d, stored_axis=self.thick_axis, fast=options.fast_inference,
                              channels_last=options.channels_last)  # fmt: skip
            compute_axis = 0
        norm_op = (
            partial(InstanceNormByGroupNorm, fast_backward=options.fast_training)
            if options.group_norm
            else instance_norm
        )
        node = {"fmu": fmu, "thick_axis": compute_axis, "min_z": min_z, "options": options}
        self.nodes = nn.ModuleDict(
            {spec.name: MeshNode(spec, conv_op=conv_op, norm_op=norm_op, **node) for spec in specs}
        )
        self.final_node = specs[-1].name
        out_by_name = {spec.name: spec.out_channels for spec in specs}
        ds_sources = deep_supervision_sources()
        self.ds_reads_3d = {name: stream == "3d" for name, stream in ds_sources}
        heads = {FINAL_HEAD: out_by_name[self.final_node]} | {name: out_by_name[name] for name, _ in ds_sources}
        self.heads = nn.ModuleDict({name: nn.Conv3d(c, out_channels, 1, bias=False) for name, c in heads.items()})
        if init == "he":
            self.apply(_he_init)
        self.channels_last = options.channels_last
        self.thick_first = options.thick_first
        if self.channels_last:
            self.to(memory_format=torch.channels_last_3d)

    def check_input_size(self, spatial: Sequence[int]) -> None:
        """Raise a ValueError naming the axis that is too small (in-plane >= 16; > 1 voxel at the deepest node)."""
        for axis, size in enumerate(spatial):
            if axis != self.thick_axis and size < MIN_IN_PLANE:
                raise ValueError(
                    f"MNet input too small: in-plane spatial axis {axis} has size {size}, minimum is {MIN_IN_PLANE} "
                    f"(four 2x poolings); pad the image or use a larger patch"
                )
        depth = spatial[self.thick_axis]
        for _ in range(NUM_LEVELS - 1):
            depth = depth // 2 if depth >= self.min_z else depth
        deepest = depth
        for axis, size in enumerate(spatial):
            if axis != self.thick_axis:
                deepest *= size // 2 ** (NUM_LEVELS - 1)
        if deepest <= 1:
            raise ValueError(
                f"MNet input too small: spatial size {list(spatial)} leaves {deepest} voxel at the deepest node, "
                "instance norm needs more than 1; use at least 2 slices or in-plane sizes >= 32"
            )

    @torch.jit.unused
    def _validate(self, x: torch.Tensor) -> None:
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return
        if x.dim() != 5:
            raise ValueError(f"MNet expects a 5D tensor (N, C, *spatial), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"MNet expects {self.in_channels} input channel(s), got {x.shape[1]}")
        self.check_input_size(list(x.shape[2:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """(N, C_in, *S) -> logits (N, C_out, *S); in training mode with deep supervision, a list of 7 logits:
        full resolution, then per in-plane scale 1/2, 1/4, 1/8 the 3D-branch head and the 2D-branch head."""
        if not torch.jit.is_scripting():
            self._validate(x)
        # inference keeps the row-major layout: no gain measured, and the same kernels whatever the thread count
        layout_cl = self.channels_last and self.training
        if self.thick_first:
            x = to_thick_first(x, self.thick_axis, layout_cl)
        elif layout_cl:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        f2d: dict[str, torch.Tensor] = {}
        f3d: dict[str, torch.Tensor] = {}
        for name, node in self.nodes.items():
            f2d[name], f3d[name] = node(x, f2d, f3d)
        outputs: list[torch.Tensor] = []
        for name, head in self.heads.items():
            if name == "final":  # FINAL_HEAD (TorchScript reads no globals)
                outputs.append(self._output(head(f2d[self.final_node] + f3d[self.final_node])))
                if not (self.training and self.deep_supervision):
                    return outputs[0]
            else:
                outputs.append(self._output(head(f3d[name] if self.ds_reads_3d[name] else f2d[name])))
        return outputs

    def _output(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits in the caller's axis order: a view in training when the mesh computed with the thick axis first, a
        row-major copy in inference (what writers and exports expect; the logits are small)."""
        if not self.thick_first:
            return logits
        logits = from_thick_first(logits, self.thick_axis)
        return logits if self.training else logits.contiguous()


def _he_init(module: nn.Module) -> None:
    """nnU-Net's InitWeights_He: kaiming-normal (a=0.01) conv weights, zero conv biases."""
    if isinstance(module, nn.Conv3d):
        nn.init.kaiming_normal_(module.weight, a=0.01)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
