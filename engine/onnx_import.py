"""A small ONNX -> ``torch.fx.GraphModule`` converter for CNN and MLP classifiers.

Written here rather than taken from PyPI: ``onnx2torch`` is the maintained option, but it
is not installed in this project's environment and the op set we need is small. The
result is made of ordinary torch modules (``nn.Conv2d``, ``nn.Linear``,
``nn.BatchNorm2d``, ...) and a few functions (``operator.add``, ``torch.flatten``,
``torch.reshape``, ``torch.cat``), which is what the converter and the exporter
understand. Tests compare its outputs with onnxruntime's.

Supported: Conv (1D/2D), Gemm, MatMul (with a constant 2-D right operand),
BatchNormalization, Relu, PRelu, LeakyRelu, Clip, Sigmoid, Tanh, MaxPool, AveragePool,
GlobalAveragePool, Add, Mul, Flatten, Reshape, Concat, Identity, Dropout, Constant,
Softmax, LayerNormalization (over trailing axes), Gelu, Sub, Div (by a constant),
Squeeze/Unsqueeze (keeping the batch), ReduceMean (over every spatial axis, or over
the tokens of (N, L, C) and (N, H, W, C)), HardSigmoid,
HardSwish, Pad (constant mode, spatial axes), Transpose (keeping the batch first),
Resize and Upsample (nearest, integer factors on the spatial axes), Slice and Split of
values (contiguous parts of an axis other than the batch),
asymmetric ``pads`` and ``auto_pad`` (a pad module before the layer), and shape
arithmetic on constants and on the input's shape (Shape, Gather, Unsqueeze, Squeeze,
Concat, Cast, Slice, Add, Sub, Mul, Div; ConstantOfShape, Reshape and Transpose of
constants), so ``x.view(x.size(0), -1)`` and torch's ``F.pad`` import; Erf, Elu, Selu,
Softplus, Mish, LogSoftmax; GlobalMaxPool and ReduceMax over every spatial axis. Models
must have one input with a fixed shape except the batch dimension, and be self-contained
(external data is refused).
"""

from __future__ import annotations

import math
import operator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from engine.errors import UserInputError
from runtime.bfm import MAX_FLOAT32  # the format's bound on a pad value

MAX_ONNX_BYTES = 2 * 1024**3
# what to do instead, for operators users meet most (appended to "not supported")
_LAYERNORM_BEFORE_17 = (
    " (opsets before 17 write nn.LayerNorm as ReduceMean, Sub, Pow, Sqrt and Div: export "
    "with opset_version=17 or later, which writes LayerNormalization)"
)
UNSUPPORTED_HINTS = {
    "ConvTranspose": (
        " (transposed convolution: nn.Upsample(scale_factor=k, mode='nearest-exact') "
        "followed by a Conv2d imports, and its convolution can be binary)"
    ),
    "Pow": _LAYERNORM_BEFORE_17,
    "Sqrt": _LAYERNORM_BEFORE_17,
    "Expand": " (broadcasting to the batch size, as a class token's x.expand(...))",
    "Equal": " (torch writes Equal and Where for x.expand(x.shape[0], ...), a class token)",
    "Where": " (torch writes Equal and Where for x.expand(x.shape[0], ...), a class token)",
}


