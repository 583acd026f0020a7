"""Training-loop throughput: the real ``configs/train.json`` pipeline against the pure network step.

Run ``python -m benchmarks.pipeline`` (``--quick`` for a seconds-long smoke run). The data loader, the cached
deterministic preprocessing, the augmentation chain, the loss, gradient clipping and the optimizer all come from
``train.json`` (parsed with MONAI's ConfigParser); the "pure" step feeds one fixed batch so that only the network,
loss and optimizer run. The loop keeps up when ``pipeline rate / pure rate`` is near 1 (target >= 0.9): then data
loading and augmentation hide behind the network's compute.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from benchmarks.common import children_peak_rss_bytes, peak_rss_bytes, write_json
from monai.bundle import ConfigParser
from scripts.cpu_memory import keep_freed_memory
from scripts.demo.data import write_dataset

BUNDLE = Path(__file__).resolve().parents[1]


def parse_train_config(data_dir: Path, work_dir: Path, args: argparse.Namespace) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    parser.update(
        {
            "bundle_root": str(work_dir),
            "plan_file": str(BUNDLE / "configs" / "plan.json"),
            "dataset_dir": str(data_dir),
            "kn": args.kn,
            "patch_size": args.patch,
            "batch_size": args.batch,
            "num_workers": args.workers,
            "device": args.device,
            "keep_freed_memory": args.keep_freed_memory,
        }
    )
    return parser


def make_step(parser: ConfigParser):
    """One optimisation step as SupervisedTrainer does it: forward, DS loss, backward, clip to 12, SGD; under fp16
    autocast with loss scaling where the config turns AMP on (CUDA)."""
    network, loss_fn, optimizer = (parser.get_parsed_content(k) for k in ("network", "loss", "optimizer"))
    device = next(network.parameters()).device
    amp = bool(parser.get_parsed_content("amp")) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    network.train()

    def step(image: torch.Tensor, label: torch.Tensor) -> None:
        image, label = image.to(device), label.to(device)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=amp):
            loss = loss_fn(network(image), label)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(network.parameters(), 12.0)
        scaler.step(optimizer)
        scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize()  # time the step, not its queueing

    return step


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # tiny weights late in a run must not hit slow denormal arithmetic
    with tempfile.TemporaryDirectory() as tmp:
        data_dir, work_dir = Path(tmp) / "data", Path(tmp) / "work"
        sizes = {"inplane_range": (48, 56), "slices_range": (9, 12)} if args.quick else {}
        write_dataset(data_dir, num_cases=args.cases + 2, num_test=2, seed=0, **sizes)
        parser = parse_train_config(data_dir, work_dir, args)
        kept = keep_freed_memory(args.device, parser.get_parsed_content("keep_freed_memory"))  # as train_setup does
        loader = parser.get_parsed_content("train#dataloader")  # builds the cache (not timed)
        step = make_step(parser)

        batches = iter(_cycle(loader))
        fixed = next(batches)
        pure_batch = tuple(torch.as_tensor(fixed[key]).clone() for key in ("image", "label"))  # no MetaTensor
        step(*pure_batch)  # warm-up

        def data_only():
            next(batches)

        def pipeline():
            batch = next(batches)
            step(batch["image"], batch["label"])

        def pure():
            step(*pure_batch)

        pure_t, pipe_t, data_t = [], [], []
        for _ in range(args.repeats):  # alternate, so both see the same machine load
            pure_t += timed(pure, args.steps)
            pipe_t += timed(pipeline, args.steps)
            data_t += timed(data_only, args.steps)
        workers_peak = children_peak_rss_bytes()  # the persistent workers are still alive here
    pure_s, pipe_s, data_s = (statistics.median(t) for t in (pure_t, pipe_t, data_t))
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": args.device,
        "cpu": platform.processor() or platform.machine(),
        "threads": args.threads,
        "workers": args.workers,
        "torch": torch.__version__,
        "kn": args.kn,
        "patch": args.patch,
        "batch": args.batch,
        "pure_step_s": pure_s,
        "pipeline_step_s": pipe_s,
        "data_only_s": data_s,
        "pipeline_over_pure_rate": pure_s / pipe_s,
        "keep_freed_memory": kept,
        "peak_rss_main_mb": peak_rss_bytes() / 2**20,
        "peak_rss_largest_worker_mb": workers_peak / 2**20 if workers_peak is not None else None,
    }


def _cycle(loader):
    while True:
        yield from loader


def print_table(result: dict) -> None:
    print(f"\nTraining loop, {result['device']}, {result['threads']} threads, {result['workers']} workers, "
          f"kn={result['kn']}, batch {result['batch']} x {result['patch']}")  # fmt: skip
    print(f"{'work':<34}{'s/iter':>10}{'iter/s':>10}")
    for label, key in [("pure network step", "pure_step_s"), ("train.json pipeline", "pipeline_step_s"),
                       ("data loading + augmentation only", "data_only_s")]:  # fmt: skip
        print(f"{label:<34}{result[key]:>10.3f}{1 / result[key]:>10.2f}")
    print(f"pipeline rate / pure rate: {result['pipeline_over_pure_rate']:.2f} (target >= 0.90)")
    worker = result["peak_rss_largest_worker_mb"]
    worker_text = "-" if worker is None else f"{worker:.0f} MB"
    freed = "kept" if result["keep_freed_memory"] else "released"
    print(f"peak RSS: main {result['peak_rss_main_mb']:.0f} MB, largest worker {worker_text}, freed memory {freed}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (gpu_check.sh's steps are checked against it in tests)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--kn", type=json.loads, default=[32, 48, 64, 80, 96])
    p.add_argument("--patch", type=json.loads, default=[128, 128, 16])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--workers", type=int, default=None, help="data loader workers (2; 0 with --quick)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cases", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--keep_freed_memory", type=json.loads, default=True, help="true (as train.json) or false")
    p.add_argument("--quick", action="store_true", help="tiny data and network, for a smoke test")
    p.add_argument("--out", default=str(BUNDLE / "benchmarks" / "results" / "pipeline.json"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.quick:
        args.kn, args.patch, args.steps, args.repeats = [4, 4, 6, 6, 8], [48, 48, 8], 2, 1
        args.cases = 5
    if args.workers is None:
        args.workers = 0 if args.quick else 2
    result = run(args)
    print_table(result)
    write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
