"""Tests of the dataset planner (scripts/plan.py) and the plan file helpers (scripts/plan_file.py).

The end-to-end tests run MONAI's DataAnalyzer on a few tiny synthetic thick-slice NIfTI cases; the decision tests
feed `decide_plan` hand-made summaries so the nnU-Net-style rules are checked without files.
"""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scripts.plan import decide_plan, format_table, main, plan_dataset, summarize_report, voxel_budget
from scripts.plan_file import DEFAULT_PLAN, PLAN_KEYS, load_plan, save_plan

LABELS = {"0": "background", "1": "organ", "2": "lesion"}
# (spacing, shape) per case: the medians are 0.8 x 0.8 x 5 mm, thick axis last
CASES = [((0.8, 0.8, 5.0), (48, 48, 10)), ((0.7, 0.7, 5.0), (54, 52, 10)), ((0.9, 0.9, 4.0), (44, 44, 12))]


def _save(path: Path, array: np.ndarray, spacing: tuple[float, float, float]) -> None:
    """NIfTI with a diagonal (RAS) affine, so MONAI's Orientationd('RAS') keeps the axis order."""
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), str(path))


def _case(root: Path, name: str, spacing, shape, channels: int = 1, foreground: bool = True, body: bool = True):
    """CT-like case: air, a fat-like body (-100 HU), an organ (label 1, ~80 HU) holding a lesion (label 2, ~40 HU)."""
    rng = np.random.default_rng(len(name))
    label = np.zeros(shape, np.uint8)
    if foreground:
        label[10:30, 12:32, 2:8] = 1
        label[16:22, 18:24, 4:6] = 2
    image = rng.normal(-800.0, 20.0, shape).astype(np.float32)
    if body:  # MONAI's ImageStats crops to voxels > 0, so real CT (with tissue above 0 HU) is needed
        image[4:40, 4:40, :] = rng.normal(-100.0, 60.0, (36, 36, shape[2]))
    image[label == 1] = rng.normal(80.0, 20.0, int((label == 1).sum()))
    image[label == 2] = rng.normal(40.0, 10.0, int((label == 2).sum()))
    if channels > 1:
        image = np.stack([image] * channels, axis=-1)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    _save(root / "imagesTr" / f"{name}.nii.gz", image, spacing)
    _save(root / "labelsTr" / f"{name}.nii.gz", label, spacing)
    return {"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"}


def _dataset(root: Path, training: list[dict], **extra) -> Path:
    datalist = {"name": "synthetic", "modality": {"0": "CT"}, "labels": LABELS, "training": training, **extra}
    (root / "dataset.json").write_text(json.dumps(datalist))
    return root


@pytest.fixture(scope="module")
def planned(tmp_path_factory) -> tuple[dict, Path]:
    root = tmp_path_factory.mktemp("thick_ct")
    _dataset(root, [_case(root, f"case_{i}", sp, sh) for i, (sp, sh) in enumerate(CASES)])
    out = root / "configs" / "plan.json"
    return plan_dataset(str(root), "dataset.json", output=str(out), workers=0), out


# ---------------------------------------------------------------------------------------------------- end to end


def test_end_to_end_plan_geometry(planned):
    plan, _ = planned
    assert plan["thick_axis"] == 2
    assert plan["anisotropic"] is True
    assert plan["spacing"] == pytest.approx([0.8, 0.8, 5.0], abs=1e-4)
    assert plan["median_shape"] == [48, 48, 10]
    assert all(p <= m for p, m in zip(plan["patch_size"], plan["median_shape"], strict=True))
    assert all(p % 16 == 0 for p in plan["patch_size"][:2])
    assert plan["batch_size"] >= 2


