"""Where a network's time goes: the top operators of one train step and one inference forward, and their share.

The network benchmark says how far MNet is from DynUNet; this says why. Each model of ``benchmarks.network`` is warmed
up, then one train step and one inference forward run under ``torch.profiler``. Operators are ranked by their own
(self) time, on the CPU or, with ``--device cuda``, on the GPU; each row gives calls, milliseconds and the share of
the phase's total, and every operator also falls into one coarse kind (convolution, norm, ...) so that two networks
can be compared kind by kind; the convolutions' FLOP rate (the network's forward FLOPs, x6 for a batch-2 train step,
over the convolutions' time) shows what many small convolutions cost against few large ones. Prints markdown
tables and writes JSON (default ``benchmarks/results/op_profile.json``).
"""

from __future__ import annotations

import argparse
import datetime
import sys

import torch
from benchmarks.common import header, write_json
from benchmarks.network import FULL_PATCH, QUICK_PATCH, VARIANTS, Runner, cpu_model, forward_gflop, resolve_device
from scripts.cpu_memory import keep_freed_memory
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

# (kind, substrings of an aten operator's name); the first kind that matches wins, the rest is "other"
KINDS: list[tuple[str, tuple[str, ...]]] = [
    ("convolution", ("conv", "mkldnn", "cudnn")),
    ("norm", ("norm",)),
    ("activation", ("leaky_relu", "relu", "softmax")),
    ("resampling", ("upsample", "interpolate", "pool", "grid_sampler")),
    ("copy and concatenation", ("copy", "cat", "clone", "contiguous", "permute", "to_copy", "stack", "index")),
    ("elementwise", ("add", "sub", "mul", "div", "abs", "sgn", "sign", "where", "fill", "zero", "neg")),
    ("reduction and loss", ("sum", "mean", "nll", "cross_entropy", "log_softmax", "max", "min")),
]


def kind_of(name: str) -> str:
    lowered = name.lower()
    for kind, parts in KINDS:
        if any(part in lowered for part in parts):
            return kind
    return "other"


class ConvolutionCounter(TorchDispatchMode):
    """Convolutions as the network asks for them (forward and backward), one per call: the profiler also lists the
    backend kernel each ``aten::convolution`` dispatches to, so its counts include every call twice or more."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += "conv" in func.__name__
        return func(*args, **(kwargs or {}))


def profile_phase(fn, device: torch.device, top: int) -> dict:
    """Self time of every operator in one call of ``fn``, ranked; shares are of the summed self time."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
    attribute = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, attribute, 0) > 0]
    total_us = sum(getattr(e, attribute) for e in events)
    ranked = sorted(events, key=lambda e: getattr(e, attribute), reverse=True)
    rows = [
        {
            "op": e.key,
            "kind": kind_of(e.key),
            "calls": e.count,
            "ms": round(getattr(e, attribute) / 1000, 2),
            "share": round(getattr(e, attribute) / total_us, 4),
        }
        for e in ranked
    ]
    kinds: dict[str, float] = {}
    for e in events:
        kinds[kind_of(e.key)] = kinds.get(kind_of(e.key), 0.0) + getattr(e, attribute) / total_us
    with ConvolutionCounter() as counter:
        fn()
    return {
        "total_ms": round(total_us / 1000, 1),
        "top": rows[:top],
        "kinds": {k: round(v, 4) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
        "convolution_calls": counter.calls,
    }


def run_profile(
    models: list[str], device: torch.device, patch: tuple[int, int, int], top: int, kn: tuple[int, ...] | None = None
) -> dict:
    report: dict = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "threads": torch.get_num_threads(),
        "patch": list(patch),
        "mnet_kn": list(kn) if kn else None,
        "time": "GPU self time" if device.type == "cuda" else "CPU self time",
        "models": {},
    }
    for name in models:
        runner = Runner(name, device, patch, kn=kn)
        runner.train_step(), runner.infer()  # warm-up: first-call allocations, cuDNN autotuning, compilation
        gflop = forward_gflop(name, patch, kn)
        phases = {phase: profile_phase(fn, device, top) for phase, fn in (("train", runner.train_step),
                                                                          ("infer", runner.infer))}  # fmt: skip
        # the rate the convolutions run at: the same FLOPs in more, smaller convolutions run slower
        for phase, work in (("train", 3 * 2 * gflop), ("infer", gflop)):  # train: batch 2, backward ~ 2x forward
            conv_s = phases[phase]["total_ms"] * phases[phase]["kinds"].get("convolution", 0.0) / 1000
            phases[phase]["convolution_gflops"] = round(work / conv_s, 1) if conv_s else None
        report["models"][name] = {"gflop_fwd": round(gflop, 1), **phases}
        print(f"{name}: profiled", file=sys.stderr, flush=True)  # progress
    return report


def _row(*cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def format_tables(report: dict) -> str:
    lines = []
    names = list(report["models"])
    for phase in ("train", "infer"):
        results = [report["models"][n][phase] for n in names]
        lines += [f"\n{phase}: share of {report['time']} by kind", "", _row("kind", *names)]
        lines.append("|---" * (len(names) + 1) + "|")
        lines.append(_row("total ms", *(f"{r['total_ms']:.0f}" for r in results)))
        for kind in [k for k, _ in KINDS] + ["other"]:
            lines.append(_row(kind, *(f"{100 * r['kinds'].get(kind, 0.0):.1f} %" for r in results)))
        lines.append(_row("convolution calls", *(r["convolution_calls"] for r in results)))
        lines.append(_row("convolution GFLOP/s", *(r["convolution_gflops"] for r in results)))
        for name, result in zip(names, results):
            lines += [f"\n{name}, {phase}: top operators", "", _row("op", "kind", "calls", "ms", "share")]
            lines.append("|---" * 5 + "|")
            for op in result["top"]:
                lines.append(_row(op["op"], op["kind"], op["calls"], f"{op['ms']:.1f}", f"{100 * op['share']:.1f} %"))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--models", nargs="+", choices=list(VARIANTS), default=["dynunet", "mnet+cpu"])
    parser.add_argument("--quick", action="store_true", help=f"patch {QUICK_PATCH}, for a smoke test")
    parser.add_argument("--patch", type=int, nargs=3, help="override the patch (x y z), thick axis last")
    parser.add_argument("--kn", type=int, nargs=5, help="MNet's five widths (default the paper's 32 48 64 80 96)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=12, help="operators listed per model and phase")
    parser.add_argument("--out", default="benchmarks/results/op_profile.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    patch = tuple(args.patch) if args.patch else (QUICK_PATCH if args.quick else FULL_PATCH)
    device = resolve_device(args.device)
    keep_freed_memory(device)  # as the configs and benchmarks.network: no page faults of fresh memory in the profile
    report = run_profile(args.models, device, patch, args.top, tuple(args.kn) if args.kn else None)
    print(header(report))
    print(format_tables(report))
    write_json(report, args.out)
    return report


if __name__ == "__main__":
    main()
