"""Ignite handlers the bundle needs and MONAI does not ship."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from monai.engines import IterationEvents
from monai.handlers import MetricsSaver
from scripts import checkpoints, schedule
from scripts.atomic import atomic_files
from scripts.errors import BundleInputError, find_input_error
from scripts.settings import as_bool


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

    With ``evaluator``, the validation's best metric and the BestModelSaver's memory of it are saved too, so a resumed
    run does not overwrite the best ``model.pt`` with a worse model. ``meta`` (scripts.checkpoints.training_meta:
    fold, split, plan fingerprint) is stored under ``meta`` so a resume of another fold or plan is refused.
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: dict,
        filename: str = "checkpoint_last.pt",
        evaluator=None,
        meta: dict | None = None,
    ):
        self.path = os.path.join(save_dir, filename)
        self.save_dict = save_dict
        self.evaluator = evaluator
        self.meta = meta

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not _is_rank0():
            return
        state = {name: _unwrap(obj).state_dict() for name, obj in self.save_dict.items()}
        state["trainer"] = engine.state_dict()
        if self.evaluator is not None:
            state["best_metric"] = best_metric_state(self.evaluator)
        if self.meta is not None:
            state["meta"] = dict(self.meta)
        checkpoints.save(state, self.path)


class BestModelSaver:
    """Save the network as ``model.pt`` (plain state dict) whenever the evaluator's key metric improves.

    Replaces MONAI's CheckpointSaver(save_key_metric=True), which deletes the previous best file before writing the
    new one in place: a kill or a full disk during that save left no best model, or a truncated one. Here the new
    file is written temp-then-rename (scripts.checkpoints.save_model, with its ``model.json`` record), so the previous
    best survives until the new one is complete. A missing best file (deleted, or never written before a resume) is
    written at the next validation whatever its metric. Only rank 0 writes.
    """

    def __init__(
        self,
        save_dir: str,
        network: torch.nn.Module,
        filename: str = "model.pt",
        meta: dict | None = None,
        key_metric_name: str | None = None,
    ):
        self.path = os.path.join(save_dir, filename)
        self.network = network
        self.meta = meta
        self.key_metric_name = key_metric_name
        self.best = -float("inf")

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        name = self.key_metric_name or getattr(engine.state, "key_metric_name", None)
        metric = float(engine.state.metrics[name])
        if not (metric > self.best or not os.path.isfile(self.path)):
            return
        if metric == metric:  # NaN (nothing to score) never becomes the best; the file is still written once
            self.best = metric
        if _is_rank0():
            meta = {**(self.meta or {}), "epoch": int(engine.state.epoch), name: metric}
            checkpoints.save_model(_unwrap(self.network).state_dict(), self.path, meta)

    def state_dict(self) -> dict:
        return {"best": float(self.best), "filename": os.path.basename(self.path)}

    def load_state_dict(self, state: dict) -> None:
        if "_saved" in state:  # written by MONAI's CheckpointSaver (older bundle versions): [(priority, file)]
            self.best = max((float(p) for p, _ in state["_saved"]), default=-float("inf"))
        else:
            self.best = float(state["best"])


def _best_savers(evaluator: Engine) -> list:
    """The BestModelSavers attached to ``evaluator``, in order (found through its handlers, so the config need not
    reference a handler by its list index)."""
    found = []
    for handler, _, _ in evaluator._event_handlers.get(Events.EPOCH_COMPLETED, []):
        for candidate in (handler, getattr(handler, "__self__", None)):
            if isinstance(candidate, BestModelSaver) and candidate not in found:
                found.append(candidate)
    return found


def best_metric_state(evaluator: Engine) -> dict:
    """What the validation remembers about the best model: its metric, epoch and the savers' best values."""
    return {
        "best_metric": float(getattr(evaluator.state, "best_metric", -1)),
        "best_metric_epoch": int(getattr(evaluator.state, "best_metric_epoch", -1)),
        # plain floats and strings: the file is read back with torch.load(weights_only=True)
        "savers": [saver.state_dict() for saver in _best_savers(evaluator)],
    }


