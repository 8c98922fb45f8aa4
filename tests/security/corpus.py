"""Builders of hostile and broken upload files, made fresh by the tests (nothing checked in).

Pickle payloads would create ``marker`` when unpickled; the tests assert it never appears.
ONNX models are built with ``onnx.helper`` (an 8 -> 16 -> 3 MLP the importer supports).
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import struct
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

# ------------------------------------------------------------------------------- pickles


class SystemPayload:
    """Unpickling runs ``os.system("touch <marker>")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., object], tuple[object, ...]]:
        return os.system, (f"touch {self.marker}",)


class TouchPayload:
    """Unpickling runs ``pathlib.Path.touch(marker)`` (a STACK_GLOBAL at protocol 4)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., object], tuple[object, ...]]:
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def replace_entry(archive: bytes, suffix: str, content: bytes) -> bytes:
    """A copy of a zip archive with the entry ending in ``suffix`` replaced."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = content if info.filename.endswith(suffix) else src.read(info)
            dst.writestr(info.filename, data)
    return out.getvalue()


def zip_of(entries: list[tuple[str, bytes]], method: int = zipfile.ZIP_STORED) -> bytes:
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are the point of one case
        with zipfile.ZipFile(out, "w", compression=method) as archive:
            for name, data in entries:
                archive.writestr(name, data)
    return out.getvalue()


# ----------------------------------------------------------------------------------- onnx


def onnx_model(
    *,
    opset: int = 17,
    w1: np.ndarray | None = None,
    extra_initializers: list[object] = (),  # type: ignore[assignment]
    extra_nodes: list[object] = (),  # type: ignore[assignment]
) -> bytes:
    """A valid 8 -> 16 -> 3 MLP (Gemm, Relu, Gemm) as ONNX bytes, with optional extras."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {
        "w1": rng.normal(size=(16, 8)).astype(np.float32) if w1 is None else w1,
        "b1": np.zeros(16, np.float32),
        "w2": rng.normal(size=(3, 16)).astype(np.float32),
        "b2": np.zeros(3, np.float32),
    }
    inits = [numpy_helper.from_array(v, k) for k, v in weights.items()]
    nodes = [
        helper.make_node("Gemm", ["input", "w1", "b1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"], transB=1),
        *extra_nodes,
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        initializer=[*inits, *extra_initializers],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def external_tensor(name: str, location: str) -> object:
    """A TensorProto whose data would be read from ``location`` by a loader that follows it."""
    from onnx import TensorProto, helper

    tensor = helper.make_tensor(name, TensorProto.FLOAT, [4], [0.0] * 4)
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def onnx_external_constant(location: str) -> bytes:
    from onnx import helper

    node = helper.make_node("Constant", [], ["c"], value=external_tensor("c", location))
    return onnx_model(extra_nodes=[node])


def onnx_external_in_subgraph(location: str) -> bytes:
    from onnx import TensorProto, helper

    body = helper.make_graph(
        [helper.make_node("Identity", ["sub_w"], ["sub_out"])],
        "then",
        [],
        [helper.make_tensor_value_info("sub_out", TensorProto.FLOAT, [4])],
        initializer=[external_tensor("sub_w", location)],
    )
    cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    node = helper.make_node("If", ["cond"], ["branch"], then_branch=body, else_branch=body)
    return onnx_model(extra_initializers=[cond], extra_nodes=[node])


def onnx_nested(depth: int) -> bytes:
    from onnx import TensorProto, helper

    out = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph([], "leaf", [], [out])
    for level in range(depth):
        node = helper.make_node("If", ["cond"], ["x"], then_branch=graph, else_branch=graph)
        graph = helper.make_graph([node], f"level{level}", [], [out])
    node = helper.make_node("If", ["cond"], ["deep"], then_branch=graph, else_branch=graph)
    return onnx_model(extra_nodes=[node])


def onnx_many_nodes(count: int) -> bytes:
    from onnx import helper

    nodes = [helper.make_node("Identity", [f"i{k}"], [f"i{k + 1}"]) for k in range(count)]
    return onnx_model(extra_nodes=nodes)


def onnx_absurd_initializer() -> bytes:
    from onnx import TensorProto, helper

    tensor = helper.make_tensor("huge", TensorProto.FLOAT, [1], [0.0])
    tensor.ClearField("dims")
    tensor.dims.extend([1 << 14, 1 << 14])
    return onnx_model(extra_initializers=[tensor])


def flip_dims(onnx_bytes: bytes) -> bytes:
    """Flip one bit of w1's first dimension (16 -> 17) in the serialized file."""
    # The initializer is TensorProto{dims: 16, dims: 8, data_type: 1, name: "w1", ...}:
    # dims are unpacked varints, field 1 (tag 0x08).
    pattern = b"\x08\x10\x08\x08\x10\x01"
    at = onnx_bytes.index(pattern)
    data = bytearray(onnx_bytes)
    data[at + 1] ^= 0x01
    return bytes(data)


# ---------------------------------------------------------------------------- safetensors


def safetensors_raw(
    header: dict[str, object], body: bytes, *, declared: int | None = None
) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text) if declared is None else declared) + text + body


def safetensors_valid(values: np.ndarray | None = None) -> bytes:
    values = np.arange(8, dtype=np.float32) if values is None else values.astype(np.float32)
    header = {"w": {"dtype": "F32", "shape": [len(values)], "data_offsets": [0, 4 * len(values)]}}
    return safetensors_raw(header, values.tobytes())


def safetensors_overlapping() -> bytes:
    header = {
        "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
        "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
    }
    return safetensors_raw(header, bytes(24))


# ------------------------------------------------------------------------------------ npz


def npz_of(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def npz_bomb(megabytes: int) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=np.zeros((megabytes * 1024, 256), np.float32))
    return buffer.getvalue()


def npz_absurd_header() -> bytes:
    """x.npy declares shape (10**12, 4) but holds 16 bytes."""
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        member, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 4)}
    )
    member.write(bytes(16))
    return zip_of([("x.npy", member.getvalue())])
