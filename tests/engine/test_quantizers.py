"""Sign quantizers: forward convention and straight-through gradients."""

from __future__ import annotations

import torch

from engine.quantizers import ActivationSign, hard_sign, sign_ste


def test_sign_of_zero_and_nan_is_plus_one() -> None:
    x = torch.tensor([-1.0, -0.0, 0.0, 1e-30, float("nan"), -1e-30])
    assert hard_sign(x).tolist() == [-1.0, 1.0, 1.0, 1.0, 1.0, -1.0]


def test_ste_gradient_is_clipped_identity() -> None:
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5], requires_grad=True)
    sign_ste(x, "ste").sum().backward()
    assert x.grad is not None
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def test_approxsign_gradient() -> None:
    x = torch.tensor([-2.0, -0.5, 0.0, 0.25, 1.0], requires_grad=True)
    sign_ste(x, "approxsign").sum().backward()
    assert x.grad is not None
    assert x.grad.tolist() == [0.0, 1.0, 2.0, 1.5, 0.0]


def test_activation_sign_uses_per_channel_thresholds() -> None:
    act = ActivationSign(2)
    with torch.no_grad():
        act.threshold.copy_(torch.tensor([0.5, -0.5]))
    x = torch.tensor([[[0.5, 0.4], [-0.5, -0.6]]])  # (N=1, C=2, L=2)
    assert act(x).tolist() == [[[1.0, -1.0], [1.0, -1.0]]]
    act.enabled = False
    assert torch.equal(act(x), x)
