"""MNet must match the authors' implementation: parameter counts, output shapes, wiring, and exportability."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scripts.networks.mnet import MNet
from scripts.networks.topology import mesh_topology

TINY = (4, 4, 6, 6, 8)

# per-module parameter counts of the reference (in_channels=1, default kn), mnet-architecture.md section 2.3
REFERENCE_MODULE_PARAMS = {
    "down11": 38400, "down12": 138816, "down13": 258816, "down14": 415680, "bottleneck1": 152640,
    "up11": 184800, "up12": 120192, "up13": 69408, "up14": 129408,
    "down21": 138816, "down22": 258816, "down23": 415680, "bottleneck2": 609408,
    "up21": 738240, "up22": 480000, "up23": 207648,
    "down31": 258816, "down32": 415680, "bottleneck3": 609408, "up31": 738240, "up32": 359808,
    "down41": 415680, "bottleneck4": 609408, "up41": 553440, "bottleneck5": 456768,
}  # fmt: skip


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("in_ch,out_ch", [(1, 2), (1, 3), (4, 4), (2, 14)])
@pytest.mark.parametrize("fmu", ["sub", "sum"])
def test_parameter_count_closed_form(in_ch, out_ch, fmu):
    assert n_params(MNet(in_ch, out_ch, fmu=fmu)) == 8_772_864 + 1_152 * in_ch + 416 * out_ch


def test_parameter_counts_reference_values():
    assert n_params(MNet(1, 3)) == 8_775_264
    assert n_params(MNet(1, 2, fmu="cat")) == 12_553_408
    net = MNet(1, 2)
    per_module = {name: n_params(node) for name, node in net.nodes.items()}
    assert per_module == REFERENCE_MODULE_PARAMS
    assert n_params(net.heads) == 416 * 2
    assert [h.in_channels for h in net.heads.values()] == [32, 48, 48, 64, 64, 80, 80]  # the reference's order


def test_state_dict_keys_name_the_paper_nodes():
    keys = list(MNet(1, 3).state_dict())
    assert len(keys) == 343  # as the authors' implementation, no buffers
    assert keys[0] == "nodes.down11.block_2d.conv1.conv.weight"
    assert "nodes.up41.block_3d.conv2.norm.bias" in keys
    assert not any(k.startswith("nodes.up41.block_2d") or k.startswith("nodes.bottleneck1.block_3d") for k in keys)
    assert keys[-7:] == [f"heads.{n}.weight" for n in ("final", "up23", "up13", "up32", "up12", "up41", "up11")]


def test_conv_norm_act_has_only_children_it_calls():
    unit = MNet(1, 3, kn=TINY).nodes["down11"].block_2d.conv1
    assert [name for name, _ in unit.named_children()] == ["conv", "norm", "act"]


def test_topology_carries_the_channel_arithmetic():
    by_name = {n.name: n for n in mesh_topology(in_channels=2, kn=(32, 48, 64, 80, 96), fmu="cat")}
    assert (by_name["down11"].in_channels, by_name["down11"].out_channels) == (2, 32)
    assert by_name["down22"].in_channels == 2 * 48  # two merged inputs, concatenated
    assert by_name["down21"].in_channels == 32  # one input: nothing to merge
    assert (by_name["up41"].in_channels, by_name["up41"].out_channels) == (2 * (80 + 96), 80)


def test_topology_has_25_modules_with_reference_names():
    nodes = mesh_topology()
    assert len(nodes) == 25
    assert sum(n.decoder for n in nodes) == 10
    by_name = {n.name: n for n in nodes}
    assert (by_name["bottleneck1"].emits_2d, by_name["bottleneck1"].emits_3d) == (True, False)
    assert (by_name["bottleneck5"].emits_2d, by_name["bottleneck5"].emits_3d) == (False, True)
    assert (by_name["up14"].emits_2d, by_name["up14"].emits_3d) == (True, True)
    assert (by_name["up23"].emits_2d, by_name["up23"].emits_3d) == (False, True)
    assert (by_name["up13"].emits_2d, by_name["up13"].emits_3d) == (True, False)
    # down22 merges the 2D stream of down21 with the 3D stream of down12
    assert by_name["down22"].src_2d == "down21"
    assert by_name["down22"].src_3d == "down12"
    assert by_name["up23"].src_3d == "up32"
    assert by_name["up23"].skip == "down21"
    assert by_name["down11"].reads_image and by_name["down11"].src_2d is None and by_name["down11"].src_3d is None
    assert by_name["down21"].src_2d is None and by_name["down21"].src_3d == "down11"


REFERENCE_SHAPES = {
    (1, 1, 16, 64, 64): [(16, 64, 64), (8, 32, 32), (16, 32, 32), (4, 16, 16), (16, 16, 16), (4, 8, 8), (16, 8, 8)],
    (1, 1, 20, 96, 80): [
        (20, 96, 80), (10, 48, 40), (20, 48, 40), (5, 24, 20), (20, 24, 20), (5, 12, 10), (20, 12, 10)
    ],
    (1, 1, 19, 255, 256): [
        (19, 255, 256), (9, 127, 128), (19, 127, 128), (4, 63, 64), (19, 63, 64), (4, 31, 32), (19, 31, 32)
    ],
}  # fmt: skip


@pytest.mark.parametrize("shape", list(REFERENCE_SHAPES))
def test_output_shapes_match_reference(shape):
    """Thick axis first, as in the reference: 7 outputs in training mode, one in eval mode."""
    net = MNet(1, 3, kn=TINY, thick_axis=0).train()
    with torch.no_grad():
        outputs = net(torch.randn(shape))
        assert isinstance(outputs, list)
        assert [tuple(o.shape[2:]) for o in outputs] == REFERENCE_SHAPES[shape]
        assert all(o.shape[:2] == (1, 3) for o in outputs)
        net.eval()
        single = net(torch.randn(shape))
    assert isinstance(single, torch.Tensor) and tuple(single.shape) == (1, 3, *shape[2:])


def test_default_width_shapes_and_train_eval_equal():
    net = MNet(1, 2).train()
    x = torch.randn(1, 1, 64, 64, 16)  # MONAI layout, thick axis last
    with torch.no_grad():
        train_out = net(x)
        net.eval()
        eval_out = net(x)
    assert [tuple(o.shape[2:]) for o in train_out][:3] == [(64, 64, 16), (32, 32, 8), (32, 32, 16)]
    torch.testing.assert_close(train_out[0], eval_out)  # instance norm without running stats, no dropout


def test_deep_supervision_off_returns_tensor_in_training():
    net = MNet(1, 2, kn=TINY, deep_supervision=False).train()
    out = net(torch.randn(1, 1, 32, 32, 8))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 2, 32, 32, 8)


def _permute_kernels(state: dict, perm: tuple[int, int, int]) -> dict:
    """Move conv-kernel spatial axes so a thick-first net's weights fit a thick-last net."""
    return {k: v.permute(0, 1, *(p + 2 for p in perm)) if v.dim() == 5 else v for k, v in state.items()}