class GlobalAvgPool(nn.Module):
    """ONNX GlobalAveragePool: mean over every spatial axis, keeping them as size 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


class BatchBroadcast(nn.Module):
    """A constant per sample: ``value`` stacked ``ref.shape[0]`` times (ONNX Expand of a
    constant to the batch size, as torch writes a class token's ``x.expand(N, -1, -1)``)."""

    value: torch.Tensor

    def __init__(self, value: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("value", torch.from_numpy(np.array(value, dtype=np.float32)))

    def forward(self, ref: torch.Tensor) -> torch.Tensor:
        return self.value.expand(ref.shape[0], *self.value.shape)


class HardSigmoid(nn.Module):
    """ONNX HardSigmoid: ``max(0, min(1, alpha x + beta))`` (torch's is alpha 1/6, beta 1/2)."""

    def __init__(self, alpha: float = 0.2, beta: float = 0.5) -> None:
        super().__init__()
        self.alpha, self.beta = alpha, beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.alpha + self.beta).clamp(0.0, 1.0)


class Erf(nn.Module):
    """ONNX Erf (older exporters write GELU as ``x/2 (1 + erf(x / sqrt 2))``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.erf(x)


# Parameterless elementwise ops and the module each becomes.
ELEMENTWISE: dict[str, type[nn.Module]] = {
    "Relu": nn.ReLU,
    "Sigmoid": nn.Sigmoid,
    "Tanh": nn.Tanh,
    "Softplus": nn.Softplus,
    "Mish": nn.Mish,
    "HardSwish": nn.Hardswish,
    "Erf": Erf,
}

# Ops computed at import on constants and on shapes (``x.view(x.size(0), -1)`` exports as
# Shape -> Gather -> Unsqueeze -> Concat -> Reshape); a shape's batch entry is None.
# torch writes the pads of F.pad / nn.ZeroPad2d as ConstantOfShape, Concat, Reshape, Slice
# (reversed), Transpose, Reshape and Cast on constants.
FOLDABLE = {
    "Gather",
    "Unsqueeze",
    "Squeeze",
    "Concat",
    "Cast",
    "Slice",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "ConstantOfShape",
    "Reshape",
    "Transpose",
    "Equal",
    "Where",
    "Expand",
    "Sqrt",
}
FOLD_MAX_ELEMENTS = 1 << 16  # a ConstantOfShape folded at import (shapes, pads) is small


def _attrs(node: Any) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _fail(node: Any, why: str) -> UserInputError:
    return UserInputError(f"ONNX node {node.name or node.op_type} ({node.op_type}): {why}")


def _text(a: dict[str, Any], key: str, default: str) -> str:
    """A string attribute (onnx gives bytes)."""
    value = a.get(key, default)
    return value.decode() if isinstance(value, bytes) else str(value)


def _pads(
    b: _Builder, node: Any, a: dict[str, Any], kernel: list[int]
) -> tuple[list[int], list[int]]:
    """Padding before and after each spatial axis, from ``pads`` or from ``auto_pad``."""
    nd = len(kernel)
    mode = _text(a, "auto_pad", "NOTSET")
    if mode == "NOTSET":
        pads = [int(v) for v in a.get("pads", [0] * (2 * nd))]
        if len(pads) != 2 * nd or min(pads) < 0:
            raise _fail(node, f"pads {pads}: expected {2 * nd} counts >= 0")
        return pads[:nd], pads[nd:]
    if mode == "VALID":
        return [0] * nd, [0] * nd
    if mode not in ("SAME_UPPER", "SAME_LOWER"):
        raise _fail(node, f"auto_pad {mode} is not one of NOTSET, VALID, SAME_UPPER, SAME_LOWER")
    strides = list(a.get("strides", [1] * nd))
    dilations = list(a.get("dilations", [1] * nd))
    shape = b.shapes.get(node.input[0])
    if any(st != 1 for st in strides) and (shape is None or None in shape[2:]):
        raise _fail(node, f"auto_pad {mode} with strides {strides} needs a known input shape")
    begin, end = [], []
    for i in range(nd):
        extent = (kernel[i] - 1) * dilations[i] + 1
        if strides[i] == 1:  # (k - 1) d whatever the input's size
            total = extent - 1
        else:
            n, st = int(shape[2 + i]), strides[i]  # type: ignore[index, arg-type]
            total = max((-(-n // st) - 1) * st + extent - n, 0)
        small = total // 2  # SAME_UPPER puts an odd total's extra one at the end
        begin.append(small if mode == "SAME_UPPER" else total - small)
        end.append(total - begin[-1])
    return begin, end


def _pad_module(nd: int, begin: list[int], end: list[int], value: float) -> nn.Module:
    """torch's constant padding of the last nd axes: (begin, end) of the last axis first."""
    widths = tuple(v for i in reversed(range(nd)) for v in (begin[i], end[i]))
    cls: Any = nn.ConstantPad1d if nd == 1 else nn.ConstantPad2d
    return cls(widths, value)


def _kept_pads(begin: list[int], end: list[int], cap: list[int] | None = None) -> list[int]:
    """The padding a layer keeps: the symmetric part, at most ``cap`` (torch's pooling
    takes at most half its kernel)."""
    sym = [min(p, q) for p, q in zip(begin, end, strict=True)]
    return sym if cap is None else [min(v, c) for v, c in zip(sym, cap, strict=True)]


def _split_pads(
    b: _Builder, x: Any, begin: list[int], end: list[int], value: float, sym: list[int]
) -> tuple[Any, list[int]]:
    """The layer keeps padding ``sym``; the rest becomes a padding module before it (border
    ``value``). Returns the layer's input and padding."""
    extra_begin = [p - s for p, s in zip(begin, sym, strict=True)]
    extra_end = [q - s for q, s in zip(end, sym, strict=True)]
    if any(extra_begin) or any(extra_end):
        x = b.module("pad", _pad_module(len(sym), extra_begin, extra_end, value), x)
    return x, sym


# A max pooling's border: the lowest float32, which no window that holds an input value
# returns (ONNX and torch pad max pooling with -inf; the format's `pad` takes finite values).
MAX_POOL_BORDER = -MAX_FLOAT32


def _int_list(b: _Builder, node: Any, a: dict[str, Any], i: int, key: str) -> list[int] | None:
    """Attribute ``key`` (older opsets) or else constant input ``i`` (newer ones): the
    axes, starts, ... an op takes; None when neither is given."""
    if key in a:
        return [int(v) for v in a[key]]
    ins = node.input
    return [int(v) for v in b.const(ins[i], node).reshape(-1)] if len(ins) > i and ins[i] else None


def _over_spatial(axes: list[int] | None, rank: int) -> bool:
    """Whether ``axes`` are exactly the spatial axes 2 .. rank - 1 of an (N, C, *S) value."""
    return axes is not None and rank >= 3 and sorted(v % rank for v in axes) == list(range(2, rank))


def _over_tokens(axes: list[int] | None, rank: int) -> bool:
    """Whether ``axes`` are every axis but the batch and the last one of a rank-3/4 value
    (the tokens of (N, L, C) or (N, H, W, C))."""
    return (
        axes is not None
        and rank in (3, 4)
        and sorted(v % rank for v in axes) == list(range(1, rank - 1))
    )


def _softmax(b: _Builder, node: Any, op: str, a: dict[str, Any], x: fx.Node) -> fx.Node:
    """(Log)Softmax: over one axis from opset 13 on (default the last); before, over the
    input flattened to 2-D at ``axis`` (default 1), i.e. over every axis from it on."""
    rank = b.rank(node.input[0])
    if rank is None:
        raise _fail(node, f"{op} needs a known input rank")
    axis = int(a.get("axis", -1 if b.opset >= 13 else 1)) % rank
    cls = nn.Softmax if op == "Softmax" else nn.LogSoftmax
    if b.opset >= 13 or axis == rank - 1:
        return b.module(op.lower(), cls(dim=axis), x)
    shape = b.shapes[node.input[0]]
    if axis != 1 or None in shape[1:]:
        raise _fail(node, f"opset {b.opset} {op} over axes {axis}.. is not supported (only 1..)")
    flat = b.graph.call_function(torch.flatten, (x, 1))
    return b.graph.call_function(
        torch.reshape, (b.module(op.lower(), cls(dim=1), flat), (-1, *shape[1:]))
    )


def _fold(b: _Builder, node: Any, op: str, a: dict[str, Any], ins: list[str]) -> bool:
    """Compute ``node`` now when it is shape arithmetic or works on constants only."""
    out = node.output[0]
    if op == "Shape":
        shape = b.known_shape(ins[0])
        if shape is None:
            raise _fail(node, "Shape needs a known input shape")
        start, end = int(a.get("start", 0)), a.get("end")
        b.store(out, np.array(shape[start : None if end is None else int(end)], dtype=object))
        return True
    named = [n for n in ins if n]
    if op not in FOLDABLE or not named or not all(n in b.consts or n in b.syms for n in named):
        return False

    def get(i: int) -> np.ndarray:
        return b.syms[ins[i]] if ins[i] in b.syms else np.asarray(b.consts[ins[i]])

    x = get(0)
    if op == "ConstantOfShape":
        if x.dtype == object and None in x.flat:
            raise _fail(node, "ConstantOfShape of the batch size is not supported")
        from onnx import numpy_helper

        dims = [int(v) for v in x.reshape(-1)]
        if min(dims, default=0) < 0 or math.prod(dims) > FOLD_MAX_ELEMENTS:
            raise _fail(node, f"shape {dims}: only small constants are folded")
        fill = numpy_helper.to_array(a["value"]) if "value" in a else np.zeros(1, np.float32)
        result = np.full(dims, fill.reshape(-1)[0], dtype=fill.dtype)
    elif op == "Reshape":
        target = [int(v) for v in b.const(ins[1], node).reshape(-1)]
        if not a.get("allowzero", 0):  # 0 copies the input's dimension
            target = [x.shape[i] if v == 0 and i < x.ndim else v for i, v in enumerate(target)]
        result = x.reshape(target)
    elif op == "Transpose":
        perm = a.get("perm")
        result = np.transpose(x, None if perm is None else [int(v) for v in perm])
    elif op == "Equal":  # on shapes too: the batch (None) equals only itself
        xs, ys = np.broadcast_arrays(x, get(1))
        pairs = zip(xs.reshape(-1).tolist(), ys.reshape(-1).tolist(), strict=True)
        result = np.array([u == v for u, v in pairs], dtype=bool).reshape(xs.shape)
    elif op == "Where":
        result = np.where(x.astype(bool), get(1), get(2))
    elif op == "Sqrt":  # scaled_dot_product_attention's 1 / sqrt(d), from the shape
        if x.dtype == object:
            raise _fail(node, "Sqrt of the batch size is not supported")
        result = np.sqrt(x)
    elif op == "Expand":  # of a constant by a known shape (to the batch size: a module)
        sizes = get(1).reshape(-1).tolist()
        if None in sizes:
            return False
        expanded = np.broadcast_shapes(x.shape, tuple(int(v) for v in sizes))
        if math.prod(expanded) > FOLD_MAX_ELEMENTS:
            raise _fail(node, f"shape {list(expanded)}: only small constants are folded")
        result = np.array(np.broadcast_to(x, expanded))
    elif op == "Gather":
        result = np.take(x, b.const(ins[1], node).astype(np.int64), axis=int(a.get("axis", 0)))
    elif op == "Unsqueeze":
        axes = _int_list(b, node, a, 1, "axes") or []
        rank = x.ndim + len(axes)
        result = x.reshape(x.shape)
        for axis in sorted(v % rank for v in axes):
            result = np.expand_dims(result, axis)
    elif op == "Squeeze":
        squeeze = _int_list(b, node, a, 1, "axes")
        result = np.squeeze(x, axis=None if squeeze is None else tuple(v % x.ndim for v in squeeze))
    elif op == "Concat":
        result = np.concatenate([get(i) for i in range(len(ins))], axis=int(a["axis"]))
    elif op == "Cast":
        from onnx import helper

        result = x if x.dtype == object else x.astype(helper.tensor_dtype_to_np_dtype(a["to"]))
    elif op == "Slice":
        starts, ends = (
            _int_list(b, node, a, 1, "starts") or [],
            _int_list(b, node, a, 2, "ends") or [],
        )
        axes = _int_list(b, node, a, 3, "axes") or list(range(len(starts)))
        steps = _int_list(b, node, a, 4, "steps") or [1] * len(starts)
        index = [slice(None)] * x.ndim
        for st, en, ax, sp in zip(starts, ends, axes, steps, strict=True):
            index[ax] = slice(st, en, sp)
        result = x[tuple(index)]
    else:  # Add, Sub, Mul, Div
        y = get(1)
        if (x.dtype == object and None in x.flat) or (y.dtype == object and None in y.flat):
            raise _fail(node, f"{op} on the batch size is not supported")
        x, y = (v.astype(np.int64) if v.dtype == object else v for v in (x, y))
        if op == "Div" and x.dtype.kind in "iu" and y.dtype.kind in "iu":
            result = np.trunc(x / y).astype(np.result_type(x, y))
        else:
            fns = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}
            result = fns[op](x, y)
    b.store(out, np.asarray(result))
    return True


