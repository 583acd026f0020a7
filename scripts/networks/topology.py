"""The 5x5 mesh of MNet as data: 25 nodes, which streams each emits, which earlier nodes feed it, and its channels.

Branch b starts at level b. Encoder node (b, l) reads the 2D stream of (b, l-1), pooled in-plane, and the 3D stream
of (b-1, l-1), pooled in 3D, merged by the FMU; decoder node (b, l) reads the 2D stream of (b, l+1), the 3D stream of
(b+1, l+1) (both upsampled) and both streams of encoder node (b, l) as skip. Names follow the authors' code (down11 ...
bottleneck5, up11 ... up41); ../shared/reference/mnet-architecture.md section 2 has the tables this reproduces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

NUM_LEVELS = 5
FMU_MODES = ("sub", "sum", "cat")


@dataclass(frozen=True)
class NodeSpec:
    """One module of the mesh. Sources are node names; ``None`` means the stream has no input."""

    name: str
    branch: int
    level: int
    decoder: bool
    emits_2d: bool
    emits_3d: bool
    in_channels: int
    out_channels: int
    reads_image: bool = False  # down11: the network input, not pooled
    src_2d: str | None = None  # encoder: pooled in-plane; decoder: upsampled to the skip's size
    src_3d: str | None = None  # encoder: pooled in 3D while deep enough; decoder: upsampled
    skip: str | None = None  # decoder: the encoder node at the same place (both its streams)


def fmu_channel_factor(fmu: str) -> int:
    """How many times the input channels a merged tensor has (2 for concatenation, else 1)."""
    if fmu not in FMU_MODES:
        raise ValueError(f"fmu must be one of {FMU_MODES}, got {fmu!r}")
    return 2 if fmu == "cat" else 1


def encoder_name(branch: int, level: int) -> str:
    return f"bottleneck{branch}" if level == NUM_LEVELS else f"down{branch}{level - branch + 1}"


def decoder_name(branch: int, level: int) -> str:
    return f"up{branch}{NUM_LEVELS - level}"


def mesh_topology(in_channels: int = 1, kn: Sequence[int] = (32, 48, 64, 80, 96), fmu: str = "sub") -> list[NodeSpec]:
    """The 25 nodes in execution order: 15 encoder nodes level by level, then 10 decoder nodes bottom-up.

    Channels: encoder (b, l) maps K_{l-1} (times the FMU factor when it merges two inputs) to K_l, down11 maps the
    image channels to K_1; decoder (b, l) maps factor * (K_l + K_{l+1}) (merged skip + merged upsampled) to K_l.
    """
    if len(kn) != NUM_LEVELS:
        raise ValueError(f"kn must give {NUM_LEVELS} channel counts, got {list(kn)}")
    factor = fmu_channel_factor(fmu)
    k = [int(c) for c in kn]
    nodes: list[NodeSpec] = []
    for level in range(1, NUM_LEVELS + 1):
        for branch in range(1, level + 1):
            first_of_branch = branch == level
            src_2d = None if first_of_branch else encoder_name(branch, level - 1)
            src_3d = encoder_name(branch - 1, level - 1) if branch > 1 else None
            if level == 1:
                k_in = in_channels
            else:
                k_in = k[level - 2] * (factor if src_2d and src_3d else 1)
            nodes.append(
                NodeSpec(
                    encoder_name(branch, level),
                    branch,
                    level,
                    decoder=False,
                    emits_2d=branch < NUM_LEVELS,
                    emits_3d=(branch, level) != (1, NUM_LEVELS),
                    in_channels=k_in,
                    out_channels=k[level - 1],
                    reads_image=level == 1,
                    src_2d=src_2d,
                    src_3d=src_3d,
                )
            )
    for level in range(NUM_LEVELS - 1, 0, -1):
        for branch in range(1, level + 1):
            below = encoder_name if level + 1 == NUM_LEVELS else decoder_name
            nodes.append(
                NodeSpec(
                    decoder_name(branch, level),
                    branch,
                    level,
                    decoder=True,
                    emits_2d=branch == 1 or level > branch,
                    emits_3d=branch > 1 or level == 1,
                    in_channels=factor * (k[level - 1] + k[level]),
                    out_channels=k[level - 1],
                    src_2d=below(branch, level + 1),
                    src_3d=below(branch + 1, level + 1),
                    skip=encoder_name(branch, level),
                )
            )
    return nodes


def deep_supervision_sources() -> list[tuple[str, str]]:
    """(node name, stream) of the six extra heads, in the reference's order: per level 2..4, the 3D head of the
    branch's first decoder node (b = l), then the 2D head of branch 1."""
    sources = []
    for level in range(2, NUM_LEVELS):
        sources.append((decoder_name(level, level), "3d"))
        sources.append((decoder_name(1, level), "2d"))
    return sources
