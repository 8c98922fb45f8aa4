"""Popcount throughput of each ISA's kernel against numpy, in one run (ratios).

python bench/popcount.py [--words N] [--repeat R]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import runtime


def _best_of(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--words", type=int, default=1 << 20)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()

    words = np.random.default_rng(0).integers(0, 2**63, size=args.words, dtype=np.uint64)
    buf = words.tobytes()
    as_bytes = words.view(np.uint8)
    t_numpy = _best_of(lambda: np.unpackbits(as_bytes).sum(), args.repeat)
    print(f"{'kernel':<10} {'GB/s':>8} {'x numpy':>9}")
    print(f"{'numpy':<10} {len(buf) / t_numpy / 1e9:8.2f} {1.0:9.1f}")
    for isa in runtime.supported_isas():
        t = _best_of(lambda isa=isa: runtime.popcount(buf, isa=isa), args.repeat)
        print(f"{isa:<10} {len(buf) / t / 1e9:8.2f} {t_numpy / t:9.1f}")


if __name__ == "__main__":
    main()
