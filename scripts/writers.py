"""Image writers that never leave a half-written prediction under its final name, the output format check,
and a background postprocessing that keeps inversion and writing off the network's critical path."""

from __future__ import annotations

import importlib
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import torch
from ignite.engine import Engine, Events
from monai.data import ITKWriter, NibabelWriter
from scripts.atomic import atomic_path
from scripts.datalist import IMAGE_SUFFIXES, NIFTI_SUFFIXES, image_suffix
from scripts.errors import BundleInputError
from scripts.settings import as_bool

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


class BackgroundPostprocessing:
    """Run a per-case postprocessing (softmax, inversion to the input geometry, argmax, write) in one worker thread,
    so the sliding window of the next case starts at once instead of waiting for resampling and gzip.

    At most ``max_pending`` cases wait for the worker (each holds its class probabilities: this bounds memory); a
    worker error is raised at the next case or at the end of the run. As an Ignite handler (in the evaluator's
    handlers) it waits for the last write before the run counts as completed. ``enabled=False`` runs in line.
    Only for runs whose metrics do not need the postprocessed output (inference, not evaluation).
    """

    def __init__(self, transform: Callable, max_pending: int = 1, enabled: bool = True):
        self.transform = transform
        self.max_pending = max(1, int(max_pending))
        self.enabled = as_bool(enabled, "background_writes")
        self._pending: deque[Future] = deque()
        self._executor: ThreadPoolExecutor | None = None

    def __call__(self, data: dict) -> dict:
        if not self.enabled:
            return self.transform(data)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mnet-writer")
        while self._pending and (len(self._pending) >= self.max_pending or self._pending[0].done()):
            self._pending.popleft().result()  # re-raises a failed write here
        self._pending.append(self._executor.submit(self._run, data))
        return data

    def _run(self, data: dict) -> dict:
        with torch.no_grad():
            return self.transform(data)

    def wait(self, engine: Engine | None = None) -> None:
        """Block until every submitted case is written; raise the first worker error."""
        while self._pending:
            self._pending.popleft().result()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.wait)
