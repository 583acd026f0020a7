"""Checks of the synthetic demo data: the demo and the other tests rely on it being deterministic, anisotropic with
the thick axis last, correctly labelled and re-used instead of regenerated."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd
from scipy import ndimage
from scripts.demo.data import case_affine, make_case, write_dataset

TINY = {"inplane_range": (40, 48), "slices_range": (8, 10)}  # small cases keep the suite fast


def _tiny_case(seed: int) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    return make_case(np.random.default_rng(seed), **TINY)


def _items(path: Path) -> list[dict]:
    root = path.parent
    return [
        *load_decathlon_datalist(path, data_list_key="training", base_dir=root),
        *load_decathlon_datalist(path, data_list_key="test", base_dir=root),
    ]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("demo_data"), num_cases=3, num_test=1, seed=0, **TINY)


def test_make_case_is_deterministic() -> None:
    image_a, label_a, spacing_a = _tiny_case(5)
    image_b, label_b, spacing_b = _tiny_case(5)
    assert spacing_a == spacing_b
    np.testing.assert_array_equal(image_a, image_b)
    np.testing.assert_array_equal(label_a, label_b)
    image_c, _, _ = _tiny_case(6)
    assert image_a.shape != image_c.shape or not np.array_equal(image_a, image_c)


def test_write_dataset_is_deterministic(tmp_path: Path, dataset: Path) -> None:
    again = write_dataset(tmp_path / "again", num_cases=3, num_test=1, seed=0, **TINY)
    other = write_dataset(tmp_path / "other", num_cases=3, num_test=1, seed=1, **TINY)
    for first, second, third in zip(_items(dataset), _items(again), _items(other), strict=True):
        a, b, c = (np.asarray(nib.load(item["image"]).dataobj) for item in (first, second, third))
        np.testing.assert_array_equal(a, b)
        assert a.shape != c.shape or not np.array_equal(a, c)


def test_default_case_size() -> None:
    image, label, spacing = make_case(np.random.default_rng(0))
    assert 96 <= min(image.shape[:2]) <= max(image.shape[:2]) <= 128 and 16 <= image.shape[2] <= 24
    assert 0.75 <= spacing[0] == spacing[1] <= 0.85 and 4.5 <= spacing[2] <= 5.5
    assert (label == 1).sum() > 0.02 * label.size and (label == 2).any()


@pytest.mark.parametrize("seed", range(8))
def test_labels(seed: int) -> None:
    image, label, _ = _tiny_case(seed)
    assert image.dtype == np.int16 and label.dtype == np.uint8 and image.shape == label.shape
    assert set(np.unique(label).tolist()) == {0, 1, 2}
    components, count = ndimage.label(label == 2)
    assert 1 <= count <= 3
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[:, :, 1] = True
    for index in range(1, count + 1):
        lesion = components == index
        assert len(np.unique(np.nonzero(lesion)[2])) <= 3, "a lesion spans more than 3 thick slices"
        rim = ndimage.binary_dilation(lesion, in_plane) & ~lesion
        assert np.all(label[rim] == 1), "a lesion is not surrounded by organ in its own slices"


def test_intensities(dataset: Path) -> None:
    for item in _items(dataset):
        image = np.asarray(nib.load(item["image"]).dataobj).astype(np.float32)
        label = np.asarray(nib.load(item["label"]).dataobj)
        assert -1100 <= image.min() <= -900
        assert 300 <= image.max() <= 1000  # bone
        organ, lesion = image[label == 1].mean(), image[label == 2].mean()
        assert 80 <= organ <= 160
        assert lesion < organ  # partial volume dilutes the contrast of tiny lesions


def test_geometry(dataset: Path) -> None:
    for item in _items(dataset):
        image, label = nib.load(item["image"]), nib.load(item["label"])
        assert image.shape == label.shape
        np.testing.assert_allclose(image.affine, label.affine)
        spacing = np.diag(image.affine)[:3]
        np.testing.assert_allclose(image.affine, case_affine(image.shape, spacing), atol=1e-4)
        np.testing.assert_allclose(image.header.get_zooms(), spacing, atol=1e-4)
        assert 0.74 <= spacing[0] <= 0.86 and spacing[0] == pytest.approx(spacing[1])
        assert 4.4 <= spacing[2] <= 5.6
        assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
        assert image.get_data_dtype() == np.int16 and label.get_data_dtype() == np.uint8


def test_monai_keeps_thick_axis_last(dataset: Path) -> None:
    keys = ["image", "label"]
    load = Compose([LoadImaged(keys), EnsureChannelFirstd(keys), Orientationd(keys, axcodes="RAS")])
    item = _items(dataset)[0]
    data = load(item)
    raw_shape = nib.load(item["image"]).shape
    assert tuple(data["image"].shape[1:]) == raw_shape
    pixdim = data["image"].pixdim.tolist()
    assert pixdim[2] > 4 * max(pixdim[:2])


def test_dataset_json(dataset: Path) -> None:
    meta = json.loads(dataset.read_text())
    assert meta["tensorImageSize"] == "3D" and meta["modality"] == {"0": "CT"}
    assert meta["labels"] == {"0": "background", "1": "organ", "2": "lesion"}
    assert "synthetic" in meta["description"].lower() and "CC0" in meta["license"]
    assert (meta["numTraining"], meta["numTest"]) == (2, 1)
    assert len(meta["training"]) == 2 and len(meta["test"]) == 1
    assert meta["test"][0]["image"] == "./imagesTs/case_002.nii.gz"
    assert meta["test"][0]["label"] == "./labelsTs/case_002.nii.gz"
    for item in _items(dataset):
        assert Path(item["image"]).is_file() and Path(item["label"]).is_file()


def test_reuse_and_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_dataset(tmp_path, num_cases=2, num_test=1, seed=3, **TINY)
    files = [path, *tmp_path.glob("*/case_*.nii.gz")]
    stamps = {f: f.stat().st_mtime_ns for f in files}
    capsys.readouterr()
    assert write_dataset(tmp_path, num_cases=2, num_test=1, seed=3, **TINY) == path
    assert "re-using" in capsys.readouterr().out
    assert {f: f.stat().st_mtime_ns for f in files} == stamps
    write_dataset(tmp_path, num_cases=2, num_test=1, seed=4, **TINY)  # other parameters: regenerated
    assert json.loads(path.read_text())["generator"]["seed"] == 4
    assert path.stat().st_mtime_ns != stamps[path]


def test_rejects_bad_split(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_dataset(tmp_path, num_cases=2, num_test=2, **TINY)
