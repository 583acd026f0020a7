"""The training schedule: lengths checked before any work, and a resumed run moved onto the schedule it was given.

Without this, ``--epochs 0`` or ``--batch_size 0`` end in a traceback from deep inside ignite or the DataLoader, and a
resumed PolynomialLR keeps the ``total_iters`` and base LR saved in the checkpoint: ``--epochs 4`` after a 2-epoch
run then trains at learning rate 0.0 and a new ``--learning_rate`` is ignored.
"""

from __future__ import annotations

import logging
import math

import torch
from scripts.errors import BundleInputError

logger = logging.getLogger("mnet.schedule")


def check_settings(**settings) -> None:
    """Each named setting must be a positive number (integers where a count is meant); one line otherwise."""
    for name, value in settings.items():
        counting = name != "learning_rate"
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not number or value <= 0 or (counting and int(value) != value):
            kind = "a positive integer" if counting else "a positive number"
            raise BundleInputError(f"--{name}: must be {kind}, got {value!r}")


def refit(scheduler: torch.optim.lr_scheduler.LRScheduler, fresh: dict, done: int) -> list[str]:
    """After loading a scheduler's state, put back this run's schedule: ``fresh`` holds ``total_iters`` and
    ``base_lrs`` as constructed from the current settings; the optimizer's LR becomes the schedule's closed form at
    ``done`` epochs, so the run continues exactly as an uninterrupted run of the new length would. Returns what
    changed (for the log)."""
    changes = []
    if hasattr(scheduler, "total_iters") and scheduler.total_iters != fresh["total_iters"]:
        if fresh["total_iters"] <= done:
            raise BundleInputError(
                f"--epochs {fresh['total_iters']}: the checkpoint has already trained {done} "
                "epoch(s); give more epochs than that, or start without --resume"
            )
        changes.append(f"epochs {scheduler.total_iters} -> {fresh['total_iters']}")
        scheduler.total_iters = fresh["total_iters"]
    if list(scheduler.base_lrs) != list(fresh["base_lrs"]):
        changes.append(f"learning_rate {scheduler.base_lrs[0]} -> {fresh['base_lrs'][0]}")
        scheduler.base_lrs = list(fresh["base_lrs"])
    if changes:
        if not hasattr(scheduler, "_get_closed_form_lr"):
            raise BundleInputError(
                f"{type(scheduler).__name__}: cannot move a resumed run onto a changed schedule "
                f"({', '.join(changes)}); resume with the original settings"
            )
        for group, base in zip(scheduler.optimizer.param_groups, scheduler.base_lrs):
            group["initial_lr"] = base
        for group, lr in zip(scheduler.optimizer.param_groups, scheduler._get_closed_form_lr()):
            group["lr"] = lr
        scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
    return changes


def fresh_state(scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict:
    """What `refit` needs, taken before the checkpoint overwrites it."""
    return {"total_iters": getattr(scheduler, "total_iters", None), "base_lrs": list(scheduler.base_lrs)}
