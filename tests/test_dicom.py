"""DICOM series in, DICOM SEG out.

Every series here is written by the test itself (pydicom, CT Image Storage) from a volume of known geometry: 0.8 x
0.75 mm pixels, 5 mm between slices (SliceThickness says 2.5: the spacing must come from ImagePositionPatient), an
oblique orientation in LPS, files named in shuffled order. The same volume is also saved as NIfTI with the affine
those DICOM numbers define, so "the same in world space" is checked against an independent reader (nibabel).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigParser
from monai.transforms import LoadImage, Orientation
from scripts.check_data import check_case, same_grid
from scripts.datalist import folder_images, inference_list
from scripts.errors import BundleInputError
from scripts.outputs import CaseLayout
from scripts.writers import AtomicNibabelWriter, output_extension, writer_for
from tests.test_bad_inputs import assert_clean_failure, bundle
from tests.test_inference_outputs import BUNDLE, PLAN, _first_error, _save_model, infer

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid  # noqa: E402

SHAPE = (30, 32, 6)  # columns (x), rows (y), slices
# mm along a row, along a column, between slices; resampled to the plan's 0.8 x 0.8 x 5 mm, each axis spans the same
# extent (30 x 0.8 = 32 x 0.75 = 24 mm), so MONAI's Spacingd places its grid alike whichever way it rounds: the
# affines of PydicomReader, ITKReader and nibabel differ by float noise (1e-6), which can tip that choice
SPACING = (0.8, 0.75, 5.0)
SLICE_THICKNESS = 2.5  # deliberately not the spacing


def _rotation(axis: int, degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i] = r[j, j] = np.cos(t)
    r[i, j], r[j, i] = -np.sin(t), np.sin(t)
    return r


def _decimal(values) -> list[float]:
    """The numbers as a DICOM decimal string (DS) holds them; both files are built from these."""
    return [float(f"{v:.6f}") for v in values]


def phantom(seed: int = 0) -> np.ndarray:
    """An int16 CT-like volume (HU): an ellipsoid of soft tissue in air-like background plus noise."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, s) for s in SHAPE), indexing="ij")
    blob = (x / 0.7) ** 2 + (y / 0.6) ** 2 + (z / 0.9) ** 2 < 1
    return (np.where(blob, 60.0, -200.0) + rng.normal(0, 40, SHAPE)).astype(np.int16)


def write_series(
    folder: Path,
    volume: np.ndarray,
    descending: bool = False,
    positions_mm: list[float] | None = None,
    instance_numbers: list[int] | None = None,
    series_uid: str | None = None,
) -> np.ndarray:
    """Write ``volume`` (x = column, y = row, z = slice) as a CT series in ``folder``; return the RAS affine of the
    NIfTI that holds the same voxels at the same places. ``descending``: InstanceNumber counts from the far end
    (feet-first numbering); ``positions_mm`` overrides the slice offsets along the normal (uneven spacing)."""
    folder.mkdir(parents=True, exist_ok=True)
    directions = _rotation(2, 25) @ _rotation(0, 12)  # LPS directions of the x, y and slice axes
    row, col = _decimal(directions[:, 0]), _decimal(directions[:, 1])
    origin = np.array([-12.5, 40.25, 80.0])
    offsets = positions_mm if positions_mm is not None else [k * SPACING[2] for k in range(volume.shape[2])]
    positions = [_decimal(origin + offset * directions[:, 2]) for offset in offsets]
    study, series, frame = generate_uid(), series_uid or generate_uid(), generate_uid()
    count = volume.shape[2]
    numbers = instance_numbers or [count - k if descending else k + 1 for k in range(count)]
    names = list(range(count))
    random.Random(1).shuffle(names)  # file name order says nothing about the slice order
    for k in range(count):
        uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientID, ds.PatientName = "CT", "MNET-TEST", "Test^Phantom"
        ds.SeriesNumber, ds.InstanceNumber = 3, numbers[k]
        ds.ImagePositionPatient, ds.ImageOrientationPatient = positions[k], row + col
        ds.PixelSpacing, ds.SliceThickness = [SPACING[1], SPACING[0]], SLICE_THICKNESS  # [between rows, columns]
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = (volume[:, :, k].T.astype(np.int32) + 1024).astype(np.int16).tobytes()
        ds.save_as(folder / f"IM{names[k]:04d}", enforce_file_format=True)
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1] = np.array(row) * SPACING[0], np.array(col) * SPACING[1]
    affine[:3, 2] = (np.array(positions[-1]) - np.array(positions[0])) / (count - 1)
    affine[:3, 3] = positions[0]
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # LPS -> RAS


