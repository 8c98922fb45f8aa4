"""Type stub of the C extension ``runtime._native`` (runtime/csrc/module.c)."""

from typing_extensions import Buffer

WORD_BITS: int

def popcount(buffer: Buffer, isa: str | None = None) -> int: ...
def isa() -> str: ...
def best_isa() -> str: ...
def supported_isas() -> list[str]: ...
def select_isa(name: str, /) -> None: ...
def xnor_gemm(
    a: Buffer,
    b: Buffer,
    c: Buffer,
    m: int,
    n: int,
    kw: int,
    lda: int,
    ldb: int,
    isa: str | None = None,
) -> None: ...
def sign_pack(
    x: Buffer, threshold: Buffer | None, out: Buffer, n: int, c: int, s: int, isa: str | None = None
) -> None: ...
def bconv_scratch_bytes(kpad: int, threads: int, /) -> int: ...
def bconv(
    x: Buffer,
    weight: Buffer,
    wsum: Buffer | None,
    scale: Buffer,
    bias: Buffer | None,
    pos_h: Buffer | None,
    pos_w: Buffer | None,
    slope: Buffer | None,
    residual: Buffer | None,
    out_threshold: Buffer | None,
    out: Buffer,
    scratch: Buffer,
    geometry: tuple[int, ...],
    transform: tuple[int, int, float, float, int, int],
    threads: int,
    isa: str | None = None,
) -> int: ...
