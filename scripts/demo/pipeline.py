"""`make demo`: synthetic thick-slice CT -> plan -> train MNet -> evaluate on held-out cases -> inference -> report.

    python -m scripts.demo --work_dir demo [--epochs 60] [--iterations_per_epoch 10] [--kn "[8,12,16,20,24]"]
        [--patch_size "[64,64,16]"] [--learning_rate 0.01] [--val_interval 10] [--fresh true] [--quick true]

Training, evaluation and inference run the bundle's own configs as subprocesses - the commands a user would type,
printed before they run - so the demo exercises exactly what a real user gets. Every step re-uses what an earlier run
left in the work dir (an interrupted training resumes from `checkpoint_last.pt`), so running the demo again only
rebuilds the report; `--fresh true` starts over (the generated data is kept: it is deterministic).

On CPU the network is narrower than the paper's (same mesh topology) and the patch smaller, so the demo learns in
about ten minutes on two cores; with CUDA it uses the paper's widths and the planner's patch. See docs/demo.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from scripts.atomic import write_text
from scripts.runtime import CPU_BATCH_SIZE, CPU_KN, CPU_PATCH_SIZE

REPO_ROOT = Path(__file__).resolve().parents[2]  # scripts/demo/pipeline.py -> the bundle root
STARTED, DONE = "demo_train_started.json", "demo_train_done.json"


@dataclasses.dataclass(frozen=True)
class Profile:
    """What the demo generates and trains; every field but `data` can be overridden from the command line."""

    kn: tuple[int, ...]
    patch_size: tuple[int, ...] | None  # None: keep the planner's patch (GPU)
    batch_size: int | None  # None: keep the planner's batch size
    epochs: int
    iterations_per_epoch: int
    val_interval: int
    learning_rate: float
    num_workers: int
    lesion_oversampling: float | None = None  # share of label-centred crops (configs/train.json: 0.33); None = keep
    data: dict[str, Any] = dataclasses.field(default_factory=dict)  # write_dataset keyword arguments


PROFILES = {
    # 2 CPU cores: 1/4 of the paper's widths, 64x64x16 patches, 600 iterations; validation (sliding window over whole
    # volumes) only every 20 epochs because it costs as much as ~20 training iterations; 80 % organ/lesion-centred
    # crops instead of 33 % so the small lesions are seen often enough in so short a training.
    "cpu": Profile(kn=CPU_KN, patch_size=CPU_PATCH_SIZE, batch_size=CPU_BATCH_SIZE, epochs=60, iterations_per_epoch=10,
                   val_interval=20, learning_rate=0.01, num_workers=1, lesion_oversampling=0.8,
                   data={"num_cases": 24, "num_test": 4}),
    "cuda": Profile(kn=(32, 48, 64, 80, 96), patch_size=None, batch_size=None, epochs=100, iterations_per_epoch=50,
                    val_interval=10, learning_rate=0.01, num_workers=4, data={"num_cases": 24, "num_test": 4}),
    # tests: tiny cases (5 training = the minimum for the 5-fold split, 2 test) and a tiny network; seconds, not skill
    "quick": Profile(kn=(4, 4, 6, 6, 8), patch_size=(48, 48, 8), batch_size=2, epochs=2, iterations_per_epoch=2,
                     val_interval=2, learning_rate=0.01, num_workers=0,
                     data={"num_cases": 7, "num_test": 2, "inplane_range": (40, 48), "slices_range": (8, 10)}),
}


# --------------------------------------------------------------------------------------------------------------------
# settings


def _ints(value: Any) -> tuple[int, ...] | None:
    """fire passes lists, tuples or strings such as "[8,12,16,20,24]" / "8,12,16,20,24"."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        value = json.loads(text if text.startswith("[") else f"[{text}]")
    if isinstance(value, int):
        value = [value]
    return tuple(int(v) for v in value)


def choose_profile(quick: bool, cuda: bool) -> str:
    """Tests ask for 'quick'; otherwise the hardware decides."""
    return "quick" if quick else ("cuda" if cuda else "cpu")


def resolve_settings(profile: str, **overrides: Any) -> Profile:
    """The profile with the command-line values that were given (None = keep the profile's)."""
    base = PROFILES[profile]
    given = {k: v for k, v in overrides.items() if v is not None}
    for key in ("kn", "patch_size"):
        if key in given:
            given[key] = _ints(given[key])
    settings = dataclasses.replace(base, **given)
    if len(settings.kn) != 5:
        raise SystemExit(f"error: --kn needs 5 widths (one per MNet level), got {list(settings.kn)}")
    if settings.patch_size is not None and len(settings.patch_size) != 3:
        raise SystemExit(f"error: --patch_size needs 3 sizes, got {list(settings.patch_size)}")
    if settings.epochs % settings.val_interval:
        print(f"demo: note: epochs={settings.epochs} is not a multiple of val_interval={settings.val_interval}; "
              "model.pt (best validation) ignores the last epochs")
    return settings


# --------------------------------------------------------------------------------------------------------------------
# bookkeeping


@contextmanager
def timed(timings: dict[str, float], step: str):
    """Record a step's wall time; steps that re-use earlier results simply do not call this."""
    start = time.perf_counter()
    yield
    timings[step] = round(time.perf_counter() - start, 1)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _newer(path: Path, than: Path) -> bool:
    return path.is_file() and than.is_file() and path.stat().st_mtime >= than.stat().st_mtime


def clean(work: Path) -> None:
    """--fresh: forget plan, model, logs, predictions and report (the deterministic data stays)."""
    for name in ("models", "eval", "predictions", "report", "logs"):
        if (work / name).is_dir():
            shutil.rmtree(work / name)
    for name in ("plan.json", "timings.json"):
        (work / name).unlink(missing_ok=True)


def children_cpu_seconds() -> float:
    """User + system CPU time of finished child processes (their DataLoader workers included)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_bundle(args: Sequence[str], log_file: Path) -> None:
    """Run `python -m monai.bundle run ...` from the bundle root; its log lines stream to the console and to
    `log_file`. A failure stops the demo with the command and the log's path."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", *args]
    print(f"\n$ {shlex.join(cmd)}", flush=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # OpenMP threads that spin while waiting collapse on a busy shared CPU (10x slower measured here); passive
    # waiting costs little on an idle one. A user's own setting wins.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    with open(log_file, "w") as log, subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                                                      stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
        code = proc.wait()
    sys.stdout.flush()
    if code:
        raise SystemExit(f"error: the bundle command failed (exit code {code}); full log: {log_file}")


def oversampling_args(share: float | None) -> list[str]:
    """train.json's ``foreground_oversampling``: the share of label-centred training crops (None keeps 0.33)."""
    return [] if share is None else ["--foreground_oversampling", str(share)]


def common_args(work: Path, num_workers: int) -> list[str]:
    """Overrides every bundle command of the demo shares: its own bundle root, plan and data."""
    return ["--meta_file", "configs/metadata.json", "--logging_file", "configs/logging.conf",
            "--bundle_root", str(work), "--plan_file", str(work / "plan.json"), "--dataset_dir", str(work / "data"),
            "--num_workers", str(num_workers)]


# --------------------------------------------------------------------------------------------------------------------
# steps


def ensure_data(work: Path, settings: Profile) -> Path:
    """Generate the synthetic cases (write_dataset re-uses a matching folder by itself)."""
    from scripts.demo.data import write_dataset

    return write_dataset(work / "data", **settings.data)


def plan_is_current(plan: dict[str, Any] | None, path: Path, dataset_json: Path, settings: Profile) -> bool:
    """A saved plan is re-used when it was made for this data and these widths/patch."""
    if not plan or not _newer(path, dataset_json) or plan.get("kn") != list(settings.kn):
        return False
    return settings.patch_size is None or plan.get("patch_size") == list(settings.patch_size)


def cpu_fit(plan: dict[str, Any], settings: Profile) -> dict[str, Any]:
    """Replace the planner's GPU-sized patch/batch with the demo's CPU-sized ones, saying so in the plan's notes."""
    plan = dict(plan)
    notes = list(plan["notes"])
    if settings.patch_size is not None:
        notes.append(f"patch_size: demo override {list(settings.patch_size)} instead of the planner's "
                     f"{plan['patch_size']}, so training fits a 2-core CPU (scripts/demo/pipeline.py).")
        plan["patch_size"] = list(settings.patch_size)
    if settings.batch_size is not None:
        notes.append(f"batch_size: demo override {settings.batch_size} (scripts/demo/pipeline.py).")
        plan["batch_size"] = int(settings.batch_size)
    plan["notes"] = notes
    return plan


def ensure_plan(work: Path, dataset_json: Path, settings: Profile, timings: dict[str, float]) -> dict[str, Any]:
    """Plan the data with the demo's widths (re-used when current); on CPU then shrink patch and batch."""
    from scripts.plan import plan_dataset
    from scripts.plan_file import load_plan, save_plan

    path = work / "plan.json"
    plan = load_plan(path) if path.is_file() else None
    if plan_is_current(plan, path, dataset_json, settings):
        print(f"demo: re-using the plan {path}")
        return plan
    with timed(timings, "plan"):
        gpu_gb = _gpu_memory_gb()
        plan = plan_dataset(str(work / "data"), output=str(path), kn=list(settings.kn), gpu_memory_gb=gpu_gb)
        plan = cpu_fit(plan, settings)
        save_plan(plan, path)
    print(f"demo: wrote {path}: spacing {plan['spacing']} mm, patch {plan['patch_size']}, batch {plan['batch_size']}, "
          f"kn {plan['kn']}")
    return plan


def _gpu_memory_gb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory / 1e9
    return 32.0  # irrelevant on CPU: the demo replaces the planner's patch and batch


def train_signature(settings: Profile, plan: dict[str, Any]) -> dict[str, Any]:
    """Everything a finished training depends on; a change means the old model does not fit any more."""
    plan_hash = hashlib.sha1(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:12]
    return {"plan": plan_hash, "epochs": settings.epochs, "iterations_per_epoch": settings.iterations_per_epoch,
            "val_interval": settings.val_interval, "learning_rate": settings.learning_rate,
            "lesion_oversampling": settings.lesion_oversampling}


def training_action(models: Path, signature: dict[str, Any]) -> str:
    """'reuse' a finished run with the same signature, 'resume' an interrupted one, else 'start' over."""
    done = _read_json(models / DONE)
    if done and done.get("signature") == signature and (models / "model.pt").is_file():
        return "reuse"
    if _read_json(models / STARTED) == signature and (models / "checkpoint_last.pt").is_file():
        return "resume"
    return "start"


def ensure_training(work: Path, settings: Profile, plan: dict[str, Any], timings: dict[str, float]) -> str:
    """Train through configs/train.json unless a finished run can be re-used; returns what was done."""
    models, signature = work / "models", train_signature(settings, plan)
    action = training_action(models, signature)
    if action == "reuse":
        print(f"demo: re-using the trained model {models / 'model.pt'} (pass --fresh true to retrain)")
        return action
    if action == "start":
        for old in (models, work / "eval"):  # another run's checkpoints and curves would mix with this one's
            if old.is_dir():
                shutil.rmtree(old)
    models.mkdir(parents=True, exist_ok=True)
    write_text(models / STARTED, json.dumps(signature))
    (models / DONE).unlink(missing_ok=True)
    args = ["training", "--config_file", "configs/train.json", *common_args(work, settings.num_workers),
            "--epochs", str(settings.epochs), "--iterations_per_epoch", str(settings.iterations_per_epoch),
            "--val_interval", str(settings.val_interval), "--learning_rate", str(settings.learning_rate),
            *oversampling_args(settings.lesion_oversampling)]
    if action == "resume":
        args += ["--resume", "True"]  # fire turns True/False into booleans; "false" would stay a (truthy) string
    print(f"\ndemo: {'resuming' if action == 'resume' else 'starting'} training: {settings.epochs} epochs x "
          f"{settings.iterations_per_epoch} iterations, validation every {settings.val_interval} epochs", flush=True)
    cpu0 = children_cpu_seconds()
    with timed(timings, "training"):
        run_bundle(args, work / "logs" / "train.log")
    timings["training CPU time"] = round(children_cpu_seconds() - cpu0, 1)
    if not (models / "model.pt").is_file():
        raise SystemExit(f"error: training finished without {models / 'model.pt'} (no validation ran?)")
    write_text(models / DONE, json.dumps({"signature": signature, "action": action}))
    return action


def ensure_evaluation(work: Path, settings: Profile, timings: dict[str, float]) -> Path:
    """Evaluate model.pt on the held-out test split (metrics CSVs + predictions), unless done for this model."""
    out = work / "eval" / "evaluation"
    if _newer(out / "val_mean_dice_raw.csv", work / "models" / "model.pt"):
        print(f"demo: re-using the evaluation in {out}")
        return out
    if out.is_dir():
        shutil.rmtree(out)
    args = ["--config_file", "['configs/train.json','configs/evaluate.json']", *common_args(work, settings.num_workers),
            "--eval_split", "test", "--save_predictions", "True", "--eval_output_dir", str(out)]
    with timed(timings, "evaluation"):
        run_bundle(args, work / "logs" / "evaluate.log")
    return out


def ensure_inference(work: Path, settings: Profile, test_cases: list[dict[str, str]],
                     timings: dict[str, float]) -> Path:
    """Segment the held-out images with configs/inference.json, unless every prediction is newer than the model."""
    from scripts.datalist import case_name

    out, model = work / "predictions", work / "models" / "model.pt"
    expected = [out / f"{case_name(c['image'])}_seg.nii.gz" for c in test_cases]
    if expected and all(_newer(p, model) for p in expected):
        print(f"demo: re-using the predictions in {out}")
        return out
    args = ["--config_file", "configs/inference.json", *common_args(work, settings.num_workers),
            "--output_dir", str(out)]
    with timed(timings, "inference"):
        run_bundle(args, work / "logs" / "inference.log")
    return out


def test_cases(dataset_json: Path) -> list[dict[str, str]]:
    """The datalist's held-out 'test' items with absolute paths."""
    data = json.loads(dataset_json.read_text())
    root = dataset_json.parent
    return [{k: str((root / item[k]).resolve()) for k in ("image", "label")} for item in data.get("test", [])]


def command_line(work_dir: str, overrides: dict[str, Any]) -> str:
    """The command that reproduces this run (for the report)."""
    extra = " ".join(f"--{k} {shlex.quote(json.dumps(list(v)) if isinstance(v, tuple | list) else str(v))}"
                     for k, v in overrides.items() if v is not None and v is not False)
    return f"python -m scripts.demo --work_dir {work_dir} {extra}".strip()


def print_headline(work: Path, headline: dict[str, Any], timings: dict[str, float]) -> None:
    """The few numbers a person wants at the end of `make demo`."""
    dice = ", ".join(f"{name} {value:.3f}" for name, value in headline["dice"].items())
    print("\n" + "=" * 78)
    print(f"MNet demo - {headline['cases']} held-out test cases: mean Dice {dice}")
    print(f"lesions hit: {headline['lesions_hit']} of {headline['lesions_gt']} "
          f"({headline['false_positives']} false-positive components)")
    if timings:
        print("time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    print(f"report: {work / 'report' / 'index.md'}")
    print("=" * 78)


# --------------------------------------------------------------------------------------------------------------------
# entry point


def main(
    work_dir: str = "demo",
    epochs: int | None = None,
    iterations_per_epoch: int | None = None,
    val_interval: int | None = None,
    kn: Any = None,
    patch_size: Any = None,
    learning_rate: float | None = None,
    num_workers: int | None = None,
    lesion_oversampling: float | None = None,
    fresh: bool = False,
    quick: bool = False,
) -> None:
    """Run the whole demo in `work_dir`; the numbers end up in `<work_dir>/report/` (None = the profile's value).

    Args:
        work_dir: data, plan, models, logs, predictions and report all go here (the bundle_root of every command).
        epochs, iterations_per_epoch, val_interval, learning_rate, num_workers: training overrides.
        lesion_oversampling: share of label-centred training crops (0.8 on CPU; train.json's own is 0.33).
        kn: MNet widths, e.g. "[8,12,16,20,24]" (CPU default) or "[32,48,64,80,96]" (paper, CUDA default).
        patch_size: training patch and sliding-window size, e.g. "[64,64,16]".
        fresh: start over instead of re-using an earlier run's plan, model and predictions.
        quick: tiny data and network for tests (runs in well under a minute, learns nothing useful).
    """
    import torch
    from scripts.demo.report import write_report

    overrides = {"epochs": epochs, "iterations_per_epoch": iterations_per_epoch, "val_interval": val_interval,
                 "kn": kn, "patch_size": patch_size, "learning_rate": learning_rate, "num_workers": num_workers,
                 "lesion_oversampling": lesion_oversampling}
    profile = choose_profile(quick, torch.cuda.is_available())
    settings = resolve_settings(profile, **overrides)
    work = Path(work_dir).resolve()
    print(f"demo: profile '{profile}', work dir {work}\n  {settings}")
    if fresh:
        clean(work)
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    previous = _read_json(work / "timings.json") or {}

    started = time.time()
    with timed(timings, "data"):
        dataset_json = ensure_data(work, settings)
    if dataset_json.stat().st_mtime < started:  # re-used: keep the time of the run that generated it
        timings.pop("data")
    plan = ensure_plan(work, dataset_json, settings, timings)
    ensure_training(work, settings, plan, timings)
    eval_dir = ensure_evaluation(work, settings, timings)
    cases = test_cases(dataset_json)
    predictions = ensure_inference(work, settings, cases, timings)
    all_timings = {**previous, **timings}  # steps re-used this time keep the duration of the run that made them
    with timed(all_timings, "report"):
        headline = write_report(work, plan, cases, predictions, eval_dir, work / "eval", timings=all_timings,
                                command=command_line(work_dir, {**overrides, "quick": quick}),
                                loss_window=settings.iterations_per_epoch)
    write_text(work / "timings.json", json.dumps(all_timings, indent=2) + "\n")
    print_headline(work, headline, all_timings)