def series_and_nifti(root: Path, seed: int = 0, descending: bool = False) -> tuple[Path, Path]:
    volume = phantom(seed)
    series = root / "dicom" / "1.2.826.0.1.3680043.2.1125.7"  # named by its UID, as exports often are
    affine = write_series(series, volume, descending=descending)
    nifti = root / "nifti" / "scan.nii.gz"
    nifti.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(volume, affine), str(nifti))
    return series, nifti


def _preprocessing():
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser.update({"plan_file": PLAN, "bundle_root": str(BUNDLE)})
    return parser.get_parsed_content("preprocessing")


# --- reading ---------------------------------------------------------------------------------------------------------


NUMBERING = pytest.mark.parametrize("descending", [False, True], ids=["head_first_numbers", "feet_first_numbers"])


@NUMBERING
@pytest.mark.parametrize("reader", ["PydicomReader", "ITKReader"])
def test_series_reads_as_the_nifti_volume_in_world_space(tmp_path, reader, descending):
    """Feet-first numbering stacks the slices the other way round: other storage order, same voxels in space."""
    if reader == "ITKReader":
        pytest.importorskip("itk")
    series, nifti = series_and_nifti(tmp_path, descending=descending)
    image = LoadImage(reader=reader, image_only=True)(str(series))
    reference = LoadImage(image_only=True)(str(nifti))
    assert tuple(image.shape) == SHAPE
    np.testing.assert_allclose(np.linalg.norm(image.affine[:3, :3].numpy(), axis=0), SPACING, atol=1e-5)
    assert same_grid(SHAPE, image.affine.numpy(), SHAPE, reference.affine.numpy())
    ras = Orientation(axcodes="RAS")
    image, reference = ras(image[None]), ras(reference[None])
    np.testing.assert_allclose(image.affine.numpy(), reference.affine.numpy(), atol=1e-5)
    np.testing.assert_array_equal(image.numpy(), reference.numpy())


@NUMBERING
def test_series_after_the_inference_transforms_equals_the_nifti(tmp_path, descending):
    """The configs' loading chain (load, channel first, RAS, plan spacing, crop, normalisation) on both inputs."""
    series, nifti = series_and_nifti(tmp_path, descending=descending)
    preprocessing = _preprocessing()
    a, b = preprocessing({"image": str(series)})["image"], preprocessing({"image": str(nifti)})["image"]
    assert a.shape == b.shape and a.shape[0] == 1
    np.testing.assert_allclose(a.affine.numpy(), b.affine.numpy(), atol=1e-5)
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-4)


# --- finding series --------------------------------------------------------------------------------------------------


def test_folder_mode_takes_series_folders_and_names_outputs_by_the_whole_folder_name(tmp_path):
    root = tmp_path / "scans"
    for i, uid in enumerate(["1.2.3.4", "1.2.3.5"]):
        write_series(root / uid, phantom(i))
    nib.save(nib.Nifti1Image(phantom(2), np.eye(4)), str(root / "other.nii.gz"))
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("no DICOM here")
    cases = folder_images(root)
    assert [Path(c["image"]).name for c in cases] == ["1.2.3.4", "1.2.3.5", "other.nii.gz"]
    layout = CaseLayout(str(tmp_path / "out"), extension=".dcm", cases=cases)
    assert [Path(layout.output_of(c)).name for c in cases] == ["1.2.3.4_seg.dcm", "1.2.3.5_seg.dcm", "other_seg.dcm"]
    one = root / "1.2.3.4"
    assert folder_images(one) == [{"image": str(one)}], "a series folder given itself is one case"
    with pytest.raises(BundleInputError, match="would be written into the DICOM series folder"):
        CaseLayout(str(one), cases=[{"image": str(one)}])