class _Builder:
    def __init__(self, model: Any) -> None:
        import onnx
        from onnx import numpy_helper

        self.onnx = onnx
        self.model = model
        self.graph = fx.Graph()
        self.root = nn.Module()
        self.values: dict[str, fx.Node] = {}
        self.consts: dict[str, np.ndarray] = {
            init.name: numpy_helper.to_array(init) for init in model.graph.initializer
        }
        self.shapes: dict[str, list[int | None]] = {}
        self.input_shape: tuple[int, ...] | None = None  # without the batch
        self.batch: int | None = None  # the input's batch size where the file fixes it
        self.input_name = ""  # the model's input (a reference for the batch size)
        # a Transpose that moves the batch axis, kept until Split/Squeeze/Gather on its first
        # axis take it apart (timm's qkv.permute(2, 0, 3, 1, 4).unbind(0)): the source
        # value, its shape, the perm, and the refusal for any other reader
        self.pending: dict[str, tuple[Any, list[int | None], list[int], str]] = {}
        self.unprobed: set[str] = set()  # values known_shape could not run the graph to
        self.syms: dict[str, np.ndarray] = {}  # object arrays of ints, None for the batch
        self.count = 0
        self.opset = max(
            (int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), default=13
        )

    def store(self, name: str, array: np.ndarray) -> None:
        """A folded result: a constant, or a shape that still holds the batch (None)."""
        if array.dtype == object and any(v is None for v in array.flat):
            self.syms[name] = array
        elif array.dtype == object:
            self.consts[name] = array.astype(np.int64)
        else:
            self.consts[name] = array

    def module(self, base: str, module: nn.Module, *args: Any) -> fx.Node:
        self.count += 1
        name = f"{base}_{self.count}"
        self.root.add_module(name, module)
        return self.graph.call_module(name, args)

    def const(self, name: str, node: Any) -> np.ndarray:
        if name in self.syms:
            raise _fail(node, f"input {name!r} depends on the batch size")
        if name not in self.consts:
            raise _fail(node, f"input {name!r} must be a constant (initializer or Constant)")
        return self.consts[name]

    def value(self, name: str, node: Any) -> Any:
        if name in self.pending:
            raise _fail(node, self.pending[name][3])
        if name in self.values:
            return self.values[name]
        if name in self.consts:
            self.count += 1
            attr = f"const_{self.count}"
            self.root.register_buffer(attr, torch.from_numpy(np.array(self.consts[name])))
            self.values[name] = self.graph.get_attr(attr)
            return self.values[name]
        if name in self.syms:  # folded shape arithmetic that still holds the batch size
            raise _fail(
                node,
                f"input {name!r} is a shape computed from the batch size (as torch writes "
                "x.expand(x.shape[0], ...) for a class token); only shapes that the batch "
                "size does not enter, and the model's tensors, can be used here",
            )
        raise _fail(node, f"unknown input {name!r}")

    def known_shape(self, name: str) -> list[int | None] | None:
        """``name``'s shape with every axis but the batch known: ONNX's inference, or else
        the graph built so far run on one zero sample (torch writes slices and reshapes
        from shapes it computes at run time, which ONNX's inference cannot follow)."""
        shape = self.shapes.get(name)
        if shape and None not in shape[1:]:  # [] is an unknown rank
            return shape
        if name not in self.values or self.input_shape is None or name in self.unprobed:
            return shape
        graph = fx.Graph()
        mapped: dict[fx.Node, fx.Node] = {}
        graph.graph_copy(self.graph, mapped)
        graph.output(mapped[self.values[name]])
        probe = fx.GraphModule(self.root, graph)
        from torch.fx.passes.shape_prop import ShapeProp

        try:
            with torch.no_grad():
                ShapeProp(probe.eval()).propagate(torch.zeros(1, *self.input_shape))
        except Exception:  # the caller names the shape it could not learn
            self.unprobed.add(name)  # and later callers do not run the graph again
            return shape
        for value, node in self.values.items():  # every value's shape, while we are at it
            meta = mapped[node].meta.get("tensor_meta") if node in mapped else None
            if node.op != "get_attr" and meta is not None and len(getattr(meta, "shape", ())):
                # the probe ran one sample; the model's batch is fixed or None (dynamic)
                self.learn_shape(value, [self.batch, *(int(d) for d in meta.shape[1:])])
        return self.shapes.get(name)

    def learn_shape(self, name: str, shape: list[int | None]) -> None:
        """A value's shape from the op that made it, where ONNX's shape inference left it
        (partly) unknown: torch writes a reshape to a target computed from the batch size
        (a channel shuffle's) without one."""
        old = self.shapes.get(name)
        if not old or (len(old) == len(shape) and None in old[1:]):  # unknown rank: []
            self.shapes[name] = shape

    def rank(self, name: str) -> int | None:
        shape = self.shapes.get(name)
        return None if shape is None else len(shape)


