"""Concurrent callers on shared models, for the ThreadSanitizer build (``build_asan.py``
``thread`` flavor; ``test_fuzz_runtime.py`` runs it).

One loaded model serves several Python threads at once (the runtime's contract): each
thread runs every model on inputs of its own batch size while the others do the same, so
the kernels' thread pool, the per-shape plans and their arenas, and the GIL-free kernels
all meet. Models: the binary ResNet-18 of ``bench/runtime.py`` at 224x224 (every layer
splits over the pool) and the fuzzer's pool of small valid models (every op). Every result
must equal the same call made alone beforehand, bit for bit (NaN where NaN). Prints one
summary line; exits 1 on a wrong result. Under TSan a race ends the process with exit code
66 and a report.

Usage: ``python threads_drive.py [--callers 4] [--rounds 2] [--models 24] [--threads 2]``
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

import runtime

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import fuzz_bfm  # noqa: E402


def _resnet18() -> bytes:
    path = HERE.parents[1] / "bench" / "runtime.py"
    spec = importlib.util.spec_from_file_location("bitfactor_bench_runtime", path)
    assert spec is not None
    assert spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    graph, tensors, _ = bench.build_resnet18(bench._Net(0), half_real=True)
    return fuzz_bfm.encode(graph, tensors, {"source_format": "bench"})


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a.shape == b.shape and np.array_equal(a, b, equal_nan=True))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--callers", type=int, default=4, help="Python threads sharing models")
    parser.add_argument("--rounds", type=int, default=2, help="passes over the models per caller")
    parser.add_argument("--models", type=int, default=24, help="small models from the fuzz pool")
    parser.add_argument("--threads", type=int, default=2, help="each model's kernel threads")
    args = parser.parse_args()
    warnings.simplefilter("ignore", RuntimeWarning)  # NaN and inf inputs, on purpose

    pool, _ = fuzz_bfm.valid_pool(0, args.models, cover=False)
    models = [runtime.load(data, threads=args.threads) for data in [_resnet18(), *pool]]
    rng = np.random.default_rng(0)
    batches = [1 + k % 3 for k in range(args.callers)]
    feeds = {
        (m, n): {s.name: fuzz_bfm._feed(rng, (n, *s.shape[1:])) for s in model.inputs}
        for m, model in enumerate(models)
        for n in set(batches)
    }
    for m, model in enumerate(models):  # each model's plans for every batch, one at a time
        for n in set(batches):
            model.run(feeds[m, n])
    expected = {key: models[key[0]].run(feed) for key, feed in feeds.items()}

    wrong: list[str] = []
    start = threading.Barrier(args.callers)

    done = [0] * args.callers

    def caller(k: int) -> None:
        order = list(range(len(models)))
        random.Random(k).shuffle(order)
        start.wait()
        try:
            for _ in range(args.rounds):
                for m in order:
                    got = models[m].run(feeds[m, batches[k]])
                    if not _same(got, expected[m, batches[k]]):
                        wrong.append(f"caller {k}, model {m}, batch {batches[k]}")
                    done[k] += 1
        except BaseException as exc:  # a thread's exception would only be printed
            wrong.append(f"caller {k} raised {type(exc).__name__}: {exc}")

    callers = [threading.Thread(target=caller, args=(k,)) for k in range(args.callers)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    runs = sum(done)
    if runs != args.callers * args.rounds * len(models):
        wrong.append(f"{runs} runs finished of {args.callers * args.rounds * len(models)}")
    print(
        f"{len(models)} models, {args.callers} callers x {args.rounds} rounds, "
        f"{args.threads} kernel threads, isa {runtime.isa()}: {len(wrong)} wrong results"
    )
    for line in wrong[:10]:
        print("wrong:", line)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