def test_earlier_seg_outputs_beside_the_series_folders_are_not_a_series(tmp_path):
    root = tmp_path / "scans"
    write_series(root / "s1", phantom(0))
    (root / "s1_seg.dcm").write_bytes((root / "s1" / "IM0000").read_bytes())  # any DICOM file, named as an output
    assert [Path(c["image"]).name for c in folder_images(root)] == ["s1"]


def test_datalist_entry_may_be_a_series_folder(tmp_path):
    write_series(tmp_path / "series" / "ct", phantom(0))
    (tmp_path / "dataset.json").write_text(json.dumps({"training": [], "test": [{"image": "./series/ct"}]}))
    cases = inference_list(str(tmp_path), "dataset.json")
    assert cases == [{"image": str(tmp_path / "series" / "ct")}]
    assert check_case(cases[0], in_channels=1) == []


def test_several_series_folders_are_the_channels_of_one_case(tmp_path):
    for name, seed in (("t1", 0), ("t2", 1)):
        write_series(tmp_path / name, phantom(seed))
    case = {"image": [str(tmp_path / "t1"), str(tmp_path / "t2")]}
    image = LoadImage(image_only=True, ensure_channel_first=True)(case["image"])
    assert tuple(image.shape) == (2, *SHAPE)
    np.testing.assert_array_equal(image[1].numpy(), phantom(1))
    assert check_case(case, in_channels=2) == []


# --- checks ----------------------------------------------------------------------------------------------------------


def _problems(folder: Path) -> list[str]:
    return [str(p) for p in check_case({"image": str(folder)}, in_channels=1)]


def test_two_series_in_one_folder_are_refused(tmp_path):
    write_series(tmp_path / "mixed", phantom(0))
    extra = tmp_path / "other"
    write_series(extra, phantom(1))
    for path in extra.iterdir():
        path.rename(tmp_path / "mixed" / f"B{path.name}")
    (problem,) = _problems(tmp_path / "mixed")
    assert "mixed: 2 DICOM series in one folder" in problem


def test_instance_numbers_that_do_not_follow_the_positions_are_refused(tmp_path):
    write_series(tmp_path / "s", phantom(0), instance_numbers=[1, 2, 4, 3, 5, 6])
    (problem,) = _problems(tmp_path / "s")
    assert "InstanceNumber order of the DICOM slices does not follow their positions" in problem


def test_a_missing_slice_is_refused_not_stretched(tmp_path):
    write_series(tmp_path / "s", phantom(0), positions_mm=[0, 5, 10, 20, 25, 30])
    (problem,) = _problems(tmp_path / "s")
    assert "uneven DICOM slice spacing (5 to 10 mm" in problem


def test_folder_without_dicom_and_sub_folders_in_a_series_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    assert _problems(tmp_path / "empty") == [f"{tmp_path / 'empty'}: a folder without DICOM files (expected an image "
                                             "file or a DICOM series folder)"]  # fmt: skip
    write_series(tmp_path / "s", phantom(0))
    (tmp_path / "s" / "more").mkdir()
    (problem,) = _problems(tmp_path / "s")
    assert "holding sub-folder(s) more" in problem


def test_compressed_pixel_data_without_a_decoder_names_the_packages(tmp_path, monkeypatch):
    from pydicom.encaps import encapsulate
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLosslessSV1

    if get_decoder(JPEGLosslessSV1).is_available:
        pytest.skip("a JPEG Lossless decoder is installed here")
    write_series(tmp_path / "s", phantom(0))
    for path in (tmp_path / "s").iterdir():  # only the headers are checked: the frames need not be real JPEG
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
        ds.PixelData = encapsulate([b"\xff\xd8" + bytes(14)])
        ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
        ds.save_as(path, enforce_file_format=True)
    monkeypatch.setitem(sys.modules, "itk", None)  # MONAI would read it with PydicomReader
    (problem,) = _problems(tmp_path / "s")
    assert "pixel data compressed as JPEG Lossless" in problem and "pylibjpeg-libjpeg" in problem


