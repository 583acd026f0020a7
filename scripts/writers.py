"""Image writers that never leave a half-written prediction under its final name."""

from __future__ import annotations

import os

from monai.data import NibabelWriter

from scripts.atomic import atomic_path


class AtomicNibabelWriter(NibabelWriter):
    """NibabelWriter that writes to a temporary file in the target folder, then renames it into place, so a crash
    or a kill during writing leaves either no file or the complete file (same suffix keeps the format choice)."""

    def write(self, filename_or_obj, verbose: bool = False, **kwargs):
        target = os.fspath(filename_or_obj)
        suffix = ".nii.gz" if target.endswith(".nii.gz") else os.path.splitext(target)[1]
        with atomic_path(target, suffix=suffix) as tmp:
            super().write(tmp, verbose=verbose, **kwargs)
