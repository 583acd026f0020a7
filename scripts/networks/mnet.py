"""MNet: the 5x5 mesh of 2D and 3D conv blocks of Dong et al., IJCAI 2022, for anisotropic 3D segmentation.

The mesh is described as data (``mesh_topology``) and built from two node types, so the wiring can be read in one
place. Tensors are (N, C, *spatial); ``thick_axis`` (0, 1, 2 or -1) names the spatial axis with the thick slices, which
gets the 1-wide kernels of the 2D blocks and the conditional pooling. MONAI data after ``Orientationd("RAS")`` has the
thick axis of an axial scan last (the default); the authors' code assumes it first (``thick_axis=0``).

Shapes for an input (N, C_in, H, W, D) with the thick axis last: the first output is (N, C_out, H, W, D); with deep
supervision in training mode seven outputs are returned, highest resolution first (see ``MNet.forward``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.utils.checkpoint
from torch import nn

from scripts.networks.blocks import ConvBlock, FeatureMerge, NoBlock, axis_kernel, fmu_channel_factor
from scripts.networks.inference_kernels import max_pool

NUM_LEVELS = 5
MIN_IN_PLANE = 16  # four in-plane poolings by 2
IMAGE = -2  # source index meaning "the network input"
NONE = -1  # source index meaning "no input on this stream"


@dataclass(frozen=True)
class NodeSpec:
    """One module of the mesh: where it sits, which streams it emits and which earlier nodes feed it."""

    name: str
    branch: int
    level: int
    decoder: bool
    emits_2d: bool
    emits_3d: bool
    # encoder: src_2d is pooled in-plane, src_3d is pooled in 3D (z only while depth >= min_z); both merged by FMU.
    # decoder: src_2d / src_3d are upsampled to the skip's size; src_skip is the encoder node at the same place.
    src_2d: int = NONE
    src_3d: int = NONE
    src_skip: int = NONE


def mesh_topology() -> list[NodeSpec]:
    """The 25 nodes in execution order (15 encoder nodes level by level, then 10 decoder nodes bottom-up).

    Branch b starts at level b. Encoder node (b, l) reads the 2D stream of (b, l-1) and the 3D stream of (b-1, l-1);
    decoder node (b, l) reads the 2D stream of (b, l+1), the 3D stream of (b+1, l+1) and both streams of the encoder
    node (b, l) as skip. Names follow the authors' code (down11 ... bottleneck5, up11 ... up41).
    """
    nodes: list[NodeSpec] = []
    enc: dict[tuple[int, int], int] = {}
    dec: dict[tuple[int, int], int] = {}
    for level in range(1, NUM_LEVELS + 1):
        for branch in range(1, level + 1):
            name = f"bottleneck{branch}" if level == NUM_LEVELS else f"down{branch}{level - branch + 1}"
            if (branch, level) == (1, 1):
                src_2d, src_3d = IMAGE, NONE
            elif branch == level:  # first node of a branch: 3D stream of the previous branch's first node
                src_2d, src_3d = NONE, enc[(branch - 1, level - 1)]
            else:
                src_2d = enc[(branch, level - 1)]
                src_3d = enc[(branch - 1, level - 1)] if branch > 1 else NONE
            enc[(branch, level)] = len(nodes)
            nodes.append(
                NodeSpec(
                    name,
                    branch,
                    level,
                    decoder=False,
                    emits_2d=branch < NUM_LEVELS,
                    emits_3d=(branch, level) != (1, NUM_LEVELS),
                    src_2d=src_2d,
                    src_3d=src_3d,
                )
            )
    for level in range(NUM_LEVELS - 1, 0, -1):
        for branch in range(1, level + 1):
            up_2d = enc[(branch, level + 1)] if level + 1 == NUM_LEVELS else dec[(branch, level + 1)]
            up_3d = enc[(branch + 1, level + 1)] if level + 1 == NUM_LEVELS else dec[(branch + 1, level + 1)]
            dec[(branch, level)] = len(nodes)
            nodes.append(
                NodeSpec(
                    f"up{branch}{NUM_LEVELS - level}",
                    branch,
                    level,
                    decoder=True,
                    emits_2d=branch == 1 or level > branch,
                    emits_3d=branch > 1 or level == 1,
                    src_2d=up_2d,
                    src_3d=up_3d,
                    src_skip=enc[(branch, level)],
                )
            )
    return nodes


def deep_supervision_sources(nodes: Sequence[NodeSpec]) -> list[tuple[int, str]]:
    """(node index, stream) of the six extra heads, ordered as the reference: per level 2..4, the 3D head of the
    branch's first decoder node (b = l), then the 2D head of branch 1."""
    index = {(n.branch, n.level, n.decoder): i for i, n in enumerate(nodes)}
    sources = []
    for level in range(2, NUM_LEVELS):
        sources.append((index[(level, level, True)], "3d"))
        sources.append((index[(1, level, True)], "2d"))
    return sources