def test_series_without_pydicom_names_the_package(tmp_path, monkeypatch):
    write_series(tmp_path / "s", phantom(0))
    monkeypatch.setitem(sys.modules, "pydicom", None)
    (problem,) = _problems(tmp_path / "s")
    assert "no reader for this format is installed (expected `pip install pydicom`" in problem


def test_an_image_and_label_on_one_grid_pass_with_a_dicom_image(tmp_path):
    """Training data: a DICOM series image with its NIfTI label drawn on the same grid."""
    series, nifti = series_and_nifti(tmp_path)
    label = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image((phantom(0) > 0).astype(np.uint8), nib.load(nifti).affine), str(label))
    assert check_case({"image": str(series), "label": str(label)}, in_channels=1, num_classes=3) == []


def test_slices_without_a_position_are_refused(tmp_path):
    """PydicomReader would fall back to an identity affine, a silently wrong geometry."""
    write_series(tmp_path / "s", phantom(0))
    for path in (tmp_path / "s").iterdir():
        ds = pydicom.dcmread(path)
        del ds.ImagePositionPatient
        ds.save_as(path)
    (problem,) = _problems(tmp_path / "s")
    assert "DICOM slices without ImagePositionPatient: the voxel positions are unknown" in problem


def test_planner_reads_dicom_training_images(tmp_path):
    from scripts.plan import plan_dataset

    training = []
    for i in range(3):
        series, nifti = series_and_nifti(tmp_path / f"c{i}", seed=i)
        label = tmp_path / f"c{i}" / "label.nii.gz"
        nib.save(nib.Nifti1Image((phantom(i) > 0).astype(np.uint8), nib.load(nifti).affine), str(label))
        training.append({"image": str(series), "label": str(label)})
    datalist = {"modality": {"0": "CT"}, "labels": {"0": "background", "1": "organ"}, "training": training}
    (tmp_path / "dataset.json").write_text(json.dumps(datalist))
    plan = plan_dataset(str(tmp_path), "dataset.json", output=str(tmp_path / "plan.json"), workers=0)
    np.testing.assert_allclose(plan["spacing"], SPACING, atol=1e-3)  # 5 mm from the positions, not SliceThickness


# --- output format ---------------------------------------------------------------------------------------------------


def test_output_format_values(monkeypatch):
    assert writer_for(".nii.gz") is AtomicNibabelWriter and output_extension(".nii.gz") == ".nii.gz"
    assert output_extension("dicom_seg") == ".dcm"
    with pytest.raises(BundleInputError, match=r"^--output_format dicom: unsupported output format"):
        writer_for("dicom")
    monkeypatch.setitem(sys.modules, "highdicom", None)
    with pytest.raises(BundleInputError) as info:
        writer_for("dicom_seg")
    assert str(info.value) == (
        "--output_format dicom_seg: writing DICOM SEG needs the highdicom package (`pip install highdicom`, "
        "listed in requirements-optional.txt)"
    )


def test_dicom_seg_for_a_nifti_input_stops_at_start_up(tmp_path):
    scans, work = tmp_path / "scans", tmp_path / "work"
    scans.mkdir()
    nib.save(nib.Nifti1Image(phantom(0), np.diag([0.8, 0.8, 5.0, 1.0])), str(scans / "scan.nii.gz"))
    result = bundle("inference", work, scans, "--output_format", "dicom_seg", "--load_pretrain", "false")
    assert_clean_failure(result, work, "scan.nii.gz: --output_format dicom_seg needs DICOM series as input")


