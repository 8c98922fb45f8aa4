"""The XOR/popcount inner loop in several forms on this CPU, in one run (ratios).

    python bench/inner_loops.py              # table
    python bench/inner_loops.py --json       # {"form": bits_per_second, ...}
    python bench/inner_loops.py --seconds 4  # longer timing (default 2 s in all)

Builds ``bench/inner_loops.c`` with the C compiler (``$CC`` or ``cc``; no ``-march``: each
form carries its own target attribute) and runs it. Every form computes the same counts as
the AVX2 kernel's tile (4 pixels x 8 channels, 31 words each, data in L1) and is checked
against plain C before it is timed; the forms are timed in turn, 7 rounds, best of. The
table gives each form's binary MACs per second and its ratio to ``lookup``, the form the
shipped AVX2 kernel (``runtime/csrc/xnor_panel/xnor_panel__avx2.c``) uses. It bounds what
another AVX2 kernel could gain on this CPU (docs/runtime.md, "How far AVX2 can go"):

- ``split``: the lookup on operands split into nibbles beforehand (6 vector ops per
  256-bit product instead of 8; the split is not timed, so this is an upper bound);
- ``lookup+popcnt`` and ``split+popcnt``: 2 more channels per tile counted by scalar
  POPCNT on the integer pipes while the vector pipes run;
- ``popcnt``: scalar POPCNT alone; ``vpopcntq``: AVX-512 VPOPCNTDQ, where the CPU has it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE = Path(__file__).resolve().with_suffix(".c")


def measure(seconds: float) -> dict[str, float]:
    """Build and run the loops; each form's best binary MACs per second."""
    if platform.machine() not in ("x86_64", "AMD64"):
        raise SystemExit("the loops are x86-64 code")
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("no C compiler: set CC or install gcc")
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "inner_loops"
        subprocess.run([cc, "-O2", "-o", str(exe), str(SOURCE)], check=True)
        done = subprocess.run([str(exe), str(seconds)], check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"inner_loops failed: {done.stderr.strip()}")
    rates: dict[str, float] = {}
    for line in done.stdout.splitlines():
        name, rate = line.split()
        rates[name] = float(rate)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="timing, all rounds")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rates = measure(args.seconds)
    if args.json:
        json.dump(rates, sys.stdout)
        print()
        return
    base = rates.get("lookup")
    print(f"{'form':<15} {'G bMAC/s':>9} {'x lookup':>9}")
    for name, rate in rates.items():
        ratio = f"{rate / base:9.2f}" if base else f"{'-':>9}"
        print(f"{name:<15} {rate / 1e9:9.0f} {ratio}")


if __name__ == "__main__":
    main()
