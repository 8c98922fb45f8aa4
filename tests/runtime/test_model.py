"""Whole .bfm graphs, written here from numpy, run by runtime.load and compared with an
independent torch reference interpreter of the same graph (float64 for the +/-1
convolutions, float32 elsewhere): chained bit-packed layers, residual adds, real layers.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import runtime
from runtime import write_bfm
from runtime.packing import pack_signs, unpack_signs

# -- a reference interpreter in torch ------------------------------------------------------


def _t(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(array, dtype=np.float32))


def _sign(x: torch.Tensor, threshold: torch.Tensor | None) -> torch.Tensor:
    t = torch.zeros(()) if threshold is None else threshold.view(1, -1, *([1] * (x.dim() - 2)))
    return torch.where(x < t, -1.0, 1.0).double()


def _binary(node: dict[str, Any], tensors: dict[str, np.ndarray], ins: list[Any]) -> Any:
    a, p, op = node.get("attrs", {}), node.get("params", {}), node["op"]
    x = ins[0]
    words = tensors[p["weight"]]
    cin = a["in_features"] if op == "blinear" else a["in_channels"]
    w = torch.from_numpy(unpack_signs(words, cin)).double()  # (cout, *k, cin)
    if op == "blinear":
        acc = F.linear(x, w)
    else:
        w = w.movedim(-1, 1)
        pad = list(a.get("padding", [0] * (w.dim() - 2)))
        if a.get("pad_mode", "zero") == "one":
            widths = [v for q in reversed(pad) for v in (q, q)]
            x = F.pad(x, widths, value=1.0)
            pad = [0] * len(pad)
        conv = F.conv2d if op == "bconv2d" else F.conv1d
        acc = conv(x, w, stride=a.get("stride", 1), padding=pad, dilation=a.get("dilation", 1))
    shape = (1, -1) + (1,) * (acc.dim() - 2)
    y = acc.float() * _t(tensors[p["scale"]]).view(shape)
    if "scale_h" in p:
        y = y * (_t(tensors[p["scale_h"]])[:, None] * _t(tensors[p["scale_w"]])[None, :])
    if "scale_l" in p:
        y = y * _t(tensors[p["scale_l"]])
    if "bias" in p:
        y = y + _t(tensors[p["bias"]]).view(shape)
    act = a.get("activation", "none")
    if act == "relu":
        y = F.relu(y)
    elif act == "prelu":
        slope = _t(tensors[p["slope"]]).view(shape)
        y = torch.where(y >= 0, y, y * slope)
    elif act == "hardtanh":
        y = F.hardtanh(y, a.get("min_val", -1.0), a.get("max_val", 1.0))
    if len(ins) > 1:
        y = y + ins[1]
    if a.get("post_activation", "none") == "relu":
        y = F.relu(y)
    if a.get("output", "float") == "bits":
        thr = _t(tensors[p["out_threshold"]]) if "out_threshold" in p else None
        return _sign(y, thr)
    return y


def reference(graph: dict[str, Any], tensors: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    env: dict[str, Any] = {graph["inputs"][0]["name"]: torch.from_numpy(x)}
    for node in graph["nodes"]:
        op, a, p = node["op"], node.get("attrs", {}), node.get("params", {})
        ins = [env[v] for v in node["inputs"]]
        x0 = ins[0]

        def param(role: str) -> torch.Tensor | None:
            return _t(tensors[p[role]]) if role in p else None  # noqa: B023

        def chan(v: torch.Tensor) -> torch.Tensor:
            return v.view(1, -1, *([1] * (x0.dim() - 2)))  # noqa: B023

        if op == "sign_pack":
            y = _sign(x0, param("threshold"))
        elif op in ("bconv2d", "bconv1d", "blinear"):
            y = _binary(node, tensors, ins)
        elif op in ("conv2d", "conv1d"):
            conv = F.conv2d if op == "conv2d" else F.conv1d
            y = conv(
                x0,
                _t(tensors[p["weight"]]),
                param("bias"),
                stride=a.get("stride", 1),
                padding=a.get("padding", 0),
                dilation=a.get("dilation", 1),
                groups=a.get("groups", 1),
            )
        elif op == "linear":
            y = F.linear(x0, _t(tensors[p["weight"]]), param("bias"))
        elif op == "batchnorm":
            y = x0 * chan(param("scale")) + chan(param("shift"))  # type: ignore[arg-type]
        elif op == "relu":
            y = F.relu(x0)
        elif op == "sigmoid":
            y = torch.sigmoid(x0)
        elif op == "tanh":
            y = torch.tanh(x0)
        elif op == "prelu":
            y = F.prelu(x0, param("slope"))  # type: ignore[arg-type]
        elif op == "leaky_relu":
            y = F.leaky_relu(x0, a.get("negative_slope", 0.01))
        elif op == "hardtanh":
            y = F.hardtanh(x0, a.get("min_val", -1.0), a.get("max_val", 1.0))
        elif op in ("maxpool2d", "maxpool1d"):
            pool = F.max_pool2d if op.endswith("2d") else F.max_pool1d
            y = pool(
                x0,
                a["kernel_size"],
                a.get("stride"),
                a.get("padding", 0),
                1,
                a.get("ceil_mode", False),
            )
        elif op in ("avgpool2d", "avgpool1d"):
            pool2 = F.avg_pool2d if op.endswith("2d") else F.avg_pool1d
            y = pool2(
                x0,
                a["kernel_size"],
                a.get("stride"),
                a.get("padding", 0),
                a.get("ceil_mode", False),
                a.get("count_include_pad", True),
            )
        elif op == "global_avgpool":
            y = x0.flatten(2).mean(2)
        elif op in ("add", "mul"):
            b = ins[1]
            if b.dim() < x0.dim():
                b = b.view(*b.shape, *([1] * (x0.dim() - b.dim())))
            y = x0 + b if op == "add" else x0 * b
        elif op == "flatten":
            y = x0.flatten(1)
        elif op == "reshape":
            y = x0.reshape(x0.shape[0], *a["shape"])
        elif op == "concat":
            y = torch.cat(ins, dim=a.get("axis", 1))
        elif op == "softmax":
            y = torch.softmax(x0, dim=a.get("axis", 1))
        elif op == "layernorm":
            weight = param("weight")
            assert weight is not None
            y = F.layer_norm(x0, weight.shape, weight, param("bias"), a.get("eps", 1e-5))
        elif op == "gelu":
            y = F.gelu(x0, approximate=a.get("approximate", "none"))
        elif op == "hardsigmoid":
            y = (x0 * a.get("alpha", 0.2) + a.get("beta", 0.5)).clamp(0, 1)
        elif op == "hardswish":
            y = F.hardswish(x0)
        elif op == "erf":
            y = torch.erf(x0)
        elif op == "elu":
            y = F.elu(x0, a.get("alpha", 1.0))
        elif op == "selu":
            y = F.selu(x0)
        elif op == "softplus":
            y = torch.log1p(torch.exp(-x0.abs())) + x0.clamp(min=0)
        elif op == "mish":
            y = F.mish(x0)
        elif op == "log_softmax":
            y = torch.log_softmax(x0, dim=a.get("axis", 1))
        elif op == "transpose":
            y = x0.permute(*a["perm"])
        elif op == "slice":
            y = x0.narrow(a["axis"], a["start"], a["end"] - a["start"])
        elif op == "upsample":  # nearest, integer factors
            y = F.interpolate(x0, scale_factor=tuple(a["scales"]), mode="nearest")
        elif op == "pad":  # pads: begins, then ends; F.pad wants (begin, end) from the last
            pads, nsp = a["pads"], len(a["pads"]) // 2
            widths = [v for i in reversed(range(nsp)) for v in (pads[i], pads[nsp + i])]
            y = F.pad(x0, widths, value=a.get("value", 0.0))
        elif op == "matmul":
            y = torch.matmul(x0, ins[1])
        elif op == "broadcast":
            value = param("value")
            assert value is not None
            y = value.expand(x0.shape[0], *value.shape)
        else:  # pragma: no cover
            raise AssertionError(op)
        env[node["outputs"][0]] = y
    return env[graph["outputs"][0]["name"]].float().numpy()


# -- graph builders ------------------------------------------------------------------------


class Builder:
    """Writes a graph and its tensors the way an exporter would."""

    def __init__(self, seed: int, name: str, shape: list[int | None]) -> None:
        self.rng = np.random.default_rng(seed)
        self.graph: dict[str, Any] = {
            "inputs": [{"name": name, "shape": shape, "dtype": "float32"}],
            "outputs": [],
            "nodes": [],
        }
        self.tensors: dict[str, np.ndarray] = {}

    def tensor(self, name: str, array: np.ndarray) -> str:
        self.tensors[name] = array
        return name

    def vec(self, name: str, size: int, *, positive: bool = False) -> str:
        v = self.rng.standard_normal(size).astype(np.float32)
        return self.tensor(name, np.abs(v) + 0.1 if positive else v)

    def node(
        self,
        op: str,
        name: str,
        inputs: list[str],
        attrs: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> str:
        node: dict[str, Any] = {"op": op, "name": name, "inputs": inputs, "outputs": [name]}
        if attrs:
            node["attrs"] = attrs
        if params:
            node["params"] = params
        self.graph["nodes"].append(node)
        return name

    def binary_weight(self, name: str, cout: int, kernel: tuple[int, ...], cin: int) -> str:
        signs = self.rng.standard_normal((cout, *kernel, cin))
        return self.tensor(name, pack_signs(signs))

    def output(self, name: str, shape: list[int | None]) -> None:
        self.graph["outputs"].append({"name": name, "shape": shape, "dtype": "float32"})


def resnet_like() -> Builder:
    """Real stem, binary blocks with bit-packed hand-off and residuals, real shortcut, heads."""
    b = Builder(1, "image", [None, 3, 13, 13])
    r = b.rng
    stem = b.node(
        "conv2d",
        "stem",
        ["image"],
        {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1},
        {
            "weight": b.tensor("stem.w", r.standard_normal((16, 3, 3, 3)).astype(np.float32)),
            "bias": b.vec("stem.b", 16),
        },
    )
    bn = b.node(
        "batchnorm", "bn", [stem], params={"scale": b.vec("bn.s", 16), "shift": b.vec("bn.t", 16)}
    )
    act = b.node("relu", "act", [bn])
    f0 = b.node(
        "maxpool2d",
        "pool",
        [act],
        {"kernel_size": [3, 3], "stride": [2, 2], "padding": [1, 1], "ceil_mode": False},
    )
    bits0 = b.node("sign_pack", "in1", [f0], params={"threshold": b.vec("in1.t", 16)})
    common = {
        "in_channels": 16,
        "out_channels": 16,
        "kernel_size": [3, 3],
        "stride": [1, 1],
        "padding": [1, 1],
        "dilation": [1, 1],
    }
    bits1 = b.node(
        "bconv2d",
        "c1",
        [bits0],
        {**common, "pad_mode": "zero", "activation": "prelu", "output": "bits"},
        {
            "weight": b.binary_weight("c1.w", 16, (3, 3), 16),
            "scale": b.vec("c1.s", 16),
            "bias": b.vec("c1.b", 16),
            "slope": b.vec("c1.slope", 16),
            "out_threshold": b.vec("c1.t", 16),
        },
    )
    f1 = b.node(
        "bconv2d",
        "c2",
        [bits1, f0],
        {
            **common,
            "pad_mode": "one",
            "activation": "hardtanh",
            "min_val": -2.0,
            "max_val": 3.0,
            "post_activation": "relu",
        },
        {
            "weight": b.binary_weight("c2.w", 16, (3, 3), 16),
            "scale": b.vec("c2.s", 16),
            "bias": b.vec("c2.b", 16),
        },
    )
    bits2 = b.node(
        "sign_pack", "in3", [f1], params={"threshold": b.vec("in3.t", 16, positive=True)}
    )
    f2 = b.node(
        "bconv2d",
        "c3",
        [bits2],
        {**common, "out_channels": 70, "stride": [2, 2], "pad_mode": "zero"},
        {
            "weight": b.binary_weight("c3.w", 70, (3, 3), 16),
            "scale": b.vec("c3.s", 70),
            "scale_h": b.vec("c3.sh", 4),
            "scale_w": b.vec("c3.sw", 4),
        },
    )
    down = b.node(
        "conv2d",
        "down",
        [f1],
        {"stride": [2, 2], "padding": [0, 0], "dilation": [1, 1], "groups": 1},
        {"weight": b.tensor("down.w", r.standard_normal((70, 16, 1, 1)).astype(np.float32))},
    )
    f3 = b.node("add", "sum", [f2, down])
    bits3 = b.node("sign_pack", "in4", [f3])
    f4 = b.node(
        "bconv2d",
        "c4",
        [bits3, f3],
        {**common, "in_channels": 70, "out_channels": 70, "pad_mode": "zero", "activation": "relu"},
        {"weight": b.binary_weight("c4.w", 70, (3, 3), 70), "scale": b.vec("c4.s", 70)},
    )
    g = b.node("global_avgpool", "gap", [f4])
    gbits = b.node("sign_pack", "in5", [g])
    l1 = b.node(
        "blinear",
        "fc_bin",
        [gbits],
        {"in_features": 70, "out_features": 10},
        {
            "weight": b.binary_weight("fc_bin.w", 10, (), 70),
            "scale": b.vec("fc_bin.s", 10),
            "bias": b.vec("fc_bin.b", 10),
        },
    )
    l2 = b.node(
        "linear",
        "fc",
        [g],
        params={
            "weight": b.tensor("fc.w", r.standard_normal((10, 70)).astype(np.float32)),
            "bias": b.vec("fc.b", 10),
        },
    )
    logits = b.node("add", "logits", [l1, l2])
    b.node("softmax", "probs", [logits], {"axis": 1})
    b.output("probs", [None, 10])
    return b


def sequence_model() -> Builder:
    """1-d: real conv, binary conv1d chain with bits output and position scales, pools."""
    b = Builder(2, "signal", [None, 5, 17])
    r = b.rng
    c0 = b.node(
        "conv1d",
        "c0",
        ["signal"],
        {"stride": [1], "padding": [1], "dilation": [1], "groups": 1},
        {"weight": b.tensor("c0.w", r.standard_normal((8, 5, 3)).astype(np.float32))},
    )
    bits = b.node("sign_pack", "p0", [c0])
    b1 = b.node(
        "bconv1d",
        "b1",
        [bits],
        {
            "in_channels": 8,
            "out_channels": 70,
            "kernel_size": [3],
            "stride": [2],
            "padding": [2],
            "dilation": [2],
            "pad_mode": "zero",
            "output": "bits",
        },
        {
            "weight": b.binary_weight("b1.w", 70, (3,), 8),
            "scale": b.vec("b1.s", 70),
            "scale_l": b.vec("b1.sl", 9),
            "bias": b.vec("b1.b", 70),
        },
    )
    b2 = b.node(
        "bconv1d",
        "b2",
        [b1],
        {
            "in_channels": 70,
            "out_channels": 9,
            "kernel_size": [1],
            "stride": [1],
            "padding": [0],
            "dilation": [1],
            "pad_mode": "one",
        },
        {"weight": b.binary_weight("b2.w", 9, (1,), 70), "scale": b.vec("b2.s", 9)},
    )
    m = b.node(
        "maxpool1d",
        "mp",
        [b2],
        {"kernel_size": [2], "stride": [2], "padding": [0], "ceil_mode": True},
    )
    a = b.node(
        "avgpool1d",
        "ap",
        [m],
        {
            "kernel_size": [3],
            "stride": [1],
            "padding": [1],
            "ceil_mode": False,
            "count_include_pad": False,
        },
    )
    flat = b.node("flatten", "flat", [a])
    lin = b.node(
        "linear",
        "lin",
        [flat],
        params={"weight": b.tensor("lin.w", r.standard_normal((4, 45)).astype(np.float32))},
    )
    b.node("tanh", "out", [lin])
    b.output("out", [None, 4])
    return b


def real_ops_model() -> Builder:
    """Every real op the format lists, in one graph."""
    b = Builder(3, "x", [None, 4, 7, 6])
    r = b.rng
    conv = b.node(
        "conv2d",
        "gconv",
        ["x"],
        {"stride": [1, 2], "padding": [2, 1], "dilation": [2, 1], "groups": 2},
        {
            "weight": b.tensor("g.w", r.standard_normal((6, 2, 3, 3)).astype(np.float32)),
            "bias": b.vec("g.b", 6),
        },
    )
    pr = b.node("prelu", "pr", [conv], params={"slope": b.vec("pr.s", 6)})
    lr = b.node("leaky_relu", "lr", [pr], {"negative_slope": 0.2})
    ht = b.node("hardtanh", "ht", [lr], {"min_val": -0.5, "max_val": 1.5})
    avg = b.node(
        "avgpool2d",
        "avg",
        [ht],
        {
            "kernel_size": [3, 3],
            "stride": [2, 2],
            "padding": [1, 1],
            "ceil_mode": True,
            "count_include_pad": True,
        },
    )
    mx = b.node(
        "maxpool2d",
        "mx",
        [ht],
        {"kernel_size": [2, 2], "stride": [2, 2], "padding": [1, 1], "ceil_mode": True},
    )
    cat = b.node("concat", "cat", [avg, mx], {"axis": 1})
    gate = b.node("sigmoid", "gate", [b.node("global_avgpool", "squeeze", [cat])])
    scaled = b.node("mul", "excite", [cat, gate])
    flat = b.node("reshape", "rs", [scaled], {"shape": [3, -1]})
    b.node("softmax", "sm", [flat], {"axis": 2})
    b.output("sm", [None, 3, 32])
    return b


def norm_gelu_model() -> Builder:
    """Layer norms (over one and two trailing dims, with and without bias), both GELUs,
    hardswish, hardsigmoid, erf, elu, selu, softplus, mish and log_softmax around a binary
    linear layer, as in an MLP block."""
    b = Builder(5, "x", [None, 5, 17])
    r = b.rng
    c0 = b.node(
        "conv1d",
        "c0",
        ["x"],
        {"stride": [1], "padding": [1], "dilation": [1], "groups": 1},
        {"weight": b.tensor("c0.w", r.standard_normal((8, 5, 3)).astype(np.float32))},
    )
    wide = r.standard_normal((8, 17)).astype(np.float32)
    n0 = b.node(
        "layernorm",
        "n0",
        [c0],
        {"eps": 1e-3},
        {"weight": b.tensor("n0.w", wide), "bias": b.tensor("n0.b", wide[::-1].copy())},
    )
    flat = b.node("flatten", "flat", [b.node("gelu", "g0", [n0])])
    lin = b.node(
        "linear",
        "lin",
        [flat],
        params={"weight": b.tensor("lin.w", r.standard_normal((40, 136)).astype(np.float32))},
    )
    n1 = b.node(
        "layernorm", "n1", [lin], params={"weight": b.vec("n1.w", 40), "bias": b.vec("n1.b", 40)}
    )
    bits = b.node("sign_pack", "p1", [b.node("gelu", "g1", [n1], {"approximate": "none"})])
    bl = b.node(
        "blinear",
        "bl",
        [bits],
        {"in_features": 40, "out_features": 33},
        {"weight": b.binary_weight("bl.w", 33, (), 40), "scale": b.vec("bl.s", 33)},
    )
    g2 = b.node("gelu", "g2", [bl], {"approximate": "tanh"})
    h1 = b.node("hardswish", "h1", [g2])
    h2 = b.node("hardsigmoid", "h2", [h1], {"alpha": 0.7, "beta": 0.4})
    h3 = b.node("hardsigmoid", "h3", [g2])
    both = b.node("add", "both", [h2, b.node("erf", "e3", [h3])])
    smooth = b.node("elu", "elu", [both], {"alpha": 0.7})
    smooth = b.node("mish", "mish", [b.node("softplus", "sp", [b.node("selu", "selu", [smooth])])])
    normed = b.node("layernorm", "n2", [smooth], params={"weight": b.vec("n2.w", 33)})
    b.node("log_softmax", "out", [normed], {"axis": 1})
    b.output("out", [None, 33])
    return b


def pure_binary_chain() -> Builder:
    """sign_pack then 4 binary layers handing off bits: integer-exact end to end."""
    b = Builder(4, "x", [None, 67, 9, 8])
    prev = b.node("sign_pack", "pack", ["x"])
    cin = 67
    for i, (cout, stride, mode) in enumerate([(64, 1, "zero"), (65, 2, "one"), (130, 1, "zero")]):
        prev = b.node(
            "bconv2d",
            f"l{i}",
            [prev],
            {
                "in_channels": cin,
                "out_channels": cout,
                "kernel_size": [3, 3],
                "stride": [stride, stride],
                "padding": [1, 1],
                "dilation": [1, 1],
                "pad_mode": mode,
                "output": "bits",
            },
            {
                "weight": b.binary_weight(f"l{i}.w", cout, (3, 3), cin),
                "scale": b.tensor(f"l{i}.s", np.ones(cout, np.float32)),
                "out_threshold": b.tensor(f"l{i}.t", np.full(cout, 0.5 + i, np.float32)),
            },
        )
        cin = cout
    b.node(
        "bconv2d",
        "last",
        [prev],
        {
            "in_channels": cin,
            "out_channels": 7,
            "kernel_size": [2, 2],
            "stride": [1, 1],
            "padding": [0, 0],
            "dilation": [1, 1],
        },
        {
            "weight": b.binary_weight("last.w", 7, (2, 2), cin),
            "scale": b.tensor("last.s", np.ones(7, np.float32)),
        },
    )
    b.output("last", [None, 7, 4, 3])
    return b


def padded_model() -> Builder:
    """Asymmetric padding as importers write it: a pad (border 0, and -0.5) before a real
    convolution, a max pooling and a binary convolution whose sign-packed input holds the
    border; a 1-d pad with the default value."""
    b = Builder(6, "x", [None, 3, 9, 11])
    r = b.rng
    p0 = b.node("pad", "p0", ["x"], {"pads": [0, 1, 2, 0]})  # bottom 2, left 1
    c0 = b.node(
        "conv2d",
        "c0",
        [p0],
        {"stride": [2, 2], "padding": [0, 0]},
        {"weight": b.tensor("c0.w", r.standard_normal((8, 3, 3, 3)).astype(np.float32))},
    )  # (8, 5, 5)
    p1 = b.node("pad", "p1", [c0], {"pads": [1, 0, 0, 1], "value": -0.5})
    mp = b.node("maxpool2d", "mp", [p1], {"kernel_size": [2, 2], "stride": [1, 1]})  # (8, 5, 5)
    bits = b.node("sign_pack", "s", [b.node("pad", "p2", [mp], {"pads": [2, 2, 1, 0]})])
    bc = b.node(
        "bconv2d",
        "bc",
        [bits],
        {"in_channels": 8, "out_channels": 6, "kernel_size": [3, 3], "padding": [1, 1]},
        {"weight": b.binary_weight("bc.w", 6, (3, 3), 8), "scale": b.vec("bc.s", 6)},
    )  # (6, 8, 7)
    flat = b.node("reshape", "rs", [bc], {"shape": [6, 56]})
    b.node("pad", "p3", [flat], {"pads": [3, 1]})
    b.output("p3", [None, 6, 60])
    return b


def transposed_model() -> Builder:
    """An NHWC input transposed to NCHW for a real and a binary convolution, back to
    channels-last, and a 3-d (N, L, C) transpose before a 1-d convolution."""
    b = Builder(7, "x", [None, 6, 5, 3])
    r = b.rng
    t0 = b.node("transpose", "t0", ["x"], {"perm": [0, 3, 1, 2]})  # (3, 6, 5)
    c0 = b.node(
        "conv2d",
        "c0",
        [t0],
        {"padding": [1, 1]},
        {"weight": b.tensor("c0.w", r.standard_normal((8, 3, 3, 3)).astype(np.float32))},
    )
    bc = b.node(
        "bconv2d",
        "bc",
        [b.node("sign_pack", "s", [c0])],
        {"in_channels": 8, "out_channels": 4, "kernel_size": [2, 2]},
        {"weight": b.binary_weight("bc.w", 4, (2, 2), 8), "scale": b.vec("bc.s", 4)},
    )  # (4, 5, 4)
    t1 = b.node("transpose", "t1", [bc], {"perm": [0, 2, 3, 1]})  # (5, 4, 4)
    seq = b.node("reshape", "rs", [t1], {"shape": [20, 4]})  # (L, C) = (20, 4)
    t2 = b.node("transpose", "t2", [seq], {"perm": [0, 2, 1]})  # (4, 20)
    b.node(
        "conv1d",
        "c1",
        [t2],
        {"stride": [2]},
        {"weight": b.tensor("c1.w", r.standard_normal((3, 4, 3)).astype(np.float32))},
    )
    b.output("c1", [None, 3, 9])
    return b


def upsampled_model() -> Builder:
    """A U-Net's decoder step: a real convolution, max pooling, a binary convolution on the
    coarse grid, nearest upsampling (2 x 3) back to the fine grid, concatenated with the
    skip; slices of the channels and the columns; a 1-d upsampling by 4 after a reshape."""
    b = Builder(9, "x", [None, 3, 8, 9])
    r = b.rng
    c0 = b.node(
        "conv2d",
        "c0",
        ["x"],
        {"padding": [1, 1]},
        {"weight": b.tensor("c0.w", r.standard_normal((8, 3, 3, 3)).astype(np.float32))},
    )  # (8, 8, 9)
    mp = b.node("maxpool2d", "mp", [c0], {"kernel_size": [2, 3], "stride": [2, 3]})  # (8, 4, 3)
    bc = b.node(
        "bconv2d",
        "bc",
        [b.node("sign_pack", "s", [mp])],
        {"in_channels": 8, "out_channels": 5, "kernel_size": [3, 3], "padding": [1, 1]},
        {"weight": b.binary_weight("bc.w", 5, (3, 3), 8), "scale": b.vec("bc.s", 5)},
    )  # (5, 4, 3)
    up = b.node("upsample", "up", [bc], {"scales": [2, 3]})  # (5, 8, 9)
    cat = b.node("concat", "cat", [c0, up], {"axis": 1})  # (13, 8, 9)
    part = b.node("slice", "sl", [cat], {"axis": 1, "start": 2, "end": 11})  # (9, 8, 9)
    rows = b.node("slice", "sl2", [part], {"axis": 3, "start": 0, "end": 8})  # (9, 8, 8)
    seq = b.node("reshape", "rs", [rows], {"shape": [9, 64]})
    b.node("upsample", "up1", [seq], {"scales": [4], "mode": "nearest"})
    b.output("up1", [None, 9, 256])
    return b


def depthwise_model() -> Builder:
    """MobileNet's depthwise convolutions (C kernel): 3x3 stride 2 with a channel multiplier
    of 2 and a fused ReLU, 5x5 dilated, and 1-d with a bias."""
    b = Builder(8, "x", [None, 6, 11, 9])
    r = b.rng

    def conv(name: str, src: str, w: np.ndarray, attrs: dict[str, Any], bias: bool) -> str:
        params = {"weight": b.tensor(f"{name}.w", w.astype(np.float32))}
        if bias:
            params["bias"] = b.vec(f"{name}.b", w.shape[0])
        op = "conv2d" if w.ndim == 4 else "conv1d"
        return b.node(op, name, [src], attrs, params)

    d0 = conv(
        "d0",
        "x",
        r.standard_normal((12, 1, 3, 3)),
        {"stride": [2, 2], "padding": [1, 1], "groups": 6},
        True,
    )
    a0 = b.node("relu", "a0", [d0])  # (12, 6, 5)
    d1 = conv(
        "d1",
        a0,
        r.standard_normal((12, 1, 5, 5)),
        {"padding": [4, 2], "dilation": [2, 1], "groups": 12},
        False,
    )
    seq = b.node("reshape", "rs", [d1], {"shape": [12, 30]})
    d2 = conv(
        "d2",
        seq,
        r.standard_normal((12, 1, 4)),
        {"stride": [3], "padding": [1], "groups": 12},
        True,
    )
    b.output(d2, [None, 12, 10])
    return b


def token_model() -> Builder:
    """Binary 1x1 convolutions on a sequence of tokens (N, L, C), as the engine writes a
    transformer MLP's Linear layers: transposes around each, GELU and leaky ReLU between
    the pairs that undo each other (dropped at load); a pair whose middle value has a
    second reader, a layer norm between two transposes and a 4-d pair that does not undo
    each other (all kept)."""
    b = Builder(11, "x", [None, 7, 20])

    def layer(name: str, x: str, cin: int, cout: int) -> str:
        t = b.node("transpose", f"{name}.tokens", [x], {"perm": [0, 2, 1]})
        bits = b.node("sign_pack", f"{name}.in", [t])
        y = b.node(
            "bconv1d",
            name,
            [bits],
            {"in_channels": cin, "out_channels": cout, "kernel_size": [1]},
            {
                "weight": b.binary_weight(f"{name}.w", cout, (1,), cin),
                "scale": b.vec(f"{name}.s", cout),
            },
        )
        return b.node("transpose", f"{name}.out", [y], {"perm": [0, 2, 1]})

    h = layer("fc1", "x", 20, 24)  # (7, 24)
    h = b.node("gelu", "g1", [h])
    h = b.node("leaky_relu", "lr", [h], {"negative_slope": 0.1})
    h = layer("fc2", h, 24, 24)  # its transposes cancel with fc1's and fc3's
    h = layer("fc3", h, 24, 24)
    skip = b.node("relu", "r", [h])  # read twice: fc4's transpose stays
    h = layer("fc4", skip, 24, 24)
    h = b.node("add", "res", [h, skip])
    h = b.node("layernorm", "ln", [h], params={"weight": b.vec("ln.w", 24)})
    h = layer("fc5", h, 24, 20)  # (7, 20)
    grid = b.node("reshape", "rs", [h], {"shape": [7, 4, 5]})
    t1 = b.node("transpose", "t1", [grid], {"perm": [0, 2, 3, 1]})  # (4, 5, 7)
    b.node("transpose", "t2", [t1], {"perm": [0, 2, 3, 1]})  # (5, 7, 4): not undone
    b.output("t2", [None, 5, 7, 4])
    return b


def attention_model() -> Builder:
    """A ViT's attention on a sequence (N, 5, 8): a class token and a position embedding
    (``broadcast``), two heads (reshape and transpose), ``q @ k^T`` and ``scores @ v``
    (``matmul``) with a softmax over the last axis, the class token's features out."""
    b = Builder(12, "x", [None, 5, 8])
    r = b.rng

    def const(name: str, shape: tuple[int, ...]) -> str:
        return b.tensor(name, r.standard_normal(shape).astype(np.float32))

    cls = b.node("broadcast", "cls", ["x"], params={"value": const("cls.v", (1, 8))})
    t = b.node("concat", "cat", [cls, "x"], {"axis": 1})  # (6, 8)
    pos = b.node("broadcast", "pos", [t], params={"value": const("pos.v", (6, 8))})
    t = b.node("add", "embed", [t, pos])
    heads = b.node("reshape", "split", [t], {"shape": [6, 2, 4]})
    q = b.node("transpose", "q", [heads], {"perm": [0, 2, 1, 3]})  # (2, 6, 4)
    k = b.node("transpose", "kT", [q], {"perm": [0, 1, 3, 2]})  # (2, 4, 6)
    scores = b.node("matmul", "qk", [q, k])  # (2, 6, 6)
    attn = b.node("softmax", "attend", [scores], {"axis": 3})
    v = b.node("matmul", "av", [attn, q])  # (2, 6, 4)
    merged = b.node("transpose", "merge", [v], {"perm": [0, 2, 1, 3]})  # (6, 2, 4)
    flat = b.node("reshape", "join", [merged], {"shape": [6, 8]})
    first = b.node("slice", "first", [flat], {"axis": 1, "start": 0, "end": 1})
    b.node("reshape", "out", [first], {"shape": [8]})
    b.output("out", [None, 8])
    return b


