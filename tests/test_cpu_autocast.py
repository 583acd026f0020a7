"""bf16 autocast on the CPU (`--amp_dtype bfloat16`): the network computes in bf16, hands back float32, learns like
float32, works under torch.compile, and leaves nothing switched on behind it; the fast inference kernels follow
autocast instead of silently running float32."""

from __future__ import annotations

import logging
from copy import deepcopy
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser
from scripts import cpu_autocast
from scripts.networks.mnet import MNet
from scripts.networks.options import MNetOptions
from tests.conftest import BUNDLE_ROOT

KN = (4, 4, 6, 6, 8)
needs_bf16 = pytest.mark.skipif(not cpu_autocast.bf16_supported(), reason="this CPU has no bf16 instructions")


def _first_conv_dtypes(net: MNet) -> list[torch.dtype]:
    seen: list[torch.dtype] = []
    net.nodes["down11"].block_2d.conv1.conv.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    return seen


@needs_bf16
@pytest.mark.parametrize("options", [MNetOptions.reference(), MNetOptions.cpu()], ids=["reference", "cpu"])
def test_network_computes_in_bf16_and_returns_float32(options):
    torch.manual_seed(0)
    net = MNet(1, 3, kn=KN, options=options)
    plain = MNet(1, 3, kn=KN, options=options)
    plain.load_state_dict(net.state_dict())
    assert cpu_autocast.with_cpu_autocast(net, True, "bfloat16", "cpu") is net
    seen = _first_conv_dtypes(net)
    x = torch.randn(1, 1, 48, 48, 8)
    outputs = net.train()(torch.cat([x, x]))
    assert len(outputs) == 7 and all(o.dtype == torch.float32 for o in outputs)
    with torch.no_grad():
        logits = net.eval()(x)
        reference = plain.eval()(x)
    assert seen == [torch.bfloat16, torch.bfloat16]
    assert logits.dtype == torch.float32 and logits.shape == (1, 3, 48, 48, 8)
    # bf16 keeps 8 bits of mantissa: through 40 convolutions and |a - b| merges of an untrained net the logits move
    # by ~15 % (RMS); float32 moves by 1e-5. Trained weights are what decide (test_short_training_...)
    error = (logits - reference).pow(2).mean().sqrt() / reference.pow(2).mean().sqrt()
    assert 1e-3 < error < 0.3
    assert not torch.is_autocast_enabled("cpu")


def test_fast_inference_convolutions_follow_cpu_autocast():
    """The batch-1 oneDNN convolutions of `fast_inference` are not on autocast's list: under CPU autocast they ran
    the whole network in float32 (bug: the output came back float32); now they step aside for PyTorch's op."""
    net = MNet(1, 3, kn=KN, options=MNetOptions.cpu()).eval()
    seen = _first_conv_dtypes(net)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(torch.randn(1, 1, 48, 48, 8))
    assert seen == [torch.bfloat16] and out.dtype == torch.bfloat16


@needs_bf16
def test_autocast_is_closed_when_forward_raises():
    net = cpu_autocast.with_cpu_autocast(MNet(1, 3, kn=KN), True, "bfloat16", "cpu")
    with pytest.raises(ValueError, match="in-plane spatial axis 0 has size 8"):
        net(torch.randn(1, 1, 8, 48, 8))
    assert not torch.is_autocast_enabled("cpu")
    assert net.eval()(torch.randn(1, 1, 48, 48, 8)).dtype == torch.float32  # and opens again next time


@needs_bf16
def test_forward_is_wrapped_once():
    net = MNet(1, 3, kn=KN)
    for _ in range(2):
        cpu_autocast.with_cpu_autocast(net, "true", "bfloat16", "cpu")
    assert cpu_autocast.has_cpu_autocast(net) and net.forward.network is net
    assert set(net.state_dict()) == set(MNet(1, 3, kn=KN).state_dict())


@needs_bf16
@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compiled_network_trains_and_infers_in_bf16(backend):
    """`--compile true --amp_dtype bfloat16`: torch.compile traces the autocast forward (bug: the forward hooks
    that opened and closed autocast crashed under torch.compile with "'autocast' object has no attribute 'prev'")."""
    net = cpu_autocast.with_cpu_autocast(MNet(1, 3, kn=KN), True, "bfloat16", "cpu")
    compiled = torch.compile(net, backend=backend)
    outputs = compiled(torch.randn(2, 1, 48, 48, 8))
    assert len(outputs) == 7 and all(o.dtype == torch.float32 for o in outputs)
    sum(o.mean() for o in outputs).backward()
    assert net.nodes["down11"].block_2d.conv1.conv.weight.grad.dtype == torch.float32
    with torch.inference_mode():
        logits = compiled.eval()(torch.randn(1, 1, 48, 48, 8))
    assert logits.dtype == torch.float32 and logits.shape == (1, 3, 48, 48, 8)
    assert not torch.is_autocast_enabled("cpu")


