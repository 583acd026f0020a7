"""MNet's speed/memory options (MNetOptions) against the plain reference path: outputs, gradients, state_dict,
training loss, and the numerics rule of the developers' guide (an option's float32 error against a float64 run may
be at most 5x the plain float32 path's error)."""

from __future__ import annotations

from dataclasses import asdict, fields, replace

import pytest
import torch
import torch.utils.checkpoint
from scripts.networks.mnet import MNet
from scripts.networks.options import MNetOptions, preset

TINY = (4, 4, 6, 6, 8)
OPTION_NAMES = [f.name for f in fields(MNetOptions)]
ALL = MNetOptions(**dict.fromkeys(OPTION_NAMES, True))
SINGLE = {name: MNetOptions(**{name: True}) for name in OPTION_NAMES}
CASES = {**SINGLE, "cpu_preset": MNetOptions.cpu(), "all": ALL}


def _pair(options: MNetOptions, thick_axis: int = -1, fmu: str = "sub") -> tuple[MNet, MNet]:
    torch.manual_seed(0)
    plain = MNet(1, 3, kn=TINY, thick_axis=thick_axis, fmu=fmu)
    fast = MNet(1, 3, kn=TINY, thick_axis=thick_axis, fmu=fmu, options=options)
    fast.load_state_dict(plain.state_dict())
    return plain, fast


def _outputs_and_grads(net: MNet, x: torch.Tensor) -> list[torch.Tensor]:
    """The 7 training outputs, the eval output (autograd off: the inference kernels' path), then every gradient."""
    net.zero_grad(set_to_none=True)
    outputs = net.train()(x)
    sum(o.square().mean() * (i + 1) for i, o in enumerate(outputs)).backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None for g in grads), "every parameter gets a gradient (DDP requires it)"
    with torch.no_grad():
        final = net.eval()(x)
    return [o.detach() for o in outputs] + [final] + grads


# thick axis last for every option; the other thick axes and FMU modes with all options on
EQUIVALENCE = [(name, -1, (16, 16, 8), "sub") for name in CASES]
EQUIVALENCE += [("all", 0, (8, 16, 24), "sub"), ("all", 1, (16, 8, 16), "sub"), ("all", -1, (16, 16, 8), "sum")]
EQUIVALENCE += [("all", -1, (16, 16, 8), "cat")]


@pytest.mark.parametrize("case,thick_axis,shape,fmu", EQUIVALENCE, ids=lambda v: str(v))
def test_option_is_exact_and_within_the_numerics_rule(case, thick_axis, shape, fmu):
    """float64: the option equals the plain path to 1e-9 (only summation order differs), outputs and gradients.
    float32: each output's error against the float64 plain run is at most 5x the plain float32 path's error."""
    plain, fast = _pair(CASES[case], thick_axis, fmu)
    x = torch.randn(1, 1, *shape, generator=torch.Generator().manual_seed(1))
    plain32, fast32 = _outputs_and_grads(plain, x), _outputs_and_grads(fast, x)
    plain64, fast64 = _outputs_and_grads(plain.double(), x.double()), _outputs_and_grads(fast.double(), x.double())
    assert len(plain32) == len(fast32) == len(plain64)
    for p64, f64 in zip(plain64, fast64):
        torch.testing.assert_close(f64, p64, rtol=1e-9, atol=1e-9)
    for i in range(8):  # outputs; weight gradients are sums that instance norm makes cancel, checked in float64
        plain_error = (plain32[i].double() - plain64[i]).abs().max().item()
        fast_error = (fast32[i].double() - plain64[i]).abs().max().item()
        assert fast_error <= 5 * plain_error + 1e-7, (i, fast_error, plain_error)


@pytest.mark.parametrize("case", list(CASES))
def test_option_keeps_state_dict_and_parameter_count(case):
    plain, fast = _pair(CASES[case])
    assert {k: v.shape for k, v in fast.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}


def _loss_curve(net: MNet, x: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Losses of a few SGD steps with the recipe's optimiser (lr 0.01, momentum 0.99, Nesterov)."""
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    curve = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = sum(o.square().mean() for o in net.train()(x))
        loss.backward()
        optimizer.step()
        curve.append(loss.item())
    return torch.tensor(curve, dtype=torch.float64)


@pytest.mark.parametrize("case", ["cpu_preset", "checkpointing"])
def test_short_training_reaches_the_same_loss(case):
    """From the same weights on the same batch, the option's float32 loss curve stays within 5x the plain float32
    curve's distance from a float64 run (the noise of float32 training itself)."""
    plain, fast = _pair(CASES[case])
    reference = MNet(1, 3, kn=TINY).double()
    reference.load_state_dict(plain.state_dict())
    x = torch.randn(2, 1, 16, 16, 8, generator=torch.Generator().manual_seed(2))
    exact = _loss_curve(reference, x.double())
    plain_curve, fast_curve = _loss_curve(plain, x), _loss_curve(fast, x)
    assert exact[-1] < exact[0]  # it trains at all
    noise = (plain_curve - exact).abs().max().item()
    assert (fast_curve - exact).abs().max().item() <= 5 * noise + 1e-6 * exact.abs().max().item()


def test_torchscript_keeps_options():
    """Scripting keeps every option; the eager-only inference kernels step aside, so the scripted net equals the
    eager one without them (same weights)."""
    _, fast = _pair(ALL)
    _, eager = _pair(MNetOptions(**{**asdict(ALL), "fast_inference": False}))
    scripted = torch.jit.script(fast.eval())
    x = torch.randn(1, 1, 48, 40, 10)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), eager.eval()(x), rtol=1e-5, atol=1e-5)


