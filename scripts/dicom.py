"""DICOM series as inputs: which folders are series, what is wrong with one before MONAI's reader stacks it, and the
one line that names a missing optional package.

MONAI's LoadImage reads a folder as one DICOM series (PydicomReader; ITKReader when itk is installed). PydicomReader
stacks every DICOM file of the folder in InstanceNumber order and takes the slice axis from the first and the last
ImagePositionPatient. So it silently mixes two series kept in one folder, scrambles slices whose InstanceNumber does
not follow their position, misplaces slices when the spacing varies (a missing slice), and falls back to an identity
affine without the geometry tags. `series_problems` finds these in the headers (no pixel data is read), so the
start-up check names the folder instead of a wrong segmentation coming out. The slice spacing is the distance of
the positions along the slice normal, never SliceThickness (thin slices may overlap or leave gaps).

Standard library at import: configs import this through scripts.datalist; pydicom is imported only when a series is
read (`require` names the package when it is missing).
"""

from __future__ import annotations

import importlib
import logging
import os
import warnings
from pathlib import Path
from types import ModuleType

from scripts.errors import BundleInputError

DICOM_MAGIC = b"DICM"  # DICOM part 10: a 128-byte preamble, then these four bytes (what pydicom.misc.is_dicom tests)
SLICE_SPACING_TOL = 0.05  # a slice further than this share of the spacing from its even place is misplaced
GEOMETRY_TAGS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
# MONAI 1.6 builds its GPU DICOM decoder reader in every LoadImage once pydicom is installed, and says each time, for
# NIfTI inputs too, that nvImageCodec is missing and pydicom's own decoders are used: what the bundle wants anyway
DECODER_NOTICES = ("nvImageCodec is not available", "NvImgCodecPydicomReader: nvImageCodec decoder plugin did not")


def _not_a_decoder_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(DECODER_NOTICES)


def quiet_decoder_notices() -> None:
    """Drop MONAI's nvImageCodec notices (a log line and a warning per loader); every other message stays."""
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").addFilter(_not_a_decoder_notice)
    warnings.filterwarnings("ignore", message=DECODER_NOTICES[1], category=UserWarning)


