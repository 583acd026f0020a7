"""The channels_last instance-norm backward of CPU training: exact gradients, float32 no further from float64 than
PyTorch's own kernel, and used only where it applies (CPU, channels_last, autograd on, eager)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from scripts.networks import channels_last_norm
from scripts.networks.blocks import InstanceNormByGroupNorm
from scripts.networks.mnet import MNet
from scripts.networks.options import MNetOptions


def _inputs(shape, dtype, offset=0.0):
    generator = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=generator, dtype=dtype) * 3 + offset).to(memory_format=torch.channels_last_3d)
    weight = torch.randn(shape[1], generator=generator, dtype=dtype)
    bias = torch.randn(shape[1], generator=generator, dtype=dtype)
    return x, weight, bias


def test_gradients_are_exact_in_float64():
    x, weight, bias = _inputs((2, 3, 4, 5, 3), torch.float64)
    inputs = tuple(t.requires_grad_() for t in (x, weight, bias))
    assert torch.autograd.gradcheck(lambda *t: channels_last_norm.instance_norm(*t, 1e-5), inputs)


@pytest.mark.parametrize("offset", [0.0, 50.0])  # a large mean is where a sum-of-products formula would cancel
def test_float32_gradients_are_as_close_to_float64_as_pytorchs(offset):
    x64, w64, b64 = _inputs((2, 8, 24, 24, 6), torch.float64, offset)
    dy = torch.randn(x64.shape, dtype=torch.float64).to(memory_format=torch.channels_last_3d)

    def grads(norm, dtype):
        leaves = [t.detach().to(dtype).requires_grad_() for t in (x64, w64, b64)]
        leaves[0] = leaves[0].detach().to(memory_format=torch.channels_last_3d).requires_grad_()
        norm(*leaves).backward(dy.to(dtype))
        return [t.grad.double() for t in leaves]

    reference = grads(lambda x, w, b: F.group_norm(x, x.shape[1], w, b, 1e-5), torch.float64)
    plain = grads(lambda x, w, b: F.group_norm(x, x.shape[1], w, b, 1e-5), torch.float32)
    ours = grads(lambda x, w, b: channels_last_norm.instance_norm(x, w, b, 1e-5), torch.float32)
    for name, r, p, o in zip(("x", "weight", "bias"), reference, plain, ours):
        plain_error, our_error = (p - r).abs().max().item(), (o - r).abs().max().item()
        assert our_error <= 5 * plain_error + 1e-12, (name, our_error, plain_error)
    assert ours[0].is_contiguous(memory_format=torch.channels_last_3d)


def test_it_runs_only_in_eager_cpu_training_on_channels_last():
    x, _, _ = _inputs((1, 4, 8, 8, 4), torch.float32)
    assert channels_last_norm.applies(x)
    assert not channels_last_norm.applies(x.contiguous())
    assert not channels_last_norm.applies(x.half())
    assert not channels_last_norm.applies(torch.zeros(1, 1, 4, 4, 4))  # both layouts at once: PyTorch's kernel
    with torch.no_grad():
        assert not channels_last_norm.applies(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # PyTorch's op keeps autocast's rules
        assert not channels_last_norm.applies(x)


@pytest.mark.parametrize("fast_training", [True, False])
def test_the_cpu_preset_trains_through_it(monkeypatch, fast_training):
    """MNet's CPU preset (group norm + channels_last + fast_training) sends every norm of a train step here, none in
    eval, and none without fast_training."""
    calls = []
    real = channels_last_norm.instance_norm
    monkeypatch.setattr(channels_last_norm, "instance_norm", lambda *a: calls.append(1) or real(*a))
    options = replace(MNetOptions.cpu(), fast_training=fast_training)
    net = MNet(1, 3, kn=(4, 4, 6, 6, 8), deep_supervision=True, options=options)
    norms = sum(isinstance(m, InstanceNormByGroupNorm) for m in net.modules())
    x = torch.randn(2, 1, 32, 32, 8).to(memory_format=torch.channels_last_3d)
    net.train()
    outputs = net(x)
    sum(o.float().mean() for o in (outputs if isinstance(outputs, (list, tuple)) else [outputs])).backward()
    assert len(calls) == (norms if fast_training else 0) and norms > 0
    calls.clear()
    net.eval()
    with torch.inference_mode():
        net(x[:1])
    assert calls == []
