"""Bit packing in numpy, with the conventions of ``docs/format.md``.

A set bit means -1 and a clear bit +1; element ``c`` is bit ``c % 64`` of word ``c // 64``
(little-endian ``uint64``); padding bits are clear. These functions are the reference the
C kernels are tested against, and what writers of ``.bfm`` files use to pack weights.
"""

from __future__ import annotations

import numpy as np

WORD_BITS = 64


def words_for(n: int) -> int:
    """Number of 64-bit words that hold ``n`` packed elements."""
    return (n + WORD_BITS - 1) // WORD_BITS


def pack_signs(x: np.ndarray, *, threshold: np.ndarray | float = 0.0) -> np.ndarray:
    """Pack the signs of ``x`` along its last axis into ``uint64`` words.

    Element ``i`` becomes a set bit (-1) iff ``x[..., i] < threshold[i]`` (NaN packs as +1).
    The result has shape ``x.shape[:-1] + (words_for(x.shape[-1]),)``.
    """
    x = np.asarray(x)
    if x.ndim == 0:
        raise ValueError("pack_signs needs at least one axis")
    n = x.shape[-1]
    negative = np.less(x, threshold)
    padded = np.zeros((*x.shape[:-1], words_for(n) * WORD_BITS), dtype=np.uint8)
    padded[..., :n] = negative
    as_bytes = np.packbits(padded, axis=-1, bitorder="little")
    return np.ascontiguousarray(as_bytes).view("<u8").astype(np.uint64, copy=False)


def unpack_signs(words: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`pack_signs`: ``float32`` +/-1 values of the first ``n`` elements."""
    words = np.ascontiguousarray(words, dtype="<u8")
    if words.ndim == 0 or words.shape[-1] != words_for(n):
        raise ValueError(f"{n} elements need {words_for(n)} words, got shape {words.shape}")
    bits = np.unpackbits(words.view(np.uint8), axis=-1, bitorder="little")[..., :n]
    return (1.0 - 2.0 * bits).astype(np.float32)