@needs_bf16
def test_a_deep_copy_computes_with_its_own_weights():
    net = cpu_autocast.with_cpu_autocast(MNet(1, 3, kn=KN), True, "bfloat16", "cpu").eval()
    copy = deepcopy(net)
    with torch.no_grad():
        copy.heads["final"].weight.zero_()
        x = torch.randn(1, 1, 48, 48, 8)
        assert copy(x).abs().max() == 0 and net(x).abs().max() > 0
    assert copy.forward.network is copy


@pytest.mark.parametrize(
    "amp,dtype,device", [(True, "float16", "cpu"), (False, "bfloat16", "cpu"), (True, "bfloat16", "cuda:0")]
)
def test_not_asked_for_leaves_the_network_alone(amp, dtype, device):
    """float16 on a CPU (no fast kernels), amp off, or a GPU (MONAI's engines autocast there) leave forward as it is."""
    net = MNet(1, 3, kn=KN)
    assert cpu_autocast.with_cpu_autocast(net, amp, dtype, device) is net
    assert not cpu_autocast.has_cpu_autocast(net) and "forward" not in net.__dict__


def test_a_cpu_without_bf16_warns_and_stays_float32(monkeypatch, caplog):
    monkeypatch.setattr(cpu_autocast, "bf16_supported", lambda: False)
    net = MNet(1, 3, kn=KN)
    with caplog.at_level(logging.WARNING, logger="mnet.cpu_autocast"):
        cpu_autocast.with_cpu_autocast(net, True, "bfloat16", "cpu")
    assert "no bf16 instructions; running in float32" in caplog.text
    assert not cpu_autocast.has_cpu_autocast(net)


@needs_bf16
def test_short_training_reaches_the_float32_loss():
    """The numerics rule for a precision option: a short training run reaches float32's loss within noise."""
    losses = {}
    x = torch.randn(2, 1, 48, 48, 8, generator=torch.Generator().manual_seed(1))
    target = (x[:, 0] > 0.3).long() + (x[:, 0] > 1.2).long()
    for dtype in ("float32", "bfloat16"):
        torch.manual_seed(0)
        net = cpu_autocast.with_cpu_autocast(
            MNet(1, 3, kn=KN, deep_supervision=False, options=MNetOptions.cpu()), True, dtype, "cpu"
        )
        optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        for _ in range(15):
            optimizer.zero_grad()
            loss = F.cross_entropy(net(x), target)
            loss.backward()
            optimizer.step()
        losses[dtype] = loss.item()
    assert losses["float32"] < 0.9 * F.cross_entropy(torch.zeros(2, 3, 48, 48, 8), target).item()
    assert abs(losses["bfloat16"] - losses["float32"]) < 0.1 * losses["float32"] + 0.02


@pytest.mark.parametrize(
    "files",
    [
        ["configs/train.json"],
        ["configs/inference.json"],
        ["configs/train.json", "configs/multi_gpu_train.json"],
        ["configs/train.json", "configs/evaluate.json", "configs/multi_gpu_evaluate.json"],
    ],
    ids=lambda f: "+".join(p.split("/")[-1] for p in f),
)
def test_configs_take_the_setting(files, monkeypatch):
    """Every config's network (and the DDP overlays' module) goes through `with_cpu_autocast` with the command line's
    `amp` and `amp_dtype`."""
    calls = []
    monkeypatch.setattr(cpu_autocast, "with_cpu_autocast", lambda net, *args: calls.append(args) or net)
    parser = ConfigParser()
    parser.read_config([str(BUNDLE_ROOT / f) for f in files])
    parser.update({"device": "$torch.device('cpu')", "amp_dtype": "bfloat16", "kn": list(KN)})
    expression = parser["network"]["module"] if isinstance(parser["network"], dict) else parser["network"]
    assert "scripts.cpu_autocast.with_cpu_autocast(" in expression
    if not isinstance(parser["network"], dict):  # DDP needs a process group: its expression is checked above
        parser.get_parsed_content("network")
        assert calls and calls[0][1:] == ("bfloat16", torch.device("cpu"))


@pytest.mark.parametrize("config", ["configs/train.json", "configs/inference.json"])
def test_cpu_preset_keeps_the_row_major_layout_under_bf16(config, monkeypatch):
    """Under bf16 autocast PyTorch's channels_last group norm is slow on the CPU (docs/benchmarks.md), so the CPU
    preset keeps the row-major layout there, where float32 trains in channels_last; a CPU without bf16 keeps float32
    and the float32 preset."""
    expected = {True: MNetOptions.cpu(), False: replace(MNetOptions.cpu(), channels_last=False)}
    for supported in (True, False):
        monkeypatch.setattr(cpu_autocast, "bf16_supported", lambda supported=supported: supported)
        for dtype in ("float16", "bfloat16"):
            parser = ConfigParser()
            parser.read_config(str(BUNDLE_ROOT / config))
            parser.update({"device": "$torch.device('cpu')", "amp_dtype": dtype})
            row_major = supported and dtype == "bfloat16"
            assert parser.get_parsed_content("network_def").options == expected[not row_major]