def restore_best_metric(evaluator: Engine, state: dict) -> None:
    """Inverse of `best_metric_state`; savers beyond those saved keep their fresh state."""
    evaluator.state.best_metric = state["best_metric"]
    evaluator.state.best_metric_epoch = state["best_metric_epoch"]
    for saver, saved in zip(_best_savers(evaluator), state["savers"]):
        saver.load_state_dict(saved)


class AtomicMetricsSaver(MetricsSaver):
    """MONAI's MetricsSaver (same arguments and files) whose CSVs go temp-then-rename.

    MONAI writes ``metrics.csv``, ``*_raw.csv`` and ``*_summary.csv`` in place, so a kill or a full disk during an
    evaluation's last step left truncated metrics under the final names. Here MONAI writes them into a temporary
    folder inside ``save_dir`` (scripts.atomic.atomic_files), and each is renamed onto its name once all are complete.
    """

    def __call__(self, engine: Engine) -> None:
        save_dir = self.save_dir
        with atomic_files(save_dir) as tmp:
            self.save_dir = tmp
            try:
                super().__call__(engine)
            finally:
                self.save_dir = save_dir


class ResumeHandler:
    """With ``enabled``, restore network, optimizer, scheduler and the trainer's epoch/iteration from the last
    checkpoint when training starts, so the same command with ``resume=true`` continues the same LR schedule.

    The trainer itself is not part of ``load_dict`` (that would be a circular reference in the config): its state is
    restored on the engine this handler is attached to. The run's own ``max_epochs``, ``--epochs`` and
    ``--learning_rate`` win over the saved ones: the LR scheduler continues over the new length from the new base LR
    (scripts.schedule.refit), as an uninterrupted run with those settings would. With ``evaluator``, the best
    validation metric so far is restored as well (see LastCheckpointSaver). With ``meta``, a checkpoint of another
    fold, split or plan is refused. A missing, corrupted, mismatching or NaN/Inf checkpoint stops the run with one
    line.
    """

    def __init__(
        self,
        load_path: str,
        load_dict: dict,
        enabled: bool = True,
        map_location: str | None = "cpu",
        evaluator=None,
        meta: dict | None = None,
    ):
        self.load_path = load_path
        self.load_dict = load_dict
        self.enabled = as_bool(enabled, "resume")
        self.map_location = map_location
        self.evaluator = evaluator
        self.meta = meta

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if not os.path.isfile(self.load_path):
            raise BundleInputError(f"{self.load_path}: resume=true but there is no checkpoint to resume from")
        checkpoint = checkpoints.load(self.load_path, self.map_location)
        missing = [name for name in [*self.load_dict, "trainer"] if name not in checkpoint]
        if missing:
            raise BundleInputError(f"{self.load_path}: not a full training checkpoint, it lacks {missing}")
        checkpoints.check_resume(self.load_path, checkpoint, self.meta)
        schedulers = {
            name: (obj, schedule.fresh_state(obj))
            for name, obj in self.load_dict.items()
            if isinstance(obj, torch.optim.lr_scheduler.LRScheduler)
        }
        for name, obj in self.load_dict.items():
            obj = _unwrap(obj)
            mismatch = (
                checkpoints.state_dict_mismatch(checkpoint[name], obj) if isinstance(obj, torch.nn.Module) else None
            )
            if mismatch:
                raise BundleInputError(
                    f"{self.load_path}: '{name}' does not fit this network ({mismatch}); "
                    "was it trained with another plan (kn, channels, classes)?"
                )
            if isinstance(obj, torch.nn.Module):
                checkpoints.refuse_nonfinite(
                    self.load_path, checkpoint[name], "resume from an earlier copy, or start without --resume"
                )
            try:
                obj.load_state_dict(checkpoint[name])
            except (ValueError, KeyError, RuntimeError) as err:
                raise BundleInputError(f"{self.load_path}: cannot restore '{name}' ({str(err)[:160]})") from None
        max_epochs = engine.state.max_epochs
        engine.load_state_dict(checkpoint["trainer"])
        engine.state.max_epochs = max_epochs
        for scheduler, fresh in schedulers.values():
            changes = schedule.refit(scheduler, fresh, done=engine.state.epoch)
            if changes:
                engine.logger.info(
                    f"resume: schedule changed ({', '.join(changes)}); the learning rate continues "
                    f"on the new schedule at {scheduler.get_last_lr()[0]:.6g}"
                )
        if self.evaluator is not None and "best_metric" in checkpoint:
            restore_best_metric(self.evaluator, checkpoint["best_metric"])
        engine.logger.info(f"resumed from {self.load_path} at epoch {engine.state.epoch}")


