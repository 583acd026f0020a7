"""Inference outputs: one file per case (KiTS-style case folders), never an input, resumable, split over torchrun
ranks, written in the background, and the same segmentation that evaluation scores.

A tiny seeded network is saved as the bundle's model (no training needed); runs go through the real configs, in
process (ConfigWorkflow) where possible and through ``python -m monai.bundle`` / torchrun where the CLI matters.
"""

from __future__ import annotations

import errno
import json
import re
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow
from scripts.demo.data import write_dataset
from scripts.ensemble import LogitEnsemble
from scripts.errors import BundleInputError, find_input_error
from scripts.networks.mnet import MNet
from scripts.outputs import CaseLayout, pending_cases
from scripts.writers import AtomicNibabelWriter, BackgroundPostprocessing
from tests.test_workflows import BUNDLE, bundle_run

KN = [4, 4, 6, 6, 8]
PATCH = [48, 48, 8]
PLAN = str(BUNDLE / "configs" / "plan.json")


def _touch(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return str(path)


# --- CaseLayout: names, collisions, inputs -------------------------------------------------------------------------


def test_case_folders_with_one_file_name_get_one_output_each(tmp_path):
    cases = [{"image": _touch(tmp_path / "kits" / f"case_0000{i}" / "imaging.nii.gz")} for i in range(2)]
    layout = CaseLayout(str(tmp_path / "out"), cases=cases)
    outputs = [layout.output_of(c) for c in cases]
    assert outputs == [str(tmp_path / "out" / f"case_0000{i}" / "imaging_seg.nii.gz") for i in range(2)]
    assert not (tmp_path / "out").exists(), "checking names creates no folders"


def test_flat_folder_keeps_flat_names(tmp_path):
    cases = [{"image": _touch(tmp_path / "scans" / name)} for name in ("a.nii.gz", "b.nrrd")]
    layout = CaseLayout(str(tmp_path / "out"), cases=cases)
    assert [layout.output_of(c) for c in cases] == [str(tmp_path / "out" / n) for n in ("a_seg.nii.gz", "b_seg.nii.gz")]


def test_same_stem_with_two_extensions_is_refused(tmp_path):
    cases = [{"image": _touch(tmp_path / "scans" / name)} for name in ("x.nii", "x.nii.gz")]
    with pytest.raises(BundleInputError, match=r"x_seg\.nii\.gz: would hold the segmentations of both .*x\.nii and"):
        CaseLayout(str(tmp_path / "out"), cases=cases)


def test_image_listed_twice_is_refused(tmp_path):
    image = _touch(tmp_path / "scans" / "x.nii.gz")
    with pytest.raises(BundleInputError, match="listed twice"):
        CaseLayout(str(tmp_path / "out"), cases=[{"image": image}, {"image": image}])


def test_output_equal_to_an_input_is_refused(tmp_path):
    scans = tmp_path / "scans"
    cases = [{"image": _touch(scans / "x.nii.gz")}]
    with pytest.raises(BundleInputError, match=r"would overwrite the input .*x\.nii\.gz"):
        CaseLayout(str(scans), cases=cases, postfix="")
    (tmp_path / "link").symlink_to(scans, target_is_directory=True)  # the same folder under another name
    with pytest.raises(BundleInputError, match="would overwrite the input"):
        CaseLayout(str(tmp_path / "link"), cases=cases, postfix="")
    label = {"image": _touch(scans / "y.nii.gz"), "label": _touch(scans / "y_seg.nii.gz")}
    with pytest.raises(BundleInputError, match=r"would overwrite the input .*y_seg\.nii\.gz"):
        CaseLayout(str(scans), cases=[label])  # evaluation: a label is an input too


def test_postprocessing_builds_without_a_dataset_and_names_unknown_files_flat(tmp_path):
    """MONAI Label parses `postprocessing` (with its SaveImaged) knowing no dataset_dir: that must not read one."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser.update(
        {"bundle_root": str(tmp_path), "plan_file": PLAN, "dataset_dir": str(tmp_path / "missing"), "output_dir": "/o"}
    )
    parser.get_parsed_content("postprocessing")
    layout = parser.get_parsed_content("output_layout")
    assert layout.filename(subject="/studies/a/x.nii.gz") == "/o/x_seg.nii.gz"


def test_pending_cases_split_over_ranks_then_skip_existing(tmp_path, monkeypatch):
    cases = [{"image": _touch(tmp_path / "scans" / f"c{i}.nii.gz")} for i in range(5)]
    layout = CaseLayout(str(tmp_path / "out"), cases=cases)
    shares = []
    for rank in range(2):
        monkeypatch.setattr("scripts.outputs._rank_and_world", lambda r=rank: (r, 2))
        shares.append(pending_cases(cases, layout))
    assert sorted(len(s) for s in shares) == [2, 3], "uneven split, no padding duplicates"
    assert sorted(c["image"] for s in shares for c in s) == sorted(c["image"] for c in cases), "each case once"
    _touch(Path(layout.output_of(shares[0][0])))
    monkeypatch.setattr("scripts.outputs._rank_and_world", lambda: (0, 2))
    assert pending_cases(cases, layout) == shares[0][1:], "an existing output is skipped, the share stays the same"
    assert pending_cases(cases, layout, overwrite="true") == shares[0]


# --- prediction wrapper and background writer -----------------------------------------------------------------------


def test_ensemble_averages_logits_of_members_and_flips():
    torch.manual_seed(0)
    nets = [torch.nn.Conv3d(1, 3, 3, padding=1).eval() for _ in range(2)]
    ensemble = LogitEnsemble(nets[0], mirror_axes=[1]).eval()
    ensemble.members.append(nets[1])  # a second member with other weights, as a checkpoint would add
    x = torch.randn(1, 1, 6, 5, 4)
    with torch.no_grad():
        expected = sum(n(x) + torch.flip(n(torch.flip(x, [3])), [3]) for n in nets) / 4
        np.testing.assert_allclose(ensemble(x).numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(ensemble(x).sum(1), torch.ones(1)), "logits, not probabilities"


def test_background_postprocessing_overlaps_and_reports_errors():
    started, release, done = threading.Event(), threading.Event(), []

    def slow(data):
        started.set()
        release.wait(10)
        done.append(data["i"])
        return data

    post = BackgroundPostprocessing([slow], max_pending=1)
    assert post({"i": 0}) == {"i": 0}  # returns at once, the work runs in the worker
    assert started.wait(10) and done == []
    release.set()
    post({"i": 1})  # waits for case 0 (max_pending=1), then submits case 1
    post.wait()
    assert done == [0, 1]

    def broken(data):
        raise RuntimeError("disk full")

    post = BackgroundPostprocessing([broken])
    post({"i": 0})
    with pytest.raises(RuntimeError) as info:  # Compose wraps it ("applying transform ..."), the cause chained
        post.wait()
    assert "disk full" in str(info.value.__cause__)


# --- the configs, end to end ----------------------------------------------------------------------------------------


def _save_model(bundle: Path) -> None:
    torch.manual_seed(0)
    (bundle / "models").mkdir(parents=True, exist_ok=True)
    torch.save(MNet(1, 3, kn=KN).state_dict(), bundle / "models" / "model.pt")


def _volume(path: Path, shape, seed: int, affine=None) -> None:
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, s) for s in shape), indexing="ij")
    blob = (x / 0.6) ** 2 + (y / 0.5) ** 2 + (z / 0.9) ** 2 < 1
    image = np.where(blob, 60.0, -200.0) + rng.normal(0, 40, shape)
    affine = np.diag([0.8, 0.8, 5.0, 1.0]) if affine is None else affine
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image.astype(np.int16), affine), str(path))


def infer(bundle: Path, dataset: Path, out: Path, **override):
    """configs/inference.json in this process; returns the workflow's final outputs (none: files are written)."""
    settings = {
        "bundle_root": str(bundle),
        "dataset_dir": str(dataset),
        "output_dir": str(out),
        "plan_file": PLAN,
        "kn": KN,
        "patch_size": PATCH,
        "num_workers": 0,
        **override,
    }
    workflow = ConfigWorkflow(config_file=str(BUNDLE / "configs" / "inference.json"), workflow_type=None, **settings)
    workflow.initialize()
    workflow.run()
    workflow.finalize()


def test_kits_layout_segments_every_case_into_its_own_file(tmp_path):
    bundle, data = tmp_path / "bundle", tmp_path / "kits"
    _save_model(bundle)
    for i, shape in enumerate([(40, 44, 9), (48, 40, 10)]):
        _volume(data / f"case_0000{i}" / "imaging.nii.gz", shape, seed=i)
    test = [{"image": f"case_0000{i}/imaging.nii.gz"} for i in range(2)]
    (data / "dataset.json").write_text(json.dumps({"training": [], "test": test}))
    infer(bundle, data, tmp_path / "out")
    for i, shape in enumerate([(40, 44, 9), (48, 40, 10)]):
        assert nib.load(tmp_path / "out" / f"case_0000{i}" / "imaging_seg.nii.gz").shape == shape


def _first_error(fn) -> str:
    with pytest.raises(Exception) as info:
        fn()
    error = find_input_error(info.value)
    assert error is not None, info.value
    return str(error)


def test_colliding_or_input_overwriting_outputs_stop_before_any_work(tmp_path):
    bundle, scans = tmp_path / "bundle", tmp_path / "scans"
    _save_model(bundle)
    _volume(scans / "x.nii", (40, 40, 9), seed=0)
    _volume(scans / "x.nii.gz", (40, 40, 9), seed=1)
    message = _first_error(lambda: infer(bundle, scans, tmp_path / "out"))
    assert "would hold the segmentations of both" in message and not (tmp_path / "out").exists()
    (scans / "x.nii").unlink()
    before = (scans / "x.nii.gz").read_bytes()
    message = _first_error(lambda: infer(bundle, scans, scans, output_postfix=""))
    assert "would overwrite the input" in message
    assert (scans / "x.nii.gz").read_bytes() == before and sorted(p.name for p in scans.iterdir()) == ["x.nii.gz"]


@pytest.mark.parametrize("background", [False, True])
def test_a_case_that_cannot_be_written_ends_the_run_as_its_one_line(tmp_path, monkeypatch, capsys, background):
    """A writer's BundleInputError (here: the disk fills up while the output is written) reaches the console hook
    as that error; MONAI's SaveImage used to replace it by an unchained "cannot find a suitable writer ... install
    the writer libraries" RuntimeError and StatsHandler logged that with a traceback."""
    import scripts.atomic

    bundle, scans, out = tmp_path / "bundle", tmp_path / "scans", tmp_path / "out"
    _save_model(bundle)
    _volume(scans / "s0.nii.gz", (40, 40, 9), seed=0)
    real_fsync = scripts.atomic._fsync

    def full_disk(path: str) -> None:
        if Path(path).parent == out:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        real_fsync(path)

    monkeypatch.setattr(scripts.atomic, "_fsync", full_disk)
    capsys.readouterr()
    message = _first_error(lambda: infer(bundle, scans, out, background_writes=background))
    assert message.startswith(f"{out / 's0_seg.nii.gz'}: cannot write, no space left on the disk holding {out}")
    assert list(out.iterdir()) == [], "no partial file, no temporary file"
    log = capsys.readouterr()
    assert "Traceback" not in log.out + log.err and "suitable writer" not in log.out + log.err


def test_rerun_skips_finished_cases_and_overwrite_redoes_them(tmp_path, capsys):
    bundle, scans, out = tmp_path / "bundle", tmp_path / "scans", tmp_path / "out"
    _save_model(bundle)
    for i in range(2):
        _volume(scans / f"s{i}.nii.gz", (40, 40, 9), seed=i)
    infer(bundle, scans, out)
    first = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert sorted(first) == ["s0_seg.nii.gz", "s1_seg.nii.gz"]
    (out / "s1_seg.nii.gz").unlink()  # as if the first run had been killed before this case
    capsys.readouterr()
    infer(bundle, scans, out)
    log = capsys.readouterr().out  # the bundle's logging.conf logs to stdout
    assert "1 of 2 case(s) already segmented" in log and "case 1/1 done" in log
    assert (out / "s0_seg.nii.gz").stat().st_mtime_ns == first["s0_seg.nii.gz"], "the finished case is not redone"
    assert (out / "s1_seg.nii.gz").is_file()
    second = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    infer(bundle, scans, out)  # nothing left to do: no error, nothing written
    log = capsys.readouterr().out
    assert "2 of 2 case(s) already segmented" in log and "0 case(s) to segment" in log
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == second
    time.sleep(0.01)
    infer(bundle, scans, out, overwrite=True)
    assert (out / "s0_seg.nii.gz").stat().st_mtime_ns > first["s0_seg.nii.gz"]


def test_background_writes_write_what_inline_writes(tmp_path, monkeypatch):
    """``background_writes true`` (inversion and writing in a worker thread while the next case's preprocessing
    and sliding window run, the same transform objects in both threads) writes the inline outputs bit for bit."""
    bundle, scans = tmp_path / "bundle", tmp_path / "scans"
    _save_model(bundle)
    for i in range(3):
        _volume(scans / f"s{i}.nii.gz", (40, 36 + 2 * i, 9 + 3 * i), seed=i, affine=np.diag([0.8, 0.8, 2.0 + i, 1]))
    threads = []
    write = AtomicNibabelWriter.write

    def recorded(self, *args, **kwargs):
        threads.append(threading.current_thread().name)
        return write(self, *args, **kwargs)

    monkeypatch.setattr(AtomicNibabelWriter, "write", recorded)
    infer(bundle, scans, tmp_path / "inline", background_writes=False)
    assert threads == ["MainThread"] * 3
    threads.clear()
    infer(bundle, scans, tmp_path / "background", background_writes=True)
    assert len(threads) == 3 and all(name.startswith("mnet-writer") for name in threads), threads
    for i in range(3):
        inline = nib.load(tmp_path / "inline" / f"s{i}_seg.nii.gz")
        background = nib.load(tmp_path / "background" / f"s{i}_seg.nii.gz")
        np.testing.assert_array_equal(np.asarray(background.dataobj), np.asarray(inline.dataobj))
        np.testing.assert_array_equal(background.affine, inline.affine)
    assert sorted(p.name for p in (tmp_path / "background").iterdir()) == [f"s{i}_seg.nii.gz" for i in range(3)]


def test_torchrun_splits_cases_and_matches_one_process(tmp_path):
    bundle, scans = tmp_path / "bundle", tmp_path / "scans"
    _save_model(bundle)
    for i in range(5):
        _volume(scans / f"s{i}.nii.gz", (40, 36 + 2 * i, 9), seed=i)
    infer(bundle, scans, tmp_path / "single")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2", "-m"]
    result = bundle_run(
        "--config_file", "['configs/inference.json','configs/multi_gpu_inference.json']",
        "--logging_file", "configs/logging.conf", "--bundle_root", str(bundle), "--plan_file", PLAN,
        "--dataset_dir", str(scans), "--output_dir", str(tmp_path / "ddp"), "--kn", json.dumps(KN),
        "--patch_size", json.dumps(PATCH), "--num_workers", "0",
        launcher=launcher, extra_env={"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""},
    )  # fmt: skip
    log = result.stdout + result.stderr
    done = re.findall(r"inference: rank (\d): case \d+/(\d+) done in [\d.]+ s: (\S+)", log)
    assert sorted(Path(name).name for _, _, name in done) == [f"s{i}.nii.gz" for i in range(5)], "each case once"
    assert {rank for rank, _, _ in done} == {"0", "1"}
    totals = {rank: int(total) for rank, total, _ in done}
    assert sorted(totals.values()) == [2, 3], "uneven shares, no padding duplicates"
    assert len(re.findall(r"writing: ", log)) == 5, "each output written exactly once"
    for i in range(5):
        single = nib.load(tmp_path / "single" / f"s{i}_seg.nii.gz")
        ddp = nib.load(tmp_path / "ddp" / f"s{i}_seg.nii.gz")
        np.testing.assert_array_equal(np.asarray(ddp.dataobj), np.asarray(single.dataobj))
        np.testing.assert_allclose(ddp.affine, single.affine)


def test_evaluation_saves_the_segmentation_that_inference_writes(tmp_path):
    """Same model, plan and images: evaluate's saved predictions equal inference's outputs voxel for voxel (they
    differed where inference blended per-window probabilities and evaluation blended logits)."""
    bundle, data = tmp_path / "bundle", tmp_path / "data"
    _save_model(bundle)
    write_dataset(data, num_cases=7, num_test=2, seed=3, inplane_range=(44, 50), slices_range=(9, 11))
    settings = {
        "bundle_root": str(bundle),
        "dataset_dir": str(data),
        "plan_file": PLAN,
        "kn": KN,
        "patch_size": PATCH,
        "num_workers": 0,
    }
    configs = [str(BUNDLE / "configs" / c) for c in ("train.json", "evaluate.json")]
    evaluation = ConfigWorkflow(
        config_file=configs, workflow_type=None, eval_split="test", save_predictions=True, cache_rate=0, **settings
    )
    evaluation.initialize()
    evaluation.run()
    infer(bundle, data, tmp_path / "inferred")
    evaluated = sorted((bundle / "eval" / "evaluation" / "predictions").glob("*_seg.nii.gz"))
    assert [p.name for p in evaluated] == sorted(p.name for p in (tmp_path / "inferred").glob("*_seg.nii.gz"))
    assert len(evaluated) == 2
    for path in evaluated:
        a, b = nib.load(path), nib.load(tmp_path / "inferred" / path.name)
        labels = np.asarray(b.dataobj)
        assert len(np.unique(labels)) > 1, "the comparison is not between two empty masks"
        np.testing.assert_array_equal(np.asarray(a.dataobj), labels)
        np.testing.assert_allclose(a.affine, b.affine, atol=1e-5)
