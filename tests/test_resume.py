"""Crash safety: atomic writes, kill -9 + resume on the same LR schedule, best metric kept, same seed same losses,
flat memory over many inference cases, and safe loading (weights_only, no downloads)."""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil
import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import NibabelWriter
from scripts.checkpoints import save as atomic_torch_save
from scripts.demo.data import write_dataset
from scripts.errors import BundleInputError
from scripts.handlers import BestModelSaver, LastCheckpointSaver, ResumeHandler
from scripts.writers import AtomicNibabelWriter
from tests.bundle_cli import bundle_command

ROOT = Path(__file__).resolve().parents[1]
EPOCHS, LR, POWER = 3, 0.01, 0.9
TINY = ["--kn", "[4,4,6,6,8]", "--patch_size", "[32,32,8]", "--num_workers", "0"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def train_cmd(work: Path, data: Path, *extra: str) -> list[str]:
    return [
        *bundle_command("run", "training", "--config_file", "configs/train.json", work=work, data=data),
        *["--epochs", str(EPOCHS), "--iterations_per_epoch", "2", "--val_interval", "100"],
        *TINY,
        *extra,
    ]


def losses(log: str, epoch: int) -> list[str]:
    return re.findall(rf"Epoch: {epoch}/{EPOCHS}, Iter: \d+/\d+ -- train_loss: (\S+)", log)


def learning_rates(log: str) -> list[float]:
    return [float(v) for v in re.findall(r"Current learning rate: (\S+)", log)]


def poly(epoch: int) -> float:
    """LR after `epoch` completed epochs of torch's PolynomialLR (total_iters=EPOCHS)."""
    return LR * (1 - min(epoch, EPOCHS) / EPOCHS) ** POWER


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """A full run, a run killed with SIGKILL after its first checkpoint, and the resumed run (same seed)."""
    root = tmp_path_factory.mktemp("resume")
    data = root / "data"
    write_dataset(data, num_cases=6, num_test=1, inplane_range=(32, 36), slices_range=(6, 8))
    full = subprocess.run(
        train_cmd(root / "full", data), cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=300
    )
    assert full.returncode == 0, full.stderr[-3000:]
    work, log = root / "killed", root / "killed.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(train_cmd(work, data), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=ENV)
        last = work / "models" / "checkpoint_last.pt"
        while not last.exists() and proc.poll() is None:
            time.sleep(0.02)
        still_running = proc.poll() is None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    trainer = torch.load(last, weights_only=True)["trainer"]
    saved_epoch = trainer["iteration"] // trainer["epoch_length"]
    resumed = subprocess.run(
        train_cmd(work, data, "--resume", "true"), cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=300
    )
    return {
        "full": full.stdout,
        "killed": log.read_text(),
        "still_running": still_running,
        "work": work,
        "saved_epoch": saved_epoch,
        "resumed": resumed,
    }


def test_same_seed_same_losses(runs):
    first = losses(runs["full"], 1)
    assert len(first) == 2 and losses(runs["killed"], 1) == first


def test_kill_then_resume_continues_schedule(runs):
    assert runs["still_running"], "training finished before it could be killed"
    resumed = runs["resumed"]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    start = runs["saved_epoch"]
    assert 1 <= start < EPOCHS and f"at epoch {start}" in resumed.stdout
    assert not losses(resumed.stdout, start) and len(losses(resumed.stdout, EPOCHS)) == 2
    expected = [poly(e) for e in range(start + 1, EPOCHS + 1)]
    assert learning_rates(resumed.stdout) == pytest.approx(expected, abs=1e-12)
    assert learning_rates(runs["full"]) == pytest.approx([poly(e) for e in range(1, EPOCHS + 1)], abs=1e-12)
    final = torch.load(runs["work"] / "models" / "checkpoint_last.pt", weights_only=True)
    assert final["trainer"]["iteration"] == EPOCHS * final["trainer"]["epoch_length"]
    assert final["lr_scheduler"]["last_epoch"] == EPOCHS
    assert not list((runs["work"] / "models").glob(".tmp_*"))


def _evaluator(save_dir: Path, scores: list[float]) -> tuple[Engine, BestModelSaver]:
    """An evaluator whose key metric takes the given values, one per run, with the bundle's best-model saver."""
    evaluator = Engine(lambda engine, batch: None)
    evaluator.state.best_metric, evaluator.state.best_metric_epoch = -1, -1
    values = iter(scores)
    evaluator.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(val=next(values)))
    saver = BestModelSaver(str(save_dir), torch.nn.Linear(1, 1), key_metric_name="val")
    saver.attach(evaluator)
    return evaluator, saver


