"""Whole-volume inference through ``configs/inference.json``: seconds and peak memory, split into preprocessing,
sliding window and writing.

Run ``python -m benchmarks.inference`` (``--quick`` for a smoke run). A synthetic thick-slice CT (default
512x512x60 voxels at 0.8x0.8x5 mm on a GPU; a smaller volume on the CPU unless ``--shape`` says otherwise) is
written as NIfTI and segmented by the components that ``inference.json`` defines (dataset/preprocessing, the
sliding-window inferer over the prediction wrapper, postprocessing with inversion and the atomic NIfTI writer).
The sliding window runs ``1 + --repeats`` times: the first (cold: cuDNN autotuning, allocator growth) and the median
of the rest (warm: what every further case of a batch job or a MONAI Label click costs) are both reported. The
inversion to the input geometry is timed on its own: one interpolation of all class channels (what the config does)
against one interpolation per class (the "export slower than inference" pitfall).

``--cases N`` (N > 1) runs the whole ``evaluator`` of ``inference.json`` over N synthetic cases instead, once per
setting of ``--compare`` (data loader workers, background writes), each in a fresh process so that peak memory is
its own: cases per minute, the share of the wall time the sliding window (network) is busy, peak host memory (main
process and the largest data loader worker).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from benchmarks.common import peak_rss_bytes, write_json
from benchmarks.network import configure_cudnn
from monai.bundle import ConfigParser
from monai.data import decollate_batch, list_data_collate
from scripts.cpu_memory import keep_freed_memory

BUNDLE = Path(__file__).resolve().parents[1]


def write_volume(path: Path, shape: list[int], spacing: list[float], seed: int = 0) -> None:
    """A CT-like volume: air around a soft-tissue ellipse with a brighter blob, noise; thick axis last."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    body = (x / 0.85) ** 2 + (y / 0.65) ** 2 < 1
    organ = ((x - 0.3) / 0.3) ** 2 + ((y + 0.1) / 0.25) ** 2 < 1
    slice_ = np.where(body, 40.0, -1000.0) + np.where(organ, 80.0, 0.0)
    volume = np.repeat(slice_[:, :, None], shape[2], axis=2) + rng.normal(0, 15, shape)
    nib.save(nib.Nifti1Image(volume.astype(np.int16), np.diag([*spacing, 1.0])), str(path))