def _param(array: np.ndarray) -> nn.Parameter:
    return nn.Parameter(torch.from_numpy(np.array(array, dtype=np.float32)))


def _convert_pad(b: _Builder, node: Any, a: dict[str, Any], x: Any) -> None:
    """Pad in constant mode, of the spatial axes of an (N, C, L) or (N, C, H, W) value: its
    pads from the attribute (opset < 11) or a constant input, over every axis or over the
    constant ``axes`` input (opset 18)."""
    mode = _text(a, "mode", "constant")
    if mode != "constant":
        raise _fail(node, f"mode {mode!r} is not supported (only 'constant')")
    ins = list(node.input)
    if x is None:
        raise _fail(node, "Pad of a constant is not supported (only of values)")
    rank = b.rank(ins[0])
    if rank is None:
        raise _fail(node, "Pad needs an input of known rank")
    if rank not in (3, 4):
        raise _fail(node, f"padding a rank-{rank} value; only (N, C, L) and (N, C, H, W)")
    pads = _int_list(b, node, a, 1, "pads")
    axes = list(range(rank))
    if len(ins) > 3 and ins[3]:
        axes = [int(v) for v in b.const(ins[3], node).reshape(-1)]
        if any(not -rank <= v < rank for v in axes):
            raise _fail(node, f"axes {axes} out of range for rank {rank}")
        axes = [v % rank for v in axes]
    if pads is None or len(pads) != 2 * len(axes):
        raise _fail(node, f"pads {pads}: expected 2 x {len(axes)} counts")
    begin, end = [0] * rank, [0] * rank
    for j, axis in enumerate(axes):
        begin[axis], end[axis] = pads[j], pads[len(axes) + j]
    if any(begin[:2]) or any(end[:2]):
        raise _fail(node, f"pads {pads} pad the batch or channel axis; only spatial axes")
    if min(begin + end) < 0:
        raise _fail(node, f"pads {pads}: negative pads (cropping) are not supported")
    if "value" in a:
        value = float(a["value"])
    elif len(ins) > 2 and ins[2]:
        value = float(np.asarray(b.const(ins[2], node)).reshape(-1)[0])
    else:
        value = 0.0
    if not abs(value) <= MAX_FLOAT32:  # NaN too
        raise _fail(node, f"constant_value {value} is not a finite float32")
    pad = _pad_module(rank - 2, begin[2:], end[2:], value)
    b.values[node.output[0]] = b.module("pad", pad, x)


# Resize's coordinate modes and the nearest_modes with which, for an integer factor k, the
# output pixel o reads input pixel o // k (the runtime's upsample): asymmetric reads
# floor(o / k); the half-pixel modes round (o + 0.5) / k - 0.5, never a tie; TF's
# half-pixel mode floors (o + 0.5) / k
_NEAREST_AS_REPEAT = {
    "asymmetric": {"floor"},
    "half_pixel": {"round_prefer_floor", "round_prefer_ceil"},
    "pytorch_half_pixel": {"round_prefer_floor", "round_prefer_ceil"},
    "tf_half_pixel_for_nn": {"floor"},
}


