"""Export a converted (binary) ``GraphModule`` to a packed ``.bfm`` file.

Walks the fx graph in order and emits the ops of ``docs/format.md``:

- a binary twin becomes ``sign_pack`` (its threshold) then ``bconv2d``/``bconv1d``/
  ``blinear`` with ``sign(W)`` packed channels-last and the output transform: the channel
  scale ``alpha``, the XNOR-Net++ ``scale_h``/``scale_w`` (or ``scale_l``), the bias, and a
  following batch norm (when the twin is its only reader) folded in;
- a real ``Conv``/``Linear`` followed by a batch norm (its only reader) gets the batch norm
  folded into its weight and bias; any other batch norm becomes a ``batchnorm`` op;
- activations, pooling, ``add``/``mul``/``cat``, flatten and reshape map one to one; an
  ``add``/``mul`` with a constant per-channel tensor becomes a ``batchnorm`` op.

Anything else raises :class:`engine.errors.UserInputError` naming the node.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
import operator
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from engine.errors import UserInputError
from engine.layers import BinaryConv2d, BinaryLinear, BinaryMixin
from engine.onnx_import import BatchBroadcast, Erf, GlobalAvgPool, HardSigmoid
from runtime.packing import pack_signs

_BN = nn.modules.batchnorm._BatchNorm


def _f32(t: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu().double().numpy()
    return np.ascontiguousarray(t, dtype=np.float32)


F16_MAX = float(np.finfo(np.float16).max)


def _fits_f16(array: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(array)) and np.all(np.abs(array) <= F16_MAX))


def _round_real_layer(
    mod: nn.Module,
    bn: nn.Module | None,
    weight: torch.Tensor,
    bias: torch.Tensor,
    g: torch.Tensor | None,
) -> tuple[np.ndarray, np.ndarray]:
    """The float16 tensors to store for a real layer with folded ``weight`` and ``bias``
    (float64; ``g`` the folded batch norm's scale), and the module (and its batch norm)
    rounded in place so that the torch model computes what the file stores.

    Weight: ``mod.weight = f16(W) / g`` (rows with ``g = 0`` contribute nothing and stay).
    Bias: the batch norm's shift (or the layer's own bias without a batch norm) absorbs
    the difference ``f16(b) - b``. A tensor outside float16's range, or a bias nothing can
    absorb, stays float32 (and unrounded)."""
    w32, b32 = _f32(weight), _f32(bias)
    stored_w: np.ndarray = w32
    stored_b: np.ndarray = b32
    mod_weight = mod.weight
    assert isinstance(mod_weight, torch.Tensor)
    if _fits_f16(w32):
        stored_w = w32.astype(np.float16)
        target = torch.from_numpy(stored_w.astype(np.float64))
        with torch.no_grad():
            if g is None:
                mod_weight.copy_(target)
            else:
                shape = (-1,) + (1,) * (target.dim() - 1)
                nonzero = (g != 0).view(shape).expand_as(target)
                rounded = torch.where(nonzero, target / g.view(shape), mod_weight.double())
                mod_weight.copy_(rounded)
    absorber = bn.bias if bn is not None else mod.bias
    if _fits_f16(b32) and isinstance(absorber, torch.Tensor):
        stored_b = b32.astype(np.float16)
        delta = torch.from_numpy(stored_b.astype(np.float64)) - bias
        with torch.no_grad():
            absorber.copy_(absorber.double() + delta)
    return stored_w, stored_b


def _bn_affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(g, h)`` with ``bn(x) = x * g + h`` per channel (eval mode)."""
    assert isinstance(bn, _BN)
    if bn.running_mean is None or bn.running_var is None:
        raise UserInputError(f"batch norm without running statistics cannot be exported: {bn}")
    g = 1.0 / torch.sqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        g = g * bn.weight.detach().double()
    h = -bn.running_mean.double() * g
    if bn.bias is not None:
        h = h + bn.bias.detach().double()
    return g, h


def _pair(v: Any, n: int) -> list[int]:
    if isinstance(v, int):
        return [v] * n
    return [int(x) for x in v]


class _Exporter:
    def __init__(self, gm: fx.GraphModule, real_dtype: str = "float16") -> None:
        self.gm = gm
        self.real_dtype = real_dtype
        self.nodes: list[dict[str, Any]] = []
        self.tensors: dict[str, np.ndarray] = {}
        self.names: dict[fx.Node, str] = {}
        self.counter = 0
        self.folded: set[fx.Node] = set()
        self.node_names: set[str] = set()
        self.consts: dict[fx.Node, torch.Tensor] = {}  # parameters and what they compute
        self.per_sample: dict[fx.Node, torch.Tensor] = {}  # a constant expanded per sample
        self.shape_only: set[fx.Node] = set()  # x.size(0), x.shape: Python numbers
        self.pieces: dict[fx.Node, tuple[int, list[tuple[int, int]]]] = {}  # chunk, split
        self.numbers: dict[fx.Node, Any] = {}  # shape queries the batch size does not enter
        self.batch_dependent: set[fx.Node] = set()  # constants made from the batch size

    def concrete(self, arg: Any, where: fx.Node) -> Any:
        """``arg`` with each shape query in it (``x.size(1) // 2``) replaced by its number;
        one that depends on the batch size (``x.size(0)``) is refused."""
        if isinstance(arg, fx.Node):
            if arg in self.numbers:
                return self.numbers[arg]
            raise UserInputError(
                f"export: {where.name} uses {arg.name} as a number; only numbers that do not "
                "depend on the batch size (x.size(1), x.shape[2:], ...)"
            )
        if isinstance(arg, slice):
            return slice(*(self.concrete(v, where) for v in (arg.start, arg.stop, arg.step)))
        if isinstance(arg, tuple | list):
            return type(arg)(self.concrete(v, where) for v in arg)
        return arg

    def fresh(self, base: str) -> str:
        self.counter += 1
        return f"{base}:{self.counter}"

    def tensor(self, name: str, array: np.ndarray) -> str:
        self.tensors[name] = array
        return name

    def emit(
        self,
        op: str,
        name: str,
        inputs: list[str],
        *,
        attrs: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        out: str | None = None,
    ) -> str:
        out = out or self.fresh("v")
        if name in self.node_names:  # a module called twice (a shared ReLU) names two nodes
            name = self.fresh(name)
        self.node_names.add(name)
        node: dict[str, Any] = {"op": op, "name": name, "inputs": inputs, "outputs": [out]}
        if attrs:
            node["attrs"] = attrs
        if params:
            node["params"] = params
        self.nodes.append(node)
        return out

    def shape(self, node: fx.Node) -> tuple[int, ...]:
        meta = node.meta.get("tensor_meta")
        if meta is None:
            raise UserInputError(f"export: no shape known for node {node.name}")
        return tuple(int(s) for s in meta.shape)

    def value(self, arg: Any, where: fx.Node) -> str:
        if not isinstance(arg, fx.Node) or arg not in self.names:
            raise UserInputError(f"export: node {where.name} reads {arg!r}, which is no value")
        return self.names[arg]

    def sole_bn_user(self, node: fx.Node) -> tuple[fx.Node, nn.Module] | None:
        if len(node.users) != 1:
            return None
        (user,) = node.users
        if user.op == "call_module":
            mod = self.gm.get_submodule(str(user.target))
            if isinstance(mod, _BN) and mod.running_mean is not None:
                return user, mod
        return None