def parse_inference_config(image: Path, out_dir: Path, args: argparse.Namespace) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser.update(
        {
            "plan_file": str(BUNDLE / "configs" / "plan.json"),
            "datalist": [{"image": str(image)}],
            "output_dir": str(out_dir),
            "kn": args.kn,
            "device": args.device,
            "sw_batch_size": args.sw_batch_size,
            "amp_dtype": args.amp_dtype,
            "keep_freed_memory": args.keep_freed_memory,
            "load_pretrain": False,
        }
    )
    if args.patch:
        parser["patch_size"] = args.patch
    if args.sw_overlap is not None:
        parser["sw_overlap"] = args.sw_overlap
    return parser


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "ct.nii.gz"
        write_volume(image, args.shape, args.spacing)
        parser = parse_inference_config(image, Path(tmp) / "out", args)
        kept = keep_freed_memory(device, parser.get_parsed_content("keep_freed_memory"))  # as inference_setup does
        dataset, inferer, post = (parser.get_parsed_content(k) for k in ("dataset", "inferer", "postprocessing"))
        predictor = parser.get_parsed_content("predictor").eval()
        use_amp, amp_kwargs = parser.get_parsed_content("use_amp"), parser.get_parsed_content("amp_kwargs")
        conv_dtypes = record_conv_dtypes(parser.get_parsed_content("network"))

        start = time.perf_counter()
        batch = list_data_collate([dataset[0]])
        t_pre = time.perf_counter() - start

        windows: list[int] = []

        def counted(window_batch, *more, **kwargs):  # the windows the sliding window sends to the network
            windows.append(window_batch.shape[0])
            return predictor(window_batch, *more, **kwargs)

        sw_times = []
        for _ in range(1 + args.repeats):
            start = time.perf_counter()
            with torch.inference_mode(), evaluator_autocast(use_amp, amp_kwargs):
                batch["pred"] = inferer(batch["image"].to(device), counted)
            if device.type == "cuda":
                torch.cuda.synchronize()
            sw_times.append(time.perf_counter() - start)
        t_sw = sw_times[0]
        t_sw_warm = statistics.median(sw_times[1:]) if args.repeats else None

        t_invert, t_invert_per_class = time_inversion(batch, post)
        start = time.perf_counter()
        for item in decollate_batch(batch):
            post(item)
        t_post = time.perf_counter() - start
        written = sorted(p.name for p in (Path(tmp) / "out").glob("*.nii.gz"))
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "threads": args.threads,
        "torch": torch.__version__,
        "shape": args.shape,
        "spacing": args.spacing,
        "kn": args.kn,
        "patch": parser.get_parsed_content("patch_size"),
        "sw_batch_size": args.sw_batch_size,
        "sw_overlap": parser.get_parsed_content("sw_overlap"),
        "windows": sum(windows) // (1 + args.repeats),
        "amp": bool(use_amp),
        "amp_dtype": args.amp_dtype,
        "convolution_dtype": sorted(conv_dtypes),
        "keep_freed_memory": kept,
        "cudnn_benchmark": torch.backends.cudnn.benchmark if device.type == "cuda" else None,
        "preprocessing_s": t_pre,
        "sliding_window_s": t_sw,
        "sliding_window_times": sw_times,
        "sliding_window_warm_s": t_sw_warm,
        "postprocess_and_write_s": t_post,
        "invert_all_channels_s": t_invert,
        "invert_per_class_s": t_invert_per_class,
        "total_s": t_pre + t_sw + t_post,
        "total_warm_s": None if t_sw_warm is None else t_pre + t_sw_warm + t_post,
        "peak_rss_mb": peak_rss_bytes() / 2**20,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
        "written": written,
    }


def evaluator_autocast(use_amp: bool, amp_kwargs: dict):
    """The autocast MONAI's evaluator opens: CUDA's, when ``use_amp`` (CPU bf16 comes from the network's own
    autocast forward, ``scripts/cpu_autocast.py``). A plain ``torch.autocast("cpu")`` here would turn on bf16 that
    inference.json does not use."""
    return torch.autocast("cuda", **amp_kwargs) if use_amp else contextlib.nullcontext()


def record_conv_dtypes(network: torch.nn.Module) -> set[str]:
    """The dtypes the network's first convolution computes in, filled as it runs: what the sliding window measured."""
    seen: set[str] = set()
    first = next(m for m in network.modules() if isinstance(m, torch.nn.Conv3d))
    first.register_forward_hook(lambda module, args, output: seen.add(str(output.dtype).split(".")[-1]))
    return seen


def time_inversion(batch: dict, post) -> tuple[float, float]:
    """Seconds to invert the class probabilities to the input geometry: all channels in one interpolation (the
    config's Invertd) and, for comparison, one interpolation per class."""
    invert = next(t for t in post.transforms if type(t).__name__ == "Invertd")
    item = decollate_batch(batch)[0]
    item["pred"] = torch.softmax(item["pred"], 0)
    start = time.perf_counter()
    invert(dict(item))
    t_all = time.perf_counter() - start
    start = time.perf_counter()
    for c in range(item["pred"].shape[0]):
        invert({**item, "pred": item["pred"][c : c + 1]})
    return t_all, time.perf_counter() - start


class TimedInferer:
    """Wraps the evaluator's inferer: seconds spent in the sliding window (the network busy), synchronised on CUDA."""

    def __init__(self, inferer, device: torch.device):
        self.inferer, self.device, self.seconds = inferer, device, []

    def __call__(self, inputs, network, *args, **kwargs):
        start = time.perf_counter()
        out = self.inferer(inputs, network, *args, **kwargs)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.seconds.append(time.perf_counter() - start)
        return out


