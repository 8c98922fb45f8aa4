"""The ONNX importer reproduces onnxruntime on the ops torch exports for CNNs and MLPs."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from engine.archs import MLP, ResNetCIFAR, VGGSmall
from engine.errors import UserInputError
from engine.importers import inspect_model, load_model


class Branchy(nn.Module):
    """Concat, Mul, Clip (ReLU6), Tanh, MaxPool with padding, GlobalAveragePool, Reshape."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 1)
        self.bn = nn.BatchNorm2d(16)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.c = nn.Conv2d(16, 16, 3, padding=1, groups=2)
        self.fc = nn.Linear(16, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([nn.functional.relu6(self.a(x)), torch.tanh(self.b(x))], dim=1)
        y = self.pool(self.bn(y))
        y = self.c(y) * torch.sigmoid(y)
        y = nn.functional.adaptive_avg_pool2d(y, 1).reshape(-1, 16)
        return self.fc(y)


class NormGelu(nn.Module):
    """LayerNormalization over one and two trailing axes (with and without bias), both
    Gelu forms (opset 20)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 8, 3, padding=1)
        self.norm2 = nn.LayerNorm([8, 16], eps=1e-3)
        self.fc = nn.Linear(128, 32)
        self.norm1 = nn.LayerNorm(32, bias=False)
        self.out = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.gelu(self.norm2(self.conv(x))).flatten(1)
        y = nn.functional.gelu(self.norm1(self.fc(y)), approximate="tanh")
        return self.out(y)


def _export(model: nn.Module, shape: tuple[int, ...], path: Path, opset: int | None = None) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (torch.randn(1, *shape),),
            str(path),
            opset_version=opset,
            dynamo=False,
            input_names=["x"],
            dynamic_axes={"x": {0: "batch"}},
        )
    return path


@pytest.mark.parametrize(
    ("factory", "shape"),
    [
        (lambda: MLP(in_features=20, hidden=[32, 16], num_classes=4), (20,)),
        (lambda: VGGSmall(in_channels=3, widths=(8, 16), image_size=16), (3, 16, 16)),
        (lambda: ResNetCIFAR(depth=8, width=8), (3, 32, 32)),
        ("tiny_conv1d", (3, 16)),
        (Branchy, (3, 12, 12)),
        (NormGelu, (3, 16)),
        ("idioms", (3, 6, 6)),
        ("erf_gelu", (3, 7, 5)),
        ("smooth", (10,)),
    ],
)
def test_imported_model_matches_onnxruntime(
    tmp_path: Path,
    factory,
    shape,
    make_tiny_conv1d,
    make_idioms,
    make_erf_gelu,
    make_smooth_activations,
    bn_randomizer,  # type: ignore[no-untyped-def]
) -> None:
    torch.manual_seed(0)
    named = {
        "tiny_conv1d": make_tiny_conv1d,
        "idioms": make_idioms,
        "erf_gelu": make_erf_gelu,
        "smooth": lambda: make_smooth_activations(10, 16, 4),
    }
    model = named[factory]() if isinstance(factory, str) else factory()
    bn_randomizer(model)
    path = _export(model, shape, tmp_path / "m.onnx", 17 if factory == "erf_gelu" else None)
    loaded = load_model(path)
    assert loaded.format == "onnx"
    assert loaded.input_shape == shape
    x = np.random.default_rng(0).standard_normal((7, *shape)).astype(np.float32)
    expected = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    with torch.no_grad():
        got = loaded.module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_inspect_reports_shape_params_and_outputs(tmp_path: Path) -> None:
    model = MLP(in_features=20, hidden=[32], num_classes=4)
    info = inspect_model(_export(model, (20,), tmp_path / "m.onnx"))
    assert info == {
        "format": "onnx",
        "input_shape": [20],
        "num_params": 20 * 32 + 32 + 32 * 2 + 32 * 4 + 4,
        "num_outputs": 4,
    }


def test_external_data_is_refused(tmp_path: Path) -> None:
    path = _export(MLP(in_features=20, hidden=[32], num_classes=4), (20,), tmp_path / "m.onnx")
    model = onnx.load(str(path))
    onnx.save_model(
        model,
        str(tmp_path / "ext.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    with pytest.raises(UserInputError, match="external data"):
        load_model(tmp_path / "ext.onnx")


def test_unsupported_operator_is_named(tmp_path: Path) -> None:
    class WithSin(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sin(x)

    path = _export(WithSin(), (5,), tmp_path / "m.onnx")
    with pytest.raises(UserInputError, match=r"\(Sin\): this operator is not supported"):
        load_model(path)


@pytest.mark.parametrize(
    ("forward", "match"),
    [
        (lambda x: x.mean(1), r"ReduceMean over axes \[1\]"),
        (lambda x: x.view(x.size(0) * 3, -1), "on the batch size"),
        (lambda x: x / (x + 1), "constant divisor"),
        (lambda x: x[:, :, ::2], r"\(Slice\): step 2: only contiguous slices"),
    ],
)
def test_unsupported_idioms_are_named(tmp_path: Path, forward: Any, match: str) -> None:
    class Model(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return forward(x).flatten(1)

    path = _export(Model(), (3, 6, 6), tmp_path / "m.onnx")
    with pytest.raises(UserInputError, match=match):
        load_model(path)


def test_opset_17_gelu_imports_as_an_erf_subgraph(tmp_path: Path, make_erf_gelu) -> None:  # type: ignore[no-untyped-def]
    path = _export(make_erf_gelu(), (3, 7, 5), tmp_path / "m.onnx", 17)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"Erf", "ReduceMax"} <= ops
    assert "Gelu" not in ops


def test_global_max_pool_matches_onnxruntime(tmp_path: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("GlobalMaxPool", ["x"], ["p"]),
            helper.make_node("Flatten", ["p"], ["f"], axis=1),
            helper.make_node("Gemm", ["f", "w"], ["y"], transB=1),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 5, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "m.onnx"))
    x = np.random.default_rng(1).standard_normal((2, 3, 5, 7)).astype(np.float32)
    expected = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"x": x})[0]
    with torch.no_grad():
        got = load_model(tmp_path / "m.onnx").module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("nodes", "inits", "match"),
    [
        (  # a shape index out of range
            [
                ("Shape", ["x"], ["s"], {}),
                ("Gather", ["s", "i"], ["g"], {}),
                ("Reshape", ["x", "g"], ["y"], {}),
            ],
            {"i": np.array([9], np.int64)},
            r"Gather \(Gather\): cannot be imported \(IndexError",
        ),
        (
            [("Concat", ["x", "x"], ["y"], {})],
            {},
            r"Concat \(Concat\): cannot be imported \(KeyError",
        ),
        ([("Div", ["x", "z"], ["y"], {})], {"z": np.array(0, np.float32)}, "Div by zero"),
        (
            [("ConstantOfShape", ["s"], ["c"], {}), ("Add", ["x", "c"], ["y"], {})],
            {"s": np.array([1 << 12, 1 << 12], np.int64)},
            r"shape \[4096, 4096\]: only small constants are folded",
        ),
        (
            [("LayerNormalization", ["x", "s"], ["y"], {"axis": 1})],
            {"s": np.ones(4, np.float32)},
            "must start the 1 trailing axes",
        ),
    ],
)
def test_malformed_nodes_are_named_not_crashes(
    tmp_path: Path, nodes: list[Any], inits: dict[str, np.ndarray], match: str
) -> None:
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node(op, i, o, name=op, **attrs) for op, i, o, attrs in nodes],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
        str(tmp_path / "m.onnx"),
    )
    with pytest.raises(UserInputError, match=match):
        load_model(tmp_path / "m.onnx")


def _helper_model(
    tmp_path: Path,
    nodes: list[Any],
    in_shape: list[Any],
    inits: dict[str, np.ndarray],
    opset: int,
    output: str = "y",
) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node(op, i, o, name=op, **attrs) for op, i, o, attrs in nodes],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    return path


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize(
    ("opset", "attrs"), [(11, {}), (11, {"axis": 1}), (11, {"axis": -1}), (17, {})]
)
def test_softmax_follows_its_opset(
    tmp_path: Path, op: str, opset: int, attrs: dict[str, int]
) -> None:
    """Before opset 13 (Log)Softmax normalizes over every axis from ``axis`` (default 1)."""
    nodes = [(op, ["x"], ["s"], attrs), ("Flatten", ["s"], ["y"], {"axis": 1})]
    path = _helper_model(tmp_path, nodes, ["n", 3, 4], {}, opset)
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    expected = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    with torch.no_grad():
        got = load_model(path).module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_reshape_must_keep_the_batch_first(tmp_path: Path) -> None:
    target = {"t": np.array([4, -1], np.int64)}
    nodes = [("Reshape", ["x", "t"], ["r"], {}), ("Flatten", ["r"], ["y"], {"axis": 1})]
    with pytest.raises(UserInputError, match=r"target shape \[4, -1\] does not keep the batch"):
        load_model(_helper_model(tmp_path, nodes, ["n", 4, 3, 3], target, 17))
    # a model exported with a fixed batch of 1 writes it into its targets: that is the batch
    path = _helper_model(tmp_path, nodes, [1, 4, 3, 3], {"t": np.array([1, -1], np.int64)}, 17)
    x = np.random.default_rng(0).standard_normal((1, 4, 3, 3)).astype(np.float32)
    with torch.no_grad():
        got = load_model(path).module(torch.from_numpy(np.repeat(x, 3, axis=0))).numpy()
    assert got.shape == (3, 36)
    np.testing.assert_array_equal(got[2], x.reshape(-1))


def test_torch_same_padding_and_pads_match_onnxruntime(tmp_path: Path, make_same_pad) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    path = _export(make_same_pad(), (3, 11, 10), tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((3, 3, 11, 10)).astype(np.float32)
    expected = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    with torch.no_grad():
        got = load_model(path).module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


W_CONV = np.random.default_rng(5).standard_normal((4, 3, 3, 2)).astype(np.float32)
W_CONV1D = np.random.default_rng(6).standard_normal((4, 3, 4)).astype(np.float32)
PADS = {"p": np.array([0, 0, 1, 0, 0, 0, 0, 2], np.int64), "v": np.array(0.25, np.float32)}


@pytest.mark.parametrize(
    ("nodes", "inits", "in_shape", "opset"),
    [
        ([("Conv", ["x", "w"], ["y"], {"pads": [0, 1, 2, 0]})], {"w": W_CONV}, [3, 7, 6], 17),
        (  # auto_pad SAME_* with an odd total: the extra one after (UPPER) or before (LOWER)
            [("Conv", ["x", "w"], ["y"], {"auto_pad": "SAME_UPPER", "strides": [2, 2]})],
            {"w": W_CONV},
            [3, 8, 6],
            17,
        ),
        (
            [("Conv", ["x", "w"], ["y"], {"auto_pad": "SAME_LOWER"})],
            {"w": W_CONV},
            [3, 7, 6],
            17,
        ),
        ([("Conv", ["x", "w"], ["y"], {"pads": [1, 2]})], {"w": W_CONV1D}, [3, 9], 17),
        (
            [("MaxPool", ["x"], ["y"], {"kernel_shape": [3, 2], "pads": [1, 0, 2, 1]})],
            {},
            [3, 7, 6],
            17,
        ),
        (
            [
                (
                    "AveragePool",
                    ["x"],
                    ["y"],
                    {"kernel_shape": [2, 2], "pads": [0, 1, 1, 0], "count_include_pad": 1},
                )
            ],
            {},
            [3, 7, 6],
            17,
        ),
        (
            [("Pad", ["x"], ["y"], {"pads": [0, 0, 2, 1, 0, 0, 0, 3], "value": -1.5})],
            {},
            [3, 4, 5],
            10,
        ),
        ([("Pad", ["x", "p", "v"], ["y"], {})], PADS, [3, 4, 5], 13),
        (  # pads above half the kernel: torch's pools take at most half, a pad the rest
            [("MaxPool", ["x"], ["y"], {"kernel_shape": [3, 3], "pads": [2, 1, 2, 2]})],
            {},
            [3, 7, 6],
            17,
        ),
        (
            [
                (
                    "AveragePool",
                    ["x"],
                    ["y"],
                    {"kernel_shape": [3, 3], "pads": [2, 2, 2, 2], "count_include_pad": 1},
                )
            ],
            {},
            [3, 7, 6],
            17,
        ),
        (  # opset 18: pads of the listed axes only
            [("Pad", ["x", "q", "", "a"], ["y"], {})],
            {"q": np.array([1, 2, 0, 1], np.int64), "a": np.array([-1, 2], np.int64)},
            [3, 4, 5],
            18,
        ),
    ],
)
def test_asymmetric_padding_and_pad_match_onnxruntime(
    tmp_path: Path, nodes: list[Any], inits: dict[str, np.ndarray], in_shape: list[int], opset: int
) -> None:
    nodes = [*nodes, ("Flatten", ["y"], ["f"], {"axis": 1})]
    path = _helper_model(tmp_path, nodes, ["n", *in_shape], inits, opset, output="f")
    x = np.random.default_rng(0).standard_normal((2, *in_shape)).astype(np.float32)
    expected = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    loaded = load_model(path)
    if any(op != "Pad" for op, *_ in nodes[:-1]):  # the layer keeps only symmetric padding
        assert any(
            isinstance(m, nn.ConstantPad1d | nn.ConstantPad2d) for m in loaded.module.modules()
        )
    with torch.no_grad():
        got = loaded.module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("node", "inits", "match"),
    [
        (
            ("Pad", ["x"], ["y"], {"pads": [0, 0, 1, 1, 0, 0, 1, 1], "mode": "reflect"}),
            {},
            "mode 'reflect'",
        ),
        (("Pad", ["x"], ["y"], {"pads": [0, 1, 0, 0, 0, 0, 0, 0]}), {}, "batch or channel"),
        (("Pad", ["x"], ["y"], {"pads": [0, 0, -1, 0, 0, 0, 0, 0]}), {}, "cropping"),
        (
            ("AveragePool", ["x"], ["y"], {"kernel_shape": [2, 2], "pads": [0, 0, 1, 1]}),
            {},
            "count_include_pad",
        ),
        (
            (
                "MaxPool",
                ["x"],
                ["y"],
                {"kernel_shape": [2, 2], "pads": [0, 0, 1, 1], "ceil_mode": 1},
            ),
            {},
            "without ceil_mode",
        ),
        (("MaxPool", ["x"], ["y"], {"kernel_shape": [2, 2], "pads": [0, 0, 2, 0]}), {}, "reaches"),
        (
            ("AveragePool", ["x"], ["y"], {"kernel_shape": [3, 3], "pads": [2, 2, 2, 2]}),
            {},
            "above half the kernel",
        ),
        (("Pad", ["x"], ["y"], {"pads": [0, 0, 1, 1, 0, 0, 1, 1], "value": 1e39}), {}, "float32"),
        (("Conv", ["x", "w"], ["y"], {"pads": [0, 1, 2]}), {"w": W_CONV}, "expected 4 counts"),
    ],
)
def test_padding_it_cannot_take_is_named(
    tmp_path: Path, node: Any, inits: dict[str, np.ndarray], match: str
) -> None:
    nodes = [node, ("Flatten", ["y"], ["f"], {"axis": 1})]
    path = _helper_model(tmp_path, nodes, ["n", 3, 4, 4], inits, 10, output="f")
    with pytest.raises(UserInputError, match=match):
        load_model(path)


def test_transposes_that_keep_the_batch_first_match_onnxruntime(
    tmp_path: Path, make_channels_last
) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    path = _export(make_channels_last(), (6, 5, 3), tmp_path / "m.onnx")
    assert "Transpose" in {n.op_type for n in onnx.load(str(path)).graph.node}
    x = np.random.default_rng(0).standard_normal((3, 6, 5, 3)).astype(np.float32)
    expected = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    with torch.no_grad():
        got = load_model(path).module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_transpose_perm_that_is_no_permutation_is_named(tmp_path: Path) -> None:
    nodes = [
        ("Transpose", ["x"], ["t"], {"perm": [0, 5, 1]}),
        ("Flatten", ["t"], ["y"], {"axis": 1}),
    ]
    with pytest.raises(UserInputError, match=r"perm \[0, 5, 1\] is not a permutation of 3"):
        load_model(_helper_model(tmp_path, nodes, ["n", 3, 4], {}, 13))


def test_transpose_of_the_batch_axis_is_named(tmp_path: Path) -> None:
    nodes = [
        ("Transpose", ["x"], ["t"], {"perm": [1, 0, 2]}),
        ("Flatten", ["t"], ["y"], {"axis": 1}),
    ]
    with pytest.raises(
        UserInputError, match=r"\(Flatten\): Transpose .*\(perm \[1, 0, 2\]\) moves the batch axis"
    ):
        load_model(_helper_model(tmp_path, nodes, ["n", 3, 4], {}, 13))
    # Split of the moved axis gives parts that still start with it: refused too
    nodes = [
        ("Transpose", ["x"], ["t"], {"perm": [1, 0, 2]}),
        ("Split", ["t"], ["a", "b", "c"], {"axis": 0}),
        ("Flatten", ["a"], ["y"], {"axis": 1}),
    ]
    with pytest.raises(UserInputError, match=r"moves the batch axis"):
        load_model(_helper_model(tmp_path, nodes, ["n", 3, 4], {}, 13))


def test_pad_axes_out_of_range_are_named(tmp_path: Path) -> None:
    inits = {"p": np.array([1, 2], np.int64), "a": np.array([7], np.int64)}
    nodes = [("Pad", ["x", "p", "", "a"], ["t"], {}), ("Flatten", ["t"], ["y"], {"axis": 1})]
    with pytest.raises(UserInputError, match=r"axes \[7\] out of range for rank 4"):
        load_model(_helper_model(tmp_path, nodes, ["n", 3, 4, 5], inits, 18))


class _Up(nn.Module):
    """Nearest upsampling as torch writes it: a module with a factor, F.interpolate with
    factors per axis, a module with a target size, and 1-d."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.conv = nn.Conv2d(3, 4, 3, padding=1) if kind != "1d" else nn.Conv1d(3, 4, 3)
        self.up = {
            "module": nn.Upsample(scale_factor=2),
            "size": nn.Upsample(size=(12, 9)),
            "1d": nn.Upsample(scale_factor=3, mode="nearest"),
        }.get(kind, nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.kind == "functional":
            y = nn.functional.interpolate(y, scale_factor=(2, 3), mode="nearest")
        else:
            y = self.up(y)
        return y.flatten(1)


@pytest.mark.parametrize("opset", [11, 13, 17])
@pytest.mark.parametrize(
    ("kind", "shape"),
    [("module", (3, 5, 4)), ("functional", (3, 5, 4)), ("size", (3, 6, 3)), ("1d", (3, 7))],
)
def test_nearest_upsampling_matches_onnxruntime(
    tmp_path: Path, kind: str, shape: tuple[int, ...], opset: int
) -> None:
    torch.manual_seed(0)
    path = _export(_Up(kind), shape, tmp_path / "m.onnx", opset)
    assert "Resize" in {n.op_type for n in onnx.load(str(path)).graph.node}
    x = np.random.default_rng(0).standard_normal((3, *shape)).astype(np.float32)
    expected = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    with torch.no_grad():
        got = load_model(path).module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def _assert_equal_to_onnxruntime(path: Path, shape: tuple[int, ...]) -> None:
    """The imported module's output on random ``x`` is onnxruntime's, bit for bit."""
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    expected = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    with torch.no_grad():
        got = load_model(path).module(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(got, expected)


def _assert_close_to_onnxruntime(path: Path, shape: tuple[int, ...]) -> None:
    """As :func:`_assert_equal_to_onnxruntime`, to float rounding (convolutions)."""
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    expected = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    with torch.no_grad():
        got = load_model(path).module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def _resize_nodes(attrs: dict[str, Any], scales: list[float]) -> tuple[list[Any], dict[str, Any]]:
    nodes = [
        ("Resize", ["x", "", "scales"], ["r"], attrs),
        ("Flatten", ["r"], ["y"], {"axis": 1}),
    ]
    return nodes, {"scales": np.array(scales, np.float32)}


@pytest.mark.parametrize(
    "attrs",
    [
        {"mode": "nearest"},  # half_pixel, round_prefer_floor: the defaults
        {
            "coordinate_transformation_mode": "pytorch_half_pixel",
            "nearest_mode": "round_prefer_ceil",
        },
        {"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
        {"coordinate_transformation_mode": "tf_half_pixel_for_nn", "nearest_mode": "floor"},
    ],
)
def test_resize_coordinate_modes_that_read_o_div_k_match_onnxruntime(
    tmp_path: Path, attrs: dict[str, Any]
) -> None:
    nodes, inits = _resize_nodes(attrs, [1, 1, 3, 2])
    path = _helper_model(tmp_path, nodes, ["n", 2, 4, 5], inits, 13)
    _assert_equal_to_onnxruntime(path, (2, 2, 4, 5))


def test_opset_9_upsample_matches_onnxruntime(tmp_path: Path) -> None:
    nodes = [
        ("Upsample", ["x", "scales"], ["r"], {"mode": "nearest"}),
        ("Flatten", ["r"], ["y"], {"axis": 1}),
    ]
    inits = {"scales": np.array([1, 1, 2, 4], np.float32)}
    path = _helper_model(tmp_path, nodes, ["n", 2, 3, 3], inits, 9)
    _assert_equal_to_onnxruntime(path, (2, 2, 3, 3))


@pytest.mark.parametrize(
    ("attrs", "scales", "match"),
    [
        ({"mode": "linear"}, [1, 1, 2, 2], "mode 'linear' is not supported"),
        ({"mode": "cubic"}, [1, 1, 2, 2], "mode 'cubic' is not supported"),
        ({"coordinate_transformation_mode": "align_corners"}, [1, 1, 2, 2], "align_corners"),
        ({"nearest_mode": "floor"}, [1, 1, 2, 2], "'half_pixel' with nearest_mode 'floor'"),
        ({}, [1, 1, 1.5, 2], r"scales \[1.0, 1.0, 1.5, 2.0\]: only integer factors"),
        ({}, [1, 1, 0.5, 1], "only integer factors"),
        ({}, [1, 2, 2, 2], "only integer factors >= 1 on the spatial axes"),
    ],
)
def test_resizes_it_cannot_take_are_named(
    tmp_path: Path, attrs: dict[str, Any], scales: list[float], match: str
) -> None:
    nodes, inits = _resize_nodes(attrs, scales)
    with pytest.raises(UserInputError, match=match):
        load_model(_helper_model(tmp_path, nodes, ["n", 2, 4, 4], inits, 13))


def test_resize_by_constant_sizes(tmp_path: Path) -> None:
    nodes = [
        ("Resize", ["x", "", "", "sizes"], ["r"], {"coordinate_transformation_mode": "asymmetric",
                                                   "nearest_mode": "floor"}),
        ("Flatten", ["r"], ["y"], {"axis": 1}),
    ]  # fmt: skip
    sizes = {"sizes": np.array([2, 2, 8, 12], np.int64)}
    with pytest.raises(UserInputError, match=r"sizes \[2, 2, 8, 12\]: only the spatial"):
        load_model(_helper_model(tmp_path, nodes, ["n", 2, 4, 4], sizes, 13))  # batch 2 only
    path = _helper_model(tmp_path, nodes, [2, 2, 4, 4], sizes, 13)
    _assert_equal_to_onnxruntime(path, (2, 2, 4, 4))
    sizes = {"sizes": np.array([2, 2, 6, 12], np.int64)}
    with pytest.raises(UserInputError, match="only integer multiples"):
        load_model(_helper_model(tmp_path, nodes, [2, 2, 4, 4], sizes, 13))


class _ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle: (N, g, C/g, H, W), swap, back; torch writes the
    targets from the batch size, so ONNX's shape inference knows no shape after it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        n, c, h, w = y.shape
        y = y.view(n, 3, c // 3, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        return y.flatten(1)


def test_channel_shuffle_matches_onnxruntime(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = _export(_ChannelShuffle(), (3, 5, 4), tmp_path / "m.onnx", 17)
    _assert_close_to_onnxruntime(path, (2, 3, 5, 4))


class _ShuffleUnit(nn.Module):
    """ShuffleNetV2's stride-1 unit: a channel split (torch writes x.chunk from computed
    shapes), a branch, concat, shuffle."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.branch = nn.Sequential(nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 3, padding=1, groups=4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        keep, work = y.chunk(2, dim=1)
        y = torch.cat([keep, self.branch(work)], 1)
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return y[:, :, 1:-1].flatten(1)


@pytest.mark.parametrize("opset", [11, 13, 17])
def test_shufflenet_unit_with_channel_split_matches_onnxruntime(tmp_path: Path, opset: int) -> None:
    torch.manual_seed(0)
    path = _export(_ShuffleUnit(), (3, 6, 5), tmp_path / "m.onnx", opset)
    _assert_close_to_onnxruntime(path, (2, 3, 6, 5))


@pytest.mark.parametrize(
    ("opset", "split_input", "attrs", "sizes"),
    [(13, [1, 4, 2], {"axis": 1}, None), (18, None, {"axis": 2, "num_outputs": 3}, None),
     (11, None, {"axis": -1, "split": [2, 3]}, [2, 3])],
)  # fmt: skip
def test_split_of_a_value_matches_onnxruntime(
    tmp_path: Path, opset: int, split_input: Any, attrs: dict[str, Any], sizes: Any
) -> None:
    ins = ["x", "s"] if split_input is not None else ["x"]
    parts = ["p0", "p1"] if sizes is not None else ["p0", "p1", "p2"]
    inits = {"s": np.array(split_input, np.int64)} if split_input is not None else {}
    nodes = [
        ("Split", ins, parts, attrs),
        ("Concat", parts[::-1], ["c"], {"axis": attrs["axis"]}),
        ("Flatten", ["c"], ["y"], {"axis": 1}),
    ]
    path = _helper_model(tmp_path, nodes, ["n", 7, 8, 5], inits, opset)
    _assert_equal_to_onnxruntime(path, (2, 7, 8, 5))


@pytest.mark.parametrize(
    ("slice_inputs", "match"),
    [
        ([[0], [1], [0], [1]], "slicing the batch axis is not supported"),
        ([[0], [4], [1], [2]], r"step 2: only contiguous slices"),
        ([[3], [1], [2], [1]], r"range \[3, 1\) of axis 2 is empty"),
    ],
)
def test_slices_of_values_it_cannot_take_are_named(
    tmp_path: Path, slice_inputs: list[list[int]], match: str
) -> None:
    names = ["starts", "ends", "axes", "steps"]
    inits = {k: np.array(v, np.int64) for k, v in zip(names, slice_inputs, strict=True)}
    nodes = [("Slice", ["x", *names], ["s"], {}), ("Flatten", ["s"], ["y"], {"axis": 1})]
    with pytest.raises(UserInputError, match=match):
        load_model(_helper_model(tmp_path, nodes, ["n", 4, 5, 5], inits, 13))


def test_shuffle_exported_with_a_fixed_batch_keeps_it(tmp_path: Path) -> None:
    """Without dynamic axes torch writes the batch into the shuffle's targets; the shapes
    the importer learns carry that batch."""
    import warnings

    torch.manual_seed(0)
    model = _ShuffleUnit().eval()
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(2, 3, 6, 5),), str(path), dynamo=False,
                          opset_version=17, input_names=["x"])  # fmt: skip
    _assert_close_to_onnxruntime(path, (2, 3, 6, 5))


def test_resize_10_reads_its_scales_from_input_1(tmp_path: Path) -> None:
    nodes = [("Resize", ["x", "scales"], ["r"], {"mode": "nearest"}),
             ("Flatten", ["r"], ["y"], {"axis": 1})]  # fmt: skip
    inits = {"scales": np.array([1, 1, 2, 3], np.float32)}
    _assert_equal_to_onnxruntime(
        _helper_model(tmp_path, nodes, ["n", 2, 3, 4], inits, 10), (2, 2, 3, 4)
    )


def test_resize_18_sizes_of_some_axes_and_what_it_refuses(tmp_path: Path) -> None:
    attrs = {"axes": [2, 3], "coordinate_transformation_mode": "asymmetric",
             "nearest_mode": "floor"}  # fmt: skip
    nodes = [("Resize", ["x", "", "", "sizes"], ["r"], attrs),
             ("Flatten", ["r"], ["y"], {"axis": 1})]  # fmt: skip
    sizes = {"sizes": np.array([8, 12], np.int64)}
    _assert_equal_to_onnxruntime(
        _helper_model(tmp_path, nodes, ["n", 3, 4, 4], sizes, 18), (2, 3, 4, 4)
    )
    not_larger = {**attrs, "keep_aspect_ratio_policy": "not_larger"}
    policy = [("Resize", ["x", "", "", "sizes"], ["r"], not_larger),
              ("Flatten", ["r"], ["y"], {"axis": 1})]  # fmt: skip
    with pytest.raises(UserInputError, match="keep_aspect_ratio_policy 'not_larger'"):
        load_model(_helper_model(tmp_path, policy, ["n", 3, 4, 4], sizes, 18))
    batch = [("Resize", ["x", "", "", "sizes"], ["r"], {"mode": "nearest"}),
             ("Flatten", ["r"], ["y"], {"axis": 1})]  # fmt: skip
    with pytest.raises(UserInputError, match=r"sizes \[4, 3, 8, 8\]: only the spatial axes"):
        load_model(
            _helper_model(
                tmp_path, batch, [2, 3, 4, 4], {"sizes": np.array([4, 3, 8, 8], np.int64)}, 13
            )
        )


class _ClassToken(nn.Module):
    """A ViT's class token: a learned (1, 1, C) tensor expanded to the batch size."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], 1)
        return self.head(t[:, 0])


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True, dropout=0.0)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer(x).mean(1))


class _Decoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(3, 4, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x).flatten(1)


@pytest.mark.parametrize(
    ("factory", "shape", "opset", "match"),
    [
        (_Encoder, (5, 8), 17, r"moves the batch axis.*MultiheadAttention .*not supported"),
        (_Decoder, (3, 4, 4), 17, r"ConvTranspose.*nn\.Upsample\(scale_factor=k, mode="),
        (
            lambda: nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 3)),
            (5, 8),
            13,
            r"\(Pow\).*export with opset_version=17 or later",
        ),
        (
            lambda: nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear"), nn.Flatten()),
            (3, 4, 4),
            17,
            r"mode 'linear' is not supported.*mode='nearest-exact'",
        ),
    ],
)
def test_refusals_say_what_to_do_instead(
    tmp_path: Path, factory: Any, shape: tuple[int, ...], opset: int, match: str
) -> None:
    path = _export(factory(), shape, tmp_path / "m.onnx", opset)
    with pytest.raises(UserInputError, match=match):
        load_model(path)


def test_a_class_token_and_attention_products_import(tmp_path: Path) -> None:
    """Expand of a constant to the batch size (torch's Shape, Equal, Where, Expand), MatMul
    of two values, Gather of one token."""

    class Model(_ClassToken):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = self.patch(x).flatten(2).transpose(1, 2)
            t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], 1)  # (N, 5, 8)
            scores = (t @ t.transpose(-1, -2)).softmax(-1)
            return self.head((scores @ t)[:, 0])

    model = Model().eval()
    loaded = load_model(_export(model, (3, 8, 8), tmp_path / "m.onnx", 17)).module
    kinds = {type(m).__name__ for m in loaded.modules()}
    assert "BatchBroadcast" in kinds
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-5)