def test_end_to_end_plan_content_and_file(planned):
    plan, out = planned
    assert load_plan(out) == plan
    assert list(plan) == list(PLAN_KEYS)
    assert plan["modality"] == "CT" and plan["in_channels"] == 1
    assert plan["labels"] == LABELS and plan["out_channels"] == 3
    norm = plan["normalization"]
    assert norm["scheme"] == "ct"
    # foreground is the blob (~80 HU organ, ~40 HU lesion), not the -800 HU air around it
    assert 0 < norm["clip"][0] < norm["mean"] < norm["clip"][1] < 200
    assert 5 < norm["std"] < 50


def test_cli_prints_table(planned, tmp_path, capsys):
    _, out = planned
    root = out.parent.parent
    main(str(root), str(root / "dataset.json"), output=str(tmp_path / "plan.json"), kn="[16,24,32,40,48]", workers=0)
    printed = capsys.readouterr().out
    assert "patch_size" in printed and "why" in printed
    assert load_plan(tmp_path / "plan.json")["kn"] == [16, 24, 32, 40, 48]


def test_mixed_channels_fail_with_file_name(tmp_path):
    root = _dataset(tmp_path, [_case(tmp_path, "a", *CASES[0]), _case(tmp_path, "b", *CASES[0], channels=2)])
    with pytest.raises(ValueError, match=r"dataset\.json: images have mixed channel counts"):
        plan_dataset(str(root), "dataset.json", output=str(tmp_path / "plan.json"), workers=0)
    assert not (tmp_path / "plan.json").exists()


def test_all_empty_labels_fail(tmp_path):
    training = [_case(tmp_path, n, *CASES[0], foreground=False) for n in ("a", "b")]
    root = _dataset(tmp_path, training)
    with pytest.raises(ValueError, match=r"dataset\.json: the labels are empty .* in every case"):
        plan_dataset(str(root), "dataset.json", output=str(tmp_path / "plan.json"), workers=0)


def test_cases_skipped_by_monai_are_reported(tmp_path):
    root = _dataset(
        tmp_path, [_case(tmp_path, "a", *CASES[0]), _case(tmp_path, "b", *CASES[0], foreground=False, body=False)]
    )
    with pytest.raises(ValueError, match=r"dataset\.json: MONAI DataAnalyzer skipped 1 case\(s\); first: .*b\.nii\.gz"):
        plan_dataset(str(root), "dataset.json", output=str(tmp_path / "plan.json"), workers=0)


