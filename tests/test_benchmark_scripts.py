"""The pipeline and whole-volume inference benchmarks run end to end and write their JSON (no timing asserts)."""

from __future__ import annotations

import json

import torch
from benchmarks import conv_layouts, inference, omp_wait_policy, pipeline
from scripts import cpu_memory
from scripts.cpu_autocast import bf16_supported


def test_inference_benchmark_quick(tmp_path):
    out = tmp_path / "inference.json"
    result = inference.main(["--quick", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["written"] == ["ct_seg.nii.gz"]
    for key in ("preprocessing_s", "sliding_window_s", "postprocess_and_write_s", "peak_rss_mb"):
        assert saved[key] > 0
    assert abs(saved["total_s"] - sum(result[k] for k in ("preprocessing_s", "sliding_window_s",
                                                          "postprocess_and_write_s"))) < 1e-9  # fmt: skip
    # inference.json on the CPU computes in float32 (amp is for CUDA); the benchmark opened CPU autocast (bf16) before
    assert saved["convolution_dtype"] == ["float32"] and saved["amp"] is False
    assert saved["keep_freed_memory"] is (cpu_memory._libc() is not None)  # as inference_setup does
    # 64x64x10 in 48x48x8 windows at inference.json's overlap 0.5: steps of 24 and 4 voxels, 2 x 2 x 2 windows
    assert saved["sw_overlap"] == 0.5 and saved["windows"] == 8


def test_inference_benchmark_sets_the_overlap(tmp_path):
    """``--sw_overlap`` reaches the sliding window: at 0.75 the steps are 12 and 2 voxels, 3 x 3 x 2 windows."""
    out = tmp_path / "inference.json"
    inference.main(["--quick", "--sw_overlap", "0.75", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["sw_overlap"] == 0.75 and saved["windows"] == 18 and saved["written"] == ["ct_seg.nii.gz"]


def test_inference_benchmark_measures_cpu_bf16_when_asked(tmp_path):
    """``--amp_dtype bfloat16`` measures what inference.json does with it on this CPU: bf16 convolutions where the CPU
    has bf16 instructions (the network's hooks), float32 where it has not."""
    out = tmp_path / "inference.json"
    inference.main(["--quick", "--amp_dtype", "bfloat16", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["convolution_dtype"] == (["bfloat16"] if bf16_supported() else ["float32"])
    assert saved["amp_dtype"] == "bfloat16" and saved["written"] == ["ct_seg.nii.gz"]


def test_inference_benchmark_measures_glibc_s_defaults_when_asked(tmp_path):
    out = tmp_path / "inference.json"
    inference.main(["--quick", "--keep_freed_memory", "false", "--out", str(out)])
    assert json.loads(out.read_text())["keep_freed_memory"] is False


def test_pipeline_benchmark_quick(tmp_path):
    out = tmp_path / "pipeline.json"
    pipeline.main(["--quick", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["pure_step_s"] > 0 and saved["pipeline_step_s"] > 0 and saved["data_only_s"] > 0
    assert saved["pipeline_over_pure_rate"] == saved["pure_step_s"] / saved["pipeline_step_s"]
    assert saved["keep_freed_memory"] is (cpu_memory._libc() is not None) and saved["peak_rss_main_mb"] > 0
    assert saved["peak_rss_largest_worker_mb"] is None  # --quick loads in the main process


def test_pipeline_benchmark_reports_its_workers_memory(tmp_path):
    """One data loader worker, freed memory released: the worker's peak RSS is read while it is alive."""
    out = tmp_path / "pipeline.json"
    try:
        pipeline.main(["--quick", "--workers", "1", "--keep_freed_memory", "false", "--out", str(out)])
    finally:
        cpu_memory.release_freed_memory()
    saved = json.loads(out.read_text())
    assert saved["workers"] == 1 and saved["keep_freed_memory"] is False
    assert saved["peak_rss_largest_worker_mb"] > 0


def test_children_peak_rss_sees_a_live_child():
    import multiprocessing

    from benchmarks.common import children_peak_rss_bytes

    def hold(ready, done):
        block = b"\x01" * (200 * 2**20)  # written, so every page is resident
        ready.set()
        done.wait(30)
        del block

    context = multiprocessing.get_context("fork")
    ready, done = context.Event(), context.Event()
    child = context.Process(target=hold, args=(ready, done))
    child.start()
    try:
        assert ready.wait(30)
        assert children_peak_rss_bytes() > 200 * 2**20
    finally:
        done.set()
        child.join(30)


def test_inference_benchmark_cohort_quick(tmp_path):
    out = tmp_path / "cohort.json"
    settings = ["[0,false]", "[0,true]", "[0,false]"]  # a repeated setting is measured again, not resumed
    inference.main(["--quick", "--cases", "2", "--compare", *settings, "--out", str(out)])
    runs = json.loads(out.read_text())["runs"]
    assert [(r["num_workers"], r["background_writes"]) for r in runs] == [(0, False), (0, True), (0, False)]
    for run in runs:
        assert run["cases"] == 2 and run["written"] == 2
        assert 0 < run["network_busy_share"] <= 1 and run["peak_rss_main_mb"] > 0


def test_conv_layouts_compute_the_same_convolution(tmp_path, monkeypatch):
    """Every layout the benchmark times computes the same output and gradients (else the timings compare different
    work), and the script writes one row per level."""
    cases = conv_layouts.level_cases(4, 8, 3, torch.device("cpu"))
    outputs = {}
    for name in ("conv3d_331", "conv3d_331_channels_last", "conv3d_133_thick_first", "conv2d_view"):
        y = cases[name]().detach()
        y = y.permute(0, 1, 3, 4, 2) if name == "conv3d_133_thick_first" else y
        if name == "conv2d_view":
            y = y.reshape(2, 3, 4, 8, 8).permute(0, 2, 3, 4, 1)
        outputs[name] = y
    for name, y in outputs.items():
        torch.testing.assert_close(y, outputs["conv3d_331"], rtol=1e-5, atol=1e-5, msg=name)
    norms = {name: cases[name]().detach() for name in conv_layouts.LAYOUTS if "norm" in name}
    for name, y in norms.items():  # one group per channel is instance norm, in either layout
        torch.testing.assert_close(y, norms["group_norm"], rtol=1e-4, atol=1e-4, msg=name)
    monkeypatch.setattr(conv_layouts, "LEVELS", [(4, 8, 3)])
    conv_layouts.main(["--repeats", "1", "--out", str(tmp_path / "conv.json")])
    saved = json.loads((tmp_path / "conv.json").read_text())
    assert len(saved["rows"]) == 1 and set(saved["rows"][0]["ms"]) == set(conv_layouts.LAYOUTS)


def test_network_benchmark_runs_the_preset_layout():
    """The benchmark measures the configs' CPU preset as built, channels_last weights included (it used to convert
    every variant to its own layout flag, which turned the preset's channels_last back into contiguous)."""
    from benchmarks.network import Runner

    def conv_weights_channels_last(name: str) -> set[bool]:
        base = Runner(name, torch.device("cpu"), (16, 16, 8)).base
        return {
            m.weight.is_contiguous(memory_format=torch.channels_last_3d) and not m.weight.is_contiguous()
            for m in base.modules()
            if isinstance(m, torch.nn.Conv3d) and m.weight.shape[1] > 1 and m.weight.shape[2:].numel() > 1
        }

    assert conv_weights_channels_last("mnet+cpu") == {True}  # the float32 CPU preset trains in channels_last
    assert conv_weights_channels_last("mnet+cpu-channels_last") == {False}
    assert conv_weights_channels_last("mnet+cpu+thick_first") == {True}
    thick_first = {name: Runner(name, torch.device("cpu"), (16, 16, 8)).base.thick_first
                   for name in ("mnet+cpu", "mnet+cpu+thick_first", "mnet+cpu-channels_last")}  # fmt: skip
    assert thick_first == {"mnet+cpu": False, "mnet+cpu+thick_first": True, "mnet+cpu-channels_last": False}


def test_omp_wait_policy_reads_iteration_times_from_the_training_log():
    """The per-iteration times come from logging.conf's timestamps of StatsHandler's iteration lines only."""
    log = "\n".join(
        [
            "2026-12-02 16:04:30,100 - ignite.engine.engine.SupervisedTrainer - INFO - Epoch: 1/1, Iter: 1/3 -- "
            "train_loss: 2.1000",
            "2026-12-02 16:04:31,000 - mnet.runtime - WARNING - something else",
            "2026-12-02 16:04:32,600 - ignite.engine.engine.SupervisedTrainer - INFO - Epoch: 1/1, Iter: 2/3 -- "
            "train_loss: 2.0000",
            "2026-12-02 16:04:33,850 - ignite.engine.engine.SupervisedTrainer - INFO - Epoch: 1/1, Iter: 3/3 -- "
            "train_loss: 1.9000",
        ]
    )
    assert omp_wait_policy.iteration_times(log) == [2.5, 1.25]


def test_network_benchmark_measures_other_mnet_widths(tmp_path):
    """`--kn` builds MNet with those widths (what the CPU preset's layout was measured with), in the memory
    subprocess too, and a run of other widths is not compared with it."""
    from benchmarks import network

    out = tmp_path / "kn.json"
    report = network.main(quick=True, models=["mnet+cpu"], out=str(out), kn=[4, 4, 6, 6, 8],
                          baseline=str(tmp_path / "none.json"))  # fmt: skip
    row = report["models"][0]
    assert report["mnet_kn"] == [4, 4, 6, 6, 8] and row["peak_mb"] is not None
    assert row["params"] == sum(p.numel() for p in network.build("mnet+cpu", (4, 4, 6, 6, 8)).parameters())
    assert row["params"] < sum(p.numel() for p in network.build("mnet+cpu").parameters())
    assert network.against_baseline({**report, "mnet_kn": None}, json.loads(out.read_text())) == []


def test_network_benchmark_compares_its_ratios_with_an_earlier_run(tmp_path):
    """`make bench` prints the ratios to DynUNet next to those of the last recorded run (the JSON of that run)."""
    from benchmarks import network

    first = network.main(quick=True, models=["dynunet", "mnet"], memory=False, out=str(tmp_path / "a.json"))
    assert first["baseline"]["models"] == []  # the recorded CPU run used another patch: nothing to compare
    assert first["keep_freed_memory"] is (cpu_memory._libc() is not None)  # as the configs, by default
    second = network.main(quick=True, models=["mnet", "dynunet"], memory=False, out=str(tmp_path / "b.json"),
                          baseline=str(tmp_path / "a.json"), freed_memory="release")  # fmt: skip
    assert second["keep_freed_memory"] is False
    rows = {r["name"]: r for r in json.loads((tmp_path / "b.json").read_text())["baseline"]["models"]}
    assert set(rows) == {"mnet", "dynunet"}
    before = {r["name"]: r for r in first["models"]}
    now = {r["name"]: r for r in second["models"]}
    assert rows["mnet"]["train_ratio_vs_dynunet_baseline"] == before["mnet"]["train_ratio_vs_dynunet"]
    assert rows["mnet"]["infer_ratio_vs_dynunet_now"] == now["mnet"]["infer_ratio_vs_dynunet"]
    assert rows["dynunet"]["train_ratio_vs_dynunet_now"] == 1.0


def test_op_profile_ranks_operators_and_kinds(tmp_path):
    """The profile's shares come from the profiler's self times: they add up to the whole phase, the top operators
    are sorted, and MNet's many small convolutions show in the call counts."""
    from benchmarks import op_profile

    assert op_profile.kind_of("aten::mkldnn_convolution") == "convolution"
    assert op_profile.kind_of("aten::native_group_norm_backward") == "norm"
    assert op_profile.kind_of("aten::upsample_trilinear3d") == "resampling"
    assert op_profile.kind_of("aten::something_new") == "other"
    report = op_profile.main(["--quick", "--models", "dynunet", "mnet+cpu", "--top", "5",
                              "--out", str(tmp_path / "p.json")])  # fmt: skip
    assert json.loads((tmp_path / "p.json").read_text())["models"].keys() == {"dynunet", "mnet+cpu"}
    for name, phases in report["models"].items():
        for phase in ("train", "infer"):
            result = phases[phase]
            assert abs(sum(result["kinds"].values()) - 1.0) < 1e-3, (name, phase)
            shares = [row["share"] for row in result["top"]]
            assert len(shares) == 5 and shares == sorted(shares, reverse=True) and sum(shares) <= 1.0001
            assert result["kinds"]["convolution"] > 0.1
    infer = {name: phases["infer"]["convolution_calls"] for name, phases in report["models"].items()}
    assert infer["mnet+cpu"] > 2 * infer["dynunet"]


def test_op_profile_profiles_other_mnet_widths(tmp_path):
    """`--kn` profiles MNet at those widths (the demo's narrow network), as benchmarks.network measures them."""
    from benchmarks import op_profile

    args = ["--quick", "--models", "mnet+cpu", "--top", "3", "--out", str(tmp_path / "p.json")]
    narrow = op_profile.main([*args, "--kn", "4", "4", "6", "6", "8"])
    assert narrow["mnet_kn"] == [4, 4, 6, 6, 8]
    assert narrow["models"]["mnet+cpu"]["gflop_fwd"] < op_profile.main(args)["models"]["mnet+cpu"]["gflop_fwd"]


def test_onednn_layouts_counts_convolutions_and_reorders_between_the_marks(tmp_path):
    """oneDNN's verbose lines are summed per phase and primitive kind; lines outside the marks (warm-up) are not.
    A real quick run of MNet's inference sees every convolution through oneDNN, with reorders around them."""
    from benchmarks import onednn_layouts as layouts

    text = "\n".join([
        "onednn_verbose,v1,primitive,exec,cpu,convolution,jit:avx512_core,forward_training,src,,alg,mb1,99.0",
        layouts.MARK + "infer",
        "onednn_verbose,v1,primitive,exec,cpu,convolution,jit:avx512_core,forward_training,src,,alg,mb1,2.5",
        "onednn_verbose,v1,primitive,exec,cpu,reorder,jit:blk,undef,src,attr,,1x32x8x8x8,1.5",
        "onednn_verbose,v1,primitive,create:cache_miss,cpu,reorder,jit:blk,undef,src,attr,,1x32x8x8x8,7.0",
        "onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,src,attr,,32x32x3x3x1,0.5",
        layouts.MARK + "end",
        "onednn_verbose,v1,primitive,exec,cpu,reorder,jit:blk,undef,src,attr,,1x32x8x8x8,50.0",
    ])  # fmt: skip
    assert layouts.parse_verbose(text) == {
        "infer": {"convolution": {"calls": 1, "ms": 2.5}, "reorder": {"calls": 2, "ms": 2.0}}
    }
    report = layouts.main(["--quick", "--models", "mnet+cpu", "--out", str(tmp_path / "l.json")])
    infer = json.loads((tmp_path / "l.json").read_text())["models"]["mnet+cpu"]["infer"]
    assert infer == report["models"]["mnet+cpu"]["infer"]
    assert infer["primitives"]["convolution"]["calls"] == 85  # every convolution of MNet's batch-1 inference
    assert infer["primitives"]["reorder"]["calls"] >= 85 and 0 < infer["reorder_share"] < 1


def test_gpu_check_runs_the_chosen_steps_with_valid_arguments(tmp_path):
    """The lent GPU machine gives minutes, so a typo in benchmarks/gpu_check.sh (an unknown model, a wrong option)
    would waste a lease: every step's command line is checked here with the benchmarks' own parsers, with a stand-in
    python3 that records its arguments; with step names, only those steps run."""
    import os
    import shlex
    import subprocess
    from pathlib import Path

    from benchmarks import network, op_profile

    root = Path(__file__).resolve().parents[1]
    fake = tmp_path / "bin"
    fake.mkdir()
    for tool in ("python3", "nvidia-smi"):
        (fake / tool).write_text('#!/bin/sh\necho "ARGS $*"\n')
        (fake / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "WORK": str(tmp_path / "work")}
    script = str(root / "benchmarks" / "gpu_check.sh")
    chosen = subprocess.run(["bash", script, "profile", "compile"], cwd=root, env=env, capture_output=True, text=True)
    assert chosen.returncode == 0, chosen.stderr
    assert [line.split(":")[0] for line in chosen.stdout.splitlines() if line.startswith("===")] == [
        "=== profile", "=== compile"]  # fmt: skip
    everything = subprocess.run(["bash", script], cwd=root, env=env, capture_output=True, text=True)
    steps = sorted((tmp_path / "work").glob("*.log"))
    assert len(steps) >= 8 and everything.returncode == 0
    for log in steps:
        words = shlex.split(log.read_text().split("ARGS ", 1)[1])
        assert words[0] == "-m", log.name
        module, args = words[1], words[2:]
        if module == "benchmarks.network":
            network.parse_args(args)  # SystemExit on an unknown model or option
        elif module == "benchmarks.op_profile":
            op_profile.parse_args(args)
        elif module in ("benchmarks.inference", "benchmarks.pipeline"):
            {"benchmarks.inference": inference, "benchmarks.pipeline": pipeline}[module].parse_args(args)
        elif module == "pytest":
            assert all((root / a).is_file() for a in args if a.startswith("tests/")), args
        else:
            assert (root / (module.replace(".", "/") + ".py")).is_file(), module