def _token_rank(ex: _Exporter, node: fx.Node, mod: nn.Module) -> int:
    """The rank of a Linear's input when it holds tokens (``(N, L, C)``, ``(N, H, W, C)``),
    else 0: such a Linear exports as a 1x1 convolution between two transposes."""
    src = node.args[0]
    rank = len(ex.shape(src)) if isinstance(src, fx.Node) else 2
    if not isinstance(mod, nn.Linear) or rank <= 2:
        return 0
    if rank > 4:
        raise UserInputError(f"export: linear {node.target} on a rank-{rank} value")
    return rank


def _export_binary(ex: _Exporter, node: fx.Node, layer: Any) -> None:
    name = str(node.target)
    x_name = ex.value(node.args[0], node)
    if not layer.input_sign.enabled or not layer.binary_weights:
        raise UserInputError(f"export: binary layer {name} has binarization switched off")
    tokens = _token_rank(ex, node, layer)
    if tokens:
        x_name = _channels_first(ex, name, x_name, tokens, label="tokens")
    threshold = ex.tensor(f"{name}.threshold", _f32(layer.input_sign.threshold))
    bits = ex.emit("sign_pack", f"{name}.in", [x_name], params={"threshold": threshold})
    with torch.no_grad():
        w = layer.weight.detach().cpu()  # +/-1
        scale = layer.channel_scale().detach().cpu().double()
        bias = (
            layer.bias.detach().cpu().double()
            if layer.bias is not None
            else torch.zeros_like(scale)
        )
        pos = [p.detach().cpu().double() for p in layer.pos_scales]
    # no batch norm folds into a Linear on tokens: one after it normalizes another axis
    fused = None if tokens else ex.sole_bn_user(node)
    if fused is not None:
        bn_node, bn = fused
        g, h = _bn_affine(bn)
        scale, bias = scale * g, bias * g + h
        ex.folded.add(bn_node)
    params = {}
    if isinstance(layer, BinaryLinear) and not tokens:
        op = "blinear"
        attrs: dict[str, Any] = {
            "in_features": layer.in_features,
            "out_features": layer.out_features,
        }
        packed = pack_signs(w.numpy())
    elif tokens:  # a 1x1 convolution over the token axes
        nsp = tokens - 2
        op = f"bconv{nsp}d"
        attrs = {
            "in_channels": layer.in_features,
            "out_channels": layer.out_features,
            "kernel_size": [1] * nsp,
            "stride": [1] * nsp,
            "padding": [0] * nsp,
            "dilation": [1] * nsp,
            "pad_mode": "zero",
        }
        w = w.reshape(*w.shape, *[1] * nsp)  # (C_out, C_in, 1[, 1]): a single tap
    else:
        nsp = 2 if isinstance(layer, BinaryConv2d) else 1
        op = "bconv2d" if nsp == 2 else "bconv1d"
        attrs = {
            "in_channels": layer.in_channels,
            "out_channels": layer.out_channels,
            "kernel_size": _pair(layer.kernel_size, nsp),
            "stride": _pair(layer.stride, nsp),
            "padding": _pair(layer.padding, nsp),
            "dilation": _pair(layer.dilation, nsp),
            "pad_mode": "zero",
        }
    if op != "blinear":  # channels last: (C_out, kh, kw, words)
        perm = (0, 2, 3, 1) if nsp == 2 else (0, 2, 1)
        packed = pack_signs(w.permute(*perm).contiguous().numpy())
    if pos and op != "blinear":
        keys = ["scale_h", "scale_w"] if nsp == 2 else ["scale_l"]
        for key, factor in zip(keys, pos, strict=True):
            params[key] = ex.tensor(f"{name}.{key}", _f32(factor))
    attrs.update({"activation": "none", "post_activation": "none", "output": "float"})
    params["weight"] = ex.tensor(f"{name}.weight", packed)
    params["scale"] = ex.tensor(f"{name}.scale", _f32(scale))
    params["bias"] = ex.tensor(f"{name}.bias", _f32(bias))
    out = ex.emit(op, name, [bits], attrs=attrs, params=params)
    if tokens:
        out = _channels_last(ex, name, out, tokens)
    ex.names[node] = out
    if fused is not None:
        ex.names[fused[0]] = out


def _channels_first(ex: _Exporter, name: str, x: str, rank: int, label: str = "in") -> str:
    """The last axis of a rank-3/4 value moved to axis 1 (a ``transpose`` node)."""
    return ex.emit(
        "transpose", f"{name}.{label}", [x], attrs={"perm": [0, rank - 1, *range(1, rank - 1)]}
    )


def _channels_last(ex: _Exporter, name: str, x: str, rank: int) -> str:
    """Axis 1 moved back to the end (after :func:`_channels_first`)."""
    return ex.emit("transpose", f"{name}.out", [x], attrs={"perm": [0, *range(2, rank), 1]})


