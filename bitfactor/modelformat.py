"""Tell an uploaded model's format from its bytes (never from its name) and check it; torch-free.

:func:`detect_format` recognizes three formats and checks each one's structure before any
loader (torch, onnx, safetensors) sees the file. The API runs it in its own process (the
torch-free image too) and the engine runs it again before importing, so both sides apply
the same checks.

- ``safetensors``: an 8-byte little-endian header length, then a JSON header. Checked:
  header size, known dtypes, ``prod(shape) * itemsize == end - begin``, offsets contiguous
  from 0 to the end of the file (no gap, no overlap), and every float tensor finite.
- ``pt``: a zip archive as ``torch.save`` writes it (``<name>/data.pkl``), loaded later only
  with ``torch.load(weights_only=True)``. Checked from the zip's directory before anything
  is decompressed: entry count, names (no absolute path, no ``..``, no duplicate), declared
  sizes, compression method and ratio; then every entry's CRC, and ``data.pkl`` is scanned
  (never unpickled) for the globals it would import: only the handful a state dict needs
  are allowed. TorchScript and ``torch.export`` archives (zips with code) and bare pickles
  are refused: their loaders can run code.
- ``onnx``: a serialized ``ModelProto``, walked as raw protobuf: every tensor (initializers,
  sparse initializers, ``Constant`` attributes, subgraphs, functions) must hold its data
  inline (``data_location`` EXTERNAL or ``external_data`` entries are refused: no path in
  a model is ever followed), with a byte length that matches its declared shape, finite
  floats, and the limits on node count, tensor elements, nesting and opset below.
"""

from __future__ import annotations

import json
import math
import os
import pickletools
import re
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

ModelFormat = Literal["onnx", "safetensors", "pt"]

# Limits (docs/security.md lists them). Generous for real classifiers, small enough that
# checking a hostile file stays cheap.
SAFETENSORS_MAX_HEADER_BYTES = 16 * 1024 * 1024
MAX_TENSORS = 100_000  # tensors in one safetensors file / initializers in one ONNX model
MAX_RANK = 8
MAX_ELEMENTS = 1 << 30  # all tensors of one model together
ZIP_MAX_ENTRIES = 10_000
ZIP_MAX_UNPACKED_BYTES = 4 * 1024**3  # sum of the entries' declared sizes
ZIP_MAX_RATIO = 100  # declared size / compressed size, for entries past ZIP_RATIO_FLOOR
ZIP_RATIO_FLOOR = 1024 * 1024
PICKLE_MAX_BYTES = 64 * 1024 * 1024
ONNX_MAX_NODES = 20_000
ONNX_MAX_DEPTH = 8  # nesting of subgraphs (If/Loop bodies, functions)
ONNX_OPSETS = (7, 23)  # default-domain opsets accepted (torch exporters write 9..23)

# ``(module, name)`` a weights-only state dict pickle may import; anything else is refused
# before torch is asked (``torch.load(weights_only=True)`` then applies its own list).
_STORAGE_KINDS = [
    "Float",
    "Double",
    "Half",
    "BFloat16",
    "Long",
    "Int",
    "Short",
    "Char",
    "Byte",
    "Bool",
    "Untyped",
]
_DTYPES = "float32 float float16 half bfloat16 float64 double int64 long int32 int int16 short"
_PICKLE_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor_v3"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    *(("torch", f"{kind}Storage") for kind in _STORAGE_KINDS),
    *(("torch", dtype) for dtype in (*_DTYPES.split(), "int8", "uint8", "bool")),
}
_PICKLE_STRING_OPS = {
    "SHORT_BINUNICODE",
    "BINUNICODE",
    "BINUNICODE8",
    "UNICODE",
    "SHORT_BINSTRING",
    "BINSTRING",
    "STRING",
}
_PICKLE_NON_PUSHING = {"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE", "FRAME", "PROTO"}

