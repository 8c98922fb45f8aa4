"""Two ISAs' kernels against each other, paired in one process (ratios, not absolute times).

The runtime's ISAs can be compared call by call in one process: each layer (the ResNet-18
binary 3x3 shapes of ``bench/runtime.py``) runs with both ISAs' kernels in alternation,
the order swapped every pair, after one untimed call each; the table gives the ratio of the
median times (and of the 10th percentiles). Both outputs must be equal. ``--model`` does
the same with whole binary ResNet-18 runs, one model loaded per ISA (each with its own
panel layout) and the ISA switched between blocks of three runs.

``--against PATH`` pairs two builds instead: the layers run at one ISA (the best, or
``--isa``) with another build's ``_native`` extension (PATH, e.g. built from an earlier
commit) in alternation with this checkout's; ratio = other / this, so > 1 means this build
is faster.

Paired timing cancels most of a shared machine's drift, which moves separate blocks by
10-30%. Times are the calling thread's CPU time (one thread).

    python bench/isa_pair.py                        # avx2 against the best ISA
    python bench/isa_pair.py --isas avx2,avx512bw --pairs 300
    python bench/isa_pair.py --model --rounds 30
    python bench/isa_pair.py --against /tmp/old/runtime/_native.cpython-311-x86_64-linux-gnu.so
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # before bench/, whose runtime.py is not the package

import runtime  # noqa: E402
import runtime.ops  # noqa: E402
from runtime import _native  # noqa: E402

# bench/runtime.py, by path: on sys.path its name would shadow the runtime package
_SPEC = importlib.util.spec_from_file_location("bench_runtime", ROOT / "bench" / "runtime.py")
assert _SPEC is not None
assert _SPEC.loader is not None
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)


def _p10(values: list[float]) -> float:
    return sorted(values)[len(values) // 10]


def load_other_build(path: Path) -> Any:
    """Another build's ``_native`` extension module, beside this checkout's."""
    loader = importlib.machinery.ExtensionFileLoader("_native", str(path))
    spec = importlib.util.spec_from_file_location("_native", path, loader=loader)
    if spec is None:
        raise SystemExit(f"{path} is not an extension module")
    try:
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
    except ImportError as exc:  # another Python's build, or not a _native at all
        raise SystemExit(f"cannot load {path}: {exc}") from None
    return module


def _scratch_bytes(native: Any, kpad: int, cout: int) -> int:
    try:
        return int(native.bconv_scratch_bytes(kpad, cout, 1))
    except TypeError:  # builds before 2026-11-28 took (kpad, threads)
        return int(native.bconv_scratch_bytes(kpad, 1))


def pair_layers(
    a: str, b: str, pairs: int, natives: dict[str, Any] | None = None, isa: str | None = None
) -> list[dict[str, Any]]:
    """Labels a and b: two ISAs of this build, or (natives, isa) two builds at one ISA."""
    natives = natives or {a: _native, b: _native}
    isas = {a: isa or a, b: isa or b}
    rng = np.random.default_rng(0)
    rows = []
    for c, hw, stride in bench.LAYERS:
        _, _, op, xb = bench.binary_layer(rng, c, hw, stride)
        outs = {key: np.empty(op.output_shape(1, hw, hw), np.float32) for key in (a, b)}
        size = max(_scratch_bytes(native, op.kpad, c) for native in natives.values())
        scratch = np.empty(size, np.uint8)
        times: dict[str, list[float]] = {a: [], b: []}
        try:
            for i in range(pairs):
                for key in (a, b) if i % 2 else (b, a):
                    runtime.ops._native = natives[key]  # type: ignore[attr-defined]
                    op(xb, outs[key], scratch, threads=1, isa=isas[key])
                    start = time.thread_time()
                    op(xb, outs[key], scratch, threads=1, isa=isas[key])
                    times[key].append(time.thread_time() - start)
        finally:
            runtime.ops._native = _native  # type: ignore[attr-defined]
        if not np.array_equal(outs[a], outs[b]):
            raise SystemExit(f"{c}x{hw}x{hw}-s{stride}: {a} and {b} disagree")
        macs = c * c * 9 * outs[a].shape[2] * outs[a].shape[3]
        ma, mb = statistics.median(times[a]), statistics.median(times[b])
        rows.append(
            {
                "shape": f"{c}x{hw}x{hw}-s{stride}",
                f"ms_{a}": round(ma * 1e3, 4),
                f"ms_{b}": round(mb * 1e3, 4),
                f"bmacs_per_s_{b}": round(macs / mb / 1e9, 1),
                "ratio": round(ma / mb, 3),
                "ratio_p10": round(_p10(times[a]) / _p10(times[b]), 3),
            }
        )
    return rows


def pair_model(a: str, b: str, rounds: int) -> dict[str, Any]:
    graph, tensors, _ = bench.build_resnet18(bench._Net(0))
    original = runtime.isa()
    models = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "resnet18.bfm"
            runtime.write_bfm(path, graph=graph, tensors=tensors, provenance={})
            for isa in (a, b):
                _native.select_isa(isa)
                models[isa] = runtime.load(path, threads=1)
        x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
        times: dict[str, list[float]] = {a: [], b: []}
        outs = {}
        for r in range(rounds):
            for isa in (a, b) if r % 2 else (b, a):
                _native.select_isa(isa)
                outs[isa] = np.asarray(models[isa].run(x))
                for _ in range(3):
                    start = time.thread_time()
                    models[isa].run(x)
                    times[isa].append(time.thread_time() - start)
    finally:
        _native.select_isa(original)
    ma, mb = statistics.median(times[a]), statistics.median(times[b])
    return {
        "model": "resnet18",
        f"ms_{a}": round(ma * 1e3, 3),
        f"ms_{b}": round(mb * 1e3, 3),
        "ratio": round(ma / mb, 3),
        "ratio_p10": round(_p10(times[a]) / _p10(times[b]), 3),
        "max_abs_diff": float(np.abs(outs[a] - outs[b]).max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--isas", help="A,B (default: avx2 and the best ISA)")
    parser.add_argument("--pairs", type=int, default=300, help="timed pairs per layer")
    parser.add_argument("--model", action="store_true", help="whole binary ResNet-18 instead")
    parser.add_argument("--rounds", type=int, default=30, help="model mode: rounds of blocks")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--against", type=Path, help="another build's _native extension")
    parser.add_argument("--isa", help="with --against: the ISA both builds run (default: best)")
    args = parser.parse_args()
    if args.against:
        isa = args.isa or runtime.best_isa()
        natives = {"other": load_other_build(args.against), "this": _native}
        rows = pair_layers("other", "this", args.pairs, natives, isa)
        if args.json:
            print(json.dumps(rows))
            return
        print(f"binary 3x3 conv, batch 1, 1 thread, {isa}: {args.against} / this build")
        _print_rows(rows, "other", "this", args.pairs)
        return
    a, b = args.isas.split(",") if args.isas else ("avx2", runtime.best_isa())
    for isa in (a, b):
        if isa not in runtime.supported_isas():
            raise SystemExit(f"{isa} is not supported here (supported: {runtime.supported_isas()})")
    if args.model:
        result: Any = pair_model(a, b, args.rounds)
        if args.json:
            print(json.dumps(result))
        else:
            print(f"binary ResNet-18, 1 thread, {a} / {b} (paired, thread CPU time)")
            print(
                f"{a} {result[f'ms_{a}']:.2f} ms, {b} {result[f'ms_{b}']:.2f} ms: ratio "
                f"{result['ratio']:.2f} (10th percentiles {result['ratio_p10']:.2f}); "
                f"outputs differ by at most {result['max_abs_diff']:.3g}"
            )
        return
    rows = pair_layers(a, b, args.pairs)
    if args.json:
        print(json.dumps(rows))
        return
    print(f"binary 3x3 conv, batch 1, 1 thread: {a} / {b}")
    _print_rows(rows, a, b, args.pairs)


def _print_rows(rows: list[dict[str, Any]], a: str, b: str, pairs: int) -> None:
    print(f"{pairs} paired calls each; ratio = {a} / {b} of median (and 10th percentile) times")
    print(f"{'shape':<14} {'ms ' + a:>12} {'ms ' + b:>12} {'G/s ' + b:>12} {'ratio':>7} {'p10':>7}")
    for row in rows:
        print(
            f"{row['shape']:<14} {row[f'ms_{a}']:>12.3f} {row[f'ms_{b}']:>12.3f} "
            f"{row[f'bmacs_per_s_{b}']:>12.0f} {row['ratio']:>7.2f} {row['ratio_p10']:>7.2f}"
        )


if __name__ == "__main__":
    main()
