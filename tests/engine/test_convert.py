"""Conversion: which layers go binary, the degenerate sign after ReLU, calibration."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import fx, nn

from bitfactor.jobconfig import BinarizeConfig
from engine.archs import ResNetCIFAR, VGGSmall
from engine.convert import binarize_graph, convert, threshold_from_stats
from engine.errors import UserInputError
from engine.layers import BinaryConv2d, binary_layers


class ConvBnReluConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.conv1 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(32, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.stem(x))
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        return self.head(x.mean(dim=(2, 3)))


def _inputs_of(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The binarized input a layer sees, captured by a hook."""
    seen: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        seen.append(module.input_sign(args[0]))  # type: ignore[operator]

    handle = layer.register_forward_pre_hook(hook)
    model.eval()
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen[0]


def test_first_last_small_and_pattern_layers_stay_real() -> None:
    model = VGGSmall(in_channels=3, widths=(8, 16), image_size=8).eval()
    config = BinarizeConfig(keep_real=["features.7"], min_layer_size=1000)
    gm, reports = binarize_graph(model, config)
    by_name = {r.name: r for r in reports}
    assert by_name["features.0"].reason == "first layer"
    assert by_name["classifier"].reason == "last layer"
    assert by_name["features.7"].reason == "keep_real pattern"
    assert by_name["features.3"].reason == "fewer than 1000 weights"  # 8*8*9 = 576
    assert by_name["features.10"].binary
    assert [n for n, _ in binary_layers(gm)] == ["features.10"]
    config = BinarizeConfig(binarize_first_last=True, min_layer_size=0)
    _, reports = binarize_graph(model, config)
    assert all(r.binary for r in reports)


def test_relu_feeding_only_binary_layers_is_bypassed_and_bits_carry_information() -> None:
    torch.manual_seed(0)
    model = ConvBnReluConv().eval()
    x = torch.randn(64, 3, 8, 8)
    gm, reports = convert(model, x, BinarizeConfig(min_layer_size=0))
    assert [r["name"] for r in reports if r["binary"]] == ["conv1", "conv2"]
    # conv2 now reads bn1 directly (conv-BN-sign-conv); the stem's ReLU feeds conv1 alone
    conv2_node = next(n for n in gm.graph.nodes if n.target == "conv2")
    assert conv2_node.args[0].target == "bn1"
    conv1_node = next(n for n in gm.graph.nodes if n.target == "conv1")
    assert conv1_node.args[0].target == "stem"
    for layer in (gm.conv1, gm.conv2):
        bits = _inputs_of(gm, layer, x)
        negative = (bits < 0).float().mean(dim=(0, 2, 3))
        # every channel carries both signs, close to balanced (median thresholds)
        assert bool(((negative > 0.2) & (negative < 0.8)).all()), negative


def test_relu_shared_with_a_real_path_keeps_thresholds_above_zero() -> None:
    torch.manual_seed(0)
    model = ResNetCIFAR(depth=8, width=8, num_classes=3).eval()
    x = torch.randn(32, 3, 32, 32)
    gm, _ = convert(model, x, BinarizeConfig(min_layer_size=0))
    # layer1.0.conv1 reads the stem's ReLU, which the identity shortcut reads as well
    node = next(n for n in gm.graph.nodes if n.target == "layer1.0.conv1")
    assert isinstance(node.args[0], fx.Node)
    assert node.args[0].target == "relu"
    layer = gm.get_submodule("layer1.0.conv1")
    assert isinstance(layer, BinaryConv2d)
    assert bool((layer.input_sign.threshold > 0).all())
    bits = _inputs_of(gm, layer, x)
    negative = (bits < 0).float().mean()
    assert 0.2 < float(negative) < 0.8  # a threshold at 0 would give exactly 0.0


def test_threshold_from_stats_handles_the_relu_floor() -> None:
    x = torch.relu(torch.randn(1000, 2, 1, 1) - 0.5)  # ~69% zeros per channel
    t = threshold_from_stats(x)
    assert bool((t > 0).all())
    balanced = torch.randn(1000, 3)
    ordered = balanced.sort(dim=0).values  # between the lower median and the value above
    want = (ordered[499] + ordered[500]) / 2
    torch.testing.assert_close(threshold_from_stats(balanced), want)
    # levels, as after a binary layer and an elementwise op: halfway between two of them
    levels = torch.tensor([-1.0, 0.5, 0.5, 0.5, 2.0, 2.0]).view(-1, 1)
    assert threshold_from_stats(levels).tolist() == [1.25]
    assert threshold_from_stats(torch.full((5, 1), 3.0)).tolist() == [4.0]  # a constant: above