# safetensors dtype -> bytes per element.
_ST_ITEMSIZE = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
# ONNX TensorProto.DataType -> bits per element (packed raw_data); others are refused.
_ONNX_BITS = {
    1: 32,  # FLOAT
    2: 8,  # UINT8
    3: 8,  # INT8
    4: 16,  # UINT16
    5: 16,  # INT16
    6: 32,  # INT32
    7: 64,  # INT64
    9: 8,  # BOOL
    10: 16,  # FLOAT16
    11: 64,  # DOUBLE
    12: 32,  # UINT32
    13: 64,  # UINT64
    14: 64,  # COMPLEX64
    15: 128,  # COMPLEX128
    16: 16,  # BFLOAT16
    17: 8,  # FLOAT8E4M3FN
    18: 8,  # FLOAT8E4M3FNUZ
    19: 8,  # FLOAT8E5M2
    20: 8,  # FLOAT8E5M2FNUZ
    21: 4,  # UINT4
    22: 4,  # INT4
    23: 4,  # FLOAT4E2M1
    24: 8,  # FLOAT8E8M0
}
_ONNX_STRING = 8
# TensorProto field numbers and the wire types they may use (packed or not).
_TENSOR_WIRES = {
    1: {0, 2},
    2: {0},
    3: {2},
    4: {5, 2},
    5: {0, 2},
    6: {2},
    7: {0, 2},
    8: {2},
    9: {2},
    10: {1, 2},
    11: {0, 2},
    13: {2},
    14: {0},
}
# ModelProto field numbers and their protobuf wire types (0 varint, 2 length-delimited).
_ONNX_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2}


# What reading a damaged zip raises: a bad directory, deflate stream, version or encryption.
_ZIP_READ_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    EOFError,
    OSError,
    zlib.error,
    NotImplementedError,
    RuntimeError,
)


class ModelFileError(ValueError):
    """The file is not an acceptable model; the message names the file and the problem."""


# ---------------------------------------------------------------------------- safetensors


def _looks_like_safetensors(head: bytes) -> bool:
    # A header length below 4 GiB (high bytes zero) followed by a JSON object.
    return len(head) >= 9 and head[4:8] == b"\0\0\0\0" and head[8:9] == b"{"


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"the header names {dup!r} twice")
    return dict(pairs)


def _finite_problem(raw: memoryview | bytes, kind: str) -> bool:
    """True when the little-endian floats in ``raw`` (of ``kind``) hold a NaN or an Inf."""
    if kind in ("F32", "F64", "F16"):
        dtype = {"F32": "<f4", "F64": "<f8", "F16": "<f2"}[kind]
        return not bool(np.isfinite(np.frombuffer(raw, dtype=dtype)).all())
    if kind == "BF16":  # exponent bits all ones
        bits = np.frombuffer(raw, dtype="<u2")
        return bool(((bits & 0x7F80) == 0x7F80).any())
    return False


def _check_safetensors(p: Path, data: bytes) -> None:
    size = len(data)
    n = int.from_bytes(data[:8], "little")
    if n > SAFETENSORS_MAX_HEADER_BYTES:
        raise ModelFileError(
            f"{p.name}: safetensors header of {n} bytes, more than the limit of "
            f"{SAFETENSORS_MAX_HEADER_BYTES}"
        )
    if 8 + n > size:
        raise ModelFileError(
            f"{p.name}: safetensors header length {n} runs past the end of the file "
            f"({size} bytes): truncated or damaged"
        )
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ModelFileError(f"{p.name}: safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{p.name}: safetensors header is not a JSON object")
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ModelFileError(f"{p.name}: safetensors __metadata__ must map strings to strings")
    if len(header) > MAX_TENSORS:
        raise ModelFileError(f"{p.name}: {len(header)} tensors, more than {MAX_TENSORS}")
    data_len = size - 8 - n
    spans: list[tuple[int, int, str]] = []
    total = 0
    for name, entry in header.items():
        where = f"{p.name}: tensor {name!r}"
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise ModelFileError(f"{where}: expected dtype, shape and data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in _ST_ITEMSIZE:
            raise ModelFileError(f"{where}: unknown dtype {dtype!r}")
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_RANK
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        ):
            raise ModelFileError(
                f"{where}: shape must be a list of at most {MAX_RANK} non-negative integers, "
                f"got {str(shape)[:80]}"
            )
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise ModelFileError(f"{where}: data_offsets must be [begin, end], got {offsets}")
        numel = math.prod(shape)
        total += numel
        if numel * _ST_ITEMSIZE[dtype] != offsets[1] - offsets[0]:
            raise ModelFileError(
                f"{where}: declared shape {shape} of {dtype} needs "
                f"{numel * _ST_ITEMSIZE[dtype]} bytes but its data_offsets span "
                f"{offsets[1] - offsets[0]}"
            )
        spans.append((offsets[0], offsets[1], name))
    if total > MAX_ELEMENTS:
        raise ModelFileError(f"{p.name}: {total} elements in all, more than {MAX_ELEMENTS}")
    spans.sort()
    end = 0
    for begin, stop, name in spans:
        if begin != end:
            what = "overlaps the previous one" if begin < end else "leaves a gap before it"
            raise ModelFileError(f"{p.name}: tensor {name!r}'s data_offsets {what}")
        end = stop
    if end != data_len:
        raise ModelFileError(
            f"{p.name}: the tensors' data ends at byte {end} of a {data_len}-byte data "
            f"section: {'truncated' if end > data_len else 'trailing bytes'}"
        )
    body = memoryview(data)[8 + n :]
    for begin, stop, name in spans:
        dtype = header[name]["dtype"]
        if _finite_problem(body[begin:stop], dtype):
            raise ModelFileError(f"{p.name}: tensor {name!r} holds NaN or infinite values")