def test_channels_last_changes_the_layout_and_survives_loading():
    """The option is not a no-op: conv weights, activations and the output are channels_last_3d, and loading a plain
    state_dict (or a checkpoint saved by a plain net) keeps that layout."""
    plain, fast = _pair(SINGLE["channels_last"])
    convs = [m.weight for m in fast.modules() if isinstance(m, torch.nn.Conv3d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last_3d) for w in convs)
    assert not any(m.weight.is_contiguous(memory_format=torch.channels_last_3d) and not m.weight.is_contiguous()
                   for m in plain.modules() if isinstance(m, torch.nn.Conv3d))  # fmt: skip
    out = fast.train()(torch.randn(2, 1, 16, 16, 8))[0]
    assert out.is_contiguous(memory_format=torch.channels_last_3d) and not out.is_contiguous()


def test_channels_last_leaves_the_cpu_inference_path_as_it_was():
    """With the CPU preset, inference runs the same kernels in the same layout as without channels_last, bit for bit:
    in channels_last its result depended on the thread count (torchrun's 1-thread processes gave other labels than one
    2-thread process, tests/test_inference_outputs.py)."""
    torch.manual_seed(0)
    layout = MNet(1, 3, kn=TINY, options=replace(MNetOptions.cpu(), channels_last=True)).eval()
    plain = MNet(1, 3, kn=TINY, options=MNetOptions.cpu()).eval()
    plain.load_state_dict(layout.state_dict())
    x = torch.randn(1, 1, 48, 48, 8)
    with torch.no_grad():
        out = layout(x)
        assert out.is_contiguous()
        assert torch.equal(out, plain(x))


@pytest.mark.parametrize("options,train,grad,calls", [
    (SINGLE["checkpointing"], True, True, 25),  # one per mesh node
    (SINGLE["checkpointing"], False, True, 0),  # eval: nothing to recompute
    (SINGLE["checkpointing"], True, False, 0),  # no_grad: nothing to recompute
    (MNetOptions(), True, True, 0),  # off unless asked for
])  # fmt: skip
def test_checkpointing_runs_only_where_it_saves_memory(monkeypatch, options, train, grad, calls):
    count = []
    original = torch.utils.checkpoint.checkpoint

    def counting(*args, **kwargs):
        count.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting)
    net = MNet(1, 3, kn=TINY, options=options).train(train)
    with torch.set_grad_enabled(grad):
        net(torch.randn(1, 1, 32, 32, 8))
    assert len(count) == calls


def test_checkpointing_stores_fewer_activations():
    """What autograd keeps for backward, in bytes: checkpointing keeps the node outputs only."""

    def saved_bytes(net: MNet) -> int:
        total = []

        def pack(t: torch.Tensor) -> torch.Tensor:
            total.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            net.train()(torch.randn(2, 1, 48, 48, 8))
        return sum(total)

    plain, checkpointed = _pair(SINGLE["checkpointing"])
    assert saved_bytes(checkpointed) < 0.6 * saved_bytes(plain)


@pytest.mark.parametrize("device,expected", [("cpu", MNetOptions.cpu()), ("cuda:0", MNetOptions.gpu())])
def test_auto_preset_follows_the_device(device, expected):
    assert preset("auto", device) == expected
    assert preset("auto", device, checkpointing=True).checkpointing
    assert preset("reference", device) == MNetOptions()


def test_cpu_preset_trains_in_channels_last_except_under_bf16():
    """In float32 channels_last with the instance-norm backward of fast_training trained fastest at every width
    measured (kn 8 to 64); under CPU bf16 autocast row-major (docs/benchmarks.md). The GPU preset is untouched."""
    assert preset("auto", "cpu").channels_last and preset("auto", "cpu").fast_training
    assert preset("auto", "cpu", bf16_autocast=True) == replace(MNetOptions.cpu(), channels_last=False)
    assert preset("auto", "cuda:0", bf16_autocast=True) == MNetOptions.gpu()
    assert preset("reference", "cpu", bf16_autocast=True) == MNetOptions()


def test_unknown_preset_and_options_type_are_refused():
    with pytest.raises(ValueError, match="speed_preset: expected one of auto, reference, cpu, gpu, got 'fast'"):
        preset("fast")
    with pytest.raises(TypeError, match="options must be an MNetOptions"):
        MNet(1, 2, kn=TINY, options={"group_norm": True})


@pytest.mark.parametrize("thick_axis", [-1, 0, 1])
def test_thick_first_runs_the_2d_blocks_as_conv2d_in_training_only(monkeypatch, thick_axis):
    """The lever is not a no-op: with the CPU preset and thick_first every 2D-block convolution is one conv2d over
    (batch x slices) in training, none in inference, and the logits come back in the caller's axis order."""
    from scripts.networks import slice_frame

    calls = []
    conv2d = slice_frame.F.conv2d

    def counting(x, *args):
        calls.append(x.is_contiguous(memory_format=torch.channels_last))  # a zero-copy channels_last view
        return conv2d(x, *args)

    monkeypatch.setattr(slice_frame.F, "conv2d", counting)
    options = replace(MNetOptions.cpu(), channels_last=True, thick_first=True)
    net = MNet(1, 3, kn=TINY, thick_axis=thick_axis, options=options)
    shape = [32, 32, 32]
    shape[thick_axis] = 8
    convs_2d = sum(1 for name, _ in net.named_modules() if ".block_2d.conv" in name and name.endswith(".conv"))
    out = net.train()(torch.randn(2, 1, *shape))
    assert len(calls) == convs_2d > 0 and all(calls)
    assert list(out[0].shape) == [2, 3, *shape]
    calls.clear()
    with torch.no_grad():
        assert net.eval()(torch.randn(1, 1, *shape)).is_contiguous()
    assert calls == []
