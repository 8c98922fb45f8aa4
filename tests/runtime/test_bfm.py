"""The .bfm reader and writer: round trip, and malformed files rejected with clear errors."""

from __future__ import annotations

import copy
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import runtime
from runtime import FormatError, read_bfm, write_bfm
from runtime.packing import pack_signs


def small_model() -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    graph = {
        "inputs": [{"name": "input", "shape": [None, 3, 8, 8], "dtype": "float32"}],
        "outputs": [{"name": "y", "shape": [None, 5, 8, 8], "dtype": "float32"}],
        "nodes": [
            {
                "op": "conv2d",
                "name": "stem",
                "inputs": ["input"],
                "outputs": ["t0"],
                "attrs": {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1},
                "params": {"weight": "stem.weight", "bias": "stem.bias"},
            },
            {"op": "sign_pack", "name": "b1.in", "inputs": ["t0"], "outputs": ["t0_bits"]},
            {
                "op": "bconv2d",
                "name": "b1",
                "inputs": ["t0_bits"],
                "outputs": ["y"],
                "attrs": {
                    "in_channels": 70,
                    "out_channels": 5,
                    "kernel_size": [3, 3],
                    "stride": [1, 1],
                    "padding": [1, 1],
                    "dilation": [1, 1],
                    "pad_mode": "zero",
                    "activation": "none",
                    "post_activation": "none",
                    "output": "float",
                },
                "params": {"weight": "b1.weight", "scale": "b1.scale"},
            },
        ],
    }
    tensors = {
        "stem.weight": rng.standard_normal((70, 3, 3, 3)).astype(np.float32),
        "stem.bias": rng.standard_normal(70).astype(np.float32),
        "b1.weight": pack_signs(rng.standard_normal((5, 3, 3, 70))),
        "b1.scale": np.ones(5, np.float32),
    }
    return graph, tensors


@pytest.fixture
def good_file(tmp_path: Path) -> Path:
    graph, tensors = small_model()
    path = tmp_path / "m.bfm"
    write_bfm(path, graph=graph, tensors=tensors, provenance={"source_sha256": "ab" * 32})
    return path


def test_round_trip(good_file: Path) -> None:
    graph, tensors, metadata = read_bfm(good_file)
    expected_graph, expected_tensors = small_model()
    assert graph == expected_graph
    assert set(tensors) == set(expected_tensors)
    for name, array in expected_tensors.items():
        assert tensors[name].dtype == array.dtype
        np.testing.assert_array_equal(tensors[name], array)
    assert metadata == {
        "format": "bitfactor.bfm",
        "version": "1",
        "provenance": {"source_sha256": "ab" * 32},
    }
    # bytes work as well as paths, and the file is plain safetensors
    assert read_bfm(good_file.read_bytes())[0] == graph
    from safetensors.numpy import load_file

    assert set(load_file(str(good_file))) == set(tensors)


