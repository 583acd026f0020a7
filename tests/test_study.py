"""benchmarks.study: the phantoms, the nnU-Net topology rule, the end-to-end smoke run and (slow) learning."""

from __future__ import annotations

import json

import numpy as np
import pytest
from benchmarks import study
from scripts.errors import BundleInputError


def test_same_phantom_at_every_spacing():
    """Only the sampling changes: slice count follows the spacing, organ volume in mm^3 stays (within sampling)."""
    size = study.SIZES["cpu"]
    params = study.phantom_params(1000, size)
    volumes = {}
    for s in (1.0, 2.5, 5.0, 8.0):
        image, label, spacing = study.scan(params, size, s)
        assert image.shape == label.shape == (size.inplane, size.inplane, round(size.fov_z / s))
        assert spacing == (size.pixel, size.pixel, s)
        assert set(np.unique(label)) <= {0, 1, 2} and (label == 1).any()
        volumes[s] = float((label > 0).sum() * np.prod(spacing))
    ref = volumes[1.0]
    assert all(abs(v - ref) / ref < 0.25 for v in volumes.values()), volumes
    # a different phantom is different
    other = study.scan(study.phantom_params(1001, size), size, 5.0)[1]
    assert not np.array_equal(other, study.scan(params, size, 5.0)[1])


def test_topology_matches_nnunet_for_thick_slices():
    """5 x 0.8 x 0.8 mm, 128x128x16 patch: the topology benchmarks/network.py uses as nnU-Net's (x, y, z order)."""
    strides, kernels = study.pool_and_kernels([0.8, 0.8, 5.0], [128, 128, 16])
    assert strides == [[1, 1, 1], [2, 2, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2], [2, 2, 1]]
    assert kernels == [[3, 3, 1], [3, 3, 1], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]
    # isotropic data: 3D kernels and pooling on every axis from the start
    strides, kernels = study.pool_and_kernels([1.0, 1.0, 1.0], [32, 32, 32])
    assert strides == [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]] and all(k == [3, 3, 3] for k in kernels)


def test_2d_unet_convolves_and_pools_in_plane_only():
    """The 2D U-Net has no z kernel or stride (its only cross-slice path is the instance-norm statistics); the 3D
    U-Net of the same 1 mm plan convolves and pools along z."""
    plan = {
        "in_channels": 1,
        "out_channels": 3,
        "spacing": [1.5, 1.5, 1.0],
        "patch_size": [32, 32, 16],
        "thick_axis": 2,
    }
    net2d = study.build_model("unet2d", plan, study.SIZES["smoke"])
    assert all(k[2] == 1 for k in net2d.kernel_size) and all(s[2] == 1 for s in net2d.strides)
    net3d = study.build_model("unet3d", plan, study.SIZES["smoke"])
    assert any(k[2] == 3 for k in net3d.kernel_size) and any(s[2] == 2 for s in net3d.strides)


def test_smoke_study_fills_every_cell(tmp_path):
    """End to end at the smallest size: every model x spacing cell has a number, and all outputs are written."""
    spacings = (2.5, 8.0)
    result = study.run_study(tmp_path, size="smoke", device="cpu", spacings=spacings, threads=1)
    assert result["columns"] == ["2.5 mm", "8 mm"] and result["models"] == list(study.MODELS)
    for model in study.MODELS:
        for col in result["columns"]:
            cell = result["table"][model][col]
            assert cell["seeds"] == 1 and cell["mean_dice"]["mean"] is not None
            assert 0.0 <= cell["mean_dice"]["mean"] <= 1.0
            assert cell["dice"]["organ"]["mean"] is not None and cell["hd95"]["organ"]["mean"] is not None
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["table"] == result["table"] and len(on_disk["runs"]) == len(study.MODELS) * len(spacings)
    md = (tmp_path / "results.md").read_text()
    assert "n/a" not in md.split("Dice (%), lesion")[0] and "FMU comparison" in md
    png = (tmp_path / "dice_vs_spacing.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    log = (tmp_path / "study.log").read_text()
    assert "[10/10] unet3d @ 8 mm seed 0" in log and "study: done" in log
    assert not list(tmp_path.rglob(".tmp_*"))  # every write went temp-then-rename
    (tmp_path / "results.md").unlink()
    study.main(["--render", str(tmp_path / "results.json")])  # re-rendering without training gives the same table
    assert (tmp_path / "results.md").read_text() == md


def test_missing_datalist_is_one_clear_error(tmp_path):
    with pytest.raises(BundleInputError, match="dataset.json: datalist file not found"):
        study.run_study(tmp_path / "out", size="smoke", device="cpu", dataset_dir=str(tmp_path))
    assert not (tmp_path / "out" / "results.json").exists()


def test_unknown_size_is_refused(tmp_path):
    with pytest.raises(BundleInputError, match="--size"):
        study.run_study(tmp_path, size="huge", device="cpu")


@pytest.mark.slow
def test_mnet_learns_on_5mm(tmp_path):
    """MNet finds the organ on the 5 mm phantoms (chance: Dice ~ organ fraction) with 300 iterations of the CPU
    size: the study's own 60 swing between 18 and 76 % organ Dice from run to run (docs/study.md), and this test,
    written with 60, had never passed (0.35, 0.13, 0.26 on the commits since it was added)."""
    result = study.run_study(
        tmp_path, size="cpu", device="cpu", spacings=(5.0,), models=("mnet_sub",), threads=1, iterations=300
    )
    organ = result["table"]["mnet_sub"]["5 mm"]["dice"]["organ"]["mean"]
    assert organ > 0.5, organ
