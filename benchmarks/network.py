"""Speed and memory of MNet (plain and with its fast-path options) against MONAI's DynUNet with nnU-Net's topology.

Run ``python -m benchmarks.network`` (or ``make bench``). All models are measured in ONE process, alternating models
within each repeat, and the median of the repeats after a warm-up is reported, because the CPU is shared and noisy:
compare ratios measured in the same run, not absolute times across runs. Peak memory is measured per model in a
fresh subprocess (``--measure-memory NAME``) so that one model's allocations cannot hide another's.

Work measured (3 classes): a train step (batch 2, forward + deep-supervision cross-entropy + backward + SGD step) and
an inference forward (batch 1, eval, ``torch.inference_mode``). On CUDA, both run under autocast (AMP, fp16 by
default, ``--amp-dtype bfloat16`` for bf16) with ``cudnn.benchmark`` on (``--cudnn deterministic`` for the
deterministic kernels that ``monai.utils.set_determinism`` selects). On the CPU they run in float32;
``--amp-dtype bfloat16`` runs both under CPU autocast (what ``--amp_dtype bfloat16`` does in the configs). On the
CPU freed memory stays in the process, as the configs' ``keep_freed_memory`` does (``--freed-memory release``:
glibc's default).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from benchmarks.common import header, peak_rss_bytes, timed, write_json
from scripts.cpu_memory import keep_freed_memory, release_freed_memory
from scripts.networks.mnet import MNet
from scripts.networks.options import MNetOptions
from scripts.runtime import configure
from torch import nn

NUM_CLASSES = 3
FULL_PATCH = (128, 128, 16)  # (x, y, z): MONAI layout, thick axis last; the reference's 16x128x128
QUICK_PATCH = (64, 64, 8)
MNET_DS_WEIGHTS = (1, 0.5, 0.5, 0.25, 0.25, 0.125, 0.125)  # the reference trainer's, normalised below
CPU = asdict(MNetOptions.cpu())  # what the configs' `speed_preset` picks on the CPU in float32

# name -> (MNetOptions fields or None for DynUNet, use torch.compile); the layout is the options' `channels_last`
VARIANTS: dict[str, tuple[dict | None, bool]] = {
    "dynunet": (None, False),
    "mnet": ({}, False),
    "mnet+channels_last": ({"channels_last": True}, False),  # the GPU's layout lever alone
    "mnet+group_norm": ({"group_norm": True}, False),
    "mnet+group_norm+channels_last": ({"group_norm": True, "channels_last": True}, False),
    "mnet+merge_first": ({"merge_first": True}, False),
    "mnet+cpu": (CPU, False),
    "mnet+cpu-channels_last": ({**CPU, "channels_last": False}, False),  # the row-major preset (until 2026-12-04)
    "mnet+cpu-fast_training": ({**CPU, "fast_training": False}, False),  # PyTorch's channels_last norm backward
    "mnet+cpu+thick_first": ({**CPU, "thick_first": True}, False),  # noise level: opt-in
    "mnet+channels_last+thick_first": ({"channels_last": True, "thick_first": True}, False),  # the GPU lever
    "mnet+checkpointing": ({"checkpointing": True}, False),
    "mnet+group_norm+checkpointing": ({"group_norm": True, "checkpointing": True}, False),
    "mnet+compile": ({}, True),
    "mnet+cpu+compile": (CPU, True),
}
# the peer, the reference path, the configs' CPU settings step by step, and the memory option
DEFAULT_MODELS = ["dynunet", "mnet", "mnet+group_norm", "mnet+cpu", "mnet+group_norm+checkpointing"]


def build_dynunet() -> nn.Module:
    """MONAI DynUNet with nnU-Net's topology for 5x0.8x0.8 mm (as in mnet-architecture.md section 5.3), with the
    z-first kernels/strides permuted to MONAI's (x, y, z) layout so both nets take the same tensor."""
    from monai.networks.nets import DynUNet

    strides = [(1, 1, 1), (2, 2, 1), (2, 2, 1), (2, 2, 2), (2, 2, 2), (2, 2, 1)]
    return DynUNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=NUM_CLASSES,
        kernel_size=[(3, 3, 1), (3, 3, 1)] + [(3, 3, 3)] * 4,
        strides=strides,
        upsample_kernel_size=strides[1:],
        filters=[32, 64, 128, 256, 320, 320],
        norm_name=("INSTANCE", {"affine": True}),
        act_name=("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
        deep_supervision=True,
        deep_supr_num=4,  # DynUNet allows at most len(strides) - 2 = 4
        res_block=False,
    )


