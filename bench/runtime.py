"""The runtime's binary convolution and a whole binary ResNet-18 against torch float32.

    python bench/runtime.py                    # ResNet-18 3x3 layer shapes, every ISA
    python bench/runtime.py --json             # the same as a JSON list of rows
    python bench/runtime.py --model resnet18   # whole network vs torch and onnxruntime
    python bench/runtime.py --model resnet18 --json [--threads N]
    python bench/runtime.py --cpu-time         # single-thread timings in CPU time
    python bench/runtime.py --cold             # alternating single calls instead of blocks
    python bench/runtime.py --model resnet18 --f32-real   # real weights stored as F32
    python bench/runtime.py --model resnet18 --profile [--cpu-time]  # per-step times

Layer mode times the runtime's fused binary conv (packed input, float output, zero
padding) and torch's float32 ``conv2d`` on the same shapes at batch 1, single thread first,
then all cores, for every ISA this CPU runs (``--isa`` picks one). Single-threaded, both
are timed alike in warm blocks: a block of torch calls, a block of binary calls, and so on
(``--repeat`` rounds), each block 2 ms of untimed calls then 10 calls timed one by one;
the table gives the median (speedup, GMAC/s) and the minimum of those per-call times.
Caches then hold each function's own data, as for a layer inside a network, whose input the
previous layer just wrote, and the core has left the power state the other function's code
put it in (see ``blocks_ms``). ``--cold`` instead alternates single calls (torch, binary,
torch, ...), so each starts after the other's cache pollution (medians only). Several
threads: each function in a block of its own after a pause and 20 ms of untimed calls.
It also times a chain of 8 binary 3x3 layers (256ch@14x14) handing off bits, against the
XOR/popcount kernel alone on the same data, and prints the packed/float32 weight size
ratio. JSON rows carry ``shape``, ``isa``, ``threads``, ``ms_binary``, ``ms_torch``,
``speedup`` and ``bmacs_per_s`` (binary MACs per second), from medians. The chain is
timed by the same scheme.

Model mode builds a binary ResNet-18 ``.bfm`` directly (random weights; real 7x7 stem
and final Linear, binary 3x3 convs handing off bits inside each block, real 1x1
downsample shortcuts; real weights stored as F16 like the engine's export, F32 with
``--f32-real``), and times it at batch 1, 224x224, against torch float32 ResNet-18
and onnxruntime float32 with the same thread count: single-threaded in warm blocks of 5
runs (``--repeat`` runs in all, each block after 2 ms of untimed runs), like layer mode,
or alternating single runs with ``--cold``; several threads: each in a block of its own
after a pause and 20 ms of untimed runs. Timings are medians; report ratios.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import runtime
from runtime import _native
from runtime.ops import BinaryConv
from runtime.packing import pack_signs, words_for

# the clock of single-threaded measurements: wall time, or with --cpu-time the calling
# thread's CPU time (robust when other processes share the cores; only valid when the
# work runs on the calling thread, i.e. one thread)
CLOCK: list[Callable[[], float]] = [time.perf_counter]

LAYERS = [(64, 56, 1), (128, 28, 1), (256, 14, 1), (512, 7, 1), (128, 28, 2)]
SETTLE_THREADS_S = 0.02  # several threads: untimed calls after the pause, before timing


def _settle(fn: Callable[[], Any], seconds: float, clock: Callable[[], float], calls: int) -> None:
    """Run fn untimed for ``seconds`` on ``clock``, at least ``calls`` times."""
    start = clock()
    for _ in range(calls):
        fn()
    while clock() - start < seconds:
        fn()


def interleaved_ms(
    fns: list[Callable[[], Any]],
    *,
    repeat: int,
    warmup: int = 3,
    threads: int = 1,
    clock: Callable[[], float] | None = None,
) -> list[float]:
    """Median milliseconds of each function.

    Single-threaded, the functions are timed in turns so they share the machine's load
    (other processes) alike. Multi-threaded, each is timed in a block of its own after a
    pause: thread pools that spin after a call (OpenMP, OpenBLAS, onnxruntime) would
    otherwise steal the cores from the next function. The block then runs its function
    untimed for ``SETTLE_THREADS_S`` (at least ``warmup`` calls): after the pause the other cores
    were idle, and a 30 us layer's 20 timed calls would otherwise fall in the time their
    threads take to come back (measured: a 2-thread binary conv of 0.02 ms took 0.031-0.045
    ms a call right after the pause).
    """
    if threads > 1:
        result = []
        for fn in fns:
            time.sleep(0.5)
            _settle(fn, SETTLE_THREADS_S, time.perf_counter, warmup)
            result.extend(interleaved_ms([fn], repeat=repeat, warmup=0, clock=time.perf_counter))
        return result
    clock = clock or CLOCK[0]
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, bucket in zip(fns, times, strict=True):
            start = clock()
            fn()
            bucket.append(clock() - start)
    return [statistics.median(bucket) * 1e3 for bucket in times]


def blocks_ms(
    fns: list[Callable[[], Any]],
    *,
    repeat: int,
    block: int = 10,
    settle_s: float = 0.002,
    clock: Callable[[], float] | None = None,
) -> list[tuple[float, float]]:
    """(median, min) milliseconds per call of each function, timed in warm blocks.

    The functions take turns by blocks (a block of the first, one of the second, ...,
    ``repeat`` rounds): each block runs its function untimed for ``settle_s`` seconds (at
    least once), then ``block`` timed calls, each timed on its own. Every function is
    measured the same way: caches warm with its own data, as a layer runs inside a network
    (its input just written by the previous layer), and the core settled in the power state
    its own code puts it in, while taking turns still spreads the machine's other load
    alike. The settling matters after torch: on an AVX-512 Xeon, a binary conv run right
    after a block of torch's float32 conv (FMA-heavy) ran ~25% slower for about 1 ms (its
    median per position in the block: 0.156 ms first, 0.118 ms tenth; 0.115 ms after
    anything else), while torch's own times did not depend on what ran before it.
    """
    clock = clock or CLOCK[0]
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, bucket in zip(fns, times, strict=True):
            _settle(fn, settle_s, clock, 1)
            for _ in range(block):
                start = clock()
                fn()
                bucket.append(clock() - start)
    return [(statistics.median(b) * 1e3, min(b) * 1e3) for b in times]


def _pm1(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0).astype(np.float32)


# -- layers ------------------------------------------------------------------------------


def binary_layer(
    rng: np.random.Generator, c: int, hw: int, stride: int
) -> tuple[np.ndarray, np.ndarray, BinaryConv, np.ndarray]:
    """A random +/-1 batch-1 input (1, c, hw, hw) and 3x3 weights (c, c, 3, 3), the binary
    conv of those weights (padding 1, unit scale) and the packed input it takes."""
    x = _pm1(rng, (1, c, hw, hw))
    w = _pm1(rng, (c, c, 3, 3))
    op = BinaryConv.create(
        pack_signs(w.transpose(0, 2, 3, 1)),
        in_channels=c,
        scale=np.ones(c, np.float32),
        stride=(stride, stride),
        padding=(1, 1),
    )
    return x, w, op, pack_signs(x.transpose(0, 2, 3, 1))


def bench_layers(
    isas: list[str], thread_counts: list[int], repeat: int, *, cold: bool = False
) -> list[dict[str, Any]]:
    import torch

    rng = np.random.default_rng(0)
    rows = []
    for threads in thread_counts:
        torch.set_num_threads(threads)
        for isa in isas:
            for c, hw, stride in LAYERS:
                x, w, op, xb = binary_layer(rng, c, hw, stride)
                out = np.empty(op.output_shape(1, hw, hw), np.float32)
                scratch = np.empty(op.scratch_bytes(threads), np.uint8)
                xt, wt = torch.from_numpy(x), torch.from_numpy(w)
                ho = out.shape[2]
                macs = c * c * 9 * ho * ho

                def run_torch(xt: Any = xt, wt: Any = wt, s: int = stride) -> None:
                    with torch.inference_mode():
                        torch.nn.functional.conv2d(xt, wt, stride=s, padding=1)

                def run_binary(
                    op: BinaryConv = op,
                    xb: Any = xb,
                    out: Any = out,
                    scr: Any = scratch,
                    t: int = threads,
                    isa: str = isa,
                ) -> None:
                    op(xb, out, scr, threads=t, isa=isa)

                if cold or threads > 1:
                    ms_torch, ms_binary = interleaved_ms(
                        [run_torch, run_binary], repeat=repeat, threads=threads
                    )
                    min_torch, min_binary = float("nan"), float("nan")
                else:
                    (ms_torch, min_torch), (ms_binary, min_binary) = blocks_ms(
                        [run_torch, run_binary], repeat=repeat
                    )
                rows.append(
                    {
                        "shape": f"{c}x{hw}x{hw}-s{stride}",
                        "isa": isa,
                        "threads": threads,
                        "macs": macs,
                        "ms_binary": round(ms_binary, 4),
                        "ms_torch": round(ms_torch, 4),
                        "ms_binary_min": round(min_binary, 4),
                        "ms_torch_min": round(min_torch, 4),
                        "speedup": round(ms_torch / ms_binary, 2),
                        "bmacs_per_s": round(macs / (ms_binary * 1e-3), 1),
                    }
                )
    return rows


def bench_chain(isa: str, repeat: int, *, cold: bool = False) -> dict[str, float]:
    """8 binary 3x3 layers 256ch@14x14 with bit hand-off vs the XOR/popcount kernel alone."""
    rng = np.random.default_rng(1)
    c, hw, depth = 256, 14, 8
    ops = [
        BinaryConv.create(
            pack_signs(_pm1(rng, (c, 3, 3, c))),
            in_channels=c,
            scale=rng.standard_normal(c).astype(np.float32),
            bias=rng.standard_normal(c).astype(np.float32),
            padding=(1, 1),
            output="bits" if i < depth - 1 else "float",
        )
        for i in range(depth)
    ]
    x = pack_signs(rng.standard_normal((1, hw, hw, c)))
    bufs = [
        np.empty(op.output_shape(1, hw, hw), np.uint64 if op.out_bits else np.float32) for op in ops
    ]
    scratch = np.empty(ops[0].scratch_bytes(1), np.uint8)

    def chain() -> None:
        src = x
        for op, dst in zip(ops, bufs, strict=True):
            op(src, dst, scratch, threads=1, isa=isa)
            src = dst

    # the inner loop alone: the same popcount products on ready-made im2col rows, through
    # the panel kernel the convolution uses (including its weight-panel repacking)
    kpad = ops[0].kpad
    a = rng.integers(0, 2**63, (hw * hw, kpad), dtype=np.uint64)
    cmat = np.empty((c, hw * hw), np.int32)

    def kernels_only() -> None:
        for op in ops:
            _native.xnor_panel(a, op.weight_rows, cmat, hw * hw, c, kpad, kpad, kpad, isa)

    if cold:
        ms_chain, ms_kernel = interleaved_ms([chain, kernels_only], repeat=repeat)
    else:
        (ms_chain, _), (ms_kernel, _) = blocks_ms([chain, kernels_only], repeat=repeat)
    w_packed = ops[0].weight_rows[:, : 9 * words_for(c)].nbytes
    return {
        "ms_chain": ms_chain,
        "ms_kernel": ms_kernel,
        "overhead_fraction": max(0.0, 1 - ms_kernel / ms_chain),
        "weight_ratio": c * c * 9 * 4 / w_packed,
    }


def _ms(v: float) -> str:
    return "-" if v != v else f"{v:.3f}"  # NaN: not measured (--cold)


def print_layers(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'shape':<14} {'isa':<7} {'thr':>3} {'MMACs':>7} {'ms binary':>10} "
        f"{'ms torch':>9} {'GMAC/s':>8} {'x torch':>8} {'min binary':>11} {'min torch':>10}"
    )
    for r in rows:
        print(
            f"{r['shape']:<14} {r['isa']:<7} {r['threads']:>3} {r['macs'] / 1e6:7.1f} "
            f"{r['ms_binary']:10.3f} {r['ms_torch']:9.3f} {r['bmacs_per_s'] / 1e9:8.0f} "
            f"{r['speedup']:8.1f} {_ms(r['ms_binary_min']):>11} {_ms(r['ms_torch_min']):>10}"
        )
    for isa in sorted({r["isa"] for r in rows}):
        for threads in sorted({r["threads"] for r in rows}):
            sel = [r["speedup"] for r in rows if r["isa"] == isa and r["threads"] == threads]
            print(f"median speedup {isa}, {threads} thread(s): {statistics.median(sel):.1f}x")


# -- whole network -----------------------------------------------------------------------


class _Net:
    """Random ResNet-18 weights shared by the .bfm, torch and ONNX versions."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def real(self, *shape: int) -> np.ndarray:
        fan_in = int(np.prod(shape[1:]))
        return (self.rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)

    def vec(self, n: int, *, positive: bool = False) -> np.ndarray:
        v = self.rng.standard_normal(n).astype(np.float32) * 0.1
        return np.abs(v) + 0.05 if positive else v


