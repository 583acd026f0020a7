"""The speed/memory options of MNet must reproduce the plain reference path: outputs, gradients and state_dict."""

from __future__ import annotations

import json

import pytest
import torch

from scripts.networks.mnet import MNet

TINY = (4, 4, 6, 6, 8)
OPTIONS = ["skip_bias", "group_norm", "split_decoder_conv", "checkpointing", "merge_first", "fast_inference"]
CASES = [{name: True} for name in OPTIONS] + [dict.fromkeys(OPTIONS, True)]


def _pair(options: dict, thick_axis: int = -1, fmu: str = "sub") -> tuple[MNet, MNet]:
    plain = MNet(1, 3, kn=TINY, thick_axis=thick_axis, fmu=fmu)
    fast = MNet(1, 3, kn=TINY, thick_axis=thick_axis, fmu=fmu, **options)
    fast.load_state_dict(plain.state_dict())
    return plain, fast


def _run(net: MNet, x: torch.Tensor) -> list[torch.Tensor]:
    """Train-mode outputs, eval output, then the gradient of every parameter (a skipped bias counts as zero)."""
    net.zero_grad(set_to_none=True)
    outputs = net.train()(x)
    sum(o.square().mean() * (i + 1) for i, o in enumerate(outputs)).backward()
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in net.parameters()]
    with torch.no_grad():
        final = net.eval()(x)
    return [o.detach() for o in outputs] + [final] + grads


ALL = dict.fromkeys(OPTIONS, True)
# float64 convolutions run on a slow reference kernel, so the exactness check in float64 runs once, with every
# option on; each option alone and the other thick axes are checked in float32 against the plain path.
EQUIVALENCE_CASES = [(ALL, -1, (32, 32, 8), True)] + [(case, -1, (32, 32, 8), False) for case in CASES[:-1]]
EQUIVALENCE_CASES += [(ALL, 0, (8, 32, 48), False), (ALL, 1, (32, 8, 32), False)]


@pytest.mark.parametrize(
    "options,thick_axis,shape,float64",
    EQUIVALENCE_CASES,
    ids=lambda v: "+".join(v) if isinstance(v, dict) else str(v),
)
def test_option_matches_plain_path(options, thick_axis, shape, float64):
    """Same weights, same input: the 7 training outputs, the eval output and every gradient match the plain path.

    float64 (only summation order differs): all agree to 1e-9, i.e. the options are exact.
    float32: outputs agree within 1e-5 (or twice the plain path's own float32 error against float64 where a random
    tiny net amplifies rounding more; without the float64 run, 1e-4 of the output scale). Weight gradients are sums
    over all voxels of terms that instance norm makes cancel, so a different but equally valid reduction order
    (oneDNN picks another kernel without bias) moves them by up to ~1e-3 of their size; they are checked at 1e-2 of
    their largest value.
    """
    plain, fast = _pair(options, thick_axis)
    x = torch.randn(1, 1, *shape)
    plain32, fast32 = _run(plain, x), _run(fast, x)
    assert len(plain32) == len(fast32)
    if float64:
        plain64, fast64 = _run(plain.double(), x.double()), _run(fast.double(), x.double())
        for p64, f64 in zip(plain64, fast64):
            torch.testing.assert_close(f64, p64, rtol=1e-9, atol=1e-9)
    for i, (p32, f32) in enumerate(zip(plain32, fast32)):
        scale = 1 + p32.abs().max().item()
        if i < 8:  # outputs
            noise = (p32.double() - plain64[i]).abs().max().item() if float64 else 5e-5 * scale
            assert (f32 - p32).abs().max().item() <= max(1e-5 * scale, 2 * noise)
        else:
            assert (f32 - p32).abs().max().item() <= 1e-2 * scale


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
    """Scripting keeps every option; the eager-only inference kernels step aside, so the scripted net equals the
    eager one without them (same weights)."""
    _, fast = _pair(dict.fromkeys(OPTIONS, True))
    _, eager = _pair({**dict.fromkeys(OPTIONS, True), "fast_inference": False})
    eager.load_state_dict(fast.state_dict())
    scripted = torch.jit.script(fast.eval())
    x = torch.randn(1, 1, 48, 40, 10)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), eager.eval()(x), rtol=1e-5, atol=1e-5)


def test_checkpointing_is_off_in_eval_and_no_grad():
    net = MNet(1, 3, kn=TINY, checkpointing=True).train()
    with torch.no_grad():
        outputs = net(torch.randn(1, 1, 32, 32, 8))
    assert len(outputs) == 7 and all(not o.requires_grad for o in outputs)


def test_benchmark_quick_writes_json(tmp_path):
    from benchmarks.network import main

    out = tmp_path / "network.json"
    main(device="cpu", quick=True, out=str(out), memory=False, models=["dynunet", "mnet"])
    report = json.loads(out.read_text())
    assert {"date", "torch", "device", "threads", "patch", "peak_gflops", "models"} <= report.keys()
    names = [m["name"] for m in report["models"]]
    assert "dynunet" in names and "mnet" in names
    for model in report["models"]:
        assert {"params", "gflop_fwd", "train_s", "infer_s", "peak_mb", "gflops", "train_ratio_vs_dynunet"} <= set(
            model
        )
