"""Export: the runtime on the exported file agrees with the engine's binary torch model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import runtime
from bitfactor.jobconfig import BinarizeConfig
from engine.archs import MLP, ResNetCIFAR, VGGSmall
from engine.convert import convert
from engine.export import build_graph, export_bfm
from engine.train import predict, train
from runtime.bfm import read_bfm

CPU = torch.device("cpu")


def _convert_and_export(
    model: nn.Module, shape: tuple[int, ...], path: Path, *, train_epochs: int = 0, **cfg: object
) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model.eval()
    x = torch.randn(600, *shape)
    config = BinarizeConfig(min_layer_size=0, epochs=train_epochs, batch_size=100, lr=3e-3, **cfg)  # type: ignore[arg-type]
    student, _ = convert(model, x[:256], config)
    if train_epochs:
        train(
            student,
            x=x,
            y=None,
            teacher_logits=predict(model, x, CPU),
            x_val=x[:0],
            y_val=None,
            teacher_val_logits=torch.zeros(0),
            config=config,
            device=CPU,
        )
    export_bfm(student, shape, path)
    return student, torch.randn(1000, *shape)


def _through_onnx(model: nn.Module, shape: tuple[int, ...], tmp_path: Path) -> nn.Module:
    """``model`` exported to ONNX (opset 17, classic exporter) and imported back."""
    import warnings

    from engine.importers import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.randn(1, *shape),), str(tmp_path / "m.onnx"), dynamo=False,
            opset_version=17, input_names=["x"], dynamic_axes={"x": {0: "batch"}},
        )  # fmt: skip
    return load_model(tmp_path / "m.onnx").module


def _agreement(student: nn.Module, x: torch.Tensor, path: Path) -> tuple[float, float]:
    expected = predict(student, x, CPU).numpy()
    got = np.asarray(runtime.load(str(path), threads=1).run(x.numpy()))
    assert got.shape == expected.shape
    agree = float((got.argmax(1) == expected.argmax(1)).mean())
    # Share of inputs whose logits match to 1e-3 (relative to the largest logit). Not the
    # maximum over all inputs: an activation that lands within float rounding (~1e-7) of
    # its threshold may take either sign in two implementations that sum in a different
    # order, and one such tie changes that input's logits by a few percent.
    err = np.abs(got - expected).max(1) / (np.abs(expected).max() + 1e-12)
    return agree, float((err < 1e-3).mean())


@pytest.mark.parametrize(
    ("factory", "shape", "cfg"),
    [
        (
            lambda: VGGSmall(in_channels=3, widths=(16, 32), image_size=12),
            (3, 12, 12),
            {"factorization": "matrix", "scales": "xnorpp"},
        ),
        (
            lambda: ResNetCIFAR(depth=8, width=8, num_classes=5),
            (3, 16, 16),
            {"factorization": "tucker", "scales": "channel"},
        ),
        (
            lambda: MLP(in_features=40, hidden=[64, 70, 64], num_classes=6),
            (40,),
            {"factorization": "cp", "scales": "analytic"},
        ),
        (
            "tiny_conv1d",
            (3, 16),
            {"factorization": "none", "scales": "xnorpp", "binarize_first_last": True},
        ),
        (
            lambda: nn.Sequential(
                nn.Linear(24, 64),
                nn.LayerNorm(64),
                nn.GELU(),
                nn.Linear(64, 64),
                nn.LayerNorm(64, elementwise_affine=False),
                nn.GELU(approximate="tanh"),
                nn.Linear(64, 5),
            ),
            (24,),
            {"factorization": "matrix", "scales": "channel"},
        ),
        ("idioms", (3, 6, 6), {"factorization": "matrix", "scales": "channel"}),
        ("erf_gelu", (3, 7, 5), {"scales": "channel", "binarize_first_last": True}),
        ("smooth", (24,), {"factorization": "none", "scales": "channel"}),
        ("same_pad", (3, 11, 10), {"factorization": "matrix", "scales": "channel"}),
        ("channels_last", (6, 5, 3), {"factorization": "none", "scales": "channel"}),
        ("mobile_block", (3, 16, 16), {"factorization": "matrix", "scales": "channel"}),
    ],
)
def test_runtime_matches_binary_torch_model(
    tmp_path: Path,
    factory,
    shape,
    cfg,
    make_tiny_conv1d,
    make_idioms,
    make_erf_gelu,
    make_smooth_activations,
    make_same_pad,
    make_channels_last,
    make_mobile_block,
    bn_randomizer,  # type: ignore[no-untyped-def]
) -> None:
    # through ONNX: Sub/Div, hardswish, an SE gate, view; GELU as Div, Erf, Add, Mul (opset
    # 17), max pools; asymmetric padding (pads before binary convolutions and a max pool);
    # depthwise convolutions (kept real: the runtime's C kernel)
    if factory in ("idioms", "erf_gelu", "same_pad", "mobile_block"):
        import warnings

        from engine.importers import load_model

        torch.manual_seed(0)
        sources = {
            "idioms": make_idioms,
            "erf_gelu": make_erf_gelu,
            "same_pad": make_same_pad,
            "mobile_block": make_mobile_block,
        }
        source = sources[factory]()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                source.eval(),
                (torch.randn(1, *shape),),
                str(tmp_path / "m.onnx"),
                dynamo=False,
                opset_version=17,
                input_names=["x"],
                dynamic_axes={"x": {0: "batch"}},
            )
        model = load_model(tmp_path / "m.onnx").module
    else:
        named = {
            "tiny_conv1d": make_tiny_conv1d,
            "smooth": lambda: make_smooth_activations(24, 64, 5),
            "channels_last": make_channels_last,  # traced by torch.fx: permute, transpose
        }
        model = named[factory]() if isinstance(factory, str) else factory()
    bn_randomizer(model)
    path = tmp_path / "m.bfm"
    student, x = _convert_and_export(model, shape, path, train_epochs=1, **cfg)
    agree, close = _agreement(student, x, path)
    assert agree >= 0.999
    assert close >= 0.999


def test_export_folds_batch_norm_and_packs_sign_weights(tmp_path: Path, bn_randomizer) -> None:  # type: ignore[no-untyped-def]
    model = bn_randomizer(VGGSmall(in_channels=3, widths=(16, 32), image_size=8))
    path = tmp_path / "m.bfm"
    student, _ = _convert_and_export(model, (3, 8, 8), path, factorization="matrix")
    graph, tensors, meta = read_bfm(path)
    ops = [n["op"] for n in graph["nodes"]]
    assert "batchnorm" not in ops  # every BN follows a conv: folded
    assert ops.count("bconv2d") == 3
    assert ops.count("sign_pack") == 3
    assert ops[0] == "conv2d"
    assert ops[-1] == "linear"  # first and last stay real
    layer = student.get_submodule("features.3")
    node = next(n for n in graph["nodes"] if n["name"] == "features.3")
    words = tensors[node["params"]["weight"]]
    assert words.dtype == np.uint64
    assert words.shape == (16, 3, 3, 1)
    from runtime.packing import unpack_signs

    signs = unpack_signs(words, 16)  # (Cout, kh, kw, Cin)
    expected = layer.weight.detach().permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(signs, expected)
    assert set(tensors) == {name for n in graph["nodes"] for name in n.get("params", {}).values()}
    assert "created_at" in meta["provenance"]


def test_unsupported_module_is_reported(tmp_path: Path) -> None:
    class WithSoftsign(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(8, 8)
            self.act = nn.Softsign()  # the runtime has no softsign op
            self.b = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.act(self.a(x)))

    from engine.errors import UserInputError

    with pytest.raises(UserInputError, match=r"act \(Softsign\) is not supported"):
        build_graph(torch.fx.symbolic_trace(WithSoftsign()), (8,))


def test_silu_and_functional_gelu_export(tmp_path: Path) -> None:
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3)
            self.act = nn.SiLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = nn.functional.silu(self.act(self.a(x)))
            y = nn.functional.gelu(y) + nn.functional.gelu(y, approximate="tanh")
            return y.flatten(1)

    model = Model().eval()
    graph, tensors = build_graph(torch.fx.symbolic_trace(model), (3, 6, 5))
    ops = [n["op"] for n in graph["nodes"]]
    assert ops.count("sigmoid") == 2
    assert ops.count("gelu") == 2
    runtime.write_bfm(tmp_path / "m.bfm", graph=graph, tensors=tensors, provenance={})
    x = torch.randn(4, 3, 6, 5)
    with torch.no_grad():
        want = model(x).numpy()
    got = runtime.load(tmp_path / "m.bfm").run(x.numpy())
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("forward", "match"),
    [
        (lambda x: x.mean(1), r"averages over 1 of a rank-4 value; only over every axis but"),
        (lambda x: x.flatten(0), "flattens the batch axis"),
        (lambda x: x.mean(), "averages over None"),
        (lambda x: x.permute(1, 0, 2, 3).flatten(1), r"moves the batch axis \(\[1, 0, 2, 3\]\)"),
    ],
)
def test_axis_operations_it_cannot_export_are_named(forward: object, match: str) -> None:
    from engine.errors import UserInputError

    class Model(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return forward(x)  # type: ignore[operator, no-any-return]

    with pytest.raises(UserInputError, match=match):
        build_graph(torch.fx.symbolic_trace(Model()), (3, 4, 5))


def test_permute_and_transpose_keywords_export(tmp_path: Path) -> None:
    class Model(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.transpose(x.permute(dims=(0, 2, 3, 1)), dim0=1, dim1=-1)
            return torch.permute(y, (0, 1, 3, 2)).flatten(1)

    model = Model().eval()
    graph, tensors = build_graph(torch.fx.symbolic_trace(model), (3, 4, 5))
    runtime.write_bfm(tmp_path / "m.bfm", graph=graph, tensors=tensors, provenance={})
    x = torch.randn(2, 3, 4, 5)
    np.testing.assert_array_equal(runtime.load(tmp_path / "m.bfm").run(x.numpy()), model(x))


def test_pads_of_the_trailing_axes_export_as_pad(tmp_path: Path) -> None:
    # ConstantPad1d on an (N, C, H, W) value pads W only; ZeroPad2d both spatial axes
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.ConstantPad1d((2, 1), -0.5), nn.Conv2d(3, 4, 3), nn.ZeroPad2d((0, 1, 2, 0)), nn.Flatten()
    ).eval()
    graph, tensors = build_graph(torch.fx.symbolic_trace(model), (3, 5, 6))
    assert [n["attrs"]["pads"] for n in graph["nodes"] if n["op"] == "pad"] == [
        [0, 2, 0, 1],
        [2, 0, 0, 1],
    ]
    runtime.write_bfm(tmp_path / "m.bfm", graph=graph, tensors=tensors, provenance={})
    x = torch.randn(2, 3, 5, 6)
    got = runtime.load(tmp_path / "m.bfm").run(x.numpy())
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), rtol=1e-2, atol=1e-2)  # F16 weights

    from engine.errors import UserInputError

    wide = nn.Sequential(nn.Conv1d(3, 4, 3), nn.ConstantPad2d((1, 1, 1, 1), 0.0), nn.Flatten())
    with pytest.raises(UserInputError, match="pads 2 trailing axes of a rank-3 value"):
        build_graph(torch.fx.symbolic_trace(wide.eval()), (3, 9))


def test_module_called_twice_exports_uniquely_named_nodes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ResNetCIFAR(depth=8, width=8, num_classes=3).eval()
    # keep the blocks' second convolutions real: the block's ReLU then runs twice
    config = BinarizeConfig(min_layer_size=0, keep_real=["*.conv2"])
    x = torch.randn(64, 3, 16, 16)
    student, _ = convert(model, x, config)
    path = tmp_path / "m.bfm"
    export_bfm(student, (3, 16, 16), path)
    graph, _, _ = read_bfm(path)
    names = [n["name"] for n in graph["nodes"]]
    assert len(names) == len(set(names))
    assert sum(1 for n in names if n.startswith("layer3.0.relu")) == 2
    agree, _ = _agreement(student, x, path)
    assert agree >= 0.999


def test_per_channel_gates_export_and_other_broadcasts_are_named() -> None:
    from engine.errors import UserInputError

    class Gate(nn.Module):
        def __init__(self, channels: int) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, channels, 1)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.head = nn.Linear(4 * 5 * 5, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            gate = torch.sigmoid(self.pool(self.conv(x)))  # (N, c, 1, 1)
            return self.head((gate * x).flatten(1))  # the smaller operand first

    graph, _ = build_graph(torch.fx.symbolic_trace(Gate(4)), (4, 5, 5))
    mul = next(n for n in graph["nodes"] if n["op"] == "mul")
    flat = next(n for n in graph["nodes"] if n["outputs"][0] == mul["inputs"][1])
    assert flat["op"] == "flatten"  # (N, C, 1, 1) -> (N, C): the runtime's per-channel form

    class SpatialGate(Gate):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head((x * torch.sigmoid(self.conv(x))).flatten(1))  # (N, 1, H, W)

    with pytest.raises(UserInputError, match=r"broadcasts \(\d+, 1, 5, 5\) over \(\d+, 4, 5, 5\)"):
        build_graph(torch.fx.symbolic_trace(SpatialGate(1)), (4, 5, 5))

    class FlatGate(nn.Module):  # (N, C) against (N, C, H, W): torch aligns it with (H, W)
        def __init__(self) -> None:
            super().__init__()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.head = nn.Linear(4 * 2 * 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head((x * self.pool(x).flatten(1)).flatten(1))

    with pytest.raises(UserInputError, match=r"broadcasts \(\d+, 4\) over \(\d+, 4, 2, 4\)"):
        build_graph(torch.fx.symbolic_trace(FlatGate()), (4, 2, 4))


def test_constants_broadcast_like_numpy(tmp_path: Path) -> None:
    from runtime.bfm import write_bfm

    class Normalize(nn.Module):
        def __init__(self, shift_shape: tuple[int, ...]) -> None:
            super().__init__()
            self.register_buffer("shift", torch.tensor([0.4, -0.5, 0.6]).reshape(shift_shape))
            self.register_buffer("scale", torch.tensor([2.0, 3.0, -4.0]).reshape(3, 1, 1))
            self.register_buffer("factor", torch.tensor(0.5))
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.pool = nn.AdaptiveAvgPool2d(1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # as ONNX Sub/Div import
            return self.pool(self.conv((x + self.shift) * self.scale * self.factor)).flatten(1)

    x = torch.randn(5, 3, 3, 3)
    # per channel; (3,), which numpy and torch broadcast along the width (the last axis);
    # (3, 1), along the height: the same for every sample, a broadcast op and an add
    for shift_shape in [(1, 3, 1, 1), (3, 1, 1), (3,), (3, 1)]:
        model = Normalize(shift_shape).eval()
        graph, tensors = build_graph(torch.fx.symbolic_trace(model), (3, 3, 3))
        write_bfm(tmp_path / "m.bfm", graph=graph, tensors=tensors, provenance={})
        got = runtime.load(tmp_path / "m.bfm").run(x.numpy())
        np.testing.assert_allclose(got, model(x).detach().numpy(), rtol=1e-5, atol=1e-5)
        if shift_shape == (3, 1):
            assert "broadcast" in [n["op"] for n in graph["nodes"]]


class _TinyUNet(nn.Module):
    """A U-Net's shape: down by max pooling, up by nearest upsampling, skip by concat."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.d1 = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.d2 = nn.Sequential(
            nn.MaxPool2d(2), nn.Conv2d(c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU()
        )
        self.up = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(2 * c, c, 3, padding=1))
        self.u1 = nn.Sequential(nn.Conv2d(2 * c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.head = nn.Conv2d(c, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.d1(x)
        u = self.up(self.d2(a))
        return self.head(self.u1(torch.cat([a, u], 1))).mean((2, 3))


class _Shuffled(nn.Module):
    """Binary convolutions around ShuffleNetV2's channel split (x.chunk) and channel shuffle
    (a 5-d reshape)."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.b1 = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        half = c // 2
        self.work = nn.Sequential(nn.Conv2d(half, half, 3, padding=1), nn.BatchNorm2d(half))
        self.b2 = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.head = nn.Linear(c, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.b1(torch.relu(self.stem(x)))
        keep, work = y.chunk(2, dim=1)
        y = torch.cat([keep, self.work(work)], 1)
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        return self.head(self.b2(y).mean((2, 3)))


class _ConvNeXtish(nn.Module):
    """A ConvNeXt block (depthwise 7x7, LayerNorm and Linear layers on channels-last values,
    a layer scale) before a binary convolution."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.mlp = nn.Sequential(nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c))
        self.gamma = nn.Parameter(torch.rand(c) + 0.5)
        self.conv = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.head = nn.Linear(c, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        z = self.mlp(self.norm(self.dw(y).permute(0, 2, 3, 1)))
        y = y + (self.gamma * z).permute(0, 3, 1, 2)
        return self.head(self.conv(y).mean((2, 3)))


@pytest.mark.parametrize(
    ("factory", "op", "through_onnx"),
    [
        (_TinyUNet, "upsample", False),
        (_TinyUNet, "upsample", True),
        (_Shuffled, "slice", True),
        (_ConvNeXtish, "transpose", False),
        (_ConvNeXtish, "transpose", True),
    ],
)
def test_unet_and_shuffle_run_in_the_runtime_like_the_binary_torch_model(
    tmp_path: Path,
    factory: Any,
    op: str,
    through_onnx: bool,
    bn_randomizer,  # type: ignore[no-untyped-def]
) -> None:
    torch.manual_seed(0)
    model: nn.Module = bn_randomizer(factory()).eval()
    shape = (3, 12, 10)
    if through_onnx:  # Resize (nearest, asymmetric, floor) as torch exports it
        model = _through_onnx(model, shape, tmp_path)
    path = tmp_path / "m.bfm"
    student, x = _convert_and_export(model, shape, path, train_epochs=1)
    assert op in [n["op"] for n in read_bfm(path)[0]["nodes"]]
    agree, close = _agreement(student, x, path)
    assert agree >= 0.999
    assert close >= 0.999


def test_interpolate_exports_as_upsample_and_other_resizes_are_named(tmp_path: Path) -> None:
    from engine.errors import UserInputError

    class Model(nn.Module):
        def __init__(self, mode: str = "nearest", factor: object = (2, 3)) -> None:
            super().__init__()
            self.mode, self.factor = mode, factor
            self.up = nn.Upsample(size=(10, 6), mode="nearest-exact")

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = nn.functional.interpolate(x, scale_factor=self.factor, mode=self.mode)
            return self.up(y).flatten(1)

    model = Model().eval()
    graph, tensors = build_graph(torch.fx.symbolic_trace(model), (3, 5, 2))
    assert [n["attrs"]["scales"] for n in graph["nodes"] if n["op"] == "upsample"] == [
        [2, 3],
        [1, 1],
    ]
    runtime.write_bfm(tmp_path / "m.bfm", graph=graph, tensors=tensors, provenance={})
    x = torch.randn(2, 3, 5, 2)
    np.testing.assert_array_equal(runtime.load(tmp_path / "m.bfm").run(x.numpy()), model(x))
    for mode, factor, match in [
        ("bilinear", (2, 2), "mode 'bilinear'; only 'nearest'"),
        ("nearest", (2.5, 2), "resizes axis 2 from 5 to 12; only integer"),
        ("nearest", 2.0001, r"scale_factor 2.0001; only integer factors"),
        ("nearest", (41, 1), r"'nearest' at factor 41 reads pixels other than o // k"),
    ]:
        with pytest.raises(UserInputError, match=match):
            build_graph(torch.fx.symbolic_trace(Model(mode, factor).eval()), (3, 5, 5))


class _TokenMLP(nn.Module):
    """Linear layers on a sequence of tokens (N, L, C), with GELU, LayerNorm, a residual
    add and a mean over the tokens, as in a transformer's MLP or an MLP-Mixer."""

    def __init__(self, c: int = 12, d: int = 32) -> None:
        super().__init__()
        self.inp = nn.Linear(c, d)
        self.norm1 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, d)
        self.fc2 = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d)
        self.head = nn.Linear(d, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.norm1(nn.functional.gelu(self.inp(x)))
        t = self.norm2(t + self.fc2(nn.functional.gelu(self.fc1(t))))
        return self.head(t.mean(1))


@pytest.mark.parametrize("through_onnx", [False, True])
def test_linear_layers_on_tokens_run_binary_in_the_runtime(
    tmp_path: Path, through_onnx: bool
) -> None:
    torch.manual_seed(0)
    model: nn.Module = _TokenMLP().eval()
    shape = (16, 12)
    if through_onnx:  # the Linear layers as MatMul + Add, the mean as ReduceMean
        model = _through_onnx(model, shape, tmp_path)
    path = tmp_path / "m.bfm"
    student, x = _convert_and_export(model, shape, path, train_epochs=1, scales="xnorpp")
    ops = [n["op"] for n in read_bfm(path)[0]["nodes"]]
    assert ops.count("bconv1d") == 2  # fc1 and fc2; inp and head stay real
    # each transpose that only undoes the one before it is dropped at load
    loaded = runtime.load(str(path))
    assert [s.op for s in loaded._steps].count("transpose") < ops.count("transpose")
    agree, close = _agreement(student, x, path)
    assert agree >= 0.999
    assert close >= 0.999


def test_convnext_pointwise_layers_are_binary() -> None:
    torch.manual_seed(0)
    model = _ConvNeXtish().eval()
    x = torch.randn(64, 3, 12, 10)
    student, reports = convert(model, x, BinarizeConfig(min_layer_size=0))
    assert {r["name"] for r in reports if r["binary"]} == {"mlp.0", "mlp.2", "conv.0"}
    graph, _ = build_graph(student, (3, 12, 10))
    assert [n["op"] for n in graph["nodes"]].count("bconv2d") == 3


class _Attention(nn.Module):
    """Multi-head self-attention written with the batch first, as many ViTs do."""

    def __init__(self, dim: int, heads: int = 2) -> None:
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, n, self.heads, c // self.heads).transpose(1, 2) for t in (q, k, v))
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class _TinyViT(nn.Module):
    """Patches, a class token and a position embedding, two pre-norm blocks (attention and
    a GELU MLP), the class token's features to the head."""

    def __init__(self, dim: int = 32, image: int = 12, patch: int = 4) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, stride=patch)
        tokens = (image // patch) ** 2
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.5)
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.5)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(5))
        self.attn = nn.ModuleList(_Attention(dim) for _ in range(2))
        self.mlp = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
            for _ in range(2)
        )
        self.head = nn.Linear(dim, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], dim=1) + self.pos
        for i in range(2):
            t = t + self.attn[i](self.norms[2 * i](t))
            t = t + self.mlp[i](self.norms[2 * i + 1](t))
        return self.head(self.norms[4](t)[:, 0])