def test_unreadable_and_missing_files_are_named(tmp_path):
    root = _dataset(tmp_path, [_case(tmp_path, "a", *CASES[0])])
    (tmp_path / "imagesTr" / "a.nii.gz").write_bytes(b"not a nifti file")
    with pytest.raises(ValueError, match=r"a\.nii\.gz: unreadable image"):
        plan_dataset(str(root), "dataset.json", output=str(tmp_path / "plan.json"), workers=0)
    (tmp_path / "imagesTr" / "a.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"dataset\.json: image file not found: .*a\.nii\.gz"):
        plan_dataset(str(root), "dataset.json", output=str(tmp_path / "plan.json"), workers=0)


def test_empty_training_list_and_cli_exit(tmp_path):
    _dataset(tmp_path, [])
    with pytest.raises(ValueError, match=r"dataset\.json: 'training' must be a non-empty list"):
        plan_dataset(str(tmp_path), "dataset.json", output=str(tmp_path / "plan.json"))
    with pytest.raises(SystemExit, match=r"^error: .*dataset\.json: 'training'"):
        main(str(tmp_path), "dataset.json", output=str(tmp_path / "plan.json"), workers=0)


# ---------------------------------------------------------------------------------------------------- decide_plan


def _summary(spacing, shape, n: int = 20, classes=(0, 1, 2), channels: int = 1) -> dict:
    return {
        "spacings": [list(spacing)] * n,
        "shapes": [list(shape)] * n,
        "channels": [channels] * n,
        "classes": list(classes),
        "fg_intensity": {"p00_5": -79.0, "p99_5": 304.0, "mean": 101.0, "std": 76.9},
    }


KITS = _summary((0.78, 0.78, 5.0), (512, 512, 64))  # KiTS19 resampled to 5 mm slices, as in the paper


def test_kits_like_matches_paper_patch():
    plan = decide_plan(KITS, "CT", {"0": "background", "1": "kidney", "2": "tumor"}, gpu_memory_gb=32)
    x, y, z = plan["patch_size"]
    assert abs(x - 224) <= 16 and abs(y - 224) <= 16 and abs(z - 32) <= 4  # paper: 32x224x224, batch 2
    assert plan["batch_size"] == 2
    assert plan["batch_size"] * math.prod(plan["patch_size"]) <= voxel_budget(32, plan["kn"])
    assert plan["thick_axis"] == 2 and plan["anisotropic"] is True
    assert plan["normalization"] == {"scheme": "ct", "clip": [-79.0, 304.0], "mean": 101.0, "std": 76.9}
    assert "patch_size" in format_table(plan)


def test_thick_axis_first_is_detected():
    plan = decide_plan(_summary((5.0, 0.78, 0.78), (64, 512, 512)), "CT")
    assert plan["thick_axis"] == 0 and plan["anisotropic"] is True
    assert plan["patch_size"][1] % 16 == 0 and plan["patch_size"][2] % 16 == 0
    assert plan["patch_size"][0] < plan["patch_size"][1]


def test_isotropic_data_is_not_anisotropic():
    plan = decide_plan(_summary((1.0, 1.0, 1.2), (128, 128, 100)), "MR")
    assert plan["anisotropic"] is False
    assert plan["normalization"] == {"scheme": "zscore_nonzero"}
    assert all(p % 16 == 0 for p in plan["patch_size"])


def test_less_gpu_memory_or_wider_net_gives_smaller_patch():
    big = math.prod(decide_plan(KITS, "CT", gpu_memory_gb=32)["patch_size"])
    assert math.prod(decide_plan(KITS, "CT", gpu_memory_gb=12)["patch_size"]) < big
    assert math.prod(decide_plan(KITS, "CT", kn=[64, 96, 128, 160, 192])["patch_size"]) < big
    small = decide_plan(KITS, "CT", gpu_memory_gb=8)
    assert small["batch_size"] * math.prod(small["patch_size"]) <= voxel_budget(8, small["kn"])


def test_small_images_raise_batch_within_caps():
    plan = decide_plan(_summary((0.8, 0.8, 5.0), (64, 64, 16), n=100), "CT")
    assert plan["patch_size"] == [64, 64, 16]
    assert 2 < plan["batch_size"] <= 8  # 5 % of 100 cases = 5 images


def test_labels_from_data_and_unknown_label_values():
    plan = decide_plan(_summary((0.8, 0.8, 5.0), (64, 64, 16), classes=(0, 2)), "CT", labels=None)
    assert plan["labels"] == {"0": "background", "1": "class_1", "2": "class_2"} and plan["out_channels"] == 3
    with pytest.raises(ValueError, match=r"label values \[3\] occur in the data"):
        decide_plan(_summary((0.8, 0.8, 5.0), (64, 64, 16), classes=(0, 1, 3)), "CT", labels=LABELS)


def test_decide_plan_rejects_mixed_channels_and_empty_labels():
    mixed = _summary((0.8, 0.8, 5.0), (64, 64, 16), n=2)
    mixed["channels"] = [1, 2]
    with pytest.raises(ValueError, match="data.json: images have mixed channel counts"):
        decide_plan(mixed, "CT", source="data.json")
    with pytest.raises(ValueError, match="empty"):
        decide_plan(_summary((0.8, 0.8, 5.0), (64, 64, 16), classes=(0,)), "CT")


# ---------------------------------------------------------------------------------------------------- plan file


def test_default_plan_round_trip(tmp_path):
    path = save_plan(DEFAULT_PLAN, tmp_path / "sub" / "plan.json")
    assert load_plan(path) == DEFAULT_PLAN
    assert path.read_text().startswith('{\n    "plan_version": 1,')
    assert [p.name for p in path.parent.iterdir()] == ["plan.json"]  # no temp file left behind


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"patch_size": [1, 2]}, r"'patch_size' must be a list of 3 positive integers, got \[1, 2\]"),
        ({"thick_axis": 3}, "'thick_axis' must be 0, 1 or 2"),
        ({"out_channels": 2}, r"'out_channels' \(2\) must equal the number of labels \(3\)"),
        ({"labels": {"1": "organ"}}, 'must contain "0"'),
        ({"normalization": {"scheme": "ct", "clip": [300, -200], "mean": 0, "std": 1}}, "low < high"),
        ({"batch_size": True}, "'batch_size' must be a positive integer"),
        ({"extra": 1}, r"unknown keys \['extra'\]"),
    ],
)
def test_invalid_plans_name_the_file(tmp_path, change, message):
    plan = {**copy.deepcopy(DEFAULT_PLAN), **change}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: .*{message}"):
        load_plan(path)
    with pytest.raises(ValueError, match=message):
        save_plan(plan, tmp_path / "other.json")
    assert not (tmp_path / "other.json").exists()


