"""Image writers that never leave a half-written prediction under its final name, the output format check,
the SaveImaged that lets their input errors through, and a background postprocessing that keeps inversion and
writing off the network's critical path.

The output format is ``output_format``: a file extension (``.nii.gz``, the default, follows ``output_ext``) or
``dicom_seg`` (DICOM SEG referencing the input series, scripts/dicom_seg.py, written as ``<case>_seg.dcm``)."""

from __future__ import annotations

import functools
import importlib
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.data import ITKWriter, NibabelWriter
from monai.transforms import Compose, SaveImaged
from scripts.atomic import atomic_path
from scripts.datalist import IMAGE_SUFFIXES, NIFTI_SUFFIXES, image_suffix
from scripts.dicom import is_series_folder, require
from scripts.dicom_seg import DicomSegWriter, missing_source_references, segment_properties
from scripts.errors import BundleInputError
from scripts.outputs import case_images
from scripts.settings import as_bool

ITK_OUTPUTS = tuple(s for s in IMAGE_SUFFIXES if s not in NIFTI_SUFFIXES)  # MONAI writes these only through ITK
DICOM_SEG = "dicom_seg"
DICOM_SEG_EXT = ".dcm"


_failed = threading.local()  # the BundleInputError of this thread's last failed write, for SaveSegmentationd


@contextmanager
def _kept_for_save() -> Iterator[None]:
    try:
        yield
    except BundleInputError as err:
        _failed.error = err
        raise


class _AtomicWrite:
    """Write to a temporary file in the target folder, then rename it into place, so a crash or a kill during
    writing leaves either no file or the complete file (same suffix keeps the format choice). A BundleInputError
    of any step is kept for `SaveSegmentationd`: MONAI's SaveImage keeps only its text."""

    def set_data_array(self, *args, **kwargs):
        with _kept_for_save():
            return super().set_data_array(*args, **kwargs)

    def set_metadata(self, *args, **kwargs):
        with _kept_for_save():
            return super().set_metadata(*args, **kwargs)

    def write(self, filename_or_obj, verbose: bool = False, **kwargs):
        target = os.fspath(filename_or_obj)
        with _kept_for_save(), atomic_path(target, suffix=image_suffix(target) or os.path.splitext(target)[1]) as tmp:
            super().write(tmp, verbose=verbose, **kwargs)


class AtomicNibabelWriter(_AtomicWrite, NibabelWriter):
    """NibabelWriter, written temp-then-rename."""


class AtomicITKWriter(_AtomicWrite, ITKWriter):
    """ITKWriter (NRRD, MetaImage), written temp-then-rename."""


class AtomicDicomSegWriter(_AtomicWrite, DicomSegWriter):
    """DICOM SEG, written temp-then-rename."""


class SaveSegmentationd(SaveImaged):
    """SaveImaged whose writer's BundleInputError (a SEG that cannot reference its series, a full disk) ends the run
    as that error. MONAI's SaveImage catches every writer failure to try the next writer and then raises an
    unchained RuntimeError "cannot find a suitable writer ... install the writer libraries" holding the cause as
    text only, which the one-line console hook (scripts/errors.py) cannot find and which names the wrong problem."""

    def __call__(self, data):
        _failed.error = None
        try:
            return super().__call__(data)
        except RuntimeError:
            error, _failed.error = getattr(_failed, "error", None), None
            if error is None:
                raise
            raise error from None


def output_extension(output_format: str) -> str:
    """The file extension the outputs of ``output_format`` get (the output names are checked before any work)."""
    return DICOM_SEG_EXT if str(output_format).lower() == DICOM_SEG else str(output_format)