STAGES = [(64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)]


def build_resnet18(
    net: _Net, *, half_real: bool = True
) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, Any]]:
    """The binary ResNet-18 graph, its tensors, and float weights for the torch twin.

    ``half_real`` stores the real layers' weights (stem, shortcuts, Linear) as F16, as
    the engine's export does by default.
    """
    nodes: list[dict[str, Any]] = []
    tensors: dict[str, np.ndarray] = {}
    twin: dict[str, Any] = {"blocks": []}

    def add(
        op: str,
        name: str,
        inputs: list[str],
        attrs: dict[str, Any] | None = None,
        **params: np.ndarray,
    ) -> str:
        node: dict[str, Any] = {"op": op, "name": name, "inputs": inputs, "outputs": [name]}
        if attrs:
            node["attrs"] = attrs
        if params:
            node["params"] = {}
            for role, array in params.items():
                tensors[f"{name}.{role}"] = array
                node["params"][role] = f"{name}.{role}"
        nodes.append(node)
        return name

    stem_w, stem_b = net.real(64, 3, 7, 7), net.vec(64)
    twin["stem"] = (stem_w, stem_b)
    x = add(
        "conv2d",
        "stem",
        ["input"],
        {"stride": [2, 2], "padding": [3, 3], "dilation": [1, 1], "groups": 1},
        weight=stem_w,
        bias=stem_b,
    )
    x = add("relu", "stem.relu", [x])
    x = add(
        "maxpool2d",
        "stem.pool",
        [x],
        {"kernel_size": [3, 3], "stride": [2, 2], "padding": [1, 1], "ceil_mode": False},
    )
    for si, (cin, cout, stride) in enumerate(STAGES):
        for bi in range(2):
            name = f"layer{si + 1}.{bi}"
            s = stride if bi == 0 else 1
            c_in = cin if bi == 0 else cout
            w1 = np.where(net.rng.random((cout, c_in, 3, 3)) < 0.5, -1.0, 1.0).astype(np.float32)
            w2 = np.where(net.rng.random((cout, cout, 3, 3)) < 0.5, -1.0, 1.0).astype(np.float32)
            s1, b1 = net.vec(cout, positive=True), net.vec(cout)
            s2, b2 = net.vec(cout, positive=True), net.vec(cout)
            bits = add("sign_pack", f"{name}.in", [x])
            conv = {
                "kernel_size": [3, 3],
                "padding": [1, 1],
                "dilation": [1, 1],
                "pad_mode": "zero",
            }
            h = add(
                "bconv2d",
                f"{name}.conv1",
                [bits],
                {
                    **conv,
                    "in_channels": c_in,
                    "out_channels": cout,
                    "stride": [s, s],
                    "activation": "relu",
                    "output": "bits",
                },
                weight=pack_signs(w1.transpose(0, 2, 3, 1)),
                scale=s1,
                bias=b1,
                out_threshold=np.full(cout, 0.05, np.float32),
            )
            shortcut = x
            down = None
            if s != 1 or c_in != cout:
                dw, db = net.real(cout, c_in, 1, 1), net.vec(cout)
                down = (dw, db)
                shortcut = add(
                    "conv2d",
                    f"{name}.down",
                    [x],
                    {"stride": [s, s], "padding": [0, 0], "dilation": [1, 1], "groups": 1},
                    weight=dw,
                    bias=db,
                )
            x = add(
                "bconv2d",
                f"{name}.conv2",
                [h, shortcut],
                {
                    **conv,
                    "in_channels": cout,
                    "out_channels": cout,
                    "stride": [1, 1],
                    "post_activation": "relu",
                },
                weight=pack_signs(w2.transpose(0, 2, 3, 1)),
                scale=s2,
                bias=b2,
            )
            twin["blocks"].append((w1, w2, s, down))
    x = add("global_avgpool", "pool", [x])
    fc_w, fc_b = net.real(1000, 512), net.vec(1000)
    twin["fc"] = (fc_w, fc_b)
    add("linear", "fc", [x], weight=fc_w, bias=fc_b)
    if half_real:
        for node in nodes:
            if node["op"] in ("conv2d", "linear"):
                for tensor_name in node["params"].values():
                    tensors[tensor_name] = tensors[tensor_name].astype(np.float16)
    graph = {
        "inputs": [{"name": "input", "shape": [None, 3, 224, 224], "dtype": "float32"}],
        "outputs": [{"name": "fc", "shape": [None, 1000], "dtype": "float32"}],
        "nodes": nodes,
    }
    return graph, tensors, twin