def _export_real_layer(ex: _Exporter, node: fx.Node, mod: nn.Module) -> None:
    name = str(node.target)
    x_name = ex.value(node.args[0], node)
    # a Linear over the last axis of (N, L, C) or (N, H, W, C) values (a token MLP,
    # ConvNeXt's pointwise layers): transpose, a 1x1 real convolution, transpose back
    rank = _token_rank(ex, node, mod)
    last_axis = rank > 0
    weight = mod.weight.detach().cpu().double()  # type: ignore[operator]
    bias_t = mod.bias
    out_ch = weight.shape[0]
    bias = (
        bias_t.detach().cpu().double()
        if isinstance(bias_t, torch.Tensor)
        else torch.zeros(out_ch, dtype=torch.float64)
    )
    # no batch norm folds into a last-axis Linear: one after it normalizes another axis
    fused = None if last_axis else ex.sole_bn_user(node)
    g: torch.Tensor | None = None
    if fused is not None:
        g, h = _bn_affine(fused[1])
        weight = weight * g.view((-1,) + (1,) * (weight.dim() - 1))
        bias = bias * g + h
        ex.folded.add(fused[0])
    if ex.real_dtype == "float16":
        stored_w, stored_b = _round_real_layer(
            mod, None if fused is None else fused[1], weight, bias, g
        )
    else:
        stored_w, stored_b = _f32(weight), _f32(bias)
    if last_axis:  # the 1x1 convolution's (C_out, C_in, 1[, 1]) weight
        stored_w = stored_w.reshape(*stored_w.shape, *[1] * (rank - 2))
    params = {
        "weight": ex.tensor(f"{name}.weight", stored_w),
        "bias": ex.tensor(f"{name}.bias", stored_b),
    }
    if last_axis:
        nsp = rank - 2
        attrs = {"stride": [1] * nsp, "padding": [0] * nsp, "dilation": [1] * nsp, "groups": 1}
        x_first = _channels_first(ex, name, x_name, rank)
        y = ex.emit(f"conv{nsp}d", name, [x_first], params=params, attrs=attrs)
        out = _channels_last(ex, name, y, rank)
    elif isinstance(mod, nn.Linear):
        out = ex.emit("linear", name, [x_name], params=params)
    else:
        assert isinstance(mod, nn.Conv1d | nn.Conv2d)
        if mod.padding_mode != "zeros" or isinstance(mod.padding, str):
            raise UserInputError(
                f"export: convolution {name} uses padding {mod.padding!r}/"
                f"{mod.padding_mode}; only numeric zero padding is supported"
            )
        nsp = 2 if isinstance(mod, nn.Conv2d) else 1
        out = ex.emit(
            f"conv{nsp}d",
            name,
            [x_name],
            params=params,
            attrs={
                "stride": _pair(mod.stride, nsp),
                "padding": _pair(mod.padding, nsp),
                "dilation": _pair(mod.dilation, nsp),
                "groups": mod.groups,
            },
        )
    ex.names[node] = out
    if fused is not None:
        ex.names[fused[0]] = out