# ------------------------------------------------------------------------------------- pt


def _zip_kind(names: list[str]) -> str:
    if any("/code/" in n or n.endswith("constants.pkl") for n in names):
        return "torchscript"
    if any(
        n.endswith(("/archive_format", "/models/model.json", "serialized_exported_program.json"))
        for n in names
    ):
        return "export"
    if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
        return "pt"
    return "other"


def _check_zip_directory(p: Path, infos: list[zipfile.ZipInfo]) -> None:
    if len(infos) > ZIP_MAX_ENTRIES:
        raise ModelFileError(
            f"{p.name}: zip archive with {len(infos)} entries, more than {ZIP_MAX_ENTRIES}"
        )
    seen: set[str] = set()
    total = 0
    for info in infos:
        name = info.filename
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
            raise ModelFileError(f"{p.name}: zip entry name {name!r} escapes the archive")
        if name in seen:
            raise ModelFileError(f"{p.name}: zip entry {name!r} appears twice")
        seen.add(name)
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ModelFileError(
                f"{p.name}: zip entry {name!r} uses compression method {info.compress_type} "
                "(only stored and deflated are read)"
            )
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            raise ModelFileError(
                f"{p.name}: zip entry {name!r} declares {info.file_size} bytes but stores "
                f"{info.compress_size}"
            )
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > ZIP_RATIO_FLOOR and ratio > ZIP_MAX_RATIO:
            raise ModelFileError(
                f"{p.name}: zip entry {name!r} has a compression ratio of {ratio:.0f} "
                f"(limit {ZIP_MAX_RATIO}): a zip bomb"
            )
        total += info.file_size
    if total > ZIP_MAX_UNPACKED_BYTES:
        raise ModelFileError(
            f"{p.name}: zip entries declare {total} bytes in all, more than the limit of "
            f"{ZIP_MAX_UNPACKED_BYTES}"
        )


def pickle_globals(data: bytes) -> Iterator[tuple[str, str]]:
    """The ``(module, name)`` pairs a pickle would import, read with ``pickletools`` only.

    Raises ValueError for a malformed pickle, opcodes that import through the copyreg
    extension registry, and ``STACK_GLOBAL`` whose operands are not two plain strings.
    """
    recent: list[Any] = []  # the last values pushed (strings, else None)
    memo: dict[int, Any] = {}
    for op, arg, _ in pickletools.genops(data):
        name = op.name
        index = arg if isinstance(arg, int) else -1
        if name in {"GLOBAL", "INST"}:
            module, _, qual = str(arg).partition(" ")
            yield module, qual
            recent.append(None)
        elif name == "STACK_GLOBAL":
            if len(recent) < 2 or not all(isinstance(v, str) for v in recent[-2:]):
                raise ValueError("a STACK_GLOBAL whose module and name cannot be read")
            yield recent[-2], recent[-1]
            recent.append(None)
        elif name in {"EXT1", "EXT2", "EXT4", "OBJ"}:
            raise ValueError(f"opcode {name} (imports objects indirectly)")
        elif name in _PICKLE_STRING_OPS:
            recent.append(arg.decode("latin-1") if isinstance(arg, bytes) else arg)
        elif name in {"PUT", "BINPUT", "LONG_BINPUT"}:
            memo[index] = recent[-1] if recent else None
        elif name == "MEMOIZE":
            memo[len(memo)] = recent[-1] if recent else None
        elif name in {"GET", "BINGET", "LONG_BINGET"}:
            recent.append(memo.get(index))
        elif name not in _PICKLE_NON_PUSHING:
            recent.append(None)
        del recent[:-2]


