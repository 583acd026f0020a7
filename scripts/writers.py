"""Image writers that never leave a half-written prediction under its final name."""

from __future__ import annotations

import os
import tempfile

from monai.data import NibabelWriter


class AtomicNibabelWriter(NibabelWriter):
    """NibabelWriter that writes to a temporary file in the target folder, then renames it into place, so a crash
    or a kill during writing leaves either no file or the complete file (same suffix keeps the format choice)."""

    def write(self, filename_or_obj, verbose: bool = False, **kwargs):
        target = os.fspath(filename_or_obj)
        folder = os.path.dirname(os.path.abspath(target))
        os.makedirs(folder, exist_ok=True)
        suffix = ".nii.gz" if target.endswith(".nii.gz") else os.path.splitext(target)[1]
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=suffix)
        os.close(fd)
        try:
            super().write(tmp, verbose=verbose, **kwargs)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