def test_malformed_or_missing_plan_json(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text('{"plan_version": 1,')
    with pytest.raises(ValueError, match=r"plan\.json: not valid JSON"):
        load_plan(path)
    plan = copy.deepcopy(DEFAULT_PLAN)
    del plan["kn"]
    path.write_text(json.dumps(plan))
    with pytest.raises(ValueError, match=r"plan\.json: missing keys \['kn'\]"):
        load_plan(path)
    with pytest.raises(ValueError, match=r"nope\.json: cannot read the plan file"):
        load_plan(tmp_path / "nope.json")


def test_summarize_report_skips_empty_cases_for_intensities():
    def case(labels, mean):
        fg = {"percentile_00_5": mean - 50, "percentile_99_5": mean + 50, "mean": mean, "stdev": 10.0}
        return {
            "image_stats": {"spacing": [0.8, 0.8, 5.0], "shape": [[48, 48, 10]], "channels": 1},
            "image_foreground_stats": {"intensity": [fg]},
            "label_stats": {"labels": labels},
        }

    stats = summarize_report({"stats_by_cases": [case([0, 1], 100.0), case([0, 1, 2], 60.0), case([0], 0.0)]})
    assert stats["fg_intensity"] == {"p00_5": 30.0, "p99_5": 130.0, "mean": 80.0, "std": 10.0}
    assert stats["classes"] == [0, 1, 2] and stats["cases_with_foreground"] == 2
    assert stats["shapes"] == [[48, 48, 10]] * 3 and stats["channels"] == [1, 1, 1]


def test_integrity_problems_stop_planning_before_analysis(tmp_path):
    """Planning runs the same per-case checks as training's start-up (scripts.check_data)."""
    training = [_case(tmp_path, n, *CASES[0]) for n in ("a", "b")]
    bad = nib.load(tmp_path / "imagesTr" / "b.nii.gz")
    array = np.asarray(bad.dataobj, dtype=np.float32)
    array[0, 0, 0] = np.nan
    _save(tmp_path / "imagesTr" / "b.nii.gz", array, CASES[0][0])
    root = _dataset(tmp_path, training)
    with pytest.raises(ValueError, match=r"b\.nii\.gz: .*NaN"):
        plan_dataset(str(root), "dataset.json", output=str(tmp_path / "plan.json"), workers=0)
    assert not (tmp_path / "plan.json").exists()


def test_saved_plan_is_in_the_zoo_json_format(tmp_path):
    """4-space indentation, one item per line: what the zoo's pretty-format-json hook would write."""

    plan = load_plan(Path(__file__).resolve().parents[1] / "configs" / "plan.json")
    path = save_plan(plan, tmp_path / "plan.json")
    assert path.read_text() == json.dumps(json.loads(path.read_text()), indent=4) + "\n"
