"""The popcount kernel of every ISA against numpy, and the ISA override."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import runtime


def _reference(words: np.ndarray) -> int:
    return int(np.unpackbits(words.view(np.uint8)).sum())


@pytest.mark.parametrize("isa", runtime.supported_isas())
@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 64, 127, 1021])
def test_every_isa_matches_numpy_on_awkward_sizes(isa: str, n: int) -> None:
    rng = np.random.default_rng(n)
    words = rng.integers(0, np.iinfo(np.uint64).max, size=n, dtype=np.uint64, endpoint=True)
    assert runtime.popcount(words.tobytes(), isa=isa) == _reference(words)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=8 * 300).map(lambda b: b[: len(b) - len(b) % 8]))
def test_every_isa_equals_scalar(data: bytes) -> None:
    expected = runtime.popcount(data, isa="scalar")
    assert expected == _reference(np.frombuffer(data, dtype=np.uint64))
    for isa in runtime.supported_isas():
        assert runtime.popcount(data, isa=isa) == expected


def test_all_ones_and_single_bits() -> None:
    ones = np.full(13, np.iinfo(np.uint64).max, dtype=np.uint64)
    for isa in runtime.supported_isas():
        assert runtime.popcount(ones.tobytes(), isa=isa) == 13 * 64
        for bit in (0, 1, 63, 64, 127, 13 * 64 - 1):
            one_hot = np.zeros(13, dtype=np.uint64)
            one_hot[bit // 64] = np.uint64(1) << np.uint64(bit % 64)
            assert runtime.popcount(one_hot.tobytes(), isa=isa) == 1


def test_rejects_partial_words_and_unknown_isa() -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        runtime.popcount(b"\x01\x02\x03")
    with pytest.raises(ValueError, match="unknown ISA"):
        runtime.popcount(b"", isa="sse9")


def test_best_isa_is_in_use_by_default() -> None:
    if os.environ.get("BITFACTOR_ISA"):
        pytest.skip("BITFACTOR_ISA is set for this run")
    assert runtime.isa() == runtime.best_isa()
    assert runtime.supported_isas()[0] == "scalar"
    assert runtime.best_isa() in runtime.supported_isas()


def _isa_in_subprocess(value: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, BITFACTOR_ISA=value)
    return subprocess.run(
        [sys.executable, "-W", "always", "-c", "import runtime; print(runtime.isa())"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_env_override_forces_scalar() -> None:
    result = _isa_in_subprocess("scalar")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "scalar"


def test_env_override_rejects_unknown_name() -> None:
    result = _isa_in_subprocess("mmx")
    assert result.returncode != 0
    assert "BITFACTOR_ISA" in result.stderr


def test_env_override_to_unsupported_isa_warns_and_falls_back() -> None:
    missing = [i for i in ("neon", "avx2", "avx512") if i not in runtime.supported_isas()]
    result = _isa_in_subprocess(missing[0])  # no CPU has both neon and x86 ISAs
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == runtime.best_isa()
    assert "not supported" in result.stderr