class Interrupted(SystemExit):
    """Ctrl-C during training; a SystemExit so Python exits with its code (130) and prints no traceback."""


class InterruptHandler:
    """Ctrl-C (SIGINT) during training ends the run with one line and exit status 130 instead of a traceback.

    Every checkpoint is written temp-then-rename, so stopping at any point leaves the last complete
    ``checkpoint_last.pt`` (and ``model.pt``) intact; the message says how to continue. Ignite hands the exception
    to the EXCEPTION_RAISED handlers, and MONAI's StatsHandler logs a full traceback there, so this handler puts
    itself first on the trainer (and on ``evaluator``, where validation may be interrupted) and lets only the
    interruption pass straight through. The previous SIGINT handler is restored when training ends.
    """

    def __init__(self, ckpt_path: str = "models/checkpoint_last.pt", evaluator: Engine | None = None):
        self.ckpt_path = ckpt_path
        self.evaluator = evaluator
        self._previous = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.install, engine)
        engine.add_event_handler(Events.COMPLETED, self.restore)
        for target in (engine, self.evaluator):
            if target is not None:
                target.add_event_handler(Events.EXCEPTION_RAISED, self.pass_through)
                handlers = target._event_handlers[Events.EXCEPTION_RAISED]  # ignite has no public "prepend"
                handlers.insert(0, handlers.pop())

    def install(self, _: Engine, engine: Engine) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, lambda signum, frame: self.interrupted(engine))

    def restore(self, *_) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def pass_through(self, engine: Engine, error: BaseException) -> None:
        """Re-raise the interruption at once; other errors go on to the next handler (re-raised when there is
        none, as ignite does without handlers)."""
        self.restore()
        if isinstance(error, Interrupted) or len(engine._event_handlers[Events.EXCEPTION_RAISED]) == 1:
            raise error

    def interrupted(self, engine: Engine) -> None:
        self.restore()
        saved = f"; {self.ckpt_path} is intact" if os.path.isfile(self.ckpt_path) else ""
        sys.stderr.write(
            f"ERROR: interrupted at epoch {engine.state.epoch}, iteration {engine.state.iteration}"
            f"{saved}, resume with --resume true\n"
        )
        sys.stderr.flush()
        raise Interrupted(130)


class InputErrorPassThrough:
    """A BundleInputError raised while the engine runs (a case the writer cannot write, a full disk) ends the run
    as the one line of the console hook (scripts/errors.py): first among the EXCEPTION_RAISED handlers, this
    re-raises it before MONAI's StatsHandler logs it with a traceback screens long; other errors go on to the
    next handler (re-raised when there is none, as ignite does without handlers)."""

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EXCEPTION_RAISED, self)
        handlers = engine._event_handlers[Events.EXCEPTION_RAISED]  # ignite has no public "prepend"
        handlers.insert(0, handlers.pop())

    def __call__(self, engine: Engine, error: BaseException) -> None:
        if find_input_error(error) is not None or len(engine._event_handlers[Events.EXCEPTION_RAISED]) == 1:
            raise error


def _is_rank0() -> bool:
    return not (dist.is_available() and dist.is_initialized() and dist.get_rank() != 0)


def _unwrap(obj):
    """State dicts of DDP/DataParallel wrappers carry a 'module.' prefix; save the plain network's keys."""
    return obj.module if isinstance(obj, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)) else obj


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
