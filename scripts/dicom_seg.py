"""DICOM SEG output (``--output_format dicom_seg``): the segmentation of a DICOM series as one Segmentation instance
(highdicom) that references the source series, slice by slice, so PACS viewers overlay it on the scan.

The label volume reaches the writer in the geometry MONAI read the series in (its RAS affine after `Invertd`), whichever
reader read it and however it ordered and flipped the slices. Each source slice's pixel grid is therefore located in
that volume through the affine (ImagePositionPatient, ImageOrientationPatient, PixelSpacing), not assumed to be one
array slice in file or InstanceNumber order; a grid that does not fall on the volume's voxels is refused. Segment k is
class k of the plan's ``labels`` (background 0 is not a segment); the frames are BINARY segments (the SEG type every
viewer reads), empty frames left out. Each segment's property category and type are SNOMED CT 85756007 "Tissue"
unless ``segments`` (the config's ``dicom_seg_segments``) codes it: the plan names the classes, not their anatomy.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
from monai.data import ImageWriter
from scripts.dicom import read_headers, require, sorted_by_position
from scripts.errors import BundleInputError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
GRID_TOL = 1e-2  # voxels: a source pixel must land this close to a voxel centre of the label volume
SERIES_NUMBER = 9901  # distinct from the scanner's series numbers, which count up from 1
# Type 2 patient/study attributes that highdicom copies from the source: absent in some anonymised series; DICOM
# allows them empty, so an absent one is copied as empty instead of failing the write
COPIED_EMPTY_IF_ABSENT = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def bundle_version() -> str:
    """The bundle version (configs/metadata.json) for the SEG's SoftwareVersions and algorithm identification."""
    meta = Path(__file__).resolve().parents[1] / "configs" / "metadata.json"
    try:
        return str(json.loads(meta.read_text(encoding="utf-8"))["version"])
    except (OSError, ValueError, KeyError):
        return "unknown"


def source_frames(labels: np.ndarray, affine: np.ndarray, slices: list) -> np.ndarray:
    """The label volume ``labels`` (x, y, z, RAS ``affine``) sampled on each source slice's pixel grid: an array
    (slices, Rows, Columns), frame i pixel for pixel with ``slices[i]``."""
    to_voxel = np.linalg.inv(np.asarray(affine, float))
    rotate, shift = to_voxel[:3, :3], to_voxel[:3, 3]
    frames = []
    for ds in slices:
        orientation = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
        origin = rotate @ (LPS_TO_RAS @ np.asarray([float(v) for v in ds.ImagePositionPatient])) + shift
        along_row = rotate @ (LPS_TO_RAS @ orientation[:3]) * column_spacing  # next column, one pixel on
        along_column = rotate @ (LPS_TO_RAS @ orientation[3:]) * row_spacing  # next row
        r, c = np.mgrid[0 : int(ds.Rows), 0 : int(ds.Columns)]
        index = origin[:, None, None] + along_row[:, None, None] * c + along_column[:, None, None] * r
        voxel = np.rint(index).astype(int)
        inside = all((voxel[a] >= 0).all() and (voxel[a] < labels.shape[a]).all() for a in range(3))
        if not inside or np.abs(index - voxel).max() > GRID_TOL:
            raise BundleInputError(
                f"{ds.filename}: this slice does not lie on the voxel grid of its segmentation; the series "
                "changed after it was read?"
            )
        frames.append(labels[voxel[0], voxel[1], voxel[2]])
    return np.stack(frames)


def _code(value, where: str):
    """A pydicom Code from an SCT keyword of pydicom's dictionary ("Kidney") or a [scheme, value, meaning] triple."""
    codes = require("pydicom.sr.codedict", "--output_format dicom_seg: writing DICOM SEG", "pydicom").codes
    code_type = require("pydicom.sr.coding", "--output_format dicom_seg: writing DICOM SEG", "pydicom").Code
    if isinstance(value, str):
        code = getattr(codes.SCT, value, None) if value.isidentifier() and not value.startswith("_") else None
        if not isinstance(code, code_type):
            raise BundleInputError(
                f"{where}: {value!r} is no SNOMED CT keyword of pydicom's code dictionary (e.g. 'Kidney', 'Organ'); "
                'give a [scheme, value, meaning] triple such as ["SCT", "64033007", "Kidney"]'
            )
        return code
    if isinstance(value, (list, tuple)) and len(value) == 3 and all(isinstance(v, str) and v for v in value):
        scheme, code, meaning = value
        return code_type(code, scheme, meaning)
    raise BundleInputError(f"{where}: expected an SCT keyword or a [scheme, value, meaning] triple, got {value!r}")


# what a SEG must copy from its source images (highdicom refuses the series otherwise, after the network has run)
SOURCE_REFERENCES = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "FrameOfReferenceUID")


def missing_source_references(folder: str | os.PathLike) -> list[str]:
    """The attributes a SEG references that some slice of the series lacks (anonymisers drop FrameOfReferenceUID)."""
    return sorted({name for ds in read_headers(folder) for name in SOURCE_REFERENCES if not getattr(ds, name, None)})


