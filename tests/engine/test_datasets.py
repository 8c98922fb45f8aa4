"""load_npz: dtype decisions, validation messages naming expected vs got, no pickles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bitfactor.datasets import load_npz


def _npz(tmp_path: Path, **arrays: np.ndarray) -> Path:
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    return path


def test_float64_and_float16_are_cast_to_float32(tmp_path: Path) -> None:
    for dtype in (np.float64, np.float16):
        x, y = load_npz(_npz(tmp_path, x=np.ones((4, 3), dtype), y=np.arange(4, dtype=np.int32)))
        assert x.dtype == np.float32
        assert y is not None
        assert y.dtype == np.int64
        assert y.tolist() == [0, 1, 2, 3]


def test_labels_are_optional(tmp_path: Path) -> None:
    x, y = load_npz(_npz(tmp_path, x=np.zeros((2, 5), np.float32)))
    assert y is None
    assert x.shape == (2, 5)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((4, 3), np.uint8)}, "expected x as float32.*got uint8"),
        ({"x": np.zeros(4, np.float32)}, r"expected x of shape \(N, \.\.\.\)"),
        ({"x": np.array([[1.0, np.nan]], np.float32)}, "NaN"),
        ({"x": np.array([[1e300, 0.0]])}, "infinite"),
        (
            {"x": np.zeros((4, 3), np.float32), "y": np.zeros(3, np.int64)},
            r"expected y of shape \(4,\), got \(3,\)",
        ),
        ({"x": np.zeros((4, 3), np.float32), "y": np.zeros(4, np.float32)}, "expected y as int64"),
        ({"x": np.zeros((2, 3), np.float32), "y": np.array([0, -1])}, ">= 0"),
        ({"y": np.zeros(3, np.int64)}, "expected an array 'x'"),
    ],
)
def test_bad_arrays_are_refused(
    tmp_path: Path, arrays: dict[str, np.ndarray], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        load_npz(_npz(tmp_path, **arrays))


def test_input_shape_mismatch_names_expected_and_got(tmp_path: Path) -> None:
    path = _npz(tmp_path, x=np.zeros((5, 1, 8, 8), np.float32))
    with pytest.raises(
        ValueError, match=r"expected x of shape \(N, 3, 32, 32\).*got \(5, 1, 8, 8\)"
    ):
        load_npz(path, input_shape=(3, 32, 32))


def test_object_arrays_are_refused_without_unpickling(tmp_path: Path) -> None:
    path = tmp_path / "evil.npz"
    np.savez(path, x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(ValueError, match="pickle"):
        load_npz(path)


def test_size_limits(tmp_path: Path) -> None:
    path = _npz(tmp_path, x=np.zeros((100, 10), np.float32))
    with pytest.raises(ValueError, match="limit"):
        load_npz(path, max_bytes=1000)
    with pytest.raises(ValueError, match="limit"):
        load_npz(path, max_elements=999)


def test_not_an_npz(tmp_path: Path) -> None:
    path = tmp_path / "x.npz"
    path.write_bytes(b"just text")
    with pytest.raises(ValueError, match=r"expected an \.npz archive"):
        load_npz(path)
