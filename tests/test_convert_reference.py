"""The converter from the authors' checkpoints: renaming, kernel transposition, strict loading, one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from scripts.convert_reference import convert, from_reference, to_reference
from scripts.errors import BundleInputError
from scripts.networks.mnet import MNet
from tests.conftest import BUNDLE_ROOT

TINY = (4, 4, 6, 6, 8)
HEADS = ["final", "up23", "up13", "up32", "up12", "up41", "up11"]


def authors_state(net: MNet) -> dict[str, torch.Tensor]:
    """A thick-first MNet's weights under the authors' names (mnet-architecture.md, 'State_dict layout'), written
    out independently of the converter: <node>.CB2d|CB3d.<unit>.<layer>.<tensor> and outputs.<i>.weight."""
    assert net.thick_axis == 0
    state = {}
    for key, value in net.state_dict().items():
        parts = key.split(".")
        if parts[0] == "nodes":
            block = {"block_2d": "CB2d", "block_3d": "CB3d"}[parts[2]]
            state[".".join([parts[1], block, *parts[3:]])] = value.clone()
        else:
            state[f"outputs.{HEADS.index(parts[1])}.weight"] = value.clone()
    return state


@pytest.fixture
def reference_checkpoint(tmp_path):
    torch.manual_seed(0)
    authors_layout = MNet(1, 3, kn=TINY, thick_axis=0).eval()  # (N, C, z, y, x), thick axis first, as theirs
    path = tmp_path / "model_final_checkpoint.model"
    torch.save({"epoch": 500, "state_dict": authors_state(authors_layout), "optimizer_state_dict": {}}, path)
    return authors_layout, path


def test_authors_default_checkpoint_has_their_key_count():
    state = authors_state(MNet(1, 3, thick_axis=0))
    assert len(state) == 343 and sum(v.numel() for v in state.values()) == 8_775_264
    assert state["down11.CB2d.conv1.conv.weight"].shape == (32, 1, 1, 3, 3)
    assert state["outputs.6.weight"].shape == (3, 80, 1, 1, 1)


def test_converted_network_computes_the_authors_function(reference_checkpoint, tmp_path):
    authors_layout, path = reference_checkpoint
    out = tmp_path / "models" / "model.pt"
    convert(str(path), str(out))
    net = MNet(1, 3, kn=TINY).eval()  # the bundle's layout: (x, y, z), thick axis last
    net.load_state_dict(torch.load(out, weights_only=True), strict=True)
    x_zyx = torch.randn(1, 1, 8, 40, 48)
    with torch.no_grad():
        expected = authors_layout(x_zyx)
        got = net(x_zyx.permute(0, 1, 4, 3, 2))  # (z, y, x) -> (x, y, z)
    torch.testing.assert_close(got.permute(0, 1, 4, 3, 2), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("thick_axis", [0, 1, -1])
def test_round_trip_is_exact(reference_checkpoint, thick_axis):
    state = torch.load(reference_checkpoint[1], weights_only=True)["state_dict"]
    back = to_reference(from_reference(state, thick_axis), thick_axis)
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_ddp_prefix_is_accepted(reference_checkpoint):
    state = torch.load(reference_checkpoint[1], weights_only=True)["state_dict"]
    prefixed = {f"module.{k}": v for k, v in state.items()}
    assert from_reference(prefixed).keys() == from_reference(state).keys()


def test_mismatches_are_one_line_errors(reference_checkpoint, tmp_path):
    _, path = reference_checkpoint
    checkpoint = torch.load(path, weights_only=True)
    state = checkpoint["state_dict"]
    broken = dict(state)
    del broken["up41.CB3d.conv2.norm.bias"]
    torch.save({"state_dict": broken}, tmp_path / "missing.model")
    with pytest.raises(BundleInputError, match=r"missing.model: does not fit MNet.*up41.block_3d.conv2.norm.bias"):
        convert(str(tmp_path / "missing.model"), str(tmp_path / "a.pt"))
    torch.save({"state_dict": {**state, "extra.layer.weight": torch.zeros(1)}}, tmp_path / "extra.model")
    with pytest.raises(BundleInputError, match="extra.layer.weight: not a key of the authors' MNet"):
        convert(str(tmp_path / "extra.model"), str(tmp_path / "a.pt"))
    wrong = {**state, "down12.CB3d.conv1.conv.weight": torch.zeros(4, 4, 3, 3, 2)}
    torch.save({"state_dict": wrong}, tmp_path / "shape.model")
    with pytest.raises(BundleInputError, match="size mismatch for nodes.down12.block_3d.conv1.conv.weight"):
        convert(str(tmp_path / "shape.model"), str(tmp_path / "a.pt"))
    with pytest.raises(BundleInputError, match="nothere.model: checkpoint not found"):
        convert(str(tmp_path / "nothere.model"), str(tmp_path / "a.pt"))
    assert not (tmp_path / "a.pt").exists()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_weights_are_refused(reference_checkpoint, tmp_path, bad):
    """The authors' trainer saves a diverged run's NaN weights like any other; converting them gave a model.pt that
    segments nothing."""
    _, path = reference_checkpoint
    state = torch.load(path, weights_only=True)["state_dict"]
    state["down12.CB2d.conv1.norm.weight"][0] = bad
    torch.save({"state_dict": state}, tmp_path / "diverged.model")
    with pytest.raises(
        BundleInputError,
        match=r"diverged\.model: 1 weight tensor\(s\) hold NaN or Inf, e\.g\. down12\.CB2d\.conv1\.norm\.weight",
    ):
        convert(str(tmp_path / "diverged.model"), str(tmp_path / "a.pt"))
    assert not (tmp_path / "a.pt").exists()


def test_cli_writes_the_model(reference_checkpoint, tmp_path):
    _, path = reference_checkpoint
    out = tmp_path / "model.pt"
    cmd = [sys.executable, "-m", "scripts.convert_reference", "--checkpoint", str(path), "--out", str(out)]
    done = subprocess.run(cmd, cwd=BUNDLE_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "kn=[4, 4, 6, 6, 8]" in done.stderr
    assert len(torch.load(out, weights_only=True)) == 343
    missing = cmd[:4] + [str(tmp_path / "none.model"), "--out", str(tmp_path / "none.pt")]
    bad = subprocess.run(missing, cwd=BUNDLE_ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1].startswith("ERROR: ")
