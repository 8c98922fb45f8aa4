"""Run a Python module in a child process under limits; torch-free.

Used wherever untrusted model bytes are loaded: the API's upload check
(:func:`api.validation.inspect_model`) and the engine's ``.pt`` import
(:func:`engine.importers.load_pt_state_dict`). The child gets an address-space limit
(``RLIMIT_AS``), a CPU-time limit (``RLIMIT_CPU``), no core files, a wall-clock timeout
(applied by the caller) and an environment with no secrets.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Any

# Runs in the child before anything else: set the limits, then run the module as __main__.
_LIMITED = (
    "import resource, runpy, sys\n"
    "def cap(kind, soft, hard):\n"
    "    _, cur = resource.getrlimit(kind)\n"
    "    if cur != resource.RLIM_INFINITY:\n"
    "        soft, hard = min(soft, cur), min(hard, cur)\n"
    "    resource.setrlimit(kind, (soft, hard))\n"
    "mem, cpu = int(sys.argv[1]), int(sys.argv[2])\n"
    "if mem > 0:\n"
    "    cap(resource.RLIMIT_AS, mem, mem)\n"
    "if cpu > 0:\n"
    "    cap(resource.RLIMIT_CPU, cpu, cpu + 1)\n"
    "cap(resource.RLIMIT_CORE, 0, 0)\n"
    "sys.argv = [sys.argv[3], *sys.argv[4:]]\n"
    "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
)
_CHILD_ENV = {
    "PATH",
    "PYTHONPATH",
    "PYTHONHOME",
    "VIRTUAL_ENV",
    "HOME",
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "LD_LIBRARY_PATH",
}
# Words in a child's stderr that mean it ran out of address space.
OUT_OF_MEMORY = ("MemoryError", "bad_alloc", "can't allocate memory", "Cannot allocate memory")


@dataclass(frozen=True)
class Limits:
    """Bounds of a child: address space in bytes and CPU seconds (0: none), wall seconds."""

    max_memory_bytes: int = 6144 * 2**20
    max_cpu_seconds: int = 60
    timeout: float = 120.0


def limited_command(
    module: str, args: list[str], *, max_memory_bytes: int, max_cpu_seconds: int
) -> list[str]:
    """The argv that runs ``python -m module *args`` with the limits set first."""
    return [
        sys.executable,
        "-c",
        _LIMITED,
        str(max_memory_bytes),
        str(max_cpu_seconds),
        module,
        *args,
    ]


def child_env() -> dict[str, str]:
    """Only what an interpreter needs: no secrets (database URL, secret key) reach it."""
    return {
        **{k: v for k, v in os.environ.items() if k in _CHILD_ENV},
        "PYTHONDONTWRITEBYTECODE": "1",
        # One thread: CPU time is wall time, and no per-thread arenas eat the address space.
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }


def child_report(stdout: str) -> dict[str, Any] | None:
    """The JSON object a sandboxed child printed last (its verdict), or None."""
    lines = [line for line in stdout.strip().splitlines() if line.strip()]
    if not lines:
        return None
    try:
        parsed = json.loads(lines[-1])
    except json.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None
