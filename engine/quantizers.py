"""Sign quantizers with straight-through gradients.

Forward: ``sign(x - t)`` with the convention of ``docs/format.md``: ``x >= t`` gives +1,
``x < t`` gives -1 (so ``sign(0) = +1``). Gradients:

- ``ste`` (BinaryConnect / XNOR-Net): identity inside ``|x - t| <= 1``, zero outside
  (the gradient of ``hardtanh``).
- ``approxsign`` (Bi-Real Net, Liu et al. 2018): ``2 - 2|x - t|`` inside ``|x - t| <= 1``,
  zero outside (the gradient of a piecewise quadratic that approximates sign).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def hard_sign(x: torch.Tensor) -> torch.Tensor:
    """+1 where ``x >= 0`` (and for NaN), -1 where ``x < 0``; no gradient."""
    return torch.where(x < 0, -torch.ones_like(x), torch.ones_like(x))


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return hard_sign(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


class _SignApprox(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return hard_sign(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.clamp(2 - 2 * x.abs(), min=0).to(grad.dtype)


class _SignIdentity(torch.autograd.Function):
    """Sign forward, plain identity backward (for weights: their latent values are small)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return hard_sign(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad


def sign_ste(x: torch.Tensor, grad: str = "ste") -> torch.Tensor:
    """Sign of ``x`` with the named straight-through gradient (``ste`` or ``approxsign``)."""
    if grad == "ste":
        return _SignSTE.apply(x)
    if grad == "approxsign":
        return _SignApprox.apply(x)
    if grad == "identity":
        return _SignIdentity.apply(x)
    raise ValueError(f"unknown sign gradient {grad!r}; expected 'ste', 'approxsign' or 'identity'")


class WeightSign(nn.Module):
    """Parametrization that binarizes a (reconstructed) weight: forward ``sign(W)``.

    The gradient is the identity (BinaryConnect's STE without clipping: latent weights of a
    factorization have no natural unit scale). ``enabled = False`` passes ``W`` through,
    which is how the two-stage schedule and the lossless-twin test switch it off.
    """

    def __init__(self) -> None:
        super().__init__()
        self.enabled = True

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return sign_ste(weight, "identity") if self.enabled else weight


class ActivationSign(nn.Module):
    """Binarizes activations against a learnable per-channel threshold.

    Forward ``sign(x - threshold[c])`` (+1 where ``x >= threshold``); the gradient is the
    named STE (``ste``: hardtanh clip, ``approxsign``: Bi-Real). The threshold is
    initialized from activation statistics by the converter (see ``engine.convert``).
    ``channels`` is dimension 1 of the input (features for a linear layer's input).
    """

    def __init__(self, channels: int, grad: str = "ste") -> None:
        super().__init__()
        self.threshold = nn.Parameter(torch.zeros(channels))
        self.grad = grad
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return sign_ste(x - self.threshold.view(shape).to(x.dtype), self.grad)

    def extra_repr(self) -> str:
        return f"channels={self.threshold.numel()}, grad={self.grad}"