class _TimmAttention(_Attention):
    """timm's layout: ``qkv.reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)``
    (the batch moves to axis 1 until the unbind) and ``scaled_dot_product_attention``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        y = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


@pytest.mark.parametrize(
    ("timm", "through_onnx"),
    [(False, False), (False, True), (True, True)],  # timm's layout: through ONNX only
)
def test_a_vision_transformer_runs_binary_in_the_runtime(
    tmp_path: Path, timm: bool, through_onnx: bool
) -> None:
    torch.manual_seed(0)
    model: nn.Module = _TinyViT().eval()
    if timm:
        model.attn = nn.ModuleList(_TimmAttention(32) for _ in range(2)).eval()
    shape = (3, 12, 12)
    if through_onnx:  # Expand of the class token, MatMul of two values, Gather of token 0
        original = model
        model = _through_onnx(model, shape, tmp_path)
        x = torch.randn(8, *shape)
        with torch.no_grad():
            torch.testing.assert_close(model(x), original(x), rtol=1e-4, atol=1e-5)
    path = tmp_path / "m.bfm"
    student, x = _convert_and_export(model, shape, path, train_epochs=1)
    ops = [n["op"] for n in read_bfm(path)[0]["nodes"]]
    # qkv, proj and the two MLP layers of each block; the patch embedding and head stay real
    assert ops.count("bconv1d") == 8
    assert ops.count("matmul") == 4
    assert ops.count("broadcast") == 2  # the class token and the position embedding
    agree, close = _agreement(student, x, path)
    assert agree >= 0.999
    assert close >= 0.999


def test_python_numbers_shape_queries_chunks_and_indexing_export(tmp_path: Path) -> None:
    class Model(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, 6, 4, 5)
            y = (x * 0.5 - 1) / 4 + 2
            a, b = y.chunk(2, dim=1)
            c, d, e = torch.split(a, [1, 1, 1], dim=1)
            z = torch.cat([b[:, 1:, :, -3:], c[..., 1:4], d[:, :, :, 2:], 1 + e[:, :, :, :3]], 1)
            return z[:, :, 1].reshape(z.size(0), -1)

    model = Model().eval()
    graph, tensors = build_graph(torch.fx.symbolic_trace(model), (6, 4, 5))
    runtime.write_bfm(tmp_path / "m.bfm", graph=graph, tensors=tensors, provenance={})
    x = torch.randn(3, 6, 4, 5)
    got = runtime.load(tmp_path / "m.bfm").run(x.numpy())
    np.testing.assert_allclose(got, model(x).numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("forward", "match"),
    [
        (lambda x: 2 - x, "takes a constant sub a value"),
        (lambda x: 1 / x, "takes a constant div a value"),
        (lambda x: torch.div(x, 2, rounding_mode="floor"), "rounding_mode='floor'"),
        (lambda x: torch.add(2, x, alpha=3), r"alpha=3"),
        (lambda x: x * torch.ones(1, 4).mul(x.size(0)), "computed from the batch size"),
        (lambda x: x[:, : x.size(0)], "uses size as a number"),
    ],
)
def test_arithmetic_it_cannot_export_is_named(forward: Any, match: str) -> None:
    from engine.errors import UserInputError

    class Model(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return forward(x)

    with pytest.raises(UserInputError, match=match):
        build_graph(torch.fx.symbolic_trace(Model()), (4,))


def test_alpha_and_shape_numbers_export(tmp_path: Path) -> None:
    class Model(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, 6, 5)
            y = torch.sub(x, 1.5, alpha=3).add(2, alpha=-0.5).mul(other=1.25)
            y = y * x.shape[-1] ** -0.5
            return (y - x.size(1))[:, : x.size(1) // 2].flatten(1)

    model = Model().eval()
    graph, tensors = build_graph(torch.fx.symbolic_trace(model), (6, 5))
    runtime.write_bfm(tmp_path / "m.bfm", graph=graph, tensors=tensors, provenance={})
    x = torch.randn(3, 6, 5)
    got = runtime.load(tmp_path / "m.bfm").run(x.numpy())
    np.testing.assert_allclose(got, model(x).numpy(), rtol=1e-6, atol=1e-6)
