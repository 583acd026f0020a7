"""The speed/memory options of MNet must reproduce the plain reference path: outputs, gradients and state_dict."""

from __future__ import annotations

import json

import pytest
import torch

from scripts.networks.mnet import MNet

TINY = (4, 4, 6, 6, 8)
OPTIONS = ["skip_bias", "group_norm", "split_decoder_conv", "checkpointing"]
CASES = [{name: True} for name in OPTIONS] + [dict.fromkeys(OPTIONS, True)]


def _pair(options: dict, thick_axis: int = -1, fmu: str = "sub") -> tuple[MNet, MNet]:
    plain = MNet(1, 3, kn=TINY, thick_axis=thick_axis, fmu=fmu)
    fast = MNet(1, 3, kn=TINY, thick_axis=thick_axis, fmu=fmu, **options)
    fast.load_state_dict(plain.state_dict())
    return plain, fast


def _grads(net: MNet) -> dict[str, torch.Tensor]:
    """Gradients by name; a parameter without gradient (a skipped bias) counts as zero gradient."""
    return {n: p.grad if p.grad is not None else torch.zeros_like(p) for n, p in net.named_parameters()}


def _train_outputs_and_grads(net: MNet, x: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    outputs = net.train()(x)
    sum(o.square().mean() * (i + 1) for i, o in enumerate(outputs)).backward()
    return [o.detach() for o in outputs], _grads(net)


@pytest.mark.parametrize("options", CASES, ids=lambda o: "+".join(o))
@pytest.mark.parametrize("thick_axis,shape", [(-1, (32, 32, 16)), (0, (12, 32, 48))])
def test_option_matches_plain_path(options, thick_axis, shape):
    plain, fast = _pair(options, thick_axis)
    x = torch.randn(2, 1, *shape)
    out_plain, grad_plain = _train_outputs_and_grads(plain, x)
    out_fast, grad_fast = _train_outputs_and_grads(fast, x)
    assert len(out_plain) == len(out_fast) == 7
    for a, b in zip(out_plain, out_fast):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert grad_plain.keys() == grad_fast.keys()
    for name in grad_plain:
        torch.testing.assert_close(grad_fast[name], grad_plain[name], rtol=1e-5, atol=1e-5, msg=name)
    with torch.inference_mode():
        torch.testing.assert_close(fast.eval()(x), plain.eval()(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("options", CASES, ids=lambda o: "+".join(o))
def test_option_keeps_state_dict(options):
    plain, fast = _pair(options)
    assert {k: v.shape for k, v in fast.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}


def test_cat_fmu_with_all_options():
    plain, fast = _pair(dict.fromkeys(OPTIONS, True), fmu="cat")
    x = torch.randn(1, 1, 32, 32, 8)
    with torch.no_grad():
        for a, b in zip(plain.train()(x), fast.train()(x)):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_torchscript_with_all_options():
    plain, fast = _pair(dict.fromkeys(OPTIONS, True))
    scripted = torch.jit.script(fast.eval())
    x = torch.randn(1, 1, 48, 40, 10)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), plain.eval()(x), rtol=1e-5, atol=1e-5)


def test_checkpointing_is_off_in_eval_and_no_grad():
    net = MNet(1, 3, kn=TINY, checkpointing=True).train()
    with torch.no_grad():
        outputs = net(torch.randn(1, 1, 32, 32, 8))
    assert len(outputs) == 7 and all(not o.requires_grad for o in outputs)


def test_benchmark_quick_writes_json(tmp_path):
    from benchmarks.network import main

    out = tmp_path / "network.json"
    main(device="cpu", quick=True, out=str(out), memory=False)
    report = json.loads(out.read_text())
    assert {"date", "torch", "device", "threads", "patch", "peak_gflops", "models"} <= report.keys()
    names = [m["name"] for m in report["models"]]
    assert "dynunet" in names and "mnet" in names
    for model in report["models"]:
        assert {"params", "gflop_fwd", "train_s", "infer_s", "peak_mb", "gflops", "train_ratio_vs_dynunet"} <= set(
            model
        )