def test_resume_keeps_best_metric(tmp_path: Path):
    net = torch.nn.Linear(1, 1)
    evaluator, _ = _evaluator(tmp_path, [0.8])
    evaluator.run([0])
    evaluator.state.best_metric = 0.8
    trainer = Engine(lambda engine, batch: None)
    trainer.run([0], max_epochs=1)
    LastCheckpointSaver(str(tmp_path), {"network": net}, evaluator=evaluator)(trainer)
    best = (tmp_path / "model.pt").read_bytes()

    evaluator, saver = _evaluator(tmp_path, [0.5, 0.9])
    resumed = Engine(lambda engine, batch: None)
    ResumeHandler(str(tmp_path / "checkpoint_last.pt"), {"network": net}, evaluator=evaluator).attach(resumed)
    resumed.run([0], max_epochs=2)
    assert evaluator.state.best_metric == 0.8 and saver.best == 0.8
    torch.nn.init.constant_(saver.network.weight, 3.0)
    evaluator.run([0])  # a worse model must not replace the best one
    assert (tmp_path / "model.pt").read_bytes() == best
    evaluator.run([0], max_epochs=2)  # a better one does
    assert torch.load(tmp_path / "model.pt", weights_only=True)["weight"].item() == 3.0


def test_resume_rewrites_a_missing_best_model(tmp_path: Path):
    """MONAI's CheckpointSaver crashed at the first improvement after a resume when model.pt had gone; the bundle's
    saver writes it again at the next validation, even when the metric is below the best so far."""
    evaluator, saver = _evaluator(tmp_path, [0.3])
    saver.load_state_dict({"_saved": [(0.8, "model.pt")]})  # best memory as an older bundle version saved it
    assert saver.best == 0.8
    evaluator.run([0])
    assert torch.load(tmp_path / "model.pt", weights_only=True).keys() == {"weight", "bias"}
    assert saver.best == 0.3  # the file on disk is the reference now


def test_resume_with_bad_checkpoint_is_one_line(tmp_path: Path):
    path = tmp_path / "checkpoint_last.pt"
    torch.save({"network": torch.nn.Linear(2, 1).state_dict(), "trainer": {}}, path)
    handler = ResumeHandler(str(path), {"network": torch.nn.Linear(1, 1)})
    with pytest.raises(BundleInputError, match=r"'network' does not fit .*weight: checkpoint \[1, 2\] vs network"):
        handler(Engine(lambda e, b: None))
    path.write_bytes(b"garbage")
    with pytest.raises(BundleInputError, match="corrupted or not a PyTorch weights file"):
        handler(Engine(lambda e, b: None))


def test_resume_refuses_nan_weights(tmp_path: Path):
    """A run that diverged saved NaN weights in checkpoint_last.pt; resuming from it trained on NaN without a word."""
    path = tmp_path / "checkpoint_last.pt"
    net = torch.nn.Linear(1, 1)
    torch.nn.init.constant_(net.weight, float("nan"))
    torch.save({"network": net.state_dict(), "trainer": {}}, path)
    fresh = torch.nn.Linear(1, 1)
    handler = ResumeHandler(str(path), {"network": fresh})
    with pytest.raises(
        BundleInputError,
        match=rf"^{path}: 1 weight tensor\(s\) hold NaN or Inf, e\.g\. weight \(the training diverged\); resume from",
    ):
        handler(Engine(lambda e, b: None))
    assert bool(torch.isfinite(fresh.weight).all())


