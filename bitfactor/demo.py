"""The main job, end to end on the embedded defaults (``make demo`` / ``bitfactor demo``).

It runs every stage of the pipeline that exists so far and names the ones still missing,
so that the command is useful from the first day and honest about what it did.
"""

from __future__ import annotations

import importlib.util
import os

from rich.console import Console
from rich.table import Table


def _stage_available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def run_demo() -> int:
    """Run the demo; returns the process exit code."""
    import numpy as np

    import runtime

    console = Console()
    console.rule("bitfactor demo")
    rng = np.random.default_rng(0)
    words = rng.integers(0, 2**63, size=4099, dtype=np.uint64)
    expected = int(np.unpackbits(words.view(np.uint8)).sum())
    table = Table(title=f"runtime kernels (in use: {runtime.isa()})")
    table.add_column("ISA")
    table.add_column("popcount of 4099 words")
    table.add_column("matches numpy")
    ok = True
    for isa in runtime.supported_isas():
        got = runtime.popcount(words.tobytes(), isa=isa)
        ok &= got == expected
        table.add_row(isa, str(got), "yes" if got == expected else "NO")
    console.print(table)

    missing = [
        stage
        for stage, module in (
            ("binary conv/linear runtime", "runtime.model"),
            ("engine (convert, train, export)", "engine.pipeline"),
            ("service (API + worker)", "api.app"),
        )
        if not _stage_available(module)
    ]
    if missing:
        console.print("[yellow]Not built yet:[/yellow] " + "; ".join(missing))
    if os.environ.get("BITFACTOR_DEMO_STRICT") and missing:
        return 2
    return 0 if ok else 1
