"""One test per bug the ``.bfm`` fuzzer found (``fuzz_bfm.py``): each input is refused with
a clean :class:`FormatError`, or loads without work or memory proportional to sizes the
file only declares."""

from __future__ import annotations

import json
import struct
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import runtime
from runtime import FormatError, write_bfm
from runtime.packing import pack_signs


def _file(graph: dict[str, Any], tensors: dict[str, np.ndarray], tmp_path: Path) -> bytes:
    path = tmp_path / "m.bfm"
    write_bfm(path, graph=graph, tensors=tensors, provenance={})
    return path.read_bytes()


def _split(data: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _join(header_text: str, body: bytes) -> bytes:
    return struct.pack("<Q", len(header_text)) + header_text.encode() + body


def _linear_model() -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    graph = {
        "inputs": [{"name": "x", "shape": [None, 3]}],
        "outputs": [{"name": "y", "shape": [None, 2]}],
        "nodes": [
            {
                "op": "linear",
                "name": "fc",
                "inputs": ["x"],
                "outputs": ["y"],
                "params": {"weight": "fc.weight"},
            }
        ],
    }
    return graph, {"fc.weight": np.ones((2, 3), np.float32)}


def _refused(data: bytes, match: str) -> None:
    with pytest.raises(FormatError, match=match):
        runtime.load(data)


def test_integer_literal_over_4300_digits_is_a_format_error(tmp_path: Path) -> None:
    # json.loads raised a bare ValueError (Python's int-string conversion limit)
    header, body = _split(_file(*_linear_model(), tmp_path))
    text = json.dumps(header)
    _refused(_join(text.replace('"shape": [2, 3]', '"shape": [' + "9" * 5000 + "]"), body), "JSON")
    graph = header["__metadata__"]["graph"].replace(
        '"shape":[null,3]', '"shape":[null,' + "7" * 5000 + "]"
    )
    header["__metadata__"]["graph"] = graph
    _refused(_join(json.dumps(header), body), "graph.*not valid JSON")


@pytest.mark.parametrize("op", [["linear"], {"a": 1}])
def test_op_of_an_unhashable_type_is_a_format_error(tmp_path: Path, op: Any) -> None:
    # `op not in KNOWN_OPS` raised TypeError for a list or an object
    graph, tensors = _linear_model()
    header, body = _split(_file(graph, tensors, tmp_path))
    graph["nodes"][0]["op"] = op
    header["__metadata__"]["graph"] = json.dumps(graph)
    _refused(_join(json.dumps(header), body), "unknown op")


def test_tensor_shape_of_many_huge_dims_is_a_format_error(tmp_path: Path) -> None:
    # the element count (a 40,000-digit product) could not be formatted into the message
    header, body = _split(_file(*_linear_model(), tmp_path))
    header["fc.weight"]["shape"] = [10**4000] * 10
    _refused(_join(json.dumps(header), body), "fc.weight.*exceed the limit")
    header["fc.weight"]["shape"] = [2, 3]
    header["fc.weight"]["data_offsets"] = [10**4000, 10**4001]
    _refused(_join(json.dumps(header), body), "fc.weight.*data_offsets.*outside")


@pytest.mark.parametrize(
    ("op", "weight_shape", "input_shape"),
    [
        ("conv2d", (0, 3, 3, 3), [None, 3, 5, 5]),
        ("conv2d", (2, 3, 0, 3), [None, 3, 5, 5]),
        ("conv1d", (0, 3, 2), [None, 3, 5]),
        ("linear", (0, 3), [None, 3]),
    ],
)
def test_real_weight_with_a_zero_dim_is_a_format_error(
    tmp_path: Path, op: str, weight_shape: tuple[int, ...], input_shape: list[int | None]
) -> None:
    # accepted: a 0-channel value (fed to a concat) then failed in Model() with ValueError,
    # and a 0-tap kernel gave a convolution torch refuses
    pads = {"conv2d": {"padding": [1, 1]}, "conv1d": {"padding": [1]}, "linear": {}}[op]
    graph = {
        "inputs": [{"name": "x", "shape": input_shape}],
        "outputs": [{"name": "x", "shape": input_shape}],
        "nodes": [
            {
                "op": op,
                "name": "c",
                "inputs": ["x"],
                "outputs": ["v"],
                "attrs": pads,
                "params": {"weight": "w"},
            }
        ],
    }
    with pytest.raises(FormatError, match=r"weight 'w' dim \d: must be >= 1, got 0"):
        write_bfm(
            tmp_path / "m.bfm",
            graph=graph,
            tensors={"w": np.ones(weight_shape, np.float32)},
            provenance={},
        )


def test_avgpool_over_a_huge_declared_input_loads_in_small_time_and_memory(
    tmp_path: Path,
) -> None:
    # Model() built the window counts in a Python loop over every output column (about
    # 1 s per million) and an outer product as large as the output (32 MiB here)
    width = 1 << 22
    graph = {
        "inputs": [{"name": "x", "shape": [None, 1, 4, width]}],
        "outputs": [{"name": "y", "shape": [None, 1, 2, width]}],
        "nodes": [
            {
                "op": "avgpool2d",
                "name": "pool",
                "inputs": ["x"],
                "outputs": ["y"],
                "attrs": {"kernel_size": [3, 1], "stride": [1, 1], "count_include_pad": False},
            }
        ],
    }
    data = _file(graph, {}, tmp_path)
    tracemalloc.start()  # numpy reports its array allocations to tracemalloc
    try:
        model = runtime.load(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"loading allocated {peak} bytes"
    # and the counts are still right when it runs (a small input of the same kind)
    small = {**graph, "inputs": [{"name": "x", "shape": [None, 1, 4, 5]}]}
    small["outputs"] = [{"name": "y", "shape": [None, 1, 2, 5]}]
    x = np.arange(20, dtype=np.float32).reshape(1, 1, 4, 5)
    got = runtime.load(_file(small, {}, tmp_path)).run(x)
    np.testing.assert_allclose(got, (x[:, :, :2] + x[:, :, 1:3] + x[:, :, 2:]) / 3, rtol=1e-6)
    assert model.inputs[0].shape == (None, 1, 4, width)


def test_binary_layer_with_more_than_2_30_taps_is_a_format_error(tmp_path: Path) -> None:
    # K = in_channels x kernel taps >= 2**30 overflows the kernels' int32 K - 2 * popcount
    cin = 1 << 20
    graph = {
        "inputs": [{"name": "x", "shape": [None, cin, 32, 32]}],
        "outputs": [{"name": "y", "shape": [None, 1, 1, 1]}],
        "nodes": [
            {"op": "sign_pack", "name": "s", "inputs": ["x"], "outputs": ["b"]},
            {
                "op": "bconv2d",
                "name": "conv",
                "inputs": ["b"],
                "outputs": ["y"],
                "attrs": {"in_channels": cin, "out_channels": 1, "kernel_size": [32, 32]},
                "params": {"weight": "w", "scale": "scale"},
            },
        ],
    }
    tensors = {"w": pack_signs(np.ones((1, 1, 1, 64))), "scale": np.ones(1, np.float32)}
    with pytest.raises(FormatError, match="exceed 1073741823 taps"):
        write_bfm(tmp_path / "m.bfm", graph=graph, tensors=tensors, provenance={})


def test_output_declared_twice_is_a_format_error(tmp_path: Path) -> None:
    # accepted, and Model.run then returned one array for two declared outputs
    graph, tensors = _linear_model()
    graph["outputs"].append(dict(graph["outputs"][0]))
    with pytest.raises(FormatError, match="'y' is declared twice"):
        write_bfm(tmp_path / "m.bfm", graph=graph, tensors=tensors, provenance={})


WRAPPING_CALLS = r"""
import numpy as np
from runtime import _native
big = 1 << 30
u64, f32 = np.zeros(1, np.uint64), np.zeros(4, np.float32)
scratch = np.zeros(_native.bconv_scratch_bytes(1, 1, 1), np.uint8)
calls = {
    "bconv": lambda: _native.bconv(
        u64, u64, None, f32, None, None, None, None, None, None, f32, scratch,
        (big, big, 8, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1), (0, 0, -1.0, 1.0, 0, 0), 1,
    ),
    "sign_pack": lambda: _native.sign_pack(f32, None, u64, 2 * big, 2 * big, 2 * big),
    "xnor_gemm": lambda: _native.xnor_gemm(u64, u64, f32, *(2 * big,) * 5),
    "maxpool2d": lambda: _native.maxpool2d(
        f32, f32, f32, (2 * big, 2 * big, 4, 2 * big, 1, 1, 1, 1, 1, 0, 0)
    ),
}
for name, call in calls.items():
    try:
        call()
        print(name, "returned")
    except ValueError as exc:
        print(name, "ValueError", exc)
"""


def test_c_buffer_checks_do_not_wrap_around_on_huge_geometry() -> None:
    # module.c multiplied sizes in size_t without overflow checks: (2**30, 2**30, 8) pixels
    # of 8 bytes "needed" 0 bytes, a 1-word buffer passed, and the kernel read far past it
    # (an ASan heap-buffer-overflow). The calls run in a subprocess: a regression crashes.
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", WRAPPING_CALLS], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [
        [name, "ValueError"] for name in ("bconv", "sign_pack", "xnor_gemm", "maxpool2d")
    ], result.stdout
    # each size overflowed (and wrapped to 0 before: every buffer passed the check)
    assert all(line.endswith(f"needs {2**64 - 1}") for line in lines), result.stdout