def _check_pt(p: Path) -> ModelFormat:
    try:
        with zipfile.ZipFile(p) as archive:
            infos = archive.infolist()
            names = [i.filename for i in infos]
            kind = _zip_kind(names)
            if kind in ("torchscript", "export"):
                what = "TorchScript" if kind == "torchscript" else "torch.export"
                raise ModelFileError(
                    f"{p.name}: a {what} archive (its loader can run code); upload a state "
                    "dict (safetensors or torch.save(model.state_dict())) or an ONNX file"
                )
            if kind != "pt":
                raise ModelFileError(f"{p.name}: a zip archive that is not a torch.save state dict")
            _check_zip_directory(p, infos)
            prefixes = {n.split("/", 1)[0] for n in names}
            pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(prefixes) != 1 or len(pkl) != 1:
                raise ModelFileError(
                    f"{p.name}: expected one folder with one data.pkl, as torch.save writes"
                )
            info = archive.getinfo(pkl[0])
            if info.file_size > PICKLE_MAX_BYTES:
                raise ModelFileError(
                    f"{p.name}: data.pkl is {info.file_size} bytes, more than {PICKLE_MAX_BYTES}"
                )
            bad = archive.testzip()  # CRC of every entry, streamed
            if bad is not None:
                raise ModelFileError(f"{p.name}: zip entry {bad!r} is damaged (CRC mismatch)")
            data = archive.read(info)
    except (*_ZIP_READ_ERRORS, ValueError) as exc:
        if isinstance(exc, ModelFileError):
            raise
        raise ModelFileError(f"{p.name}: a damaged or truncated zip archive ({exc})") from None
    try:
        for module, qual in pickle_globals(data):
            if (module, qual) not in _PICKLE_GLOBALS:
                raise ModelFileError(
                    f"{p.name}: data.pkl imports {module}.{qual}, which a weights-only state "
                    "dict never needs (a pickled module or code); save "
                    "model.state_dict() instead"
                )
    except ModelFileError:
        raise
    except Exception as exc:  # pickletools raises ValueError and friends on bad bytes
        raise ModelFileError(f"{p.name}: data.pkl is not a valid pickle ({exc})") from None
    return "pt"


# ----------------------------------------------------------------------------------- onnx


class _Truncated(ValueError):
    pass


def _read_varint(data: bytes | memoryview, pos: int, end: int | None = None) -> tuple[int, int]:
    end = len(data) if end is None else end
    value = 0
    for shift in range(0, 70, 7):
        if pos >= end:
            raise _Truncated("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
    raise ValueError("varint too long")


def _fields(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, Any]]:
    """``(field, wire type, value)`` of one message; value is an int or a ``(begin, end)``."""
    pos = start
    while pos < end:
        key, pos = _read_varint(data, pos, end)
        number, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, pos = _read_varint(data, pos, end)
        elif wire == 2:
            length, pos = _read_varint(data, pos, end)
            value = (pos, pos + length)
            pos += length
        elif wire == 1:
            value = (pos, pos + 8)
            pos += 8
        elif wire == 5:
            value = (pos, pos + 4)
            pos += 4
        else:
            raise ValueError(f"wire type {wire} (groups) is not used by ONNX")
        if pos > end:
            raise _Truncated("a field runs past the end of its message")
        yield number, wire, value


