"""Load a training/evaluation set from an ``.npz`` file safely; torch-free.

The file holds ``x`` (N x input shape) and optionally ``y`` (N integer labels). Decisions:

- ``x`` must be floating point. float32 is used as is; float16 and float64 are cast to
  float32 (values are checked finite after the cast, so float64 values beyond float32's
  range are refused). Integer ``x`` (e.g. uint8 images) is refused: the scaling a model
  expects is not ours to guess.
- ``y`` must be an integer array of shape ``(N,)`` with non-negative values; it is cast to
  int64. Other keys are ignored.
- Never ``allow_pickle``. Before any array is decompressed, the archive's directory and
  each ``.npy`` header are checked: at most :data:`MAX_MEMBERS` members, no duplicate
  names, only stored/deflated members, a compression ratio of at most
  :data:`MAX_COMPRESSION_RATIO`, ``max_bytes`` for the file, each member and all members
  together, no object dtype, at most :data:`MAX_NDIM` dimensions, and the declared shape
  times the item size equal to the member's size. ``max_elements`` caps ``x``.
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

DEFAULT_MAX_BYTES = 2 * 1024**3
DEFAULT_MAX_ELEMENTS = 500_000_000
MAX_MEMBERS = 16
MAX_NDIM = 8
MAX_COMPRESSION_RATIO = 100  # for members past RATIO_FLOOR bytes
RATIO_FLOOR = 1024 * 1024
# What reading a damaged zip raises: a bad directory, deflate stream, version or encryption.
_ZIP_READ_ERRORS = (
    zipfile.BadZipFile,
    OSError,
    EOFError,
    zlib.error,
    NotImplementedError,
    RuntimeError,
)


def _check_member(p: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    """The member's ``.npy`` header: version, dtype and shape against its byte size."""
    key = info.filename.removesuffix(".npy")
    with archive.open(info) as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy version {version}")
            header = f.tell()
        except (ValueError, *_ZIP_READ_ERRORS) as exc:
            raise ValueError(f"{p.name}: array {key!r} has a damaged .npy header ({exc})") from None
    if dtype.hasobject:
        raise ValueError(
            f"{p.name}: holds object arrays (pickles), which are refused; expected numeric arrays"
        )
    if len(shape) > MAX_NDIM:
        raise ValueError(f"{p.name}: {key} has {len(shape)} dimensions, more than {MAX_NDIM}")
    needed = math.prod(shape) * dtype.itemsize
    if header + needed != info.file_size:
        raise ValueError(
            f"{p.name}: {key} declares shape {tuple(shape)} of {dtype} ({needed} bytes) but "
            f"the member holds {info.file_size - header} bytes of data"
        )


def _check_archive(p: Path, max_bytes: int) -> None:
    try:
        with zipfile.ZipFile(p) as archive:
            infos = archive.infolist()
            if len(infos) > MAX_MEMBERS:
                raise ValueError(f"{p.name}: {len(infos)} members, more than {MAX_MEMBERS}")
            names = [info.filename for info in infos]
            if len(set(names)) != len(names):
                raise ValueError(f"{p.name}: a member name appears twice")
            for info in infos:
                if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    raise ValueError(
                        f"{p.name}: member {info.filename} uses compression method "
                        f"{info.compress_type} (only stored and deflated are read)"
                    )
                if info.file_size > max_bytes:
                    raise ValueError(
                        f"{p.name}: member {info.filename} unpacks to {info.file_size} bytes, "
                        f"more than the limit of {max_bytes}"
                    )
                ratio = info.file_size / max(info.compress_size, 1)
                if info.file_size > RATIO_FLOOR and ratio > MAX_COMPRESSION_RATIO:
                    raise ValueError(
                        f"{p.name}: member {info.filename} has a compression ratio of "
                        f"{ratio:.0f} (limit {MAX_COMPRESSION_RATIO}): a zip bomb"
                    )
            if sum(info.file_size for info in infos) > max_bytes:
                raise ValueError(
                    f"{p.name}: the members unpack to more than the limit of {max_bytes} bytes"
                )
            for info in infos:
                if info.filename in ("x.npy", "y.npy"):
                    _check_member(p, archive, info)
    except _ZIP_READ_ERRORS as exc:
        raise ValueError(f"{p.name}: not a readable .npz archive ({exc})") from None


def load_npz(
    path: str | os.PathLike[str],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    input_shape: tuple[int, ...] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(x, y)`` from an ``.npz`` file; ``y`` is None when the file has no labels.

    ``input_shape`` (without the batch), when given, must equal ``x.shape[1:]``.
    Raises ValueError naming what was expected and what was found.
    """
    p = Path(path)
    size = p.stat().st_size
    if size > max_bytes:
        raise ValueError(f"{p.name}: {size} bytes, more than the limit of {max_bytes}")
    if not zipfile.is_zipfile(p):
        raise ValueError(f"{p.name}: expected an .npz archive (numpy.savez), got another file")
    _check_archive(p, max_bytes)
    try:
        with np.load(p, allow_pickle=False) as npz:
            keys = set(npz.files)
            if "x" not in keys:
                raise ValueError(f"{p.name}: expected an array 'x', got keys {sorted(keys)}")
            x = npz["x"]
            y = npz["y"] if "y" in keys else None
    except _ZIP_READ_ERRORS as exc:
        raise ValueError(f"{p.name}: not a readable .npz archive ({exc})") from None
    except MemoryError:
        raise ValueError(f"{p.name}: the arrays do not fit in memory") from None
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise ValueError(
                f"{p.name}: holds object arrays (pickles), which are refused; "
                "expected numeric arrays"
            ) from None
        raise
    if x.size > max_elements:
        raise ValueError(f"{p.name}: x has {x.size} elements, more than the limit {max_elements}")
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"{p.name}: expected x of shape (N, ...) with N >= 1, got {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{p.name}: expected x as float32 (or float16/float64), got {x.dtype}")
    with np.errstate(over="ignore"):  # out-of-range float64 becomes inf, refused below
        x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"{p.name}: x holds NaN or infinite values (after casting to float32)")
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
        raise ValueError(
            f"{p.name}: expected x of shape (N, {', '.join(map(str, input_shape))}) for this "
            f"model, got {x.shape}"
        )
    if y is not None:
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{p.name}: expected y as int64 labels, got dtype {y.dtype}")
        if y.shape != (x.shape[0],):
            raise ValueError(f"{p.name}: expected y of shape ({x.shape[0]},), got {y.shape}")
        if y.size and int(y.min()) < 0:
            raise ValueError(f"{p.name}: labels must be >= 0, got {int(y.min())}")
        y = y.astype(np.int64)
    return x, y