def test_failure_mid_write_leaves_no_file(tmp_path: Path, monkeypatch):
    def crash(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        atomic_torch_save({"a": 1}, str(tmp_path / "checkpoint_last.pt"))

    def crash_nifti(self, filename, *args, **kwargs):
        Path(filename).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(NibabelWriter, "write", crash_nifti)
    writer = AtomicNibabelWriter()
    writer.set_data_array(np.zeros((4, 4, 4)), channel_dim=None)
    with pytest.raises(OSError):
        writer.write(str(tmp_path / "case_seg.nii.gz"))
    assert list(tmp_path.iterdir()) == []


def test_inference_memory_is_flat_on_many_odd_cases(tmp_path: Path):
    """Thick axis first, odd sizes smaller than the patch, 30 cases: outputs match inputs and RSS stays flat."""
    data, out, n = tmp_path / "scans", tmp_path / "pred", 30
    rng = np.random.default_rng(0)
    for i in range(n):
        shape = (int(rng.integers(3, 7)), int(rng.integers(17, 30)), int(rng.integers(17, 30)))
        data.mkdir(exist_ok=True)
        nib.save(
            nib.Nifti1Image(rng.normal(0, 100, shape).astype(np.float32), np.diag([5.0, 0.8, 0.8, 1])),
            str(data / f"scan_{i:02d}.nii.gz"),
        )
    plan = json.loads((ROOT / "configs/plan.json").read_text())
    plan.update(thick_axis=0, spacing=[5.0, 0.8, 0.8], patch_size=[8, 32, 32])
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    cmd = [
        *bundle_command(
            "run", "--config_file", "configs/inference.json", work=tmp_path, data=data, plan=tmp_path / "plan.json"
        ),
        *["--output_dir", str(out), "--load_pretrain", "False", "--kn", "[4,4,6,6,8]", "--num_workers", "0"],
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    rss = _rss_at(proc, out, [n // 3, n - 2])
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()[-3000:]
    assert len(rss) == 2 and rss[1] - rss[0] < 40 * 2**20, [r / 2**20 for r in rss]
    for i in (0, n - 1):
        assert nib.load(out / f"scan_{i:02d}_seg.nii.gz").shape == nib.load(data / f"scan_{i:02d}.nii.gz").shape


def _rss_at(proc: subprocess.Popen, out: Path, counts: list[int]) -> list[int]:
    """Resident memory of `proc` when the output folder first holds each of `counts` predictions."""
    rss, pending = [], list(counts)
    while pending and proc.poll() is None:
        if out.exists() and len(list(out.glob("*_seg.nii.gz"))) >= pending[0]:
            rss.append(psutil.Process(proc.pid).memory_info().rss)
            pending.pop(0)
        time.sleep(0.01)
    return rss


def _torch_load_calls(path: Path) -> list[ast.Call]:
    tree = ast.parse(path.read_text())
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "load"
        and getattr(node.func.value, "id", "") == "torch"
    ]


def test_every_torch_load_is_weights_only():
    calls = [(path, call) for path in (ROOT / "scripts").rglob("*.py") for call in _torch_load_calls(path)]
    assert calls
    for path, call in calls:
        flags = {k.arg: getattr(k.value, "value", None) for k in call.keywords}
        assert flags.get("weights_only") is True, f"{path}:{call.lineno}"


def test_nothing_downloads_at_run_time():
    pattern = re.compile(r"urlopen|requests\.|download_url|hub\.load|from_pretrained|load_state_dict_from_url")
    for path in [*(ROOT / "scripts").rglob("*.py"), *(ROOT / "configs").glob("*.json")]:
        assert not pattern.search(path.read_text()), path


def test_fold_1_keeps_to_its_folder_and_ctrl_c_is_one_line(tmp_path: Path):
    """`--fold 1` writes models/fold_1/ and leaves fold 0's files alone; Ctrl-C ends it with one line, exit 130 and an
    intact checkpoint; resuming that checkpoint as fold 0 is refused in one line."""
    data, work = tmp_path / "data", tmp_path / "work"
    write_dataset(data, num_cases=6, num_test=1, inplane_range=(32, 34), slices_range=(6, 7))
    models = work / "models"
    models.mkdir(parents=True)
    for name in ("model.pt", "checkpoint_last.pt"):
        (models / name).write_bytes(b"fold 0")
    fold1 = models / "fold_1"
    cmd = train_cmd(work, data, "--fold", "1", "--val_interval", "1", "--epochs", "40")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV, text=True)
    while not (fold1 / "checkpoint_last.pt").exists() and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    assert re.fullmatch(
        rf"ERROR: interrupted at epoch \d+, iteration \d+; {fold1}/checkpoint_last\.pt is intact, "
        r"resume with --resume true",
        err.strip().splitlines()[-1],
    )
    assert [(models / n).read_bytes() for n in ("model.pt", "checkpoint_last.pt")] == [b"fold 0", b"fold 0"]
    last = torch.load(fold1 / "checkpoint_last.pt", weights_only=True)
    assert last["meta"]["fold"] == 1 and len(last["meta"]["split"]["validation"]) == 1
    assert json.loads((fold1 / "model.json").read_text())["fold"] == 1
    assert not list(fold1.glob(".tmp_*"))
    wrong = subprocess.run(
        train_cmd(work, data, "--ckpt_dir", str(fold1), "--resume", "true"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert wrong.returncode != 0
    assert wrong.stderr.strip().splitlines()[-1] == (
        f"ERROR: {fold1}/checkpoint_last.pt: is a checkpoint of fold 1, "
        "this run trains fold 0; pass --fold 1 or start fold 0 without "
        "--resume"
    )
