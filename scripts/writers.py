"""Image writers that never leave a half-written prediction under its final name, and a background postprocessing
that keeps inversion and writing off the network's critical path."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import torch
from ignite.engine import Engine, Events
from monai.data import NibabelWriter

from scripts.atomic import atomic_path
from scripts.flags import as_bool


class AtomicNibabelWriter(NibabelWriter):
    """NibabelWriter that writes to a temporary file in the target folder, then renames it into place, so a crash
    or a kill during writing leaves either no file or the complete file (same suffix keeps the format choice)."""

    def write(self, filename_or_obj, verbose: bool = False, **kwargs):
        target = os.fspath(filename_or_obj)
        suffix = ".nii.gz" if target.endswith(".nii.gz") else os.path.splitext(target)[1]
        with atomic_path(target, suffix=suffix) as tmp:
            super().write(tmp, verbose=verbose, **kwargs)


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
