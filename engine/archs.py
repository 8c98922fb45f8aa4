"""Built-in architectures for safetensors state dicts: ``mlp``, ``vgg_small``,
``resnet20`` (CIFAR, He et al. 2016, option-B shortcuts) and ``resnet18`` (the parameter
names of torchvision's ``resnet18``, so its state dict loads as is; no torchvision needed).

Each entry builds an ``nn.Module`` from keyword arguments and knows the input shape
(without the batch) it expects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from engine.errors import UserInputError


class MLP(nn.Module):
    """Flatten, then ``Linear -> BatchNorm1d -> ReLU`` blocks, then a linear classifier."""

    def __init__(
        self,
        in_features: int = 64,
        num_classes: int = 10,
        hidden: tuple[int, ...] | list[int] = (256, 256),
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers.append(nn.Linear(width, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(nn.ReLU())
            width = h
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class VGGSmall(nn.Module):
    """A small VGG-style CNN: ``[conv-BN-ReLU] x2 + maxpool`` per stage, then a linear head."""

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        widths: tuple[int, ...] | list[int] = (32, 64, 128),
        image_size: int = 32,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        size = image_size
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
            layers += [nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
            layers.append(nn.MaxPool2d(2))
            c = w
            size //= 2
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block (same attribute names)."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


def _stage(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or inplanes != planes:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
        )
    layers = [BasicBlock(inplanes, planes, stride, downsample)]
    layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class ResNetCIFAR(nn.Module):
    """CIFAR-style ResNet (3 stages of ``n`` basic blocks; ResNet-20 is ``n = 3``)."""

    def __init__(
        self, depth: int = 20, num_classes: int = 10, in_channels: int = 3, width: int = 16
    ) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise UserInputError(f"a CIFAR ResNet depth is 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = _stage(width, width, n, 1)
        self.layer2 = _stage(width, 2 * width, n, 2)
        self.layer3 = _stage(2 * width, 4 * width, n, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ResNet18(nn.Module):
    """ResNet-18 with torchvision's module and parameter names."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = _stage(64, 64, 2, 1)
        self.layer2 = _stage(64, 128, 2, 2)
        self.layer3 = _stage(128, 256, 2, 2)
        self.layer4 = _stage(256, 512, 2, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@dataclass(frozen=True)
class Arch:
    """A registry entry: a builder and the input shape (without batch) for given kwargs."""

    build: Callable[..., nn.Module]
    input_shape: Callable[[dict[str, Any]], tuple[int, ...]]


ARCHS: dict[str, Arch] = {
    "mlp": Arch(MLP, lambda k: (int(k.get("in_features", 64)),)),
    "vgg_small": Arch(
        VGGSmall,
        lambda k: (
            int(k.get("in_channels", 3)),
            int(k.get("image_size", 32)),
            int(k.get("image_size", 32)),
        ),
    ),
    "resnet20": Arch(
        lambda **k: ResNetCIFAR(depth=20, **k),
        lambda k: (int(k.get("in_channels", 3)), 32, 32),
    ),
    "resnet18": Arch(ResNet18, lambda k: (int(k.get("in_channels", 3)), 224, 224)),
}


def build(name: str, kwargs: dict[str, Any] | None = None) -> tuple[nn.Module, tuple[int, ...]]:
    """The model of a built-in architecture and its input shape (without batch)."""
    kwargs = dict(kwargs or {})
    input_shape_override = kwargs.pop("input_shape", None)
    if name not in ARCHS:
        raise UserInputError(f"unknown architecture {name!r}; expected one of {sorted(ARCHS)}")
    arch = ARCHS[name]
    try:
        model = arch.build(**kwargs)
    except TypeError as exc:
        raise UserInputError(f"bad kwargs for architecture {name!r}: {exc}") from None
    shape = arch.input_shape(kwargs)
    if input_shape_override is not None:
        shape = tuple(int(s) for s in input_shape_override)
    return model, shape