@pytest.mark.parametrize("shape", [(16, 64, 48), (15, 33, 47)])
def test_thick_axis_first_equals_last_up_to_transpose(shape):
    torch.manual_seed(0)
    first = MNet(1, 3, kn=TINY, thick_axis=0).double().train()  # float64: only the summation order differs
    last = MNet(1, 3, kn=TINY, thick_axis=-1).double().train()
    last.load_state_dict(_permute_kernels(first.state_dict(), (1, 2, 0)))
    x = torch.randn(1, 1, *shape, dtype=torch.float64)
    with torch.no_grad():
        out_first = first(x)
        out_last = last(x.permute(0, 1, 3, 4, 2))
    assert len(out_first) == len(out_last) == 7
    for a, b in zip(out_first, out_last):
        torch.testing.assert_close(a.permute(0, 1, 3, 4, 2), b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("shape", [(17, 63, 65), (7, 64, 64), (1, 64, 64), (2, 16, 16)])
def test_odd_and_small_sizes_keep_input_size(shape):
    net = MNet(1, 2, kn=TINY, thick_axis=0).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 1, *shape))
    assert tuple(out.shape[2:]) == shape


@pytest.mark.parametrize(
    "spatial,match",
    [((64, 15, 8), "in-plane spatial axis 1 has size 15, minimum is 16"), ((16, 16, 1), "instance norm")],
)
def test_too_small_inputs_raise_clear_error(spatial, match):
    net = MNet(1, 2, kn=TINY)
    with pytest.raises(ValueError, match=match):
        net(torch.randn(1, 1, *spatial))


def test_wrong_channels_raise_clear_error():
    with pytest.raises(ValueError, match="expects 2 input channel"):
        MNet(2, 2, kn=TINY)(torch.randn(1, 1, 32, 32, 8))


def test_invalid_arguments():
    with pytest.raises(ValueError, match="fmu"):
        MNet(1, 2, fmu="mul")
    with pytest.raises(ValueError, match="kn"):
        MNet(1, 2, kn=(8, 8))


def test_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    net = MNet(1, 3, kn=TINY).train()
    outputs = net(torch.randn(2, 1, 32, 32, 16))
    sum(o.square().mean() for o in outputs).backward()
    no_grad = [n for n, p in net.named_parameters() if p.grad is None]
    assert not no_grad  # DDP needs a gradient for every parameter in every iteration
    # conv biases directly before instance norm are cancelled by it, so their gradient is ~0 but present
    zero = [n for n, p in net.named_parameters() if not torch.any(p.grad != 0)]
    assert not [n for n in zero if not n.endswith(".conv.bias")], zero


def test_he_init_option():
    net = MNet(1, 2, kn=TINY, init="he")
    biases = [m.bias for m in net.modules() if isinstance(m, torch.nn.Conv3d) and m.bias is not None]
    assert biases and all(torch.all(b == 0) for b in biases)


def test_torchscript_round_trip(tmp_path):
    net = MNet(1, 3, kn=TINY).eval()
    scripted = torch.jit.script(net)
    path = tmp_path / "mnet.ts"
    scripted.save(str(path))
    loaded = torch.jit.load(str(path))
    x = torch.randn(1, 1, 48, 40, 10)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x))


def test_onnx_round_trip_dynamic_in_plane(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    net = MNet(1, 3, kn=TINY).eval()
    path = tmp_path / "mnet.onnx"
    dims = {2: torch.export.Dim("h", min=16, max=2048), 3: torch.export.Dim("w", min=16, max=2048)}
    torch.onnx.export(
        net, (torch.randn(1, 1, 64, 64, 12),), str(path), input_names=["image"], dynamic_shapes={"x": dims}
    )
    session = ort.InferenceSession(str(path))
    net64 = MNet(1, 3, kn=TINY).double().eval()
    net64.load_state_dict(net.state_dict())
    for shape in [(1, 1, 64, 64, 12), (1, 1, 80, 48, 12)]:
        x = torch.randn(shape)
        got = session.run(None, {"image": x.numpy()})[0]
        with torch.no_grad():
            expected = net(x).numpy()
            # a random tiny net amplifies float32 rounding (instance norm over a few voxels): allow 1e-4 or twice
            # PyTorch's own float32 error against float64, whichever is larger
            float32_noise = np.abs(expected - net64(x.double()).numpy()).max()
        assert np.abs(got - expected).max() <= max(1e-4, 2 * float32_noise)
