"""Deterministic mutation fuzzer for the ``.bfm`` loader and the executor.

Every input is a function of ``(seed, index)`` alone, so any input can be made again:

1. A pool of small *valid* models (``valid_pool``): random walks over every op the
   runtime has (binary conv 2d/1d, linear, chained bits, residuals, fused transforms,
   real convs with groups and half-precision weights, batch norm, activations, pools,
   padding, transposes, nearest upsampling, slices,
   add/mul, concat, flatten, reshape, softmax), with tiny shapes and channel counts on
   both sides of a 64-bit word.
2. An input is a pool model (sometimes two spliced) with 0 to 4 mutations: byte flips,
   digit and letter swaps in the header, truncation, splicing, a wrong header length;
   safetensors header edits (dtype, shape, offsets, dropped or duplicated entries,
   metadata); graph JSON edits (interesting integers, negative, huge and 5000-digit
   numbers, wrong types, op names, dropped, duplicated and swapped nodes, names,
   attrs); tensor edits written back consistently (re-shaped, re-typed, dropped, added
   tensors; NaN, infinities and set padding bits in the data).
3. The input is loaded (``runtime.read_bfm`` then ``runtime.Model``, which is exactly
   ``runtime.load``). Allowed: ``FormatError`` (nothing else) or a model. A model runs on
   random inputs (specials included) at batch 1 and 2, on two ISAs, and the two must agree
   bit for bit; output shapes must be the declared ones. Anything else is a failure.

Models whose declared activations are too big to run quickly are loaded but not run
(``too big``): the loader must still handle them without allocating from declared sizes
(under ASan an allocation above 256 MiB fails, see ``build_asan.py``).

4. One input in ten also calls the C binding (``runtime._native``) directly with random
   geometry (huge and negative sizes included) and buffers that fit or not: it must run
   or raise ``ValueError``/``OverflowError``/``TypeError``/``MemoryError``. The kernels
   called: binary conv, sign_pack, xnor_gemm, max pooling, panel packing, popcount,
   depthwise conv and real conv (with a fused max pool and packed bits, or not).

Run ``python tests/fuzz/fuzz_bfm.py --help``; ``docs/development.md`` has the recipe.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import mmap
import os
import random
import re
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
HUGE_TOKEN = "__HUGE_INT__"
HUGE_DIGITS = "9" * 5000
MAX_RUN_ELEMENTS = 1 << 16  # per batch item, all values together
MAX_RUN_WORK = 1 << 21  # per batch item: multiply-adds (real) or word pairs (binary)

Graph = dict[str, Any]
Tensors = dict[str, np.ndarray]


# ---------------------------------------------------------------------------------------
# valid models: random walks over the ops


class _Builder:
    """A graph under construction: values with their kind and shape (batch excluded)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.np_rng = np.random.default_rng(rng.getrandbits(64))
        self.inputs: list[dict[str, Any]] = []
        self.nodes: list[dict[str, Any]] = []
        self.tensors: Tensors = {}
        self.values: list[tuple[str, str, tuple[int, ...]]] = []  # name, kind, shape
        self.ops: set[str] = set()

    def add_input(self, shape: tuple[int, ...]) -> str:
        name = f"in{len(self.inputs)}"
        self.inputs.append({"name": name, "shape": [None, *shape], "dtype": "float32"})
        self.values.append((name, "float", shape))
        return name

    def node(
        self,
        op: str,
        inputs: list[str],
        kind: str,
        shape: tuple[int, ...],
        attrs: dict[str, Any] | None = None,
        params: dict[str, np.ndarray] | None = None,
    ) -> str:
        index = len(self.nodes)
        out = f"v{index}"
        node: dict[str, Any] = {"op": op, "name": f"n{index}", "inputs": inputs, "outputs": [out]}
        if attrs:
            node["attrs"] = attrs
        if params:
            node["params"] = {}
            for role, array in params.items():
                tname = f"n{index}.{role}"
                self.tensors[tname] = array
                node["params"][role] = tname
        self.nodes.append(node)
        self.values.append((out, kind, shape))
        self.ops.add(op)
        return out

    def floats(self, *shape: int, half: bool = False) -> np.ndarray:
        array = self.np_rng.standard_normal(shape).astype(np.float32)
        return array.astype(np.float16) if half else array

    def positive(self, n: int) -> np.ndarray:
        return self.np_rng.uniform(0.25, 2.0, n).astype(np.float32)

    def float_values(self, shape: tuple[int, ...]) -> list[str]:
        return [n for n, k, s in self.values if k == "float" and s == shape]