def torch_resnet18(twin: dict[str, Any]) -> Any:
    """The float32 ResNet-18 (conv-BN-ReLU blocks) with the same shapes, for timing."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, down: bool) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.down = (
                nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                if down
                else None
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return torch.relu(y + (self.down(x) if self.down is not None else x))

    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 7, 2, 3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
    ]
    blocks = iter(twin["blocks"])
    for cin, cout, _ in STAGES:
        for bi in range(2):
            w1, w2, s, down = next(blocks)
            block = Block(cin if bi == 0 else cout, cout, s, down is not None)
            with torch.no_grad():
                block.conv1.weight.copy_(torch.from_numpy(w1) * 0.05)
                block.conv2.weight.copy_(torch.from_numpy(w2) * 0.05)
            layers.append(block)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 1000)]
    return nn.Sequential(*layers).eval()


def profile_model(threads: int, repeat: int, *, half_real: bool = True) -> list[dict[str, Any]]:
    """Per-step times of ``Model.run`` on the binary ResNet-18 (the executor's steps after
    its fusions): fastest and median of ``repeat`` runs, in milliseconds of the clock."""
    net = _Net(0)
    graph, tensors, _ = build_resnet18(net, half_real=half_real)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "resnet18.bfm"
        runtime.write_bfm(path, graph=graph, tensors=tensors, provenance={"source_format": "bench"})
        model = runtime.load(path, threads=threads)
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    model.run(x)  # makes the plan
    plan = model._plan(1)
    steps = model._steps
    clock = CLOCK[0] if threads == 1 else time.perf_counter
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(repeat):
        for step, record in zip(steps, times, strict=True):
            ins = [plan.values[v] for v in step.inputs]
            start = clock()
            step.run(plan, ins, plan.values[step.output])
            record.append((clock() - start) * 1e3)
    from runtime.model import FUSED_POOL, FUSED_RELU

    def label(step: Any) -> str:  # the ops a fused step runs
        parts = [step.op]
        parts += ["relu"] if step.attrs.get(FUSED_RELU) else []
        parts += ["maxpool2d"] if FUSED_POOL in step.attrs else []
        parts += ["sign_pack"] * len(step.extra_outputs)
        return "+".join(parts)

    return [
        {
            "step": step.name,
            "op": label(step),
            "ms_min": round(min(record), 4),
            "ms_median": round(statistics.median(record), 4),
        }
        for step, record in zip(steps, times, strict=True)
    ]


def bench_model(
    threads: int, repeat: int, *, half_real: bool = True, cold: bool = False
) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    net = _Net(0)
    graph, tensors, twin = build_resnet18(net, half_real=half_real)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "resnet18.bfm"
        runtime.write_bfm(path, graph=graph, tensors=tensors, provenance={"source_format": "bench"})
        file_bytes = path.stat().st_size
        model = runtime.load(path, threads=threads)
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    torch.set_num_threads(threads)
    tmodel = torch_resnet18(twin)
    xt = torch.from_numpy(x)
    float_bytes = sum(p.numel() * 4 for p in tmodel.parameters())
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(tmodel, (xt,), buf, dynamo=False, input_names=["input"])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])

    def run_torch() -> None:
        with torch.inference_mode():
            tmodel(xt)

    fns = [lambda: model.run(x), run_torch, lambda: session.run(None, {"input": x})]
    if cold or threads > 1:
        ms_binary, ms_torch, ms_ort = interleaved_ms(fns, repeat=repeat, threads=threads)
    else:  # warm blocks of 5 runs, as in layer mode
        (ms_binary, _), (ms_torch, _), (ms_ort, _) = blocks_ms(
            fns, repeat=max(1, repeat // 5), block=5
        )
    return {
        "model": "resnet18",
        "threads": threads,
        "isa": runtime.isa(),
        "ms_binary": round(ms_binary, 3),
        "ms_torch": round(ms_torch, 3),
        "ms_onnxruntime": round(ms_ort, 3),
        "speedup": round(ms_torch / ms_binary, 2),
        "speedup_onnxruntime": round(ms_ort / ms_binary, 2),
        "file_bytes": file_bytes,
        "real_weights": "F16" if half_real else "F32",
        "float32_bytes": float_bytes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--model", choices=["resnet18"], help="time a whole network")
    parser.add_argument("--isa", help="one ISA (default: every ISA this CPU runs)")
    parser.add_argument("--threads", type=int, help="one thread count (default: 1, then all cores)")
    parser.add_argument("--repeat", type=int, default=20, help="timed runs per measurement")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="model mode: time each step of Model.run instead (min and median)",
    )
    parser.add_argument(
        "--f32-real",
        action="store_true",
        help="model mode: store the real layers' weights as F32 (default F16, as exported)",
    )
    parser.add_argument(
        "--cold",
        action="store_true",
        help="alternate single calls (torch, binary, torch, ...; model mode: binary, torch, "
        "onnxruntime) instead of warm blocks of calls",
    )
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time single-threaded runs in CPU time of the calling thread (busy machines)",
    )
    args = parser.parse_args()
    if args.cpu_time:
        CLOCK[0] = time.thread_time
    cores = runtime.default_threads()

    if args.model and args.profile:
        rows = profile_model(args.threads or 1, args.repeat, half_real=not args.f32_real)
        if args.json:
            print(json.dumps(rows))
            return
        print(f"Model.run steps, threads {args.threads or 1}, isa {runtime.isa()}")
        print(f"{'step':<16} {'op':<34} {'ms min':>8} {'ms median':>10}")
        for r in rows:
            print(f"{r['step']:<16} {r['op']:<34} {r['ms_min']:8.3f} {r['ms_median']:10.3f}")
        total = sum(r["ms_median"] for r in rows)
        print(f"{'sum':<51} {sum(r['ms_min'] for r in rows):8.3f} {total:10.3f}")
        return
    if args.model:
        counts = [args.threads] if args.threads else ([1] if args.json else sorted({1, cores}))
        results = [
            bench_model(t, args.repeat, half_real=not args.f32_real, cold=args.cold) for t in counts
        ]
        if args.json:
            print(json.dumps(results[0] if len(results) == 1 else results))
            return
        weights = "F32" if args.f32_real else "F16"
        print(f"binary ResNet-18, batch 1, 224x224, isa {runtime.isa()}, real weights {weights}")
        print(
            f"{'threads':>7} {'ms binary':>10} {'ms torch':>9} {'ms onnxrt':>10} "
            f"{'x torch':>8} {'x onnxrt':>9}"
        )
        for r in results:
            print(
                f"{r['threads']:>7} {r['ms_binary']:10.2f} {r['ms_torch']:9.2f} "
                f"{r['ms_onnxruntime']:10.2f} {r['speedup']:8.1f} {r['speedup_onnxruntime']:9.1f}"
            )
        r = results[0]
        print(
            f"file {r['file_bytes'] / 1e6:.2f} MB "
            f"(float32 parameters {r['float32_bytes'] / 1e6:.1f} MB)"
        )
        return

    isas = [args.isa] if args.isa else runtime.supported_isas()[::-1]
    counts = [args.threads] if args.threads else sorted({1, cores})
    rows = bench_layers(isas, counts, args.repeat, cold=args.cold)
    if args.json:
        keys = ("shape", "isa", "threads", "ms_binary", "ms_torch", "speedup", "bmacs_per_s")
        print(json.dumps([{k: r[k] for k in keys} for r in rows]))
        return
    clock = "thread CPU time" if args.cpu_time else "wall time"
    scheme = (
        "cold: alternating single calls, torch then binary"
        if args.cold
        else "warm: alternating blocks of 10 calls, per-call median and min"
    )
    print(f"binary 3x3 conv vs torch float32 conv2d, batch 1 ({os.cpu_count()} cores)")
    print(f"timing: {scheme}, {clock} (several threads: blocks after a pause, median)")
    print_layers(rows)
    for isa in isas:
        chain = bench_chain(isa, args.repeat, cold=args.cold)
        print(
            f"chain of 8 binary 3x3 layers 256ch@14x14, {isa}, 1 thread: "
            f"{chain['ms_chain']:.3f} ms, "
            f"XOR/popcount kernel alone {chain['ms_kernel']:.3f} ms -> everything else "
            f"{100 * chain['overhead_fraction']:.0f}% of the time"
        )
    ratio = bench_chain(isas[0], 1)["weight_ratio"]
    print(f"packed binary weights are {ratio:.1f}x smaller than float32")


if __name__ == "__main__":
    main()