def segment_properties(names: dict[str, str], segments: dict | None) -> dict[int, dict]:
    """Per segment number (class k >= 1 of the plan's ``names``): its category and type codes and description.

    ``segments`` maps a label name or index of the plan to ``{"category": ..., "type": ..., "description": str}``,
    each key optional; codes are SCT keywords or [scheme, value, meaning] triples; the rest stays "Tissue"."""
    by_name = {name: int(k) for k, name in names.items() if k != "0"}
    properties = {k: {"category": "Tissue", "type": "Tissue", "description": None} for k in by_name.values()}
    for key, given in (segments or {}).items():
        where = f"dicom_seg_segments[{key!r}]"
        number = by_name.get(str(key), int(key) if str(key).isdigit() else None)
        if number not in properties:
            raise BundleInputError(f"{where}: not a label of the plan (segments: {sorted(by_name, key=by_name.get)})")
        if not isinstance(given, dict) or set(given) - {"category", "type", "description"}:
            raise BundleInputError(f"{where}: expected an object with 'category', 'type', 'description', got {given!r}")
        if not isinstance(given.get("description", ""), str):
            raise BundleInputError(f"{where}: 'description' must be a string")
        properties[number].update(given)
    for number, props in properties.items():
        key = f"dicom_seg_segments[{names[str(number)]!r}]"
        props["category"] = _code(props["category"], f"{key}#category")
        props["type"] = _code(props["type"], f"{key}#type")
    return properties


def segmentation(
    labels: np.ndarray,
    affine: np.ndarray,
    source: str | os.PathLike,
    names: dict[str, str],
    segments: dict | None = None,
):
    """A highdicom Segmentation of ``labels`` (class indices) for the series in folder ``source``; ``segments`` as
    for `segment_properties`."""
    hd = require("highdicom", "--output_format dicom_seg: writing DICOM SEG")
    logging.getLogger("highdicom").setLevel(logging.WARNING)  # not nine "copy attributes of module ..." lines a case
    codes = require("pydicom.sr.codedict", "--output_format dicom_seg: writing DICOM SEG", "pydicom").codes
    slices = sorted_by_position(read_headers(source))
    for ds in slices:
        for keyword in COPIED_EMPTY_IF_ABSENT:
            if keyword not in ds:
                setattr(ds, keyword, "")
    frames = source_frames(labels, affine, slices).astype(np.uint8)
    number = max(int(k) for k in names) if names else 0
    present = int(frames.max(initial=0))
    if present > number:
        raise BundleInputError(f"{source}: the segmentation holds class {present}, the plan names classes 0..{number}")
    version = bundle_version()
    algorithm = hd.AlgorithmIdentificationSequence(
        name="MNet", family=codes.cid7162.ArtificialIntelligence, version=version
    )
    properties = segment_properties(names, segments)
    descriptions = []
    for k in range(1, number + 1):
        description = hd.seg.SegmentDescription(
            segment_number=k,
            segment_label=names.get(str(k), f"class {k}"),
            segmented_property_category=properties[k]["category"],
            segmented_property_type=properties[k]["type"],
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        if properties[k]["description"]:
            description.SegmentDescription = properties[k]["description"]  # optional attribute, not an argument
        descriptions.append(description)
    try:
        return hd.seg.Segmentation(
            source_images=slices,
            pixel_array=frames,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=SERIES_NUMBER,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="MNet Bundle",
            manufacturer_model_name="MNet",
            software_versions=version,
            device_serial_number="none",
            series_description="MNet segmentation",
        )
    except (ValueError, TypeError, AttributeError) as err:  # highdicom's checks of the source series
        raise BundleInputError(f"{source}: cannot write a DICOM SEG for this series: {err}") from err


class DicomSegWriter(ImageWriter):
    """MONAI ImageWriter interface (what SaveImaged calls) writing DICOM SEG; ``labels`` are the plan's class names,
    ``segments`` their codes (`segment_properties`)."""

    def __init__(self, output_dtype=np.uint8, labels: dict | None = None, segments: dict | None = None, **kwargs):
        super().__init__(
            output_dtype=output_dtype,
            labels=dict(labels or {}),
            segments=dict(segments or {}),
            affine=None,
            source=None,
            **kwargs,
        )

    def set_data_array(self, data_array, channel_dim: int | None = 0, squeeze_end_dims: bool = True, **kwargs):
        data = self.convert_to_channel_last(data_array, channel_dim=channel_dim, squeeze_end_dims=True, spatial_ndim=3)
        self.data_obj = np.asarray(data.detach().cpu() if hasattr(data, "detach") else data)
        if self.data_obj.ndim != 3:
            raise BundleInputError(f"DICOM SEG: expected one label volume, got an array of shape {self.data_obj.shape}")

    def set_metadata(self, meta_dict: dict | None = None, resample: bool = False, **options):
        _, affine, _ = self.get_meta_info(meta_dict)
        self.affine = np.asarray(affine, float)
        source = (meta_dict or {}).get("filename_or_obj")
        self.source = os.fspath(source[0] if isinstance(source, (list, tuple)) else source)
        if not os.path.isdir(self.source):
            raise BundleInputError(f"{self.source}: DICOM SEG needs a DICOM series folder as the input")

    def write(self, filename, verbose: bool = False, **kwargs):
        super().write(filename, verbose=verbose)
        labels = np.rint(self.data_obj).astype(np.int64)
        segmentation(labels, self.affine, self.source, self.labels, self.segments).save_as(os.fspath(filename))