def test_calibration_sizes_xnorpp_factors_and_recomputes_batch_norm() -> None:
    torch.manual_seed(0)
    model = ConvBnReluConv().eval()
    x = torch.randn(64, 3, 8, 8) * 3 + 1
    gm, _ = convert(model, x, BinarizeConfig(scales="xnorpp", min_layer_size=0))
    layer = gm.conv2
    assert isinstance(layer, BinaryConv2d)
    assert [p.shape[0] for p in layer.pos_scales] == [8, 8]
    # the BN after a binary conv is re-estimated on the binary network: outputs normalized
    outs: list[torch.Tensor] = []
    handle = gm.bn2.register_forward_hook(lambda _m, _a, out: outs.append(out))
    gm.eval()
    with torch.no_grad():
        gm(x)
    handle.remove()
    out = outs[0]
    assert abs(float(out.mean())) < 0.1
    assert abs(float(out.std()) - 1.0) < 0.1


class ConvTokens(nn.Module):
    """Binary-able convolutions, then a Linear over tokens (N, L, C), as a ViT's MLP."""

    def __init__(self, tokens_only: bool = False, keyword: bool = False) -> None:
        super().__init__()
        self.tokens_only, self.keyword = tokens_only, keyword
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.conv = nn.Conv2d(16, 16, 3, padding=1)
        self.token_fc = nn.Linear(16, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if not self.tokens_only:
            x = self.conv(x)
        t = x.flatten(2).transpose(1, 2)
        t = self.token_fc(input=t) if self.keyword else self.token_fc(t)
        return self.head(t.mean(1))


@pytest.mark.parametrize("keyword", [False, True])
def test_linear_over_tokens_is_binarized_on_its_last_axis(keyword: bool) -> None:
    torch.manual_seed(0)
    model = ConvTokens(keyword=keyword).eval()
    x = torch.randn(8, 3, 6, 6)
    config = BinarizeConfig(min_layer_size=0, scales="xnorpp")
    _, reports = binarize_graph(model, config, x[:2])
    by_name = {r.name: r for r in reports}
    assert by_name["conv"].binary
    assert by_name["token_fc"].binary is not keyword
    assert by_name["token_fc"].reason == ("input passed by keyword" if keyword else "")
    gm, _ = convert(model, x, config)
    assert gm(x).shape == (8, 4)
    if keyword:
        return
    fc: Any = gm.get_submodule("token_fc")
    # calibrated per feature (the last axis); spatial scales over the 36 tokens
    with torch.no_grad():
        conv: Any = gm.get_submodule("conv")
        tokens = conv(gm.get_submodule("stem")(x)).flatten(2)  # (N, C, L)
    torch.testing.assert_close(fc.input_sign.threshold.detach(), threshold_from_stats(tokens))
    assert [tuple(p.shape) for p in fc.pos_scales] == [(36,)]
    # on tokens the twin is the binary 1x1 convolution the runtime runs
    with torch.no_grad():
        for p in fc.pos_scales:
            p.uniform_(0.5, 1.5)
        t = torch.randn(5, 36, 16)
        y = nn.functional.conv1d(fc.input_sign(t.transpose(1, 2)), fc.weight.unsqueeze(-1))
        want = (y * fc.output_scale(3) + fc.bias.view(1, -1, 1)).transpose(1, 2)
        torch.testing.assert_close(fc(t), want)


class Rank5Tokens(nn.Module):
    """A Linear over a rank-5 value: the runtime has no binary layer for it."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 8)
        self.fc = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc(self.stem(x)).mean((1, 2, 3)))


def test_no_binary_layer_names_each_layers_reason() -> None:
    with pytest.raises(
        UserInputError,
        match=r"fc: input of rank 5, more than \(batch, height, width, features\)",
    ):
        convert(Rank5Tokens().eval(), torch.randn(4, 2, 2, 2, 4), BinarizeConfig(min_layer_size=0))
