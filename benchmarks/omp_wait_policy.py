"""Does ``OMP_WAIT_POLICY=PASSIVE`` help a plain ``python -m monai.bundle run training`` on a busy CPU host?

Run ``python -m benchmarks.omp_wait_policy`` (``--quick`` for a seconds-long smoke run). Each run is the bundle's own
training command at the demo's CPU sizing (kn 8..24, patch 64x64x16, batch 2, one epoch of ``--iterations``
iterations, no validation) on generated demo data, with and without ``OMP_WAIT_POLICY=PASSIVE`` in its environment
(OpenMP reads it when its runtime starts, so it has to be set before Python starts, not in a config), on an idle
host and while a ``nice -n 19`` busy loop (one Python ``while True``) runs beside it. The per-iteration time comes
from the timestamps of the training log's iteration lines (the first iteration, with its warm-up, is left out).
Configurations alternate (ABAB ...), so a change in the other load on a shared machine hits all of them alike.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from benchmarks.common import write_json
from scripts.demo.data import write_dataset

BUNDLE = Path(__file__).resolve().parents[1]
ITERATION = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*Epoch: \d+/\d+, Iter: (\d+)/\d+ -- train_loss")


def iteration_times(log: str) -> list[float]:
    """Seconds between consecutive training-iteration log lines (``logging.conf``'s asctime, millisecond steps)."""
    stamps = [
        datetime.datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f") for m in map(ITERATION.match, log.splitlines()) if m
    ]
    return [(b - a).total_seconds() for a, b in zip(stamps, stamps[1:])]


def train_command(work: Path, data: Path, args: argparse.Namespace) -> list[str]:
    return [
        sys.executable, "-m", "monai.bundle", "run", "training",
        "--config_file", "configs/train.json", "--meta_file", "configs/metadata.json",
        "--logging_file", "configs/logging.conf", "--bundle_root", str(work), "--dataset_dir", str(data),
        "--plan_file", "configs/plan.json",
        "--kn", str(args.kn).replace(" ", ""), "--patch_size", str(args.patch).replace(" ", ""),
        "--batch_size", "2", "--epochs", "1", "--iterations_per_epoch", str(args.iterations),
        "--val_interval", "100", "--num_workers", str(args.workers), "--check_data", "false",
    ]  # fmt: skip


def one_run(work: Path, data: Path, args: argparse.Namespace, policy: str | None, busy: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    loop = (
        subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", "while True: pass"]) if busy else None
    )  # fmt: skip
    timed_out = False
    try:
        start = time.perf_counter()
        try:
            done = subprocess.run(
                train_command(work, data, args), cwd=BUNDLE, env=env, capture_output=True, text=True,
                timeout=args.timeout,
            )  # fmt: skip
            log = done.stdout + done.stderr
            if done.returncode != 0:
                raise SystemExit(f"training failed ({done.returncode}):\n{log[-3000:]}")
        except subprocess.TimeoutExpired as stopped:  # the iterations logged so far still count
            timed_out = True
            log = "".join(_text(part) for part in (stopped.stdout, stopped.stderr))
        wall = time.perf_counter() - start
        load = os.getloadavg()[0]
    finally:
        if loop is not None:
            loop.kill()
            loop.wait()
    steps = iteration_times(log)
    return {
        "omp_wait_policy": policy or "unset",
        "busy_loop": busy,
        "timed_out": timed_out,
        "iteration_s": steps,
        "median_iteration_s": statistics.median(steps) if steps else None,
        "wall_s": round(wall, 2),
        "load_average_1min_at_end": round(load, 2),
    }


def _text(part: bytes | str | None) -> str:
    return part.decode(errors="replace") if isinstance(part, bytes) else (part or "")


def table(runs: list[dict]) -> str:
    lines = [
        "| host | OMP_WAIT_POLICY | runs | median s/iteration (per run) | wall s (per run) |",
        "|---|---|---|---|---|",
    ]
    for busy in (False, True):
        for policy in ("unset", "PASSIVE"):
            group = [r for r in runs if r["busy_loop"] == busy and r["omp_wait_policy"] == policy]
            if not group:
                continue
            per_run = ", ".join(
                "-" if r["median_iteration_s"] is None else f"{r['median_iteration_s']:.2f}" for r in group
            )
            walls = ", ".join(f"{r['wall_s']:.0f}" + (" (timed out)" if r["timed_out"] else "") for r in group)
            host = "busy loop beside" if busy else "no extra load"
            lines.append(f"| {host} | {policy} | {len(group)} | {per_run} | {walls} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = root / "data"
        write_dataset(data, **args.data)
        runs = []
        for repeat in range(args.repeats):
            for busy in args.busy:
                for policy in (None, "PASSIVE"):
                    work = root / f"work_{repeat}_{busy}_{policy}"
                    runs.append(one_run(work, data, args, policy, busy))
                    print(runs[-1], flush=True)
    return {
        "benchmark": "omp_wait_policy",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks.omp_wait_policy", *args.argv]),
        "host": {"cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                 "torch_threads_default": torch.get_num_threads()},  # fmt: skip
        "training": {"kn": args.kn, "patch_size": args.patch, "batch_size": 2, "iterations": args.iterations,
                     "num_workers": args.workers},  # fmt: skip
        "runs": runs,
        "table": table(runs),
    }


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--workers", type=int, default=1, help="data workers (the demo's CPU profile uses 1)")
    p.add_argument("--idle", action="store_true", help="also run without the busy loop")
    p.add_argument("--timeout", type=int, default=180, help="seconds per training run")
    p.add_argument("--quick", action="store_true", help="tiny data and network, for a smoke test")
    p.add_argument("--out", default=str(BUNDLE / "benchmarks" / "results" / "omp_wait_policy.json"))
    args = p.parse_args(argv)
    args.argv = argv
    args.busy = [False, True] if args.idle else [True]
    if args.quick:
        args.kn, args.patch, args.iterations, args.repeats, args.workers = [4, 4, 6, 6, 8], [32, 32, 8], 2, 1, 0
        args.data = {"num_cases": 6, "num_test": 1, "inplane_range": (32, 36), "slices_range": (8, 9)}
    else:
        args.kn, args.patch = [8, 12, 16, 20, 24], [64, 64, 16]
        args.data = {"num_cases": 6, "num_test": 1, "inplane_range": (72, 80), "slices_range": (16, 18)}
    result = run(args)
    print(result["table"])
    write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
