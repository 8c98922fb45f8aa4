"""The binary ops of a ``.bfm`` graph, prepared once and run through the C kernels.

:class:`BinaryConv` covers ``bconv2d``, ``bconv1d`` (one spatial row) and ``blinear`` (a
1x1 convolution of a 1x1 image): at load time it lays the packed weights out as rows of
``kpad`` words (taps times input words: the kernels take any row length) and, for zero
padding, precomputes each tap's sum of +/-1 weights so the kernel can take out-of-bounds
taps back out exactly. :func:`sign_pack` packs float activations channels-last.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _native
from .packing import WORD_BITS, words_for

ACTIVATIONS = {"none": 0, "relu": 1, "prelu": 2, "hardtanh": 3}


def _f32(array: np.ndarray | None) -> np.ndarray | None:
    return None if array is None else np.ascontiguousarray(array, dtype=np.float32)


@dataclass
class BinaryConv:
    """A binary convolution (or linear layer) with its fused output transform."""

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    pad_zero: bool
    weight_rows: np.ndarray  # (cout, kpad) uint64
    wsum: np.ndarray | None  # (kh * kw, cout) int32, zero padding only
    scale: np.ndarray
    bias: np.ndarray | None = None
    scale_h: np.ndarray | None = None
    scale_w: np.ndarray | None = None
    slope: np.ndarray | None = None
    out_threshold: np.ndarray | None = None
    activation: str = "none"
    min_val: float = -1.0
    max_val: float = 1.0
    post_relu: bool = False
    out_bits: bool = False
    # weight rows repacked for the panel kernels, per lane count (made on first use)
    _panels: dict[int, np.ndarray] = field(default_factory=dict, repr=False, compare=False)
    # per ISA, the arguments of every call (made on the first call: the fields are taken as
    # fixed from then on)
    _fixed: dict[str, tuple[Any, ...]] = field(default_factory=dict, repr=False, compare=False)

    def panel(self, lanes: int) -> np.ndarray:
        """The weight rows as lane-interleaved panels, ``panel[(g*kpad + k)*lanes + l]`` =
        word k of channel ``g*lanes + l`` (zero words past the last channel): what the
        ISA's panel kernel reads, made once per lane count instead of per call."""
        panel = self._panels.get(lanes)
        if panel is None:
            cout, kpad = self.weight_rows.shape
            groups = -(-cout // lanes)
            padded = np.zeros((groups * lanes, kpad), dtype=np.uint64)
            padded[:cout] = self.weight_rows
            panel = np.ascontiguousarray(
                padded.reshape(groups, lanes, kpad).transpose(0, 2, 1)
            ).reshape(-1)
            self._panels[lanes] = panel
        return panel

    @classmethod
    def create(
        cls,
        weight: np.ndarray,
        *,
        in_channels: int,
        scale: np.ndarray,
        stride: tuple[int, int] = (1, 1),
        padding: tuple[int, int] = (0, 0),
        dilation: tuple[int, int] = (1, 1),
        pad_mode: str = "zero",
        bias: np.ndarray | None = None,
        scale_h: np.ndarray | None = None,
        scale_w: np.ndarray | None = None,
        slope: np.ndarray | None = None,
        out_threshold: np.ndarray | None = None,
        activation: str = "none",
        min_val: float = -1.0,
        max_val: float = 1.0,
        post_activation: str = "none",
        output: str = "float",
    ) -> BinaryConv:
        """Prepare packed weights ``(cout, kh, kw, cin_w)`` (a validated ``.bfm`` layout)."""
        weight = np.ascontiguousarray(weight, dtype=np.uint64)
        if weight.ndim != 4 or weight.shape[3] != words_for(in_channels):
            raise ValueError(f"weight shape {weight.shape} does not fit {in_channels} channels")
        cout, kh, kw, cw = weight.shape
        k = kh * kw * cw
        # no padding to a multiple of the vector width: an odd last word is counted with
        # the scalar popcnt beside the vector lanes, cheaper than a zero-padded half step
        kpad = k
        rows = np.zeros((cout, kpad), dtype=np.uint64)
        rows[:, :k] = weight.reshape(cout, k)
        wsum = None
        if pad_mode == "zero":
            bits = np.unpackbits(weight.view(np.uint8), axis=-1, bitorder="little")
            negatives = bits.reshape(cout, kh * kw, -1).sum(axis=-1, dtype=np.int64)
            wsum = np.ascontiguousarray((in_channels - 2 * negatives).T, dtype=np.int32)
        return cls(
            in_channels=in_channels,
            out_channels=cout,
            kernel_size=(kh, kw),
            stride=stride,
            padding=padding,
            dilation=dilation,
            pad_zero=pad_mode == "zero",
            weight_rows=rows,
            wsum=wsum,
            scale=np.ascontiguousarray(scale, dtype=np.float32),
            bias=_f32(bias),
            scale_h=_f32(scale_h),
            scale_w=_f32(scale_w),
            slope=_f32(slope),
            out_threshold=_f32(out_threshold),
            activation=activation,
            min_val=float(min_val),
            max_val=float(max_val),
            post_relu=post_activation == "relu",
            out_bits=output == "bits",
        )

    @property
    def kpad(self) -> int:
        """Words per weight row (taps x input words)."""
        return int(self.weight_rows.shape[1])

    def output_hw(self, h: int, w: int) -> tuple[int, int]:
        """Output height and width for an ``h x w`` input."""
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        (ph, pw), (dh, dw) = self.padding, self.dilation
        return (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (
            w + 2 * pw - dw * (kw - 1) - 1
        ) // sw + 1

    def output_shape(self, n: int, h: int, w: int) -> tuple[int, ...]:
        """Shape of the output array: float ``(n, cout, ho, wo)`` or words ``(n, ho, wo, cw)``."""
        ho, wo = self.output_hw(h, w)
        if self.out_bits:
            return (n, ho, wo, words_for(self.out_channels))
        return (n, self.out_channels, ho, wo)

    def scratch_bytes(self, threads: int) -> int:
        """Scratch the kernel needs for ``threads`` threads."""
        return int(_native.bconv_scratch_bytes(self.kpad, self.out_channels, max(1, threads)))

    def __call__(
        self,
        x: np.ndarray,
        out: np.ndarray,
        scratch: np.ndarray,
        *,
        residual: np.ndarray | None = None,
        threads: int = 1,
        isa: str | None = None,
    ) -> int:
        """Run on packed ``x`` ``(n, h, w, cin_w)`` into ``out``; returns the threads used."""
        n, h, w, _ = x.shape
        if isa is None:  # the ISA in use now (select_isa may change it)
            isa = _native.isa()
        fixed = self._fixed.get(isa)
        if fixed is None:  # Python work of ~1 us a call otherwise (3% of a small layer)
            (kh, kw), (sh, sw) = self.kernel_size, self.stride
            (ph, pw), (dh, dw) = self.padding, self.dilation
            lanes = int(_native.panel_lanes(isa))
            fixed = self._fixed[isa] = (
                (self.in_channels, self.out_channels, kh, kw, sh, sw, ph, pw, dh, dw, self.kpad),
                (
                    int(self.pad_zero),
                    ACTIVATIONS[self.activation],
                    self.min_val,
                    self.max_val,
                    int(self.post_relu),
                    int(self.out_bits),
                ),
                self.panel(lanes),
                lanes,
            )
        geometry, transform, panel, lanes = fixed
        return int(
            _native.bconv(
                x,
                self.weight_rows,
                self.wsum,
                self.scale,
                self.bias,
                self.scale_h,
                self.scale_w,
                self.slope,
                residual,
                self.out_threshold,
                out,
                scratch,
                (n, h, w, *geometry),
                transform,
                threads,
                isa,
                panel,
                lanes,
            )
        )


def sign_pack(
    x: np.ndarray, out: np.ndarray, *, threshold: np.ndarray | None = None, isa: str | None = None
) -> np.ndarray:
    """Pack float32 ``x`` ``(n, c, *spatial)`` channels-last into ``out`` ``(n, *spatial, cw)``."""
    n, c = x.shape[0], x.shape[1]
    s = int(np.prod(x.shape[2:], dtype=np.int64))
    _native.sign_pack(x, threshold, out, n, c, s, isa)
    return out


__all__ = ["WORD_BITS", "BinaryConv", "sign_pack"]
