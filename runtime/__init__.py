"""Torch-free inference for packed binary models (``.bfm`` files).

``runtime`` owns inference: a C extension (``runtime._native``: per-ISA XNOR/popcount
kernels with CPU detection at import and table dispatch) and a small Python layer that
loads and validates a packed file and runs its graph. It depends on numpy and safetensors
only and must never import torch, ``engine``, ``api``, ``worker`` or ``db``: a packed model
plus this package is all a device needs.

The ISA in use is the best this CPU supports; ``BITFACTOR_ISA=scalar|neon|avx2|avx512bw|avx512``
forces a lower one (read once, at import).
"""

from __future__ import annotations

import os
import warnings

from . import _native
from .bfm import FormatError, read_bfm, write_bfm
from .model import Model, TensorSpec, default_threads, load

__all__ = [
    "FormatError",
    "Model",
    "TensorSpec",
    "best_isa",
    "default_threads",
    "isa",
    "load",
    "popcount",
    "read_bfm",
    "supported_isas",
    "write_bfm",
]


def isa() -> str:
    """The ISA whose kernels are in use: ``scalar``, ``neon``, ``avx2``, ``avx512bw`` (AVX-512
    without VPOPCNTDQ) or ``avx512``."""
    return _native.isa()


def best_isa() -> str:
    """The best ISA this CPU and build support, whatever ``BITFACTOR_ISA`` says."""
    return _native.best_isa()


def supported_isas() -> list[str]:
    """Every ISA this CPU and build can run, lowest first."""
    return list(_native.supported_isas())


def popcount(buffer: bytes | bytearray | memoryview, *, isa: str | None = None) -> int:
    """Number of set bits in a buffer of little-endian 64-bit words.

    ``isa`` runs one ISA's kernel explicitly (tests compare every ISA with ``scalar``);
    by default the kernel in use is called.
    """
    return int(_native.popcount(buffer, isa))


def _apply_isa_override() -> None:
    wanted = os.environ.get("BITFACTOR_ISA", "").strip().lower()
    if not wanted:
        return
    order = ["scalar", "neon", "avx2", "avx512bw", "avx512"]
    if wanted not in order:
        raise ValueError(f"BITFACTOR_ISA={wanted!r}: expected one of {', '.join(order)}")
    if wanted not in supported_isas():
        warnings.warn(
            f"BITFACTOR_ISA={wanted} is not supported by this CPU; using {best_isa()}",
            RuntimeWarning,
            stacklevel=2,
        )
        return
    _native.select_isa(wanted)


_apply_isa_override()
