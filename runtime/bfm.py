"""Read, validate and write packed model files (``.bfm``, see ``docs/format.md``).

Everything a file declares is checked here, in Python, before any C kernel sees a buffer:
the format name and version, the graph (ops, attribute names and types, params), every
tensor's dtype and shape against what its op needs, dangling and unreferenced tensors,
value names defined once and before use, inferred shapes, padding bits of packed weights,
and size limits. A failure raises :class:`FormatError` naming the node, tensor or key.
"""

from __future__ import annotations

import json
import math
import os
import reprlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .packing import WORD_BITS, words_for

FORMAT_NAME = "bitfactor.bfm"
FORMAT_VERSION = "1"

MAX_FILE_BYTES = 4 << 30
MAX_HEADER_BYTES = 64 << 20
MAX_TENSORS = 100_000
MAX_TENSOR_ELEMENTS = 1 << 31
MAX_TENSOR_DIMS = 8
MAX_NODES = 100_000
MAX_DIM = 1 << 24
MAX_FLOAT32 = float(np.finfo(np.float32).max)
MAX_VALUE_ELEMENTS = 1 << 30  # per batch item, for every value of the graph
# a binary layer's dot products (in_channels x kernel taps) stay below 2**30: the C kernels'
# int32 accumulators hold K - 2 * popcount without overflow
MAX_BINARY_TAPS = (1 << 30) - 1
MAX_MATMUL_MACS = 1 << 34  # per sample, a matmul of two values (a ViT-L attention: ~2**29)