MODELS = {
    "attention": attention_model,
    "tokens": token_model,
    "upsampled": upsampled_model,
    "depthwise": depthwise_model,
    "transposed": transposed_model,
    "padded": padded_model,
    "resnet_like": resnet_like,
    "sequence": sequence_model,
    "real_ops": real_ops_model,
    "binary_chain": pure_binary_chain,
    "norm_gelu": norm_gelu_model,
}


def _load(builder: Builder, tmp_path: Path, **kwargs: Any) -> runtime.Model:
    path = tmp_path / "model.bfm"
    write_bfm(path, graph=builder.graph, tensors=builder.tensors, provenance={"test": True})
    return runtime.load(path, **kwargs)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("batch", [1, 3])
def test_graph_matches_torch_reference(name: str, batch: int, tmp_path: Path) -> None:
    builder = MODELS[name]()
    model = _load(builder, tmp_path)
    shape = builder.graph["inputs"][0]["shape"]
    x = np.random.default_rng(batch).standard_normal((batch, *shape[1:])).astype(np.float32)
    out = model.run(x)
    assert isinstance(out, np.ndarray)
    expected = reference(builder.graph, builder.tensors, x)
    assert out.shape == expected.shape
    if name == "binary_chain":
        np.testing.assert_array_equal(out, expected)
    else:
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    # a second run reuses the plan and gives the same answer
    np.testing.assert_array_equal(model.run(x), out)


