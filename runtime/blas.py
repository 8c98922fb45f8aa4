"""The thread count of the BLAS library numpy uses for the real-valued layers.

OpenBLAS defaults to every core and spins its threads between calls; on the small matrix
products of a network's real layers that costs more than it saves (badly so on a busy
machine), and it ignores the model's thread setting. This module finds the OpenBLAS
numpy has loaded (Linux: ``/proc/self/maps``) and sets its thread count through its
``*_set_num_threads`` entry point, once per change. Elsewhere it does nothing.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from pathlib import Path

_SETTERS = (
    "openblas_set_num_threads",
    "openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads",
    "scipy_openblas_set_num_threads64_",
)
_lock = threading.Lock()
_setters: list[Callable[[int], None]] | None = None
_current: int | None = None


def _find_setters() -> list[Callable[[int], None]]:
    import numpy  # noqa: F401  (numpy loads its BLAS)

    found: list[Callable[[int], None]] = []
    maps = Path("/proc/self/maps")
    if not maps.exists():
        return found
    paths = set()
    for line in maps.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 6 and "openblas" in Path(parts[-1]).name.lower():
            paths.add(parts[-1])
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _SETTERS:
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.argtypes = [ctypes.c_int]
                fn.restype = None
                found.append(fn)
                break
    return found


def set_blas_threads(threads: int) -> bool:
    """Use ``threads`` BLAS threads from now on; False when no OpenBLAS was found."""
    global _setters, _current
    with _lock:
        if _setters is None:
            _setters = _find_setters()
        if _current != threads:
            for fn in _setters:
                fn(int(threads))
            _current = threads
        return bool(_setters)
