"""The executor: run a validated ``.bfm`` graph on numpy arrays.

:func:`load` reads and validates a file (:mod:`runtime.bfm`), prepares every node once
(binary layers get their weights laid out for the kernels) and returns a :class:`Model`.
Memory is planned once per (batch size, thread count): every value gets a buffer from an
arena in which buffers of values that are no longer needed are reused, plus the
scratch the kernels need; a steady-state :meth:`Model.run` allocates nothing but its
returned copies. Arenas are per calling thread, so one model serves concurrent callers;
the C kernels release the GIL.

Binary ops run in C (``runtime._native``); real-valued ops run in numpy (im2col plus a
BLAS matmul for convolutions).
"""

from __future__ import annotations

import itertools
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _native
from .bfm import ELEMENTWISE_OPS, FormatError, ValueInfo, infer_graph, read_bfm
from .blas import set_blas_threads
from .ops import BinaryConv, sign_pack
from .packing import words_for

__all__ = ["Model", "TensorSpec", "default_threads", "load"]

_PLANS_PER_THREAD = 4


def default_threads() -> int:
    """Cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: float32, batch first (``None``), other dims fixed."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str = "float32"


class _Plan:
    """Buffers for one batch size and thread count: values, temporaries, kernel scratch."""

    def __init__(self, n: int, threads: int) -> None:
        self.n = n
        self.threads = threads
        self.values: dict[str, np.ndarray] = {}
        self.temps: dict[tuple[int, str], np.ndarray] = {}
        self.scratch = np.empty(0, dtype=np.uint8)


Runner = Callable[[_Plan], None]
Preparer = Callable[[_Plan], None]


_SPLIT_MACS = 1 << 22  # a matrix product this large is split over the model's threads
_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _product(a: np.ndarray, b: np.ndarray, out: np.ndarray, threads: int) -> None:
    """``out = a @ b`` through single-threaded BLAS, rows split over ``threads`` threads
    when the product is large.

    OpenBLAS's own threads spin for a while after each call; on the cores the binary
    kernels' pool needs next, that made whole networks several times slower. So BLAS runs
    on one thread per call and the runtime splits big products itself (numpy releases
    the GIL inside BLAS).
    """
    rows = a.shape[0]
    parts = min(threads, rows, max(1, a.shape[0] * a.shape[1] * b.shape[1] // _SPLIT_MACS))
    if parts <= 1:
        np.dot(a, b, out=out)
        return
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=default_threads(), thread_name_prefix="bf")
        executor = _executor
    bounds = [rows * i // parts for i in range(parts + 1)]
    futures = [
        executor.submit(np.dot, a[r0:r1], b, out=out[r0:r1])
        for r0, r1 in itertools.pairwise(bounds[1:])
    ]
    np.dot(a[: bounds[1]], b, out=out[: bounds[1]])
    for future in futures:
        future.result()


def _concrete(info: ValueInfo, n: int) -> tuple[tuple[int, ...], np.dtype[Any]]:
    dims = tuple(int(d or 0) for d in info.shape[1:])
    if info.kind == "bits":
        c, spatial = dims[0], dims[1:]
        return (n, *spatial, words_for(c)), np.dtype(np.uint64)
    return (n, *dims), np.dtype(np.float32)


def _channel_view(vec: np.ndarray, ndim: int) -> np.ndarray:
    """A per-channel vector shaped to broadcast over ``(N, C, *S)``."""
    return vec.reshape((1, -1) + (1,) * (ndim - 2))


def _f32(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32)


class FloatConv:
    """A real convolution's weights, packed for the C kernel of the ISA in use.

    ``packed(isa)`` lays ``weight`` ``(cout, cin, kh, kw)`` out as blocks of the kernel's
    channel count ``mr``: ``packed[(cb * k + t) * mr + m] = weight[cb * mr + m].flat[t]``
    (zero past ``cout``), made once per block size.
    """

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None) -> None:
        self.weight = _f32(weight.reshape(weight.shape[0], -1))
        self.bias = bias
        self._packed: dict[int, np.ndarray] = {}

    def packed(self, isa: str | None = None) -> np.ndarray:
        """The weights in the layout of ``isa``'s kernel (default: the ISA in use)."""
        mr = int(_native.fconv_channels(isa))
        packed = self._packed.get(mr)
        if packed is None:
            cout, k = self.weight.shape
            blocks = -(-cout // mr)
            padded = np.zeros((blocks * mr, k), dtype=np.float32)
            padded[:cout] = self.weight
            packed = np.ascontiguousarray(padded.reshape(blocks, mr, k).transpose(0, 2, 1))
            packed = packed.reshape(-1)
            self._packed[mr] = packed
        return packed


class FloatLinear:
    """A real linear layer's float16 weights ``(out, in)``, packed once for
    ``_native.flinear``: blocks of 64 outputs, input-major,
    ``packed[(ob * in + i) * 64 + j] = weight[ob * 64 + j, i]`` (zero past ``out``)."""

    BLOCK = 64

    def __init__(self, weight: np.ndarray) -> None:
        out, fin = weight.shape
        blocks = -(-out // self.BLOCK)
        padded = np.zeros((blocks * self.BLOCK, fin), dtype=np.float16)
        padded[:out] = weight
        self.packed = np.ascontiguousarray(
            padded.reshape(blocks, self.BLOCK, fin).transpose(0, 2, 1)
        ).reshape(-1)
        self.in_features, self.out_features = int(fin), int(out)


class _Step:
    """One node: how to prepare its temporaries for a plan and how to run it."""

    def __init__(
        self,
        index: int,
        node: dict[str, Any],
        values: Mapping[str, ValueInfo],
        tensors: Mapping[str, np.ndarray],
        halves: Mapping[str, np.ndarray] | None = None,
        *,
        native_float: bool = True,
    ) -> None:
        self.index = index
        self.native_float = native_float  # real convs and F16 linears through C kernels
        # the file's float16 real weights, as stored (``linear`` computes on them in C)
        self.halves = {
            role: halves[t]
            for role, t in node.get("params", {}).items()
            if halves is not None and t in halves
        }
        self.name: str = node["name"]
        self.op: str = node["op"]
        self.inputs: list[str] = list(node["inputs"])
        self.output: str = node["outputs"][0]
        # further outputs a fused step writes too (the sign-packed copy of a fused pool)
        self.extra_outputs: list[str] = list(node["outputs"][1:])
        self.attrs: dict[str, Any] = dict(node.get("attrs", {}))
        self.params = {role: tensors[t] for role, t in node.get("params", {}).items()}
        self.in_info = [values[v] for v in self.inputs]
        self.out_info = values[self.output]
        self.extra_info = [values[v] for v in self.extra_outputs]
        self.alias = self.op in ("flatten", "reshape")  # output is a view of the input
        self.binary: BinaryConv | None = None
        # kernel scratch for (batch, threads) (real ops in C), besides the binary layers'
        self.scratch_bytes: Callable[[int, int], int] | None = None
        self.run: Callable[[_Plan, list[np.ndarray], np.ndarray], None] = self._build()

    # -- helpers --------------------------------------------------------------------------
    def temp(self, plan: _Plan, key: str, shape: tuple[int, ...], fill: float = 0.0) -> np.ndarray:
        """A per-plan temporary, created (and filled) once."""
        k = (self.index, key)
        buf = plan.temps.get(k)
        if buf is None:
            buf = np.full(shape, fill, dtype=np.float32)
            plan.temps[k] = buf
        return buf

    def _param(self, role: str) -> np.ndarray | None:
        return self.params.get(role)

    # -- building -------------------------------------------------------------------------
    def _build(self) -> Callable[[_Plan, list[np.ndarray], np.ndarray], None]:
        op = self.op
        if op == "sign_pack":
            threshold = self._param("threshold")

            def run_sign_pack(plan: _Plan, ins: list[np.ndarray], out: np.ndarray) -> None:
                sign_pack(ins[0], out, threshold=threshold)

            return run_sign_pack
        if op in ("bconv2d", "bconv1d", "blinear"):
            return self._build_binary()
        if op in ("conv2d", "conv1d"):
            return self._build_conv()
        if op in ("maxpool2d", "avgpool2d", "maxpool1d", "avgpool1d"):
            return self._build_pool()
        return self._build_elementwise()

    def _build_binary(self) -> Callable[[_Plan, list[np.ndarray], np.ndarray], None]:
        a, op = self.attrs, self.op
        weight = self.params["weight"]
        common: dict[str, Any] = {
            "scale": self.params["scale"],
            "bias": self._param("bias"),
            "slope": self._param("slope"),
            "out_threshold": self._param("out_threshold"),
            "activation": a.get("activation", "none"),
            "min_val": a.get("min_val", -1.0),
            "max_val": a.get("max_val", 1.0),
            "post_activation": a.get("post_activation", "none"),
            "output": a.get("output", "float"),
        }
        if op == "bconv2d":
            self.binary = BinaryConv.create(
                weight,
                in_channels=a["in_channels"],
                stride=tuple(a.get("stride", [1, 1])),
                padding=tuple(a.get("padding", [0, 0])),
                dilation=tuple(a.get("dilation", [1, 1])),
                pad_mode=a.get("pad_mode", "zero"),
                scale_h=self._param("scale_h"),
                scale_w=self._param("scale_w"),
                **common,
            )
        elif op == "bconv1d":
            scale_l = self._param("scale_l")
            self.binary = BinaryConv.create(
                weight.reshape(weight.shape[0], 1, *weight.shape[1:]),
                in_channels=a["in_channels"],
                stride=(1, a.get("stride", [1])[0]),
                padding=(0, a.get("padding", [0])[0]),
                dilation=(1, a.get("dilation", [1])[0]),
                pad_mode=a.get("pad_mode", "zero"),
                scale_h=None if scale_l is None else np.ones(1, dtype=np.float32),
                scale_w=scale_l,
                **common,
            )
        else:
            self.binary = BinaryConv.create(
                weight.reshape(weight.shape[0], 1, 1, weight.shape[1]),
                in_channels=a["in_features"],
                pad_mode="one",
                **common,
            )
        conv = self.binary
        shape_in = self.in_info[0].shape
        spatial = tuple(int(d or 0) for d in shape_in[2:])
        h, w = (1, 1) if op == "blinear" else ((1, spatial[0]) if op == "bconv1d" else spatial)
        cw = words_for(int(shape_in[1] or 0))
        out_shape_4d = conv.output_shape(1, h, w)[1:]

        def run_binary(plan: _Plan, ins: list[np.ndarray], out: np.ndarray) -> None:
            x = ins[0].reshape(plan.n, h, w, cw)
            residual = ins[1] if len(ins) > 1 else None
            conv(
                x,
                out.reshape(plan.n, *out_shape_4d),
                plan.scratch,
                residual=residual,
                threads=plan.threads,
            )

        return run_binary

    def _build_conv(self) -> Callable[[_Plan, list[np.ndarray], np.ndarray], None]:
        a = self.attrs
        nsp = 2 if self.op == "conv2d" else 1
        weight = self.params["weight"]
        bias = self._param("bias")
        groups = int(a.get("groups", 1))
        stride = tuple(a.get("stride", [1] * nsp))
        padding = tuple(a.get("padding", [0] * nsp))
        dilation = tuple(a.get("dilation", [1] * nsp))
        if nsp == 1:
            weight = weight.reshape(weight.shape[0], weight.shape[1], 1, weight.shape[2])
            stride, padding, dilation = (1, *stride), (0, *padding), (1, *dilation)
        cout, cin_g, kh, kw = (int(v) for v in weight.shape)
        sh, sw = (int(v) for v in stride)
        ph, pw = (int(v) for v in padding)
        dh, dw = (int(v) for v in dilation)
        in_dims = tuple(int(d or 0) for d in self.in_info[0].shape[1:])
        cin = in_dims[0]
        h, w = (1, in_dims[1]) if nsp == 1 else (in_dims[1], in_dims[2])
        fused_relu = bool(a.get(FUSED_RELU, False))
        if groups == 1 and sh * sw <= 64 and self.native_float:
            return self._build_fconv(
                weight, bias, (cin, h, w, cout, kh, kw, sh, sw, ph, pw, dh, dw), fused_relu
            )
        assert FUSED_POOL not in a  # _fuse_pool fuses only what _build_fconv runs
        if groups == cin and cin_g == 1:  # depthwise (any channel multiplier)
            geometry = (cin, h, w, cout // cin, kh, kw, sh, sw, ph, pw, dh, dw)
            return self._build_depthwise(weight, bias, geometry, fused_relu)
        ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        k = cin_g * kh * kw
        w_groups = np.ascontiguousarray(weight.reshape(groups, cout // groups, k))
        bias_col = None if bias is None else bias.reshape(cout, 1)
        pointwise = kh == kw == 1 and sh == sw == 1 and ph == pw == 0 and groups == 1
        phases = sorted({((ky * dh) % sh, (kx * dw) % sw) for ky in range(kh) for kx in range(kw)})
        phased = (sh > 1 or sw > 1) and kh * kw > len(phases)

        def run_conv(plan: _Plan, ins: list[np.ndarray], out: np.ndarray) -> None:
            n = plan.n
            x = ins[0].reshape(n, cin, h, w)
            out3 = out.reshape(n, cout, ho * wo)
            if pointwise:
                for b in range(n):
                    _product(w_groups[0], x[b].reshape(cin, h * w), out3[b], plan.threads)
            else:
                if ph or pw:
                    xp = self.temp(plan, "pad", (n, cin, h + 2 * ph, w + 2 * pw))
                    xp[:, :, ph : ph + h, pw : pw + w] = x
                else:
                    xp = x
                cols = self.temp(plan, "cols", (n, groups, k, ho * wo))
                cols6 = cols.reshape(n, cin, kh, kw, ho, wo)
                if phased:
                    # strided input: split it once into its sh x sw phase planes, so every
                    # tap copies whole contiguous rows (2x faster for the 7x7/2 stem)
                    hp, wp = xp.shape[2], xp.shape[3]
                    planes = {}
                    for py, px in phases:
                        plane = self.temp(
                            plan,
                            f"phase{py},{px}",
                            (n, cin, -(-(hp - py) // sh), -(-(wp - px) // sw)),
                        )
                        plane[...] = xp[:, :, py::sh, px::sw]
                        planes[py, px] = plane
                for ky in range(kh):
                    y0 = ky * dh
                    for kx in range(kw):
                        x0 = kx * dw
                        if phased:
                            plane = planes[y0 % sh, x0 % sw]
                            ry, rx = y0 // sh, x0 // sw
                            cols6[:, :, ky, kx] = plane[:, :, ry : ry + ho, rx : rx + wo]
                        else:
                            cols6[:, :, ky, kx] = xp[
                                :,
                                :,
                                y0 : y0 + sh * (ho - 1) + 1 : sh,
                                x0 : x0 + sw * (wo - 1) + 1 : sw,
                            ]
                out4 = out3.reshape(n, groups, cout // groups, ho * wo)
                for b in range(n):  # 2-d products go straight to BLAS
                    for gi in range(groups):
                        _product(w_groups[gi], cols[b, gi], out4[b, gi], plan.threads)
            if bias_col is not None:
                np.add(out3, bias_col, out=out3)
            if fused_relu:
                np.maximum(out3, np.float32(0), out=out3)

        return run_conv

    def _build_depthwise(
        self,
        weight: np.ndarray,
        bias: np.ndarray | None,
        geometry: tuple[int, ...],
        relu: bool,
    ) -> Callable[[_Plan, list[np.ndarray], np.ndarray], None]:
        """A depthwise convolution (groups = input channels, cout = multiplier x cin)
        through the C kernel (``runtime/csrc/dwconv``): an im2col product per group would
        be cin products of one row each."""
        w = _f32(weight.reshape(weight.shape[0], -1))
        b = None if bias is None else _f32(bias)
        self.scratch_bytes = lambda n, threads: int(
            _native.dwconv_scratch_bytes((n, *geometry), threads)
        )

        def run_depthwise(plan: _Plan, ins: list[np.ndarray], out: np.ndarray) -> None:
            geo = (plan.n, *geometry)
            _native.dwconv(ins[0], w, b, out, plan.scratch, geo, relu, plan.threads)

        return run_depthwise

    def _build_fconv(
        self,
        weight: np.ndarray,
        bias: np.ndarray | None,
        geometry: tuple[int, ...],
        relu: bool,
    ) -> Callable[[_Plan, list[np.ndarray], np.ndarray], None]:
        """A groups-1 convolution through the C kernel (``runtime/csrc/fconv``)."""
        conv = FloatConv(weight, None if bias is None else _f32(bias))
        pool_attrs = self.attrs.get(FUSED_POOL)
        pool = None
        if pool_attrs is not None:  # a max pooling fused after the conv (and relu)
            _, pho, pwo = (int(d or 0) for d in self.out_info.shape[1:])
            pool = (
                *pool_attrs["kernel_size"],
                *pool_attrs["stride"],
                *pool_attrs["padding"],
                pho,
                pwo,
            )
        bits_name = self.extra_outputs[0] if self.extra_outputs else None
        self.scratch_bytes = lambda n, threads: int(
            _native.fconv_scratch_bytes((n, *geometry), pool, threads, bits_name is not None)
        )
        threshold = self._param("threshold")  # of a fused sign_pack

        def run_fconv(plan: _Plan, ins: list[np.ndarray], out: np.ndarray) -> None:
            geo = (plan.n, *geometry)
            _native.fconv(
                ins[0],
                conv.packed(),
                conv.bias,
                out,
                plan.scratch,
                geo,
                relu,
                plan.threads,
                None,
                pool,
                None if bits_name is None else plan.values[bits_name],
                threshold,
            )

        return run_fconv

    def _build_pool(self) -> Callable[[_Plan, list[np.ndarray], np.ndarray], None]:
        a = self.attrs
        nsp = 2 if self.op.endswith("2d") else 1
        is_max = self.op.startswith("max")
        ks = [int(v) for v in a["kernel_size"]]
        st = [int(v) for v in a.get("stride", ks)]
        pd = [int(v) for v in a.get("padding", [0] * nsp)]
        in_dims = [int(d or 0) for d in self.in_info[0].shape[1:]]
        out_dims = [int(d or 0) for d in self.out_info.shape[1:]]
        if nsp == 1:
            ks, st, pd = [1, *ks], [1, *st], [0, *pd]
            in_dims = [in_dims[0], 1, in_dims[1]]
            out_dims = [out_dims[0], 1, out_dims[1]]
        c, h, w = in_dims
        _, ho, wo = out_dims
        (kh, kw), (sh, sw), (ph, pw) = ks, st, pd
        # padded extent covers every window (ceil_mode may reach past the right padding)
        hp = max(h + 2 * ph, (ho - 1) * sh + kh)
        wp = max(w + 2 * pw, (wo - 1) * sw + kw)
        include_pad = bool(a.get("count_include_pad", True))

        def counts(size: int, k: int, s: int, p: int, out_n: int) -> np.ndarray:
            """Elements each window divides by (numpy: out_n may be large)."""
            start = np.arange(out_n, dtype=np.int64) * s - p
            end = np.minimum(start + k, size + p)
            if not include_pad:
                start, end = np.maximum(start, 0), np.minimum(end, size)
            return (end - start).astype(np.float32)

        def inverse_counts(plan: _Plan) -> np.ndarray:
            """1 / window counts, made on a plan's first run (not at load: it is as large
            as the output, which only the file's declared shapes bound)."""
            key = (self.index, "inv")
            inv = plan.temps.get(key)
            if inv is None:
                divisor = np.outer(counts(h, kh, sh, ph, ho), counts(w, kw, sw, pw, wo))
                inv = plan.temps[key] = (1.0 / divisor).astype(np.float32)
            return inv

        fill = -np.inf if is_max else 0.0

        geometry = (h, w, ho, wo, kh, kw, sh, sw, ph, pw)

        def run_pool(plan: _Plan, ins: list[np.ndarray], out: np.ndarray) -> None:
            n = plan.n
            if is_max:  # in C: windows clipped to the input, no padded copy
                _native.maxpool2d(ins[0], out, self.temp(plan, "row", (w,)), (n * c, *geometry))
                return
            x = ins[0].reshape(n, c, h, w)
            if hp != h or wp != w:
                xp = self.temp(plan, "pad", (n, c, hp, wp), fill)
                xp[:, :, ph : ph + h, pw : pw + w] = x
            else:
                xp = x
            out4 = out.reshape(n, c, ho, wo)
            combine = np.maximum if is_max else np.add
            for ky in range(kh):
                for kx in range(kw):
                    window = xp[
                        :, :, ky : ky + sh * (ho - 1) + 1 : sh, kx : kx + sw * (wo - 1) + 1 : sw
                    ]
                    if ky == 0 and kx == 0:
                        np.copyto(out4, window)
                    else:
                        combine(out4, window, out=out4)
            if not is_max:
                np.multiply(out4, inverse_counts(plan), out=out4)

        return run_pool

    def _build_elementwise(self) -> Callable[[_Plan, list[np.ndarray], np.ndarray], None]:
        op, a = self.op, self.attrs
        ndim = len(self.in_info[0].shape)

        if op == "linear" and "weight" in self.halves and self.native_float:
            lin = FloatLinear(self.halves["weight"])
            bias = self._param("bias")
            fin, fout = lin.in_features, lin.out_features

            def run_flinear(plan: _Plan, ins: list[np.ndarray], out: np.ndarray) -> None:
                _native.flinear(ins[0], lin.packed, bias, out, plan.n, fin, fout)

            return run_flinear
        if op == "linear":
            wt = np.ascontiguousarray(self.params["weight"].T)
            bias = self._param("bias")

            def run_linear(plan: _Plan, ins: list[np.ndarray], out: np.ndarray) -> None:
                np.matmul(ins[0], wt, out=out)
                if bias is not None:
                    np.add(out, bias, out=out)

            return run_linear
        if op == "batchnorm":
            scale = _channel_view(self.params["scale"], ndim)
            shift = _channel_view(self.params["shift"], ndim)

            def run_bn(plan: _Plan, ins: list[np.ndarray], out: np.ndarray) -> None:
                np.multiply(ins[0], scale, out=out)
                np.add(out, shift, out=out)

            return run_bn
        if op in ("relu", "sigmoid", "tanh", "hardtanh"):
            lo = float(a.get("min_val", -1.0))
            hi = float(a.get("max_val", 1.0))

            def run_unary(plan: _Plan, ins: list[np.ndarray], out: np.ndarray) -> None:
                x = ins[0]
                if op == "relu":
                    np.maximum(x, np.float32(0), out=out)
                elif op == "tanh":
                    np.tanh(x, out=out)
                elif op == "hardtanh":
                    np.clip(x, np.float32(lo), np.float32(hi), out=out)
                else:
                    np.negative(x, out=out)
                    np.exp(out, out=out)
                    np.add(out, np.float32(1), out=out)
                    np.reciprocal(out, out=out)

            return run_unary
        if op in ("prelu", "leaky_relu"):
            if op == "prelu":
                slope: np.ndarray | np.float32 = _channel_view(self.params["slope"], ndim)
            else:
                slope = np.float32(a.get("negative_slope", 0.01))

            def run_leaky(plan: _Plan, ins: list[np.ndarray], out: np.ndarray) -> None:
                x = ins[0]
                np.multiply(x, slope, out=out)
                np.copyto(out, x, where=x >= 0)

            return run_leaky
        if op == "layernorm":
            weight = self.params["weight"]
            ln_bias = self._param("bias")
            axes = tuple(range(ndim - weight.ndim, ndim))
            eps = np.float32(a.get("eps", 1e-5))

            def run_layernorm(plan: _Plan, ins: list[np.ndarray], out: np.ndarray) -> None:
                x = ins[0]
                np.subtract(x, x.mean(axis=axes, keepdims=True), out=out)
                var = np.square(out).mean(axis=axes, keepdims=True)
                np.multiply(out, 1 / np.sqrt(var + eps), out=out)
                np.multiply(out, weight, out=out)
                if ln_bias is not None:
                    np.add(out, ln_bias, out=out)

            return run_layernorm
        if op in ("elu", "selu", "softplus", "mish"):
            # selu is SELU_SCALE * elu with alpha SELU_ALPHA
            alpha = np.float32(SELU_ALPHA if op == "selu" else a.get("alpha", 1.0))

            def run_smooth(plan: _Plan, ins: list[np.ndarray], out: np.ndarray) -> None:
                x = ins[0]
                if op in ("elu", "selu"):  # x > 0 ? x : alpha (e^x - 1)
                    np.expm1(np.minimum(x, np.float32(0)), out=out)
                    np.multiply(out, alpha, out=out)
                    np.copyto(out, x, where=x > 0)
                    if op == "selu":
                        np.multiply(out, np.float32(SELU_SCALE), out=out)
                else:  # softplus log(1 + e^x) = max(x, 0) + log1p(e^-|x|); mish x tanh(it)
                    np.negative(np.abs(x), out=out)
                    np.exp(out, out=out)
                    np.log1p(out, out=out)
                    np.add(out, np.maximum(x, np.float32(0)), out=out)
                    if op == "mish":
                        np.tanh(out, out=out)
                        np.multiply(out, x, out=out)

            return run_smooth
        if op == "erf":

            def run_erf(plan: _Plan, ins: list[np.ndarray], out: np.ndarray) -> None:
                _native.erf(ins[0], out, False)

            return run_erf
        if op in ("hardsigmoid", "hardswish"):
            # hardswish: x * hardsigmoid(x) with alpha 1/6, beta 1/2 (ONNX's, torch's)
            alpha = np.float32(a.get("alpha", 0.2) if op == "hardsigmoid" else 1 / 6)
            beta = np.float32(a.get("beta", 0.5))

            def run_hard(plan: _Plan, ins: list[np.ndarray], out: np.ndarray) -> None:
                x = ins[0]
                np.multiply(x, alpha, out=out)
                np.add(out, beta, out=out)
                np.clip(out, np.float32(0), np.float32(1), out=out)
                if op == "hardswish":
                    np.multiply(out, x, out=out)

            return run_hard
        if op == "gelu":
            tanh_form = a.get("approximate", "none") == "tanh"

            def run_gelu(plan: _Plan, ins: list[np.ndarray], out: np.ndarray) -> None:
                x = ins[0]
                if not tanh_form:  # x/2 (1 + erf(x / sqrt(2))), in C (libm's erff)
                    _native.erf(x, out, True)
                    return
                # x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
                inner = x + np.float32(0.044715) * x * x * x
                np.tanh(np.float32(math.sqrt(2 / math.pi)) * inner, out=out)
                np.add(out, np.float32(1), out=out)
                np.multiply(out, x, out=out)
                np.multiply(out, np.float32(0.5), out=out)

            return run_gelu
        if op in ("softmax", "log_softmax"):
            axis = int(a.get("axis", 1))

            def run_softmax(plan: _Plan, ins: list[np.ndarray], out: np.ndarray) -> None:
                x = ins[0]
                np.subtract(x, x.max(axis=axis, keepdims=True), out=out)
                if op == "log_softmax":  # x - max - log(sum(e^(x - max)))
                    np.subtract(out, np.log(np.exp(out).sum(axis=axis, keepdims=True)), out=out)
                    return
                np.exp(out, out=out)
                np.divide(out, out.sum(axis=axis, keepdims=True), out=out)

            return run_softmax
        if op == "global_avgpool":

            def run_gap(plan: _Plan, ins: list[np.ndarray], out: np.ndarray) -> None:
                x = ins[0]
                x3 = x.reshape(x.shape[0], x.shape[1], -1)
                np.add.reduce(x3, axis=2, out=out)  # a third faster than np.mean
                np.multiply(out, np.float32(1.0 / x3.shape[2]), out=out)

            return run_gap
        if op in ("add", "mul"):
            ufunc = np.add if op == "add" else np.multiply
            per_channel = self.in_info[1].shape != self.in_info[0].shape

            def run_binary_op(plan: _Plan, ins: list[np.ndarray], out: np.ndarray) -> None:
                b = ins[1]
                if per_channel:
                    b = b.reshape(b.shape + (1,) * (ndim - 2))
                ufunc(ins[0], b, out=out)

            return run_binary_op
        if op == "concat":
            axis = int(a.get("axis", 1))

            def run_concat(plan: _Plan, ins: list[np.ndarray], out: np.ndarray) -> None:
                np.concatenate(ins, axis=axis, out=out)

            return run_concat
        if op == "pad":
            pads = [int(v) for v in a["pads"]]
            value = np.float32(a.get("value", 0.0))
            nsp = len(pads) // 2
            inner = tuple(
                slice(pads[i], pads[i] + int(self.in_info[0].shape[2 + i] or 0)) for i in range(nsp)
            )

            def run_pad(plan: _Plan, ins: list[np.ndarray], out: np.ndarray) -> None:
                out.fill(value)
                out[(slice(None), slice(None), *inner)] = ins[0]

            return run_pad
        if op == "transpose":
            perm = tuple(int(v) for v in a["perm"])

            def run_transpose(plan: _Plan, ins: list[np.ndarray], out: np.ndarray) -> None:
                np.copyto(out, ins[0].transpose(perm))

            return run_transpose
        if op == "slice":
            part = (slice(None),) * int(a["axis"]) + (slice(int(a["start"]), int(a["end"])),)

            def run_slice(plan: _Plan, ins: list[np.ndarray], out: np.ndarray) -> None:
                np.copyto(out, ins[0][part])

            return run_slice
        if op == "upsample":
            scales = tuple(int(v) for v in a["scales"])

            def run_upsample(plan: _Plan, ins: list[np.ndarray], out: np.ndarray) -> None:
                x = ins[0]
                # out viewed as (N, C, H, sh, W, sw): every copy of a pixel at once
                split: list[int] = [*x.shape[:2]]
                src: tuple[Any, ...] = (slice(None), slice(None))
                for size, k in zip(x.shape[2:], scales, strict=True):
                    split += [size, k]
                    src += (slice(None), None)
                view = out.reshape(split)  # a view of out's C-ordered arena buffer
                if np.shares_memory(view, out):
                    view[...] = x[src]
                else:  # pragma: no cover - a copy: write it back
                    out[...] = np.broadcast_to(x[src], split).reshape(out.shape)

            return run_upsample
        if op == "matmul":

            def run_matmul(plan: _Plan, ins: list[np.ndarray], out: np.ndarray) -> None:
                np.matmul(ins[0], ins[1], out=out)

            return run_matmul
        if op == "broadcast":
            constant = self._param("value")
            assert constant is not None

            def run_broadcast(plan: _Plan, ins: list[np.ndarray], out: np.ndarray) -> None:
                np.copyto(out, constant[None])

            return run_broadcast
        if op in ("flatten", "reshape"):

            def run_view(plan: _Plan, ins: list[np.ndarray], out: np.ndarray) -> None:
                return None  # the output buffer is a view of the input (see _Plan building)

            return run_view
        raise FormatError(f"node {self.name!r}: op {op!r} has no implementation")


SELU_ALPHA, SELU_SCALE = 1.6732632423543772, 1.0507009873554805


NATIVE_FLOAT_ISAS = ("avx2", "avx512bw", "avx512")  # ISAs with vector fconv/flinear kernels
FUSED_RELU = "__fused_relu"  # set by _fuse_relu on a loaded (already validated) node
FUSED_POOL = "__fused_maxpool"  # set by _fuse_pool: the max pooling's attrs


def _fuse_sign_pack(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Let a real conv with a fused max pooling also sign-pack its pooled output, where a
    ``sign_pack`` of that output comes right after it: each band is packed while in cache
    and the step gets the packed value as a second output (the float one stays, for its
    other readers)."""
    result: list[dict[str, Any]] = []
    for node in nodes:
        source = result[-1] if result else None
        if (
            node["op"] == "sign_pack"
            and source is not None
            and source["op"] == "conv2d"
            and FUSED_POOL in source.get("attrs", {})
            and len(source["outputs"]) == 1
            and source["outputs"][0] == node["inputs"][0]
        ):
            params = dict(source.get("params", {}))
            if "threshold" in node.get("params", {}):
                params["threshold"] = node["params"]["threshold"]
            outputs = [*source["outputs"], *node["outputs"]]
            result[-1] = {**source, "outputs": outputs, "params": params}
            continue
        result.append(node)
    return result


def _reader_counts(nodes: list[dict[str, Any]]) -> dict[str, int]:
    """How many node inputs read each value (a fusion needs its source read only once)."""
    readers: dict[str, int] = {}
    for node in nodes:
        for name in node["inputs"]:
            readers[name] = readers.get(name, 0) + 1
    return readers


def _fuse_pool(nodes: list[dict[str, Any]], outputs: set[str]) -> list[dict[str, Any]]:
    """Run a ``maxpool2d`` inside the real conv (and fused relu) before it, where that
    conv feeds only it and runs in C: the conv's output is then pooled band by band while
    in cache and never written whole (``runtime/csrc/fconv``)."""
    readers = _reader_counts(nodes)
    result: list[dict[str, Any]] = []
    for node in nodes:
        source = result[-1] if result else None
        if (
            node["op"] == "maxpool2d"
            and source is not None
            and source["op"] == "conv2d"
            and int(source.get("attrs", {}).get("groups", 1)) == 1
            and source["outputs"][0] == node["inputs"][0]
            and readers.get(source["outputs"][0]) == 1
            and source["outputs"][0] not in outputs
        ):
            pa = node.get("attrs", {})
            k = [int(v) for v in pa["kernel_size"]]
            st = [int(v) for v in pa.get("stride", k)]
            pd = [int(v) for v in pa.get("padding", [0, 0])]
            conv_stride = [int(v) for v in source.get("attrs", {}).get("stride", [1, 1])]
            if st[0] <= k[0] and conv_stride[0] * conv_stride[1] <= 64:
                pool = {"kernel_size": k, "stride": st, "padding": pd}
                attrs = {**source.get("attrs", {}), FUSED_POOL: pool}
                result[-1] = {**source, "outputs": list(node["outputs"]), "attrs": attrs}
                continue
        result.append(node)
    return result


def _fuse_relu(nodes: list[dict[str, Any]], outputs: set[str]) -> list[dict[str, Any]]:
    """Apply a ``relu`` inside the real conv before it, where that conv feeds only it."""
    readers = _reader_counts(nodes)
    result: list[dict[str, Any]] = []
    for node in nodes:
        source = result[-1] if result else None
        if (
            node["op"] == "relu"
            and source is not None
            and source["op"] in ("conv2d", "conv1d")
            and source["outputs"][0] == node["inputs"][0]
            and readers.get(source["outputs"][0]) == 1
            and source["outputs"][0] not in outputs
        ):
            attrs = {**source.get("attrs", {}), FUSED_RELU: True}
            result[-1] = {**source, "outputs": list(node["outputs"]), "attrs": attrs}
            continue
        result.append(node)
    return result


# ops that act on each element alone: a transpose moves across them unchanged
_LAYOUT_FREE = frozenset(ELEMENTWISE_OPS) - {"prelu", "softmax", "log_softmax"}


def _cancel_transposes(
    nodes: list[dict[str, Any]], values: dict[str, ValueInfo], outputs: set[str]
) -> list[dict[str, Any]]:
    """Drop each pair of ``transpose`` nodes where the second undoes the first, with only
    elementwise ops (GELU, ReLU, ...) between them and each value on the way read once:
    the engine writes such pairs around consecutive Linear layers on tokens (features back
    last after one, first again before the next). The ops between then run on the first
    one's input layout (``values`` gets their shapes), and the second one's readers read
    the last of them (or the first transpose's input)."""
    readers = _reader_counts(nodes)
    producer = {node["outputs"][0]: node for node in nodes}
    rename: dict[str, str] = {}
    dropped: set[int] = set()
    for node in nodes:
        if node["op"] != "transpose" or node["outputs"][0] in outputs:
            continue
        between: list[dict[str, Any]] = []  # the elementwise ops, last first
        source = producer.get(node["inputs"][0])
        while source is not None and source["op"] in _LAYOUT_FREE and len(between) < 16:
            between.append(source)
            source = producer.get(source["inputs"][0])
        if (
            source is None
            or source["op"] != "transpose"
            or id(source) in dropped
            or any(
                readers.get(n["outputs"][0]) != 1 or n["outputs"][0] in outputs
                for n in [source, *between]
            )
        ):
            continue
        first, second = source["attrs"]["perm"], node["attrs"]["perm"]
        if [int(first[int(axis)]) for axis in second] != list(range(len(second))):
            continue
        start = rename.get(source["inputs"][0], source["inputs"][0])
        layout = values[start].shape
        for op in between:
            values[op["outputs"][0]] = ValueInfo(values[op["outputs"][0]].kind, layout)
        rename[source["outputs"][0]] = start
        rename[node["outputs"][0]] = between[0]["outputs"][0] if between else start
        dropped.update((id(source), id(node)))
    result = []
    for node in nodes:
        if id(node) in dropped:
            continue
        if any(name in rename for name in node["inputs"]):
            node = {**node, "inputs": [rename.get(name, name) for name in node["inputs"]]}
        result.append(node)
    return result


def _fold_batchnorm(
    nodes: list[dict[str, Any]], tensors: Mapping[str, np.ndarray], outputs: set[str]
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Fold each ``batchnorm`` into the real conv or linear layer before it, where that
    layer's output feeds only the batch norm: ``W' = W * scale[c]``,
    ``b' = b * scale[c] + shift[c]``. The graph's meaning is unchanged."""
    readers = _reader_counts(nodes)
    producer = {node["outputs"][0]: node for node in nodes}
    tensors = dict(tensors)
    result = []
    for node in nodes:
        source = producer.get(node["inputs"][0]) if node["op"] == "batchnorm" else None
        if (
            source is None
            or source["op"] not in ("conv2d", "conv1d", "linear")
            or readers.get(source["outputs"][0]) != 1
            or source["outputs"][0] in outputs
        ):
            result.append(node)
            continue
        scale = tensors[node["params"]["scale"]].astype(np.float64)
        shift = tensors[node["params"]["shift"]].astype(np.float64)
        params = dict(source.get("params", {}))
        weight = tensors[params["weight"]].astype(np.float64)
        bias = tensors[params["bias"]].astype(np.float64) if "bias" in params else 0.0
        key = f"{source['name']}+{node['name']}"
        tensors[f"{key}.weight"] = (
            weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
        ).astype(np.float32)
        tensors[f"{key}.bias"] = (bias * scale + shift).astype(np.float32)
        params.update(weight=f"{key}.weight", bias=f"{key}.bias")
        index = next(i for i, n in enumerate(result) if n is source)
        result[index] = {**source, "outputs": list(node["outputs"]), "params": params}
    return result, tensors


class Model:
    """A loaded ``.bfm`` model: call :meth:`run`. Safe to share between threads."""

    def __init__(
        self,
        graph: dict[str, Any],
        tensors: Mapping[str, np.ndarray],
        metadata: Mapping[str, Any],
        *,
        threads: int | None = None,
    ) -> None:
        values, nodes = infer_graph(graph, tensors)
        halves = {name: a for name, a in tensors.items() if a.dtype == np.float16}
        tensors = {  # half-precision real weights compute in float32
            name: array.astype(np.float32) if array.dtype == np.float16 else array
            for name, array in tensors.items()
        }
        self._values = values
        self.inputs: list[TensorSpec] = [
            TensorSpec(v["name"], tuple(v["shape"])) for v in graph["inputs"]
        ]
        self.outputs: list[TensorSpec] = [
            TensorSpec(v["name"], tuple(v["shape"])) for v in graph["outputs"]
        ]
        self.metadata: dict[str, Any] = {**metadata, "graph": graph}
        output_names = {v["name"] for v in graph["outputs"]}
        nodes = _cancel_transposes(nodes, values, output_names)
        nodes, tensors = _fold_batchnorm(nodes, tensors, output_names)
        nodes = _fuse_relu(nodes, output_names)
        # the C float kernels where the ISA in use has vector ones; the scalar ones (also
        # NEON's) are several times slower than numpy's BLAS, which those ISAs keep
        native_float = _native.isa() in NATIVE_FLOAT_ISAS
        if native_float:
            nodes = _fuse_sign_pack(_fuse_pool(nodes, output_names))
        self._steps = [
            _Step(i, node, values, tensors, halves, native_float=native_float)
            for i, node in enumerate(nodes)
        ]
        self._threads = default_threads() if threads is None else self._check_threads(threads)
        self._local = threading.local()
        self._last_use = self._liveness()

    @staticmethod
    def _check_threads(threads: int) -> int:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        return threads

    @property
    def threads(self) -> int:
        """Threads the binary kernels may use (default: every core this process may use)."""
        return self._threads

    @threads.setter
    def threads(self, value: int) -> None:
        self._threads = self._check_threads(value)

    def _liveness(self) -> dict[str, int]:
        """Index of the last step reading each value (graph outputs live forever)."""
        last: dict[str, int] = {}
        base: dict[str, str] = {}  # a view's underlying buffer
        for step in self._steps:
            for name in step.inputs:
                last[base.get(name, name)] = step.index
            if step.alias:
                base[step.output] = base.get(step.inputs[0], step.inputs[0])
        forever = len(self._steps)
        for spec in self.outputs:
            last[base.get(spec.name, spec.name)] = forever
        self._base = base
        return last

    def _make_plan(self, n: int, threads: int) -> _Plan:
        plan = _Plan(n, threads)
        free: dict[tuple[tuple[int, ...], str], list[np.ndarray]] = {}
        live_until: dict[str, int] = {}
        for spec in self.inputs:
            shape, dtype = _concrete(self._values[spec.name], n)
            plan.values[spec.name] = np.empty(shape, dtype=dtype)
            live_until[spec.name] = self._last_use.get(spec.name, -1)
        scratch = 0
        for step in self._steps:
            shape, dtype = _concrete(step.out_info, n)
            if step.alias:
                plan.values[step.output] = plan.values[step.inputs[0]].reshape(shape)
            else:
                outs = [(step.output, step.out_info)]
                outs += zip(step.extra_outputs, step.extra_info, strict=True)
                for name, info in outs:
                    shape, dtype = _concrete(info, n)
                    pool = free.get((shape, dtype.str))
                    buf = pool.pop() if pool else np.empty(shape, dtype=dtype)
                    plan.values[name] = buf
                    live_until[name] = self._last_use.get(name, step.index)
            if step.binary is not None:
                scratch = max(scratch, step.binary.scratch_bytes(threads))
            if step.scratch_bytes is not None:
                scratch = max(scratch, step.scratch_bytes(n, threads))
            # buffers whose last reader is this step can serve later steps
            for name, last in list(live_until.items()):
                if last <= step.index:
                    arr = plan.values[name]
                    free.setdefault((arr.shape, arr.dtype.str), []).append(arr)
                    del live_until[name]
        plan.scratch = np.empty(max(scratch, 64), dtype=np.uint8)
        return plan

    def _plan(self, n: int) -> _Plan:
        cache: OrderedDict[tuple[int, int], _Plan] | None = getattr(self._local, "plans", None)
        if cache is None:
            cache = OrderedDict()
            self._local.plans = cache
        key = (n, self._threads)
        plan = cache.get(key)
        if plan is None:
            plan = self._make_plan(n, self._threads)
            cache[key] = plan
            while len(cache) > _PLANS_PER_THREAD:
                cache.popitem(last=False)
        else:
            cache.move_to_end(key)
        return plan

    def _feeds(self, x: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if isinstance(x, Mapping):
            missing = {s.name for s in self.inputs} - set(x)
            if missing:
                raise ValueError(f"missing inputs: {sorted(missing)}")
            feeds = dict(x)
        else:
            if len(self.inputs) != 1:
                raise ValueError(f"the model has {len(self.inputs)} inputs: pass a dict")
            feeds = {self.inputs[0].name: x}
        result = {}
        batch = None
        for spec in self.inputs:
            arr = np.asarray(feeds[spec.name])
            if arr.dtype.kind not in "fiub":
                raise ValueError(f"input {spec.name!r}: expected numbers, got dtype {arr.dtype}")
            if arr.ndim != len(spec.shape) or tuple(arr.shape[1:]) != spec.shape[1:]:
                raise ValueError(
                    f"input {spec.name!r}: expected shape (batch, "
                    f"{', '.join(str(d) for d in spec.shape[1:])}), got {arr.shape}"
                )
            if arr.shape[0] < 1:
                raise ValueError(f"input {spec.name!r}: the batch must hold at least one item")
            if batch is not None and arr.shape[0] != batch:
                raise ValueError("all inputs must have the same batch size")
            batch = arr.shape[0]
            result[spec.name] = arr
        return result

    def run(self, x: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray | dict[str, np.ndarray]:
        """Run the model on float32 ``x`` of the declared shape (any batch >= 1).

        With several inputs pass a dict by name. Returns the output array, or a dict of
        outputs when the model has several.
        """
        feeds = self._feeds(x)
        n = next(iter(feeds.values())).shape[0]
        plan = self._plan(n)
        set_blas_threads(1)  # see _product: BLAS threads would spin against the kernels'
        for name, arr in feeds.items():
            np.copyto(plan.values[name], arr, casting="unsafe")
        values = plan.values
        for step in self._steps:
            step.run(plan, [values[v] for v in step.inputs], values[step.output])
        outs = {spec.name: values[spec.name].copy() for spec in self.outputs}
        if len(outs) == 1:
            return next(iter(outs.values()))
        return outs


def load(
    source: str | os.PathLike[str] | bytes | bytearray | memoryview, *, threads: int | None = None
) -> Model:
    """Read, validate and prepare a ``.bfm`` model (a path or the file's bytes)."""
    graph, tensors, metadata = read_bfm(source)
    return Model(graph, tensors, metadata, threads=threads)
