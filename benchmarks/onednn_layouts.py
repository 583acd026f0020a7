"""How much of oneDNN's CPU time goes to layout reorders rather than to convolutions.

Why: ``benchmarks.op_profile`` sees one ``mkldnn_convolution`` per convolution, but inside it oneDNN may copy the
input into its blocked layout (nCdhw16c), the weight into its own, and the output back. MNet runs many small
convolutions, so these copies weigh more for it than for DynUNet. Each model runs in its own subprocess with
``ONEDNN_VERBOSE=1`` (oneDNN then prints every primitive it executes with its time); after a warm-up, one inference
forward and one train step are parsed. Prints a markdown table and writes JSON (default
``benchmarks/results/onednn_layouts.json``). oneDNN times each primitive alone, but the process runs slower
while it prints, so compare models and shares of one run, not these times with the other benchmarks'.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
from collections import defaultdict

import torch
from benchmarks.common import header, write_json
from benchmarks.network import FULL_PATCH, QUICK_PATCH, VARIANTS, Runner, cpu_model

MARK = "=== onednn_layouts phase "


def run_child(name: str, patch: tuple[int, int, int], threads: int) -> None:
    """In the subprocess: warm up, then mark each measured phase on stdout, where oneDNN's lines go too."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    runner = Runner(name, torch.device("cpu"), patch)
    runner.train_step(), runner.infer(), runner.infer()
    for phase, fn in (("infer", runner.infer), ("train", runner.train_step)):
        print(MARK + phase, flush=True)
        fn()
    print(MARK + "end", flush=True)


def parse_verbose(text: str) -> dict:
    """{phase: {primitive kind: {"calls", "ms"}}} from oneDNN's ``primitive,exec`` lines between the marks."""
    phases: dict = {}
    phase = None
    for line in text.splitlines():
        if line.startswith(MARK):
            phase = line[len(MARK) :].strip()
            phase = None if phase == "end" else phase
            if phase:
                phases[phase] = defaultdict(lambda: {"calls": 0, "ms": 0.0})
            continue
        fields = line.split(",")
        if phase is None or len(fields) < 6 or fields[0] != "onednn_verbose" or "exec" not in fields[2:4]:
            continue
        kind = fields[fields.index("exec") + 2]  # onednn_verbose,v1,primitive,exec,cpu,<kind>,<implementation>,...
        entry = phases[phase][kind]
        entry["calls"] += 1
        entry["ms"] += float(fields[-1])
    rounded = {}
    for name, kinds in phases.items():
        rounded[name] = {kind: {"calls": v["calls"], "ms": round(v["ms"], 2)} for kind, v in kinds.items()}
    return rounded


def measure(name: str, patch: tuple[int, int, int], threads: int) -> dict:
    env = {**os.environ, "ONEDNN_VERBOSE": "1"}
    args = [sys.executable, "-m", "benchmarks.onednn_layouts", "--child", name, "--threads", str(threads), "--patch"]
    done = subprocess.run(args + [str(p) for p in patch], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{name}: the measuring subprocess failed: {done.stderr.strip().splitlines()[-1:]}")
    result = {}
    for phase, kinds in parse_verbose(done.stdout).items():
        total = sum(v["ms"] for v in kinds.values())
        share = round(kinds.get("reorder", {"ms": 0.0})["ms"] / total, 4) if total else None
        result[phase] = {"primitives": kinds, "reorder_share": share}
    return result


def format_table(report: dict) -> str:
    lines = ["| model | phase | convolution calls | convolution ms | reorder calls | reorder ms | reorder share |"]
    lines.append("|---" * 7 + "|")
    for name, phases in report["models"].items():
        for phase, result in phases.items():
            conv = result["primitives"].get("convolution", {"calls": 0, "ms": 0.0})
            reorder = result["primitives"].get("reorder", {"calls": 0, "ms": 0.0})
            share = result["reorder_share"]
            lines.append(
                f"| {name} | {phase} | {conv['calls']} | {conv['ms']:.1f} | {reorder['calls']} | {reorder['ms']:.1f} "
                f"| {'-' if share is None else f'{100 * share:.1f} %'} |"
            )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(VARIANTS), default=["dynunet", "mnet+cpu"])
    parser.add_argument("--quick", action="store_true", help=f"patch {QUICK_PATCH}, for a smoke test")
    parser.add_argument("--patch", type=int, nargs=3, help="override the patch (x y z), thick axis last")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/onednn_layouts.json")
    parser.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    patch = tuple(args.patch) if args.patch else (QUICK_PATCH if args.quick else FULL_PATCH)
    if args.child:
        run_child(args.child, patch, args.threads)
        return None
    report = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "device_name": cpu_model(),
        "threads": args.threads,
        "patch": list(patch),
        "models": {name: measure(name, patch, args.threads) for name in args.models},
    }
    print(header(report))
    print(format_table(report))
    write_json(report, args.out)
    return report


if __name__ == "__main__":
    main()