def test_dicom_seg_of_a_series_without_its_references_is_refused_at_start_up(tmp_path):
    """A series MONAI reads but a SEG cannot reference (no FrameOfReferenceUID, some anonymisers drop it): highdicom
    refused it only after the network ran; now the run stops before any work, in one line naming the series and
    the missing attribute, exit status non-zero, no traceback, nothing in the output folder."""
    pytest.importorskip("highdicom")
    scans, work = tmp_path / "scans", tmp_path / "work"
    write_series(scans / "s1", phantom(0))
    for path in (scans / "s1").iterdir():
        ds = pydicom.dcmread(path)
        del ds.FrameOfReferenceUID
        ds.save_as(path)
    result = bundle("inference", work, scans, "--output_format", "dicom_seg", "--load_pretrain", "false")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"ERROR: {scans / 's1'}: --output_format dicom_seg cannot reference this series, its slices lack "
        "FrameOfReferenceUID (removed by an anonymiser?); use the default --output_ext .nii.gz"
    ]
    assert "Traceback" not in result.stdout, result.stdout[-3000:]
    assert "Epoch" not in result.stdout  # the network never ran
    assert not (work / "eval" / "predictions").exists() or list((work / "eval" / "predictions").iterdir()) == []


# --- inference end to end --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inferred(tmp_path_factory) -> dict[str, Path]:
    """One seeded untrained model; the same scan as a DICOM series and as NIfTI, segmented as NIfTI and as SEG."""
    root = tmp_path_factory.mktemp("dicom_inference")
    bundle_root = root / "bundle"
    _save_model(bundle_root)
    series, nifti = series_and_nifti(root)
    infer(bundle_root, series.parent, root / "from_dicom")
    infer(bundle_root, nifti.parent, root / "from_nifti")
    infer(bundle_root, series.parent, root / "seg", output_format="dicom_seg")
    return {"series": series, "nifti": nifti, "root": root, "bundle": bundle_root}


def test_inference_on_dicom_equals_inference_on_nifti(inferred):
    name = inferred["series"].name
    a = nib.load(inferred["root"] / "from_dicom" / f"{name}_seg.nii.gz")
    b = nib.load(inferred["root"] / "from_nifti" / "scan_seg.nii.gz")
    labels = np.asarray(b.dataobj)
    assert labels.shape == SHAPE and len(np.unique(labels)) > 1, "not a comparison of two uniform masks"
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(a.dataobj), labels)


def test_dicom_seg_references_the_series_and_holds_the_segmentation(inferred):
    hd = pytest.importorskip("highdicom")
    series = inferred["series"]
    out = inferred["root"] / "seg"
    assert sorted(p.name for p in out.iterdir()) == [f"{series.name}_seg.dcm"], "written temp-then-rename"
    seg = hd.seg.segread(out / f"{series.name}_seg.dcm")
    plan = json.loads(Path(PLAN).read_text())
    assert [(s.SegmentNumber, s.SegmentLabel) for s in seg.SegmentSequence] == [
        (int(k), name) for k, name in plan["labels"].items() if k != "0"
    ]
    sources = {ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(p) for p in series.iterdir())}
    referenced = {
        item.ReferencedSOPInstanceUID
        for ref in seg.ReferencedSeriesSequence
        if ref.SeriesInstanceUID == next(iter(sources.values())).SeriesInstanceUID
        for item in ref.ReferencedInstanceSequence
    }
    assert referenced == set(sources), "every source slice is referenced, nothing else"
    assert seg.StudyInstanceUID == next(iter(sources.values())).StudyInstanceUID
    expected = np.asarray(nib.load(inferred["root"] / "from_nifti" / "scan_seg.nii.gz").dataobj)
    uids = sorted(sources, key=lambda uid: int(sources[uid].InstanceNumber))  # slice k has InstanceNumber k + 1
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True)
    for k, frame in enumerate(frames):
        np.testing.assert_array_equal(frame, expected[:, :, k].T)  # slice k was written as volume[:, :, k].T
    assert frames.any(), "some foreground made it into the SEG"
    for segment in seg.SegmentSequence:  # uncoded classes: SNOMED CT "Tissue", as docs/configs.md says
        for codes in (segment.SegmentedPropertyCategoryCodeSequence, segment.SegmentedPropertyTypeCodeSequence):
            assert (codes[0].CodingSchemeDesignator, codes[0].CodeValue, codes[0].CodeMeaning) == (
                "SCT",
                "85756007",
                "Tissue",
            )
        assert "SegmentDescription" not in segment


