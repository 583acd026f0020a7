"""Does MNet keep its accuracy as the slice spacing grows? A small controlled re-run of the paper's Fig. 4 and Table 2.

    python -m benchmarks.study [--size smoke|cpu|gpu] [--device cpu|cuda] [--seeds 2] [--out_dir study]
    python -m benchmarks.study --dataset_dir /data/MyTask --datalist dataset.json    # your own data

Synthetic mode: the same continuous phantoms (body, organ, lesions; the demo generator's shapes, scripts/demo/data.py)
are "scanned" at fixed in-plane spacing and slice spacings of 1, 2.5, 5 and 8 mm (every slice averages sub-slices
across its thickness, labels from the slice centre), so only the anisotropy changes between the data sets. Each of
MNet (FMU sub, sum, cat), a 2D U-Net and a 3D U-Net (MONAI DynUNet; the 3D one with the kernels and strides nnU-Net's
rule gives for the plan's spacing and patch) is trained with configs/train.json's recipe (loss, optimiser, poly LR,
augmentation; patch and batch from scripts/plan.py) for the same number of iterations, per seed, and evaluated on
held-out phantoms with Dice and HD95 per class. Own-data mode compares MNet with the two U-Nets on fold 0 of the
user's datalist at the user's spacing. Writes results.json, results.md, dice_vs_spacing.png and study.log.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from benchmarks.network import cpu_model
from monai.bundle import ConfigParser
from monai.losses import DeepSupervisionLoss
from monai.metrics import DiceMetric, HausdorffDistanceMetric
from monai.networks.nets import DynUNet
from monai.utils import set_determinism
from scipy import ndimage
from scripts.atomic import atomic_path
from scripts.demo import data as demo_data
from scripts.errors import BundleInputError, install_excepthook
from scripts.networks.mnet import MNet
from scripts.plan import plan_dataset
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_CONFIG = REPO_ROOT / "configs" / "train.json"
SPACINGS = (1.0, 2.5, 5.0, 8.0)
MODELS = ("mnet_sub", "mnet_sum", "mnet_cat", "unet2d", "unet3d")
OWN_DATA_MODELS = ("mnet_sub", "unet2d", "unet3d")
LESION_REF_Z = 5.0  # lesions are placed once on a 5 mm reference grid, so their physical size is the same everywhere
MIN_FEATURE_MAP = 4  # nnU-Net: an axis is pooled only while it stays >= 2 x this


@dataclass(frozen=True)
class Size:
    """Everything the budget depends on; one preset per machine class."""

    inplane: int  # voxels per in-plane axis of a phantom
    pixel: float  # in-plane spacing (mm)
    fov_z: float  # phantom extent along z (mm); each scan has round(fov_z / spacing) slices
    num_train: int
    num_test: int
    iterations: int
    seeds: int
    kn: tuple[int, ...]  # MNet widths
    filters: tuple[int, ...]  # DynUNet widths per level (the last is repeated when a net is deeper)
    gpu_memory_gb: float  # memory budget handed to the planner (sets the patch)


SIZES = {
    "smoke": Size(32, 1.5, 24.0, 2, 2, 1, 1, (4, 4, 4, 4, 4), (4, 8, 8, 8, 8), 1.0),
    "cpu": Size(32, 1.5, 24.0, 10, 6, 60, 1, (8, 12, 16, 20, 24), (8, 16, 32, 48, 64, 64), 1.0),
    "gpu": Size(128, 0.8, 80.0, 40, 10, 4000, 3, (32, 48, 64, 80, 96), (32, 64, 128, 256, 320, 320), 32.0),
}

log = logging.getLogger("benchmarks.study")


# --------------------------------------------------------------------------------------------------------------------
# data: one continuous phantom, scanned at several slice spacings


def phantom_params(seed: int, size: Size) -> dict:
    """Body, organ and lesion parameters of one phantom, independent of the slice spacing it is later scanned at."""
    rng = np.random.default_rng(seed)
    fov = np.array([size.inplane * size.pixel, size.inplane * size.pixel, size.fov_z])
    body, organ = demo_data._sample_body(rng, fov), demo_data._sample_organ(rng, fov)
    ref = (size.pixel, size.pixel, LESION_REF_Z)
    shape = (size.inplane, size.inplane, max(1, round(size.fov_z / LESION_REF_Z)))
    grid_c = demo_data._grid(shape, ref, np.zeros(1, np.float32))
    _, inner, bone, _ = demo_data._body_masks(body, grid_c, fov[2])
    organ_c = ((demo_data._organ_field(organ, grid_c) > 0) & inner & ~bone)[..., 0]
    if not organ_c.any():
        raise RuntimeError(f"phantom {seed}: empty organ")
    lesions = demo_data._place_lesions(rng, organ_c, grid_c, ref, fov)
    return {"seed": seed, "fov": fov, "body": body, "organ": organ, "lesions": lesions}


def scan(params: dict, size: Size, slice_spacing: float) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """The phantom as a thick-slice scan: each slice averages odd-many sub-slices (<= 0.5 mm apart) across its
    thickness (partial volume), plus in-plane blur and noise; labels are the geometry at the slice centre."""
    spacing = (size.pixel, size.pixel, float(slice_spacing))
    shape = (size.inplane, size.inplane, max(1, round(size.fov_z / slice_spacing)))
    n_sub = 2 * math.ceil(slice_spacing) + 1
    offsets = ((np.arange(n_sub) + 0.5) / n_sub - 0.5).astype(np.float32) * spacing[2]
    grid = demo_data._grid(shape, spacing, offsets)
    body_p, organ_p, fov = params["body"], params["organ"], params["fov"]
    body, inner, bone, cortex = demo_data._body_masks(body_p, grid, fov[2])
    organ = (demo_data._organ_field(organ_p, grid) > 0) & inner & ~bone
    hu = np.full(organ.shape, -1000.0, np.float32)
    hu[body], hu[inner] = body_p["fat_hu"], body_p["tissue_hu"]
    hu[bone], hu[cortex] = body_p["bone_hu"], body_p["cortex_hu"]
    hu[organ] = organ_p["hu"]
    lesion = np.zeros(organ.shape, bool)
    for p in params["lesions"]:
        mask = demo_data._lesion_mask(p, grid) & organ
        hu[mask] = organ_p["hu"] - p["hu_drop"]
        lesion |= mask
    image = ndimage.gaussian_filter(hu.mean(axis=-1), sigma=(0.6, 0.6, 0))
    noise = np.random.default_rng([params["seed"], int(slice_spacing * 100)])  # own stream: phantom stays the same
    image += noise.normal(0, 15.0, image.shape).astype(np.float32)
    label = np.where(lesion[..., n_sub // 2], 2, organ[..., n_sub // 2].astype(np.uint8)).astype(np.uint8)
    return np.clip(np.rint(image), -1024, 3071).astype(np.int16), label, spacing


def _save(array: np.ndarray, spacing: tuple[float, ...], path: Path) -> None:
    with atomic_path(path, suffix=".nii.gz") as tmp:
        demo_data._save(array, demo_data.case_affine(array.shape, spacing), Path(tmp))


def write_datasets(data_dir: Path, size: Size, spacings: tuple[float, ...]) -> dict[float, Path]:
    """One MSD-style folder per spacing, all from the same phantoms (training seeds first, then held-out ones);
    dataset.json is written last, and a folder whose dataset.json matches is re-used."""
    params_key = {"size": asdict(size), "spacings": list(spacings), "version": 1}
    n = size.num_train + size.num_test
    out = {}
    phantoms = None
    for s in spacings:
        folder = data_dir / f"spacing_{s:g}mm"
        datalist = folder / "dataset.json"
        if datalist.is_file() and json.loads(datalist.read_text()).get("generator") == params_key:
            out[s] = datalist
            continue
        phantoms = phantoms or [phantom_params(1000 + i, size) for i in range(n)]
        entries = {"training": [], "test": []}
        for i, params in enumerate(phantoms):
            image, label, spacing = scan(params, size, s)
            split = "training" if i < size.num_train else "test"
            entry = {"image": f"./images/case_{i:03d}.nii.gz", "label": f"./labels/case_{i:03d}.nii.gz"}
            _save(image, spacing, folder / entry["image"])
            _save(label, spacing, folder / entry["label"])
            entries[split].append(entry)
        meta = {
            "name": f"StudyPhantoms{s:g}mm",
            "modality": {"0": "CT"},
            "labels": demo_data.LABELS,
            "licence": demo_data.LICENCE,
            **entries,
            "generator": params_key,
        }
        with atomic_path(datalist) as tmp:
            Path(tmp).write_text(json.dumps(meta, indent=2) + "\n")
        out[s] = datalist
    return out


# --------------------------------------------------------------------------------------------------------------------
# models


def pool_and_kernels(spacing: list[float], patch: list[int]) -> tuple[list[list[int]], list[list[int]]]:
    """nnU-Net's topology rule: at each level pool (stride 2) the axes whose spacing is < 2x the finest and that stay
    >= 2 x MIN_FEATURE_MAP; use kernel 3 on the largest group of axes with spacings within 2x of each other, else 1.
    Returns (strides, kernels) for DynUNet, first level stride 1, bottleneck kernel 3 on every axis."""
    spacing, size = [float(s) for s in spacing], [int(p) for p in patch]
    strides, kernels = [[1] * len(spacing)], []
    while True:
        finest = min(spacing)
        group = max(
            (
                [b for b in range(len(spacing)) if max(spacing[a], spacing[b]) / min(spacing[a], spacing[b]) < 2]
                for a in range(len(spacing))
            ),
            key=len,
        )
        kernels.append([3 if a in group else 1 for a in range(len(spacing))])
        pool = [a for a in range(len(spacing)) if spacing[a] / finest < 2 and size[a] >= 2 * MIN_FEATURE_MAP]
        if not pool:
            break
        strides.append([2 if a in pool else 1 for a in range(len(spacing))])
        for a in pool:
            spacing[a], size[a] = spacing[a] * 2, math.ceil(size[a] / 2)
    kernels[-1] = [3] * len(spacing)
    return strides, kernels


def dynunet(
    spacing: list[float],
    patch: list[int],
    in_channels: int,
    out_channels: int,
    filters: tuple[int, ...],
    thick_axis: int | None,
) -> DynUNet:
    """nnU-Net-like DynUNet; with ``thick_axis`` set it is a 2D U-Net: kernels and strides act in-plane only."""
    if thick_axis is None:
        strides, kernels = pool_and_kernels(spacing, patch)
    else:
        plane = [a for a in range(3) if a != thick_axis]
        s2, k2 = pool_and_kernels([spacing[a] for a in plane], [patch[a] for a in plane])
        strides = [[s[plane.index(a)] if a in plane else 1 for a in range(3)] for s in s2]
        kernels = [[k[plane.index(a)] if a in plane else 1 for a in range(3)] for k in k2]
    supervision = len(strides) - 2
    return DynUNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=kernels,
        strides=strides,
        upsample_kernel_size=strides[1:],
        filters=[filters[min(i, len(filters) - 1)] for i in range(len(strides))],
        norm_name=("INSTANCE", {"affine": True}),
        act_name=("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
        deep_supervision=supervision >= 1,
        deep_supr_num=max(1, supervision),
    )


def build_model(name: str, plan: dict, size: Size) -> nn.Module:
    """MNet with the given FMU, or the 2D/3D DynUNet for the plan's spacing and patch."""
    in_ch, out_ch = plan["in_channels"], plan["out_channels"]
    if name.startswith("mnet_"):
        return MNet(in_ch, out_ch, kn=size.kn, fmu=name[5:], deep_supervision=True, thick_axis=plan["thick_axis"])
    thick = plan["thick_axis"] if name == "unet2d" else None
    return dynunet(plan["spacing"], plan["patch_size"], in_ch, out_ch, size.filters, thick)


