"""Forward + backward time of MNet's convolutions and norms in each memory layout that the speed levers use.

Why: MNet's train step is ~80 % convolution (forward and backward), so the layout oneDNN/cuDNN runs them in decides
most of the speed. Measured here, per convolution at the shapes of MNet's levels (batch 2, thick axis last):
the 2D block's (3,3,1) conv3d as PyTorch gets it, in ``channels_last_3d``, with the thick axis first, and as a
``conv2d`` over (batch x thick slices) on a zero-copy view of a thick-first ``channels_last_3d`` tensor; and the 3D
block's 3x3x3 conv3d contiguous and in ``channels_last_3d``. Best of ``--repeats`` after a warm-up.

    python -m benchmarks.conv_layouts [--device cpu|cuda] [--repeats 5] [--out benchmarks/results/conv_layouts.json]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import torch
import torch.nn.functional as F
from benchmarks.common import timed, write_json

# (channels, in-plane size, thick-axis depth) of MNet's first three levels at the 128x128x16 benchmark patch
LEVELS = [(32, 128, 16), (48, 64, 16), (64, 32, 8)]
LAYOUTS = ["conv3d_331", "conv3d_331_channels_last", "conv3d_133_thick_first", "conv2d_view", "conv3d_333",
           "conv3d_333_channels_last", "group_norm", "group_norm_channels_last", "instance_norm",
           "instance_norm_channels_last"]  # fmt: skip


@dataclass
class Case:
    """One layout of one convolution: ``conv(x, w, b, **kwargs)``."""

    conv: Callable[..., torch.Tensor]
    x: torch.Tensor
    w: torch.Tensor
    b: torch.Tensor
    kwargs: dict = field(default_factory=dict)

    def __call__(self) -> torch.Tensor:
        return self.conv(self.x, self.w, self.b, **self.kwargs)

    def forward_backward(self) -> None:
        for t in (self.x, self.w, self.b):
            t.grad = None
        self().sum().backward()


def _leaf(t: torch.Tensor, memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    return t.detach().contiguous(memory_format=memory_format).requires_grad_()


def level_cases(channels: int, size: int, depth: int, device: torch.device) -> dict[str, Case]:
    """One case per layout, every one computing the same convolution of the same data."""
    g = torch.Generator().manual_seed(0)
    n, cl3d = 2, torch.channels_last_3d
    x = torch.randn(n, channels, size, size, depth, generator=g).to(device)
    w331 = torch.randn(channels, channels, 3, 3, 1, generator=g).to(device)
    w333 = torch.randn(channels, channels, 3, 3, 3, generator=g).to(device)
    b = _leaf(torch.randn(channels, generator=g).to(device))
    x_first = x.permute(0, 1, 4, 2, 3)  # (N, C, D, H, W)
    w_first = w331.permute(0, 1, 4, 2, 3)
    x_view = _leaf(x_first, cl3d)  # physically (N, D, H, W, C): (N*D, C, H, W) is a channels_last view
    w2d = _leaf(w_first[:, :, 0], torch.channels_last)

    gamma = _leaf(torch.rand(channels, generator=g).to(device) + 0.5)

    def group_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, channels, w, b)

    def instance_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.instance_norm(x, weight=w, bias=b)

    def conv2d_view(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        flat = x.permute(0, 2, 1, 3, 4).reshape(n * depth, channels, size, size)
        return F.conv2d(flat, w, b, padding=1)

    return {
        "conv3d_331": Case(F.conv3d, _leaf(x), _leaf(w331), b, {"padding": (1, 1, 0)}),
        "conv3d_331_channels_last": Case(F.conv3d, _leaf(x, cl3d), _leaf(w331, cl3d), b, {"padding": (1, 1, 0)}),
        "conv3d_133_thick_first": Case(F.conv3d, _leaf(x_first), _leaf(w_first), b, {"padding": (0, 1, 1)}),
        "conv2d_view": Case(conv2d_view, x_view, w2d, b),
        "conv3d_333": Case(F.conv3d, _leaf(x), _leaf(w333), b, {"padding": 1}),
        "conv3d_333_channels_last": Case(F.conv3d, _leaf(x, cl3d), _leaf(w333, cl3d), b, {"padding": 1}),
        # the norm after each of those convolutions (affine, one group per channel): its CPU kernels differ by layout
        "group_norm": Case(group_norm, _leaf(x), gamma, b),
        "group_norm_channels_last": Case(group_norm, _leaf(x, cl3d), gamma, b),
        "instance_norm": Case(instance_norm, _leaf(x), gamma, b),
        "instance_norm_channels_last": Case(instance_norm, _leaf(x, cl3d), gamma, b),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--levels", type=int, default=len(LEVELS), help="how many of MNet's levels to measure")
    p.add_argument("--out", default="benchmarks/results/conv_layouts.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for channels, size, depth in LEVELS[: args.levels]:
        cases = level_cases(channels, size, depth, device)
        ms = {}
        for name in LAYOUTS:
            cases[name].forward_backward()  # warm-up: oneDNN/cuDNN pick and cache their kernels
            ms[name] = round(1000 * min(timed(cases[name].forward_backward, device) for _ in range(args.repeats)), 2)
        rows.append({"channels": channels, "shape": [2, channels, size, size, depth], "ms": ms})
    header = "| level (N, C, H, W, D) | " + " | ".join(LAYOUTS) + " |"
    print(f"{datetime.now().isoformat(timespec='seconds')}  torch {torch.__version__}  {device}  "
          f"{args.threads} threads  forward + backward, best of {args.repeats} (ms)")  # fmt: skip
    print(header)
    print("|" + "---|" * (len(LAYOUTS) + 1))
    for row in rows:
        print(f"| {tuple(row['shape'])} | " + " | ".join(f"{row['ms'][name]:.1f}" for name in LAYOUTS) + " |")
    result = {"date": datetime.now().isoformat(timespec="seconds"), "torch": torch.__version__,
              "device": str(device), "threads": args.threads, "repeats": args.repeats, "rows": rows}  # fmt: skip
    write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
