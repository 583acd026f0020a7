"""The MONAI model-zoo CI checks, run on a temporary copy of the bundle (see shared reference model-zoo.md, section 3).

`ci/verify_bundle.py` (directory, version, metadata, `verify_net_in_out`, `ckpt_export`), `onnx_export`, and the zoo's
unit-test pattern (`ConfigWorkflow(...)`: `initialize`, `check_properties() == []`, `run`, `finalize`) for train,
train+evaluate and infer. Training and inference use tiny widths and patches; the module needs about 2 CPU-minutes,
most of it the ONNX export, the default-width shape check and one training epoch.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, verify_metadata, verify_net_in_out
from scripts.demo.data import write_dataset

BUNDLE = Path(__file__).resolve().parents[1]
# verbatim copy of MONAI-extra-test-data release 0.8.1's meta_schema_20240725.json, so the check runs offline
SCHEMA = BUNDLE / "tests" / "data" / "meta_schema_20240725.json"
TINY = {"kn": [4, 4, 6, 6, 8], "patch_size": [64, 64, 8]}
MAX_TRACKED_BYTES = 25 * 1024 * 1024


def _copy_bundle(dst: Path) -> Path:
    """The files a zoo checkout of the bundle holds (no weights: models/*.pt are git-ignored)."""
    dst.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("configs", "scripts", "docs"):
        shutil.copytree(BUNDLE / name, dst / name, ignore=ignore)
    for name in ("LICENSE", "README.md", "requirements.txt", "large_files.yml"):
        if (BUNDLE / name).is_file():
            shutil.copy2(BUNDLE / name, dst / name)
    (dst / "models").mkdir()
    return dst


def _files(bundle: Path) -> dict:
    configs = bundle / "configs"
    return {
        "meta_file": str(configs / "metadata.json"),
        "logging_file": str(configs / "logging.conf"),
        "train": str(configs / "train.json"),
        "evaluate": str(configs / "evaluate.json"),
        "inference": str(configs / "inference.json"),
    }


def _network(bundle: Path, **override) -> torch.nn.Module:
    """`network_def` exactly as the inference config builds it (default width unless `kn` is overridden)."""
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.update({"bundle_root": str(bundle), **override})
    return parser.get_parsed_content("network_def")


def _tiny_network(bundle: Path) -> torch.nn.Module:
    return _network(bundle, kn=TINY["kn"])


@pytest.fixture(autouse=True)
def _restore_root_logger():
    """ConfigWorkflow applies configs/logging.conf (a stdout handler on the root logger); undo it after each test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """5 training cases (split 4/1 by the datalist's explicit validation list) and 1 test case, ~64x64x9 voxels."""
    out = tmp_path_factory.mktemp("zoo_data")
    datalist = write_dataset(out, num_cases=6, num_test=1, inplane_range=(64, 72), slices_range=(8, 10))
    content = json.loads(datalist.read_text())
    content["validation"] = content["training"][-1:]
    content["training"] = content["training"][:-1]
    datalist.write_text(json.dumps(content, indent=2))
    return out


@pytest.fixture(scope="module")
def export_bundle(tmp_path_factory) -> Path:
    """Bundle copy with models/model.pt = the state dict of a freshly instantiated default-width `network_def` (what
    the zoo CI exports), and models/model_tiny.pt = the same at the tiny test width (for the slower ONNX export)."""
    bundle = _copy_bundle(tmp_path_factory.mktemp("zoo_export") / "mnet_anisotropic_segmentation")
    torch.manual_seed(0)
    torch.save(_network(bundle).state_dict(), bundle / "models" / "model.pt")
    torch.save(_tiny_network(bundle).state_dict(), bundle / "models" / "model_tiny.pt")
    return bundle


@pytest.fixture(scope="module")
def workflow_bundle(tmp_path_factory) -> Path:
    return _copy_bundle(tmp_path_factory.mktemp("zoo_workflow") / "mnet_anisotropic_segmentation")


def _train_overrides(bundle: Path, dataset: Path) -> dict:
    """The zoo unit tests' overrides (bundle_root, dataset_dir, 1 epoch, no caching, 1 worker), plus tiny widths."""
    return {
        "bundle_root": str(bundle),
        "dataset_dir": str(dataset),
        "epochs": 1,
        "iterations_per_epoch": 2,
        "batch_size": 1,
        "cache_rate": 0,
        "num_workers": 0,
        **TINY,
    }


def _check_workflow(workflow: ConfigWorkflow) -> None:
    """model-zoo ci/unit_tests/utils.py::check_workflow with check_properties=True."""
    workflow.initialize()
    assert workflow.check_properties() == []
    workflow.run()
    workflow.finalize()


# ---------------------------------------------------------------------------------------------------------------
# verify_bundle.py: directory, version and metadata checks


def test_bundle_directory_has_the_files_the_zoo_requires():
    assert (BUNDLE / "LICENSE").is_file() and (BUNDLE / "configs" / "metadata.json").is_file()
    assert (BUNDLE / "configs" / "inference.json").is_file()
    # models/model.pt is a "preferred" file: either present, or fetched through large_files.yml
    import yaml

    large = yaml.safe_load((BUNDLE / "large_files.yml").read_text())["large_files"]
    assert (BUNDLE / "models" / "model.pt").is_file() or "models/model.pt" in [f["path"] for f in large]


def test_verify_metadata_against_the_schema_it_names(tmp_path):
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    assert meta["schema"].endswith("/" + SCHEMA.name)
    schema_copy = tmp_path / "schema.json"  # offline: verify_metadata skips the download when the file exists
    shutil.copy(SCHEMA, schema_copy)
    verify_metadata(meta_file=str(BUNDLE / "configs" / "metadata.json"), filepath=str(schema_copy))


def test_verify_metadata_rejects_a_broken_file(tmp_path):
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    meta["supported_apps"] = ["monai-label"]  # the 20240725 schema wants an object here
    bad = tmp_path / "metadata.json"
    bad.write_text(json.dumps(meta))
    shutil.copy(SCHEMA, tmp_path / "schema.json")
    with pytest.raises(Exception, match="not of type 'object'"):
        verify_metadata(meta_file=str(bad), filepath=str(tmp_path / "schema.json"))


def test_version_has_a_changelog_entry():
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    assert re.fullmatch(r"\d+\.\d+\.\d+", meta["version"])
    assert meta["version"] in meta["changelog"]
    assert meta["changelog"][meta["version"]].strip()


def _requirement_pins() -> dict[str, str]:
    pins = {}
    for line in (BUNDLE / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"requirements.txt: {line!r} is not an exact pin"
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def test_metadata_versions_equal_requirements_pins():
    """The zoo CI turns these metadata versions into exact `pip install` pins, so they must match what we test."""
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    pins = _requirement_pins()
    assert meta["monai_version"] == pins.pop("monai")
    assert meta["pytorch_version"] == pins.pop("torch")
    assert meta["numpy_version"] == pins.pop("numpy")
    packages = {k.lower().replace("_", "-"): v for k, v in meta["required_packages_version"].items()}
    assert packages == pins


def test_every_tracked_file_is_under_25_mb():
    if not (BUNDLE / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=BUNDLE, capture_output=True, check=True).stdout
    paths = [BUNDLE / p for p in listed.decode().split("\0") if p]
    assert paths
    sizes = {str(p.relative_to(BUNDLE)): p.stat().st_size for p in paths if p.is_file()}
    assert sizes
    assert not {name: size for name, size in sizes.items() if size > MAX_TRACKED_BYTES}


# ---------------------------------------------------------------------------------------------------------------
# verify_bundle.py full mode: verify_net_in_out and ckpt_export; and onnx_export


def test_verify_net_in_out_default_width(export_bundle):
    """Exactly the zoo call: the real network at the metadata's spatial_shape (the planned patch), no weights."""
    meta = json.loads((export_bundle / "configs" / "metadata.json").read_text())
    plan = json.loads((export_bundle / "configs" / "plan.json").read_text())
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == plan["patch_size"]
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == plan["out_channels"]
    files = _files(export_bundle)
    verify_net_in_out(
        net_id="network_def",
        meta_file=files["meta_file"],
        config_file=files["inference"],
        bundle_root=str(export_bundle),
    )


def test_ckpt_export_torchscript_round_trip(export_bundle):
    """Exactly the zoo call (default width, models/model.pt a plain state dict), then `torch.jit.load` like the CI."""
    files = _files(export_bundle)
    ts_path = export_bundle / "models" / "verify_model.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(ts_path),
        ckpt_file=str(export_bundle / "models" / "model.pt"),
        meta_file=files["meta_file"],
        config_file=files["inference"],
        bundle_root=str(export_bundle),
    )
    extra = {"metadata.json": "", "inference.json": ""}
    loaded = torch.jit.load(str(ts_path), _extra_files=extra)
    assert json.loads(extra["metadata.json"])["version"] == json.loads(Path(files["meta_file"]).read_text())["version"]
    assert "network_def" in json.loads(extra["inference.json"])
    # TorchScript runs PyTorch's own kernels: the eager-only CPU inference kernels step aside when scripted, as they
    # do in eager mode with autograd on, so the export equals the network it was made from (same preset and layout)
    net = _network(export_bundle).eval()
    net.load_state_dict(torch.load(export_bundle / "models" / "model.pt", weights_only=True))
    x = torch.randn(1, 1, 64, 64, 8)
    with torch.enable_grad():
        expected = net(x).detach()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected, rtol=1e-5, atol=1e-5)


def test_onnx_export_cli_matches_pytorch(export_bundle):
    """`python -m monai.bundle onnx_export` (MONAI 1.6.1 + torch >= 2.9 hands the nn.Module to the dynamo exporter).

    Sliding-window inference always feeds the network `roi_size` patches, so the export is at the patch size with a
    dynamic batch axis (`sw_batch_size`). The converter kwargs go through `--converter_kwargs` to
    `monai.networks.convert_to_onnx`, whose `dynamic_axes` torch converts to `dynamic_shapes`."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    onnx_path = export_bundle / "models" / "model.onnx"
    patch = TINY["patch_size"]
    converter_kwargs = {
        "input_names": ["image"],
        "output_names": ["pred"],
        "dynamic_axes": {"image": {0: "batch"}, "pred": {0: "batch"}},
    }
    cmd = [
        sys.executable, "-m", "monai.bundle", "onnx_export",
        "--net_id", "network_def",
        "--filepath", "models/model.onnx",
        "--ckpt_file", "models/model_tiny.pt",
        "--meta_file", "configs/metadata.json",
        "--config_file", "configs/inference.json",
        "--bundle_root", ".",
        "--input_shape", json.dumps([2, 1, *patch]),  # torch.export specialises a size-1 batch axis to static
        "--converter_kwargs", repr(converter_kwargs),  # a Python literal: JSON would turn the axis keys into strings
        "--kn", json.dumps(TINY["kn"]),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=export_bundle, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert onnx_path.is_file()

    net = _tiny_network(export_bundle).eval()
    net.load_state_dict(torch.load(export_bundle / "models" / "model_tiny.pt", weights_only=True))
    net64 = _tiny_network(export_bundle).double().eval()
    net64.load_state_dict(net.state_dict())
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    for batch in (1, 2):
        x = torch.randn(batch, 1, *patch)
        got = session.run(None, {"image": x.numpy()})[0]
        with torch.no_grad():
            expected = net(x).numpy()
            # a random tiny net amplifies float32 rounding (instance norm over a few voxels): allow 1e-4 or twice
            # PyTorch's own float32 error against float64, whichever is larger
            float32_noise = np.abs(expected - net64(x.double()).numpy()).max()
        assert got.shape == expected.shape == (batch, 3, *patch)
        assert np.abs(got - expected).max() <= max(1e-4, 2 * float32_noise)


# ---------------------------------------------------------------------------------------------------------------
# the zoo's unit-test pattern: ConfigWorkflow train, train+evaluate, infer


@pytest.fixture(scope="module")
def trained(workflow_bundle, dataset) -> Path:
    """One training epoch through ConfigWorkflow, as in model-zoo ci/unit_tests/test_spleen_ct_segmentation.py."""
    files = _files(workflow_bundle)
    workflow = ConfigWorkflow(
        workflow_type="train",
        config_file=files["train"],
        logging_file=files["logging_file"],
        meta_file=files["meta_file"],
        **_train_overrides(workflow_bundle, dataset),
    )
    _check_workflow(workflow)
    return workflow_bundle


def test_train_workflow_writes_a_plain_state_dict(trained):
    ckpt = trained / "models" / "model.pt"
    assert ckpt.is_file()
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    net = _tiny_network(trained)
    net.load_state_dict(state)  # strict: exactly network_def's keys
    assert (trained / "models" / "checkpoint_last.pt").is_file()


def test_evaluate_workflow(trained, dataset):
    files = _files(trained)
    workflow = ConfigWorkflow(
        workflow_type="train",
        config_file=[files["train"], files["evaluate"]],
        logging_file=files["logging_file"],
        meta_file=files["meta_file"],
        **_train_overrides(trained, dataset),
    )
    _check_workflow(workflow)
    metrics = (trained / "eval" / "evaluation" / "metrics.csv").read_text()
    assert "val_mean_dice" in metrics and "val_hd95_mm" in metrics


def test_infer_workflow_with_trained_weights_and_string_device(trained, dataset):
    """MONAI Label passes `device` as a plain string; the output must be on the input's grid."""
    files = _files(trained)
    out_dir = trained / "eval" / "zoo_predictions"
    workflow = ConfigWorkflow(
        workflow_type="infer",
        config_file=files["inference"],
        logging_file=files["logging_file"],
        meta_file=files["meta_file"],
        bundle_root=str(trained),
        dataset_dir=str(dataset),
        output_dir=str(out_dir),
        device="cpu",
        num_workers=0,
        load_pretrain=True,
        **TINY,
    )
    _check_workflow(workflow)
    test_image = dataset / json.loads((dataset / "dataset.json").read_text())["test"][0]["image"]
    image = nib.load(test_image)
    pred = nib.load(out_dir / test_image.name.replace(".nii.gz", "_seg.nii.gz"))
    assert pred.shape == image.shape
    np.testing.assert_allclose(pred.affine, image.affine, atol=1e-4)
    assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}


def test_infer_workflow_without_weights(workflow_bundle, tmp_path):
    """The zoo's fake-data inference test runs before any model.pt exists: `load_pretrain false` must be enough."""
    image = np.full((64, 64, 8), -50, dtype=np.int16)
    image[16:48, 16:48, 2:6] = 60
    affine = np.diag([0.8, 0.8, 5.0, 1.0])
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "scan.nii.gz")
    files = _files(workflow_bundle)
    workflow = ConfigWorkflow(
        workflow_type="infer",
        config_file=files["inference"],
        meta_file=files["meta_file"],
        bundle_root=str(workflow_bundle),
        dataset_dir=str(tmp_path),
        output_dir=str(tmp_path / "out"),
        ckpt_path=str(tmp_path / "missing.pt"),
        load_pretrain=False,
        num_workers=0,
        **TINY,
    )
    _check_workflow(workflow)
    pred = nib.load(tmp_path / "out" / "scan_seg.nii.gz")
    assert pred.shape == image.shape


def test_monailabel_style_overrides_never_touch_the_datalist(workflow_bundle, dataset):
    """MONAI Label sets `train#dataset#data` and `validate#dataset#data` to lists and knows no `dataset_dir`: the
    split (the only reader of the datalist file) must then never be evaluated."""
    content = json.loads((dataset / "dataset.json").read_text())
    cases = [{"image": str(dataset / c["image"]), "label": str(dataset / c["label"])} for c in content["training"]]
    files = _files(workflow_bundle)
    parser = ConfigParser()
    parser.read_meta(files["meta_file"])
    parser.read_config(files["train"])
    refs = [k for k, v in _flatten(parser.get()) if isinstance(v, str) and "@split" in v]
    assert sorted(refs) == ["train#dataset#data", "validate#dataset#data"]
    workflow = ConfigWorkflow(
        workflow_type="train",
        config_file=files["train"],
        meta_file=files["meta_file"],
        bundle_root=str(workflow_bundle),
        dataset_dir=str(dataset / "does_not_exist"),
        device=torch.device("cpu"),
        num_workers=0,
        cache_rate=0,
        **{"train#dataset#data": cases[:2], "validate#dataset#data": cases[2:3], "train#trainer#max_epochs": 1},
        **TINY,
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    trainer = workflow.parser.get_parsed_content("train#trainer")
    assert trainer.state.max_epochs == 1
    assert len(workflow.parser.get_parsed_content("validate#dataset")) == 1
    assert "split" not in workflow.parser.ref_resolver.resolved_content


def _flatten(node, prefix=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _flatten(v, f"{prefix}#{k}" if prefix else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _flatten(v, f"{prefix}#{i}")
    else:
        yield prefix, node


def test_inference_preprocessing_survives_monailabel_image_path(tmp_path):
    """MONAI Label puts the string `image_path` into the data. MONAI 1.6 `Spacingd` treats every `image_*` key as a
    meta dict and fails on it; the preprocessing stashes it around `Spacingd` and puts it back unchanged."""
    from monai.transforms import EnsureChannelFirstd, LoadImaged, Spacingd

    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((40, 36, 6), np.int16) + 50, np.diag([0.7, 0.7, 4.0, 1.0])), path)
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser.update({"bundle_root": str(BUNDLE), **TINY})
    preprocessing = parser.get_parsed_content("preprocessing")
    out = preprocessing({"image": str(path), "image_path": str(path)})
    assert out["image_path"] == str(path)
    assert "mnet_stashed_image_path" not in out
    assert out["image"].shape[1:] == (35, 32, 5)  # resampled to the plan's 0.8 x 0.8 x 5 mm
    plain = {"image": str(path), "image_path": str(path)}
    plain = EnsureChannelFirstd("image")(LoadImaged("image")(plain))
    with pytest.raises(Exception, match="'str' object has no attribute 'update'"):  # the bug the workaround avoids
        Spacingd("image", pixdim=(0.8, 0.8, 5.0))(plain)
