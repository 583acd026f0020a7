"""Ignite handlers the bundle needs and MONAI does not ship."""

from __future__ import annotations

import logging
import os
import time

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from monai.engines import IterationEvents

from scripts.atomic import atomic_path


class GradientClipHandler:
    """Clip the gradient norm after backward and before the optimizer step (nnU-Net/MNet use 12).

    SupervisedTrainer fires BACKWARD_COMPLETED between the two; with AMP the gradients are unscaled first so the
    threshold applies to the true gradients (GradScaler then skips its own unscale).
    """

    def __init__(self, max_norm: float = 12.0):
        self.max_norm = max_norm

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        scaler = getattr(engine, "scaler", None)
        if getattr(engine, "amp", False) and scaler is not None:
            scaler.unscale_(engine.optimizer)
        torch.nn.utils.clip_grad_norm_(engine.network.parameters(), self.max_norm)


class LastCheckpointSaver:
    """Save a full training checkpoint (network, optimizer, scheduler, trainer state) after every epoch as
    ``checkpoint_last.pt``, replacing the previous one atomically, so ``resume=true`` loses at most one epoch and a
    crash mid-write never leaves a truncated file. Only rank 0 writes in distributed runs.

    With ``evaluator``, the validation's best metric and the key-metric CheckpointSaver's memory of it are saved too,
    so a resumed run does not overwrite the best ``model.pt`` with a worse model.
    """

    def __init__(self, save_dir: str, save_dict: dict, filename: str = "checkpoint_last.pt", evaluator=None):
        self.path = os.path.join(save_dir, filename)
        self.save_dict = save_dict
        self.evaluator = evaluator

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return
        state = {name: _unwrap(obj).state_dict() for name, obj in self.save_dict.items()}
        state["trainer"] = engine.state_dict()
        if self.evaluator is not None:
            state["best_metric"] = best_metric_state(self.evaluator)
        atomic_torch_save(state, self.path)


def _key_metric_checkpoints(evaluator: Engine) -> list:
    """The ignite Checkpoint objects of the key-metric CheckpointSavers attached to ``evaluator``, in order.

    Found through the evaluator's handlers so the config need not reference a handler by its list index.
    """
    found = []
    for handler, _, _ in evaluator._event_handlers.get(Events.EPOCH_COMPLETED, []):
        checkpoint = getattr(getattr(handler, "__self__", None), "_key_metric_checkpoint", None)
        if isinstance(checkpoint, Checkpoint):
            found.append(checkpoint)
    return found


def best_metric_state(evaluator: Engine) -> dict:
    """What the validation remembers about the best model: its metric, epoch and the saver's ranking."""
    return {
        "best_metric": float(getattr(evaluator.state, "best_metric", -1)),
        "best_metric_epoch": int(getattr(evaluator.state, "best_metric_epoch", -1)),
        # plain floats and strings: the file is read back with torch.load(weights_only=True)
        "savers": [{"_saved": [(float(p), str(f)) for p, f in c.state_dict()["_saved"]]}
                   for c in _key_metric_checkpoints(evaluator)],
    }


def restore_best_metric(evaluator: Engine, state: dict) -> None:
    """Inverse of `best_metric_state`; savers beyond those saved keep their fresh state."""
    evaluator.state.best_metric = state["best_metric"]
    evaluator.state.best_metric_epoch = state["best_metric_epoch"]
    for checkpoint, saved in zip(_key_metric_checkpoints(evaluator), state["savers"]):
        checkpoint.load_state_dict(saved)


