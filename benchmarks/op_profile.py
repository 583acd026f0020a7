"""Where a network's time goes: the top operators of one train step and one inference forward, and their share.

The network benchmark says how far MNet is from DynUNet; this says why. Each model of ``benchmarks.network`` is warmed
up, then one train step and one inference forward run under ``torch.profiler``. Operators are ranked by their own
(self) time, on the CPU or, with ``--device cuda``, on the GPU; each row gives calls, milliseconds and the share of
the phase's total, and every operator also falls into one coarse kind (convolution, norm, ...) so that two networks
can be compared kind by kind. Prints markdown tables and writes JSON (default ``benchmarks/results/op_profile.json``).
"""

from __future__ import annotations

import argparse
import datetime
import sys

import torch
from benchmarks.common import write_json
from benchmarks.network import FULL_PATCH, QUICK_PATCH, VARIANTS, Runner, cpu_model, resolve_device
from torch.profiler import ProfilerActivity, profile

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
    return {
        "total_ms": round(total_us / 1000, 1),
        "top": rows[:top],
        "kinds": {k: round(v, 4) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
        "convolution_calls": sum(r["calls"] for r in rows if r["kind"] == "convolution"),
    }


def run_profile(models: list[str], device: torch.device, patch: tuple[int, int, int], top: int) -> dict:
    report: dict = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "threads": torch.get_num_threads(),
        "patch": list(patch),
        "time": "GPU self time" if device.type == "cuda" else "CPU self time",
        "models": {},
    }
    for name in models:
        runner = Runner(name, device, patch)
        runner.train_step(), runner.infer()  # warm-up: first-call allocations, cuDNN autotuning, compilation
        report["models"][name] = {
            "train": profile_phase(runner.train_step, device, top),
            "infer": profile_phase(runner.infer, device, top),
        }
        print(f"{name}: profiled", file=sys.stderr, flush=True)  # progress
    return report


def format_tables(report: dict) -> str:
    lines = []
    kinds = [k for k, _ in KINDS] + ["other"]
    for phase in ("train", "infer"):
        names = list(report["models"])
        lines += [f"\n{phase}: share of {report['time']} by kind", "", "| kind | " + " | ".join(names) + " |"]
        lines.append("|" + "---|" * (len(names) + 1))
        lines.append("| total ms | " + " | ".join(f"{report['models'][n][phase]['total_ms']:.0f}" for n in names) + " |")
        for kind in kinds:
            cells = [f"{100 * report['models'][n][phase]['kinds'].get(kind, 0.0):.1f} %" for n in names]
            lines.append(f"| {kind} | " + " | ".join(cells) + " |")
        calls = [str(report["models"][n][phase]["convolution_calls"]) for n in names]
        lines.append("| convolution calls | " + " | ".join(calls) + " |")
        for name in names:
            lines += [f"\n{name}, {phase}: top operators", "", "| op | kind | calls | ms | share |", "|---|---|---|---|---|"]
            for row in report["models"][name][phase]["top"]:
                lines.append(
                    f"| {row['op']} | {row['kind']} | {row['calls']} | {row['ms']:.1f} | {100 * row['share']:.1f} % |"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--models", nargs="+", choices=list(VARIANTS), default=["dynunet", "mnet+cpu"])
    parser.add_argument("--quick", action="store_true", help=f"patch {QUICK_PATCH}, for a smoke test")
    parser.add_argument("--patch", type=int, nargs=3, help="override the patch (x y z), thick axis last")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=12, help="operators listed per model and phase")
    parser.add_argument("--out", default="benchmarks/results/op_profile.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    patch = tuple(args.patch) if args.patch else (QUICK_PATCH if args.quick else FULL_PATCH)
    report = run_profile(args.models, resolve_device(args.device), patch, args.top)
    print(f"{report['date']}  torch {report['torch']}  {report['device_name']}  {report['threads']} threads  "
          f"patch {report['patch']}")  # fmt: skip
    print(format_tables(report))
    write_json(report, args.out)
    return report


if __name__ == "__main__":
    main()