def test_dicom_seg_segments_code_the_plans_labels(inferred, tmp_path):
    """``dicom_seg_segments`` keyed by the plan's label names (or indices): SCT keywords of pydicom's dictionary or
    explicit triples, and a free-text description, end up in the SEG read back with highdicom."""
    hd = pytest.importorskip("highdicom")
    segments = {
        "organ": {"category": "Organ", "type": "Kidney", "description": "kidney, MNet"},
        "2": {"type": ["SCT", "52988006", "Lesion"]},
    }
    infer(
        inferred["bundle"], inferred["series"].parent, tmp_path, output_format="dicom_seg", dicom_seg_segments=segments
    )
    seg = hd.seg.segread(tmp_path / f"{inferred['series'].name}_seg.dcm")
    coded = {
        s.SegmentNumber: (
            s.SegmentLabel,
            s.SegmentedPropertyCategoryCodeSequence[0].CodeMeaning,
            s.SegmentedPropertyTypeCodeSequence[0].CodeValue,
            s.SegmentedPropertyTypeCodeSequence[0].CodeMeaning,
            s.get("SegmentDescription"),
        )
        for s in seg.SegmentSequence
    }
    assert coded == {
        1: ("organ", "Organ", "64033007", "Kidney", "kidney, MNet"),
        2: ("lesion", "Tissue", "52988006", "Lesion", None),
    }


@pytest.mark.parametrize(
    "segments, message",
    [
        (
            {"liver": {"type": "Liver"}},
            r"dicom_seg_segments\['liver'\]: not a label of the plan \(segments: \['organ', 'lesion'\]\)",
        ),
        ({"organ": {"type": "Kidny"}}, r"dicom_seg_segments\['organ'\]#type: 'Kidny' is no SNOMED CT keyword"),
        (
            {"1": {"type": ["SCT", "64033007"]}},
            r"\['organ'\]#type: expected an SCT keyword or a \[scheme, value, meaning\]",
        ),
        ({"organ": {"colour": "red"}}, r"\['organ'\]: expected an object with 'category', 'type', 'description'"),
    ],
)
def test_bad_dicom_seg_segments_stop_at_start_up(segments, message):
    pytest.importorskip("highdicom")
    labels = json.loads(Path(PLAN).read_text())["labels"]
    with pytest.raises(BundleInputError, match=message):
        writer_for("dicom_seg", labels=labels, segments=segments)
    with pytest.raises(BundleInputError, match=r"^--dicom_seg_segments: only used with --output_format dicom_seg"):
        writer_for(".nii.gz", labels=labels, segments={"organ": {"type": "Kidney"}})


def test_dicom_seg_rerun_skips_the_finished_series(inferred, capsys):
    out = inferred["root"] / "seg"
    before = (out / f"{inferred['series'].name}_seg.dcm").stat().st_mtime_ns
    capsys.readouterr()
    infer(inferred["bundle"], inferred["series"].parent, out, output_format="dicom_seg")
    assert "1 of 1 case(s) already segmented" in capsys.readouterr().out
    assert (out / f"{inferred['series'].name}_seg.dcm").stat().st_mtime_ns == before


def test_dicom_seg_needs_every_image_to_be_a_series(tmp_path):
    bundle_root, scans = tmp_path / "bundle", tmp_path / "scans"
    _save_model(bundle_root)
    write_series(scans / "s1", phantom(0))
    nib.save(nib.Nifti1Image(phantom(1), np.eye(4)), str(scans / "x.nii.gz"))
    message = _first_error(lambda: infer(bundle_root, scans, tmp_path / "out", output_format="dicom_seg"))
    assert "x.nii.gz: --output_format dicom_seg needs DICOM series as input" in message
    assert not (tmp_path / "out").exists()