@dataclass
class _OnnxScan:
    data: bytes
    name: str
    nodes: int = 0
    tensors: int = 0
    elements: int = 0
    opsets: dict[str, int] = field(default_factory=dict)

    def fail(self, why: str) -> ModelFileError:
        return ModelFileError(f"{self.name}: {why}")

    def text(self, span: tuple[int, int]) -> str:
        return bytes(self.data[span[0] : span[1]]).decode("utf-8", "replace")

    def graph(self, span: tuple[int, int], depth: int) -> None:
        if depth > ONNX_MAX_DEPTH:
            raise self.fail(f"subgraphs nested more than {ONNX_MAX_DEPTH} deep")
        for number, wire, value in _fields(self.data, *span):
            if wire != 2:
                continue
            if number == 1:
                self.node(value, depth)
            elif number == 5:
                self.tensor(value, "initializer")
            elif number == 15:
                self.sparse(value)

    def node(self, span: tuple[int, int], depth: int) -> None:
        self.nodes += 1
        if self.nodes > ONNX_MAX_NODES:
            raise self.fail(f"more than {ONNX_MAX_NODES} nodes")
        for number, wire, value in _fields(self.data, *span):
            if number == 5 and wire == 2:
                self.attribute(value, depth)

    def attribute(self, span: tuple[int, int], depth: int) -> None:
        for number, wire, value in _fields(self.data, *span):
            if wire != 2:
                continue
            if number in (5, 10):
                self.tensor(value, "constant")
            elif number in (6, 11):
                self.graph(value, depth + 1)
            elif number in (22, 23):
                self.sparse(value)

    def sparse(self, span: tuple[int, int]) -> None:
        for number, wire, value in _fields(self.data, *span):
            if number in (1, 2) and wire == 2:
                self.tensor(value, "sparse tensor part")

    def function(self, span: tuple[int, int], depth: int) -> None:
        for number, wire, value in _fields(self.data, *span):
            if wire != 2:
                continue
            if number == 7:
                self.node(value, depth + 1)
            elif number == 11:
                self.attribute(value, depth + 1)

    def tensor(self, span: tuple[int, int], role: str) -> None:
        self.tensors += 1
        if self.tensors > MAX_TENSORS:
            raise self.fail(f"more than {MAX_TENSORS} tensors")
        dims: list[int] = []
        data_type = 0
        name = ""
        raw: tuple[int, int] | None = None
        counts = 0
        floats: list[tuple[int, int, str]] = []  # spans of float32/float64 values
        for number, wire, value in _fields(self.data, *span):
            if number in _TENSOR_WIRES and wire not in _TENSOR_WIRES[number]:
                raise ValueError(f"TensorProto field {number} has wire type {wire}")
            if number == 1:  # dims: packed or one varint each
                if wire == 2:
                    pos = value[0]
                    while pos < value[1]:
                        d, pos = _read_varint(self.data, pos, value[1])
                        dims.append(d)
                else:
                    dims.append(value)
            elif number == 2 and wire == 0:
                data_type = value
            elif number == 8 and wire == 2:
                name = self.text(value)
            elif number == 3:
                raise self.fail(f"{role} {name or '?'!r} is segmented (not supported)")
            elif number == 9 and wire == 2:
                raw = value
            elif number == 13:
                raise self.fail(self._external(role, name, value))
            elif number == 14 and wire == 0 and value == 1:
                raise self.fail(self._external(role, name, None))
            elif number in (4, 10):  # float_data, double_data (fixed width)
                width = 4 if number == 4 else 8
                if wire == 2:
                    counts += (value[1] - value[0]) // width
                else:
                    counts += 1
                floats.append((value[0], value[1], "<f4" if width == 4 else "<f8"))
            elif number in (5, 7, 11):  # int32_data, int64_data, uint64_data (varints)
                if wire == 2:
                    chunk = np.frombuffer(self.data, np.uint8, value[1] - value[0], value[0])
                    counts += int(np.count_nonzero(chunk < 0x80))
                else:
                    counts += 1
            elif number == 6:  # string_data
                counts += 1
        label = f"{role} {name or '?'!r}"
        dims = [d - (1 << 64) if d >= 1 << 63 else d for d in dims]  # int64 two's complement
        if len(dims) > MAX_RANK or any(d < 0 for d in dims):
            raise self.fail(f"{label} has an invalid shape {dims[:10]}")
        numel = math.prod(dims)
        self.elements += numel
        if self.elements > MAX_ELEMENTS:
            raise self.fail(f"tensors hold more than {MAX_ELEMENTS} elements in all")
        if data_type == _ONNX_STRING:
            found = counts
            expected = numel
        elif data_type in _ONNX_BITS:
            bits = _ONNX_BITS[data_type]
            if raw is not None:
                found = raw[1] - raw[0]
                expected = (numel * bits + 7) // 8
            else:
                found = counts
                expected = numel * (2 if data_type in (14, 15) else 1)
                if bits < 8:  # two 4-bit values per stored value
                    expected = (numel + 1) // 2
        else:
            raise self.fail(f"{label} has an unsupported data type {data_type}")
        if found != expected:
            unit = "bytes" if raw is not None else "values"
            raise self.fail(
                f"{label} declares shape {dims} but holds {found} {unit} (expected {expected})"
            )
        self._finite(label, data_type, raw, floats)

    def _finite(
        self,
        label: str,
        data_type: int,
        raw: tuple[int, int] | None,
        floats: list[tuple[int, int, str]],
    ) -> None:
        kinds = {1: "F32", 11: "F64", 10: "F16", 16: "BF16"}
        bad = False
        view = memoryview(self.data)
        if raw is not None and data_type in kinds:
            bad = _finite_problem(view[raw[0] : raw[1]], kinds[data_type])
        for begin, end, dtype in floats:
            bad = bad or not bool(np.isfinite(np.frombuffer(view[begin:end], dtype)).all())
        if bad:
            raise self.fail(f"{label} holds NaN or infinite values")

    def _external(self, role: str, name: str, entry: tuple[int, int] | int | None) -> str:
        where = ""
        if isinstance(entry, tuple):
            pairs = dict.fromkeys(("key", "value"), "")
            for number, wire, value in _fields(self.data, *entry):
                if wire == 2 and number in (1, 2):
                    pairs["key" if number == 1 else "value"] = self.text(value)
            if pairs["key"] == "location":
                where = f" at {pairs['value'][:200]!r}"
        return (
            f"{role} {name or '?'!r} refers to external data{where}; external data is refused "
            "(no file path in a model is followed): upload one self-contained ONNX file"
        )

    def model(self) -> None:
        graphs = 0
        for number, wire, value in _fields(self.data, 0, len(self.data)):
            if number in _ONNX_FIELDS and _ONNX_FIELDS[number] != wire:
                raise ValueError(f"field {number} has wire type {wire}")
            if number == 7:
                graphs += 1
                self.graph(value, 0)
            elif number == 8:
                domain, version = "", 0
                for n2, w2, v2 in _fields(self.data, *value):
                    if n2 == 1 and w2 == 2:
                        domain = self.text(v2)
                    elif n2 == 2 and w2 == 0:
                        version = v2
                self.opsets[domain] = version
            elif number == 20:
                for n2, w2, v2 in _fields(self.data, *value):
                    if n2 in (1, 2) and w2 == 2:
                        self.graph(v2, 1)
            elif number == 25:
                self.function(value, 0)
        if graphs != 1:
            raise self.fail(f"expected one graph, found {graphs}")
        version = self.opsets.get("", self.opsets.get("ai.onnx", -1))
        if version < 0:
            raise self.fail("the model declares no opset for the default ONNX domain")
        lo, hi = ONNX_OPSETS
        if not lo <= version <= hi:
            raise self.fail(f"opset {version} is outside the supported range {lo}..{hi}")