class ResumeHandler:
    """With ``enabled``, restore network, optimizer, scheduler and the trainer's epoch/iteration from the last
    checkpoint when training starts, so the same command with ``resume=true`` continues the same LR schedule.

    The trainer itself is not part of ``load_dict`` (that would be a circular reference in the config): its state is
    restored on the engine this handler is attached to. The run's own ``max_epochs`` wins over the saved one. With
    ``evaluator``, the best validation metric so far is restored as well (see LastCheckpointSaver).
    A missing, corrupted or mismatching checkpoint stops the run with one line (scripts.errors.BundleInputError).
    """

    def __init__(self, load_path: str, load_dict: dict, enabled: bool = True, map_location: str | None = "cpu",
                 evaluator=None):
        self.load_path = load_path
        self.load_dict = load_dict
        self.enabled = enabled
        self.map_location = map_location
        self.evaluator = evaluator

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        from scripts.check_data import load_checkpoint, state_dict_mismatch
        from scripts.errors import BundleInputError

        if not os.path.isfile(self.load_path):
            raise BundleInputError(f"{self.load_path}: resume=true but there is no checkpoint to resume from")
        checkpoint = load_checkpoint(self.load_path, self.map_location)
        missing = [name for name in [*self.load_dict, "trainer"] if name not in checkpoint]
        if missing:
            raise BundleInputError(f"{self.load_path}: not a full training checkpoint, it lacks {missing}")
        for name, obj in self.load_dict.items():
            obj = _unwrap(obj)
            mismatch = state_dict_mismatch(checkpoint[name], obj) if isinstance(obj, torch.nn.Module) else None
            if mismatch:
                raise BundleInputError(f"{self.load_path}: '{name}' does not fit this network ({mismatch}); "
                                       "was it trained with another plan (kn, channels, classes)?")
            try:
                obj.load_state_dict(checkpoint[name])
            except (ValueError, KeyError, RuntimeError) as err:
                raise BundleInputError(f"{self.load_path}: cannot restore '{name}' ({str(err)[:160]})") from None
        max_epochs = engine.state.max_epochs
        engine.load_state_dict(checkpoint["trainer"])
        engine.state.max_epochs = max_epochs
        if self.evaluator is not None and "best_metric" in checkpoint:
            restore_best_metric(self.evaluator, checkpoint["best_metric"])
        engine.logger.info(f"resumed from {self.load_path} at epoch {engine.state.epoch}")


def _unwrap(obj):
    """State dicts of DDP/DataParallel wrappers carry a 'module.' prefix; save the plain network's keys."""
    return obj.module if isinstance(obj, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)) else obj


def atomic_torch_save(obj, path: str) -> None:
    """torch.save to a temporary file in the same folder, then rename: readers see the old or the new file only."""
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(obj, tmp)


class CaseProgress:
    """Log a line per finished case of an evaluator run ("validation: case 3/20 done in 41.2 s: <file>"), so that
    a validation or an inference of slow (CPU) cases is not minutes of silence.

    ``every_s`` > 0 logs a case only when that many seconds passed since the run's start or the last line (and the
    last case always), which keeps training's frequent, fast GPU validations quiet. Under torchrun each line names
    the rank and counts that rank's cases.
    """

    def __init__(self, name: str = "inference", every_s: float = 0.0):
        self.name = name
        self.every_s = float(every_s)
        self._last = self._case_start = 0.0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_STARTED, self._case_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _started(self, engine: Engine) -> None:
        self._last = time.perf_counter()

    def _case_started(self, engine: Engine) -> None:
        self._case_start = time.perf_counter()

    def __call__(self, engine: Engine) -> None:
        now = time.perf_counter()
        total = engine.state.epoch_length
        done = (engine.state.iteration - 1) % total + 1 if total else engine.state.iteration
        if now - self._last < self.every_s and done != total:
            return
        self._last = now
        rank = f" rank {dist.get_rank()}:" if dist.is_available() and dist.is_initialized() else ""
        name = _case_file(engine.state.batch)
        line = f"{self.name}:{rank} case {done}/{total} done in {now - self._case_start:.1f} s"
        logging.getLogger("mnet.progress").info(line + (f": {name}" if name else ""))


def _case_file(batch) -> str:
    """The input file of the (first) case in an evaluator's batch, from MONAI's metadata."""
    for item in batch if isinstance(batch, list) else [batch]:
        for value in item.values() if isinstance(item, dict) else []:
            meta = getattr(value, "meta", None)
            if isinstance(meta, dict) and meta.get("filename_or_obj"):
                name = meta["filename_or_obj"]
                return str(name[0] if isinstance(name, (list, tuple)) else name)
    return ""
