"""Factorized-binary twins of ``Conv1d``, ``Conv2d`` and ``Linear``.

A twin *is* the original layer class (a subclass), so it keeps every constructor argument
(stride, padding, dilation, groups, bias, padding mode). It adds:

- ``weight`` parametrized by a factorization (``engine.factorizations``) chained with
  :class:`engine.quantizers.WeightSign`: ``weight = sign(reconstruct(factors))``, or
  ``sign(reconstruct(factors) + residual)`` with a dense residual;
- ``input_sign``: :class:`engine.quantizers.ActivationSign`, the binary activation with a
  learnable per-channel threshold;
- a scale on the output: ``analytic`` (``mean|W|`` per output channel of the real
  reconstruction, recomputed every step, XNOR-Net), ``channel`` (learned per output channel,
  XNOR-Net++) or ``xnorpp`` (learned ``alpha (x) beta (x) gamma`` over channel, height and
  width of the output, XNOR-Net++). The bias, if any, is added after the scale.

So ``y = conv(sign(x - t), sign(W)) * scale + bias``, which is exactly the runtime's
``bconv`` output transform with an integer accumulator. With both signs disabled
(:meth:`BinaryMixin.set_binary`) the twin computes ``conv(x, reconstruct(factors)) + bias``,
the original layer when the factorization is exact.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from engine import factorizations
from engine.quantizers import ActivationSign, WeightSign

SCALES = ("analytic", "channel", "xnorpp")


class BinaryMixin:
    """What the three twins share; mixed into subclasses of the torch layers."""

    scales_kind: str
    weight: torch.Tensor
    input_sign: ActivationSign
    alpha: nn.Parameter | None
    pos_scales: nn.ParameterList
    out_spatial: tuple[int, ...]
    parametrizations: Any

    def _setup_binary(
        self,
        *,
        factorization: str,
        rank: float | list[int],
        scales: str,
        activation_grad: str,
        residual: bool = False,
    ) -> None:
        if scales not in SCALES:
            raise ValueError(f"unknown scales {scales!r}; expected one of {SCALES}")
        module: Any = self
        channels_in = module.in_features if isinstance(self, nn.Linear) else module.in_channels
        out_channels = module.out_features if isinstance(self, nn.Linear) else module.out_channels
        self.scales_kind = scales
        self.input_sign = ActivationSign(channels_in, activation_grad)
        factor = factorizations.get(factorization, tuple(self.weight.shape), rank, residual)
        with torch.no_grad():
            analytic = self.weight.detach().abs().flatten(1).mean(1)
        parametrize.register_parametrization(module, "weight", factor)
        parametrize.register_parametrization(module, "weight", WeightSign())
        self.alpha = None
        if scales != "analytic":
            self.alpha = nn.Parameter(analytic.clone())
        self.pos_scales = nn.ParameterList()
        self.out_spatial = ()
        assert out_channels == analytic.numel()

    # -- structure ------------------------------------------------------------------
    @property
    def factorization(self) -> factorizations.Factorization:
        return self.parametrizations["weight"][0]

    @property
    def weight_sign(self) -> WeightSign:
        return self.parametrizations["weight"][1]

    def latent_weight(self) -> torch.Tensor:
        """The real reconstruction ``reconstruct(factors)`` (before the sign)."""
        plist = self.parametrizations["weight"]
        if plist.is_tensor:
            return plist[0](plist.original)
        return plist[0](*(getattr(plist, f"original{i}") for i in range(plist.ntensors)))

    def set_binary(self, *, weights: bool, inputs: bool) -> None:
        """Switch the weight sign (and its scale) and the activation sign on or off."""
        self.weight_sign.enabled = weights
        self.input_sign.enabled = inputs

    @property
    def binary_weights(self) -> bool:
        return bool(self.weight_sign.enabled)

    def init_output_spatial(self, spatial: tuple[int, ...]) -> None:
        """Create the XNOR-Net++ ``beta``/``gamma`` factors once the output size is known."""
        self.out_spatial = tuple(int(s) for s in spatial)
        if self.scales_kind != "xnorpp" or len(self.pos_scales) or not spatial:
            return
        ref = self.input_sign.threshold
        for size in self.out_spatial:
            self.pos_scales.append(nn.Parameter(torch.ones(size, device=ref.device)))

    # -- scales ---------------------------------------------------------------------
    def channel_scale(self) -> torch.Tensor:
        """The per-output-channel scale ``alpha`` (analytic: ``mean|reconstruction|``)."""
        if self.alpha is not None:
            return self.alpha
        return self.latent_weight().abs().flatten(1).mean(1)

    def output_scale(self, ndim: int) -> torch.Tensor:
        """The full scale, broadcastable against an output of ``ndim`` dimensions."""
        alpha = self.channel_scale()
        scale = alpha.view((1, -1) + (1,) * (ndim - 2))
        if len(self.pos_scales) and ndim > 2:
            for axis, factor in enumerate(self.pos_scales):
                shape = [1] * ndim
                shape[2 + axis] = -1
                scale = scale * factor.view(shape)
        return scale

    def _finish(self, y: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.binary_weights:
            y = y * self.output_scale(y.dim()).to(y.dtype)
        if bias is not None:
            bshape = (1, -1) + (1,) * (y.dim() - 2)
            y = y + bias.view(bshape).to(y.dtype)
        return y


class BinaryLinear(BinaryMixin, nn.Linear):
    """Binary twin of :class:`torch.nn.Linear`.

    On tokens, ``(N, L, C)`` or ``(N, H, W, C)`` (a transformer's or a ConvNeXt block's
    Linear layers), it computes what the runtime runs for it: the features moved to axis 1,
    a binary 1x1 convolution over the token axes (so XNOR-Net++ ``beta`` and ``gamma``
    scale those axes) and the features moved back last.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() > 2:
            return self.channels_first(x.movedim(-1, 1)).movedim(1, -1)
        x = self.input_sign(x)
        return self._finish(F.linear(x, self.weight), self.bias)

    def channels_first(self, x: torch.Tensor) -> torch.Tensor:
        """The layer on ``(N, C, *tokens)``: a 1x1 convolution over the token axes."""
        x = self.input_sign(x)
        y = F.linear(x.movedim(1, -1), self.weight).movedim(-1, 1)
        return self._finish(y, self.bias)


