"""Packing conventions: round trip, one-hot bit order, padding, thresholds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from runtime.packing import pack_signs, unpack_signs, words_for


@settings(deadline=None)  # a busy CI machine must not fail a correctness property
@given(
    hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=1, max_dims=3, max_side=150),
        elements=st.floats(-4, 4, width=32),
    )
)
def test_round_trip(x: np.ndarray) -> None:
    words = pack_signs(x)
    assert words.dtype == np.uint64
    assert words.shape == (*x.shape[:-1], words_for(x.shape[-1]))
    np.testing.assert_array_equal(unpack_signs(words, x.shape[-1]), np.where(x < 0, -1, 1))


@pytest.mark.parametrize("index", [0, 1, 7, 8, 63, 64, 65, 127, 129])
def test_one_hot_pins_bit_order(index: int) -> None:
    x = np.ones(130, dtype=np.float32)
    x[index] = -1.0
    words = pack_signs(x)
    expected = np.zeros(3, dtype=np.uint64)
    expected[index // 64] = np.uint64(1) << np.uint64(index % 64)
    np.testing.assert_array_equal(words, expected)
    # little-endian words: the bit is in byte index // 8 of the buffer
    raw = np.frombuffer(words.tobytes(), dtype=np.uint8)
    assert raw[index // 8] == 1 << (index % 8)
    assert int(raw.sum()) == raw[index // 8]


def test_zero_and_nan_pack_as_plus_one_and_padding_is_clear() -> None:
    x = np.array([0.0, -0.0, np.nan, -1e-30, 5.0], dtype=np.float32)
    words = pack_signs(x)
    assert words.shape == (1,)
    assert int(words[0]) == 0b01000  # only -1e-30 is negative; bits 5..63 are padding


def test_threshold_per_element() -> None:
    x = np.array([[0.5, 0.5, -2.0]], dtype=np.float32)
    words = pack_signs(x, threshold=np.array([1.0, 0.0, -3.0], dtype=np.float32))
    assert int(words[0, 0]) == 0b001


def test_unpack_rejects_wrong_word_count() -> None:
    with pytest.raises(ValueError, match="need 2 words"):
        unpack_signs(np.zeros(1, dtype=np.uint64), 65)
