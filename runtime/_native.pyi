"""Type stub of the C extension ``runtime._native`` (runtime/csrc/module.c)."""

from typing import Any

import numpy as np
from typing_extensions import Buffer

_Array = Buffer | np.ndarray[Any, Any]

WORD_BITS: int

def popcount(buffer: Buffer, isa: str | None = None) -> int: ...
def erf(x: _Array, out: _Array, gelu: bool) -> None: ...
def isa() -> str: ...
def best_isa() -> str: ...
def supported_isas() -> list[str]: ...
def select_isa(name: str, /) -> None: ...
def xnor_gemm(
    a: _Array,
    b: _Array,
    c: _Array,
    m: int,
    n: int,
    kw: int,
    lda: int,
    ldb: int,
    isa: str | None = None,
) -> None: ...
def xnor_panel(
    a: _Array,
    w: _Array,
    c: _Array,
    n_pix: int,
    n_ch: int,
    kw: int,
    lda: int,
    ldw: int,
    isa: str | None = None,
    n_seg: int = 1,
    seg_stride: int = 0,
    pixel_major: bool = False,
    add: _Array | None = None,
) -> None: ...
def panel_pack(w: _Array, panel: _Array, n_ch: int, kw: int, ldw: int, lanes: int) -> None: ...
def panel_lanes(isa: str | None = None) -> int: ...
def sign_pack(
    x: _Array, threshold: _Array | None, out: _Array, n: int, c: int, s: int, isa: str | None = None
) -> None: ...
def bconv_scratch_bytes(kpad: int, cout: int, threads: int, /) -> int: ...
def bconv(
    x: _Array,
    weight: _Array,
    wsum: _Array | None,
    scale: _Array,
    bias: _Array | None,
    pos_h: _Array | None,
    pos_w: _Array | None,
    slope: _Array | None,
    residual: _Array | None,
    out_threshold: _Array | None,
    out: _Array,
    scratch: _Array,
    geometry: tuple[int, ...],
    transform: tuple[int, int, float, float, int, int],
    threads: int,
    isa: str | None = None,
    panel: _Array | None = None,
    panel_lanes: int = 0,
) -> int: ...
def maxpool2d(
    x: _Array, out: _Array, row: _Array, geometry: tuple[int, ...], isa: str | None = None, /
) -> None: ...
def flinear(
    x: _Array,
    weight: _Array,
    bias: _Array | None,
    out: _Array,
    n: int,
    in_features: int,
    out_features: int,
    isa: str | None = None,
) -> None: ...
def fconv_channels(isa: str | None = None) -> int: ...
def fconv_scratch_bytes(
    geometry: tuple[int, ...],
    pool: tuple[int, ...] | None = None,
    threads: int = 1,
    bits: bool = False,
    /,
) -> int: ...
def fconv(
    x: _Array,
    weight: _Array,
    bias: _Array | None,
    out: _Array,
    scratch: _Array,
    geometry: tuple[int, ...],
    relu: bool,
    threads: int,
    isa: str | None = None,
    pool: tuple[int, ...] | None = None,
    bits: _Array | None = None,
    threshold: _Array | None = None,
) -> int: ...
def dwconv_scratch_bytes(geometry: tuple[int, ...], threads: int = 1, /) -> int: ...
def dwconv(
    x: _Array,
    weight: _Array,
    bias: _Array | None,
    out: _Array,
    scratch: _Array,
    geometry: tuple[int, ...],
    relu: bool,
    threads: int,
    isa: str | None = None,
) -> int: ...