def writer_for(
    output_format: str, cases: Sequence[Any] | None = None, labels: dict | None = None, segments: dict | None = None
) -> Callable:
    """The writer for ``--output_format`` / ``--output_ext``, checked when the config is built (before the first
    case), so an unsupported or uninstalled output format fails at start-up in one line instead of after the whole
    inference. With ``cases`` (the images to segment) DICOM SEG is also refused unless every image is a DICOM series:
    a SEG has no geometry of its own, it points into its source series. ``labels`` name the SEG's segments,
    ``segments`` (``dicom_seg_segments``) code them (scripts.dicom_seg.segment_properties, checked here too)."""
    fmt = str(output_format).lower()
    if segments and fmt != DICOM_SEG:
        raise BundleInputError(f"--dicom_seg_segments: only used with --output_format {DICOM_SEG}, not {output_format}")
    if fmt == DICOM_SEG:
        require("pydicom", "--output_format dicom_seg: writing DICOM SEG")
        require("highdicom", "--output_format dicom_seg: writing DICOM SEG")
        if segments is not None and not isinstance(segments, dict):
            raise BundleInputError(f"--dicom_seg_segments: expected an object keyed by label, got {segments!r}")
        segment_properties(dict(labels or {}), segments)
        for case in cases or []:
            image = case_images(case)[0]
            if not is_series_folder(image):
                raise BundleInputError(
                    f"{image}: --output_format dicom_seg needs DICOM series as input (a SEG references "
                    "its source slices), this is not a DICOM series folder; use the default --output_ext .nii.gz"
                )
            missing = missing_source_references(image)
            if missing:
                raise BundleInputError(
                    f"{image}: --output_format dicom_seg cannot reference this series, its slices lack "
                    f"{', '.join(missing)} (removed by an anonymiser?); use the default --output_ext .nii.gz"
                )
        return functools.partial(AtomicDicomSegWriter, labels=labels, segments=segments)
    option = "--output_ext" if fmt.startswith(".") else "--output_format"
    if fmt in NIFTI_SUFFIXES:
        return AtomicNibabelWriter
    if fmt in ITK_OUTPUTS:
        try:
            importlib.import_module("itk")
        except ImportError:
            raise BundleInputError(
                f"{option} {output_format}: writing {fmt} needs the itk package (`pip install "
                "itk`, listed in requirements-optional.txt); or use .nii.gz"
            ) from None
        return AtomicITKWriter
    supported = ", ".join(IMAGE_SUFFIXES)
    raise BundleInputError(
        f"{option} {output_format}: unsupported output format (supported: {supported}; "
        f"--output_format {DICOM_SEG} for DICOM input)"
    )


class BackgroundPostprocessing(Compose):
    """The per-case postprocessing (softmax, inversion to the input geometry, argmax, write), run in one worker
    thread when ``enabled``, so the sliding window of the next case starts at once instead of waiting for resampling
    and gzip.

    A ``Compose`` of the postprocessing transforms, so it is inference.json's ``postprocessing`` itself: the zoo's
    property check wants the evaluator's postprocessing to be ``@postprocessing``, and MONAI Label takes the
    ``transforms`` of that Compose and runs them its own way. At most ``max_pending`` cases wait for the worker (each
    holds its class probabilities: this bounds memory); a worker error is raised at the next case or at the end of
    the run. As an Ignite handler (in the evaluator's handlers) it waits for the last write before the run counts as
    completed. ``enabled=False`` runs in line. Only for runs whose metrics do not need the postprocessed output.
    """

    def __init__(self, transforms: Sequence[Callable] | Callable, max_pending: int = 1, enabled: bool = True):
        super().__init__(transforms)
        self.max_pending = max(1, int(max_pending))
        self.enabled = as_bool(enabled, "background_writes")
        self._pending: deque[Future] = deque()
        self._executor: ThreadPoolExecutor | None = None

    def __call__(self, data, *args, **kwargs):
        if not self.enabled:
            return super().__call__(data, *args, **kwargs)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mnet-writer")
        while self._pending and (len(self._pending) >= self.max_pending or self._pending[0].done()):
            self._pending.popleft().result()  # re-raises a failed write here
        self._pending.append(self._executor.submit(self._run, data))
        return data

    def _run(self, data: dict) -> dict:
        with torch.no_grad():
            return super().__call__(data)

    def wait(self, engine: Engine | None = None) -> None:
        """Block until every submitted case is written; raise the first worker error."""
        while self._pending:
            self._pending.popleft().result()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.wait)