def as_outputs(out: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
    """Deep-supervision outputs as a list, full resolution first (DynUNet stacks its heads along dim 1)."""
    if isinstance(out, (list, tuple)):
        return list(out)
    return list(torch.unbind(out, dim=1)) if out.dim() == 6 else [out]


# --------------------------------------------------------------------------------------------------------------------
# the recipe, read from configs/train.json


def recipe_parser(plan: dict, split: dict, iterations: int, device: torch.device) -> ConfigParser:
    """train.json with the study's plan, split, budget and device filled in; the parts used are parsed from it."""
    parser = ConfigParser()
    parser.read_config(str(TRAIN_CONFIG))
    parser["bundle_root"] = str(REPO_ROOT)
    parser["plan"] = {k: v for k, v in plan.items() if k != "notes"}
    parser["split"] = split
    parser["epochs"] = iterations  # the poly LR is stepped once per iteration here
    parser["num_workers"] = 0
    parser["device"] = str(device)
    return parser


def gradient_clip(parser: ConfigParser) -> float:
    """The recipe's gradient-norm clip (a train handler in train.json)."""
    for handler in parser.get("train#handlers"):
        if str(handler.get("_target_", "")).endswith("GradientClipHandler"):
            return float(handler["max_norm"])
    raise BundleInputError(f"{TRAIN_CONFIG}: no GradientClipHandler in train#handlers")


def train_and_evaluate(
    name: str, plan: dict, split: dict, size: Size, seed: int, device: torch.device, tag: str
) -> dict:
    """Train one model for the budget with the recipe, then evaluate it on the held-out cases."""
    set_determinism(seed=seed)
    parser = recipe_parser(plan, split, size.iterations, device)
    net = build_model(name, plan, size).to(device)
    parser["network"] = net
    inner = parser.get_parsed_content("loss#loss")
    if name.startswith("mnet_"):
        loss_fn = parser.get_parsed_content("loss")  # the recipe's weights for MNet's 7 outputs
    else:
        loss_fn = DeepSupervisionLoss(inner, weight_mode="exp")  # nnU-Net's halving weights
    optimizer = parser.get_parsed_content("optimizer")
    scheduler = parser.get_parsed_content("lr_scheduler")
    max_norm = gradient_clip(parser)
    loader = parser.get_parsed_content("train#dataloader")
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    start, it, losses = time.perf_counter(), 0, []
    net.train()
    while it < size.iterations:
        for batch in loader:
            image, label = batch["image"].to(device), batch["label"].to(device)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, enabled=amp):
                loss = loss_fn(as_outputs(net(image)), label)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            losses.append(float(loss))
            it += 1
            if it % max(1, size.iterations // 5) == 0 or it == size.iterations:
                rate = (time.perf_counter() - start) / it
                log.info(f"{tag}: iteration {it}/{size.iterations} loss {np.mean(losses[-10:]):.3f} ({rate:.2f} s/it)")
            if it >= size.iterations:
                break
    train_s = time.perf_counter() - start
    metrics = evaluate(net, parser, plan, device)
    final_loss = round(float(np.mean(losses[-10:])), 4)
    params = sum(p.numel() for p in net.parameters())
    return {
        "model": name,
        "seed": seed,
        "train_s": round(train_s, 1),
        "final_loss": final_loss,
        "params": params,
        **metrics,
    }


def evaluate(net: nn.Module, parser: ConfigParser, plan: dict, device: torch.device) -> dict:
    """Dice and HD95 (mm) per foreground class on the held-out cases (sliding window as in validation). Cases without
    a class in the ground truth are skipped for it; an empty prediction of a present class gets HD95 = the image
    diagonal, so that misses count instead of vanishing as NaN."""
    dataset = parser.get_parsed_content("validate#dataset")
    inferer = parser.get_parsed_content("validate#inferer")
    n = plan["out_channels"]
    dice_metric = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
    hd_metric = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")
    dice, hd95 = [], []
    net.eval()
    with torch.inference_mode(), torch.autocast(device.type, enabled=device.type == "cuda"):
        for item in dataset:
            image = item["image"][None].to(device)
            pred = inferer(image, net).float().argmax(1, keepdim=True).cpu()
            label = torch.as_tensor(item["label"])[None].long()
            onehot_p = nn.functional.one_hot(pred[:, 0], n).movedim(-1, 1)
            onehot_l = nn.functional.one_hot(label[:, 0], n).movedim(-1, 1)
            dice.append(dice_metric(onehot_p, onehot_l)[0].numpy())
            with np.errstate(all="ignore"):
                hd = hd_metric(onehot_p, onehot_l, spacing=plan["spacing"])[0].numpy().astype(float)
            diagonal = float(np.linalg.norm(np.array(label.shape[2:]) * np.array(plan["spacing"])))
            present = onehot_l[0, 1:].flatten(1).any(1).numpy()
            predicted = onehot_p[0, 1:].flatten(1).any(1).numpy()
            hd[present & ~predicted] = diagonal
            hd[~present] = np.nan
            hd95.append(hd)
    names = [plan["labels"][str(c)] for c in range(1, n)]
    dice_c, hd_c = np.nanmean(np.array(dice), axis=0), np.nanmean(np.array(hd95), axis=0)
    return {
        "dice": {k: _num(v) for k, v in zip(names, dice_c)},
        "hd95": {k: _num(v) for k, v in zip(names, hd_c)},
        "mean_dice": _num(np.nanmean(dice_c)),
        "cases": len(dice),
    }


def _num(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 4)


# --------------------------------------------------------------------------------------------------------------------
# the study


def run_dataset(
    datalist: Path,
    dataset_dir: Path,
    models: tuple[str, ...],
    size: Size,
    seeds: int,
    device: torch.device,
    plan_path: Path,
    label: str,
    counter: list[int],
    total: int,
) -> tuple[dict, list]:
    """Plan one data set, then train and evaluate every model for every seed."""
    plan = plan_dataset(
        str(dataset_dir),
        str(datalist),
        output=str(plan_path),
        gpu_memory_gb=size.gpu_memory_gb,
        kn=list(size.kn),
        workers=0,
    )
    split = held_out_split(Path(datalist), Path(dataset_dir))
    log.info(
        f"{label}: spacing {plan['spacing']} patch {plan['patch_size']} batch {plan['batch_size']}, "
        f"{len(split['train'])} training / {len(split['validation'])} held-out cases"
    )
    runs = []
    for name in models:
        for seed in range(seeds):
            counter[0] += 1
            tag = f"[{counter[0]}/{total}] {name} @ {label} seed {seed}"
            result = train_and_evaluate(name, plan, split, size, seed, device, tag)
            log.info(
                f"{tag}: mean Dice {result['mean_dice']} Dice {result['dice']} HD95 {result['hd95']} "
                f"({result['train_s']} s training)"
            )
            runs.append({"data": label, **result})
    return plan, runs


def held_out_split(datalist: Path, dataset_dir: Path) -> dict[str, list]:
    """Train on 'training' and test on 'test' when every test case has a label (the synthetic sets); otherwise hold
    out fold 0 of 'training' (scripts.datalist's deterministic 5-fold split), as cross-validation does."""
    from monai.data import load_decathlon_datalist
    from scripts.datalist import load_split

    content = json.loads(datalist.read_text())
    if content.get("test") and all(isinstance(c, dict) and "label" in c for c in content["test"]):
        return {
            key: load_decathlon_datalist(str(datalist), True, data_list_key=part, base_dir=str(dataset_dir))
            for key, part in (("train", "training"), ("validation", "test"))
        }
    split = load_split(str(datalist), str(dataset_dir))
    return {"train": split["train"], "validation": split["validation"]}


def summarize(runs: list[dict], models: tuple[str, ...], columns: list[str]) -> dict:
    """model -> column -> mean and std over seeds of the mean Dice and of each class's Dice and HD95."""
    table = {}
    for model in models:
        table[model] = {}
        for col in columns:
            cell = [r for r in runs if r["model"] == model and r["data"] == col]
            entry = {"seeds": len(cell)}
            for key in ("mean_dice",):
                values = [r[key] for r in cell if r[key] is not None]
                entry[key] = _stats(values)
            for metric in ("dice", "hd95"):
                classes = cell[0][metric] if cell else {}
                entry[metric] = {c: _stats([r[metric][c] for r in cell if r[metric][c] is not None]) for c in classes}
            table[model][col] = entry
    return table


def _stats(values: list[float]) -> dict:
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": round(float(np.mean(values)), 4), "std": round(float(np.std(values)), 4), "n": len(values)}


def _cell(s: dict, scale: float = 100.0, digits: int = 1) -> str:
    if s["mean"] is None:
        return "n/a"
    mean = f"{s['mean'] * scale:.{digits}f}"
    return f"{mean} ± {s['std'] * scale:.{digits}f}" if s["n"] > 1 else mean


def markdown(result: dict) -> str:
    """Markdown tables: mean Dice, per-class Dice and HD95 (model x data set), and the FMU comparison."""
    table, cols, models = result["table"], result["columns"], result["models"]
    head = "| model | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols) + "\n"
    lines = [f"Mean foreground Dice (%), mean ± std over {result['seeds']} seed(s):\n", head]
    lines += [f"| {m} | " + " | ".join(_cell(table[m][c]["mean_dice"]) for c in cols) + " |\n" for m in models]
    classes = list(table[models[0]][cols[0]]["dice"])
    for metric, scale, unit in (("dice", 100.0, "Dice (%)"), ("hd95", 1.0, "HD95 (mm)")):
        for cls in classes:
            lines += [f"\n{unit}, {cls}:\n\n", head]
            lines += [
                f"| {m} | " + " | ".join(_cell(table[m][c][metric][cls], scale) for c in cols) + " |\n" for m in models
            ]
    fmus = [m for m in models if m.startswith("mnet_")]
    if len(fmus) > 1:
        lines += [
            "\nFMU comparison (mean Dice %, average over the data sets; Table 2's analogue):\n\n",
            "| FMU | " + " | ".join(cols) + " | mean |\n|---|" + "---|" * (len(cols) + 1) + "\n",
        ]
        for m in fmus:
            means = [table[m][c]["mean_dice"]["mean"] for c in cols]
            avg = np.mean([v for v in means if v is not None]) * 100 if any(v is not None for v in means) else None
            lines.append(
                f"| {m[5:]} | "
                + " | ".join(_cell(table[m][c]["mean_dice"]) for c in cols)
                + f" | {'n/a' if avg is None else f'{avg:.1f}'} |\n"
            )
    lines.append(
        "\nTraining time per run (s, mean): "
        + ", ".join(f"{m} {np.mean([r['train_s'] for r in result['runs'] if r['model'] == m]):.0f}" for m in models)
        + "\n"
    )
    return "".join(lines)


def plot(result: dict, path: Path) -> None:
    """Dice against slice spacing per model, mean over the foreground classes and per class (error bars: std over
    seeds); the analogue of the paper's Fig. 4."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols, table = result["columns"], result["table"]
    classes = list(table[result["models"][0]][cols[0]]["dice"])
    panels = [("mean foreground", lambda cell: cell["mean_dice"])]
    panels += [(c, lambda cell, c=c: cell["dice"][c]) for c in classes]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    x = result.get("spacings") or list(range(len(cols)))
    for ax, (title, pick) in zip(axes[0], panels):
        for m in result["models"]:
            cells = [pick(table[m][c]) for c in cols]
            y = [np.nan if s["mean"] is None else 100 * s["mean"] for s in cells]
            err = [0 if s["std"] is None else 100 * s["std"] for s in cells]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=m)
        ax.set_xticks(x, [f"{v:g}" for v in x] if result.get("spacings") else cols)
        ax.set_xlabel("slice spacing (mm), in-plane fixed" if result.get("spacings") else "data set")
        ax.set_ylabel("Dice (%)")
        ax.set_title(f"{title} Dice")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"size {result['size']}: {result['iterations']} iterations, {result['seeds']} seed(s)")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def setup_logging(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    log.setLevel(logging.INFO)
    log.handlers.clear()
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    for handler in (logging.StreamHandler(sys.stdout), logging.FileHandler(path, mode="w")):
        handler.setFormatter(fmt)
        log.addHandler(handler)
    log.propagate = False


def run_study(
    out_dir: str | Path = "study",
    size: str = "auto",
    device: str = "auto",
    seeds: int | None = None,
    iterations: int | None = None,
    spacings: tuple[float, ...] = SPACINGS,
    models: tuple[str, ...] | None = None,
    dataset_dir: str | None = None,
    datalist: str = "dataset.json",
    threads: int | None = None,
) -> dict:
    """Run the study (synthetic spacings, or the user's data set) and write results.json/.md and the plot."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    size_name = ("gpu" if dev.type == "cuda" else "cpu") if size == "auto" else size
    if size_name not in SIZES:
        raise BundleInputError(f"--size must be one of {sorted(SIZES)}, got {size_name!r}")
    preset = SIZES[size_name]
    if iterations is not None:
        preset = Size(**{**asdict(preset), "iterations": int(iterations)})
    n_seeds = int(seeds if seeds is not None else preset.seeds)
    models = tuple(models or (OWN_DATA_MODELS if dataset_dir else MODELS))
    unknown = [m for m in models if m not in MODELS]
    if unknown or n_seeds < 1 or preset.iterations < 1:
        raise BundleInputError(f"arguments: unknown model(s) {unknown} (choose from {MODELS}), or seeds/iterations < 1")
    if threads:
        torch.set_num_threads(int(threads))
    out = Path(out_dir)
    setup_logging(out / "study.log")
    started = time.perf_counter()
    log.info(f"study: size {size_name} {asdict(preset)}, device {dev}, {n_seeds} seed(s), models {list(models)}")
    if dataset_dir:
        root = Path(dataset_dir)
        lists = {"your data": (Path(datalist) if Path(datalist).is_absolute() else root / datalist, root)}
        numeric = None
    else:
        paths = write_datasets(out / "data", preset, tuple(spacings))
        lists = {f"{s:g} mm": (p, p.parent) for s, p in paths.items()}
        numeric = [float(s) for s in spacings]
    for path, _ in lists.values():
        if not path.is_file():
            raise BundleInputError(f"{path}: datalist file not found")
    total, counter, runs, plans = len(lists) * len(models) * n_seeds, [0], [], {}
    for label, (path, root) in lists.items():
        plan_path = out / "plans" / f"plan_{label.replace(' ', '_')}.json"
        plans[label], cell = run_dataset(path, root, models, preset, n_seeds, dev, plan_path, label, counter, total)
        runs += cell
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks.study", *sys.argv[1:]]) if sys.argv[0].endswith("py") else None,
        "machine": {
            "platform": platform.platform(),
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": str(dev),
            "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else None,
        },
        "size": size_name,
        "budget": asdict(preset),
        "iterations": preset.iterations,
        "seeds": n_seeds,
        "models": list(models),
        "columns": list(lists),
        "spacings": numeric,
        "plans": {
            k: {key: v[key] for key in ("spacing", "patch_size", "batch_size", "thick_axis", "anisotropic")}
            for k, v in plans.items()
        },
        "runs": runs,
        "table": summarize(runs, models, list(lists)),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    with atomic_path(out / "results.json") as tmp:
        Path(tmp).write_text(json.dumps(result, indent=2) + "\n")
    with atomic_path(out / "results.md") as tmp:
        Path(tmp).write_text(markdown(result))
    plot(result, out / "dice_vs_spacing.png")
    log.info(
        f"study: done in {result['wall_s']:.0f} s; wrote {out / 'results.json'}, {out / 'results.md'}, "
        f"{out / 'dice_vs_spacing.png'}\n{markdown(result)}"
    )
    return result


def render(results_json: str | Path) -> None:
    """Rewrite results.md and dice_vs_spacing.png next to an existing results.json (no training)."""
    path = Path(results_json)
    if not path.is_file():
        raise BundleInputError(f"{path}: results file not found")
    result = json.loads(path.read_text())
    with atomic_path(path.parent / "results.md") as tmp:
        Path(tmp).write_text(markdown(result))
    plot(result, path.parent / "dice_vs_spacing.png")


def main(argv: list[str] | None = None) -> None:
    install_excepthook()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="auto", help="smoke | cpu | gpu (default: gpu on cuda, else cpu)")
    p.add_argument("--device", default="auto", help="cpu | cuda | auto")
    p.add_argument("--seeds", type=int, default=None, help="seeds per cell (default: the size's)")
    p.add_argument("--iterations", type=int, default=None, help="training iterations per run (default: the size's)")
    p.add_argument("--spacings", type=float, nargs="+", default=list(SPACINGS), help="slice spacings (mm)")
    p.add_argument("--models", nargs="+", default=None, help=f"subset of {MODELS}")
    p.add_argument("--out_dir", default="study")
    p.add_argument("--dataset_dir", default=None, help="your data set (MSD layout); compares MNet with the U-Nets")
    p.add_argument("--datalist", default="dataset.json", help="relative to --dataset_dir, or absolute")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--render", default=None, help="only re-render results.md and the plot from this results.json")
    a = p.parse_args(argv)
    if a.render:
        return render(a.render)
    run_study(
        a.out_dir,
        a.size,
        a.device,
        a.seeds,
        a.iterations,
        tuple(a.spacings),
        a.models,
        a.dataset_dir,
        a.datalist,
        a.threads,
    )


if __name__ == "__main__":
    main()