def require(module: str, what: str, package: str | None = None) -> ModuleType:
    """Import an optional package, or raise one line naming it: ``what`` says what needs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package = package or module
        raise BundleInputError(
            f"{what} needs the {package} package (`pip install {package}`, listed in requirements-optional.txt)"
        ) from None


def is_dicom_file(path: str | os.PathLike) -> bool:
    """A DICOM part 10 file (preamble + ``DICM``), whatever its name: series files often have no suffix."""
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:] == DICOM_MAGIC
    except OSError:
        return False


def _entries(folder: Path) -> list[Path]:
    return sorted(e for e in folder.iterdir() if not e.name.startswith("."))


def series_files(folder: str | os.PathLike) -> list[Path]:
    """The DICOM files directly in ``folder`` (what MONAI's readers stack), hidden files excluded."""
    return [e for e in _entries(Path(folder)) if e.is_file() and is_dicom_file(e)]


def is_series_folder(path: str | os.PathLike) -> bool:
    """A folder that directly holds at least one DICOM file (checked until the first one)."""
    folder = Path(path)
    return folder.is_dir() and any(e.is_file() and is_dicom_file(e) for e in _entries(folder))


def read_headers(folder: str | os.PathLike) -> list:
    """pydicom datasets of the folder's DICOM files without their pixel data, in file-name order."""
    pydicom = require("pydicom", "reading DICOM series")
    return [pydicom.dcmread(str(path), stop_before_pixels=True) for path in series_files(folder)]


def _vector(ds, tag: str) -> list[float]:
    return [float(v) for v in ds.get(tag)]


def slice_normal(ds) -> tuple[list[float], list[float], list[float]]:
    """Row and column direction cosines (ImageOrientationPatient) and their cross product, the slice normal (LPS)."""
    row, col = _vector(ds, "ImageOrientationPatient")[:3], _vector(ds, "ImageOrientationPatient")[3:]
    normal = [row[1] * col[2] - row[2] * col[1], row[2] * col[0] - row[0] * col[2], row[0] * col[1] - row[1] * col[0]]
    return row, col, normal


def slice_position(ds, normal: list[float]) -> float:
    """Where a slice lies along the normal (mm): its ImagePositionPatient projected on the normal."""
    return sum(p * n for p, n in zip(_vector(ds, "ImagePositionPatient"), normal))


def sorted_by_position(headers: list) -> list:
    """The slices of one series from one end to the other along the slice normal (the order a volume stacks them)."""
    _, _, normal = slice_normal(headers[0])
    return sorted(headers, key=lambda ds: slice_position(ds, normal))


def _same(values: list) -> bool:
    return all(v == values[0] for v in values[1:])


def _close(vectors: list[list[float]], tol: float = 1e-4) -> bool:
    return all(max(abs(a - b) for a, b in zip(v, vectors[0])) <= tol for v in vectors[1:])


def series_problems(folder: str | os.PathLike) -> list[str]:
    """What would make MONAI read ``folder`` as a wrong volume, one text each; [] for a sound single-frame series."""
    folder = Path(folder)
    subfolders = [e.name for e in _entries(folder) if e.is_dir()]
    if subfolders:  # PydicomReader opens every entry of the folder as a file
        return [f"a DICOM series folder holding sub-folder(s) {', '.join(subfolders[:3])}; keep one series per folder"]
    pydicom = require("pydicom", "reading DICOM series")
    headers = []
    for path in series_files(folder):
        try:
            headers.append(pydicom.dcmread(str(path), stop_before_pixels=True))
        except Exception as err:  # pydicom raises several types for damaged files
            return [f"unreadable DICOM file {path.name} ({type(err).__name__}: {err})"]
    if not headers:
        return ["no DICOM files in this folder"]
    series = sorted({str(ds.get("SeriesInstanceUID") or "(none)") for ds in headers})
    if len(series) > 1:
        more = ", ..." if len(series) > 2 else ""
        return [
            f"{len(series)} DICOM series in one folder (SeriesInstanceUID {', '.join(series[:2])}{more}); "
            "give each series its own folder"
        ]
    frames = max(int(ds.get("NumberOfFrames", 1) or 1) for ds in headers)
    if frames > 1:
        return [f"a multi-frame (enhanced) DICOM file of {frames} frames, which MONAI reads without its geometry"]
    missing = sorted({tag for ds in headers for tag in GEOMETRY_TAGS if ds.get(tag) is None})
    if missing:
        return [f"DICOM slices without {', '.join(missing)}: the voxel positions are unknown"]
    if not _same([(ds.get("Rows"), ds.get("Columns")) for ds in headers]):
        return ["DICOM slices of different sizes (Rows x Columns) in one series"]
    if not _close([_vector(ds, "ImageOrientationPatient") for ds in headers]):
        return ["DICOM slices with different ImageOrientationPatient in one series (a localizer mixed in?)"]
    if not _close([_vector(ds, "PixelSpacing") for ds in headers]):
        return ["DICOM slices with different PixelSpacing in one series"]
    return _order_problems(headers) or _decoder_problems(headers[0])


def _order_problems(headers: list) -> list[str]:
    """PydicomReader stacks by InstanceNumber and spaces the slices evenly between the first and the last position."""
    if len(headers) < 2:
        return []
    numbers = [ds.get("InstanceNumber") for ds in headers]
    if None in numbers:
        return [f"{numbers.count(None)} DICOM slice(s) without InstanceNumber, which the reader would leave out"]
    if len({int(n) for n in numbers}) < len(numbers):
        return ["DICOM slices sharing one InstanceNumber (several phases or echoes in one series?)"]
    _, _, normal = slice_normal(headers[0])
    stacked = sorted(headers, key=lambda ds: int(ds.InstanceNumber))
    positions = [slice_position(ds, normal) for ds in stacked]
    steps = [b - a for a, b in zip(positions, positions[1:])]
    if any(abs(s) < 1e-6 for s in steps):
        return ["two DICOM slices at the same position (several phases or echoes in one series?)"]
    if not (all(s > 0 for s in steps) or all(s < 0 for s in steps)):
        return ["the InstanceNumber order of the DICOM slices does not follow their positions along the slice normal"]
    step = (positions[-1] - positions[0]) / (len(positions) - 1)
    worst = max(abs(p - (positions[0] + i * step)) for i, p in enumerate(positions))
    if worst > SLICE_SPACING_TOL * abs(step):
        gaps = sorted(abs(s) for s in steps)
        return [
            f"uneven DICOM slice spacing ({gaps[0]:.4g} to {gaps[-1]:.4g} mm between ImagePositionPatient; "
            "a missing slice?)"
        ]
    return []


def _decoder_problems(ds) -> list[str]:
    """PydicomReader (MONAI's choice when itk is absent) decodes compressed pixel data (JPEG Lossless is common in
    CT archives) only with packages that pydicom names; ITKReader's GDCM decodes them all."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or not syntax.is_compressed:
        return []
    try:
        importlib.import_module("itk")
        return []
    except ImportError:
        pass
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        return [f"pixel data compressed as {syntax.name}, which pydicom cannot decode (`pip install itk` can)"]
    if decoder.is_available:
        return []
    needs = " or ".join(d.split(" - requires ", 1)[-1] for d in decoder.missing_dependencies)
    return [f"pixel data compressed as {syntax.name}, which needs {needs} (or itk) to be decoded"]
