"""scripts.check_data must find every kind of broken case in one pass and say file, problem and expectation."""

from __future__ import annotations

import copy
import gzip
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scripts.check_data import check_dataset, check_or_raise, check_output_dir
from scripts.errors import BundleInputError, find_input_error
from scripts.plan_file import DEFAULT_PLAN

ROOT = Path(__file__).resolve().parents[1]
AFFINE = np.diag([0.8, 0.8, 5.0, 1.0])


def save(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return str(path)


def good_case(root: Path, name: str, shape=(12, 10, 4)) -> dict:
    image = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    label = (np.arange(np.prod(shape)).reshape(shape) % 3).astype(np.uint8)
    return {"image": save(root / f"{name}_img.nii.gz", image), "label": save(root / f"{name}_lab.nii.gz", label)}


def plan(**changes) -> dict:
    result = copy.deepcopy(DEFAULT_PLAN)
    result.update(changes)
    return result


def write_datalist(root: Path, training: list, **extra) -> Path:
    path = root / "dataset.json"
    path.write_text(json.dumps({"labels": {"0": "bg", "1": "a", "2": "b"}, "training": training, **extra}))
    return path


@pytest.fixture()
def broken(tmp_path: Path) -> Path:
    """One data set with one case per problem, plus two good cases."""
    shape = (12, 10, 4)
    cases = [good_case(tmp_path, "ok1"), good_case(tmp_path, "ok2")]
    bad = good_case(tmp_path, "trunc")
    data = Path(bad["image"]).read_bytes()
    Path(bad["image"]).write_bytes(data[: len(data) // 2])
    cases.append(bad)
    cases.append({"image": str(tmp_path / "missing.nii.gz"), "label": good_case(tmp_path, "m")["label"]})
    geo = good_case(tmp_path, "geo")
    save(Path(geo["label"]), np.zeros(shape, np.uint8), np.diag([0.8, 0.8, 2.5, 1.0]))
    shp = good_case(tmp_path, "shape")
    save(Path(shp["label"]), np.zeros((12, 10, 5), np.uint8))
    chan = good_case(tmp_path, "chan")
    save(Path(chan["image"]), np.zeros((*shape, 2), np.float32))
    lab = good_case(tmp_path, "range")
    save(Path(lab["label"]), np.full(shape, 7, np.uint8))
    frac = good_case(tmp_path, "frac")
    save(Path(frac["label"]), np.full(shape, 0.5, np.float32))
    nan = good_case(tmp_path, "nan")
    save(Path(nan["image"]), np.full(shape, np.nan, np.float32))
    flat = {"image": save(tmp_path / "flat_img.nii.gz", np.zeros((12, 10), np.float32))}
    cases += [geo, shp, chan, lab, frac, nan, flat]
    write_datalist(tmp_path, cases)
    return tmp_path


EXPECTED = [
    ("trunc_img.nii.gz", "unreadable or truncated"),
    ("missing.nii.gz", "file not found"),
    ("geo_lab.nii.gz", "label geometry differs"),
    ("shape_lab.nii.gz", "label shape (12, 10, 5) differs"),
    ("chan_img.nii.gz", "2 image channel(s)"),
    ("range_lab.nii.gz", "label values [7] outside the declared classes"),
    ("frac_lab.nii.gz", "non-integer label values"),
    ("nan_img.nii.gz", "480 NaN/Inf voxel(s)"),
    ("flat_img.nii.gz", "2D image of shape (12, 10)"),
]


def test_every_problem_reported_at_once(broken: Path):
    lines = [str(p) for p in check_dataset(str(broken), "dataset.json", plan())]
    for name, message in EXPECTED:
        assert any(name in line and message in line for line in lines), (name, message, lines)
    assert len(lines) == len(EXPECTED), lines
    assert all("(expected " in line for line in lines)


def test_cli_lists_all_and_fails(broken: Path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.check_data",
            "--dataset_dir",
            str(broken),
            "--plan",
            str(ROOT / "configs/plan.json"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert len(result.stdout.strip().splitlines()) == len(EXPECTED)
    assert "9 problem(s) found" in result.stderr


def test_clean_dataset_passes_and_unusual_geometry_is_fine(tmp_path: Path):
    cases = [
        good_case(tmp_path, "a"),
        good_case(tmp_path, "odd", shape=(7, 33, 3)),
        good_case(tmp_path, "thick_first", shape=(3, 40, 40)),
    ]
    write_datalist(tmp_path, cases)
    assert check_dataset(str(tmp_path), plan=plan(thick_axis=0)) == []
    check_or_raise(cases, plan(anisotropic=False))  # isotropic: a note, no error


@pytest.mark.parametrize(
    "content,message",
    [
        ("{not json", "malformed JSON"),
        ("[1, 2]", "a JSON list"),
        ('{"training": []}', "'training' list is empty or missing"),
        ('{"training": {"image": "a"}}', "'training' must be a list of cases"),
    ],
)
def test_malformed_datalist(tmp_path: Path, content: str, message: str):
    (tmp_path / "dataset.json").write_text(content)
    lines = [str(p) for p in check_dataset(str(tmp_path))]
    assert any("dataset.json" in line and message in line for line in lines), lines


def test_malformed_plan_and_empty_fold(tmp_path: Path):
    write_datalist(tmp_path, [good_case(tmp_path, "a")])
    (tmp_path / "plan.json").write_text('{"plan_version": 1}')
    lines = [str(p) for p in check_dataset(str(tmp_path), plan=str(tmp_path / "plan.json"), fold=0)]
    assert any("plan.json: missing keys" in line for line in lines), lines
    assert any("1 training cases cannot be split into 5 folds" in line for line in lines), lines


def test_check_or_raise_one_line_names_first_file(broken: Path):
    cases = json.loads((broken / "dataset.json").read_text())["training"]
    with pytest.raises(BundleInputError) as info:
        check_or_raise(cases, plan())
    message = str(info.value)
    assert "\n" not in message and "trunc_img.nii.gz: unreadable or truncated" in message
    assert "+8 more problem(s)" in message
    wrapped = RuntimeError("Failed to evaluate ConfigExpression")
    wrapped.__cause__ = info.value
    assert find_input_error(wrapped) is info.value


def test_output_dir_check_creates_nothing(tmp_path: Path):
    assert check_output_dir(str(tmp_path / "a" / "b")) and not (tmp_path / "a").exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(BundleInputError, match=r"file/out: output folder cannot be created"):
        check_output_dir(str(blocker / "out"))


def test_truncated_gzip_detected_even_with_intact_header(tmp_path: Path):
    case = good_case(tmp_path, "t", shape=(40, 40, 8))
    raw = gzip.decompress(Path(case["image"]).read_bytes())
    Path(case["image"]).write_bytes(gzip.compress(raw)[:-200])
    write_datalist(tmp_path, [case])
    assert any("unreadable or truncated" in str(p) for p in check_dataset(str(tmp_path)))


# ---------------------------------------------------------------------------------------------------- world space

LAS = np.diag([-0.8, 0.8, 5.0, 1.0])


def test_label_stored_flipped_but_same_in_space_is_accepted(tmp_path: Path):
    """A label stored LAS (x axis reversed, origin at the other end) covers the same voxels: accepted. The same
    array with only the affine's sign flipped (origin kept) is mirrored in space: rejected."""
    shape = (12, 10, 4)
    case = good_case(tmp_path, "a", shape)
    label = np.asarray(nib.load(case["label"]).dataobj)
    las = LAS.copy()
    las[0, 3] = 0.8 * (shape[0] - 1)  # voxel 0 of the flipped array is voxel 11 of the image
    save(Path(case["label"]), label[::-1].copy(), las)
    transposed = good_case(tmp_path, "t", shape)
    swap = np.array([[0, 0.8, 0, 0], [0.8, 0, 0, 0], [0, 0, 5.0, 0], [0, 0, 0, 1]])  # label stored (y, x, z)
    save(Path(transposed["label"]), np.transpose(label, (1, 0, 2)).copy(), swap)
    mirrored = good_case(tmp_path, "m", shape)
    save(Path(mirrored["label"]), label[::-1].copy(), LAS)  # x runs from 0 to -8.8 mm: other positions
    write_datalist(tmp_path, [case, transposed, mirrored])
    lines = [str(p) for p in check_dataset(str(tmp_path))]
    assert len(lines) == 1 and "m_lab.nii.gz: label geometry differs from the image's in world space" in lines[0], lines


def test_metre_spacing_and_nodata_fill_get_one_line_each(tmp_path: Path):
    metres = good_case(tmp_path, "metres")
    image = np.asarray(nib.load(metres["image"]).dataobj)
    save(Path(metres["image"]), image, np.diag([0.0008, 0.0008, 0.005, 1.0]))
    save(Path(metres["label"]), np.zeros(image.shape, np.uint8), np.diag([0.0008, 0.0008, 0.005, 1.0]))
    nodata = good_case(tmp_path, "nodata")
    filled = image.copy()
    filled[:2] = np.finfo(np.float32).min  # -3.4e38, the MR/GIS NoData fill
    save(Path(nodata["image"]), filled)
    write_datalist(tmp_path, [metres, nodata, good_case(tmp_path, "ok")])
    lines = [str(p) for p in check_dataset(str(tmp_path))]
    assert len(lines) == 2, lines
    assert "metres_img.nii.gz: voxel spacing [0.0008, 0.0008, 0.005] mm is implausibly small" in lines[0]
    assert "nodata_img.nii.gz: 80 voxel(s) at -3.4e+38, a NoData fill?" in lines[1]


def test_nrrd_without_its_reader_names_the_package(tmp_path: Path, monkeypatch):
    nrrd = pytest.importorskip("nrrd")
    header = {
        "space": "right-anterior-superior",
        "space directions": np.diag([0.8, 0.8, 5.0]),
        "space origin": [0, 0, 0],
    }
    nrrd.write(str(tmp_path / "scan.nrrd"), np.zeros((8, 8, 3), np.int16), header)
    write_datalist(tmp_path, [{"image": str(tmp_path / "scan.nrrd")}])
    assert check_dataset(str(tmp_path)) == []
    monkeypatch.setitem(sys.modules, "nrrd", None)  # as with only requirements.txt installed
    monkeypatch.setitem(sys.modules, "itk", None)
    lines = [str(p) for p in check_dataset(str(tmp_path))]
    assert len(lines) == 1 and "scan.nrrd: no reader for this format is installed" in lines[0], lines
    assert "pip install pynrrd or itk" in lines[0] and "unreadable" not in lines[0]


def test_multichannel_4d_nifti_against_the_declared_channels(tmp_path: Path):
    """Channels in the 4th axis: accepted where the datalist declares that many, else one line."""
    case = good_case(tmp_path, "mr")
    image = np.random.default_rng(0).normal(size=(12, 10, 4, 2)).astype(np.float32)
    save(Path(case["image"]), image)
    write_datalist(tmp_path, [case], modality={"0": "T1", "1": "T2"})
    assert check_dataset(str(tmp_path)) == []
    write_datalist(tmp_path, [case], modality={"0": "T1", "1": "T2", "2": "FLAIR"})
    lines = [str(p) for p in check_dataset(str(tmp_path))]
    assert len(lines) == 1 and "mr_img.nii.gz: 2 image channel(s)" in lines[0] and "3 channel(s)" in lines[0], lines