def _geometry(
    rng: random.Random, size: int, *, pool: bool = False
) -> tuple[int, int, int, int] | None:
    """Random (kernel, stride, padding, dilation) valid for an axis of ``size``."""
    for _ in range(8):
        k = rng.choice([1, 1, 2, 3, 3, 5])
        s = rng.choice([1, 1, 2, 3])
        d = 1 if pool else rng.choice([1, 1, 2])
        p = rng.choice([0, 0, 1, 2]) if not pool else rng.randint(0, k // 2)
        if d * (k - 1) + 1 <= size + 2 * p:
            return k, s, p, d
    return None


def _out(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _pool_out(size: int, k: int, s: int, p: int, ceil_mode: bool) -> int:
    num = size + 2 * p - k
    out = (-(-num // s) if ceil_mode else num // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _pack(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    from runtime.packing import pack_signs

    return pack_signs(rng.standard_normal(shape))


def _binary_layer(b: _Builder, name: str, shape: tuple[int, ...], *, wide: bool = False) -> str:
    """A bconv2d / bconv1d / blinear on the bits value ``name`` with a random transform;
    ``wide``: 192 channels, 3x3, enough work for the kernels to use a second thread."""
    rng = b.rng
    cin = shape[0]
    cout = 192 if wide else rng.choice([1, 3, 8, 64, 65, 70])
    nsp = len(shape) - 1
    attrs: dict[str, Any] = {}
    params: dict[str, np.ndarray] = {}
    if nsp == 0:
        op = "blinear"
        attrs.update(in_features=cin, out_features=cout)
        params["weight"] = _pack(b.np_rng, (cout, cin))
        out_shape: tuple[int, ...] = (cout,)
    else:
        op = "bconv2d" if nsp == 2 else "bconv1d"
        geo = [(3, 1, 1, 1) if wide else _geometry(rng, size) for size in shape[1:]]
        if any(g is None for g in geo):
            return name
        ks, ss, ps, ds = (list(v) for v in zip(*geo, strict=True))  # type: ignore[arg-type]
        attrs.update(in_channels=cin, out_channels=cout, kernel_size=ks)
        attrs["pad_mode"] = rng.choice(["zero", "one"])
        params["weight"] = _pack(b.np_rng, (cout, *ks, cin))
        if rng.random() < 0.2 and all(k <= size for k, size in zip(ks, shape[1:], strict=True)):
            spatial = tuple(size - k + 1 for k, size in zip(ks, shape[1:], strict=True))
        else:  # stride, padding and dilation given (else their defaults)
            attrs.update(stride=ss, padding=ps, dilation=ds)
            spatial = tuple(_out(*v) for v in zip(shape[1:], ks, ss, ps, ds, strict=True))
        out_shape = (cout, *spatial)
    params["scale"] = b.positive(cout)
    if rng.random() < 0.5:
        params["bias"] = b.floats(cout)
    activation = rng.choice(["none", "relu", "prelu", "hardtanh"])
    if activation != "none" or rng.random() < 0.3:
        attrs["activation"] = activation
    if activation == "prelu":
        params["slope"] = b.floats(cout)
    if activation == "hardtanh" and rng.random() < 0.5:
        attrs.update(min_val=-0.5, max_val=rng.choice([0.5, 2.0]))
    if rng.random() < 0.3:
        attrs["post_activation"] = "relu"
    if nsp == 2 and rng.random() < 0.3:
        params["scale_h"] = b.positive(out_shape[1])
        params["scale_w"] = b.positive(out_shape[2])
    if nsp == 1 and rng.random() < 0.3:
        params["scale_l"] = b.positive(out_shape[1])
    bits = rng.random() < 0.35
    if bits:
        attrs["output"] = "bits"
        if rng.random() < 0.5:
            params["out_threshold"] = b.floats(cout)
    inputs = [name]
    if rng.random() < 0.3:
        partners = b.float_values(out_shape)
        inputs.append(rng.choice(partners) if partners else b.add_input(out_shape))
    return b.node(op, inputs, "bits" if bits else "float", out_shape, attrs, params)


def _real_step(b: _Builder, name: str, shape: tuple[int, ...]) -> str:
    """One random real-valued op on the float value ``name``."""
    rng = b.rng
    c, nsp = shape[0], len(shape) - 1
    choices = ["act", "act", "batchnorm", "addmul", "concat", "softmax", "reshape", "flatten"]
    choices += ["layernorm", "gelu", "slice"]
    if nsp >= 1:
        choices += ["conv", "conv", "pool", "pool", "gap", "pad", "transpose", "upsample"]
        choices += ["matmul", "broadcast"]
    else:
        choices += ["linear", "linear"]
    what = rng.choice(choices)
    if what == "conv":
        op = "conv2d" if nsp == 2 else "conv1d"
        geo = [_geometry(rng, size) for size in shape[1:]]
        if any(g is None for g in geo):
            return name
        ks, ss, ps, ds = (list(v) for v in zip(*geo, strict=True))  # type: ignore[arg-type]
        groups = rng.choice([g for g in (1, 1, 1, 2, 3, c, c) if c % g == 0])  # c: depthwise
        cout = groups * rng.choice([1, 2, 4, 8])
        half = rng.random() < 0.2
        params = {"weight": b.floats(cout, c // groups, *ks, half=half)}
        if rng.random() < 0.6:
            params["bias"] = b.floats(cout, half=half and rng.random() < 0.5)
        attrs = {"stride": ss, "padding": ps, "dilation": ds, "groups": groups}
        spatial = tuple(_out(*v) for v in zip(shape[1:], ks, ss, ps, ds, strict=True))
        out = b.node(op, [name], "float", (cout, *spatial), attrs, params)
        if rng.random() < 0.4:  # foldable into the conv
            out = b.node(
                "batchnorm", [out], "float", (cout, *spatial), None,
                {"scale": b.positive(cout), "shift": b.floats(cout)},
            )  # fmt: skip
        if rng.random() < 0.4:  # fusable into the conv
            out = b.node("relu", [out], "float", (cout, *spatial))
        return out
    if what == "linear":
        fout = rng.choice([1, 4, 10, 64, 65])
        half = rng.random() < 0.2
        params = {"weight": b.floats(fout, c, half=half)}
        if rng.random() < 0.6:
            params["bias"] = b.floats(fout)
        return b.node("linear", [name], "float", (fout,), None, params)
    if what == "act":
        op = rng.choice(["relu", "sigmoid", "tanh", "prelu", "leaky_relu", "hardtanh"])
        if op == "prelu":
            slope = b.floats(1 if rng.random() < 0.3 else c)
            return b.node(op, [name], "float", shape, None, {"slope": slope})
        attrs = {}
        if op == "leaky_relu" and rng.random() < 0.5:
            attrs["negative_slope"] = rng.choice([0.0, 0.2, -1.5])
        if op == "hardtanh" and rng.random() < 0.5:
            attrs.update(min_val=-2.0, max_val=0.5)
        return b.node(op, [name], "float", shape, attrs)
    if what == "batchnorm":
        params = {"scale": b.floats(c), "shift": b.floats(c)}
        return b.node("batchnorm", [name], "float", shape, None, params)
    if what == "addmul":
        op = rng.choice(["add", "mul"])
        if nsp >= 1 and rng.random() < 0.4:
            vec = b.node("global_avgpool", [name], "float", (c,))
            return b.node(op, [name, vec], "float", shape)
        partners = b.float_values(shape)
        return b.node(op, [name, rng.choice(partners)], "float", shape)
    if what == "concat":
        axis = rng.randint(1, len(shape))
        partners = b.float_values(shape)
        ins = [name] + [rng.choice(partners) for _ in range(rng.randint(1, 2))]
        out_shape = list(shape)
        out_shape[axis - 1] *= len(ins)
        return b.node("concat", ins, "float", tuple(out_shape), {"axis": axis})
    if what == "softmax":
        axis = rng.randint(1, len(shape))
        op = rng.choice(["softmax", "softmax", "log_softmax"])
        return b.node(op, [name], "float", shape, {"axis": axis})
    if what == "layernorm":
        nd = rng.randint(1, len(shape))  # trailing dims normalized
        params = {"weight": b.floats(*shape[len(shape) - nd :])}
        if rng.random() < 0.6:
            params["bias"] = b.floats(*shape[len(shape) - nd :])
        attrs = {"eps": rng.choice([1e-5, 1e-3, 0.5])} if rng.random() < 0.5 else None
        return b.node("layernorm", [name], "float", shape, attrs, params)
    if what == "gelu":
        op = rng.choice(
            ["gelu", "gelu", "hardswish", "hardsigmoid", "erf", "elu", "selu", "softplus", "mish"]
        )
        attrs: dict[str, Any] | None = None
        if op == "gelu" and rng.random() < 0.7:
            attrs = {"approximate": rng.choice(["none", "tanh"])}
        if op == "elu" and rng.random() < 0.5:
            attrs = {"alpha": rng.choice([0.5, 2.0])}
        if op == "hardsigmoid" and rng.random() < 0.7:
            attrs = {"alpha": rng.choice([0.2, 1 / 6, -1.0]), "beta": rng.choice([0.5, 0.0])}
        return b.node(op, [name], "float", shape, attrs)
    if what == "flatten":
        return b.node("flatten", [name], "float", (math.prod(shape),))
    if what == "reshape":
        total = math.prod(shape)
        divisors = [d for d in range(1, total + 1) if total % d == 0]
        a = rng.choice(divisors)
        target = rng.choice([[total], [-1], [a, total // a], [a, -1], [1, a, total // a]])
        dims = [
            total // (math.prod(v for v in target if v != -1)) if v == -1 else v for v in target
        ]
        return b.node("reshape", [name], "float", tuple(dims), {"shape": target})
    if what == "gap":
        return b.node("global_avgpool", [name], "float", (c,))
    if what == "pad":
        pads = [rng.choice([0, 0, 1, 2, 5]) for _ in range(2 * nsp)]
        spatial = tuple(v + pads[i] + pads[nsp + i] for i, v in enumerate(shape[1:]))
        attrs_pad: dict[str, Any] = {"pads": pads}
        if rng.random() < 0.5:
            attrs_pad["value"] = rng.choice([0.0, -1.5, 3.0])
        return b.node("pad", [name], "float", (c, *spatial), attrs_pad)
    if what == "slice":  # a contiguous range of an axis other than the batch
        axis = rng.randrange(1, len(shape) + 1)
        size = shape[axis - 1]
        if size < 2:
            return name
        start = rng.randrange(size)
        end = rng.randrange(start + 1, size + 1)
        sliced = list(shape)
        sliced[axis - 1] = end - start
        attrs_slice = {"axis": axis, "start": start, "end": end}
        return b.node("slice", [name], "float", tuple(sliced), attrs_slice)
    if what == "upsample":
        scales = [rng.choice([1, 2, 2, 3]) for _ in range(nsp)]
        if c * math.prod(shape[1:]) * math.prod(scales) > 256:  # keep the model small to run
            scales = [1] * nsp
        spatial = tuple(v * k for v, k in zip(shape[1:], scales, strict=True))
        return b.node("upsample", [name], "float", (c, *spatial), {"scales": scales})
    if what == "broadcast":  # a constant per sample, added (a position embedding)
        const = b.node("broadcast", [name], "float", shape, None, {"value": b.floats(*shape)})
        return b.node("add", [name, const], "float", shape)
    if what == "matmul":  # x @ x^T over the last two axes, or x @ a broadcast constant
        lead, m, k = shape[:-2], shape[-2], shape[-1]
        if rng.random() < 0.5:
            perm = [0, *range(1, len(shape) - 1), len(shape), len(shape) - 1]
            other = b.node("transpose", [name], "float", (*lead, k, m), {"perm": perm})
            return b.node("matmul", [name, other], "float", (*lead, m, m))
        p = rng.choice([1, 3, 8, 17])
        value = b.floats(*lead, k, p)
        other = b.node("broadcast", [name], "float", (*lead, k, p), None, {"value": value})
        return b.node("matmul", [name, other], "float", (*lead, m, p))
    if what == "transpose":
        order = list(range(1, len(shape) + 1))
        rng.shuffle(order)
        perm = [0, *order]
        return b.node(
            "transpose", [name], "float", tuple(shape[i - 1] for i in order), {"perm": perm}
        )
    # pool
    op = rng.choice(["maxpool", "avgpool"]) + ("2d" if nsp == 2 else "1d")
    geo = [_geometry(rng, size, pool=True) for size in shape[1:]]
    if any(g is None for g in geo):
        return name
    ks, ss, ps, _ = (list(v) for v in zip(*geo, strict=True))  # type: ignore[arg-type]
    attrs = {"kernel_size": ks, "stride": ss, "padding": ps}
    ceil_mode = rng.random() < 0.4
    if ceil_mode:
        attrs["ceil_mode"] = True
    if op.startswith("avg") and rng.random() < 0.5:
        attrs["count_include_pad"] = rng.random() < 0.5
    spatial = tuple(
        _pool_out(size, k, s, p, ceil_mode)
        for size, k, s, p in zip(shape[1:], ks, ss, ps, strict=True)
    )
    return b.node(op, [name], "float", (c, *spatial), attrs)


def random_model(rng: random.Random) -> tuple[Graph, Tensors, set[str]]:
    """A small valid graph of random ops and geometry; returns it with the ops it uses."""
    b = _Builder(rng)
    nsp = rng.choice([0, 1, 2, 2])
    c = rng.choice([1, 2, 3, 4, 8, 63, 64, 65, 70, 130])
    spatial = tuple(rng.randint(1, 7) for _ in range(nsp))
    if rng.random() < 0.08:  # a layer big enough for two threads first
        c, spatial = 130, (7, 7)
        current = b.add_input((c, *spatial))
        current = b.node("sign_pack", [current], "bits", (c, *spatial))
        current = _binary_layer(b, current, (c, *spatial), wide=True)
        _, kind, shape = b.values[-1]
    else:
        current = b.add_input((c, *spatial))
        kind, shape = "float", (c, *spatial)
    for _ in range(rng.randint(1, 6)):
        if kind == "bits" or (kind == "float" and rng.random() < 0.45):
            if kind == "float":
                params = {"threshold": b.floats(shape[0])} if rng.random() < 0.3 else None
                current = b.node("sign_pack", [current], "bits", shape, None, params)
            current = _binary_layer(b, current, shape)
        else:
            current = _real_step(b, current, shape)
        _, kind, shape = next(v for v in b.values if v[0] == current)
        if math.prod(shape) > 4096:
            break
    if kind == "bits":  # a last 1x1 binary layer with float output
        cin, nsp = shape[0], len(shape) - 1
        op = ["blinear", "bconv1d", "bconv2d"][nsp]
        attrs: dict[str, Any] = (
            {"in_features": cin, "out_features": 2}
            if nsp == 0
            else {"in_channels": cin, "out_channels": 2, "kernel_size": [1] * nsp}
        )
        params = {"weight": _pack(b.np_rng, (2, *[1] * nsp, cin)), "scale": b.positive(2)}
        current = b.node(op, [current], "float", (2, *shape[1:]), attrs, params)
    outputs = [current]
    floats = [n for n, k, _ in b.values if k == "float" and n != current and n.startswith("v")]
    if floats and rng.random() < 0.3:
        outputs.append(rng.choice(floats))
    shapes = {n: s for n, _, s in b.values}
    graph = {
        "inputs": b.inputs,
        "outputs": [{"name": n, "shape": [None, *shapes[n]], "dtype": "float32"} for n in outputs],
        "nodes": b.nodes,
    }
    return graph, b.tensors, b.ops


def encode(graph: Graph, tensors: Tensors, provenance: dict[str, Any] | None = None) -> bytes:
    """A ``.bfm`` file's bytes, validated by ``runtime.write_bfm`` on the way."""
    from runtime import write_bfm

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.bfm"
        write_bfm(path, graph=graph, tensors=tensors, provenance=provenance or {"fuzz": True})
        return join(*split(path.read_bytes()))


def valid_pool(seed: int, size: int = 96, *, cover: bool = True) -> tuple[list[bytes], set[str]]:
    """``size`` valid models made from ``seed`` (deterministic) and the ops they cover;
    with ``cover``, more (up to 8 times as many) until every op of ``OPS`` is used."""
    rng = random.Random(f"pool:{seed}")
    pool: list[bytes] = []
    ops: set[str] = set()
    while len(pool) < size or (cover and not ops >= set(OPS) and len(pool) < 8 * size):
        graph, tensors, used = random_model(rng)
        data = encode(graph, tensors)
        elements, work = _work(graph, tensors)
        if elements > MAX_RUN_ELEMENTS or work > MAX_RUN_WORK:
            continue  # a pool model runs; only mutants may be too big to
        pool.append(data)
        ops |= used
    return pool, ops


# ---------------------------------------------------------------------------------------
# mutations


def split(data: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join(header: dict[str, Any], body: bytes, *, pad: bool = True) -> bytes:
    # sorted keys: safetensors writes its header from a hash map, in no fixed order
    raw = json.dumps(header, separators=(",", ":"), sort_keys=True)
    raw = raw.replace(f'"{HUGE_TOKEN}"', HUGE_DIGITS)
    if pad:
        raw += " " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw.encode() + body


INTERESTING_INTS = [
    0, 1, -1, 2, 3, 4, 7, 8, 63, 64, 65, 127, 128, 255, 256, 4096, 65535, 65536,
    (1 << 24) - 1, 1 << 24, (1 << 24) + 1, (1 << 31) - 1, 1 << 31, 1 << 32, (1 << 63) - 1,
    1 << 63, 1 << 64, -(1 << 31), -(1 << 63), 10**30,
]  # fmt: skip


def _interesting(rng: random.Random, old: Any, names: list[str]) -> Any:
    roll = rng.random()
    if isinstance(old, int) and not isinstance(old, bool) and roll < 0.4:
        return rng.choice([old + 1, old - 1, old * 2, old // 2, -old, old + 64, old * 1000])
    if roll < 0.65:
        return rng.choice(INTERESTING_INTS)
    if roll < 0.72:
        return HUGE_TOKEN
    if roll < 0.85 and names:
        return rng.choice(names)
    return rng.choice(
        [
            None, True, False, "", "x", 0.5, -0.0, 1e308, float("nan"), float("inf"), [], {},
            [1], [0, 0], [1, 1, 1], [-1, 2], [[1]], {"a": 1}, "zero", "one", "bits", "float",
            "relu", "prelu", "none", "float16", [None, 1], [None],
        ]
    )  # fmt: skip


def _paths(obj: Any, out: list[tuple[Any, Any]]) -> None:
    """Every (container, key) under ``obj``."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            out.append((obj, key))
            _paths(value, out)
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            out.append((obj, i))
            _paths(value, out)


def _names_in(graph: Any) -> list[str]:
    names: list[str] = []
    if isinstance(graph, dict):
        for node in graph.get("nodes", []) if isinstance(graph.get("nodes"), list) else []:
            if isinstance(node, dict):
                for key in ("inputs", "outputs"):
                    if isinstance(node.get(key), list):
                        names += [v for v in node[key] if isinstance(v, str)]
                if isinstance(node.get("params"), dict):
                    names += [v for v in node["params"].values() if isinstance(v, str)]
                if isinstance(node.get("name"), str):
                    names.append(node["name"])
    return names


OPS = [
    "sign_pack", "bconv2d", "bconv1d", "blinear", "conv2d", "conv1d", "linear", "batchnorm",
    "relu", "sigmoid", "tanh", "prelu", "leaky_relu", "hardtanh", "maxpool2d", "avgpool2d",
    "maxpool1d", "avgpool1d", "global_avgpool", "add", "mul", "flatten", "reshape", "concat",
    "softmax", "layernorm", "gelu", "hardsigmoid", "hardswish", "erf", "elu", "selu",
    "softplus", "mish", "log_softmax", "pad", "transpose", "upsample", "slice", "matmul",
    "broadcast",
]  # fmt: skip
ATTRS = [
    "in_channels", "out_channels", "in_features", "out_features", "kernel_size", "stride",
    "padding", "dilation", "groups", "pad_mode", "activation", "post_activation", "output",
    "min_val", "max_val", "axis", "shape", "ceil_mode", "count_include_pad", "negative_slope",
    "eps", "approximate", "alpha", "beta", "pads", "value", "perm", "scales", "mode",
    "start", "end",
]  # fmt: skip


def mutate_graph(rng: random.Random, graph: Any) -> Any:
    """One structural edit of the graph JSON."""
    names = _names_in(graph)
    nodes = graph.get("nodes") if isinstance(graph, dict) else None
    roll = rng.random()
    if isinstance(nodes, list) and nodes and roll < 0.3:
        i, j = rng.randrange(len(nodes)), rng.randrange(len(nodes))
        what = rng.randrange(7)
        if what == 0:
            nodes[i], nodes[j] = nodes[j], nodes[i]
        elif what == 1:
            nodes.insert(j, json.loads(json.dumps(nodes[i])))
        elif what == 2:
            del nodes[i]
        elif what == 3 and isinstance(nodes[i], dict):
            nodes[i]["op"] = rng.choice(OPS)
        elif what == 4 and isinstance(nodes[i], dict):
            attrs = nodes[i].setdefault("attrs", {})
            if isinstance(attrs, dict):
                attrs[rng.choice(ATTRS)] = _interesting(rng, 1, names)
        elif what == 5 and isinstance(nodes[i], dict) and isinstance(nodes[j], dict):
            key = rng.choice(["attrs", "params", "inputs", "outputs"])
            if key in nodes[j]:
                nodes[i][key] = json.loads(json.dumps(nodes[j][key]))
        elif isinstance(nodes[i], dict) and isinstance(nodes[i].get("inputs"), list):
            nodes[i]["inputs"].append(rng.choice(names) if names else "x")
        return graph
    paths: list[tuple[Any, Any]] = []
    _paths(graph, paths)
    if not paths:
        return _interesting(rng, graph, names)
    container, key = rng.choice(paths)
    roll = rng.random()
    if roll < 0.15:
        del container[key]
    elif roll < 0.25 and isinstance(container, list):
        container.insert(key, json.loads(json.dumps(container[key])))
    else:
        container[key] = _interesting(rng, container[key], names)
    return graph


def resize_input(rng: random.Random, graph: Any) -> Any:
    """A graph input's dim changed (small, big, up to the 2**24 limit)."""
    inputs = graph.get("inputs") if isinstance(graph, dict) else None
    if not isinstance(inputs, list) or not inputs or not isinstance(inputs[0], dict):
        return graph
    shape = rng.choice(inputs).get("shape")
    if isinstance(shape, list) and len(shape) > 1 and isinstance(shape[-1], int):
        i = rng.randrange(1, len(shape))
        old = shape[i] if isinstance(shape[i], int) else 1
        shape[i] = rng.choice([1, 2, 3, old + 1, old * 2, old * 64, 4096, 65536, 1 << 20, 1 << 24])
    return graph


def repair_outputs(graph: Any, tensors: Tensors) -> Any:
    """Declare the outputs with the shapes the graph now gives them, where it validates:
    so that geometry mutations (input sizes, kernels, strides) reach the executor."""
    from runtime import FormatError
    from runtime.bfm import infer_graph

    try:
        values, _ = infer_graph({**graph, "outputs": graph["inputs"]}, tensors)
        for out in graph["outputs"]:
            out["shape"] = list(values[out["name"]].shape)
    except (FormatError, KeyError, TypeError, AttributeError, RecursionError):
        pass
    return graph


def _tensors_of(header: dict[str, Any], body: bytes) -> Tensors:
    dtypes = {"U64": "<u8", "F32": "<f4", "F16": "<f2"}
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        array = np.frombuffer(body[begin:end], dtype=dtypes[entry["dtype"]])
        out[name] = array.reshape(entry["shape"]).copy()
    return out


def mutate_tensors(rng: random.Random, data: bytes) -> bytes:
    """Edit tensors and write the file back consistently (safetensors container)."""
    from safetensors.numpy import save

    header, body = split(data)
    meta = header.get("__metadata__", {})
    tensors = _tensors_of(header, body)
    if not tensors:
        return data
    name = rng.choice(sorted(tensors))
    array = tensors[name]
    np_rng = np.random.default_rng(rng.getrandbits(64))
    what = rng.randrange(9)
    if what == 0 and array.size:  # special floats or random words
        flat = array.reshape(-1)
        if array.dtype.kind == "f":
            specials = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, 3e38, -3e38, 65504.0]
            for _ in range(rng.randint(1, 4)):
                flat[rng.randrange(flat.size)] = rng.choice(specials)
        else:
            for _ in range(rng.randint(1, 4)):
                flat[rng.randrange(flat.size)] = np_rng.integers(0, 2**64, dtype=np.uint64)
    elif what == 1 and array.dtype == np.uint64 and array.size:  # a padding bit set
        array.reshape(-1, array.shape[-1])[:, -1] |= np.uint64(1 << 63)
    elif what == 2:  # same bytes, another shape
        n = array.size
        choices = [(n,), (1, n), (n, 1), (*array.shape, 1), (1, *array.shape)]
        if array.ndim > 1:
            choices.append(array.shape[::-1])
        tensors[name] = array.reshape(rng.choice(choices))
    elif what == 3:  # another dtype
        target = rng.choice([np.float32, np.float16, np.uint64])
        tensors[name] = (
            array.astype(target)
            if array.dtype.kind == "f"
            else array.view(np.float32).copy()
            if target != np.uint64
            else array
        )
    elif what == 4:  # drop it
        del tensors[name]
    elif what == 5:  # an extra (unreferenced) tensor
        tensors[f"{name}.extra"] = np.ones(rng.randint(0, 4), np.float32)
    elif what == 6 and array.size:  # shorter or longer along one axis
        axis = rng.randrange(array.ndim) if array.ndim else 0
        if array.ndim and rng.random() < 0.5 and array.shape[axis] > 0:
            tensors[name] = np.delete(array, 0, axis=axis)
        elif array.ndim:
            tensors[name] = np.concatenate([array, np.take(array, [0], axis=axis)], axis=axis)
    elif what == 7:  # an empty tensor
        tensors[name] = np.zeros((0, *array.shape[1:]), array.dtype)
    else:  # a 0-d tensor
        tensors[name] = np.asarray(array.reshape(-1)[:1].reshape(()) if array.size else 0)
    try:
        return join(*split(bytes(save(tensors, metadata=meta))))
    except Exception:  # safetensors refuses some of these: keep the input as it was
        return data


def mutate_header(rng: random.Random, data: bytes) -> bytes:
    """Edit the safetensors header (and metadata) without keeping it consistent."""
    header, body = split(data)
    entries = [k for k in header if k != "__metadata__"]
    meta = header.get("__metadata__")
    what = rng.randrange(8)
    if what <= 3 and entries:
        entry = header[rng.choice(entries)]
        key = ["dtype", "shape", "data_offsets", "dtype"][what]
        if key == "dtype":
            entry[key] = rng.choice(["U64", "F32", "F16", "BF16", "I8", "F64", "", 3])
        elif rng.random() < 0.5 and isinstance(entry.get(key), list) and entry[key]:
            i = rng.randrange(len(entry[key]))
            entry[key][i] = _interesting(rng, entry[key][i], [])
        else:
            entry[key] = _interesting(rng, entry.get(key), [])
    elif what == 4 and entries:
        del header[rng.choice(entries)]
    elif what == 5 and entries:
        a, b = rng.choice(entries), rng.choice(entries)
        header[a]["data_offsets"] = list(header[b]["data_offsets"])
    elif what == 6 and isinstance(meta, dict):
        key = rng.choice(["format", "version", "graph", "provenance", "extra"])
        meta[key] = rng.choice(
            ["", "1", "2", "bitfactor.bfm", "{}", "[]", "null", "{" * 2000, '{"a":' + "[" * 5000]
        )
    else:
        header = rng.choice([{}, {"__metadata__": meta}, [header], header])
    if not isinstance(header, dict):
        raw = json.dumps(header).encode()
        return struct.pack("<Q", len(raw)) + raw + body
    return join(header, body, pad=rng.random() < 0.7)


def mutate_graph_json(rng: random.Random, data: bytes) -> bytes:
    header, body = split(data)
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or not isinstance(meta.get("graph"), str):
        return data
    try:
        graph = json.loads(meta["graph"])
    except (ValueError, RecursionError):
        return data
    for _ in range(rng.randint(1, 3)):
        graph = resize_input(rng, graph) if rng.random() < 0.25 else mutate_graph(rng, graph)
    if rng.random() < 0.6:
        graph = repair_outputs(graph, _tensors_of(header, body))
    text = json.dumps(graph, separators=(",", ":")).replace(f'"{HUGE_TOKEN}"', HUGE_DIGITS)
    meta["graph"] = text
    return join(header, body)


def mutate_bytes(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    raw = bytearray(data)
    if not raw:
        return bytes(raw)
    (n,) = struct.unpack("<Q", bytes(raw[:8]).ljust(8, b"\0"))
    header_end = min(len(raw), 8 + n)
    what = rng.randrange(9)
    if what == 0:  # bit flips anywhere
        for _ in range(rng.randint(1, 8)):
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
    elif what == 1:  # a digit of the header changed (keeps the JSON well-formed)
        digits = [i for i in range(8, header_end) if 48 <= raw[i] <= 57]
        for _ in range(rng.randint(1, 3)):
            if digits:
                raw[rng.choice(digits)] = rng.choice(b"0123456789")
    elif what == 2:  # a letter of the header changed (names, ops, dtypes)
        letters = [i for i in range(8, header_end) if 97 <= raw[i] <= 122]
        if letters:
            raw[rng.choice(letters)] = rng.choice(b"abcdefghijklmnopqrstuvwxyz_")
    elif what == 3:  # truncated
        del raw[rng.randrange(len(raw)) :]
    elif what == 4:  # a range deleted or duplicated
        a = rng.randrange(len(raw))
        b = min(len(raw), a + rng.randint(1, 64))
        if rng.random() < 0.5:
            del raw[a:b]
        else:
            raw[a:a] = raw[a:b]
    elif what == 5:  # spliced with another file
        other = rng.choice(pool)
        raw = raw[: rng.randrange(len(raw))] + other[rng.randrange(len(other)) :]
    elif what == 6:  # wrong header length
        delta = rng.choice([-16, -8, -1, 1, 8, 2**32, -(2**20)])
        raw[:8] = struct.pack("<Q", max(0, n + delta) % 2**64)
    elif what == 7:  # random bytes appended or inserted in the body
        junk = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 16)))
        at = rng.randint(header_end, len(raw))
        raw[at:at] = junk
    else:  # interesting bytes in the header
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(8, header_end) if header_end > 8 else rng.randrange(len(raw))
            raw[at] = rng.choice(b'"[]{},-0:e.\\\x00\xff')
    return bytes(raw)


def make_input(seed: int, index: int, pool: list[bytes]) -> tuple[bytes, random.Random]:
    """The input number ``index`` of a run with ``seed`` (and its rng for running it)."""
    rng = random.Random(seed * 0x9E3779B97F4A7C15 + index)
    data = rng.choice(pool)
    roll = rng.random()
    if roll < 0.08:
        return data, rng  # unmutated: a valid model run on new inputs, ISAs, threads
    steps = 1 if roll < 0.6 else rng.randint(2, 4)
    with np.errstate(all="ignore"):  # casts of NaN in tensor mutations
        return _mutated(data, rng, steps, pool), rng


def _mutated(data: bytes, rng: random.Random, steps: int, pool: list[bytes]) -> bytes:
    for _ in range(steps):
        kind = rng.random()
        try:
            if kind < 0.35:
                data = mutate_graph_json(rng, data)
            elif kind < 0.55:
                data = mutate_tensors(rng, data)
            elif kind < 0.7:
                data = mutate_header(rng, data)
            else:
                data = mutate_bytes(rng, data, pool)
        except (
            ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError,
            struct.error,
        ):  # fmt: skip
            data = mutate_bytes(rng, data, pool)  # an earlier step broke the structure
    return data


# ---------------------------------------------------------------------------------------
# checking one input


class Failure(Exception):
    """The runtime did something other than load-and-run or a clean FormatError."""


def _category(message: str) -> str:
    text = re.sub(r"'[^']*'|\"[^\"]*\"|\d+|\(.*?\)", "_", message)
    return text[:70]


def _work(graph: Graph, tensors: Tensors) -> tuple[int, int]:
    """Elements of every value and the multiply-adds of one batch item (an estimate)."""
    from runtime.bfm import infer_graph

    values, nodes = infer_graph(graph, tensors)
    elements = sum(math.prod(int(d or 0) for d in v.shape[1:]) for v in values.values())
    work = 0
    for node in nodes:
        out = values[node["outputs"][0]]
        size = math.prod(int(d or 0) for d in out.shape[1:])
        weight = tensors.get(node.get("params", {}).get("weight", ""))
        per = 1
        if weight is not None and out.shape[1]:
            per = max(1, weight.size // max(1, int(out.shape[1] or 1)))
        if node["op"].endswith(("pool1d", "pool2d")):
            per = math.prod(node["attrs"]["kernel_size"])
        if node["op"] == "matmul":  # K multiply-adds per output element
            per = int(values[node["inputs"][0]].shape[-1] or 1)
        work += size * per
    return elements, work


def _feed(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    x = rng.standard_normal(shape).astype(np.float32)
    if rng.random() < 0.2:
        flat = x.reshape(-1)
        picks = rng.integers(0, flat.size, size=min(flat.size, 3))
        flat[picks] = rng.choice(np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 3e38]), picks.size)
    return x


# ops whose result is the same bit for bit on every ISA: the binary kernels are integer
# exact and their float transform is one C code without FMA contraction; the others here
# move data or are exact (max, relu). Real convs and linear layers run per-ISA float
# kernels (runtime/csrc/fconv) that may round differently, so graphs with them, or with
# other float arithmetic that may move to such kernels, are not compared across ISAs.
EXACT_ACROSS_ISAS = {
    "sign_pack", "bconv2d", "bconv1d", "blinear", "relu", "maxpool1d", "maxpool2d",
    "flatten", "reshape", "concat",
}  # fmt: skip


def check(data: bytes, rng: random.Random, isas: list[str]) -> tuple[str, str]:
    """Load and run one input; returns (outcome, detail) or raises :class:`Failure`."""
    import warnings

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # NaN/inf in mutated weights
        return _check(data, rng, isas)


def _check(data: bytes, rng: random.Random, isas: list[str]) -> tuple[str, str]:
    import runtime
    from runtime import FormatError, Model, _native, read_bfm

    try:
        graph, tensors, metadata = read_bfm(data)
    except FormatError as exc:
        return "rejected", _category(str(exc))
    except Exception as exc:
        raise Failure(f"read_bfm raised {type(exc).__name__}: {exc}") from exc
    threads = rng.choice([1, 2])
    try:
        model = Model(graph, tensors, metadata, threads=threads)
    except Exception as exc:
        raise Failure(f"Model() of a file read_bfm accepted raised {exc!r}") from exc
    elements, work = _work(graph, tensors)
    if elements > MAX_RUN_ELEMENTS or work > MAX_RUN_WORK:
        return "too big", ""
    np_rng = np.random.default_rng(rng.getrandbits(64))
    ops = " ".join(sorted({n["op"] for n in graph["nodes"]}))
    isa_before = runtime.isa()
    try:
        results = _run_on_isas(model, np_rng, rng, isas)
    finally:
        _native.select_isa(isa_before)
    (_, first, isa_a), (_, second, isa_b) = results
    if not {n["op"] for n in graph["nodes"]} <= EXACT_ACROSS_ISAS:
        return "ran", ops
    for name, a in first.items():
        if not np.array_equal(a, second[name], equal_nan=True):
            raise Failure(f"output {name!r} differs between ISA {isa_a} and {isa_b}")
    return "ran", ops


def _run_on_isas(
    model: Any, np_rng: np.random.Generator, rng: random.Random, isas: list[str]
) -> list[tuple[dict[str, np.ndarray], dict[str, np.ndarray], str]]:
    """Run at batch 1, then twice at batch 2 on the same inputs on random ISAs."""
    from runtime import _native

    results: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray], str]] = []
    for batch, isa in ((1, rng.choice(isas)), (2, rng.choice(isas)), (2, rng.choice(isas))):
        feeds = {s.name: _feed(np_rng, (batch, *s.shape[1:])) for s in model.inputs}  # type: ignore[misc]
        if results:  # the same inputs as the batch-2 run before, on another ISA
            feeds = results[-1][0]
        _native.select_isa(isa)
        try:
            out = model.run(feeds)
        except Exception as exc:
            raise Failure(f"run (batch {batch}, isa {isa}) raised {exc!r}") from exc
        if isinstance(out, dict) != (len(model.outputs) > 1) or (
            isinstance(out, dict) and set(out) != {s.name for s in model.outputs}
        ):
            raise Failure(f"run returned {type(out).__name__} for outputs {model.outputs}")
        outs = out if isinstance(out, dict) else {model.outputs[0].name: out}
        for spec in model.outputs:
            got = outs[spec.name]
            if got.shape != (batch, *spec.shape[1:]) or got.dtype != np.float32:
                raise Failure(f"output {spec.name!r}: {got.dtype} {got.shape}, declared {spec}")
        if batch == 2:
            results.append((feeds, outs, isa))
    return results


# ---------------------------------------------------------------------------------------
# the C binding fed directly: random geometry, buffers of the right size or not

BINDING_ERRORS = (ValueError, OverflowError, TypeError, MemoryError)
MAX_BUFFER_BYTES = 1 << 20


def _small_or_not(rng: random.Random, small: bool = False) -> int:
    roll = rng.random()
    if small or roll < 0.85:
        return rng.randint(1, 9)
    return rng.choice(
        [0, -1, 64, 65, 1 << 24, (1 << 30) + 1, (1 << 31) - 1, 1 << 31, (1 << 31) + 1, 1 << 62,
         -(1 << 63), (1 << 63) - 1]
    )  # fmt: skip


def _sized_buffer(
    rng: random.Random, dtype: type, elements: int, exact: bool = False
) -> np.ndarray | None:
    """A buffer for ``elements`` items: that many, one less, none, or a random few."""
    roll = 0.0 if exact else rng.random()
    if roll < 0.75:
        n = elements
    elif roll < 0.85:
        n = elements - 1
    elif roll < 0.9:
        return None
    else:
        n = rng.randint(0, 64)
    n = max(0, min(n, MAX_BUFFER_BYTES // np.dtype(dtype).itemsize))
    return np.zeros(n, dtype) + np.asarray(rng.random(), dtype)


def _words(c: int) -> int:
    return (c + 63) // 64 if c > 0 else 0


def _conv_geometry(rng: random.Random, size: Any, exact: bool) -> tuple[tuple[int, ...], int, int]:
    """(n, cin, h, w, c, kh, kw, sh, sw, ph, pw, dh, dw) of a convolution (c: output
    channels or channel multiplier), with the output extent it implies; ``exact``: a
    kernel that fits the padded input."""
    n, cin, h, w, c, kh, kw = (size(rng) for _ in range(7))
    sh, sw, dh, dw = (rng.choice([1, 1, 2, size(rng)]) for _ in range(4))
    ph, pw = rng.choice([0, 1, size(rng)]), rng.choice([0, 1, size(rng)])
    if exact:
        kh, kw = min(kh, h + 2 * ph), min(kw, w + 2 * pw)
        dh = min(dh, max(1, (h + 2 * ph - 1) // max(kh - 1, 1)))
        dw = min(dw, max(1, (w + 2 * pw - 1) // max(kw - 1, 1)))
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // max(sh, 1) + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // max(sw, 1) + 1
    return (n, cin, h, w, c, kh, kw, sh, sw, ph, pw, dh, dw), ho, wo


def call_binding(rng: random.Random, isas: list[str]) -> str:
    """One call of a ``runtime._native`` kernel; returns its outcome or raises Failure."""
    from runtime import _native

    what = rng.choice(
        ["bconv", "sign_pack", "xnor_gemm", "maxpool2d", "panel_pack", "popcount", "dwconv",
         "fconv"]
    )  # fmt: skip
    isa = rng.choice(isas)
    exact = rng.random() < 0.5  # small sizes and buffers that fit: the kernels run

    def _size(rng: random.Random) -> int:
        return _small_or_not(rng, exact)

    def _buffer(rng: random.Random, dtype: type, elements: int) -> np.ndarray | None:
        return _sized_buffer(rng, dtype, elements, exact)

    if what == "popcount":
        args: tuple[Any, ...] = (bytes(rng.randrange(8) + 8 * rng.randrange(4)), isa)
        call = _native.popcount
    elif what == "sign_pack":
        n, c, sp = _size(rng), _size(rng), _size(rng)
        x = _buffer(rng, np.float32, n * c * sp)
        out = _buffer(rng, np.uint64, n * sp * _words(c))
        t = _buffer(rng, np.float32, c) if rng.random() < 0.5 else None
        args, call = (x, t, out, n, c, sp, isa), _native.sign_pack
    elif what == "xnor_gemm":
        m, n, kw = _size(rng), _size(rng), _size(rng)
        lda, ldb = kw + rng.choice([0, 0, 1, -1]), kw + rng.choice([0, 0, 3])
        a = _buffer(rng, np.uint64, (m - 1) * lda + kw)
        b = _buffer(rng, np.uint64, (n - 1) * ldb + kw)
        c_ = _buffer(rng, np.int32, m * n)
        args, call = (a, b, c_, m, n, kw, lda, ldb, isa), _native.xnor_gemm
    elif what == "panel_pack":
        nch, kw, lanes = _size(rng), _size(rng), rng.choice([1, 4, 8, 16, 65])
        ldw = kw + rng.choice([0, 1])
        w = _buffer(rng, np.uint64, (nch - 1) * ldw + kw)
        panel = _buffer(rng, np.uint64, -(-nch // max(lanes, 1)) * max(lanes, 1) * kw)
        args, call = (w, panel, nch, kw, ldw, lanes), _native.panel_pack
    elif what == "maxpool2d":
        planes, h, w, kh, kw = (_size(rng) for _ in range(5))
        sh, sw, ph, pw = _size(rng), _size(rng), rng.randint(0, 2), rng.randint(0, 2)
        ho = max(1, (h + 2 * ph - kh) // max(sh, 1) + 1) if rng.random() < 0.8 else _size(rng)
        wo = max(1, (w + 2 * pw - kw) // max(sw, 1) + 1) if rng.random() < 0.8 else _size(rng)
        x = _buffer(rng, np.float32, planes * h * w)
        out = _buffer(rng, np.float32, planes * ho * wo)
        row = _buffer(rng, np.float32, w)
        geo = (planes, h, w, ho, wo, kh, kw, sh, sw, ph, pw)
        args, call = (x, out, row, geo, isa), _native.maxpool2d
    elif what == "fconv":
        geo, ho, wo = _conv_geometry(rng, _size, exact)
        n, cin, h, w, cout, kh, kw = geo[:7]
        pool = None
        if rng.random() < 0.4:  # a fused max pool: one that fits, or any
            pk, ps = rng.choice([(2, 2), (3, 2), (3, 1), (_size(rng), _size(rng))])
            pp = rng.choice([0, 1]) if pk > 1 else 0
            pho = (max(ho, 1) + 2 * pp - pk) // max(ps, 1) + 1
            pwo = (max(wo, 1) + 2 * pp - pk) // max(ps, 1) + 1
            pool = (
                (pk, pk, ps, ps, pp, pp, pho, pwo)
                if rng.random() < 0.8
                else (pk, pk, ps, ps, pp, pp, _size(rng), _size(rng))
            )
        bits = pool is not None and rng.random() < 0.5
        threads = rng.choice([1, 2, 3, 0, -1])
        try:
            mr = _native.fconv_channels(isa)
            scratch_bytes = _native.fconv_scratch_bytes(geo, pool, max(threads, 1), bits)
        except BINDING_ERRORS:
            mr, scratch_bytes = 8, 64
        out_hw = (pool[6] * pool[7]) if pool else ho * wo
        buffers = [
            _buffer(rng, np.float32, n * cin * h * w),
            _buffer(rng, np.float32, -(-cout // mr) * mr * cin * kh * kw),
            _buffer(rng, np.float32, cout) if rng.random() < 0.7 else None,
            _buffer(rng, np.float32, n * cout * out_hw),
            _buffer(rng, np.uint8, scratch_bytes),
        ]
        extra: dict[str, Any] = {"pool": pool}
        if bits:
            extra["bits"] = _buffer(rng, np.uint64, n * out_hw * _words(cout))
            extra["threshold"] = _buffer(rng, np.float32, cout) if rng.random() < 0.5 else None
        args = (*buffers, geo, rng.random() < 0.5, threads, isa)
        call = functools.partial(_native.fconv, **extra)
    elif what == "dwconv":
        geo, ho, wo = _conv_geometry(rng, _size, exact)
        n, c, h, w, mult, kh, kw = geo[:7]
        threads = rng.choice([1, 2, 3, 0, -1])
        try:
            scratch_bytes = _native.dwconv_scratch_bytes(geo, max(threads, 1))
        except BINDING_ERRORS:
            scratch_bytes = 64
        buffers = [
            _buffer(rng, np.float32, n * c * h * w),
            _buffer(rng, np.float32, c * mult * kh * kw),
            _buffer(rng, np.float32, c * mult) if rng.random() < 0.7 else None,
            _buffer(rng, np.float32, n * c * mult * ho * wo),
            _buffer(rng, np.uint8, scratch_bytes),
        ]
        args, call = (*buffers, geo, rng.random() < 0.5, threads, isa), _native.dwconv
    else:
        conv_geo, ho, wo = _conv_geometry(rng, _size, exact)
        n, cin, h, w, cout, kh, kw, sh, sw, ph, pw, dh, dw = conv_geo
        kpad = kh * kw * _words(cin) + (0 if exact else rng.choice([0, 0, 1, -1]))
        threads = rng.choice([1, 2, 3, 0, -1])
        out_bits = rng.random() < 0.3
        activation = rng.choice([0, 1, 2, 3] if exact else [0, 1, 2, 3, 7, -1])
        outs = n * ho * wo
        buffers = [
            _buffer(rng, np.uint64, n * h * w * _words(cin)),
            _buffer(rng, np.uint64, cout * kpad),
            _buffer(rng, np.int32, kh * kw * cout),
            _buffer(rng, np.float32, cout),
            _buffer(rng, np.float32, cout) if rng.random() < 0.5 else None,
            *([_buffer(rng, np.float32, ho), _buffer(rng, np.float32, wo)]
              if rng.random() < 0.3 else [None, None]),
            _buffer(rng, np.float32, cout),
            _buffer(rng, np.float32, outs * cout) if rng.random() < 0.3 else None,
            _buffer(rng, np.float32, cout) if rng.random() < 0.3 else None,
            _buffer(rng, np.uint64 if out_bits else np.float32,
                    outs * (_words(cout) if out_bits else cout)),
        ]  # fmt: skip
        try:
            scratch_bytes = _native.bconv_scratch_bytes(max(kpad, 1), max(cout, 1), max(threads, 1))
        except BINDING_ERRORS:
            scratch_bytes = 64
        buffers.append(_buffer(rng, np.uint8, scratch_bytes))
        geo = (n, h, w, cin, cout, kh, kw, sh, sw, ph, pw, dh, dw, kpad)
        transform = (rng.randint(0, 1), activation, -1.0, 1.0, rng.randint(0, 1), int(out_bits))
        args, call = (*buffers, geo, transform, threads, isa), _native.bconv
        if rng.random() < 0.4:  # ready-made weight panels, of this ISA's lane count or not
            lanes = _native.panel_lanes(isa) if rng.random() < 0.8 else rng.choice([1, 3, 64])
            panel = _buffer(rng, np.uint64, -(-cout // lanes) * lanes * kpad)
            args = (*args, panel, lanes)
    try:
        call(*args)
    except BINDING_ERRORS as exc:
        if os.environ.get("BITFACTOR_FUZZ_VERBOSE"):
            print(what, exact, exc)
        return f"{what}: {type(exc).__name__}"
    except Exception as exc:
        raise Failure(f"_native.{what} raised {exc!r}") from exc
    return f"{what}: ran"


# ---------------------------------------------------------------------------------------
# one worker process, and the driver that runs several under the sanitizers


class _State:
    """The input in progress, in a shared file mapping: survives an abort of the process."""

    SIZE = 1 << 22

    def __init__(self, path: Path) -> None:
        path.write_bytes(b"\0" * self.SIZE)
        self._file = path.open("r+b")
        self._map = mmap.mmap(self._file.fileno(), self.SIZE)

    def record(self, index: int, data: bytes) -> None:
        data = data[: self.SIZE - 16]
        self._map[:16] = struct.pack("<QQ", index, len(data))
        self._map[16 : 16 + len(data)] = data

    @staticmethod
    def read(path: Path) -> tuple[int, bytes] | None:
        raw = path.read_bytes() if path.exists() else b""
        if len(raw) < 16:
            return None
        index, n = struct.unpack("<QQ", raw[:16])
        return index, raw[16 : 16 + n]


def worker(seed: int, start: int, stop: int, out: Path, tag: str) -> int:
    """Check inputs ``[start, stop)``; write ``summary-<tag>.json``; return failures."""
    import runtime

    crash_at = int(os.environ.get("BITFACTOR_FUZZ_CRASH_AT", "-1"))  # the driver's own test
    isas = runtime.supported_isas()
    pool, _ = valid_pool(seed)
    state = _State(out / f"state-{tag}.bin")
    outcomes: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    ops_ran: Counter[str] = Counter()
    binding: Counter[str] = Counter()
    failures: list[dict[str, Any]] = []
    slowest: list[tuple[float, int]] = []
    began = time.perf_counter()
    for index in range(start, stop):
        data, rng = make_input(seed, index, pool)
        state.record(index, data)
        if index == crash_at:
            import ctypes

            ctypes.CDLL(runtime._native.__file__).bf_selftest_heap_overflow()
        t0 = time.perf_counter()
        try:
            if index % 10 == 9:  # the C binding directly, beside the file
                binding[call_binding(random.Random(f"binding:{seed}:{index}"), isas)] += 1
            outcome, detail = check(data, rng, isas)
        except Failure as exc:
            outcome, detail = "failure", str(exc)
            stem = out / f"failure-{seed}-{index}"
            stem.with_suffix(".bfm").write_bytes(data)
            stem.with_suffix(".txt").write_text(
                f"{exc}\n\n{traceback.format_exc()}\nreproduce: python tests/fuzz/fuzz_bfm.py "
                f"--seed {seed} --start {index} --count 1\n"
            )
            failures.append({"index": index, "error": str(exc)[:500]})
        elapsed = time.perf_counter() - t0
        slowest = sorted([*slowest, (elapsed, index)], reverse=True)[:5]
        outcomes[outcome] += 1
        if outcome == "rejected":
            reasons[detail] += 1
        elif outcome == "ran":
            ops_ran.update(detail.split())
        if len(failures) >= 20:
            break
    summary = {
        "seed": seed,
        "start": start,
        "stop": stop,
        "inputs": sum(outcomes.values()),
        "seconds": round(time.perf_counter() - began, 2),
        "isas": isas,
        "native": runtime._native.__file__,
        "outcomes": dict(outcomes),
        "ops_ran": dict(ops_ran),
        "binding": dict(binding),
        "top_rejections": reasons.most_common(25),
        "distinct_rejections": len(reasons),
        "slowest": [{"index": i, "seconds": round(s, 4)} for s, i in slowest],
        "failures": failures,
    }
    (out / f"summary-{tag}.json").write_text(json.dumps(summary, indent=1))
    return len(failures)


@dataclass
class Report:
    """What a fuzzing run saw, summed over its workers."""

    inputs: int = 0
    seconds: float = 0.0
    outcomes: Counter[str] = field(default_factory=Counter)
    ops_ran: Counter[str] = field(default_factory=Counter)
    binding: Counter[str] = field(default_factory=Counter)
    distinct_rejections: int = 0
    failures: list[str] = field(default_factory=list)
    summaries: list[dict[str, Any]] = field(default_factory=list)

    def text(self) -> str:
        lines = [
            f"{self.inputs} inputs in {self.seconds:.1f} s: {dict(self.outcomes)}",
            f"ops run: {dict(sorted(self.ops_ran.items()))}",
            f"binding calls: {dict(sorted(self.binding.items()))}",
            f"distinct rejection messages (per worker, max): {self.distinct_rejections}",
        ]
        for summary in self.summaries:
            lines.append(f"slowest inputs: {summary['slowest']}")
        lines += [f"FAILURE: {f}" for f in self.failures]
        return "\n".join(lines)


def fuzz(
    *,
    count: int,
    seed: int = 0,
    start: int = 0,
    jobs: int = 2,
    asan: bool = True,
    out: Path | None = None,
    timeout: float = 1800.0,
) -> Report:
    """Check inputs ``[start, start + count)`` in ``jobs`` processes; returns the report.

    With ``asan`` the processes import the sanitizer build (``build_asan.py``) with the
    sanitizer runtime preloaded; an abort there (a sanitizer report, a crash, a hang past
    ``timeout``) is a failure whose input is saved as ``crash-<seed>-<index>.bfm``.
    """
    out = Path(out or ROOT / "build" / "fuzz")
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*"):
        if stale.name.startswith(("summary-", "state-", "stderr-")):
            stale.unlink()
    env = dict(os.environ)
    if asan:
        sys.path.insert(0, str(Path(__file__).parent))
        import build_asan

        env = build_asan.sanitizer_env(build_asan.build())
    env.pop("BITFACTOR_ISA", None)
    bounds = [start + count * i // jobs for i in range(jobs + 1)]
    procs = []
    for k in range(jobs):
        cmd = [sys.executable, __file__, "--worker", f"w{k}", "--seed", str(seed)]
        cmd += ["--start", str(bounds[k]), "--count", str(bounds[k + 1] - bounds[k])]
        cmd += ["--out", str(out)]
        log = (out / f"stderr-w{k}.txt").open("w")
        procs.append((k, subprocess.Popen(cmd, env=env, stdout=log, stderr=log), log))
    report = Report()
    deadline = time.monotonic() + timeout
    for k, proc, log in procs:
        try:
            rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
            report.failures.append(f"worker w{k} timed out after {timeout:.0f} s")
        log.close()
        summary_path = out / f"summary-w{k}.json"
        if summary_path.exists():
            summary = json.loads(summary_path.read_text())
            report.summaries.append(summary)
            report.inputs += summary["inputs"]
            report.seconds = max(report.seconds, summary["seconds"])
            report.outcomes.update(summary["outcomes"])
            report.ops_ran.update(summary["ops_ran"])
            report.binding.update(summary["binding"])
            report.distinct_rejections = max(
                report.distinct_rejections, summary["distinct_rejections"]
            )
            report.failures += [f"input {f['index']}: {f['error']}" for f in summary["failures"]]
        if rc != 0 and not (summary_path.exists() and report.failures):
            stderr = (out / f"stderr-w{k}.txt").read_text(errors="replace")
            current = _State.read(out / f"state-w{k}.bin")
            where = "unknown input"
            if current is not None:
                index, data = current
                crash = out / f"crash-{seed}-{index}.bfm"
                crash.write_bytes(data)
                where = f"input {index} (saved as {crash})"
            report.failures.append(f"worker w{k} died (exit {rc}) on {where}:\n{stderr[-6000:]}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000, help="inputs to check")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0, help="index of the first input")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument("--no-asan", action="store_true", help="use the normal build")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "fuzz")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--save", type=Path, help="write input --start to this file and stop")
    args = parser.parse_args(argv)
    if args.save:
        pool, _ = valid_pool(args.seed)
        args.save.write_bytes(make_input(args.seed, args.start, pool)[0])
        return 0
    if args.worker:
        args.out.mkdir(parents=True, exist_ok=True)
        return (
            1
            if worker(args.seed, args.start, args.start + args.count, args.out, args.worker)
            else 0
        )
    report = fuzz(
        count=args.count,
        seed=args.seed,
        start=args.start,
        jobs=args.jobs,
        asan=not args.no_asan,
        out=args.out,
    )
    print(report.text())
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