def _pieces(ex: _Exporter, node: fx.Node, *, chunk: bool) -> tuple[int, list[tuple[int, int]]]:
    """The axis and the ranges of ``chunk``/``split``'s pieces (each getitem: a slice)."""
    given: Any = {
        **dict(zip(("input", "size", "dim"), node.args, strict=False)),
        **node.kwargs,
    }
    keys = ("size", "chunks", "split_size_or_sections", "split_size")
    size = ex.concrete(next(given[k] for k in keys if k in given), node)
    given["dim"] = ex.concrete(given.get("dim", 0), node)
    src = given["input"]
    assert isinstance(src, fx.Node)
    shape = ex.shape(src)
    axis = int(given.get("dim", 0)) % len(shape)
    if axis == 0:
        raise UserInputError(f"export: {node.name} splits the batch axis")
    length = shape[axis]
    if chunk:  # torch's chunk: pieces of ceil(length / n)
        step = -(-length // int(size))
        sizes = [min(step, length - i) for i in range(0, length, step)]
    elif isinstance(size, int):
        sizes = [min(size, length - i) for i in range(0, length, size)]
    else:
        sizes = [int(v) for v in size]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return axis, [(b, b + n) for b, n in zip(starts, sizes, strict=True)]


def _emit_slice(
    ex: _Exporter, name: str, x: str, shape: tuple[int, ...], axis: int, begin: int, end: int
) -> tuple[str, tuple[int, ...]]:
    """A ``slice`` of ``axis``; a value of 5 axes (timm's ``(B, N, 3, H, D)``), which the
    runtime only reshapes and transposes, is viewed with the axes before and after this
    one merged, sliced, and viewed back."""
    cut = (*shape[:axis], end - begin, *shape[axis + 1 :])
    attrs = {"axis": axis, "start": begin, "end": end}
    if len(shape) <= 4:
        return ex.emit("slice", name, [x], attrs=attrs), cut
    lead = [math.prod(shape[1:axis])] if axis > 1 else []
    tail = [math.prod(shape[axis + 1 :])] if axis < len(shape) - 1 else []
    view = ex.emit("reshape", f"{name}.merge", [x], attrs={"shape": [*lead, shape[axis], *tail]})
    attrs["axis"] = 1 + len(lead)
    part = ex.emit("slice", name, [view], attrs=attrs)
    return ex.emit("reshape", f"{name}.split", [part], attrs={"shape": list(cut[1:])}), cut


def _export_index(ex: _Exporter, node: fx.Node, src: fx.Node, index: Any) -> str:
    """``x[:, 0]``, ``x[..., 1:3]``: ``slice`` ops on axes other than the batch (step 1),
    then a ``reshape`` that drops the axes an integer index removed."""
    shape = ex.shape(src)
    index = ex.concrete(index, node)
    items = list(index) if isinstance(index, tuple) else [index]
    if Ellipsis in items:
        at = items.index(Ellipsis)
        items[at : at + 1] = [slice(None)] * (len(shape) - len(items) + 1)
    x = ex.value(src, node)
    for axis, item in enumerate(items):
        if item == slice(None):
            continue
        size = shape[axis] if axis < len(shape) else 0
        if isinstance(item, int) and axis > 0:
            begin, end = item % size, item % size + 1
        elif isinstance(item, slice) and axis > 0 and item.step in (None, 1):
            begin, end, _ = item.indices(size)
        else:
            raise UserInputError(
                f"export: {node.name} indexes with {index!r}; only integers and slices of "
                "step 1 on axes other than the batch"
            )
        if end <= begin:
            raise UserInputError(f"export: {node.name} takes an empty slice of axis {axis}")
        x, shape = _emit_slice(ex, f"{node.name}.axis{axis}", x, shape, axis, begin, end)
    out_shape = list(ex.shape(node)[1:])
    if any(isinstance(item, int) for item in items):
        x = ex.emit("reshape", node.name, [x], attrs={"shape": out_shape})
    return x


def _silu(ex: _Exporter, name: str, x: str) -> str:
    """SiLU (swish) ``x * sigmoid(x)``: a ``sigmoid`` and a ``mul``, as ONNX writes it."""
    gate = ex.emit("sigmoid", f"{name}.sigmoid", [x])
    return ex.emit("mul", name, [x, gate])


def _pool_attrs(mod: Any, nsp: int, avg: bool) -> dict[str, Any]:
    attrs = {
        "kernel_size": _pair(mod.kernel_size, nsp),
        "stride": _pair(mod.stride if mod.stride is not None else mod.kernel_size, nsp),
        "padding": _pair(mod.padding, nsp),
        "ceil_mode": bool(mod.ceil_mode),
    }
    if avg:
        attrs["count_include_pad"] = bool(mod.count_include_pad)
        if getattr(mod, "divisor_override", None):
            raise UserInputError("export: avg pooling with divisor_override is not supported")
    elif _pair(mod.dilation, nsp) != [1] * nsp:
        raise UserInputError("export: dilated max pooling is not supported")
    return attrs


def _upsample_scales(
    name: str, mode: Any, scale_factor: Any, x_shape: tuple[int, ...], shape: tuple[int, ...]
) -> list[int]:
    """The integer factors of a nearest upsampling from ``x_shape`` to ``shape``. With an
    integer factor k, torch's "nearest" and "nearest-exact" both read pixel o // k."""
    nsp = len(x_shape) - 2
    if mode not in ("nearest", "nearest-exact"):
        raise UserInputError(
            f"export: {name} upsamples in mode {mode!r}; only 'nearest' with integer factors"
        )
    if not 1 <= nsp <= 2 or len(shape) != len(x_shape):
        raise UserInputError(f"export: {name} upsamples a rank-{len(x_shape)} value")
    scales = []
    for i in range(nsp):
        size, out = x_shape[2 + i], shape[2 + i]
        if out % size:
            raise UserInputError(
                f"export: {name} resizes axis {2 + i} from {size} to {out}; "
                "only integer upsampling factors"
            )
        scales.append(out // size)
    if scale_factor is not None:  # a fractional factor maps pixels differently
        given = list(scale_factor) if isinstance(scale_factor, tuple | list) else [scale_factor]
        given = given * nsp if len(given) == 1 else given
        if [float(v) for v in given] != [float(v) for v in scales]:
            raise UserInputError(
                f"export: {name} has scale_factor {scale_factor}; only integer factors"
            )
    if mode == "nearest":  # torch reads floor(o * float32 scale): o // k except at some k
        for i, k in enumerate(scales):
            size = x_shape[2 + i]
            scale = (
                np.float32(1.0 / k)
                if scale_factor is not None
                else np.float32(size) / np.float32(size * k)
            )
            o = np.arange(size * k, dtype=np.float32)
            read = np.minimum(np.floor(o * scale), size - 1).astype(np.int64)
            if not np.array_equal(read, np.arange(size * k) // k):
                raise UserInputError(
                    f"export: {name}: torch's 'nearest' at factor {k} reads pixels other than "
                    "o // k (float32 rounding of 1/k); use mode 'nearest-exact'"
                )
    return scales


def _export_module(ex: _Exporter, node: fx.Node) -> None:
    mod = ex.gm.get_submodule(str(node.target))
    name = str(node.target)
    if node in ex.folded:
        return
    if isinstance(mod, BinaryMixin):
        _export_binary(ex, node, mod)
        return
    if type(mod) in (nn.Linear, nn.Conv1d, nn.Conv2d):
        _export_real_layer(ex, node, mod)
        return
    x = ex.value(node.args[0], node)
    shape = ex.shape(node)
    if isinstance(mod, _BN):
        g, h = _bn_affine(mod)
        out = ex.emit(
            "batchnorm",
            name,
            [x],
            params={
                "scale": ex.tensor(f"{name}.scale", _f32(g)),
                "shift": ex.tensor(f"{name}.shift", _f32(h)),
            },
        )
    elif isinstance(mod, nn.ReLU):
        out = ex.emit("relu", name, [x])
    elif isinstance(mod, nn.Hardtanh):  # includes ReLU6
        out = ex.emit(
            "hardtanh",
            name,
            [x],
            attrs={"min_val": float(mod.min_val), "max_val": float(mod.max_val)},
        )
    elif isinstance(mod, nn.PReLU):
        out = ex.emit(
            "prelu",
            name,
            [x],
            params={"slope": ex.tensor(f"{name}.slope", _f32(mod.weight.reshape(-1)))},
        )
    elif isinstance(mod, nn.LeakyReLU):
        out = ex.emit("leaky_relu", name, [x], attrs={"negative_slope": float(mod.negative_slope)})
    elif isinstance(mod, nn.Sigmoid):
        out = ex.emit("sigmoid", name, [x])
    elif isinstance(mod, nn.Tanh):
        out = ex.emit("tanh", name, [x])
    elif isinstance(mod, nn.Softmax):
        dim = mod.dim if mod.dim is not None else 1
        out = ex.emit("softmax", name, [x], attrs={"axis": dim % len(shape)})
    elif isinstance(mod, nn.MaxPool2d | nn.MaxPool1d | nn.AvgPool2d | nn.AvgPool1d):
        nsp = 2 if isinstance(mod, nn.MaxPool2d | nn.AvgPool2d) else 1
        avg = isinstance(mod, nn.AvgPool2d | nn.AvgPool1d)
        op = ("avgpool" if avg else "maxpool") + f"{nsp}d"
        out = ex.emit(op, name, [x], attrs=_pool_attrs(mod, nsp, avg))
    elif isinstance(mod, nn.AdaptiveAvgPool2d | nn.AdaptiveAvgPool1d | GlobalAvgPool):
        if any(s != 1 for s in shape[2:]):
            raise UserInputError(f"export: adaptive pooling {name} to {shape[2:]} (only 1)")
        pooled = ex.emit("global_avgpool", name, [x])
        out = ex.emit(
            "reshape", f"{name}.keepdim", [pooled], attrs={"shape": [int(s) for s in shape[1:]]}
        )
    elif isinstance(mod, nn.Flatten):
        if mod.start_dim != 1 or mod.end_dim != -1:
            raise UserInputError(f"export: flatten {name} must flatten dims 1..-1")
        out = ex.emit("flatten", name, [x])
    elif isinstance(mod, nn.LayerNorm):
        ln_weight = mod.weight if mod.weight is not None else np.ones(mod.normalized_shape)
        params = {"weight": ex.tensor(f"{name}.weight", _f32(ln_weight))}
        if mod.bias is not None:
            params["bias"] = ex.tensor(f"{name}.bias", _f32(mod.bias))
        out = ex.emit("layernorm", name, [x], attrs={"eps": float(mod.eps)}, params=params)
    elif isinstance(mod, Erf):
        out = ex.emit("erf", name, [x])
    elif isinstance(mod, nn.ELU):
        out = ex.emit("elu", name, [x], attrs={"alpha": float(mod.alpha)})
    elif isinstance(mod, nn.SELU | nn.Mish):
        out = ex.emit("selu" if isinstance(mod, nn.SELU) else "mish", name, [x])
    elif isinstance(mod, nn.Softplus):
        if mod.beta != 1:
            raise UserInputError(f"export: softplus {name} with beta {mod.beta} (only 1)")
        out = ex.emit("softplus", name, [x])
    elif isinstance(mod, nn.LogSoftmax):
        dim = mod.dim if mod.dim is not None else 1
        out = ex.emit("log_softmax", name, [x], attrs={"axis": dim % len(shape)})
    elif isinstance(mod, nn.Hardswish):
        out = ex.emit("hardswish", name, [x])
    elif isinstance(mod, nn.Hardsigmoid | HardSigmoid):
        alpha, beta = (mod.alpha, mod.beta) if isinstance(mod, HardSigmoid) else (1 / 6, 0.5)
        out = ex.emit("hardsigmoid", name, [x], attrs={"alpha": float(alpha), "beta": float(beta)})
    elif isinstance(mod, BatchBroadcast):  # the importer's Expand of a class token
        out = _emit_broadcast(ex, name, mod.value, x)
    elif isinstance(mod, nn.SiLU):
        out = _silu(ex, name, x)
    elif isinstance(mod, nn.GELU):
        out = ex.emit("gelu", name, [x], attrs={"approximate": str(mod.approximate)})
    elif isinstance(mod, nn.ConstantPad1d | nn.ConstantPad2d):  # includes ZeroPad2d
        # torch: (begin, end) of the last axis first; the format: begins, then ends
        widths = [int(v) for v in mod.padding]
        nsp, padded = len(ex.shape(node)) - 2, len(widths) // 2  # axes it has, axes padded
        if min(widths) < 0:
            raise UserInputError(f"export: pad {name} crops ({widths}); only padding exports")
        if not 1 <= nsp <= 2 or padded > nsp:
            raise UserInputError(
                f"export: pad {name} pads {padded} trailing axes of a rank-{nsp + 2} value; "
                "only the spatial axes of (N, C, L) or (N, C, H, W) values"
            )
        widths += [0, 0] * (nsp - padded)  # (begin, end) from the last axis
        begins = [widths[2 * (nsp - 1 - i)] for i in range(nsp)]
        ends = [widths[2 * (nsp - 1 - i) + 1] for i in range(nsp)]
        out = ex.emit("pad", name, [x], attrs={"pads": begins + ends, "value": float(mod.value)})
    elif isinstance(mod, nn.Upsample):
        src = node.args[0]
        assert isinstance(src, fx.Node)
        if mod.size is None and mod.scale_factor is None:  # pragma: no cover - torch refuses
            raise UserInputError(f"export: {name} has neither size nor scale_factor")
        scales = _upsample_scales(name, mod.mode, mod.scale_factor, ex.shape(src), shape)
        out = ex.emit("upsample", name, [x], attrs={"scales": scales})
    elif isinstance(mod, nn.Dropout | nn.Identity):
        out = x
    else:
        raise UserInputError(f"export: module {name} ({type(mod).__name__}) is not supported")
    ex.names[node] = out


def _export_const_affine(
    ex: _Exporter, node: fx.Node, x_node: fx.Node, value: torch.Tensor, is_add: bool
) -> str:
    shape = ex.shape(x_node)
    c = shape[1]
    arr = value.detach().cpu().double().reshape(-1)
    # numpy broadcasting aligns the constant's shape to the right of (N, C, *S): it is per
    # channel when every axis but C is 1 there ((C,) against (N, C); (C, 1, 1) or
    # (1, C, 1, 1) against (N, C, H, W))
    aligned = (1,) * (len(shape) - value.dim()) + tuple(value.shape)
    per_channel = len(aligned) == len(shape) and all(
        d == 1 for i, d in enumerate(aligned) if i != 1
    )
    last = shape[-1]
    last_axis = (
        len(shape) in (3, 4)
        and not per_channel
        and len(aligned) == len(shape)
        and arr.numel() == last
        and all(d == 1 for d in aligned[:-1])
    )
    if last_axis:  # a bias or scale over the last axis (a Linear's, a layer scale): wrapped
        one, zero = torch.ones(last, dtype=torch.float64), torch.zeros(last, dtype=torch.float64)
        scale, shift = (one, arr) if is_add else (arr, zero)
        rank = len(shape)
        y = ex.emit(
            "batchnorm",
            node.name,
            [_channels_first(ex, node.name, ex.value(x_node, node), rank)],
            params={
                "scale": ex.tensor(f"{node.name}.scale", _f32(scale)),
                "shift": ex.tensor(f"{node.name}.shift", _f32(shift)),
            },
        )
        return _channels_last(ex, node.name, y, rank)
    if arr.numel() == 1:
        arr = arr.expand(c)
    elif not per_channel or arr.numel() != c:  # the same for every sample: a broadcast
        try:
            full = torch.broadcast_to(value, (1, *shape[1:]))[0]
            broadcastable = value.dim() <= len(shape) and tuple(ex.shape(node)) == shape
        except RuntimeError:
            broadcastable = False
        if not broadcastable or not 1 <= full.dim() <= 3:
            raise UserInputError(
                f"export: {node.name} needs a scalar, per-channel, last-axis or per-sample "
                f"constant, got shape {tuple(value.shape)} against {tuple(shape)}"
            )
        const = _emit_broadcast(ex, f"{node.name}.const", full)
        return ex.emit("add" if is_add else "mul", node.name, [ex.value(x_node, node), const])
    one = torch.ones(c, dtype=torch.float64)
    zero = torch.zeros(c, dtype=torch.float64)
    scale, shift = (one, arr) if is_add else (arr, zero)
    return ex.emit(
        "batchnorm",
        node.name,
        [ex.value(x_node, node)],
        params={
            "scale": ex.tensor(f"{node.name}.scale", _f32(scale)),
            "shift": ex.tensor(f"{node.name}.shift", _f32(shift)),
        },
    )


_ARITH = {
    operator.add: "add", torch.add: "add", "add": "add",
    operator.sub: "sub", torch.sub: "sub", "sub": "sub",
    operator.mul: "mul", torch.mul: "mul", "mul": "mul",
    operator.truediv: "div", torch.div: "div", "div": "div", torch.true_divide: "div",
}  # fmt: skip


def _export_scalar_arith(ex: _Exporter, node: fx.Node) -> str | None:
    """A value with a Python number or a constant: ``x * 0.5``, ``x - mean``, ``x / std``,
    ``1 + x`` (a ``batchnorm`` or a ``broadcast``); None for two values (the caller's
    case). ``c - x`` and ``c / x``, ``alpha`` on a value and integer division are refused."""
    kind = _ARITH[node.target]
    if node.kwargs.get("rounding_mode") is not None:
        raise UserInputError(
            f"export: {node.name} divides with rounding_mode={node.kwargs['rounding_mode']!r}; "
            "only true division"
        )
    alpha: Any = ex.concrete(node.kwargs.get("alpha", 1), node)
    operands = [*node.args[:2], node.kwargs.get("other")][:2]  # torch.add(x, other=c)
    if len(node.args) < 1 or operands[1] is None:
        raise UserInputError(f"export: {node.name} ({kind}) needs two operands")
    a, b = (ex.numbers[v] if isinstance(v, fx.Node) and v in ex.numbers else v for v in operands)

    def constant(v: Any) -> torch.Tensor | None:
        if isinstance(v, bool | int | float):
            return torch.tensor(float(v), dtype=torch.float64)
        if isinstance(v, fx.Node) and v in ex.consts:
            return ex.consts[v].double()
        return None

    ca, cb = constant(a), constant(b)
    if ca is None and cb is None:
        if alpha != 1:
            raise UserInputError(f"export: {node.name} scales a value by alpha={alpha}")
        return None
    if ca is not None and cb is not None:
        raise UserInputError(f"export: {node.name} computes on constants only")
    if cb is None and (kind in ("sub", "div") or alpha != 1):  # c - x, c / x, c + alpha x
        raise UserInputError(
            f"export: {node.name} takes a constant {kind} a value (or alpha={alpha}); only "
            "value + - * / constant and constant + * value"
        )
    value, c = (b, ca) if cb is None else (a, cb)
    assert isinstance(value, fx.Node)
    assert c is not None
    if kind in ("add", "sub"):
        shift = c * float(alpha) * (-1.0 if kind == "sub" else 1.0)
        return _export_const_affine(ex, node, value, shift, True)
    return _export_const_affine(ex, node, value, c if kind == "mul" else 1.0 / c, False)


def _export_function(ex: _Exporter, node: fx.Node) -> None:
    target = node.target
    args = node.args
    if target in _ARITH:
        scaled = _export_scalar_arith(ex, node)
        if scaled is not None:
            ex.names[node] = scaled
            return
    if target in (operator.add, torch.add, operator.mul, torch.mul, "add", "mul"):
        is_add = target in (operator.add, torch.add, "add")
        a, b = args[0], args[1]
        if not isinstance(a, fx.Node) or not isinstance(b, fx.Node):
            raise UserInputError(f"export: {node.name} combines a value with a Python number")
        sa, sb = ex.shape(a), ex.shape(b)
        if len(sa) < len(sb) or (len(sa) == len(sb) and math.prod(sa) < math.prod(sb)):
            a, b, sa, sb = b, a, sb, sa  # the full-size operand first (both ops commute)
        rhs = ex.value(b, node)
        if sa != sb:  # (N, C, 1, ..., 1) against (N, C, *S): per channel (torch aligns
            # shapes from the right, so an (N, C) operand would index the spatial axes)
            if len(sa) < 3 or len(sb) != len(sa) or sb[:2] != sa[:2] or any(d != 1 for d in sb[2:]):
                raise UserInputError(
                    f"export: {node.name} broadcasts {tuple(sb)} over {tuple(sa)}; only same "
                    "shapes or one value per channel are supported"
                )
            rhs = ex.emit("flatten", f"{node.name}.per_channel", [rhs])
        ex.names[node] = ex.emit("add" if is_add else "mul", node.name, [ex.value(a, node), rhs])
    elif target in (torch.flatten, "flatten"):
        start: Any = args[1] if len(args) > 1 else node.kwargs.get("start_dim", 0)
        end: Any = args[2] if len(args) > 2 else node.kwargs.get("end_dim", -1)
        rank = len(ex.shape(args[0]))  # type: ignore[arg-type]
        if int(start) % rank == 0:
            raise UserInputError(f"export: {node.name} flattens the batch axis into others")
        x = ex.value(args[0], node)
        if int(start) % rank == 1 and int(end) % rank == rank - 1:
            ex.names[node] = ex.emit("flatten", node.name, [x])
        else:  # some axes only: a reshape to the traced shape
            dims_out = list(ex.shape(node)[1:])
            ex.names[node] = ex.emit("reshape", node.name, [x], attrs={"shape": dims_out})
    elif target in (torch.mean, "mean"):  # over every axis but the batch and one other
        dim: Any = args[1] if len(args) > 1 else node.kwargs.get("dim")
        keep = bool(args[2] if len(args) > 2 else node.kwargs.get("keepdim", False))
        rank = len(ex.shape(args[0]))  # type: ignore[arg-type]
        dims = [] if dim is None else dim if isinstance(dim, tuple | list) else [dim]
        axes = sorted({int(d) % rank for d in dims})
        kept = [a for a in range(1, rank) if a not in axes]
        if dim is None or rank not in (3, 4) or 0 in axes or len(kept) != 1:
            raise UserInputError(
                f"export: {node.name} averages over {dim} of a rank-{rank} value; only over "
                "every axis but the batch and one other (the spatial axes, or the tokens)"
            )
        x = ex.value(args[0], node)
        if kept != [1]:  # the kept axis to 1: (N, L, C) -> (N, C, L), (N, H, W, C) -> ...
            perm = [0, kept[0], *axes]
            x = ex.emit("transpose", f"{node.name}.axes", [x], attrs={"perm": perm})
        pooled = ex.emit("global_avgpool", node.name, [x])
        if keep:
            pooled = ex.emit(
                "reshape",
                f"{node.name}.keepdim",
                [pooled],
                attrs={"shape": list(ex.shape(node)[1:])},
            )
        ex.names[node] = pooled
    elif target in (torch.reshape, "view", "reshape"):
        shape = ex.shape(node)
        ex.names[node] = ex.emit(
            "reshape", node.name, [ex.value(args[0], node)], attrs={"shape": list(shape[1:])}
        )
    elif target in (torch.permute, "permute", torch.transpose, "transpose"):
        rank = len(ex.shape(node))
        rest: Any = args[1:]
        if target in (torch.transpose, "transpose"):  # swaps two axes
            if len(rest) < 2:  # dim0=, dim1= as keywords
                rest = [*rest, *(node.kwargs[k] for k in ("dim0", "dim1")[len(rest) :])]
            i, j = (int(v) % rank for v in rest)
            perm = list(range(rank))
            perm[i], perm[j] = perm[j], perm[i]
        else:  # permute(x, dims), x.permute(*dims) or permute(x, dims=...)
            if not rest:
                rest = [node.kwargs["dims"]]
            order = rest[0] if len(rest) == 1 and isinstance(rest[0], tuple | list) else rest
            perm = [int(v) % rank for v in order]
        if perm[0] != 0:
            raise UserInputError(f"export: {node.name} moves the batch axis ({perm})")
        ex.names[node] = ex.emit(
            "transpose", node.name, [ex.value(args[0], node)], attrs={"perm": perm}
        )
    elif target in (torch.cat, torch.concat):
        parts = args[0]
        dim = args[1] if len(args) > 1 else node.kwargs.get("dim", 0)
        rank = len(ex.shape(node))
        axis = int(dim) % rank
        ex.names[node] = ex.emit(
            "concat",
            node.name,
            [ex.value(p, node) for p in parts],  # type: ignore[union-attr]
            attrs={"axis": axis},
        )
    elif target is torch.narrow:  # the importer's Slice and Split of values
        given: dict[str, Any] = {
            **dict(zip(("input", "dim", "start", "length"), args, strict=False)),
            **node.kwargs,
        }
        src = given.pop("input")
        given = {k: ex.concrete(v, node) for k, v in given.items()}
        assert isinstance(src, fx.Node)
        src_shape = ex.shape(src)
        axis = int(given["dim"]) % len(src_shape)
        if axis == 0:
            raise UserInputError(f"export: {node.name} slices the batch axis")
        begin = int(given["start"]) % src_shape[axis]
        ex.names[node], _ = _emit_slice(
            ex, node.name, ex.value(src, node), src_shape, axis, begin, begin + int(given["length"])
        )
    elif target is F.interpolate:
        names = ("input", "size", "scale_factor", "mode")
        given = {**dict(zip(names, args, strict=False)), **node.kwargs}
        src = given["input"]
        assert isinstance(src, fx.Node)
        scales = _upsample_scales(
            node.name,
            given.get("mode", "nearest"),
            given.get("scale_factor"),
            ex.shape(src),
            ex.shape(node),
        )
        ex.names[node] = ex.emit(
            "upsample", node.name, [ex.value(src, node)], attrs={"scales": scales}
        )
    elif target in (torch.matmul, operator.matmul, "matmul", torch.bmm, "bmm"):
        a, b = args[0], args[1]
        sa = ex.shape(a) if isinstance(a, fx.Node) else ()
        sb = ex.shape(b) if isinstance(b, fx.Node) else ()
        if a in ex.consts or b in ex.consts or len(sa) not in (3, 4) or len(sb) != len(sa):
            raise UserInputError(
                f"export: {node.name} multiplies {tuple(sa) or a} by {tuple(sb) or b}; only "
                "two computed values of 3 or 4 dims with the same leading dims (attention's "
                "q @ k^T and scores @ v; a constant operand is a Linear layer)"
            )
        ex.names[node] = ex.emit("matmul", node.name, [ex.value(a, node), ex.value(b, node)])
    elif target in (F.softmax, torch.softmax, "softmax", F.log_softmax, "log_softmax"):
        axis_arg: Any = args[1] if len(args) > 1 else node.kwargs.get("dim")
        rank = len(ex.shape(node))
        if axis_arg is None or int(axis_arg) % rank == 0:
            raise UserInputError(f"export: {node.name} is a softmax over dim {axis_arg}")
        op = "log_softmax" if target in (F.log_softmax, "log_softmax") else "softmax"
        ex.names[node] = ex.emit(
            op, node.name, [ex.value(args[0], node)], attrs={"axis": int(axis_arg) % rank}
        )
    elif target in (torch.chunk, "chunk", torch.split, "split"):
        ex.pieces[node] = _pieces(ex, node, chunk=target in (torch.chunk, "chunk"))
    elif target is operator.getitem and isinstance(args[0], fx.Node) and args[0] in ex.pieces:
        axis, ranges = ex.pieces[args[0]]
        item: Any = ex.concrete(args[1], node)
        if not isinstance(item, int):
            raise UserInputError(f"export: {node.name} indexes the pieces with {item!r}")
        begin, end = ranges[item]
        whole = args[0].args[0]
        assert isinstance(whole, fx.Node)
        ex.names[node], _ = _emit_slice(
            ex, node.name, ex.value(whole, node), ex.shape(whole), axis, begin, end
        )
    elif target is operator.getitem and isinstance(args[0], fx.Node):
        ex.names[node] = _export_index(ex, node, args[0], args[1])
    elif target in (torch.select, "select"):  # the importer's Gather of one index
        sel: Any = (args[0], *ex.concrete(tuple(args[1:]), node))
        src = sel[0]
        assert isinstance(src, fx.Node)
        index = (slice(None),) * (int(sel[1]) % len(ex.shape(src))) + (int(sel[2]),)
        ex.names[node] = _export_index(ex, node, src, index)
    elif target is F.gelu:
        approximate = str(args[1] if len(args) > 1 else node.kwargs.get("approximate", "none"))
        ex.names[node] = ex.emit(
            "gelu", node.name, [ex.value(args[0], node)], attrs={"approximate": approximate}
        )
    elif target in (F.silu, "silu"):
        ex.names[node] = _silu(ex, node.name, ex.value(args[0], node))
    elif target in (F.relu, torch.relu, "relu"):
        ex.names[node] = ex.emit("relu", node.name, [ex.value(args[0], node)])
    elif target in (torch.sigmoid, "sigmoid"):
        ex.names[node] = ex.emit("sigmoid", node.name, [ex.value(args[0], node)])
    elif target in (torch.tanh, "tanh"):
        ex.names[node] = ex.emit("tanh", node.name, [ex.value(args[0], node)])
    else:
        raise UserInputError(f"export: operation {node.name} ({target}) is not supported")


REAL_DTYPES = ("float16", "float32")


def _name_output(ex: _Exporter, outputs: list[dict[str, Any]], name: str) -> None:
    """Call the graph's output ``name`` (the ONNX file's output name, else ``output``)
    rather than the exporter's ``v:N``, unless a value already has that name."""
    if len(outputs) != 1 or name == "input":
        return
    old = outputs[0]["name"]
    taken = {v for node in ex.nodes for v in (*node["inputs"], *node["outputs"])}
    if name in taken:
        return
    for node in ex.nodes:
        node["inputs"] = [name if v == old else v for v in node["inputs"]]
        node["outputs"] = [name if v == old else v for v in node["outputs"]]
    outputs[0]["name"] = name


class _Recorder(ShapeProp):
    """ShapeProp that also keeps every node's result."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.results: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        self.results[n] = result
        return result


def _classify(ex: _Exporter, input_shape: tuple[int, ...]) -> None:
    """Sort the nodes that do not compute on the input's values: shape queries
    (``x.size(0)``, ``x.shape``: skipped, the ops reading them use traced shapes),
    constants (parameters and what is computed from them alone: read by the op that uses
    them) and per-sample constants (a parameter expanded to the batch size, as a class
    token's ``cls.expand(x.shape[0], -1, -1)``: a ``broadcast`` op). Two runs on zeros, of
    batch 2 (which also sets the shapes) and 3, tell the last two apart."""
    runs = []
    for n in (3, 2):  # batch 2 last: its shapes stay in the nodes' meta
        recorder = _Recorder(ex.gm)
        try:
            with torch.no_grad():
                recorder.propagate(torch.zeros(n, *input_shape))
        except Exception:
            if n == 2:
                raise
            # the model runs at batch 2 only (it broadcasts the batch against another
            # axis): no per-sample constants; the op at fault is named below
        runs.append(recorder.results)
    three, two = runs
    data: set[fx.Node] = set()  # computed from the input's values (tensors, their tuples)
    for node in ex.gm.graph.nodes:
        result = two.get(node)
        if node.op == "placeholder":
            data.add(node)
        elif node.op == "output":
            continue
        elif _is_shape(result):
            ex.shape_only.add(node)
            if node not in three or result == three[node]:
                ex.numbers[node] = tuple(result) if isinstance(result, torch.Size) else result
        elif any(a in data for a in node.all_input_nodes):
            data.add(node)
        elif not isinstance(result, torch.Tensor):
            continue  # a tuple of constants: its items are classified where indexed
        elif node not in three or (
            result.shape == three[node].shape and torch.equal(result, three[node])
        ):
            ex.consts[node] = result.detach()
        elif result.shape == three[node].shape:  # made from the batch size
            ex.batch_dependent.add(node)
        elif (
            result.dim() >= 2
            and result.shape[0] == 2
            and three[node].shape[0] == 3
            and torch.equal(result[0], result[1])
        ):
            ex.per_sample[node] = result[0].detach()


def _is_shape(result: Any) -> bool:
    """A shape query's result: a number, a ``torch.Size``, a tuple or list of numbers."""
    if isinstance(result, int | float | torch.Size):
        return True
    return isinstance(result, tuple | list) and all(isinstance(v, int | float) for v in result)


def _emit_broadcast(ex: _Exporter, name: str, value: torch.Tensor, ref: str = "input") -> str:
    """A ``broadcast`` of ``value`` (one sample's constant) to ``ref``'s batch size."""
    if not 1 <= value.dim() <= 3:
        raise UserInputError(
            f"export: {name} repeats a constant of shape {tuple(value.shape)} for every "
            "sample; the runtime's broadcast takes 1 to 3 dims per sample"
        )
    param = ex.tensor(f"{name}.value", _f32(value))
    return ex.emit("broadcast", name, [ref], params={"value": param})


def build_graph(
    gm: fx.GraphModule, input_shape: tuple[int, ...], *, real_dtype: str = "float16"
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The ``.bfm`` graph (a JSON-able dict) and tensors of a converted model.

    ``real_dtype`` is the storage of the real conv/linear layers' weights and biases
    (``float16`` by default: half the bytes; the runtime computes in float32 either way).
    A tensor outside float16's range stays float32."""
    if real_dtype not in REAL_DTYPES:
        raise ValueError(f"real_dtype must be one of {REAL_DTYPES}, got {real_dtype!r}")
    gm = gm.cpu().eval()
    ex = _Exporter(gm, real_dtype)
    _classify(ex, input_shape)
    outputs: list[dict[str, Any]] = []
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            ex.names[node] = "input"
        elif node in ex.consts or node in ex.shape_only:
            continue  # consumed by the op that reads them
        elif node in ex.batch_dependent:
            raise UserInputError(
                f"export: {node.name} is a constant computed from the batch size; the "
                "runtime takes any batch size"
            )
        elif node in ex.per_sample:
            ex.names[node] = _emit_broadcast(ex, node.name, ex.per_sample[node])
        elif node.op == "call_module":
            _export_module(ex, node)
        elif node.op in ("call_function", "call_method"):
            _export_function(ex, node)
        elif node.op == "output":
            result = node.args[0]
            if not isinstance(result, fx.Node):
                raise UserInputError("export: the model must return one tensor")
            shape = ex.shape(result)
            out_name = ex.value(result, node)
            if out_name == "input":
                raise UserInputError("export: the model returns its input")
            outputs.append({"name": out_name, "shape": [None, *shape[1:]], "dtype": "float32"})
    _name_output(ex, outputs, str(gm.meta.get("output_name") or "output"))
    graph = {
        "inputs": [{"name": "input", "shape": [None, *input_shape], "dtype": "float32"}],
        "outputs": outputs,
        "nodes": ex.nodes,
    }
    return graph, ex.tensors


def export_bfm(
    gm: fx.GraphModule,
    input_shape: tuple[int, ...],
    path: str | os.PathLike[str],
    *,
    provenance: dict[str, Any] | None = None,
    real_dtype: str = "float16",
) -> str:
    """Write the ``.bfm`` file of a converted model; returns the file's sha256.

    ``real_dtype``: see :func:`build_graph`."""
    from runtime.bfm import FormatError, write_bfm

    graph, tensors = build_graph(gm, input_shape, real_dtype=real_dtype)
    prov = {"created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
    prov.update(provenance or {})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        write_bfm(path, graph=graph, tensors=tensors, provenance=prov)
    except FormatError as exc:  # a pattern the runtime cannot run: say so, not a traceback
        raise UserInputError(f"export: the model uses something the runtime lacks: {exc}") from exc
    return sha256_file(path)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
