"""The runtime's depthwise convolution (``runtime/csrc/dwconv``) against torch float32.

    python bench/depthwise.py            # MobileNet V2 / EfficientNet depthwise shapes
    python bench/depthwise.py --json     # a JSON list of rows
    python bench/depthwise.py --isa scalar --threads 2

Each shape is a one-layer ``.bfm`` (a ``conv2d`` with ``groups`` = channels, 3x3 or 5x5,
bias and fused ReLU) run by ``Model.run`` at batch 1, against torch's
``F.conv2d(groups=C)`` + ReLU on the same data and thread count, both timed in warm
blocks taking turns (``bench/runtime.py``'s ``blocks_ms``: per-call median and min, wall
time), after checking that the outputs agree. Report ratios: this kind of machine's speed
moves by tens of percent within minutes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # before bench/, whose runtime.py is not the package

import runtime  # noqa: E402
from runtime import _native  # noqa: E402

# bench/runtime.py, by path: on sys.path its name would shadow the runtime package
_SPEC = importlib.util.spec_from_file_location("bench_runtime", ROOT / "bench" / "runtime.py")
assert _SPEC is not None
assert _SPEC.loader is not None
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)

# (channels, input size, kernel, stride): MobileNet V2's depthwise layers at 224x224 (3x3),
# and two of EfficientNet-B0's 5x5 ones
SHAPES = [
    (32, 112, 3, 1),
    (96, 112, 3, 2),
    (144, 56, 3, 1),
    (192, 28, 3, 1),
    (384, 14, 3, 1),
    (576, 14, 3, 2),
    (960, 7, 3, 1),
    (240, 28, 5, 2),
    (672, 14, 5, 1),
]


def depthwise_model(c: int, hw: int, k: int, stride: int, path: Path) -> tuple[Any, Any]:
    """A one-layer depthwise .bfm at ``path`` and its float32 weight and bias."""
    rng = np.random.default_rng(c * 1000 + hw)
    weight = (rng.standard_normal((c, 1, k, k)) / k).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32)
    ho = (hw + 2 * (k // 2) - k) // stride + 1
    graph = {
        "inputs": [{"name": "x", "shape": [None, c, hw, hw], "dtype": "float32"}],
        "outputs": [{"name": "y", "shape": [None, c, ho, ho], "dtype": "float32"}],
        "nodes": [
            {
                "op": "conv2d",
                "name": "dw",
                "inputs": ["x"],
                "outputs": ["t"],
                "attrs": {"stride": [stride] * 2, "padding": [k // 2] * 2, "groups": c},
                "params": {"weight": "w", "bias": "b"},
            },
            {"op": "relu", "name": "act", "inputs": ["t"], "outputs": ["y"]},
        ],
    }
    runtime.write_bfm(path, graph=graph, tensors={"w": weight, "b": bias}, provenance={})
    return weight, bias


def bench_depthwise(threads: int, repeat: int) -> list[dict[str, Any]]:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for c, hw, k, stride in SHAPES:
            path = Path(tmp) / f"dw{c}.bfm"
            weight, bias = depthwise_model(c, hw, k, stride, path)
            model = runtime.load(path, threads=threads)
            x = np.random.default_rng(1).standard_normal((1, c, hw, hw)).astype(np.float32)
            xt, wt, bt = (torch.from_numpy(v) for v in (x, weight, bias))

            def run_torch(xt: Any = xt, wt: Any = wt, bt: Any = bt, s: int = stride) -> Any:
                with torch.inference_mode():
                    return F.relu(F.conv2d(xt, wt, bt, s, wt.shape[-1] // 2, 1, wt.shape[0]))

            def run_binary(model: Any = model, x: Any = x) -> Any:
                return model.run(x)

            np.testing.assert_allclose(run_binary(), run_torch().numpy(), rtol=1e-4, atol=1e-4)
            (ms_torch, min_torch), (ms_ours, min_ours) = bench.blocks_ms(
                [run_torch, run_binary], repeat=repeat
            )
            ho = (hw + 2 * (k // 2) - k) // stride + 1
            rows.append(
                {
                    "shape": f"{c}x{hw}x{hw}-k{k}-s{stride}",
                    "isa": runtime.isa(),
                    "threads": threads,
                    "ms_runtime": round(ms_ours, 4),
                    "ms_torch": round(ms_torch, 4),
                    "ratio": round(ms_ours / ms_torch, 2),
                    "ms_runtime_min": round(min_ours, 4),
                    "ms_torch_min": round(min_torch, 4),
                    "gmac_per_s": round(c * k * k * ho * ho / (ms_ours * 1e6), 2),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print a JSON list of rows")
    parser.add_argument("--isa", help="force an ISA (default: the best this CPU runs)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=15, help="rounds of blocks")
    args = parser.parse_args()
    if args.isa:  # before loading: a model lays out its weights for the ISA in use
        if args.isa not in runtime.supported_isas():
            raise SystemExit(f"--isa {args.isa}: this CPU runs {runtime.supported_isas()}")
        _native.select_isa(args.isa)
    rows = bench_depthwise(args.threads, args.repeat)
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"depthwise conv + relu, batch 1, {args.threads} thread(s), isa {runtime.isa()}")
    print("timing: warm alternating blocks, wall time, per-call median (min)")
    print(f"{'shape':22} {'ms runtime':>16} {'ms torch':>16} {'runtime/torch':>14} {'GMAC/s':>7}")
    for r in rows:
        ours = f"{r['ms_runtime']:.3f} ({r['ms_runtime_min']:.3f})"
        theirs = f"{r['ms_torch']:.3f} ({r['ms_torch_min']:.3f})"
        print(
            f"{r['shape']:22} {ours:>16} {theirs:>16} {r['ratio']:>14.2f} {r['gmac_per_s']:>7.1f}"
        )


if __name__ == "__main__":
    main()
