"""scripts.datalist: one lookup rule for a relative datalist, nnU-Net v2 raw datasets next to MSD ones, folder mode's
rule (case-insensitive suffixes, labels side by side, broken links), duplicates and train/test overlap."""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scripts.check_data import check_dataset
from scripts.datalist import (
    IMAGE_SUFFIXES,
    case_name,
    folder_images,
    image_suffix,
    inference_list,
    load_split,
    read_datalist,
)
from scripts.demo.data import write_dataset
from scripts.errors import BundleInputError
from scripts.plan import plan_dataset
from tests.test_workflows import bundle_run, common

ROOT = Path(__file__).resolve().parents[1]
AFFINE = np.diag([0.8, 0.8, 5.0, 1.0])
V2_LABELS = {"background": 0, "organ": 1, "lesion": 2}


def save(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def to_nnunet_v2(msd: Path, out: Path) -> Path:
    """The same cases as an nnU-Net v2 raw dataset: imagesTr/<case>_0000.nii.gz, labelsTr/<case>.nii.gz."""
    content = json.loads((msd / "dataset.json").read_text())
    for key, folder in (("training", "Tr"), ("test", "Ts")):
        for item in content[key]:
            case = case_name(item["image"])
            (out / f"images{folder}").mkdir(parents=True, exist_ok=True)
            (out / f"labels{folder}").mkdir(parents=True, exist_ok=True)
            shutil.copy(msd / item["image"], out / f"images{folder}" / f"{case}_0000.nii.gz")
            shutil.copy(msd / item["label"], out / f"labels{folder}" / f"{case}.nii.gz")
    v2 = {
        "channel_names": {"0": "CT"},
        "labels": V2_LABELS,
        "numTraining": len(content["training"]),
        "file_ending": ".nii.gz",
        "name": "Dataset123_Synthetic",
    }
    (out / "dataset.json").write_text(json.dumps(v2))
    return out


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> tuple[Path, Path]:
    """One small data set written twice: MSD (nnU-Net v1) layout and nnU-Net v2 raw layout."""
    msd = tmp_path_factory.mktemp("Task123_Synthetic")
    write_dataset(msd, num_cases=7, num_test=2, seed=5, inplane_range=(48, 52), slices_range=(9, 10))
    return msd, to_nnunet_v2(msd, tmp_path_factory.mktemp("v2") / "Dataset123_Synthetic")


def names(cases: list[dict]) -> list[str]:
    return [
        case_name(c["image"] if isinstance(c["image"], str) else c["image"][0]).removesuffix("_0000") for c in cases
    ]


# ---------------------------------------------------------------------------------------------------- one lookup rule


def test_relative_datalist_is_found_the_same_way_by_every_reader(layouts, tmp_path, monkeypatch):
    msd, _ = layouts
    monkeypatch.chdir(tmp_path)  # not the dataset folder: a relative datalist is looked up in dataset_dir first
    split = load_split("dataset.json", str(msd))
    assert len(split["train"]) + len(split["validation"]) == 5
    assert check_dataset(str(msd), "dataset.json") == []
    plan = plan_dataset(str(msd), "dataset.json", output=str(tmp_path / "plan.json"), workers=0)
    assert plan["out_channels"] == 3
    # ... then in the working directory, for all readers alike
    (tmp_path / "lists").mkdir()
    content = json.loads((msd / "dataset.json").read_text())
    (tmp_path / "lists" / "mine.json").write_text(json.dumps(content))
    assert names(load_split("lists/mine.json", str(msd))["test"]) == ["case_005", "case_006"]
    assert check_dataset(str(msd), "lists/mine.json") == []
    assert names(inference_list(str(msd), "lists/mine.json")) == ["case_005", "case_006"]
    with pytest.raises(BundleInputError, match=r"nothere\.json: datalist file not found .*dataset_dir, then"):
        load_split("nothere.json", str(msd))
    assert "datalist file not found" in str(check_dataset(str(msd), "nothere.json")[0])


def test_one_list_of_image_suffixes():
    assert image_suffix("B.NII.GZ") == ".NII.GZ" and image_suffix("c.NII") == ".NII" and image_suffix("x.txt") == ""
    assert case_name("/a/case_020.nii.gz") == "case_020" and case_name("scan.Nrrd") == "scan"
    tuples = re.compile(r"""\(\s*["']\.nii""")
    defined = [p.name for p in (ROOT / "scripts").rglob("*.py") if tuples.search(p.read_text())]
    assert defined == ["datalist.py"], f"image suffixes spelt out outside scripts/datalist.py: {defined}"
    assert IMAGE_SUFFIXES[0] == ".nii.gz"  # longest first, so .nii.gz is not taken for .gz


# ---------------------------------------------------------------------------------------------------- nnU-Net v2


def test_nnunet_v2_and_msd_give_the_same_split_and_cases(layouts):
    msd, v2 = layouts
    assert read_datalist("dataset.json", v2).layout == "nnunet_v2"
    for fold in range(5):
        a = load_split(str(msd / "dataset.json"), str(msd), fold)
        b = load_split(str(v2 / "dataset.json"), str(v2), fold)
        for key in ("train", "validation", "test"):
            assert names(a[key]) == names(b[key]), (fold, key)
    case = load_split(str(v2 / "dataset.json"), str(v2))["train"][0]
    assert Path(case["image"]).name.endswith("_0000.nii.gz") and Path(case["label"]).parent.name == "labelsTr"
    assert names(inference_list(str(v2), str(v2 / "dataset.json"))) == ["case_005", "case_006"]  # imagesTs
    assert check_dataset(str(v2), "dataset.json", fold=0) == []


def test_nnunet_v2_and_msd_give_the_same_plan(layouts, tmp_path):
    msd, v2 = layouts
    a = plan_dataset(str(msd), "dataset.json", output=str(tmp_path / "a.json"), workers=0)
    b = plan_dataset(str(v2), "dataset.json", output=str(tmp_path / "b.json"), workers=0)
    assert a == b
    assert b["labels"] == {"0": "background", "1": "organ", "2": "lesion"} and b["modality"] == "CT"


def _v2(root: Path, channels: dict, labels: dict, cases: dict[str, int], **extra) -> Path:
    for case, n in cases.items():
        for c in range(n):
            save(root / "imagesTr" / f"{case}_{c:04d}.nii.gz", np.ones((8, 8, 3), np.float32))
        save(root / "labelsTr" / f"{case}.nii.gz", np.zeros((8, 8, 3), np.uint8))
    content = {"channel_names": channels, "labels": labels, "numTraining": len(cases), "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps({**content, **extra}))
    return root


def test_nnunet_v2_multichannel_regions_and_mistakes(tmp_path):
    two = _v2(tmp_path / "two", {"0": "T2", "1": "ADC"}, {"background": 0, "zone": 1}, {"a": 2, "b": 2})
    items = read_datalist("dataset.json", two)
    cases = load_split(str(items.path), str(two), num_folds=2)["train"]
    assert [Path(p).name for p in cases[0]["image"]] in (
        ["a_0000.nii.gz", "a_0001.nii.gz"],
        ["b_0000.nii.gz", "b_0001.nii.gz"],
    )
    assert check_dataset(str(two)) == []
    regions = _v2(tmp_path / "regions", {"0": "T1"}, {"background": 0, "whole": [1, 2], "core": 2}, {"a": 1})
    lines = [str(p) for p in check_dataset(str(regions))]
    assert any("region-based 'labels'" in line and "'whole'" in line for line in lines), lines
    with pytest.raises(BundleInputError, match="region-based 'labels'"):
        plan_dataset(str(regions), "dataset.json", output=str(tmp_path / "plan.json"), workers=0)
    missing = _v2(tmp_path / "missing", {"0": "T2", "1": "ADC"}, {"background": 0, "zone": 1}, {"a": 2, "b": 1})
    lines = [str(p) for p in check_dataset(str(missing))]
    assert any("b_0001.nii.gz: file not found" in line for line in lines), lines
    wrong_count = _v2(tmp_path / "count", {"0": "CT"}, {"background": 0, "x": 1}, {"a": 1}, numTraining=3)
    with pytest.raises(BundleInputError, match=r"numTraining is 3 but .*imagesTr holds 1 case"):
        load_split(str(wrong_count / "dataset.json"), str(wrong_count))


# ---------------------------------------------------------------------------------------------------- leaks


def test_duplicates_and_test_cases_in_training_are_reported(layouts, tmp_path, caplog):
    msd, _ = layouts
    content = json.loads((msd / "dataset.json").read_text())
    twice = {**content, "training": content["training"] + content["training"][:1]}
    (tmp_path / "twice.json").write_text(json.dumps(twice))
    with pytest.raises(BundleInputError, match=r"twice\.json: case case_000 is listed twice in 'training'"):
        load_split(str(tmp_path / "twice.json"), str(msd))
    leak = {**content, "test": content["test"] + content["training"][2:3]}
    (tmp_path / "leak.json").write_text(json.dumps(leak))
    with caplog.at_level(logging.WARNING, logger="mnet.datalist"):
        assert len(load_split(str(tmp_path / "leak.json"), str(msd))["test"]) == 3
    assert "case case_002 is in both 'training' and 'test'; it would leak into evaluation" in caplog.text
    validation = {**content, "validation": content["training"][:1]}
    (tmp_path / "validation.json").write_text(json.dumps(validation))
    with pytest.raises(BundleInputError, match=r"case case_000 is in both 'training' and 'validation'; it would leak"):
        load_split(str(tmp_path / "validation.json"), str(msd))
    lines = [str(p) for p in check_dataset(str(msd), str(tmp_path / "leak.json"))]
    assert lines == [
        f"{tmp_path / 'leak.json'}: case case_002 is in both 'training' and 'test'; it would leak into evaluation"
    ], lines


# ---------------------------------------------------------------------------------------------------- folder mode


def test_folder_mode_rule(tmp_path):
    volume = np.ones((8, 8, 3), np.float32)
    for name in ("a.nii.gz", "B.NII.GZ", "c.NII", "x_image.nii.gz", "x_label.nii.gz", "y_seg.nii.gz", ".tmp_z.nii.gz"):
        save(tmp_path / name, volume)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub").mkdir()
    save(tmp_path / "sub" / "deeper.nii.gz", volume)
    found = [Path(c["image"]).name for c in folder_images(tmp_path)]
    assert found == ["B.NII.GZ", "a.nii.gz", "c.NII", "x_image.nii.gz"]  # labels and earlier outputs are not segmented
    os.symlink(tmp_path / "gone.nii.gz", tmp_path / "link.nii.gz")
    with pytest.raises(BundleInputError, match=r"link\.nii\.gz: broken symbolic link"):
        inference_list(str(tmp_path), str(tmp_path / "dataset.json"))
    with pytest.raises(BundleInputError, match=r"a\.nii\.gz: --dataset_dir is a file; give the folder"):
        inference_list(str(tmp_path / "a.nii.gz"), str(tmp_path / "a.nii.gz" / "dataset.json"))
    only_labels = tmp_path / "labels"
    only_labels.mkdir()
    (only_labels / "x_label.nrrd").write_bytes(b"NRRD0004")  # only the name matters here
    with pytest.raises(BundleInputError, match=r"no images .* skipped label/output files x_label\.nrrd"):
        folder_images(only_labels)


def test_folder_of_nnunet_channel_files_is_one_case_per_identifier(tmp_path):
    for case in ("p1", "p2"):
        for c in range(2):
            save(tmp_path / f"{case}_{c:04d}.nii.gz", np.ones((8, 8, 3), np.float32))
    cases = folder_images(tmp_path)
    assert [[Path(p).name for p in c["image"]] for c in cases] == [
        ["p1_0000.nii.gz", "p1_0001.nii.gz"],
        ["p2_0000.nii.gz", "p2_0001.nii.gz"],
    ]


# ---------------------------------------------------------------------------------------------------- workflows


@pytest.fixture(scope="module")
def trained_both(layouts, tmp_path_factory) -> dict[str, Path]:
    """One tiny training run per layout, same settings and seed."""
    works = {}
    for name, data in zip(("msd", "v2"), layouts):
        works[name] = tmp_path_factory.mktemp(f"bundle_{name}")
        bundle_run("training", "--config_file", "configs/train.json", *common(works[name], data),
                   "--epochs", "1", "--iterations_per_epoch", "1")  # fmt: skip
    return works


def _dice_rows(out: Path) -> list[list[str]]:
    with open(out / "evaluation" / "val_mean_dice_raw.csv") as f:
        return [row[1:] for row in csv.reader(f)]  # without the file name, which differs between layouts


def _flip_labels_las(folder: Path) -> None:
    """Store every label with its x axis reversed (LAS): other bytes, the same voxels in space."""
    for path in folder.glob("*.nii.gz"):
        label = nib.load(path)
        affine = label.affine.copy()
        affine[:3, 3] = (label.affine @ [label.shape[0] - 1, 0, 0, 1])[:3]
        affine[:3, 0] = -label.affine[:3, 0]
        nib.save(nib.Nifti1Image(np.asarray(label.dataobj)[::-1].copy(), affine), str(path))


@pytest.mark.slow
def test_nnunet_v2_trains_evaluates_and_infers_like_msd(layouts, trained_both, tmp_path):
    import torch

    msd, v2 = layouts
    weights = {
        k: torch.load(w / "models" / "model.pt", map_location="cpu", weights_only=True) for k, w in trained_both.items()
    }
    assert all(torch.equal(weights["msd"][k], weights["v2"][k]) for k in weights["msd"]), "same data, same training"
    for name, data in (("msd", msd), ("v2", v2)):
        bundle_run(
            "--config_file",
            "['configs/train.json','configs/evaluate.json']",
            *common(trained_both[name], data),
            "--eval_split",
            "test",
            "--output_dir",
            str(tmp_path / name),
        )
        bundle_run("--config_file", "configs/inference.json", *common(trained_both[name], data),
                   "--output_dir", str(tmp_path / f"pred_{name}"))  # fmt: skip
    assert _dice_rows(tmp_path / "msd") == _dice_rows(tmp_path / "v2") and len(_dice_rows(tmp_path / "v2")) == 3
    for case in ("case_005", "case_006"):
        a = nib.load(tmp_path / "pred_msd" / f"{case}_seg.nii.gz")
        b = nib.load(tmp_path / "pred_v2" / f"{case}_0000_seg.nii.gz")
        np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
        np.testing.assert_allclose(a.affine, b.affine)
    # labels stored flipped (LAS) but the same in space: accepted, and evaluated as the same labels
    las = tmp_path / "las"
    shutil.copytree(msd, las)
    _flip_labels_las(las / "labelsTs")
    bundle_run("--config_file", "['configs/train.json','configs/evaluate.json']", *common(trained_both["msd"], las),
               "--eval_split", "test", "--output_dir", str(tmp_path / "las_eval"))  # fmt: skip
    assert _dice_rows(tmp_path / "las_eval") == _dice_rows(tmp_path / "msd")


# ---------------------------------------------------------------------------------------------------- output formats


def test_output_format_is_checked_before_any_case(tmp_path, monkeypatch):
    from monai.bundle import ConfigWorkflow
    from scripts.errors import find_input_error
    from scripts.writers import AtomicNibabelWriter, writer_for

    assert writer_for(".nii.gz") is AtomicNibabelWriter and writer_for(".NII") is AtomicNibabelWriter
    with pytest.raises(BundleInputError, match=r"--output_ext \.png: unsupported output format \(supported: \.nii\.gz"):
        writer_for(".png")
    monkeypatch.setitem(sys.modules, "itk", None)  # as with only requirements.txt installed
    with pytest.raises(BundleInputError, match=r"--output_ext \.nrrd: writing \.nrrd needs the itk package"):
        writer_for(".nrrd")
    scans = tmp_path / "scans"
    save(scans / "scan.nii.gz", np.random.default_rng(0).normal(size=(40, 40, 8)).astype(np.float32))
    out = tmp_path / "out"
    workflow = ConfigWorkflow(
        config_file=str(ROOT / "configs/inference.json"),
        workflow_type=None,
        bundle_root=str(ROOT),
        dataset_dir=str(scans),
        output_dir=str(out),
        output_ext=".nrrd",
        load_pretrain=False,
        kn=[4, 4, 6, 6, 8],
        patch_size=[32, 32, 8],
        num_workers=0,
    )
    with pytest.raises(Exception) as info:
        workflow.initialize()
        workflow.run()
    assert "writing .nrrd needs the itk package" in str(find_input_error(info.value))
    assert not out.exists(), "nothing is segmented or written before the format check"


def test_nrrd_output_when_itk_is_installed(tmp_path):
    pytest.importorskip("itk")
    scans = tmp_path / "scans"
    save(scans / "scan.nii.gz", np.random.default_rng(0).normal(size=(40, 40, 8)).astype(np.float32))
    bundle_run("--config_file", "configs/inference.json", "--bundle_root", str(ROOT), "--dataset_dir", str(scans),
               "--output_dir", str(tmp_path / "out"), "--output_ext", ".nrrd", "--load_pretrain", "false",
               "--kn", "[4,4,6,6,8]", "--patch_size", "[32,32,8]", "--num_workers", "0")  # fmt: skip
    from monai.transforms import LoadImage

    pred = LoadImage(image_only=True)(str(tmp_path / "out" / "scan_seg.nrrd"))
    assert tuple(pred.shape) == (40, 40, 8)


def test_evaluation_compares_a_flipped_label_in_space(tmp_path):
    """evaluate.json keeps the original label for the metrics; one stored LAS must come out on the image's grid."""
    from monai.bundle import ConfigParser

    image = np.random.default_rng(0).normal(size=(12, 10, 4)).astype(np.float32)
    label = (np.arange(480).reshape(12, 10, 4) % 3).astype(np.uint8)
    las = AFFINE.copy()
    las[0, 0], las[0, 3] = -0.8, 0.8 * 11
    case = {
        "image": str(save(tmp_path / "img.nii.gz", image)),
        "label": str(save(tmp_path / "lab.nii.gz", label[::-1].copy(), las)),
    }
    parser = ConfigParser()
    parser.read_config([str(ROOT / "configs/train.json"), str(ROOT / "configs/evaluate.json")])
    parser.update({"bundle_root": str(ROOT), "dataset_dir": str(tmp_path)})
    out = parser.get_parsed_content("validate#preprocessing")(case)
    np.testing.assert_array_equal(np.asarray(out["original_label"])[0], label)