def run_cohort(args: argparse.Namespace, scans: Path, out_dir: Path) -> dict:
    """The inference evaluator over every scan in ``scans``, as ``monai.bundle run`` runs it (no data check)."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser.update({"plan_file": str(BUNDLE / "configs" / "plan.json"), "dataset_dir": str(scans),
                   "output_dir": str(out_dir), "kn": args.kn, "device": args.device,
                   "sw_batch_size": args.sw_batch_size, "amp_dtype": args.amp_dtype, "load_pretrain": False,
                   "num_workers": args.num_workers, "keep_freed_memory": args.keep_freed_memory,
                   "background_writes": args.background_writes})  # fmt: skip
    if args.patch:
        parser["patch_size"] = args.patch
    if args.sw_overlap is not None:
        parser["sw_overlap"] = args.sw_overlap
    keep_freed_memory(device, parser.get_parsed_content("keep_freed_memory"))  # as inference_setup does
    evaluator = parser.get_parsed_content("evaluator")
    timed = TimedInferer(evaluator.inferer, device)
    evaluator.inferer = timed
    start = time.perf_counter()
    evaluator.run()
    wall = time.perf_counter() - start
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
    return {
        "cases": len(timed.seconds),
        "num_workers": args.num_workers,
        "background_writes": args.background_writes,
        "wall_s": wall,
        "cases_per_min": 60 * len(timed.seconds) / wall,
        "network_busy_share": sum(timed.seconds) / wall,
        "sliding_window_s_per_case": timed.seconds,
        "peak_rss_main_mb": peak_rss_bytes() / 2**20,
        "peak_rss_largest_worker_mb": children / 2**20 if args.num_workers else None,
        "written": len(list(out_dir.glob("*_seg.nii.gz"))),
    }


def cohort(args: argparse.Namespace) -> dict:
    """One fresh process per (num_workers, background_writes) setting over the same synthetic cases."""
    settings = [tuple(json.loads(s)) for s in args.compare]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        scans = Path(tmp) / "scans"
        scans.mkdir()
        for i in range(args.cases):
            write_volume(scans / f"ct{i:03d}.nii.gz", args.shape, args.spacing, seed=i)
        for k, (workers, background) in enumerate(settings):  # a setting may repeat: its own output folder each
            out = Path(tmp) / f"result_{k}_{workers}_{background}.json"
            cmd = [sys.executable, "-m", "benchmarks.inference", "--_one_cohort", str(scans), "--out", str(out),
                   "--device", args.device, "--shape", json.dumps(args.shape), "--spacing", json.dumps(args.spacing),
                   "--kn", json.dumps(args.kn),
                   "--sw_batch_size", str(args.sw_batch_size), "--threads", str(args.threads),
                   "--amp_dtype", args.amp_dtype, "--keep_freed_memory", args.keep_freed_memory,
                   "--num_workers", str(workers), "--background_writes", str(background).lower()]  # fmt: skip
            if args.patch:
                cmd += ["--patch", json.dumps(args.patch)]
            if args.sw_overlap is not None:
                cmd += ["--sw_overlap", str(args.sw_overlap)]
            subprocess.run(cmd, check=True, cwd=BUNDLE, env={**os.environ, "PYTHONWARNINGS": "ignore"},
                           stdout=subprocess.DEVNULL)  # fmt: skip
            runs.append(json.loads(out.read_text()))
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": args.device,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_1_5_15_min_at_end": os.getloadavg(),  # the host was shared: how busy it was
        "threads": args.threads,
        "torch": torch.__version__,
        "shape": args.shape,
        "spacing": args.spacing,
        "kn": args.kn,
        "patch": args.patch,
        "sw_batch_size": args.sw_batch_size,
        "amp_dtype": args.amp_dtype,
        "runs": runs,
    }


def print_cohort(r: dict) -> None:
    print(f"\n{r['runs'][0]['cases']} cases of {r['shape']} at {r['spacing']} mm on {r['device']}, "
          f"{r['threads']} threads, kn={r['kn']}")  # fmt: skip
    print(f"{'workers':>8} {'background':>10} {'cases/min':>10} {'network busy':>13} {'peak RSS main':>14} "
          f"{'largest worker':>15}")  # fmt: skip
    for run in r["runs"]:
        worker = run["peak_rss_largest_worker_mb"]
        print(f"{run['num_workers']:>8} {str(run['background_writes']):>10} {run['cases_per_min']:>10.2f} "
              f"{run['network_busy_share']:>13.0%} {run['peak_rss_main_mb']:>11.0f} MB "
              f"{'-' if worker is None else f'{worker:.0f} MB':>15}")  # fmt: skip


def print_table(r: dict) -> None:
    print(f"\nWhole-volume inference, {r['device']}, {r['threads']} threads, volume {r['shape']} at {r['spacing']} mm, "
          f"kn={r['kn']}, roi {r['patch']}, {r['windows']} windows at overlap {r['sw_overlap']}, "
          f"sw_batch {r['sw_batch_size']}, CUDA AMP {r['amp']}, "
          f"convolutions in {'/'.join(r['convolution_dtype'])}")  # fmt: skip
    for label, key in [("preprocessing (load, RAS, resample, normalise)", "preprocessing_s"),
                       ("sliding window (first run)", "sliding_window_s"),
                       ("sliding window (warm, median of repeats)", "sliding_window_warm_s"),
                       ("softmax + invert + argmax + write", "postprocess_and_write_s"),
                       ("  of which: invert all channels at once", "invert_all_channels_s"),
                       ("  (for comparison: invert class by class)", "invert_per_class_s"),
                       ("total (first run)", "total_s"), ("total (warm)", "total_warm_s")]:  # fmt: skip
        if r[key] is not None:
            print(f"{label:<48}{r[key]:>9.2f} s")
    gpu = f", peak GPU {r['peak_gpu_mb']:.0f} MB" if r["peak_gpu_mb"] else ""
    print(f"peak RSS {r['peak_rss_mb']:.0f} MB{gpu}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (gpu_check.sh's steps are checked against it in tests)."""
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--shape", type=json.loads, default=[512, 512, 60] if cuda else [256, 256, 40])
    p.add_argument("--spacing", type=json.loads, default=[0.8, 0.8, 5.0], help="mm of the synthetic scans")
    p.add_argument("--kn", type=json.loads, default=[32, 48, 64, 80, 96])
    p.add_argument("--patch", type=json.loads, default=None, help="roi size; default: the plan's patch")
    p.add_argument("--sw_batch_size", type=int, default=4 if cuda else 1)
    p.add_argument("--sw_overlap", type=float, default=None, help="default: inference.json's (0.5)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--amp_dtype",
        default="float16",
        choices=["float16", "bfloat16"],
        help="inference.json's amp_dtype: float16 autocasts on CUDA only; bfloat16 also on a bf16 CPU",
    )
    p.add_argument("--keep_freed_memory", default="true", help="inference.json's keep_freed_memory (false: glibc's)")
    p.add_argument("--repeats", type=int, default=0 if not cuda else 3, help="warm sliding-window runs after the first")
    p.add_argument("--cudnn", default="benchmark", choices=["benchmark", "deterministic"], help="cuDNN mode on CUDA")
    p.add_argument("--quick", action="store_true", help="tiny volume and network, for a smoke test")
    p.add_argument("--cases", type=int, default=1, help="N > 1: run the inference evaluator over N cases")
    p.add_argument(
        "--compare",
        nargs="+",
        default=["[0,false]", "[2,false]", "[2,true]"],
        help="with --cases: [num_workers, background_writes] settings, one fresh process each",
    )
    p.add_argument("--num_workers", type=int, default=2, help=argparse.SUPPRESS)
    p.add_argument("--background_writes", default="true", help=argparse.SUPPRESS)
    p.add_argument("--_one_cohort", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(BUNDLE / "benchmarks" / "results" / "inference.json"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    args.background_writes = str(args.background_writes).lower() == "true"
    if args.quick:
        args.shape, args.kn, args.patch = [64, 64, 10], [4, 4, 6, 6, 8], [48, 48, 8]
    configure_cudnn(args.cudnn)
    if args._one_cohort:
        result = run_cohort(args, Path(args._one_cohort), Path(args.out).with_suffix(".out"))
    elif args.cases > 1:
        result = cohort(args)
        print_cohort(result)
    else:
        result = run(args)
        print_table(result)
    write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
