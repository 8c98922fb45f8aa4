"""Tell an uploaded model's format from its bytes (never from its name); torch-free.

- ``safetensors``: an 8-byte little-endian header length, then a JSON object header.
- ``pt``: a zip archive as ``torch.save`` writes it (``<name>/data.pkl``), loaded later only
  with ``torch.load(weights_only=True)``. TorchScript and ``torch.export`` archives (zips
  with code) and bare pickles are refused: their loaders can run code.
- ``onnx``: a serialized ``ModelProto``: the top-level protobuf fields parse, with an
  ``ir_version`` and a ``graph``.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Literal

ModelFormat = Literal["onnx", "safetensors", "pt"]

_SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024
# ModelProto field numbers and their protobuf wire types (0 varint, 2 length-delimited).
_ONNX_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2}


def _is_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 10:
        return False
    n = int.from_bytes(head[:8], "little")
    if not 2 <= n <= min(_SAFETENSORS_MAX_HEADER, size - 8):
        return False
    return head[8:9] == b"{"


def _safetensors_header_ok(path: Path) -> bool:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return False
    return isinstance(header, dict)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for shift in range(0, 70, 7):
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
    raise ValueError("varint too long")


def _is_onnx(path: Path) -> bool:
    data = path.read_bytes()
    pos = 0
    seen: set[int] = set()
    try:
        while pos < len(data):
            key, pos = _read_varint(data, pos)
            field, wire = key >> 3, key & 7
            if field in _ONNX_FIELDS and _ONNX_FIELDS[field] != wire:
                return False
            if wire == 0:
                _, pos = _read_varint(data, pos)
            elif wire == 2:
                length, pos = _read_varint(data, pos)
                pos += length
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            else:
                return False
            if pos > len(data):
                return False
            seen.add(field)
    except ValueError:
        return False
    return {1, 7} <= seen


def _zip_kind(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        return "bad"
    if any("/code/" in n or n.endswith("constants.pkl") for n in names):
        return "torchscript"
    if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
        return "pt"
    return "other"


def detect_format(path: str | os.PathLike[str]) -> ModelFormat:
    """The format of the model file at ``path``, judged from its content.

    Raises ValueError, with what was found, for anything that is not a self-contained
    ONNX model, a safetensors file or a ``torch.save`` state dict archive.
    """
    p = Path(path)
    size = p.stat().st_size
    if size == 0:
        raise ValueError(f"{p.name}: the file is empty")
    with open(p, "rb") as f:
        head = f.read(16)
    if _is_safetensors(head, size) and _safetensors_header_ok(p):
        return "safetensors"
    if head[:4] == b"PK\x03\x04":
        kind = _zip_kind(p)
        if kind == "pt":
            return "pt"
        if kind == "torchscript":
            raise ValueError(
                f"{p.name}: a TorchScript/torch.export archive; upload a state dict "
                "(safetensors or torch.save(model.state_dict())) or an ONNX file instead"
            )
        raise ValueError(f"{p.name}: a zip archive that is not a torch.save state dict")
    if head[:1] == b"\x80":
        raise ValueError(
            f"{p.name}: a bare pickle (legacy torch.save); pickles can run code and are "
            "refused: re-save with torch.save (zip format) or as safetensors"
        )
    if _is_onnx(p):
        return "onnx"
    raise ValueError(
        f"{p.name}: not a recognised model file (expected ONNX, safetensors or a "
        f"torch.save state dict; first bytes {head[:8].hex()})"
    )