class BinaryConv1d(BinaryMixin, nn.Conv1d):
    """Binary twin of :class:`torch.nn.Conv1d`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_sign(x)
        return self._finish(self._conv_forward(x, self.weight, None), self.bias)


class BinaryConv2d(BinaryMixin, nn.Conv2d):
    """Binary twin of :class:`torch.nn.Conv2d`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_sign(x)
        return self._finish(self._conv_forward(x, self.weight, None), self.bias)


TWINS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: BinaryLinear,
    nn.Conv1d: BinaryConv1d,
    nn.Conv2d: BinaryConv2d,
}


def layer_kwargs(layer: nn.Module) -> dict[str, Any]:
    """The constructor arguments of a Linear/Conv layer, read back from the instance."""
    if isinstance(layer, nn.Linear):
        return {
            "in_features": layer.in_features,
            "out_features": layer.out_features,
            "bias": layer.bias is not None,
        }
    if isinstance(layer, nn.Conv1d | nn.Conv2d):
        return {
            "in_channels": layer.in_channels,
            "out_channels": layer.out_channels,
            "kernel_size": layer.kernel_size,
            "stride": layer.stride,
            "padding": layer.padding,
            "dilation": layer.dilation,
            "groups": layer.groups,
            "bias": layer.bias is not None,
            "padding_mode": layer.padding_mode,
        }
    raise TypeError(f"no binary twin for {type(layer).__name__}")


def make_twin(
    layer: nn.Module,
    *,
    factorization: str = "matrix",
    rank: float | list[int] = 1.0,
    scales: str = "channel",
    activation_grad: str = "ste",
    residual: bool = False,
) -> BinaryLinear | BinaryConv1d | BinaryConv2d:
    """A binary twin of ``layer`` (same constructor arguments, weights factorized from it;
    ``residual`` adds a dense residual to the reconstruction, see ``engine.factorizations``)."""
    twin_cls = TWINS[type(layer)]
    weight = layer.weight
    twin: Any = twin_cls(**layer_kwargs(layer), device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        twin.weight.copy_(weight)
        if twin.bias is not None:
            twin.bias.copy_(layer.bias)
    twin._setup_binary(
        factorization=factorization,
        rank=rank,
        scales=scales,
        activation_grad=activation_grad,
        residual=residual,
    )
    return twin


def binary_layers(model: nn.Module) -> list[tuple[str, BinaryMixin]]:
    """Every binary twin inside ``model`` with its qualified name."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, BinaryMixin)]


def weight_bits(layer: nn.Module) -> int:
    """Number of weights of a layer (its binary size in bits)."""
    return math.prod(layer.weight.shape)  # type: ignore[arg-type]