def _split(data: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _join(header: dict[str, Any], body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def _with_metadata(data: bytes, **changes: str) -> bytes:
    header, body = _split(data)
    header["__metadata__"].update(changes)
    return _join(header, body)


def _with_graph(data: bytes, edit: Any) -> bytes:
    header, body = _split(data)
    graph = json.loads(header["__metadata__"]["graph"])
    edit(graph)
    header["__metadata__"]["graph"] = json.dumps(graph)
    return _join(header, body)


def _reject(data: bytes, match: str) -> None:
    with pytest.raises(FormatError, match=match):
        read_bfm(data)
    with pytest.raises(ValueError, match=match):  # FormatError is a ValueError
        runtime.load(data)


def test_truncated_files(good_file: Path) -> None:
    data = good_file.read_bytes()
    _reject(data[:4], "truncated")
    _reject(data[:20], "truncated")
    _reject(data[:-1], "truncated")


def test_wrong_format_and_version(good_file: Path) -> None:
    data = good_file.read_bytes()
    _reject(_with_metadata(data, version="2"), "unsupported version '2'")
    _reject(_with_metadata(data, format="something.else"), "format")
    header, body = _split(data)
    del header["__metadata__"]
    _reject(_join(header, body), "metadata: missing")
    _reject(_with_metadata(data, graph="{not json"), "graph.*not valid JSON")
    _reject(_with_metadata(data, provenance="[1, 2]"), "provenance")


@pytest.mark.parametrize(
    ("head", "what"),
    [
        (b"\x08\x08\x12\x07pytorch\x1a\x032.1", "looks like an ONNX model"),
        (b"PK\x03\x04" + bytes(40), "zip archive"),
        (b"\x80\x04\x95" + bytes(40), "Python pickle"),
        (b"hello, this is some text", "then a JSON object\\)$"),
    ],
)
def test_a_file_that_is_not_a_bfm_is_named(head: bytes, what: str) -> None:
    _reject(head, r"^not a \.bfm file: a \.bfm is a safetensors container.*" + what)


def test_huge_declared_sizes(good_file: Path) -> None:
    data = good_file.read_bytes()
    _reject(struct.pack("<Q", 2**63) + data[8:], "exceeds the limit")
    header, body = _split(data)
    header["b1.scale"]["shape"] = [2**40]
    _reject(_join(header, body), "exceed the limit")


def test_shape_inconsistent_with_bytes(good_file: Path) -> None:
    header, body = _split(good_file.read_bytes())
    header["b1.scale"]["shape"] = [6]
    _reject(_join(header, body), "b1.scale.*needs 24 bytes")
    header, body = _split(good_file.read_bytes())
    header["b1.weight"]["dtype"] = "BF16"
    _reject(_join(header, body), "BF16")


def test_tensor_shape_not_what_the_op_needs(tmp_path: Path) -> None:
    graph, tensors = small_model()
    tensors["b1.scale"] = np.ones(4, np.float32)
    with pytest.raises(FormatError, match=r"b1.scale.*shape \(4,\), expected \(5,\)"):
        write_bfm(tmp_path / "x.bfm", graph=graph, tensors=tensors, provenance={})
    graph, tensors = small_model()
    tensors["b1.weight"] = tensors["b1.weight"][:, :, :1].copy()
    with pytest.raises(FormatError, match=r"b1\.weight"):
        write_bfm(tmp_path / "x.bfm", graph=graph, tensors=tensors, provenance={})
    assert not (tmp_path / "x.bfm").exists()


def test_padding_bits_of_weights_must_be_clear(tmp_path: Path) -> None:
    graph, tensors = small_model()
    tensors["b1.weight"] = tensors["b1.weight"].copy()
    tensors["b1.weight"][0, 0, 0, 1] |= np.uint64(1) << np.uint64(63)  # channel 127 of 70
    with pytest.raises(FormatError, match="padding bits"):
        write_bfm(tmp_path / "x.bfm", graph=graph, tensors=tensors, provenance={})


def _edited(edit: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    graph, tensors = small_model()
    graph = copy.deepcopy(graph)
    edit(graph, tensors)
    return graph, tensors


GRAPH_ERRORS = [
    (lambda g, t: g["nodes"][2]["params"].update(weight="nope"), "missing tensor 'nope'"),
    (lambda g, t: t.update(extra=np.ones(1, np.float32)), "not referenced.*extra"),
    (lambda g, t: g["nodes"][1].update(op="sign_unpack"), "unknown op 'sign_unpack'"),
    (lambda g, t: g["nodes"][2]["attrs"].update(stride=[1, "2"]), r"stride.*\[1\]"),
    (lambda g, t: g["nodes"][2]["attrs"].update(pad_mode="reflect"), "pad_mode"),
    (lambda g, t: g["nodes"][2]["attrs"].update(in_channels=71), "in_channels 71"),
    (lambda g, t: g["nodes"][2]["attrs"].update(colour="red"), "unknown attrs.*colour"),
    (lambda g, t: g["nodes"][2].update(inputs=["t0"]), "t0.*is float"),
    (lambda g, t: g["nodes"][1].update(inputs=["later"]), "'later' is not defined"),
    (lambda g, t: g["nodes"][1].update(outputs=["t0"]), "produced twice"),
    (lambda g, t: g["nodes"][1].update(name="stem"), "node name used twice"),
    (lambda g, t: g["outputs"][0].update(shape=[None, 5, 8, 9]), "declared float"),
    (lambda g, t: g["outputs"][0].update(name="t0_bits"), "t0_bits.*is bits"),
    (lambda g, t: g["inputs"][0].update(shape=[1, 3, 8, 8]), "first null"),
    (lambda g, t: g["nodes"][2]["attrs"].update(kernel_size=[11, 3]), "kernel extent 11"),
    (lambda g, t: g["nodes"][2].update(inputs=["t0_bits", "t0"]), "residual 't0'"),
    (lambda g, t: g["nodes"][2]["attrs"].update(activation="prelu"), "missing param 'slope'"),
    (lambda g, t: g.update(nodes=[]), "graph.nodes"),
    (lambda g, t: g["inputs"][0].update(shape=[None, 3, 2**20, 2**20]), "above the limit"),
    (lambda g, t: g.update(edges=[]), "unknown keys"),
]


@pytest.mark.parametrize(("edit", "match"), GRAPH_ERRORS)
def test_graph_errors_name_the_problem(tmp_path: Path, edit: Any, match: str) -> None:
    graph, tensors = _edited(edit)
    with pytest.raises(FormatError, match=match):
        write_bfm(tmp_path / "x.bfm", graph=graph, tensors=tensors, provenance={})


def test_reader_checks_the_graph_too(good_file: Path) -> None:
    def edit(graph: dict[str, Any]) -> None:
        graph["nodes"][2]["attrs"]["out_channels"] = 6

    _reject(_with_graph(good_file.read_bytes(), edit), "b1.weight")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_corrupted_bytes_are_rejected_cleanly_or_read(data: st.DataObject) -> None:
    graph, tensors = small_model()
    from safetensors.numpy import save

    original = save(
        tensors,
        metadata={
            "format": "bitfactor.bfm",
            "version": "1",
            "graph": json.dumps(graph),
            "provenance": "{}",
        },
    )
    raw = bytearray(original)
    for _ in range(data.draw(st.integers(1, 8))):
        index = data.draw(st.integers(0, len(raw) - 1))
        raw[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    try:
        model = runtime.load(bytes(raw[:cut]) if data.draw(st.booleans()) else bytes(raw))
    except FormatError:
        return
    # a mutation inside tensor data leaves a valid model: it must run
    out = model.run(np.zeros((1, 3, 8, 8), np.float32))
    assert isinstance(out, np.ndarray)
    assert out.shape == (1, 5, 8, 8)


def test_real_weights_may_be_half_precision(tmp_path: Path) -> None:
    graph, tensors = small_model()
    half = dict(tensors)
    half["stem.weight"] = tensors["stem.weight"].astype(np.float16)
    write_bfm(tmp_path / "half.bfm", graph=graph, tensors=half, provenance={})
    assert read_bfm(tmp_path / "half.bfm")[1]["stem.weight"].dtype == np.float16
    widened = dict(tensors)
    widened["stem.weight"] = half["stem.weight"].astype(np.float32)
    write_bfm(tmp_path / "wide.bfm", graph=graph, tensors=widened, provenance={})
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(
        runtime.load(tmp_path / "half.bfm").run(x), runtime.load(tmp_path / "wide.bfm").run(x)
    )
    assert (tmp_path / "half.bfm").stat().st_size < (tmp_path / "wide.bfm").stat().st_size
    # only real conv/linear weights and biases: a binary layer's scale must stay F32
    half["b1.scale"] = tensors["b1.scale"].astype(np.float16)
    with pytest.raises(FormatError, match=r"b1\.scale.*expected F32"):
        write_bfm(tmp_path / "bad.bfm", graph=graph, tensors=half, provenance={})


def _norm_graph(attrs: dict[str, Any], weight_shape: tuple[int, ...]) -> tuple[Any, Any]:
    graph = {
        "inputs": [{"name": "x", "shape": [None, 4, 6], "dtype": "float32"}],
        "outputs": [{"name": "y", "shape": [None, 4, 6], "dtype": "float32"}],
        "nodes": [
            {
                "op": "layernorm",
                "name": "norm",
                "inputs": ["x"],
                "outputs": ["t"],
                "attrs": attrs,
                "params": {"weight": "norm.weight"},
            },
            {"op": "gelu", "name": "act", "inputs": ["t"], "outputs": ["y"]},
        ],
    }
    return graph, {"norm.weight": np.ones(weight_shape, np.float32)}


@pytest.mark.parametrize(
    ("attrs", "weight_shape", "gelu", "match"),
    [
        ({}, (4, 6), {}, None),
        ({"eps": 1e-6}, (6,), {"approximate": "tanh"}, None),
        ({}, (5,), {}, r"norm\.weight.*shape \(5,\), expected \(6,\)"),
        ({}, (1, 4, 6), {}, "trailing dims"),
        ({"eps": 0}, (6,), {}, "eps 0.0 must be > 0"),
        ({"eps": "small"}, (6,), {}, "expected a number"),
        ({}, (6,), {"approximate": "sigmoid"}, "expected one of none, tanh"),
        ({}, (6,), {"op": "hardsigmoid", "alpha": "x"}, "attr 'alpha': expected a number"),
        ({}, (6,), {"op": "hardswish"}, None),
    ],
)
def test_layernorm_and_activations_are_validated(
    tmp_path: Path, attrs: dict[str, Any], weight_shape: tuple[int, ...], gelu: Any, match: Any
) -> None:
    graph, tensors = _norm_graph(attrs, weight_shape)
    act = dict(gelu)
    graph["nodes"][1]["op"] = act.pop("op", "gelu")
    graph["nodes"][1]["attrs"] = act
    if match is None:
        write_bfm(tmp_path / "m.bfm", graph=graph, tensors=tensors, provenance={})
        return
    with pytest.raises(FormatError, match=match):
        write_bfm(tmp_path / "m.bfm", graph=graph, tensors=tensors, provenance={})


def _written_or_refused(tmp_path: Path, graph: dict[str, Any], match: str | None) -> None:
    """``graph`` (no tensors) is written when ``match`` is None, else refused with it."""
    if match is None:
        write_bfm(tmp_path / "m.bfm", graph=graph, tensors={}, provenance={})
        return
    with pytest.raises(FormatError, match=match):
        write_bfm(tmp_path / "m.bfm", graph=graph, tensors={}, provenance={})


def _pad_graph(attrs: dict[str, Any], shape: list[int | None]) -> dict[str, Any]:
    return {
        "inputs": [{"name": "x", "shape": [None, 2, 5, 7], "dtype": "float32"}],
        "outputs": [{"name": "y", "shape": shape, "dtype": "float32"}],
        "nodes": [{"op": "pad", "name": "p", "inputs": ["x"], "outputs": ["y"], "attrs": attrs}],
    }


@pytest.mark.parametrize(
    ("attrs", "shape", "match"),
    [
        ({"pads": [0, 1, 2, 3]}, [None, 2, 7, 11], None),
        ({"pads": [1, 0, 0, 0], "value": -2.5}, [None, 2, 6, 7], None),
        ({"pads": [0, 1, 2, 3]}, [None, 2, 7, 10], "declared float"),
        ({}, [None, 2, 5, 7], "missing attr 'pads'"),
        ({"pads": [1, 1]}, [None, 2, 5, 7], r"pads.*4"),
        ({"pads": [0, -1, 0, 0]}, [None, 2, 5, 7], "pads"),
        ({"pads": [0, 1.5, 0, 0]}, [None, 2, 5, 7], "pads"),
        ({"pads": [0, 0, 0, 0], "value": "zero"}, [None, 2, 5, 7], "expected a number"),
        ({"pads": [0, 0, 0, 0], "value": float("nan")}, [None, 2, 5, 7], "finite"),
        ({"pads": [0, 0, 0, 0], "value": 1e39}, [None, 2, 5, 7], "outside float32's range"),
        ({"pads": [0, 0, 2**40, 0]}, [None, 2, 5, 7], "out of range"),
        ({"pads": [2**22, 2**22, 2**22, 2**22]}, [None, 2, 5, 7], "above the limit"),
        ({"pads": [0, 0, 0, 0], "mode": "reflect"}, [None, 2, 5, 7], "unknown attrs.*mode"),
    ],
)
def test_pad_is_validated(
    tmp_path: Path, attrs: dict[str, Any], shape: list[int | None], match: str | None
) -> None:
    graph = _pad_graph(attrs, shape)
    _written_or_refused(tmp_path, graph, match)


@pytest.mark.parametrize(
    ("perm", "shape", "match"),
    [
        ([0, 2, 3, 1], [None, 5, 7, 2], None),
        ([0, 1, 2, 3], [None, 2, 5, 7], None),
        ([0, 2, 3, 1], [None, 2, 5, 7], "declared float"),
        ([1, 0, 2, 3], [None, 2, 5, 7], "batch axis first"),
        ([0, 2, 2, 1], [None, 5, 5, 2], "reorder the axes"),
        ([0, 2, 1], [None, 5, 2], r"perm.*4 integers"),
        ([0, 4, 1, 2], [None, 5, 2, 7], "reorder the axes"),
    ],
)
def test_transpose_is_validated(
    tmp_path: Path, perm: list[int], shape: list[int | None], match: str | None
) -> None:
    graph = _pad_graph({}, shape)
    graph["nodes"][0].update(op="transpose", attrs={"perm": perm})
    _written_or_refused(tmp_path, graph, match)


@pytest.mark.parametrize(
    ("attrs", "shape", "match"),
    [
        ({"scales": [2, 3]}, [None, 2, 10, 21], None),
        ({"scales": [1, 1], "mode": "nearest"}, [None, 2, 5, 7], None),
        ({"scales": [2, 2]}, [None, 2, 10, 15], "declared float"),
        ({}, [None, 2, 5, 7], "missing attr 'scales'"),
        ({"scales": [2]}, [None, 2, 10, 7], r"scales.*2 integers"),
        ({"scales": [0, 1]}, [None, 2, 5, 7], r"scales'\[0\]: must be >= 1"),
        ({"scales": [2.0, 2]}, [None, 2, 10, 14], "expected an integer"),
        ({"scales": [2, 2], "mode": "bilinear"}, [None, 2, 10, 14], "only 'nearest'"),
        ({"scales": [2**40, 1]}, [None, 2, 5, 7], "out of range"),
        ({"scales": [2**20, 2**10]}, [None, 2, 5, 7], "above the limit"),
        ({"scales": [2, 2], "align_corners": True}, [None, 2, 10, 14], "unknown attrs"),
    ],
)
def test_upsample_is_validated(
    tmp_path: Path, attrs: dict[str, Any], shape: list[int | None], match: str | None
) -> None:
    graph = _pad_graph({}, shape)
    graph["nodes"][0].update(op="upsample", attrs=attrs)
    _written_or_refused(tmp_path, graph, match)


def test_five_dims_are_for_reshape_and_transpose_only(tmp_path: Path) -> None:
    """A channel shuffle passes through (N, g, C/g, H, W); nothing else takes 5 dims."""
    graph = _pad_graph({}, [None, 2, 5, 7])
    graph["nodes"] = [
        {"op": "reshape", "name": "r", "inputs": ["x"], "outputs": ["r"],
         "attrs": {"shape": [2, 1, 5, 7]}},
        {"op": "transpose", "name": "t", "inputs": ["r"], "outputs": ["t"],
         "attrs": {"perm": [0, 2, 1, 3, 4]}},
        {"op": "reshape", "name": "y", "inputs": ["t"], "outputs": ["y"],
         "attrs": {"shape": [2, 5, 7]}},
    ]  # fmt: skip
    write_bfm(tmp_path / "m.bfm", graph=graph, tensors={}, provenance={})
    graph["nodes"][1] = {"op": "relu", "name": "t", "inputs": ["r"], "outputs": ["t"]}
    with pytest.raises(FormatError, match="relu needs float with 2 or 3 or 4 dims"):
        write_bfm(tmp_path / "m.bfm", graph=graph, tensors={}, provenance={})
    graph["nodes"][0]["attrs"]["shape"] = [1, 2, 1, 5, 7]
    with pytest.raises(FormatError, match="1 to 4 dims"):
        write_bfm(tmp_path / "m.bfm", graph=graph, tensors={}, provenance={})


@pytest.mark.parametrize(
    ("attrs", "shape", "match"),
    [
        ({"axis": 1, "start": 0, "end": 1}, [None, 1, 5, 7], None),
        ({"axis": 3, "start": 2, "end": 7}, [None, 2, 5, 5], None),
        ({"axis": 1, "start": 0, "end": 1}, [None, 2, 5, 7], "declared float"),
        ({"axis": 0, "start": 0, "end": 1}, [None, 2, 5, 7], "must be >= 1"),
        ({"axis": 4, "start": 0, "end": 1}, [None, 2, 5, 7], "axis 4 out of range"),
        ({"axis": 2, "start": 3, "end": 3}, [None, 2, 0, 7], "empty or outside"),
        ({"axis": 2, "start": 0, "end": 6}, [None, 2, 6, 7], "empty or outside axis 2 of 5"),
        ({"axis": 2, "start": -1, "end": 5}, [None, 2, 6, 7], "must be >= 0"),
        ({"axis": 2, "end": 5}, [None, 2, 5, 7], "missing attr 'start'"),
        ({"axis": 2, "start": 0, "end": 5, "step": 2}, [None, 2, 5, 7], "unknown attrs"),
    ],
)
def test_slice_is_validated(
    tmp_path: Path, attrs: dict[str, Any], shape: list[int | None], match: str | None
) -> None:
    graph = _pad_graph({}, shape)
    graph["nodes"][0].update(op="slice", attrs=attrs)
    _written_or_refused(tmp_path, graph, match)


def _two_value_graph(
    op: str, shape_b: list[int | None], value: np.ndarray | None
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(N, 2, 3, 4) input x; ``b`` = broadcast of ``value`` (or x); y = op(x, b)."""
    nodes: list[dict[str, Any]] = []
    tensors: dict[str, np.ndarray] = {}
    b = "x"
    if value is not None:
        tensors["v"] = value
        nodes.append(
            {"op": "broadcast", "name": "b", "inputs": ["x"], "outputs": ["b"],
             "params": {"value": "v"}}
        )  # fmt: skip
        b = "b"
    nodes.append({"op": op, "name": "y", "inputs": ["x", b], "outputs": ["y"]})
    graph = {
        "inputs": [{"name": "x", "shape": [None, 2, 3, 4], "dtype": "float32"}],
        "outputs": [{"name": "y", "shape": shape_b, "dtype": "float32"}],
        "nodes": nodes,
    }
    return graph, tensors


@pytest.mark.parametrize(
    ("op", "value", "match"),
    [
        ("matmul", None, r"cannot multiply \(None, 2, 3, 4\) by \(None, 2, 3, 4\)"),
        ("matmul", np.ones((2, 5, 4), np.float32), r"cannot multiply .* by \(None, 2, 5, 4\)"),
        ("matmul", np.ones((3, 4, 5), np.float32), r"cannot multiply .* by \(None, 3, 4, 5\)"),
        ("add", np.ones((2, 3, 4, 1), np.float32), "'value' must name a tensor of 1 to 3 dims"),
        ("add", np.ones((2, 3, 4), np.float16), "dtype"),
        ("add", np.ones((2, 0, 4), np.float32), r"value dim 1: must be >= 1"),
    ],
)
def test_matmul_and_broadcast_shapes_are_checked(op: str, value: Any, match: str) -> None:
    graph, tensors = _two_value_graph(op, [None, 2, 3, 4], value)
    with pytest.raises(FormatError, match=match):
        write_bfm(Path("/nonexistent/never.bfm"), graph=graph, tensors=tensors, provenance={})


def test_matmul_of_a_broadcast_constant_runs(tmp_path: Path) -> None:
    value = np.random.default_rng(0).standard_normal((2, 4, 5)).astype(np.float32)
    graph, tensors = _two_value_graph("matmul", [None, 2, 3, 5], value)
    write_bfm(tmp_path / "m.bfm", graph=graph, tensors=tensors, provenance={})
    x = np.random.default_rng(1).standard_normal((3, 2, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(runtime.load(tmp_path / "m.bfm").run(x), x @ value, rtol=1e-5)


def test_a_matmul_past_the_work_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from runtime import bfm

    monkeypatch.setattr(bfm, "MAX_MATMUL_MACS", 2 * 3 * 4 * 5 - 1)
    value = np.ones((2, 4, 5), np.float32)  # (N, 2, 3, 4) @ (N, 2, 4, 5): 120 per sample
    graph, tensors = _two_value_graph("matmul", [None, 2, 3, 5], value)
    with pytest.raises(FormatError, match="120 multiply-adds per sample exceed the limit"):
        write_bfm(Path("/nonexistent/never.bfm"), graph=graph, tensors=tensors, provenance={})