def _onnx_top_level(data: bytes) -> str | None:
    """None when the top-level fields parse as a ModelProto, else why not."""
    seen: set[int] = set()
    try:
        for number, wire, _ in _fields(data, 0, len(data)):
            if number in _ONNX_FIELDS and _ONNX_FIELDS[number] != wire:
                return "mismatch"
            seen.add(number)
    except _Truncated:
        return "truncated"
    except ValueError:
        return "mismatch"
    return None if {1, 7} <= seen else "mismatch"


def _check_onnx(p: Path, data: bytes) -> None:
    scan = _OnnxScan(data, p.name)
    try:
        scan.model()
    except ModelFileError:
        raise
    except ValueError as exc:  # _Truncated included: a nested field ran past its end
        raise ModelFileError(f"{p.name}: a damaged or truncated ONNX file ({exc})") from None


# ---------------------------------------------------------------------------------- entry


def detect_format(path: str | os.PathLike[str]) -> ModelFormat:
    """The format of the model file at ``path``, judged from its content and checked.

    Raises :class:`ModelFileError` (a ValueError), with the file name and what is wrong,
    for anything that is not a self-contained ONNX model, a safetensors file or a
    ``torch.save`` state dict archive, or that breaks a check or limit of this module.
    """
    p = Path(path)
    size = p.stat().st_size
    if size == 0:
        raise ModelFileError(f"{p.name}: the file is empty")
    with open(p, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":
        return _check_pt(p)
    if head[:1] == b"\x80":
        raise ModelFileError(
            f"{p.name}: a bare pickle (legacy torch.save); pickles can run code and are "
            "refused: re-save with torch.save (zip format) or as safetensors"
        )
    data = p.read_bytes()
    if _looks_like_safetensors(head):
        _check_safetensors(p, data)
        return "safetensors"
    why = _onnx_top_level(data)
    if why is None:
        _check_onnx(p, data)
        return "onnx"
    if why == "truncated" and head[:1] == b"\x08":  # field 1 (ir_version) opens ONNX files
        raise ModelFileError(f"{p.name}: looks like ONNX but is truncated or damaged")
    raise ModelFileError(
        f"{p.name}: not a recognised model file (expected ONNX, safetensors or a "
        f"torch.save state dict; first bytes {head[:8].hex()})"
    )
