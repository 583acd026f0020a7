"""Image writers that never leave a half-written prediction under its final name, and the output format check."""

from __future__ import annotations

import importlib
import os

from monai.data import ITKWriter, NibabelWriter

from scripts.atomic import atomic_path
from scripts.datalist import IMAGE_SUFFIXES, NIFTI_SUFFIXES, image_suffix
from scripts.errors import BundleInputError

ITK_OUTPUTS = tuple(s for s in IMAGE_SUFFIXES if s not in NIFTI_SUFFIXES)  # MONAI writes these only through ITK


class _AtomicWrite:
    """Write to a temporary file in the target folder, then rename it into place, so a crash or a kill during
    writing leaves either no file or the complete file (same suffix keeps the format choice)."""

    def write(self, filename_or_obj, verbose: bool = False, **kwargs):
        target = os.fspath(filename_or_obj)
        with atomic_path(target, suffix=image_suffix(target) or os.path.splitext(target)[1]) as tmp:
            super().write(tmp, verbose=verbose, **kwargs)


class AtomicNibabelWriter(_AtomicWrite, NibabelWriter):
    """NibabelWriter, written temp-then-rename."""


class AtomicITKWriter(_AtomicWrite, ITKWriter):
    """ITKWriter (NRRD, MetaImage), written temp-then-rename."""


def writer_for(output_ext: str) -> type:
    """The writer class for ``--output_ext``, checked when the config is built (before the first case), so an
    unsupported or uninstalled output format fails at start-up in one line instead of after the whole inference."""
    ext = str(output_ext).lower()
    if ext in NIFTI_SUFFIXES:
        return AtomicNibabelWriter
    if ext in ITK_OUTPUTS:
        try:
            importlib.import_module("itk")
        except ImportError:
            raise BundleInputError(
                f"--output_ext {output_ext}: writing {ext} needs the itk package (`pip install "
                "itk`, listed in requirements-optional.txt); or use .nii.gz"
            ) from None
        return AtomicITKWriter
    supported = ", ".join(IMAGE_SUFFIXES)
    raise BundleInputError(f"--output_ext {output_ext}: unsupported output format (supported: {supported})")