def _convert_resize(b: _Builder, node: Any, a: dict[str, Any], x: Any) -> None:
    """Resize (opset 10+) and Upsample (opset 7-9) in nearest mode by integer factors on the
    spatial axes of an (N, C, L) or (N, C, H, W) value: ``nn.Upsample``."""
    op, ins = node.op_type, list(node.input)
    mode = _text(a, "mode", "nearest")
    if mode != "nearest":
        raise _fail(
            node,
            f"mode {mode!r} is not supported (only 'nearest', integer factors: export the "
            "model with nn.Upsample(mode='nearest-exact') or F.interpolate(mode='nearest'))",
        )
    if op == "Resize":
        coords = _text(a, "coordinate_transformation_mode", "half_pixel")
        rounding = _text(a, "nearest_mode", "round_prefer_floor")
    else:  # Upsample: asymmetric, floor
        coords, rounding = "asymmetric", "floor"
    policy = _text(a, "keep_aspect_ratio_policy", "stretch")
    if policy != "stretch":
        raise _fail(node, f"keep_aspect_ratio_policy {policy!r} is not supported")
    if rounding not in _NEAREST_AS_REPEAT.get(coords, set()):
        raise _fail(
            node,
            f"coordinate_transformation_mode {coords!r} with nearest_mode {rounding!r} is not "
            "supported (integer upsampling reads pixel o // k only with asymmetric/floor or "
            "half_pixel/round)",
        )
    if x is None:
        raise _fail(node, f"{op} of a constant is not supported (only of values)")
    in_shape = b.known_shape(ins[0])
    rank = len(in_shape) if in_shape is not None else None
    if rank not in (3, 4):
        raise _fail(node, f"{op} needs an (N, C, L) or (N, C, H, W) input of known rank")
    assert in_shape is not None
    scales: list[float] | None = None
    if op == "Upsample" and "scales" in a:  # opset 7
        scales = [float(v) for v in a["scales"]]
    elif op == "Upsample" or (op == "Resize" and b.opset < 11):  # (X, scales)
        scales = [float(v) for v in b.const(ins[1], node).reshape(-1)]
    elif len(ins) > 2 and ins[2]:  # Resize-11+: (X, roi, scales, sizes)
        scales = [float(v) for v in b.const(ins[2], node).reshape(-1)]
    if scales is not None and scales:
        axes = [int(v) % rank for v in a.get("axes", range(rank))]
        full = [1.0] * rank
        for axis, value in zip(axes, scales, strict=False):
            full[axis] = value
        if full[:2] != [1.0, 1.0] or any(v < 1 or v != int(v) for v in full[2:]):
            raise _fail(node, f"scales {scales}: only integer factors >= 1 on the spatial axes")
        factors = [int(v) for v in full[2:]]
    else:  # Resize with sizes (constant, or the input's shape with the batch in it)
        name = ins[3] if len(ins) > 3 else ""
        sizes = b.syms.get(name, b.consts.get(name)) if name else None
        if sizes is None or None in in_shape[1:]:
            raise _fail(node, f"{op} needs constant scales, or sizes and a known input shape")
        target = [None if v is None else int(v) for v in np.asarray(sizes).reshape(-1)]
        if "axes" in a:  # opset 18: sizes of those axes only
            every: list[int | None] = list(in_shape)
            for axis, entry in zip(a["axes"], target, strict=False):
                every[int(axis) % rank] = entry
            target = every
        if (
            len(target) != rank
            or None in target[1:]
            or target[1] != in_shape[1]
            or target[0] not in (None, in_shape[0])
        ):
            raise _fail(node, f"sizes {target}: only the spatial axes of {in_shape} may change")
        spatial = [
            (int(i or 0), int(o or 0)) for i, o in zip(in_shape[2:], target[2:], strict=True)
        ]
        if any(o % i for i, o in spatial):
            raise _fail(node, f"sizes {target}: only integer multiples of {in_shape}")
        factors = [o // i for i, o in spatial]
    # "nearest-exact": torch's "nearest" scales by float32(1 / k), which reads pixel
    # o // k - 1 at some o = m k for k = 41, 47, 55, 61, ...
    up = nn.Upsample(scale_factor=tuple(float(v) for v in factors), mode="nearest-exact")
    b.values[node.output[0]] = b.module("upsample", up, x)


def _narrow(
    b: _Builder, node: Any, x: Any, shape: list[int | None], axis: int, start: int, end: int
) -> tuple[Any, list[int | None]]:
    """``x[..., start:end, ...]`` on ``axis`` (other than the batch): ``torch.narrow``."""
    if axis == 0:
        raise _fail(node, "slicing the batch axis is not supported")
    size = shape[axis]
    if size is None:
        raise _fail(node, f"{node.op_type} needs a known size of axis {axis}")
    start, end = (v + size if v < 0 else v for v in (start, end))
    start, end = max(0, min(start, size)), max(0, min(end, size))
    if start >= end:
        raise _fail(node, f"range [{start}, {end}) of axis {axis} is empty")
    if (start, end) == (0, size):
        return x, shape
    out = b.graph.call_function(torch.narrow, (x, axis, start, end - start))
    return out, [*shape[:axis], end - start, *shape[axis + 1 :]]


def _convert_slice(b: _Builder, node: Any, a: dict[str, Any], x: Any) -> None:
    """Slice of a value: contiguous ranges (step 1) of axes other than the batch, as
    ShuffleNet's channel split writes them."""
    ins = list(node.input)
    shape = b.known_shape(ins[0])
    if shape is None:
        raise _fail(node, "Slice of a value needs its known shape")
    starts = _int_list(b, node, a, 1, "starts") or []
    ends = _int_list(b, node, a, 2, "ends") or []
    axes = _int_list(b, node, a, 3, "axes") or list(range(len(starts)))
    steps = _int_list(b, node, a, 4, "steps") or [1] * len(starts)
    y, now = x, list(shape)
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        if step != 1:
            raise _fail(node, f"step {step}: only contiguous slices (step 1) are supported")
        axis %= len(shape)
        if axis == 0 and start == 0 and end >= 2**31 - 1:
            continue  # the whole batch
        y, now = _narrow(b, node, y, now, axis, start, end)
    b.values[node.output[0]] = y
    b.learn_shape(node.output[0], now)


def _convert_split(b: _Builder, node: Any, a: dict[str, Any], x: Any) -> None:
    """Split of a value into contiguous parts of one axis (``x.chunk``/``x.split``)."""
    ins, outs = list(node.input), list(node.output)
    shape = b.known_shape(ins[0])
    if shape is None:
        raise _fail(node, "Split of a value needs its known shape")
    axis = int(a.get("axis", 0)) % len(shape)
    size = shape[axis]
    if size is None:
        raise _fail(node, f"Split needs a known size of axis {axis}")
    sizes = _int_list(b, node, a, 1, "split")
    if sizes is None:  # equal parts; the last one smaller if they don't divide (opset 18)
        step = -(-size // len(outs))
        sizes = [min(step, size - i * step) for i in range(len(outs))]
    if len(sizes) != len(outs) or sum(sizes) != size or min(sizes) < 1:
        raise _fail(node, f"split {sizes} does not cut axis {axis} of {size} into {len(outs)}")
    start = 0
    for name, part in zip(outs, sizes, strict=True):
        y, now = _narrow(b, node, x, list(shape), axis, start, start + part)
        b.values[name] = y
        b.learn_shape(name, now)
        start += part


def _take_apart(b: _Builder, node: Any, op: str, a: dict[str, Any]) -> None:
    """Split, Squeeze or Gather on the first axis of a Transpose that moved the batch
    (pending): each part is a slice (or one index) of the source's axis ``perm[0]``; once
    that axis is gone the batch is first again and the part is a value (the source
    narrowed or indexed, then permuted)."""
    ins, outs = list(node.input), list(node.output)
    src, shape, perm, refusal = b.pending[ins[0]]
    moved = perm[0]
    if op == "Split":
        if int(a.get("axis", 0)) % len(perm) != 0:
            raise _fail(node, refusal)
        size = shape[moved]
        sizes = _int_list(b, node, a, 1, "split")
        if sizes is None and size is not None:
            step = -(-size // len(outs))
            sizes = [min(step, size - i * step) for i in range(len(outs))]
        if size is None or sizes is None or sum(sizes) != size or min(sizes) < 1:
            raise _fail(node, f"split {sizes} does not cut the moved axis of {size}")
        start = 0
        for name, part in zip(outs, sizes, strict=True):
            piece, now = _narrow(b, node, src, list(shape), moved, start, start + part)
            b.pending[name] = (piece, now, perm, refusal)
            start += part
        return
    if op == "Squeeze":
        axes = _int_list(b, node, a, 1, "axes")
        if axes is None or [v % len(perm) for v in axes] != [0] or shape[moved] != 1:
            raise _fail(node, refusal)
        index = 0
    else:  # Gather of one index on the moved axis
        found = b.const(ins[1], node)
        if int(a.get("axis", 0)) % len(perm) != 0 or found.ndim != 0:
            raise _fail(node, refusal)
        index = int(found) % int(shape[moved] or 1)
    rest = [p - (p > moved) for p in perm[1:]]
    if rest[0] != 0:
        raise _fail(node, refusal)
    y = b.graph.call_function(torch.select, (src, moved, index))
    if rest != sorted(rest):
        y = b.graph.call_function(torch.permute, (y, tuple(rest)))
    kept = [d for i, d in enumerate(shape) if i != moved]
    b.values[outs[0]] = y
    b.learn_shape(outs[0], [kept[i] for i in rest])


def _convert_node(b: _Builder, node: Any) -> None:
    op = node.op_type
    a = _attrs(node)
    ins = list(node.input)
    out = node.output[0]
    if op == "Constant":
        from onnx import numpy_helper

        if "value" not in a:
            raise _fail(node, "only tensor constants are supported")
        b.consts[out] = numpy_helper.to_array(a["value"])
        return
    if op in {"Identity", "Dropout"}:
        if ins[0] in b.consts:  # exporters deduplicate equal initializers through Identity
            b.consts[out] = b.consts[ins[0]]
        else:
            b.values[out] = b.value(ins[0], node)
        return
    if _fold(b, node, op, a, ins):
        return
    if ins and ins[0] in b.pending and op in {"Split", "Squeeze", "Gather"}:
        _take_apart(b, node, op, a)
        return
    x = b.value(ins[0], node) if ins and ins[0] not in b.consts else None
    if op == "Conv":
        w = b.const(ins[1], node)
        nd = w.ndim - 2
        if nd not in (1, 2):
            raise _fail(node, f"{nd}-D convolution is not supported")
        cls: Any = nn.Conv1d if nd == 1 else nn.Conv2d
        groups = int(a.get("group", 1))
        begin, end = _pads(b, node, a, list(w.shape[2:]))
        x, padding = _split_pads(b, x, begin, end, 0.0, _kept_pads(begin, end))
        conv = cls(
            w.shape[1] * groups,
            w.shape[0],
            tuple(w.shape[2:]),
            stride=tuple(a.get("strides", [1] * nd)),
            padding=tuple(padding),
            dilation=tuple(a.get("dilations", [1] * nd)),
            groups=groups,
            bias=len(ins) > 2 and bool(ins[2]),
        )
        conv.weight = _param(w)
        if conv.bias is not None:
            conv.bias = _param(b.const(ins[2], node))
        b.values[out] = b.module("conv", conv, x)
    elif op == "Gemm":
        if a.get("transA", 0):
            raise _fail(node, "transA is not supported")
        w = b.const(ins[1], node) * float(a.get("alpha", 1.0))
        if not a.get("transB", 0):
            w = w.T
        lin = nn.Linear(w.shape[1], w.shape[0], bias=len(ins) > 2 and bool(ins[2]))
        lin.weight = _param(w)
        if lin.bias is not None:
            c = np.broadcast_to(b.const(ins[2], node) * float(a.get("beta", 1.0)), (w.shape[0],))
            lin.bias = _param(c)
        b.values[out] = b.module("linear", lin, x)
    elif op == "MatMul":
        if ins[1] not in b.consts and ins[1] not in b.syms:  # attention's q @ k^T, p @ v
            y = b.value(ins[1], node)
            b.values[out] = b.graph.call_function(torch.matmul, (x, y))
            return
        w = b.const(ins[1], node)
        if w.ndim != 2:
            raise _fail(node, "MatMul needs a constant 2-D right operand")
        lin = nn.Linear(w.shape[0], w.shape[1], bias=False)
        lin.weight = _param(w.T)
        b.values[out] = b.module("linear", lin, x)
    elif op == "Expand":  # a constant to the batch size: a class token
        if ins[0] not in b.consts or ins[1] not in b.syms:
            raise _fail(node, "Expand is supported of a constant to the batch size only")
        value = np.asarray(b.consts[ins[0]], dtype=np.float32)
        sizes = [1 if v is None else int(v) for v in b.syms[ins[1]].reshape(-1)]
        full = np.broadcast_to(value, np.broadcast_shapes(value.shape, tuple(sizes)))
        if full.ndim != len(sizes) or full.ndim < 2 or full.shape[0] != 1:
            raise _fail(node, f"Expand of {value.shape} to {sizes} does not add a batch axis")
        b.values[out] = b.module("broadcast", BatchBroadcast(full[0]), b.values[b.input_name])
    elif op == "Gather":  # x[:, 0]: one index of an axis other than the batch
        index = b.const(ins[1], node)
        gather_axis = int(a.get("axis", 0)) % max(b.rank(ins[0]) or 0, 1)
        if gather_axis == 0 or index.ndim != 0:
            raise _fail(node, "Gather of a value is supported with one index, not on the batch")
        b.values[out] = b.graph.call_function(torch.select, (x, gather_axis, int(index)))
    elif op == "BatchNormalization":
        scale, bias, mean, var = (b.const(n, node) for n in ins[1:5])
        rank = b.rank(ins[0])
        cls_bn = nn.BatchNorm2d if rank == 4 else nn.BatchNorm1d
        bn = cls_bn(scale.shape[0], eps=float(a.get("epsilon", 1e-5)))
        bn.weight = _param(scale)
        bn.bias = _param(bias)
        bn.running_mean = torch.from_numpy(np.array(mean, dtype=np.float32))
        bn.running_var = torch.from_numpy(np.array(var, dtype=np.float32))
        b.values[out] = b.module("bn", bn, x)
    elif op in ELEMENTWISE:
        b.values[out] = b.module(op.lower(), ELEMENTWISE[op](), x)
    elif op == "LeakyRelu":
        b.values[out] = b.module("leaky_relu", nn.LeakyReLU(float(a.get("alpha", 0.01))), x)
    elif op == "PRelu":
        slope = b.const(ins[1], node).reshape(-1)
        prelu = nn.PReLU(slope.size)
        prelu.weight = _param(slope)
        b.values[out] = b.module("prelu", prelu, x)
    elif op == "Clip":
        lo = a.get("min", b.consts.get(ins[1]) if len(ins) > 1 and ins[1] else None)
        hi = a.get("max", b.consts.get(ins[2]) if len(ins) > 2 and ins[2] else None)
        lo_f = -np.inf if lo is None else float(np.asarray(lo))
        hi_f = np.inf if hi is None else float(np.asarray(hi))
        if lo_f == 0 and hi_f == np.inf:
            b.values[out] = b.module("relu", nn.ReLU(), x)
        elif np.isfinite(lo_f) and np.isfinite(hi_f):
            b.values[out] = b.module("hardtanh", nn.Hardtanh(lo_f, hi_f), x)
        else:
            raise _fail(node, "Clip needs both bounds (or min 0, no max)")
    elif op in {"MaxPool", "AveragePool"}:
        k = list(a["kernel_shape"])
        nd = len(k)
        if nd not in (1, 2):
            raise _fail(node, "only 1-D/2-D pooling is supported")
        if any(d != 1 for d in a.get("dilations", [1] * nd)):
            raise _fail(node, "dilated pooling is not supported")
        begin, end = _pads(b, node, a, k)
        ceil_mode = bool(a.get("ceil_mode", 0))
        include_pad = op == "MaxPool" or bool(a.get("count_include_pad", 0))
        if any(p >= kk or q >= kk for p, q, kk in zip(begin, end, k, strict=True)):
            raise _fail(node, f"padding (before {begin}, after {end}) reaches a kernel {k}")
        kept = _kept_pads(begin, end, [kk // 2 for kk in k])
        if (begin != kept or end != kept) and (ceil_mode or not include_pad):
            raise _fail(
                node,
                f"padding before {begin} and after {end} (asymmetric, or above half the "
                f"kernel {k}) is supported without ceil_mode, and for average pooling only "
                "with count_include_pad",
            )
        border = MAX_POOL_BORDER if op == "MaxPool" else 0.0
        x, padding = _split_pads(b, x, begin, end, border, kept)
        kw: dict[str, Any] = {
            "kernel_size": tuple(k),
            "stride": tuple(a.get("strides", [1] * nd)),
            "padding": tuple(padding),
            "ceil_mode": ceil_mode,
        }
        if op == "MaxPool":
            if len(node.output) > 1 and node.output[1]:
                raise _fail(node, "MaxPool indices output is not supported")
            pool: nn.Module = (nn.MaxPool1d if nd == 1 else nn.MaxPool2d)(**kw)
        else:
            kw["count_include_pad"] = bool(a.get("count_include_pad", 0))
            pool = (nn.AvgPool1d if nd == 1 else nn.AvgPool2d)(**kw)
        b.values[out] = b.module("pool", pool, x)
    elif op == "Pad":
        _convert_pad(b, node, a, x)
    elif op in {"Resize", "Upsample"}:
        _convert_resize(b, node, a, x)
    elif op == "Slice" and x is not None:
        _convert_slice(b, node, a, x)
    elif op == "Split" and x is not None:
        _convert_split(b, node, a, x)
    elif op == "Transpose":  # of a value (on constants it is folded): the batch stays first
        known = b.known_shape(ins[0])
        rank = len(known) if known else None
        if rank is None:
            raise _fail(node, "Transpose needs an input of known rank")
        perm = [int(v) for v in a.get("perm", range(rank - 1, -1, -1))]
        if sorted(perm) != list(range(rank)):
            raise _fail(node, f"perm {perm} is not a permutation of {rank} axes")
        if perm[0] != 0:  # usable only if Split/Squeeze/Gather give the batch back its place
            refusal = (
                f"Transpose {node.name or out!r} (perm {perm}) moves the batch axis, and this "
                "reader does not take the moved axis apart (nn.MultiheadAttention and "
                "nn.TransformerEncoderLayer write such transposes and are not supported; "
                "timm's qkv.permute(2, 0, 3, 1, 4).unbind(0) is)"
            )
            assert known is not None
            b.pending[out] = (x, list(known), perm, refusal)
            return
        b.values[out] = b.graph.call_function(torch.permute, (x, tuple(perm)))
        assert known is not None
        b.learn_shape(out, [known[i] for i in perm])
    elif op == "GlobalAveragePool":
        b.values[out] = b.module("gap", GlobalAvgPool(), x)
    elif op in {"Add", "Mul"}:
        fn = operator.add if op == "Add" else operator.mul
        lhs, rhs = b.value(ins[0], node), b.value(ins[1], node)
        b.values[out] = b.graph.call_function(fn, (lhs, rhs))
    elif op == "Sub":  # x - y = x + (-1) y; a constant operand is negated here
        if ins[1] in b.consts:
            b.consts[f"{out}.neg"] = -np.asarray(b.consts[ins[1]])
            neg = b.value(f"{out}.neg", node)
        else:
            b.consts[f"{out}.minus_one"] = np.array(-1.0, np.float32)
            minus = b.value(f"{out}.minus_one", node)
            neg = b.graph.call_function(operator.mul, (b.value(ins[1], node), minus))
        b.values[out] = b.graph.call_function(operator.add, (b.value(ins[0], node), neg))
    elif op == "Div":  # by a constant only: x * (1 / c)
        if ins[1] not in b.consts:
            raise _fail(node, "Div needs a constant divisor")
        divisor = np.asarray(b.consts[ins[1]], np.float64)
        if not np.all(divisor != 0):
            raise _fail(node, "Div by zero")
        b.consts[f"{out}.inv"] = (1.0 / divisor).astype(np.float32)
        b.values[out] = b.graph.call_function(operator.mul, (x, b.value(f"{out}.inv", node)))
    elif op in {"Squeeze", "Unsqueeze"}:  # a reshape that keeps the batch
        in_shape, out_shape = b.shapes.get(ins[0]), b.shapes.get(out)
        if in_shape is None or out_shape is None or None in out_shape[1:]:
            raise _fail(node, f"{op} needs known input and output shapes")
        if len(out_shape) < 1 or (in_shape[0], out_shape[0]) not in ((None, None),):
            raise _fail(node, f"{op} must keep the batch axis first")
        b.values[out] = b.graph.call_function(torch.reshape, (x, (-1, *out_shape[1:])))
    elif op == "ReduceMean":  # over every spatial axis, or over the tokens
        axes = _int_list(b, node, a, 1, "axes")
        rank = b.rank(ins[0]) or 0
        keep = int(a.get("keepdims", 1))
        if _over_spatial(axes, rank):  # global average pooling
            gap = b.module("gap", GlobalAvgPool(), x)
            b.values[out] = gap if keep else b.graph.call_function(torch.flatten, (gap, 1))
        elif _over_tokens(axes, rank):  # x.mean(1) of (N, L, C), (N, H, W, C)'s (1, 2)
            dims = tuple(sorted(v % rank for v in axes))  # type: ignore[union-attr]
            b.values[out] = b.graph.call_function(torch.mean, (x, dims, bool(keep)))
        else:
            raise _fail(
                node,
                f"ReduceMean over axes {axes} of a rank-{rank} value (only over every axis "
                "but the batch and one other: the spatial axes, or the tokens)",
            )
    elif op == "HardSigmoid":
        alpha, beta = float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
        b.values[out] = b.module("hardsigmoid", HardSigmoid(alpha, beta), x)
    elif op == "Elu":
        b.values[out] = b.module("elu", nn.ELU(float(a.get("alpha", 1.0))), x)
    elif op == "Selu":
        alpha, gamma = float(a.get("alpha", 1.67326319)), float(a.get("gamma", 1.05070102))
        if abs(alpha - 1.6732632) > 1e-6 or abs(gamma - 1.0507010) > 1e-6:
            raise _fail(node, "only Selu's default alpha and gamma are supported")
        b.values[out] = b.module("selu", nn.SELU(), x)
    elif op in {"GlobalMaxPool", "ReduceMax"}:  # over every spatial axis: one max pool
        shape = b.shapes.get(ins[0])
        rank = len(shape) if shape is not None else 0
        axes = _int_list(b, node, a, 1, "axes")
        if op == "ReduceMax" and not _over_spatial(axes, rank):
            raise _fail(node, f"ReduceMax over axes {axes} (only over every spatial axis)")
        if shape is None or rank not in (3, 4) or None in shape[2:]:
            raise _fail(node, f"{op} needs a known 1-D or 2-D spatial input shape")
        spatial = tuple(int(d) for d in shape[2:])  # type: ignore[arg-type]
        pooled = b.module("pool", (nn.MaxPool1d if rank == 3 else nn.MaxPool2d)(spatial), x)
        keep = op == "GlobalMaxPool" or int(a.get("keepdims", 1))
        b.values[out] = pooled if keep else b.graph.call_function(torch.flatten, (pooled, 1))
    elif op == "Flatten":
        axis = int(a.get("axis", 1))
        if axis != 1:
            raise _fail(node, f"Flatten axis {axis} is not supported (only 1)")
        b.values[out] = b.graph.call_function(torch.flatten, (x, 1))
    elif op == "Reshape":
        target = b.syms.get(ins[1])
        if target is None:
            target = b.const(ins[1], node)
        if any(v is None for v in target.flat[1:]):
            raise _fail(node, "only the first entry of the target shape may be the batch size")
        in_shape = b.known_shape(ins[0])
        if a.get("allowzero", 0) or in_shape is None or None in in_shape[1:]:
            raise _fail(node, "Reshape needs a known input shape and allowzero=0")
        first = target.flat[0] if target.size else 0
        # the target must keep the batch first: the symbolic batch, -1, 0 (copy it), or the
        # input's own fixed batch size
        if not (
            first is None
            or int(first) in (-1, 0)
            or (in_shape[0] is not None and int(first) == in_shape[0])
        ):
            raise _fail(node, f"target shape {target.tolist()} does not keep the batch first")
        sample = [int(d or 0) for d in in_shape[1:]]
        rest: list[int] = [
            sample[i] if int(v) == 0 else int(v) for i, v in enumerate(target.flat[1:])
        ]
        if rest.count(-1) > 1 or (-1 in rest and first is not None and int(first) == -1):
            raise _fail(node, f"target shape {target.tolist()}: more than one -1")
        total = math.prod(sample)
        if -1 in rest:  # resolved from the input's per-sample size
            rest[rest.index(-1)] = total // max(math.prod(v for v in rest if v != -1), 1)
        if math.prod(rest) != total:
            raise _fail(node, f"cannot reshape {in_shape} to {target.tolist()} keeping the batch")
        b.values[out] = b.graph.call_function(torch.reshape, (x, (-1, *rest)))
        b.learn_shape(out, [in_shape[0], *rest])
    elif op == "Concat":
        parts = [b.value(n, node) for n in ins]
        b.values[out] = b.graph.call_function(torch.cat, (parts,), {"dim": int(a["axis"])})
    elif op in {"Softmax", "LogSoftmax"}:
        b.values[out] = _softmax(b, node, op, a, b.value(ins[0], node))
    elif op == "LayerNormalization":
        if len(node.output) > 1 and any(node.output[1:]):
            raise _fail(node, "the mean and inverse-deviation outputs are not supported")
        scale = np.asarray(b.const(ins[1], node), np.float32)
        shift = b.const(ins[2], node) if len(ins) > 2 and ins[2] else None
        rank, axis = b.rank(ins[0]), int(a.get("axis", -1))
        if rank is None:
            raise _fail(node, "LayerNormalization needs a known input rank")
        if axis % rank == 0 or axis % rank != rank - scale.ndim:
            raise _fail(
                node, f"axis {axis} must start the {scale.ndim} trailing axes its scale has"
            )
        if int(a.get("stash_type", 1)) != 1:
            raise _fail(node, "only stash_type 1 (float32 statistics) is supported")
        eps = float(a.get("epsilon", 1e-5))
        norm = nn.LayerNorm(list(scale.shape), eps=eps, bias=shift is not None)
        norm.weight = _param(scale)
        if shift is not None:
            norm.bias = _param(np.broadcast_to(np.asarray(shift, np.float32), scale.shape))
        b.values[out] = b.module("layernorm", norm, x)
    elif op == "Gelu":
        approximate = _text(a, "approximate", "none")
        if approximate not in ("none", "tanh"):
            raise _fail(node, f"Gelu approximate={approximate!r} is not supported")
        b.values[out] = b.module("gelu", nn.GELU(approximate=approximate), x)
    else:
        hint = UNSUPPORTED_HINTS.get(op, "")
        raise _fail(node, f"this operator is not supported{hint}")


def load_onnx(path: str | Path) -> tuple[fx.GraphModule, tuple[int, ...]]:
    """The model of a self-contained ONNX file as a GraphModule, and its input shape."""
    import onnx

    p = Path(path)
    if p.stat().st_size > MAX_ONNX_BYTES:
        raise UserInputError(f"{p.name}: larger than {MAX_ONNX_BYTES} bytes")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise UserInputError(f"{p.name}: not a readable ONNX model ({exc})") from None
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            raise UserInputError(
                f"{p.name}: tensor {init.name!r} lives in external data; upload one "
                "self-contained file"
            )
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:
        raise UserInputError(f"{p.name}: ONNX shape inference failed ({exc})") from None
    init_names = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init_names]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise UserInputError(
            f"{p.name}: expected one input and one output, got {len(inputs)} and "
            f"{len(model.graph.output)}"
        )
    b = _Builder(model)
    for name, array in b.consts.items():  # detect_format checks this too, for raw floats
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise UserInputError(f"{p.name}: tensor {name!r} holds NaN or infinite values")
    for info in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        dims = info.type.tensor_type.shape.dim
        b.shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    in_shape = b.shapes[inputs[0].name]
    if len(in_shape) < 2 or any(d is None or d <= 0 for d in in_shape[1:]):
        raise UserInputError(
            f"{p.name}: the input needs a fixed shape except the batch, got {in_shape}"
        )
    b.values[inputs[0].name] = b.graph.placeholder("input")
    b.input_name = inputs[0].name
    b.input_shape = tuple(int(d or 0) for d in in_shape[1:])
    b.batch = in_shape[0]
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            raise _fail(node, f"operator domain {node.domain!r} is not supported")
        try:
            _convert_node(b, node)
        except UserInputError:
            raise
        except (KeyError, IndexError, ValueError, TypeError, ArithmeticError, RuntimeError) as exc:
            # a malformed node (missing attribute, index out of range, ...): name it
            raise _fail(node, f"cannot be imported ({type(exc).__name__}: {exc})") from None
    out_name = model.graph.output[0].name
    if out_name not in b.values:
        raise UserInputError(f"{p.name}: the output {out_name!r} is not computed from the input")
    b.graph.output(b.values[out_name])
    gm = fx.GraphModule(b.root, b.graph, class_name="OnnxModel")
    gm.meta["output_name"] = out_name  # the packed model's output keeps the file's name
    gm.eval()
    return gm, tuple(int(d) for d in in_shape[1:])  # type: ignore[arg-type]