def test_every_isa_and_thread_count_give_the_same_outputs(tmp_path: Path) -> None:
    import subprocess
    import sys

    builder = resnet_like()
    path = tmp_path / "model.bfm"
    write_bfm(path, graph=builder.graph, tensors=builder.tensors, provenance={})
    x = np.random.default_rng(5).standard_normal((2, 3, 13, 13)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code = (
        "import sys, numpy as np, runtime;"
        "m = runtime.load(sys.argv[1], threads=int(sys.argv[2]));"
        "assert runtime.isa() == sys.argv[3], runtime.isa();"
        "np.save(sys.argv[4], m.run(np.load(sys.argv[5])))"
    )
    results = {}
    for isa in runtime.supported_isas():
        for threads in (1, 2):
            out = tmp_path / f"{isa}-{threads}.npy"
            subprocess.run(
                [
                    sys.executable,
                    "-c",
                    code,
                    str(path),
                    str(threads),
                    isa,
                    str(out),
                    str(tmp_path / "x.npy"),
                ],
                check=True,
                env={**__import__("os").environ, "BITFACTOR_ISA": isa},
                timeout=120,
            )
            results[isa, threads] = np.load(out)
    first = next(iter(results.values()))
    for key, value in results.items():
        np.testing.assert_array_equal(value, first, err_msg=str(key))


def test_concurrent_callers_share_one_model(tmp_path: Path) -> None:
    builder = resnet_like()
    model = _load(builder, tmp_path, threads=2)
    rng = np.random.default_rng(9)
    inputs = [rng.standard_normal((1 + i % 3, 3, 13, 13)).astype(np.float32) for i in range(8)]
    expected = [model.run(x) for x in inputs]
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            for step in range(20):
                i = (offset + step) % len(inputs)
                np.testing.assert_array_equal(model.run(inputs[i]), expected[i])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_plan_is_built_once_per_shape_and_reuses_buffers(tmp_path: Path) -> None:
    builder = resnet_like()
    model = _load(builder, tmp_path, threads=1)
    x = np.zeros((2, 3, 13, 13), np.float32)
    model.run(x)
    plan = model._plan(2)
    values_before = dict(plan.values)
    model.run(x + 1)
    assert model._plan(2) is plan
    assert all(plan.values[k] is v for k, v in values_before.items())
    distinct = {id(v.base if v.base is not None else v) for v in plan.values.values()}
    assert len(distinct) < len(plan.values)  # dead values' buffers were reused


def test_model_interface(tmp_path: Path) -> None:
    builder = resnet_like()
    model = _load(builder, tmp_path, threads=1)
    assert [s.name for s in model.inputs] == ["image"]
    assert model.inputs[0].shape == (None, 3, 13, 13)
    assert model.outputs[0].shape == (None, 10)
    assert model.metadata["format"] == "bitfactor.bfm"
    assert model.metadata["provenance"] == {"test": True}
    assert model.threads == 1
    model.threads = 3
    assert model.threads == 3
    with pytest.raises(ValueError, match="threads"):
        model.threads = 0
    assert (
        runtime.load(b"".join([(tmp_path / "model.bfm").read_bytes()])).threads
        == runtime.default_threads()
    )
    with pytest.raises(ValueError, match=r"expected shape \(batch, 3, 13, 13\)"):
        model.run(np.zeros((1, 3, 13, 12), np.float32))
    with pytest.raises(ValueError, match="at least one"):
        model.run(np.zeros((0, 3, 13, 13), np.float32))
    with pytest.raises(ValueError, match="missing inputs"):
        model.run({"other": np.zeros((1, 3, 13, 13), np.float32)})
    # float64 and dict inputs are accepted
    x = np.random.default_rng(0).standard_normal((1, 3, 13, 13))
    np.testing.assert_array_equal(model.run({"image": x}), model.run(x.astype(np.float32)))


def test_batchnorm_is_folded_only_where_the_layer_feeds_it_alone(tmp_path: Path) -> None:
    model = _load(resnet_like(), tmp_path)
    ops = [step.op for step in model._steps]
    assert "batchnorm" not in ops  # stem conv + bn folded
    assert "relu" not in ops  # and the relu applied inside the conv step

    b = Builder(7, "x", [None, 2, 5, 5])
    conv = b.node(
        "conv2d",
        "conv",
        ["x"],
        {"padding": [1, 1]},
        {"weight": b.tensor("w", b.rng.standard_normal((3, 2, 3, 3)).astype(np.float32))},
    )
    bn = b.node("batchnorm", "bn", [conv], params={"scale": b.vec("s", 3), "shift": b.vec("t", 3)})
    b.node("add", "sum", [bn, conv])  # the conv output is read twice: no folding
    b.output("sum", [None, 3, 5, 5])
    path = tmp_path / "twice.bfm"
    write_bfm(path, graph=b.graph, tensors=b.tensors, provenance={})
    model = runtime.load(path)
    assert "batchnorm" in [step.op for step in model._steps]
    x = np.random.default_rng(0).standard_normal((2, 2, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(model.run(x), reference(b.graph, b.tensors, x), rtol=1e-5, atol=1e-5)


def test_large_real_products_split_over_threads_match(tmp_path: Path) -> None:
    b = Builder(8, "x", [None, 3, 40, 40])
    b.node(
        "conv2d",
        "big",
        ["x"],
        {"padding": [3, 3]},
        {
            "weight": b.tensor("w", b.rng.standard_normal((64, 3, 7, 7)).astype(np.float32)),
            "bias": b.vec("b", 64),
        },
    )
    b.output("big", [None, 64, 40, 40])  # 64 x 147 x 1600 MACs: split in two
    path = tmp_path / "big.bfm"
    write_bfm(path, graph=b.graph, tensors=b.tensors, provenance={})
    x = np.random.default_rng(1).standard_normal((2, 3, 40, 40)).astype(np.float32)
    one = runtime.load(path, threads=1).run(x)
    two = runtime.load(path, threads=2).run(x)
    # BLAS blocks the row halves differently: equal up to float rounding
    np.testing.assert_allclose(one, two, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(two, reference(b.graph, b.tensors, x), rtol=1e-4, atol=1e-4)


def test_transposes_that_undo_each_other_are_dropped_at_load(tmp_path: Path) -> None:
    builder = token_model()
    model = _load(builder, tmp_path)
    steps = [(step.op, step.name) for step in model._steps if step.op == "transpose"]
    # fc1.out/fc2.tokens (GELU and leaky ReLU between) and fc2.out/fc3.tokens go
    assert steps == [
        ("transpose", "fc1.tokens"),
        ("transpose", "fc3.out"),
        ("transpose", "fc4.tokens"),
        ("transpose", "fc4.out"),
        ("transpose", "fc5.tokens"),
        ("transpose", "fc5.out"),
        ("transpose", "t1"),
        ("transpose", "t2"),
    ]
