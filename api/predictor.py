"""Packed models loaded by ``runtime`` for predict: a bounded LRU cache and input checks."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

import runtime
from db.storage import StorageError


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: name, shape (``None`` = any batch size), dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str


def _spec(info: Any) -> TensorSpec:
    if isinstance(info, dict):
        name, shape, dtype = info["name"], info["shape"], info.get("dtype", "float32")
    else:
        name, shape = info.name, info.shape
        dtype = getattr(info, "dtype", "float32")
    dims = tuple(None if d is None or (isinstance(d, int) and d < 0) else int(d) for d in shape)
    return TensorSpec(str(name), dims, str(np.dtype(dtype)))


# A run expected to take less than this is made on the event loop's thread: handing it to
# a worker thread and back costs 0.2-0.3 ms of CPU on a 2-core VM, more than a small
# model's whole run (a digits MLP: 0.05 ms).
INLINE_RUN_S = 0.0005


class LoadedModel:
    """A packed model ready to run, with its input and output specs."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.inputs = [_spec(i) for i in model.inputs]
        self.outputs = [_spec(o) for o in model.outputs]
        # Seconds per batch row of recent runs (None until the first): decides inline runs.
        self.row_seconds: float | None = None

    @property
    def input(self) -> TensorSpec:
        """The model's (single) input."""
        return self.inputs[0]

    def check(
        self, x: np.ndarray, *, max_elements: int, max_batch: int | None = None
    ) -> np.ndarray:
        """``x`` as a contiguous float32 batch of the input's shape; ValueError otherwise.

        At most ``max_elements`` values in all and ``max_batch`` rows (the first axis).
        """
        spec = self.input
        if x.size > max_elements:
            raise ValueError(f"{x.size} values is more than the limit of {max_elements}")
        if max_batch is not None and x.ndim >= 1 and x.shape[0] > max_batch:
            raise ValueError(f"a batch of {x.shape[0]} is more than the limit of {max_batch}")
        if x.dtype.kind not in "fiub":
            raise ValueError(f"inputs must be numbers, got dtype {x.dtype}")
        if x.ndim != len(spec.shape):
            raise ValueError(
                f"input {spec.name!r} has shape {_fmt(spec.shape)}; got an array of {x.ndim} "
                f"dimensions {list(x.shape)}"
            )
        for axis, (want, got) in enumerate(zip(spec.shape, x.shape, strict=True)):
            if want is not None and want != got:
                raise ValueError(
                    f"input {spec.name!r} has shape {_fmt(spec.shape)}; got {list(x.shape)} "
                    f"(axis {axis})"
                )
        if x.shape[0] < 1:
            raise ValueError("the batch is empty")
        with np.errstate(over="ignore"):  # values past float32 become inf: refused below
            x = np.ascontiguousarray(x, dtype=np.float32)
        if not np.isfinite(x).all():
            raise ValueError("inputs must be finite numbers")
        return x

    async def run_async(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """:meth:`run` from a coroutine: on this thread when recent runs say it takes under
        :data:`INLINE_RUN_S`, else in the thread pool (the event loop keeps serving)."""
        rows = x.shape[0] if x.ndim else 1
        if self.row_seconds is not None and self.row_seconds * rows < INLINE_RUN_S:
            return self.run(x)
        return await run_in_threadpool(self.run, x)

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Run a checked batch; returns every output by name."""
        start = time.perf_counter()
        raw = self.model.run(x)  # runtime.Model is safe to share between threads
        per_row = (time.perf_counter() - start) / max(x.shape[0] if x.ndim else 1, 1)
        # A moving average, so one slow run (a cold cache, a busy machine) moves it little.
        last = self.row_seconds
        self.row_seconds = per_row if last is None else 0.8 * last + 0.2 * per_row
        if isinstance(raw, dict):
            return {str(k): np.asarray(v) for k, v in raw.items()}
        if isinstance(raw, list | tuple):
            return {spec.name: np.asarray(v) for spec, v in zip(self.outputs, raw, strict=True)}
        return {self.outputs[0].name: np.asarray(raw)}


def _fmt(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"


class ModelCache:
    """Loaded models by key (the artifact's sha256), least recently used evicted first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def peek(self, key: str) -> LoadedModel | None:
        """The model loaded under ``key`` (marked as recently used), or None."""
        with self._lock:
            loaded = self._items.get(key)
            if loaded is not None:
                self._items.move_to_end(key)
            return loaded

    def get(self, key: str, path: Path) -> LoadedModel:
        """The model stored at ``path`` under ``key`` (its sha256), loaded on first use.

        The bytes are read once, hashed and loaded from memory: a file that does not match
        its sha256 raises :class:`db.storage.StorageError` and is never loaded.
        """
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        data = path.read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        if actual != key:
            raise StorageError(f"{path.name} is corrupted (sha256 {actual} != {key})")
        loaded = LoadedModel(runtime.load(data))
        with self._lock:
            self._items[key] = loaded
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return loaded

    def __len__(self) -> int:
        return len(self._items)


_NUMBER_TYPES = frozenset({int, float})


def json_numbers_only(data: Any) -> bool:
    """Whether every leaf of nested JSON lists is a number: not a string that looks like
    one, not a boolean (which numpy would take as 1.0 and 0.0). Innermost lists are
    checked in C (``map(type, ...)``), so a million values take a few milliseconds."""
    stack = [data]
    while stack:
        item = stack.pop()
        if type(item) is not list:
            if type(item) not in _NUMBER_TYPES:
                return False
        elif item and type(item[0]) is list:
            stack.extend(item)
        elif not set(map(type, item)) <= _NUMBER_TYPES:
            return False
    return True