_SAFETENSORS_DTYPES: dict[str, np.dtype[Any]] = {
    "U64": np.dtype("<u8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
}
# real conv/linear weights may be stored in half precision (read back as float32)
REAL_WEIGHT = ("F32", "F16")


class FormatError(ValueError):
    """A ``.bfm`` file (or the graph and tensors given to :func:`write_bfm`) is invalid."""


@dataclass(frozen=True)
class ValueInfo:
    """A value of the graph: ``float`` (NC*S float32) or ``bits`` (packed channels-last).

    ``shape`` is the logical shape with the batch dimension first, as ``None``.
    """

    kind: str
    shape: tuple[int | None, ...]


# ---------------------------------------------------------------------------------------
# attribute checking helpers


def _fail(where: str, message: str) -> FormatError:
    return FormatError(f"{where}: {message}")


def _int(where: str, value: Any, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(where, f"expected an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise _fail(where, f"must be >= {minimum}, got {value}")
    if abs(value) > MAX_DIM:
        raise _fail(where, f"{value} is out of range")
    return value


def _ints(where: str, value: Any, n: int, *, minimum: int) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) != n:
        raise _fail(where, f"expected a list of {n} integers, got {value!r}")
    return tuple(_int(f"{where}[{i}]", v, minimum=minimum) for i, v in enumerate(value))


def _number(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(where, f"expected a number, got {value!r}")
    if not math.isfinite(value):
        raise _fail(where, f"expected a finite number, got {value!r}")
    return float(value)


def _choice(where: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise _fail(where, f"expected one of {', '.join(choices)}, got {value!r}")
    return str(value)


def _bool(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(where, f"expected true or false, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------
# per-op shape inference and checks


OUTPUT_TRANSFORM_ATTRS = {"activation", "post_activation", "output", "min_val", "max_val"}
BINARY_OPS = {"sign_pack", "bconv2d", "bconv1d", "blinear"}
# one float input, an output of its shape (each op's attrs and params checked below)
ELEMENTWISE_OPS = (
    "relu",
    "sigmoid",
    "tanh",
    "prelu",
    "leaky_relu",
    "hardtanh",
    "softmax",
    "log_softmax",
    "gelu",
    "hardsigmoid",
    "hardswish",
    "erf",
    "elu",
    "selu",
    "softplus",
    "mish",
)
REAL_OPS = {
    "conv2d",
    "conv1d",
    "linear",
    "batchnorm",
    "layernorm",
    "maxpool2d",
    "avgpool2d",
    "maxpool1d",
    "avgpool1d",
    "global_avgpool",
    "add",
    "mul",
    "flatten",
    "reshape",
    "concat",
    "pad",
    "transpose",
    "upsample",
    "matmul",
    "broadcast",
    "slice",
    *ELEMENTWISE_OPS,
}
KNOWN_OPS = BINARY_OPS | REAL_OPS


class _Node:
    """A node under validation: checks its attrs and params, records tensor uses."""

    def __init__(self, raw: Any, index: int, tensors: Mapping[str, np.ndarray]) -> None:
        if not isinstance(raw, dict):
            raise FormatError(f"graph.nodes[{index}]: expected an object")
        unknown = set(raw) - {"op", "name", "inputs", "outputs", "attrs", "params"}
        if unknown:
            raise FormatError(f"graph.nodes[{index}]: unknown keys {sorted(unknown)}")
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise FormatError(f"graph.nodes[{index}]: 'name' must be a non-empty string")
        self.name = name
        self.where = f"node {name!r}"
        op = raw.get("op")
        if not isinstance(op, str) or op not in KNOWN_OPS:
            raise FormatError(f"{self.where}: unknown op {op!r}")
        self.op: str = op
        self.inputs = self._names("inputs", raw.get("inputs"))
        self.outputs = self._names("outputs", raw.get("outputs"))
        attrs = raw.get("attrs", {})
        params = raw.get("params", {})
        if not isinstance(attrs, dict):
            raise FormatError(f"{self.where}: 'attrs' must be an object")
        if not isinstance(params, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in params.items()
        ):
            raise FormatError(f"{self.where}: 'params' must map roles to tensor names")
        self.attrs: dict[str, Any] = attrs
        self.params: dict[str, str] = params
        self.tensors = tensors
        self._attrs_seen: set[str] = set()
        self._params_seen: set[str] = set()

    def _names(self, key: str, value: Any) -> list[str]:
        if not isinstance(value, list) or not value:
            raise FormatError(f"{self.where}: {key!r} must be a non-empty list of names")
        if not all(isinstance(v, str) and v for v in value):
            raise FormatError(f"{self.where}: {key!r} must hold non-empty strings")
        return list(value)

    def attr(self, key: str, default: Any = None, *, required: bool = False) -> Any:
        self._attrs_seen.add(key)
        if key not in self.attrs:
            if required:
                raise FormatError(f"{self.where}: missing attr {key!r}")
            return default
        return self.attrs[key]

    def param(
        self,
        role: str,
        dtype: str | tuple[str, ...],
        shape: tuple[int, ...],
        *,
        required: bool = True,
    ) -> str | None:
        self._params_seen.add(role)
        tensor_name = self.params.get(role)
        if tensor_name is None:
            if required:
                raise FormatError(f"{self.where}: missing param {role!r}")
            return None
        if tensor_name not in self.tensors:
            raise FormatError(f"{self.where}: param {role!r} names missing tensor {tensor_name!r}")
        array = self.tensors[tensor_name]
        allowed = (dtype,) if isinstance(dtype, str) else dtype
        if array.dtype not in [_SAFETENSORS_DTYPES[d] for d in allowed]:
            raise FormatError(
                f"tensor {tensor_name!r} ({self.where}, {role}): dtype {array.dtype}, "
                f"expected {' or '.join(allowed)}"
            )
        if tuple(array.shape) != shape:
            raise FormatError(
                f"tensor {tensor_name!r} ({self.where}, {role}): shape {tuple(array.shape)}, "
                f"expected {shape}"
            )
        return tensor_name

    def finish(self) -> None:
        extra_attrs = set(self.attrs) - self._attrs_seen
        if extra_attrs:
            raise FormatError(f"{self.where}: unknown attrs {sorted(extra_attrs)} for {self.op}")
        extra_params = set(self.params) - self._params_seen
        if extra_params:
            raise FormatError(f"{self.where}: unknown params {sorted(extra_params)} for {self.op}")

    def n_inputs(self, *allowed: int) -> None:
        if len(self.inputs) not in allowed:
            raise FormatError(
                f"{self.where}: {self.op} takes {' or '.join(map(str, allowed))} inputs, "
                f"got {len(self.inputs)}"
            )
        if len(self.outputs) != 1:
            raise FormatError(f"{self.where}: {self.op} has exactly one output")


def _conv_out(where: str, size: int, k: int, s: int, p: int, d: int) -> int:
    extent = d * (k - 1) + 1
    if size + 2 * p < extent:
        raise _fail(where, f"kernel extent {extent} exceeds padded input {size + 2 * p}")
    return (size + 2 * p - extent) // s + 1


def _pool_out(where: str, size: int, k: int, s: int, p: int, ceil_mode: bool) -> int:
    if 2 * p > k:
        raise _fail(where, f"padding {p} must be at most half the kernel size {k}")
    if size + 2 * p < k:
        raise _fail(where, f"kernel {k} exceeds padded input {size + 2 * p}")
    num = size + 2 * p - k
    out = (-(-num // s) if ceil_mode else num // s) + 1
    # torch: the last window must start inside the input or left padding
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _output_transform(node: _Node, out_shape: tuple[int | None, ...], spatial: int) -> str:
    """Check the fused output transform's attrs and params; return the output kind."""
    w = node.where
    cout = out_shape[1]
    assert cout is not None
    activation = _choice(
        f"{w}: attr 'activation'",
        node.attr("activation", "none"),
        ("none", "relu", "prelu", "hardtanh"),
    )
    min_val = _number(f"{w}: attr 'min_val'", node.attr("min_val", -1.0))
    max_val = _number(f"{w}: attr 'max_val'", node.attr("max_val", 1.0))
    if min_val > max_val:
        raise _fail(w, f"min_val {min_val} > max_val {max_val}")
    _choice(f"{w}: attr 'post_activation'", node.attr("post_activation", "none"), ("none", "relu"))
    output = _choice(f"{w}: attr 'output'", node.attr("output", "float"), ("float", "bits"))
    node.param("scale", "F32", (cout,))
    node.param("bias", "F32", (cout,), required=False)
    node.param("slope", "F32", (cout,), required=activation == "prelu")
    if activation != "prelu" and "slope" in node.params:
        raise _fail(w, "param 'slope' needs activation 'prelu'")
    node.param("out_threshold", "F32", (cout,), required=False)
    if output != "bits" and "out_threshold" in node.params:
        raise _fail(w, "param 'out_threshold' needs output 'bits'")
    if spatial == 2:
        has_h = node.param("scale_h", "F32", (int(out_shape[2] or 0),), required=False)
        has_w = node.param("scale_w", "F32", (int(out_shape[3] or 0),), required=False)
        if (has_h is None) != (has_w is None):
            raise _fail(w, "params 'scale_h' and 'scale_w' go together")
    elif spatial == 1:
        node.param("scale_l", "F32", (int(out_shape[2] or 0),), required=False)
    return output


def _check_weight_padding(node: _Node, role: str, channels: int) -> None:
    """Padding bits of packed weights must be clear (docs/format.md, channel padding)."""
    tail = channels % WORD_BITS
    if tail == 0:
        return
    words = node.tensors[node.params[role]]
    mask = np.uint64(((1 << WORD_BITS) - 1) ^ ((1 << tail) - 1))
    if np.any(words[..., -1] & mask):
        raise _fail(node.where, f"padding bits of {role!r} past channel {channels} must be clear")


def _infer_node(node: _Node, ins: list[ValueInfo]) -> ValueInfo:
    """Check one node against its input values; return its output value."""
    op, w = node.op, node.where

    def need(i: int, kind: str, ndim: int | tuple[int, ...]) -> tuple[int | None, ...]:
        dims = (ndim,) if isinstance(ndim, int) else ndim
        v = ins[i]
        if v.kind != kind or len(v.shape) not in dims:
            raise _fail(
                w,
                f"input {node.inputs[i]!r} is {v.kind} {v.shape}; {op} needs {kind} with "
                f"{' or '.join(map(str, dims))} dims",
            )
        return v.shape

    if op == "sign_pack":
        node.n_inputs(1)
        shape = need(0, "float", (2, 3, 4))
        c = shape[1]
        assert c is not None
        node.param("threshold", "F32", (c,), required=False)
        return ValueInfo("bits", shape)

    if op in ("bconv2d", "bconv1d"):
        node.n_inputs(1, 2)
        nsp = 2 if op == "bconv2d" else 1
        shape = need(0, "bits", nsp + 2)
        cin = _int(f"{w}: attr 'in_channels'", node.attr("in_channels", required=True), minimum=1)
        cout = _int(
            f"{w}: attr 'out_channels'", node.attr("out_channels", required=True), minimum=1
        )
        if cin != shape[1]:
            raise _fail(w, f"in_channels {cin} but the input has {shape[1]} channels")
        k = _ints(
            f"{w}: attr 'kernel_size'", node.attr("kernel_size", required=True), nsp, minimum=1
        )
        if cin * math.prod(k) > MAX_BINARY_TAPS:
            raise _fail(w, f"{cin} channels x kernel {list(k)} exceed {MAX_BINARY_TAPS} taps")
        s = _ints(f"{w}: attr 'stride'", node.attr("stride", [1] * nsp), nsp, minimum=1)
        p = _ints(f"{w}: attr 'padding'", node.attr("padding", [0] * nsp), nsp, minimum=0)
        d = _ints(f"{w}: attr 'dilation'", node.attr("dilation", [1] * nsp), nsp, minimum=1)
        _choice(f"{w}: attr 'pad_mode'", node.attr("pad_mode", "zero"), ("zero", "one"))
        groups = _int(f"{w}: attr 'groups'", node.attr("groups", 1), minimum=1)
        if groups != 1:
            raise _fail(w, "binary convolutions support groups=1 only")
        spatial = tuple(
            _conv_out(w, int(shape[2 + i] or 0), k[i], s[i], p[i], d[i]) for i in range(nsp)
        )
        out_shape: tuple[int | None, ...] = (None, cout, *spatial)
        node.param("weight", "U64", (cout, *k, words_for(cin)))
        _check_weight_padding(node, "weight", cin)
        kind = _output_transform(node, out_shape, nsp)
    elif op == "blinear":
        node.n_inputs(1, 2)
        shape = need(0, "bits", 2)
        fin = _int(f"{w}: attr 'in_features'", node.attr("in_features", required=True), minimum=1)
        fout = _int(
            f"{w}: attr 'out_features'", node.attr("out_features", required=True), minimum=1
        )
        if fin != shape[1]:
            raise _fail(w, f"in_features {fin} but the input has {shape[1]} features")
        out_shape = (None, fout)
        node.param("weight", "U64", (fout, words_for(fin)))
        _check_weight_padding(node, "weight", fin)
        kind = _output_transform(node, out_shape, 0)
    else:
        return _infer_real(node, ins, need)

    if len(ins) == 2:
        res = ins[1]
        if res.kind != "float" or res.shape != out_shape:
            raise _fail(
                w,
                f"residual {node.inputs[1]!r} is {res.kind} {res.shape}, "
                f"expected float {out_shape}",
            )
    return ValueInfo(kind, out_shape)


def _infer_real(node: _Node, ins: list[ValueInfo], need: Any) -> ValueInfo:
    op, w = node.op, node.where
    if op in ("conv2d", "conv1d"):
        node.n_inputs(1)
        nsp = 2 if op == "conv2d" else 1
        shape = need(0, "float", nsp + 2)
        s = _ints(f"{w}: attr 'stride'", node.attr("stride", [1] * nsp), nsp, minimum=1)
        p = _ints(f"{w}: attr 'padding'", node.attr("padding", [0] * nsp), nsp, minimum=0)
        d = _ints(f"{w}: attr 'dilation'", node.attr("dilation", [1] * nsp), nsp, minimum=1)
        groups = _int(f"{w}: attr 'groups'", node.attr("groups", 1), minimum=1)
        wname = node.params.get("weight")
        if wname is None or wname not in node.tensors:
            raise _fail(w, "missing param 'weight' (or it names a missing tensor)")
        wshape = node.tensors[wname].shape
        if len(wshape) != nsp + 2:
            raise _fail(w, f"weight {wname!r} must have {nsp + 2} dims, has {len(wshape)}")
        cout, cin_g, *kernel = (
            _int(f"{w}: weight {wname!r} dim {i}", int(v), minimum=1) for i, v in enumerate(wshape)
        )
        cin = shape[1]
        if cin % groups or cout % groups or cin // groups != cin_g:
            raise _fail(w, f"weight {tuple(wshape)} does not fit {cin} channels, groups {groups}")
        node.param("weight", REAL_WEIGHT, tuple(int(v) for v in wshape))
        node.param("bias", REAL_WEIGHT, (cout,), required=False)
        spatial = tuple(
            _conv_out(w, int(shape[2 + i]), kernel[i], s[i], p[i], d[i]) for i in range(nsp)
        )
        return ValueInfo("float", (None, cout, *spatial))
    if op == "linear":
        node.n_inputs(1)
        shape = need(0, "float", 2)
        wname = node.params.get("weight")
        if wname is None or wname not in node.tensors or node.tensors[wname].ndim != 2:
            raise _fail(w, "param 'weight' must name a 2-d tensor")
        fout = _int(f"{w}: weight {wname!r} dim 0", int(node.tensors[wname].shape[0]), minimum=1)
        node.param("weight", REAL_WEIGHT, (fout, int(shape[1])))
        node.param("bias", REAL_WEIGHT, (fout,), required=False)
        return ValueInfo("float", (None, fout))
    if op == "batchnorm":
        node.n_inputs(1)
        shape = need(0, "float", (2, 3, 4))
        node.param("scale", "F32", (shape[1],))
        node.param("shift", "F32", (shape[1],))
        return ValueInfo("float", shape)
    if op in ELEMENTWISE_OPS:
        node.n_inputs(1)
        shape = need(0, "float", (2, 3, 4))
        if op == "prelu":
            name = node.params.get("slope", "")
            n = node.tensors[name].size if name in node.tensors else shape[1]
            node.param("slope", "F32", (1,) if n == 1 else (shape[1],))
        elif op == "leaky_relu":
            _number(f"{w}: attr 'negative_slope'", node.attr("negative_slope", 0.01))
        elif op == "hardtanh":
            lo = _number(f"{w}: attr 'min_val'", node.attr("min_val", -1.0))
            hi = _number(f"{w}: attr 'max_val'", node.attr("max_val", 1.0))
            if lo > hi:
                raise _fail(w, f"min_val {lo} > max_val {hi}")
        elif op in ("softmax", "log_softmax"):
            axis = _int(f"{w}: attr 'axis'", node.attr("axis", 1), minimum=1)
            if axis >= len(shape):
                raise _fail(w, f"axis {axis} out of range for {len(shape)} dims")
        elif op == "gelu":
            _choice(f"{w}: attr 'approximate'", node.attr("approximate", "none"), ("none", "tanh"))
        elif op == "elu":
            _number(f"{w}: attr 'alpha'", node.attr("alpha", 1.0))
        elif op == "hardsigmoid":
            _number(f"{w}: attr 'alpha'", node.attr("alpha", 0.2))
            _number(f"{w}: attr 'beta'", node.attr("beta", 0.5))
        return ValueInfo("float", shape)
    if op == "layernorm":
        node.n_inputs(1)
        shape = need(0, "float", (2, 3, 4))
        eps = _number(f"{w}: attr 'eps'", node.attr("eps", 1e-5))
        if eps <= 0:
            raise _fail(w, f"eps {eps} must be > 0")
        name = node.params.get("weight", "")
        nd = node.tensors[name].ndim if name in node.tensors else 1
        if not 1 <= nd < len(shape):
            raise _fail(
                w, f"weight has {nd} dims; it must cover 1 to {len(shape) - 1} trailing dims"
            )
        normalized = tuple(int(d) for d in shape[len(shape) - nd :] if d is not None)
        node.param("weight", "F32", normalized)
        node.param("bias", "F32", normalized, required=False)
        return ValueInfo("float", shape)
    if op in ("maxpool2d", "avgpool2d", "maxpool1d", "avgpool1d"):
        node.n_inputs(1)
        nsp = 2 if op.endswith("2d") else 1
        shape = need(0, "float", nsp + 2)
        k = _ints(
            f"{w}: attr 'kernel_size'", node.attr("kernel_size", required=True), nsp, minimum=1
        )
        s = _ints(f"{w}: attr 'stride'", node.attr("stride", list(k)), nsp, minimum=1)
        p = _ints(f"{w}: attr 'padding'", node.attr("padding", [0] * nsp), nsp, minimum=0)
        ceil_mode = _bool(f"{w}: attr 'ceil_mode'", node.attr("ceil_mode", False))
        if op.startswith("avg"):
            _bool(f"{w}: attr 'count_include_pad'", node.attr("count_include_pad", True))
        spatial = tuple(
            _pool_out(w, int(shape[2 + i]), k[i], s[i], p[i], ceil_mode) for i in range(nsp)
        )
        return ValueInfo("float", (None, shape[1], *spatial))
    if op == "global_avgpool":
        node.n_inputs(1)
        shape = need(0, "float", (3, 4))
        return ValueInfo("float", (None, shape[1]))
    if op in ("add", "mul"):
        node.n_inputs(2)
        a = need(0, "float", (2, 3, 4))
        b = ins[1]
        per_channel = len(a) > 2 and b.shape == (None, a[1])
        if b.kind != "float" or (b.shape != a and not per_channel):
            raise _fail(w, f"second input {b.kind} {b.shape} does not match {a} or {(None, a[1])}")
        return ValueInfo("float", a)
    if op == "flatten":
        node.n_inputs(1)
        shape = need(0, "float", (2, 3, 4))
        return ValueInfo("float", (None, math.prod(int(v or 0) for v in shape[1:])))
    if op == "reshape":  # to and from 5 dims too: a channel shuffle's (N, g, C/g, H, W)
        node.n_inputs(1)
        shape = need(0, "float", (2, 3, 4, 5))
        target = node.attr("shape", required=True)
        if not isinstance(target, list) or not 1 <= len(target) <= 4:
            raise _fail(w, "attr 'shape' must list 1 to 4 dims (without the batch)")
        dims = [_int(f"{w}: attr 'shape'", v, minimum=-1) for v in target]
        total = math.prod(int(v or 0) for v in shape[1:])
        if dims.count(-1) > 1 or 0 in dims:
            raise _fail(w, f"attr 'shape' {dims}: at most one -1 and no 0")
        known = math.prod(v for v in dims if v != -1)
        if -1 in dims:
            if total % known:
                raise _fail(w, f"cannot reshape {shape[1:]} to {dims}")
            dims[dims.index(-1)] = total // known
        if math.prod(dims) != total:
            raise _fail(w, f"cannot reshape {shape[1:]} to {dims}")
        return ValueInfo("float", (None, *dims))
    if op == "concat":
        if len(node.inputs) < 2 or len(node.outputs) != 1:
            raise _fail(w, "concat takes two or more inputs and one output")
        first = need(0, "float", (2, 3, 4))
        axis = _int(f"{w}: attr 'axis'", node.attr("axis", 1), minimum=1)
        if axis >= len(first):
            raise _fail(w, f"axis {axis} out of range for {len(first)} dims")
        total = 0
        for i in range(len(ins)):
            sh = need(i, "float", len(first))
            if any(sh[j] != first[j] for j in range(len(first)) if j != axis):
                raise _fail(w, f"input {node.inputs[i]!r} {sh} does not match {first}")
            total += int(sh[axis] or 0)
        return ValueInfo("float", (*first[:axis], total, *first[axis + 1 :]))
    if op == "pad":  # a constant border on the spatial axes: ONNX's Pad, torch's ConstantPadNd
        node.n_inputs(1)
        shape = need(0, "float", (3, 4))
        nsp = len(shape) - 2
        pads = _ints(f"{w}: attr 'pads'", node.attr("pads", required=True), 2 * nsp, minimum=0)
        value = _number(f"{w}: attr 'value'", node.attr("value", 0.0))
        if abs(value) > MAX_FLOAT32:
            raise _fail(w, f"attr 'value' {value} is outside float32's range")
        spatial = tuple(
            _int(f"{w}: padded axis {2 + i}", int(shape[2 + i] or 0) + pads[i] + pads[nsp + i])
            for i in range(nsp)
        )
        return ValueInfo("float", (None, shape[1], *spatial))
    if op == "transpose":  # the batch axis stays first
        node.n_inputs(1)
        shape = need(0, "float", (2, 3, 4, 5))
        perm = _ints(f"{w}: attr 'perm'", node.attr("perm", required=True), len(shape), minimum=0)
        if sorted(perm) != list(range(len(shape))) or perm[0] != 0:
            raise _fail(w, f"attr 'perm' {list(perm)} must reorder the axes, the batch axis first")
        return ValueInfo("float", tuple(shape[i] for i in perm))
    if op == "slice":  # a contiguous range of one axis other than the batch
        node.n_inputs(1)
        shape = need(0, "float", (2, 3, 4))
        axis = _int(f"{w}: attr 'axis'", node.attr("axis", required=True), minimum=1)
        if axis >= len(shape):
            raise _fail(w, f"axis {axis} out of range for {len(shape)} dims")
        size = int(shape[axis] or 0)
        start = _int(f"{w}: attr 'start'", node.attr("start", required=True), minimum=0)
        end = _int(f"{w}: attr 'end'", node.attr("end", required=True), minimum=1)
        if not start < end <= size:
            raise _fail(w, f"range [{start}, {end}) is empty or outside axis {axis} of {size}")
        return ValueInfo("float", (*shape[:axis], end - start, *shape[axis + 1 :]))
    if op == "upsample":  # nearest neighbour, an integer factor per spatial axis
        node.n_inputs(1)
        shape = need(0, "float", (3, 4))
        nsp = len(shape) - 2
        scales = _ints(f"{w}: attr 'scales'", node.attr("scales", required=True), nsp, minimum=1)
        mode = node.attr("mode", "nearest")
        if mode != "nearest":
            raise _fail(w, f"attr 'mode' {mode!r}: only 'nearest'")
        spatial = tuple(
            _int(f"{w}: upsampled axis {2 + i}", int(shape[2 + i] or 0) * scales[i])
            for i in range(nsp)
        )
        return ValueInfo("float", (None, shape[1], *spatial))
    if op == "matmul":  # two values: (N, [H,] M, K) @ (N, [H,] K, P), as attention's
        node.n_inputs(2)
        a = need(0, "float", (3, 4))
        b = need(1, "float", len(a))
        if a[1:-2] != b[1:-2] or a[-1] != b[-2]:
            raise _fail(w, f"cannot multiply {a} by {b} (leading dims equal, {a[-1]} rows)")
        work = math.prod(int(v or 0) for v in (*a[1:], b[-1]))  # multiply-adds per sample
        if work > MAX_MATMUL_MACS:
            raise _fail(w, f"{work} multiply-adds per sample exceed the limit {MAX_MATMUL_MACS}")
        return ValueInfo("float", (*a[:-1], b[-1]))
    if op == "broadcast":  # a constant (a class token, a position embedding) per sample
        node.n_inputs(1)  # any value: it gives the batch size
        vname = node.params.get("value")
        if vname is None or vname not in node.tensors or not 1 <= node.tensors[vname].ndim <= 3:
            raise _fail(w, "param 'value' must name a tensor of 1 to 3 dims")
        shape = tuple(
            _int(f"{w}: value dim {i}", int(v), minimum=1)
            for i, v in enumerate(node.tensors[vname].shape)
        )
        node.param("value", "F32", shape)
        return ValueInfo("float", (None, *shape))
    raise _fail(w, f"op {op!r} has no checker")  # pragma: no cover - KNOWN_OPS is closed


def _value_list(graph: dict[str, Any], key: str) -> list[tuple[str, tuple[int | None, ...]]]:
    raw = graph.get(key)
    if not isinstance(raw, list) or not raw:
        raise FormatError(f"graph.{key}: expected a non-empty list")
    out = []
    for i, item in enumerate(raw):
        where = f"graph.{key}[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise FormatError(f"{where}: expected an object with a 'name'")
        if item.get("dtype", "float32") != "float32":
            raise FormatError(f"{where}: dtype must be 'float32'")
        shape = item.get("shape")
        if not isinstance(shape, list) or not 2 <= len(shape) <= 4 or shape[0] is not None:
            raise FormatError(f"{where}: shape must list 2 to 4 dims, the first null (batch)")
        dims = [_int(f"{where}.shape", v, minimum=1) for v in shape[1:]]
        out.append((item["name"], (None, *dims)))
    return out


def _check_value_size(where: str, info: ValueInfo) -> None:
    count = math.prod(int(d or 0) for d in info.shape[1:])
    if count > MAX_VALUE_ELEMENTS:
        raise FormatError(
            f"{where} holds {count} elements per batch item, above the limit {MAX_VALUE_ELEMENTS}"
        )


def infer_graph(
    graph: Any, tensors: Mapping[str, np.ndarray]
) -> tuple[dict[str, ValueInfo], list[dict[str, Any]]]:
    """Validate ``graph`` against ``tensors``; return every value's info and the nodes.

    Raises :class:`FormatError` on the first inconsistency.
    """
    if not isinstance(graph, dict):
        raise FormatError("graph: expected a JSON object")
    unknown = set(graph) - {"inputs", "outputs", "nodes"}
    if unknown:
        raise FormatError(f"graph: unknown keys {sorted(unknown)}")
    values: dict[str, ValueInfo] = {}
    for name, shape in _value_list(graph, "inputs"):
        if name in values:
            raise FormatError(f"graph.inputs: {name!r} is declared twice")
        if len(shape) == 2 and shape[1] is None:
            raise FormatError(f"graph.inputs: {name!r} has no channel count")
        values[name] = ValueInfo("float", shape)
        _check_value_size(f"graph.inputs: {name!r}", values[name])
    raw_nodes = graph.get("nodes")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise FormatError("graph.nodes: expected a non-empty list")
    if len(raw_nodes) > MAX_NODES:
        raise FormatError(f"graph.nodes: {len(raw_nodes)} nodes exceed the limit {MAX_NODES}")
    used: set[str] = set()
    node_names: set[str] = set()
    for index, raw in enumerate(raw_nodes):
        node = _Node(raw, index, tensors)
        if node.name in node_names:
            raise FormatError(f"{node.where}: node name used twice")
        node_names.add(node.name)
        for name in node.inputs:
            if name not in values:
                raise FormatError(f"{node.where}: input {name!r} is not defined before use")
        info = _infer_node(node, [values[n] for n in node.inputs])
        node.finish()
        used.update(node.params.values())
        _check_value_size(f"{node.where}: output", info)
        for name in node.outputs:
            if name in values:
                raise FormatError(f"{node.where}: value {name!r} is produced twice")
            values[name] = info
    declared: set[str] = set()
    for name, shape in _value_list(graph, "outputs"):
        if name in declared:  # Model.run returns outputs by name
            raise FormatError(f"graph.outputs: {name!r} is declared twice")
        declared.add(name)
        if name not in values:
            raise FormatError(f"graph.outputs: {name!r} is not produced by any node")
        if values[name].kind != "float" or values[name].shape != shape:
            raise FormatError(
                f"graph.outputs: {name!r} is {values[name].kind} {values[name].shape}, "
                f"declared float {tuple(shape)}"
            )
    unreferenced = set(tensors) - used
    if unreferenced:
        raise FormatError(f"tensors not referenced by the graph: {sorted(unreferenced)[:5]}")
    return values, raw_nodes


# ---------------------------------------------------------------------------------------
# file level


def _check_tensors(tensors: Mapping[str, np.ndarray]) -> None:
    if len(tensors) > MAX_TENSORS:
        raise FormatError(f"{len(tensors)} tensors exceed the limit {MAX_TENSORS}")
    for name, array in tensors.items():
        if not isinstance(name, str) or not name:
            raise FormatError(f"tensor name {name!r} must be a non-empty string")
        if not isinstance(array, np.ndarray):
            raise FormatError(f"tensor {name!r}: expected a numpy array")
        if array.dtype not in (np.dtype(np.uint64), np.dtype(np.float32), np.dtype(np.float16)):
            raise FormatError(
                f"tensor {name!r}: dtype {array.dtype} (only uint64, float32, float16)"
            )
        if array.size > MAX_TENSOR_ELEMENTS:
            raise FormatError(f"tensor {name!r}: {array.size} elements exceed the limit")


def _parse_metadata(metadata: Mapping[str, str] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    if not metadata:
        raise FormatError("metadata: missing (not a .bfm file)")
    if metadata.get("format") != FORMAT_NAME:
        raise FormatError(
            f"metadata 'format': expected {FORMAT_NAME!r}, got {metadata.get('format')!r}"
        )
    if metadata.get("version") != FORMAT_VERSION:
        raise FormatError(
            f"metadata 'version': unsupported version {metadata.get('version')!r} "
            f"(this reader reads {FORMAT_VERSION})"
        )
    try:
        graph = json.loads(metadata.get("graph", ""))
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"metadata 'graph': not valid JSON ({exc})") from None
    try:
        provenance = json.loads(metadata.get("provenance", "{}"))
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"metadata 'provenance': not valid JSON ({exc})") from None
    if not isinstance(provenance, dict):
        raise FormatError("metadata 'provenance': expected a JSON object")
    return graph, provenance


def _looks_like(head: bytes) -> str:
    """What a file that is not a .bfm seems to be, from its first bytes (for the error)."""
    if head.startswith(b"PK\x03\x04"):
        return "; this is a zip archive (a torch .pt or numpy .npz file?)"
    if head[:1] == b"\x80":
        return "; this looks like a Python pickle"
    if len(head) > 1 and head[0] == 0x08 and 3 <= head[1] <= 16:  # ModelProto.ir_version
        return "; this looks like an ONNX model (binarize it first)"
    return ""


def _parse_header(data: bytes | memoryview) -> dict[str, Any]:
    """Check the safetensors header ourselves first: limits, dtypes, offsets."""
    if len(data) < 8:
        raise FormatError(f"truncated file: {len(data)} bytes, no safetensors header")
    (header_len,) = struct.unpack("<Q", bytes(data[:8]))
    if bytes(data[8:9]) != b"{":  # what a safetensors header's JSON object starts with
        what = _looks_like(bytes(data[:16]))
        raise FormatError(
            "not a .bfm file: a .bfm is a safetensors container (an 8-byte header length, "
            f"then a JSON object){what}"
        )
    if header_len > MAX_HEADER_BYTES:
        raise FormatError(f"header of {header_len} bytes exceeds the limit {MAX_HEADER_BYTES}")
    if 8 + header_len > len(data):
        raise FormatError(
            f"truncated file: header needs {header_len} bytes, {len(data) - 8} present"
        )
    try:
        header = json.loads(bytes(data[8 : 8 + header_len]))
    except (ValueError, RecursionError) as exc:  # ValueError: also over-long integers
        raise FormatError(f"header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise FormatError("header is not a JSON object")
    body = len(data) - 8 - header_len
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    if len(entries) > MAX_TENSORS:
        raise FormatError(f"{len(entries)} tensors exceed the limit {MAX_TENSORS}")
    end_max = 0
    for name, entry in entries.items():
        if not isinstance(entry, dict):
            raise FormatError(f"tensor {name!r}: header entry is not an object")
        dtype = entry.get("dtype")
        if dtype not in _SAFETENSORS_DTYPES:
            raise FormatError(f"tensor {name!r}: dtype {dtype!r} (only U64, F32, F16)")
        shape = entry.get("shape")
        offsets = entry.get("data_offsets")
        if not isinstance(shape, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in shape
        ):
            raise FormatError(f"tensor {name!r}: bad shape {reprlib.repr(shape)}")
        if len(shape) > MAX_TENSOR_DIMS or any(v > MAX_TENSOR_ELEMENTS for v in shape):
            raise FormatError(
                f"tensor {name!r}: shape {reprlib.repr(shape)}: dims or elements exceed the "
                f"limit ({MAX_TENSOR_DIMS} dims, {MAX_TENSOR_ELEMENTS} elements)"
            )
        count = math.prod(shape)
        if count > MAX_TENSOR_ELEMENTS:
            raise FormatError(f"tensor {name!r}: {count} elements exceed the limit")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in offsets)
        ):
            raise FormatError(f"tensor {name!r}: bad data_offsets {reprlib.repr(offsets)}")
        begin, end = offsets
        if not 0 <= begin <= end <= body:
            raise FormatError(
                f"tensor {name!r}: data_offsets {reprlib.repr(offsets)} outside the "
                f"{body} bytes of data (truncated file?)"
            )
        nbytes = count * _SAFETENSORS_DTYPES[dtype].itemsize
        if end - begin != nbytes:
            raise FormatError(
                f"tensor {name!r}: shape {shape} needs {nbytes} bytes, offsets give {end - begin}"
            )
        end_max = max(end_max, end)
    meta = header.get("__metadata__")
    if meta is not None and (
        not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values())
    ):
        raise FormatError("metadata: must map strings to strings")
    return header


def read_bfm(
    source: str | os.PathLike[str] | bytes | bytearray | memoryview,
) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, Any]]:
    """Read and fully validate a ``.bfm`` file (a path or its bytes).

    Returns ``(graph, tensors, metadata)`` where ``metadata`` holds ``format``, ``version``
    and the parsed ``provenance``. Raises :class:`FormatError` on any problem.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load as st_load

    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    else:
        path = Path(source)
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise FormatError(f"cannot read {path}: {exc.strerror}") from None
        if size > MAX_FILE_BYTES:
            raise FormatError(f"{path}: {size} bytes exceed the limit {MAX_FILE_BYTES}")
        data = path.read_bytes()
    if len(data) > MAX_FILE_BYTES:
        raise FormatError(f"{len(data)} bytes exceed the limit {MAX_FILE_BYTES}")
    header = _parse_header(data)
    graph, provenance = _parse_metadata(header.get("__metadata__"))
    try:
        loaded = st_load(data)
    except (SafetensorError, ValueError, TypeError) as exc:
        raise FormatError(f"safetensors rejected the file: {exc}") from None
    tensors = {name: np.ascontiguousarray(array) for name, array in loaded.items()}
    _check_tensors(tensors)
    infer_graph(graph, tensors)
    metadata = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "provenance": provenance}
    return graph, tensors, metadata


def write_bfm(
    path: str | os.PathLike[str],
    *,
    graph: dict[str, Any],
    tensors: Mapping[str, np.ndarray],
    provenance: dict[str, Any],
) -> None:
    """Validate ``graph`` and ``tensors`` as a reader would, then write a ``.bfm`` file.

    ``tensors`` are ``uint64`` (packed weights), ``float32`` or (real conv/linear weights
    and biases only) ``float16`` arrays; they are written
    little-endian and contiguous. Raises :class:`FormatError` if the model is invalid.
    """
    from safetensors.numpy import save_file

    arrays = {
        name: np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False)
        for name, array in tensors.items()
    }
    _check_tensors(arrays)
    infer_graph(graph, arrays)
    try:
        provenance_json = json.dumps(provenance, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise FormatError(f"provenance is not JSON-serializable: {exc}") from None
    metadata = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "graph": json.dumps(graph, separators=(",", ":")),
        "provenance": provenance_json,
    }
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    save_file(arrays, str(tmp), metadata=metadata)
    os.replace(tmp, target)
