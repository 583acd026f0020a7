"""What only a GPU can show: AMP training and inference stay finite and close to float32, and the fast paths match
the plain path with cuDNN's kernels. Skipped without CUDA (CI); run on a GPU machine by ``benchmarks/gpu_check.sh``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.inferers import SlidingWindowInferer
from scripts.networks.mnet import MNet
from scripts.networks.options import MNetOptions

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
KN = (8, 8, 12, 12, 16)
PATCH = (64, 64, 16)


@pytest.fixture(autouse=True)
def _exact_float32():
    """TF32 rounds convolution inputs to 10 mantissa bits; switch it off where float32 exactness is asserted."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_fast_paths_match_plain_path_on_gpu():
    """cuDNN picks different kernels (and summation orders) for the two paths, so on a GPU the fast path is held to
    the plain path's own float32 accuracy: its distance from a float64 run may be at most twice the plain path's."""
    plain = MNet(1, 3, kn=KN).cuda()
    fast = MNet(1, 3, kn=KN, options=MNetOptions.cpu()).cuda()
    fast.load_state_dict(plain.state_dict())
    exact = MNet(1, 3, kn=KN).cuda().double()
    exact.load_state_dict(plain.state_dict())
    x = torch.randn(2, 1, *PATCH, device="cuda")
    with torch.no_grad():
        for mode in ("train", "eval"):
            outs = [getattr(net, mode)()(inp) for net, inp in ((plain, x), (fast, x), (exact, x.double()))]
            outs = [o if isinstance(o, (list, tuple)) else [o] for o in outs]
            for p, f, e in zip(*outs):
                plain_error = (p.double() - e).abs().max().item()
                fast_error = (f.double() - e).abs().max().item()
                assert fast_error <= max(2 * plain_error, 1e-5), (mode, fast_error, plain_error)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_amp_training_steps_are_finite_and_learn(dtype):
    """A few AMP steps on one fixed batch: loss and gradients stay finite and the loss goes down."""
    net = MNet(1, 3, kn=KN, options=MNetOptions(group_norm=True)).cuda().train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    x = torch.randn(2, 1, *PATCH, device="cuda")
    y = (x > 0.5).long()[:, 0] + (x > 1.5).long()[:, 0]
    losses = []
    for _ in range(8):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype):
            out = net(x)[0]
            loss = F.cross_entropy(out.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
        scaler.step(optimizer)
        scaler.update()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


def test_amp_sliding_window_matches_float32():
    """Whole-volume probabilities under fp16 autocast stay close to float32 on average and give the same labels
    almost everywhere (an untrained net has many near-ties, where fp16 rounding may flip the argmax)."""
    net = MNet(1, 3, kn=KN, options=MNetOptions(group_norm=True)).cuda().eval()
    inferer = SlidingWindowInferer(roi_size=PATCH, sw_batch_size=2, overlap=0.5, mode="gaussian")
    volume = torch.randn(1, 1, 150, 130, 40, device="cuda")
    with torch.inference_mode():
        full = torch.softmax(inferer(volume, net), 1)
        with torch.autocast("cuda", dtype=torch.float16):
            half = torch.softmax(inferer(volume, net).float(), 1)
    assert half.shape == full.shape == (1, 3, 150, 130, 40)
    difference = (half - full).abs()
    same_label = (half.argmax(1) == full.argmax(1)).float().mean().item()
    assert difference.mean().item() < 2e-3, difference.mean().item()
    assert same_label > 0.98, same_label
