"""ImageNet ResNets as torchvision defines them (He et al. 2016): ResNet-18 (BasicBlocks) and
ResNet-50 (Bottlenecks), written here so that no download is needed.

Parameter names follow torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer2.0.downsample.0``, ``fc``), and so do the tensor shapes at the default ``width=64``;
ResNet-18's BasicBlock is the CIFAR ResNet's (:mod:`.resnets`, the same module names). A
smaller ``width`` scales every channel count and keeps the topology (the catalogue entries
use ``width=8`` so that tracing and the tests stay fast; the benchmarks use 64).
"""

from __future__ import annotations

import torch
from torch import nn

from .args import positive
from .resnets import BasicBlock

__all__ = ["Bottleneck", "ImageNetResNet", "resnet18", "resnet50"]


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (with the stride), 1x1 expand (x4), each + BN; shortcut as above."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(inplanes, planes * 4, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


def _expansion(block: type) -> int:
    """Output channels per ``planes`` of a block (4 for Bottlenecks, 1 for BasicBlocks)."""
    return getattr(block, "expansion", 1)


def _shortcut(inplanes: int, planes: int, stride: int) -> nn.Module | None:
    if stride == 1 and inplanes == planes:
        return None
    return nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))


class ImageNetResNet(nn.Module):
    """Stem (7x7/2 conv, BN, ReLU, 3x3/2 max-pool), four stages, global pool, linear.

    Use :func:`resnet18` or :func:`resnet50` to build one.
    """

    def __init__(
        self, block: type, layers: tuple, width: int, num_classes: int, in_channels: int
    ) -> None:
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._stage(block, width, layers[0], 1)
        self.layer2 = self._stage(block, width * 2, layers[1], 2)
        self.layer3 = self._stage(block, width * 4, layers[2], 2)
        self.layer4 = self._stage(block, width * 8, layers[3], 2)
        self.fc = nn.Linear(width * 8 * _expansion(block), num_classes)

    def _stage(self, block: type, planes: int, n: int, stride: int) -> nn.Sequential:
        blocks = []
        for i in range(n):
            blocks.append(block(self.inplanes, planes, stride if i == 0 else 1))
            self.inplanes = planes * _expansion(block)
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean((2, 3)))


def resnet18(width: int = 64, num_classes: int = 1000, in_channels: int = 3) -> ImageNetResNet:
    """ResNet-18: BasicBlocks, stages of 2 blocks (62 weight tensors with BN, 11.7M params at
    the default width).

    Examples
    --------
    >>> net = resnet18()
    >>> sum(p.numel() for p in net.parameters())
    11689512
    >>> resnet18(width=8)(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 1000])
    """
    for k, v in dict(width=width, num_classes=num_classes, in_channels=in_channels).items():
        positive(k, v)
    return ImageNetResNet(BasicBlock, (2, 2, 2, 2), width, num_classes, in_channels)


def resnet50(width: int = 64, num_classes: int = 1000, in_channels: int = 3) -> ImageNetResNet:
    """ResNet-50: Bottlenecks, stages of 3, 4, 6 and 3 blocks (25.6M params at the default
    width).

    Examples
    --------
    >>> sum(p.numel() for p in resnet50().parameters())
    25557032
    """
    for k, v in dict(width=width, num_classes=num_classes, in_channels=in_channels).items():
        positive(k, v)
    return ImageNetResNet(Bottleneck, (3, 4, 6, 3), width, num_classes, in_channels)
