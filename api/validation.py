"""Checks of untrusted uploads, run before anything is recorded.

Models are checked in two steps. First :func:`bitfactor.modelformat.detect_format` judges
the format from the content and checks its structure here, torch-free (the same function
the engine runs before importing). Then ``python -m engine.inspect`` imports the model in
a subprocess under limits: address space (``RLIMIT_AS``), CPU time (``RLIMIT_CPU``), no
core files, and a wall-clock timeout. The API process never imports torch; a hostile file
can at worst exhaust that subprocess, and a failure there is final: nothing is retried
another way. Datasets are ``.npz`` archives read with numpy alone (``allow_pickle`` off,
headers and sizes checked before anything is decompressed).
"""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request

from api.errors import Problem
from bitfactor.modelformat import detect_format
from bitfactor.sandbox import OUT_OF_MEMORY, child_env, child_report, limited_command

MAX_DATASET_EXPANSION = 8  # decompressed size may be at most 8x the upload cap
MULTIPART = "multipart/form-data"


class InvalidUpload(ValueError):
    """An upload that cannot be used, with a message for the user."""


def require_multipart(request: Request) -> None:
    """Refuse (415) an upload whose body is declared as anything but ``multipart/form-data``.

    The content type of the file *part* is advisory (the format is judged from the bytes);
    the body itself must be a multipart form with a ``file`` part (a request without a
    body or without that part is left to the 422 of the missing field).
    """
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type and media_type != MULTIPART:
        raise Problem(
            "unsupported-media-type",
            f"uploads are {MULTIPART} bodies with a 'file' part, got {media_type!r}",
        )


@dataclass(frozen=True)
class ModelInfo:
    """What inspection learned of an uploaded model."""

    format: str
    input_shape: list[int | None] | None
    num_params: int | None
    num_outputs: int | None


def _checked_format(path: Path) -> str:
    try:
        return detect_format(path)
    except ValueError as exc:
        raise InvalidUpload(str(exc).replace(f"{path.name}: ", "")) from exc


def _engine_available(module: str) -> bool:
    """Whether this install can import models (the torch-free API image cannot)."""
    try:
        return (
            importlib.util.find_spec("torch") is not None
            and importlib.util.find_spec(module) is not None
        )
    except (ImportError, ValueError):
        return False


def inspect_model(
    path: Path,
    *,
    arch: str | None,
    arch_kwargs: dict[str, Any] | None,
    timeout: float,
    max_memory_bytes: int = 0,
    max_cpu_seconds: int = 0,
    module: str = "engine.inspect",
) -> ModelInfo:
    """Check a model file here, then import it in a limited subprocess (``engine.inspect``).

    ``max_memory_bytes`` and ``max_cpu_seconds`` (0: no limit) bound the subprocess, and
    ``timeout`` its wall time. Without the engine installed, the checks done here decide.
    """
    fmt = _checked_format(path)
    if fmt != "onnx" and not arch:
        raise InvalidUpload(f"a {fmt} state dict needs an architecture name (arch)")
    if not _engine_available(module):
        # The torch-free image: the worker imports the model fully when a job runs.
        return ModelInfo(format=fmt, input_shape=None, num_params=None, num_outputs=None)
    args = [str(path)]
    if arch:
        args += ["--arch", arch]
    if arch_kwargs:
        args += ["--arch-kwargs", json.dumps(arch_kwargs)]
    cmd = limited_command(
        module, args, max_memory_bytes=max_memory_bytes, max_cpu_seconds=max_cpu_seconds
    )
    env = child_env()
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise InvalidUpload(
            f"validating the model took longer than the time limit of {timeout:.0f} s"
        ) from exc
    data = child_report(proc.stdout)
    memory = f"the memory limit of {max_memory_bytes // 2**20} MiB"
    if data is not None and data.get("limit") == "memory":
        raise InvalidUpload(f"the model exceeded {memory} while loading")
    if data is not None and "error" in data:
        raise InvalidUpload(str(data["error"]))
    if proc.returncode != 0 or data is None:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        if proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL) and max_cpu_seconds:
            raise InvalidUpload(
                f"the model exceeded the CPU time limit of {max_cpu_seconds} s while loading"
            )
        if any(word in proc.stderr for word in OUT_OF_MEMORY) and max_memory_bytes:
            raise InvalidUpload(f"the model exceeded {memory} while loading")
        if proc.returncode < 0:
            raise InvalidUpload(
                f"the model could not be imported: the importer was killed by signal "
                f"{-proc.returncode}"
            )
        raise InvalidUpload(f"the model could not be imported ({tail[:300]})")
    shape = data.get("input_shape")
    return ModelInfo(
        format=str(data.get("format", "unknown")),
        input_shape=list(shape) if isinstance(shape, list) else None,
        num_params=int(data["num_params"]) if data.get("num_params") is not None else None,
        num_outputs=int(data["num_outputs"]) if data.get("num_outputs") is not None else None,
    )


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
    except (zipfile.BadZipFile, OSError, NotImplementedError, ValueError) as exc:
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
