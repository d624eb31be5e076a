"""DenseNet-121 as torchvision defines it (Huang et al. 2017), written here so that no download
is needed: a strided stem, four dense blocks of 6, 12, 24 and 16 layers (each BN-ReLU-1x1 conv
to ``bn_size * growth`` channels, BN-ReLU-3x3 conv to ``growth``, concatenated onto its input),
transitions that halve the channels, a final BN and a linear classifier.

Parameter names follow torchvision's (``features.conv0.weight``,
``features.denseblock1.denselayer1.norm1.weight``, ``features.transition1.conv.weight``,
``classifier.weight``), and so do the shapes at the defaults; the catalogue entry divides the
growth rate and the stem by 8.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .args import positive, positive_tuple

__all__ = ["DenseLayer", "DenseNet", "densenet121"]


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv (bottleneck), BN-ReLU-3x3 conv; reads the concatenation of its inputs."""

    def __init__(self, in_channels: int, growth: int, bn_size: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, features: list) -> torch.Tensor:
        x = torch.cat(features, 1)
        x = self.conv1(F.relu(self.norm1(x)))
        return self.conv2(F.relu(self.norm2(x)))


class DenseBlock(nn.ModuleDict):
    """``n`` dense layers; each reads every earlier output (and the block's input)."""

    def __init__(self, n: int, in_channels: int, growth: int, bn_size: int) -> None:
        super().__init__()
        for i in range(n):
            self[f"denselayer{i + 1}"] = DenseLayer(in_channels + i * growth, growth, bn_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.pool = nn.AvgPool2d(2, 2)


class DenseNet(nn.Module):
    """Use :func:`densenet121` to build one."""

    def __init__(
        self,
        growth: int,
        blocks: tuple,
        init_features: int,
        bn_size: int,
        num_classes: int,
        in_channels: int,
    ) -> None:
        super().__init__()
        self.features = nn.Sequential()
        self.features.add_module(
            "conv0", nn.Conv2d(in_channels, init_features, 7, 2, 3, bias=False)
        )
        self.features.add_module("norm0", nn.BatchNorm2d(init_features))
        self.features.add_module("relu0", nn.ReLU(inplace=True))
        self.features.add_module("pool0", nn.MaxPool2d(3, 2, 1))
        c = init_features
        for i, n in enumerate(blocks):
            self.features.add_module(f"denseblock{i + 1}", DenseBlock(n, c, growth, bn_size))
            c += n * growth
            if i != len(blocks) - 1:
                self.features.add_module(f"transition{i + 1}", Transition(c, c // 2))
                c //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(c))
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.features(x))
        return self.classifier(x.mean((2, 3)))


def densenet121(
    growth: int = 32,
    init_features: int = 64,
    bn_size: int = 4,
    blocks: tuple = (6, 12, 24, 16),
    num_classes: int = 1000,
    in_channels: int = 3,
) -> DenseNet:
    """DenseNet-121 (606 weight tensors with BN, 8.0M params at the defaults).

    Examples
    --------
    >>> sum(p.numel() for p in densenet121().parameters())
    7978856
    >>> densenet121(growth=4, init_features=8)(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 1000])
    """
    for k, v in dict(
        growth=growth,
        init_features=init_features,
        bn_size=bn_size,
        num_classes=num_classes,
        in_channels=in_channels,
    ).items():
        positive(k, v)
    blocks = positive_tuple("blocks", blocks)
    return DenseNet(growth, blocks, init_features, bn_size, num_classes, in_channels)
