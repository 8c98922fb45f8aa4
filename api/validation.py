"""Checks of untrusted uploads, run before anything is recorded.

Models are validated by ``python -m engine.inspect`` in a subprocess (the API process
never imports torch; a hostile file can at worst crash that subprocess). Datasets are
``.npz`` archives read with numpy alone, ``allow_pickle`` off, member sizes capped before
anything is decompressed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_DATASET_EXPANSION = 8  # decompressed size may be at most 8x the upload cap


class InvalidUpload(ValueError):
    """An upload that cannot be used, with a message for the user."""


@dataclass(frozen=True)
class ModelInfo:
    """What inspection learned of an uploaded model."""

    format: str
    input_shape: list[int | None] | None
    num_params: int | None
    num_outputs: int | None


def inspect_model(
    path: Path,
    *,
    arch: str | None,
    arch_kwargs: dict[str, Any] | None,
    timeout: float,
    module: str = "engine.inspect",
) -> ModelInfo:
    """Validate a model file by importing it in a fresh interpreter (``engine.inspect``)."""
    cmd = [sys.executable, "-m", module, str(path)]
    if arch:
        cmd += ["--arch", arch]
    if arch_kwargs:
        cmd += ["--arch-kwargs", json.dumps(arch_kwargs)]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise InvalidUpload(f"validating the model took longer than {timeout:.0f} s") from exc
    data: dict[str, Any] | None = None
    lines = [line for line in proc.stdout.strip().splitlines() if line.strip()]
    if lines:
        try:
            parsed = json.loads(lines[-1])
            data = parsed if isinstance(parsed, dict) else None
        except json.JSONDecodeError:
            data = None
    if data is not None and "error" in data:
        raise InvalidUpload(str(data["error"]))
    if proc.returncode != 0 or data is None:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        if "No module named" in tail:
            # An API without the engine extra (the torch-free image): check the format
            # here; the worker imports the model fully when the job runs.
            return _format_only(path, arch=arch)
        raise InvalidUpload(f"the model could not be imported ({tail})")
    shape = data.get("input_shape")
    return ModelInfo(
        format=str(data.get("format", "unknown")),
        input_shape=list(shape) if isinstance(shape, list) else None,
        num_params=int(data["num_params"]) if data.get("num_params") is not None else None,
        num_outputs=int(data["num_outputs"]) if data.get("num_outputs") is not None else None,
    )


def _format_only(path: Path, *, arch: str | None) -> ModelInfo:
    from bitfactor.modelformat import detect_format

    try:
        fmt = detect_format(path)
    except ValueError as exc:
        raise InvalidUpload(str(exc).replace(f"{path.name}: ", "")) from exc
    if fmt != "onnx" and not arch:
        raise InvalidUpload(f"a {fmt} state dict needs an architecture name (arch)")
    return ModelInfo(format=fmt, input_shape=None, num_params=None, num_outputs=None)


@dataclass(frozen=True)
class DatasetInfo:
    """What validation learned of an uploaded dataset."""

    n: int
    x_shape: list[int]
    has_labels: bool


def inspect_dataset(path: Path, *, max_bytes: int) -> DatasetInfo:
    """Validate an ``.npz`` with ``x`` (numbers, finite, batch first) and optional ``y``."""
    if not zipfile.is_zipfile(path):
        raise InvalidUpload("a dataset must be an .npz archive (numpy.savez)")
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename: info for info in archive.infolist()}
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidUpload(f"the archive is damaged: {exc}") from exc
    unknown = sorted(set(members) - {"x.npy", "y.npy"})
    if unknown:
        raise InvalidUpload(f"unexpected arrays {unknown}: only 'x' and 'y' are read")
    if "x.npy" not in members:
        raise InvalidUpload("the archive has no array 'x'")
    if sum(info.file_size for info in members.values()) > MAX_DATASET_EXPANSION * max_bytes:
        raise InvalidUpload("the arrays are too large once decompressed")
    if any(info.filename in {"x.npy", "y.npy"} and info.is_dir() for info in members.values()):
        raise InvalidUpload("the archive is damaged")
    from bitfactor.datasets import load_npz

    try:
        x, y = load_npz(path, max_bytes=MAX_DATASET_EXPANSION * max_bytes)
    except ValueError as exc:
        # The engine reads the dataset with the same function: what passes here loads there.
        raise InvalidUpload(str(exc).replace(f"{path.name}: ", "")) from exc
    return DatasetInfo(
        n=int(x.shape[0]), x_shape=[int(d) for d in x.shape], has_labels=y is not None
    )
