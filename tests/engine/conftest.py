"""Small models and data files shared by the engine tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn


class TinyConv1d(nn.Module):
    """A 1-D CNN touching the ops the ONNX importer and the exporter must handle."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(3, 16, 3, padding=1)
        self.act1 = nn.PReLU(16)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2, stride=2, bias=False)
        self.bn2 = nn.BatchNorm1d(32)
        self.act2 = nn.LeakyReLU(0.1)
        self.conv3 = nn.Conv1d(32, 32, 3, padding=2, dilation=2)
        self.act3 = nn.Hardtanh(-2.0, 2.0)
        self.pool = nn.AvgPool1d(2)
        self.fc = nn.Linear(32 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.conv1(x))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.pool(self.act3(self.conv3(x)) * torch.sigmoid(x))
        return self.fc(torch.flatten(x, 1))


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every batch norm non-trivial statistics (fresh ones are the identity)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)  # type: ignore[union-attr]
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)  # type: ignore[union-attr]
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return model.eval()


@pytest.fixture(scope="session")
def digits_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-learn's digits as (N, 64) float32 with int64 labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    np.savez(path, x=(d.data / 16.0).astype(np.float32), y=d.target.astype(np.int64))
    return path


@pytest.fixture(scope="session")
def trained_mlp(tmp_path_factory: pytest.TempPathFactory, digits_npz: Path) -> Path:
    """An MLP trained on digits, saved as safetensors (arch ``mlp``, hidden 128,128)."""
    from safetensors.torch import save_file

    from engine.archs import MLP

    torch.manual_seed(0)
    data = np.load(digits_npz)
    x, y = torch.from_numpy(data["x"]), torch.from_numpy(data["y"])
    model = MLP(in_features=64, hidden=[128, 128])
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    path = tmp_path_factory.mktemp("models") / "mlp.safetensors"
    save_file(model.state_dict(), str(path))
    return path


class Idioms(nn.Module):
    """What hand-written torch models export: input normalization (Sub, Div), padding
    "same" (auto_pad), HardSwish, a squeeze-excite gate (ReduceMean keepdim, HardSigmoid,
    a per-channel Mul), ReduceMean without keepdim, Squeeze, and x.view(x.size(0), -1)
    (Shape -> Gather -> Unsqueeze -> Concat -> Reshape)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding="same")
        self.gate = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8 * 6 * 6 + 8 + 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.hardswish(self.stem((x - 0.25) / 0.5))
        y = y * nn.functional.hardsigmoid(self.gate(y.mean((2, 3), keepdim=True)))
        pooled = nn.functional.adaptive_avg_pool2d(y, 1).squeeze(-1).squeeze(-1)
        flat = torch.cat([y.view(y.size(0), -1), y.mean((2, 3)), pooled], dim=1)
        return self.fc(flat)


class ErfGeluMaxPool(nn.Module):
    """GELU as opset-17 exporters write it (Div, Erf, Add, Mul), global max pooling, and
    ReduceMax over the spatial axes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.gelu(self.conv(x))
        pooled = nn.functional.adaptive_max_pool2d(y, 1).flatten(1)
        return self.fc(torch.cat([pooled, y.amax((2, 3))], dim=1))


class SamePad(nn.Module):
    """Asymmetric padding as torch exports it: an even kernel with padding="same" and an
    explicit ZeroPad2d / F.pad (pads computed by a ConstantOfShape ... Transpose subgraph)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 4, padding="same")
        self.pad = nn.ZeroPad2d((0, 1, 1, 0))
        self.b = nn.Conv2d(8, 16, 3, stride=2)
        self.pool = nn.MaxPool2d(2, stride=1)
        self.c = nn.Conv2d(16, 16, 2, padding="same")
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.b(self.pad(torch.relu(self.a(x)))))
        y = self.pool(nn.functional.pad(y, (1, 0, 0, 1), value=-0.5))
        y = self.c(y).mean((2, 3))
        return self.fc(y)


class ChannelsLast(nn.Module):
    """An (N, H, W, C) input permuted to NCHW (as TensorFlow exports begin), a convolution
    pair, then the pixels as a sequence: transposed to (N, HW, C) and back for a 1-d
    convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.seq = nn.Conv1d(16, 16, 3)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.b(torch.relu(self.a(x.permute(0, 3, 1, 2)))))
        tokens = y.flatten(2).transpose(1, 2)  # (N, HW, C)
        y = self.seq(torch.relu(tokens).transpose(1, 2))
        return self.fc(y.mean(2))


class MobileBlock(nn.Module):
    """MobileNet V2's inverted residual: a 1x1 expansion, a 3x3 depthwise convolution
    (stride 2, then 1 with a channel multiplier of 2), ReLU6, a 1x1 projection, a residual
    add, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.expand = nn.Conv2d(16, 48, 1)
        self.dw = nn.Conv2d(48, 48, 3, stride=2, padding=1, groups=48)
        self.dw2 = nn.Conv2d(48, 96, 3, padding=1, groups=48)
        self.bn = nn.BatchNorm2d(96)
        self.project = nn.Conv2d(96, 16, 1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.relu6(self.stem(x))
        z = nn.functional.relu6(self.dw(nn.functional.relu6(self.expand(y))))
        z = self.project(nn.functional.relu6(self.bn(self.dw2(z))))
        z = z + nn.functional.avg_pool2d(y, 2)
        return self.fc(z.mean((2, 3)))


class SmoothActivations(nn.Sequential):
    """An MLP through ELU (alpha 0.5), SELU, Softplus and Mish to LogSoftmax."""

    def __init__(self, n_in: int, hidden: int, n_out: int) -> None:
        super().__init__(
            nn.Linear(n_in, hidden),
            nn.ELU(0.5),
            nn.Linear(hidden, hidden),
            nn.SELU(),
            nn.Linear(hidden, hidden),
            nn.Softplus(),
            nn.Linear(hidden, hidden),
            nn.Mish(),
            nn.Linear(hidden, n_out),
            nn.LogSoftmax(1),
        )


@pytest.fixture
def make_smooth_activations() -> type[nn.Module]:
    """The :class:`SmoothActivations` class."""
    return SmoothActivations


@pytest.fixture
def make_erf_gelu() -> type[nn.Module]:
    """The :class:`ErfGeluMaxPool` class (export it with opset 17 for the Erf form)."""
    return ErfGeluMaxPool


@pytest.fixture
def make_channels_last() -> type[nn.Module]:
    """The :class:`ChannelsLast` class."""
    return ChannelsLast


@pytest.fixture
def make_mobile_block() -> type[nn.Module]:
    """The :class:`MobileBlock` class."""
    return MobileBlock


@pytest.fixture
def make_same_pad() -> type[nn.Module]:
    """The :class:`SamePad` class."""
    return SamePad


@pytest.fixture
def make_idioms() -> type[nn.Module]:
    """The :class:`Idioms` class."""
    return Idioms


@pytest.fixture
def make_tiny_conv1d() -> type[nn.Module]:
    """The :class:`TinyConv1d` class."""
    return TinyConv1d


@pytest.fixture
def bn_randomizer():  # type: ignore[no-untyped-def]
    """:func:`randomize_bn`."""
    return randomize_bn