def build(name: str, kn: tuple[int, ...] | None = None) -> nn.Module:
    """The uncompiled model of a variant, on CPU, in float32; ``kn``: MNet's widths (default the paper's)."""
    options = VARIANTS[name][0]
    if options is None:
        return build_dynunet()
    widths = {"kn": tuple(kn)} if kn else {}
    return MNet(1, NUM_CLASSES, options=MNetOptions(**options), **widths)


def split_outputs(outputs: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
    """Training outputs as a list, highest resolution first (DynUNet stacks its heads along dim 1)."""
    if isinstance(outputs, (list, tuple)):
        return list(outputs)
    return list(torch.unbind(outputs, dim=1)) if outputs.dim() == 6 else [outputs]


def ds_loss(outputs: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on every output against the target resized to it (nearest), with normalised weights: the
    reference trainer's for MNet's 7 outputs, nnU-Net's halving weights otherwise."""
    raw = MNET_DS_WEIGHTS if len(outputs) == len(MNET_DS_WEIGHTS) else [0.5**i for i in range(len(outputs))]
    total = sum(raw)
    loss = outputs[0].new_zeros(())
    for weight, out in zip(raw, outputs):
        resized = F.interpolate(target, size=out.shape[2:], mode="nearest")[:, 0].long()
        loss = loss + weight / total * F.cross_entropy(out.float(), resized)
    return loss


class Runner:
    """One variant ready to run: model, optimizer, fixed inputs, and its train step / inference callables."""

    def __init__(
        self,
        name: str,
        device: torch.device,
        patch: tuple[int, int, int],
        amp_dtype: torch.dtype = torch.float16,
        kn: tuple[int, ...] | None = None,
    ):
        _, compile_it = VARIANTS[name]
        self.name, self.device = name, device
        self.base = build(name, kn).to(device)
        self.model = torch.compile(self.base) if compile_it else self.base
        self.optimizer = torch.optim.SGD(self.base.parameters(), lr=1e-3, momentum=0.99, nesterov=True)
        generator = torch.Generator().manual_seed(0)
        self.x_train = torch.randn(2, 1, *patch, generator=generator).to(device)
        self.x_infer = torch.randn(1, 1, *patch, generator=generator).to(device)
        self.target = torch.randint(0, NUM_CLASSES, (2, 1, *patch), generator=generator).float().to(device)
        # CUDA: fp16 or bf16 autocast; the CPU: bf16 autocast only when asked (no fast fp16 CPU kernels)
        self.amp = amp_dtype == torch.bfloat16 or (device.type == "cuda" and amp_dtype == torch.float16)
        self.amp_dtype = amp_dtype
        # bf16 has fp32's exponent range: no loss scaling needed
        self.scaler = torch.amp.GradScaler("cuda") if self.amp and amp_dtype == torch.float16 else None

    def train_step(self) -> None:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            loss = ds_loss(split_outputs(self.model(self.x_train)), self.target)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()

    def infer(self) -> None:
        self.model.eval()
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            self.model(self.x_infer)


def forward_gflop(name: str, patch: tuple[int, int, int], kn: tuple[int, ...] | None = None) -> float:
    """Forward GFLOP of a batch-1 eval forward (torch's FlopCounterMode: convolutions and matmuls, 2 FLOP per MAC),
    counted on the meta device: shapes only, no arithmetic, so large patches cost nothing to count."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build(name, kn).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 1, *patch, device="meta"))
    return counter.get_total_flops() / 1e9


def peak_gflops(device: torch.device, size: int = 2048, repeats: int = 5) -> float:
    """A reference rate measured in the same run: the best of a large float32 (CPU) or fp16 (CUDA) matmul. Not the
    hardware's peak: on the 2-core CPU oneDNN's convolutions run faster than PyTorch's matmul (over 100 %)."""
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = min(timed(lambda: a @ b, device) for _ in range(repeats + 1))
    return 2 * size**3 / best / 1e9


def measure_memory(
    name: str,
    device: torch.device,
    patch: tuple[int, int, int],
    amp_dtype: torch.dtype = torch.float16,
    kn: tuple[int, ...] | None = None,
) -> float:
    """Peak memory (MB) of two train steps beyond what the set-up model and inputs hold. CPU: the peak RSS of this
    process (``VmHWM``; not ``ru_maxrss``, which a child inherits from its parent across exec) minus the RSS before
    the first step; CUDA: ``max_memory_allocated`` beyond the baseline."""
    runner = Runner(name, device, patch, amp_dtype, kn)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        runner.train_step()
        runner.train_step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    import psutil

    base = psutil.Process().memory_info().rss
    runner.train_step()
    runner.train_step()
    return (peak_rss_bytes() - base) / 2**20


def memory_in_subprocess(
    name: str,
    device: torch.device,
    patch: tuple[int, int, int],
    threads: int,
    amp_dtype: torch.dtype,
    cudnn: str,
    freed_memory: str = "keep",
    kn: tuple[int, ...] | None = None,
) -> float | None:
    """Run ``measure_memory`` in a fresh interpreter (RSS high-water marks never go down within a process)."""
    cmd = [sys.executable, "-m", "benchmarks.network", "--measure-memory", name, "--device", device.type]
    cmd += ["--threads", str(threads), "--patch", *map(str, patch), "--amp-dtype", str(amp_dtype).split(".")[-1]]
    cmd += ["--cudnn", cudnn, "--freed-memory", freed_memory] + (["--kn", *map(str, kn)] if kn else [])
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if done.returncode != 0:
        print(f"memory measurement of {name} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return float(done.stdout.strip().splitlines()[-1])


def configure_cudnn(mode: str) -> None:
    """``benchmark``: let cuDNN time its algorithms per shape (what the bundle's configs do on a GPU);
    ``deterministic``: the reproducible kernels. The configs' own helper, without seeding."""
    if mode not in ("benchmark", "deterministic"):
        raise ValueError(f"--cudnn must be benchmark or deterministic, not {mode!r}")
    configure(seed=None, cudnn_benchmark=mode == "benchmark")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


def _warm_up(runners: dict[str, Runner], device: torch.device) -> dict[str, float]:
    """First train step and inference of every model; for compiled models this is the compile time."""
    compile_s = {}
    for name in list(runners):
        try:
            first = timed(runners[name].train_step, device) + timed(runners[name].infer, device)
        except Exception as error:  # torch.compile needs a C++ toolchain; report and drop the variant
            print(f"{name}: skipped ({type(error).__name__}: {str(error).splitlines()[0][:200]})", file=sys.stderr)
            del runners[name]
            continue
        print(f"{name}: first train step + inference {first:.1f} s", file=sys.stderr, flush=True)  # progress
        if VARIANTS[name][1]:
            compile_s[name] = round(first, 2)
    return compile_s


def run_benchmark(
    models: list[str],
    device: torch.device,
    patch: tuple[int, int, int],
    repeats: int,
    threads: int,
    memory: bool,
    amp_dtype: torch.dtype = torch.float16,
    cudnn: str = "benchmark",
    freed_memory: str = "keep",
    kn: tuple[int, ...] | None = None,
) -> dict:
    if freed_memory == "release":
        release_freed_memory()  # glibc's defaults, also after an earlier run in this process kept it
    kept = keep_freed_memory(device, freed_memory == "keep")
    runners = {name: Runner(name, device, patch, amp_dtype, kn) for name in models}
    compile_s = _warm_up(runners, device)
    times: dict[str, dict[str, list[float]]] = {name: {"train": [], "infer": []} for name in runners}
    for repeat in range(repeats):
        order = list(runners) if repeat % 2 == 0 else list(reversed(runners))  # alternate, and alternate the order
        for name in order:
            times[name]["train"].append(timed(runners[name].train_step, device))
        for name in order:
            times[name]["infer"].append(timed(runners[name].infer, device))
    peak = peak_gflops(device)
    rows = []
    for name in runners:
        setting = (name, device, patch, threads, amp_dtype, cudnn)
        gflop = forward_gflop(name, patch, kn)
        train_s = statistics.median(times[name]["train"])
        infer_s = statistics.median(times[name]["infer"])
        rows.append(
            {
                "name": name,
                "options": VARIANTS[name][0],
                "channels_last": bool((VARIANTS[name][0] or {}).get("channels_last")),
                "compiled": VARIANTS[name][1],
                "compile_s": compile_s.get(name),
                "params": sum(p.numel() for p in runners[name].base.parameters()),
                "gflop_fwd": round(gflop, 2),
                "train_s": round(train_s, 4),
                "infer_s": round(infer_s, 4),
                "train_times": [round(t, 4) for t in times[name]["train"]],
                "infer_times": [round(t, 4) for t in times[name]["infer"]],
                "gflops": round(3 * 2 * gflop / train_s, 1),  # train step: batch 2, backward ~ 2x forward
                "infer_gflops": round(gflop / infer_s, 1),
                "peak_mb": memory_in_subprocess(*setting, freed_memory, kn) if memory else None,
            }
        )
    by_name = {row["name"]: row for row in rows}
    for row in rows:
        for ref in ("dynunet", "mnet"):
            other = by_name.get(ref, {})
            row[f"train_ratio_vs_{ref}"] = _ratio(row["train_s"], other.get("train_s"))
            row[f"infer_ratio_vs_{ref}"] = _ratio(row["infer_s"], other.get("infer_s"))
            row[f"memory_ratio_vs_{ref}"] = _ratio(row["peak_mb"], other.get("peak_mb"))
        row["percent_of_peak"] = round(100 * row["gflops"] / peak, 1)
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "amp": None if amp_dtype == torch.float32 else str(amp_dtype).split(".")[-1],
        "cudnn": cudnn if device.type == "cuda" else None,
        "keep_freed_memory": kept,
        "threads": torch.get_num_threads(),
        "patch": list(patch),
        "mnet_kn": list(kn) if kn else None,
        "train_batch": 2,
        "infer_batch": 1,
        "repeats": repeats,
        "peak_gflops": round(peak, 1),
        "models": rows,
    }


def format_table(report: dict) -> str:
    def fmt(value, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    header = (
        "| model | params | GFLOP fwd | train s | infer s | peak MB | GFLOP/s train (% of matmul) "
        "| train / DynUNet | infer / DynUNet | train / MNet | infer / MNet | memory / MNet |"
    )
    lines = [header, "|" + "---|" * 12]
    for r in report["models"]:
        lines.append(
            f"| {r['name']} | {r['params']:,} | {r['gflop_fwd']:.1f} | {r['train_s']:.3f} | {r['infer_s']:.3f} "
            f"| {fmt(r['peak_mb'], '.0f')} | {r['gflops']:.1f} ({r['percent_of_peak']:.0f}%) "
            f"| {fmt(r['train_ratio_vs_dynunet'], '.2f')} | {fmt(r['infer_ratio_vs_dynunet'], '.2f')} "
            f"| {fmt(r['train_ratio_vs_mnet'], '.2f')} | {fmt(r['infer_ratio_vs_mnet'], '.2f')} "
            f"| {fmt(r['memory_ratio_vs_mnet'], '.2f')} |"
        )
    return "\n".join(lines)


# the numbers the issue tracker measures progress against: the last full run on each device
RESULTS = Path(__file__).resolve().parents[1] / "docs" / "benchmark_results"
BASELINES = {
    # freed memory kept (through glibc's environment variables, what keep_freed_memory sets), with memory
    "cpu": RESULTS / "network_cpu_glibc_no_mmap_env_2026-12-03.json",
    "cuda": RESULTS / "network_h200_fp16_2026-11-28.json",
}


def against_baseline(report: dict, baseline: dict) -> list[dict]:
    """Each model's ratios to DynUNet now and in ``baseline`` (absolute times move with the host, ratios less);
    only models in both runs, and only when both ran the same patch and MNet widths."""
    if baseline.get("patch") != report["patch"] or baseline.get("mnet_kn") != report.get("mnet_kn"):
        return []
    before = {row["name"]: row for row in baseline["models"]}
    rows = []
    for row in report["models"]:
        old = before.get(row["name"])
        if old is None:
            continue
        rows.append(
            {
                "name": row["name"],
                **{f"{k}_baseline": old.get(k) for k in ("train_ratio_vs_dynunet", "infer_ratio_vs_dynunet")},
                **{f"{k}_now": row.get(k) for k in ("train_ratio_vs_dynunet", "infer_ratio_vs_dynunet")},
            }
        )
    return rows


def format_baseline_table(report: dict) -> str:
    def fmt(value) -> str:
        return "-" if value is None else f"{value:.2f}"

    lines = [
        f"against {report['baseline']['path']} ({report['baseline']['date']}):",
        "",
        "| model | train / DynUNet then | now | infer / DynUNet then | now |",
        "|---|---|---|---|---|",
    ]
    for r in report["baseline"]["models"]:
        lines.append(
            f"| {r['name']} | {fmt(r['train_ratio_vs_dynunet_baseline'])} | {fmt(r['train_ratio_vs_dynunet_now'])} "
            f"| {fmt(r['infer_ratio_vs_dynunet_baseline'])} | {fmt(r['infer_ratio_vs_dynunet_now'])} |"
        )
    return "\n".join(lines)


def main(
    device: str = "cpu",
    repeats: int = 3,
    quick: bool = False,
    out: str = "benchmarks/results/network.json",
    models: list[str] | None = None,
    compile: bool = False,
    memory: bool = True,
    threads: int = 2,
    patch: list[int] | None = None,
    amp_dtype: str | None = None,
    cudnn: str = "benchmark",
    baseline: str | None = None,
    freed_memory: str = "keep",
    kn: list[int] | None = None,
) -> dict:
    """Measure, print a markdown table (and the ratios against ``baseline``, by default the device's entry of
    BASELINES), write the JSON report to ``out`` and return it."""
    torch_device = resolve_device(device)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    size = tuple(patch) if patch else (QUICK_PATCH if quick else FULL_PATCH)
    names = list(models) if models else list(DEFAULT_MODELS)
    if compile and "mnet+compile" not in names:
        names.append("mnet+compile")
    if quick:
        repeats = 1
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown models {unknown}; choose from {list(VARIANTS)}")
    configure_cudnn(cudnn)
    dtype = getattr(torch, amp_dtype or ("float16" if torch_device.type == "cuda" else "float32"))
    widths = tuple(kn) if kn else None
    report = run_benchmark(names, torch_device, size, repeats, threads, memory, dtype, cudnn, freed_memory, widths)
    amp = f"  AMP {report['amp']}  cudnn {report['cudnn']}" if report["amp"] else ""
    kept = "  freed memory kept" if report["keep_freed_memory"] else ""
    widths = f"  MNet kn {report['mnet_kn']}" if report["mnet_kn"] else ""
    print(f"{header(report)}{widths}  matmul {report['peak_gflops']} GFLOP/s{amp}{kept}")
    print(format_table(report))
    baseline_path = Path(baseline) if baseline else BASELINES.get(torch_device.type)
    if baseline_path is not None and baseline_path.is_file():
        previous = json.loads(baseline_path.read_text())
        rows = against_baseline(report, previous)
        report["baseline"] = {"path": str(baseline_path), "date": previous.get("date"), "models": rows}
        if rows:
            print(format_baseline_table(report))
    write_json(report, out)
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help=f"patch {QUICK_PATCH} and 1 repeat, for a smoke test")
    parser.add_argument("--out", default="benchmarks/results/network.json")
    parser.add_argument("--models", nargs="+", choices=list(VARIANTS), help=f"default: {' '.join(DEFAULT_MODELS)}")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile (inductor) of mnet")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the memory subprocesses")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--patch", type=int, nargs=3, help="override the patch (x y z), thick axis last")
    parser.add_argument("--kn", type=int, nargs=5, help="MNet's five widths (default the paper's 32 48 64 80 96)")
    parser.add_argument(
        "--amp-dtype",
        choices=["float16", "bfloat16", "float32"],
        help="autocast type; CUDA default float16, CPU "
        "default float32 (no autocast), bfloat16 on the CPU for CPU autocast",
    )
    parser.add_argument("--cudnn", default="benchmark", choices=["benchmark", "deterministic"], help="cuDNN mode")
    parser.add_argument(
        "--freed-memory",
        default="keep",
        choices=["keep", "release"],
        help="CPU: keep freed memory in the process as the configs do (keep_freed_memory), or glibc's default",
    )
    parser.add_argument("--baseline", help="an earlier JSON report to compare the ratios with (default per device)")
    parser.add_argument("--measure-memory", metavar="MODEL", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    if args.measure_memory:
        torch.set_num_threads(args.threads)
        configure_cudnn(args.cudnn)
        size = tuple(args.patch) if args.patch else FULL_PATCH
        mem_device = resolve_device(args.device)
        mem_dtype = args.amp_dtype or ("float16" if mem_device.type == "cuda" else "float32")
        keep_freed_memory(mem_device, args.freed_memory == "keep")
        kn = tuple(args.kn) if args.kn else None
        print(measure_memory(args.measure_memory, mem_device, size, getattr(torch, mem_dtype), kn))
    else:
        main(
            device=args.device,
            repeats=args.repeats,
            quick=args.quick,
            out=args.out,
            models=args.models,
            compile=args.compile,
            memory=args.memory,
            threads=args.threads,
            patch=args.patch,
            amp_dtype=args.amp_dtype,
            cudnn=args.cudnn,
            baseline=args.baseline,
            freed_memory=args.freed_memory,
            kn=args.kn,
        )