class MeshNode(nn.Module):
    """One mesh module: merges its inputs, then runs a 2D and/or a 3D conv block on the merged tensor.

    Encoder nodes pool their inputs first (in-plane for the 2D stream; in 3D for the 3D stream while its thick-axis
    depth is >= min_z). Decoder nodes upsample (trilinear, to the skip's exact size) and concatenate
    [FMU(skip2d, skip3d), FMU(up2d, up3d)], skip first. A missing stream is returned as an empty tensor.

    ``split_decoder_conv`` feeds the two merged decoder inputs to the blocks separately (the first conv is split
    along its input channels) instead of concatenating them; ``skip_bias`` and ``group_norm`` are passed to the conv
    blocks (see ``ConvNormAct``); ``checkpointing`` recomputes the node's activations in backward. None of them
    changes the parameters.
    """

    def __init__(
        self,
        spec: NodeSpec,
        in_channels: int,
        out_channels: int,
        fmu: str,
        thick_axis: int,
        min_z: int,
        skip_bias: bool = False,
        group_norm: bool = False,
        split_decoder_conv: bool = False,
        checkpointing: bool = False,
        merge_first: bool = False,
        fast_inference: bool = False,
    ):
        super().__init__()
        self.checkpointing = checkpointing
        self.merge_first = merge_first
        self.fast_inference = fast_inference
        self.decoder = spec.decoder
        self.from_image = spec.src_2d == IMAGE
        self.has_2d_input, self.has_3d_input = spec.src_2d >= 0, spec.src_3d >= 0
        self.src_2d, self.src_3d, self.src_skip = spec.src_2d, spec.src_3d, spec.src_skip
        self.emits_2d, self.emits_3d = spec.emits_2d, spec.emits_3d
        self.thick_dim = thick_axis + 2
        self.min_z = min_z
        self.pool_2d = list(axis_kernel(thick_axis, 1, 2))
        self.merge = FeatureMerge(fmu)
        # concatenation is the only merge whose channel split is not known up front; keep it on the plain path
        self.split_decoder_conv = split_decoder_conv and spec.decoder and fmu != "cat"
        options = {
            "thick_axis": thick_axis,
            "skip_bias": skip_bias,
            "group_norm": group_norm,
            "fast_inference": fast_inference,
        }
        self.block_2d = ConvBlock(in_channels, out_channels, "2d", **options) if spec.emits_2d else NoBlock()
        self.block_3d = ConvBlock(in_channels, out_channels, "3d", **options) if spec.emits_3d else NoBlock()

    def _pool_3d(self, x: torch.Tensor) -> torch.Tensor:
        kernel = [2, 2, 2] if x.shape[self.thick_dim] >= self.min_z else self.pool_2d
        return max_pool(x, kernel, self.fast_inference)

    def _encoder_input(self, image: torch.Tensor, f2d: list[torch.Tensor], f3d: list[torch.Tensor]) -> torch.Tensor:
        if self.from_image:
            return image
        if not self.has_2d_input:
            return self._pool_3d(f3d[self.src_3d])
        x2d = max_pool(f2d[self.src_2d], self.pool_2d, self.fast_inference)
        if not self.has_3d_input:
            return x2d
        return self.merge(x2d, self._pool_3d(f3d[self.src_3d]))

    def _decoder_inputs(self, f2d: list[torch.Tensor], f3d: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The merged skip and the merged upsampled streams, in the order they are concatenated."""
        skip_2d, skip_3d = f2d[self.src_skip], f3d[self.src_skip]
        size = list(skip_2d.shape[2:])
        up = self.merge.upsampled(f2d[self.src_2d], f3d[self.src_3d], size, self.merge_first, self.fast_inference)
        return self.merge(skip_2d, skip_3d), up

    def forward(
        self, image: torch.Tensor, f2d: list[torch.Tensor], f3d: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not torch.jit.is_scripting() and self.checkpointing and self.training and torch.is_grad_enabled():
            return self._checkpointed(image, f2d, f3d)
        return self._forward(image, f2d, f3d)

    @torch.jit.unused
    def _checkpointed(
        self, image: torch.Tensor, f2d: list[torch.Tensor], f3d: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep only the node's outputs; its inner activations (pooled/merged inputs, conv and norm outputs) are
        recomputed in backward."""
        return torch.utils.checkpoint.checkpoint(self._forward, image, f2d, f3d, use_reentrant=False)

    def _forward(
        self, image: torch.Tensor, f2d: list[torch.Tensor], f3d: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x2: torch.Tensor | None = None
        if not self.decoder:
            x = self._encoder_input(image, f2d, f3d)
        elif self.split_decoder_conv:
            x, x2 = self._decoder_inputs(f2d, f3d)
        else:
            x = torch.cat(self._decoder_inputs(f2d, f3d), dim=1)
        empty = torch.empty(0, dtype=x.dtype, device=x.device)
        out_2d = self.block_2d(x, x2) if self.emits_2d else empty
        out_3d = self.block_3d(x, x2) if self.emits_3d else empty
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

    Speed and memory options; none changes the parameters or the state_dict, and all give the reference outputs up to
    float rounding (see docs/benchmarks.md for what each buys):

        skip_bias: do not add the conv biases that instance norm cancels (the Parameters stay, without gradient).
        group_norm: compute instance norm with the faster ``F.group_norm`` kernel (one group per channel).
        split_decoder_conv: decoder nodes convolve the merged skip and the merged upsampled streams separately and
            sum, instead of convolving their concatenation.
        checkpointing: in training, recompute each mesh node's activations in backward instead of storing them
            (``torch.utils.checkpoint``): much less memory for about one extra forward pass of time.
        merge_first: decoder nodes merge the two upsampled streams ("sub"/"sum") before the full-resolution
            interpolation, which then runs once instead of twice (exact: interpolation is linear).
        fast_inference: in CPU inference (autograd off), exact faster kernels (``inference_kernels.py``): x2 pooling
            and upsampling on strided views, and oneDNN for the batch-1 convolutions PyTorch runs on a slow kernel.

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
        skip_bias: bool = False,
        group_norm: bool = False,
        split_decoder_conv: bool = False,
        checkpointing: bool = False,
        merge_first: bool = False,
        fast_inference: bool = False,
    ):
        super().__init__()
        if len(kn) != NUM_LEVELS:
            raise ValueError(f"kn must give {NUM_LEVELS} channel counts, got {list(kn)}")
        if not -3 <= thick_axis <= 2:
            raise ValueError(f"thick_axis must be a spatial axis in -3..2, got {thick_axis}")
        if init not in ("default", "he"):
            raise ValueError(f"init must be 'default' or 'he', got {init!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kn = [int(k) for k in kn]
        self.fmu = fmu
        self.deep_supervision = deep_supervision
        self.thick_axis = thick_axis % 3
        self.min_z = min_z

        options = {
            "skip_bias": skip_bias,
            "group_norm": group_norm,
            "split_decoder_conv": split_decoder_conv,
            "checkpointing": checkpointing,
            "merge_first": merge_first,
            "fast_inference": fast_inference,
        }
        specs = mesh_topology()
        factor = fmu_channel_factor(fmu)
        nodes = []
        for spec in specs:
            k_out = self.kn[spec.level - 1]
            if spec.decoder:
                k_in = factor * (self.kn[spec.level - 1] + self.kn[spec.level])
            elif spec.src_2d == IMAGE:
                k_in = in_channels
            else:
                two_inputs = spec.src_2d != NONE and spec.src_3d != NONE
                k_in = self.kn[spec.level - 2] * (factor if two_inputs else 1)
            nodes.append(MeshNode(spec, k_in, k_out, fmu, self.thick_axis, min_z, **options))
        self.nodes = nn.ModuleList(nodes)
        self.node_names = [spec.name for spec in specs]

        ds_sources = deep_supervision_sources(specs)
        self.ds_nodes = [i for i, _ in ds_sources]
        self.ds_is_3d = [stream == "3d" for _, stream in ds_sources]
        head_channels = [self.kn[0]] + [self.kn[specs[i].level - 1] for i in self.ds_nodes]
        self.heads = nn.ModuleList([nn.Conv3d(c, out_channels, kernel_size=1, bias=False) for c in head_channels])
        if init == "he":
            self.apply(_he_init)

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
        f2d: list[torch.Tensor] = []
        f3d: list[torch.Tensor] = []
        for node in self.nodes:
            out_2d, out_3d = node(x, f2d, f3d)
            f2d.append(out_2d)
            f3d.append(out_3d)
        final = self.heads[0](f2d[-1] + f3d[-1])
        if not (self.training and self.deep_supervision):
            return final
        outputs = [final]
        for i, head in enumerate(self.heads):
            if i > 0:
                src = self.ds_nodes[i - 1]
                outputs.append(head(f3d[src] if self.ds_is_3d[i - 1] else f2d[src]))
        return outputs


def _he_init(module: nn.Module) -> None:
    """nnU-Net's InitWeights_He: kaiming-normal (a=0.01) conv weights, zero conv biases."""
    if isinstance(module, nn.Conv3d):
        nn.init.kaiming_normal_(module.weight, a=0.01)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
