"""Checkpoints in one place: atomic saving, safe loading, validation, and what a model was trained with.

Two kinds of file are written by training: ``model.pt``, the best model as a *plain state dict* (what MONAI's
CheckpointLoader, ``ckpt_export`` and MONAI Label load), and ``checkpoint_last.pt``, a *training checkpoint* (a dict
with ``network``, ``optimizer``, ``lr_scheduler``, ``trainer`` ...). Every file is written temp-then-rename
(scripts.atomic). A plain state dict has no room for metadata that strict loaders tolerate, so ``model.pt`` gets a
sidecar ``model.json`` (the plan fingerprint, fold, split and the sha256 of the weights), written atomically just
before it; training checkpoints carry the same record under ``meta``. Every load is ``weights_only=True`` and every
problem (missing, truncated, other network, NaN weights, other plan) is one line naming the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from scripts.atomic import atomic_path
from scripts.errors import BundleInputError, install_excepthook

install_excepthook()
logger = logging.getLogger("mnet.checkpoints")

# plan entries that change what the network sees or predicts; patch and batch size, the median shape and the notes
# may change without making a trained model wrong (see docs/plan_format.md)
FINGERPRINT_KEYS = ("modality", "in_channels", "out_channels", "labels", "spacing", "thick_axis", "normalization", "kn")
TRAINING_KEYS = ("network", "trainer")  # a dict with these is checkpoint_last.pt, not a model


def plan_fingerprint(plan: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of the plan entries in FINGERPRINT_KEYS (sorted keys, floats as JSON writes)."""
    subset = {key: plan.get(key) for key in FINGERPRINT_KEYS}
    return hashlib.sha256(json.dumps(subset, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def fold_dir(models_dir: str, fold: int = 0) -> str:
    """Where fold ``fold`` keeps its checkpoints: fold 0 (the default) in ``models/`` itself, so the model-zoo and
    MONAI Label layout (``models/model.pt``) stays; fold k > 0 in ``models/fold_k/``, so folds never overwrite each
    other."""
    return models_dir if int(fold) == 0 else os.path.join(models_dir, f"fold_{int(fold)}")


def case_ids(cases: Sequence[Any]) -> list[str]:
    """The cases of a split as image paths relative to their common folder (stable if the data set is moved)."""
    paths = [str(c["image"] if isinstance(c, Mapping) else c) for c in cases]
    if not paths:
        return []
    root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
    return sorted(os.path.relpath(os.path.abspath(p), root) for p in paths)


def training_meta(plan: Mapping[str, Any], fold: int = 0, train: Sequence = (), validation: Sequence = ()) -> dict:
    """The record a training run writes into its checkpoints (plain strings and ints: weights_only loads it). Takes
    the data lists the run really uses (MONAI Label replaces them and has no datalist to split)."""
    return {
        "plan_sha256": plan_fingerprint(plan),
        "modality": str(plan.get("modality", "")),
        "fold": int(fold),
        "split": {"train": case_ids(train or []), "validation": case_ids(validation or [])},
    }


def meta_path(model_path: str) -> str:
    """``models/model.pt`` -> ``models/model.json``."""
    return os.path.splitext(model_path)[0] + ".json"


def save(obj: Any, path: str) -> None:
    """torch.save to a temporary file in the same folder, fsync, rename: readers see the old or the new file only,
    a full disk is one line and leaves the old file."""
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(obj, tmp)


def save_model(state_dict: Mapping[str, torch.Tensor], path: str, meta: Mapping[str, Any] | None = None) -> None:
    """Write a plain state dict and its sidecar record. The weights go to a temporary file first; the record (with
    their sha256) is renamed into place just before them, so a kill between the two renames is detected on load
    instead of pairing new weights with an old record or the reverse."""
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(dict(state_dict), tmp)
        with open(tmp, "rb") as handle:
            record = {**(meta or {}), "weights_sha256": hashlib.sha256(handle.read()).hexdigest()}
        with atomic_path(meta_path(path), suffix=".json") as tmp_meta:
            with open(tmp_meta, "w") as handle:
                json.dump(record, handle, indent=4, sort_keys=True)


def read_meta(path: str) -> dict | None:
    """The sidecar record of ``path`` (None when there is none: weights from elsewhere, older bundle versions);
    an unreadable sidecar or one that describes other weights is one line."""
    sidecar = meta_path(path)
    if not os.path.isfile(sidecar):
        return None
    try:
        with open(sidecar) as handle:
            record = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleInputError(f"{sidecar}: unreadable model record ({err})") from None
    digest = record.get("weights_sha256")
    if digest:
        with open(path, "rb") as handle:
            actual = hashlib.sha256(handle.read()).hexdigest()
        if actual != digest:
            raise BundleInputError(
                f"{sidecar}: describes other weights than {os.path.basename(path)} (a save was "
                "interrupted, or one of the two files was replaced); delete it or retrain"
            )
    return record


def load(path: str, map_location: Any = "cpu") -> Any:
    """torch.load with weights_only=True, turning a missing or truncated/corrupted file into one clear line."""
    if not os.path.isfile(path):
        raise BundleInputError(f"{path}: checkpoint not found (train first, or point ckpt_path/ckpt_dir at it)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise BundleInputError(f"{path}: corrupted or not a PyTorch weights file ({reason})") from None


def is_training_checkpoint(obj: Any) -> bool:
    return isinstance(obj, Mapping) and all(key in obj for key in TRAINING_KEYS)


def state_dict_mismatch(state: Mapping, module: torch.nn.Module) -> str | None:
    """A short description of how a state dict does not fit a module (missing/unexpected/shape), else None."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    given = {k: tuple(getattr(v, "shape", ())) for k, v in state.items()}
    shapes = [
        f"{k}: checkpoint {list(given[k])} vs network {list(s)}"
        for k, s in expected.items()
        if k in given and given[k] != s
    ]
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    parts = [f"{len(shapes)} parameter(s) differ in shape, e.g. {shapes[0]}"] if shapes else []
    parts += [f"{len(missing)} missing, e.g. {missing[0]}"] if missing else []
    parts += [f"{len(unexpected)} unexpected, e.g. {unexpected[0]}"] if unexpected else []
    return "; ".join(parts) or None


def nonfinite(state: Mapping) -> list[str]:
    """Names of floating-point tensors holding NaN or Inf (a diverged run saves such weights without complaint)."""
    return [
        k
        for k, v in state.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]


def refuse_nonfinite(path: str, state: Mapping, advice: str) -> None:
    """One line naming ``path`` when its weights hold NaN or Inf, for every loader (model, resume, converter): such
    weights predict nothing useful, and a resumed run would only train on NaN."""
    bad = nonfinite(state)
    if bad:
        raise BundleInputError(
            f"{path}: {len(bad)} weight tensor(s) hold NaN or Inf, e.g. {bad[0]} (the training diverged); {advice}"
        )


def check_plan(path: str, plan: Mapping[str, Any] | None, record: Mapping[str, Any] | None) -> None:
    """Refuse weights trained with another plan (other spacing, normalisation, classes ...): they would run on
    preprocessing they never saw and give a wrong segmentation without a word."""
    if plan is None:
        return
    if record is None or "plan_sha256" not in record:
        logger.warning(
            f"{path}: no model record ({os.path.basename(meta_path(path))}); cannot check that it was "
            "trained with this plan"
        )
        return
    if record["plan_sha256"] != plan_fingerprint(plan):
        raise BundleInputError(
            f"{path}: trained with another plan than the current one (fingerprint "
            f"{record['plan_sha256'][:12]} vs {plan_fingerprint(plan)[:12]}); use the plan.json "
            "it was trained with (--plan_file) or retrain"
        )


def model_state(
    path: str,
    network: torch.nn.Module,
    plan: Mapping[str, Any] | None = None,
    key: str = "model",
    map_location: Any = "cpu",
) -> dict:
    """The validated plain state dict in ``path`` for ``network``: readable, a model (not checkpoint_last.pt), the
    right keys and shapes, finite, and (with ``plan``) trained with this plan. Every failure is one line."""
    checkpoint = load(path, map_location)
    if is_training_checkpoint(checkpoint):
        raise BundleInputError(
            f"{path}: is a training checkpoint (checkpoint_last.pt), not a model; use the model.pt next to it"
        )
    state = checkpoint.get(key, checkpoint) if isinstance(checkpoint, Mapping) else checkpoint
    if not isinstance(state, Mapping):
        raise BundleInputError(f"{path}: holds a {type(state).__name__}, expected a state dict (under '{key}')")
    mismatch = state_dict_mismatch(state, getattr(network, "module", network))
    if mismatch:
        raise BundleInputError(
            f"{path}: checkpoint does not fit this network ({mismatch}); was it trained with "
            "another plan (kn, in_channels, out_channels)?"
        )
    refuse_nonfinite(path, state, "use an earlier checkpoint or retrain")
    check_plan(path, plan, read_meta(path))
    return dict(state)


def check_checkpoint(
    path: str, network: torch.nn.Module, plan: Mapping[str, Any] | None = None, key: str = "model"
) -> str:
    """`model_state` for configs: returns ``path`` so a CheckpointLoader's ``load_path`` can be wrapped with it."""
    model_state(path, network, plan, key)
    return path


def check_resume(path: str, checkpoint: Mapping[str, Any], meta: Mapping[str, Any] | None) -> None:
    """Refuse to continue a training checkpoint of another fold, split or plan (it would silently train fold 0's
    weights on fold 1's cases, or on other preprocessing)."""
    saved = checkpoint.get("meta")
    if meta is None:
        return
    if not isinstance(saved, Mapping):
        logger.warning(f"{path}: written by an older bundle version, cannot check its fold, split and plan")
        return
    if saved.get("fold") != meta.get("fold"):
        raise BundleInputError(
            f"{path}: is a checkpoint of fold {saved.get('fold')}, this run trains fold "
            f"{meta.get('fold')}; pass --fold {saved.get('fold')} or start fold {meta.get('fold')} "
            "without --resume"
        )
    if saved.get("plan_sha256") != meta.get("plan_sha256"):
        old, new = str(saved.get("plan_sha256"))[:12], str(meta.get("plan_sha256"))[:12]
        raise BundleInputError(
            f"{path}: was trained with another plan (fingerprint {old} vs {new}); resume with the "
            "plan.json it was trained with, or start without --resume"
        )
    if saved.get("split") != meta.get("split"):
        raise BundleInputError(
            f"{path}: was trained on another split of the cases (the datalist changed); resume "
            "with the same datalist, or start without --resume"
        )
