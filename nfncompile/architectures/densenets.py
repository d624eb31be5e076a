"""A DenseNet block (Huang et al. 2017), concatenating each layer onto its input, in a
small network."""

from __future__ import annotations

import torch
from torch import nn

from .args import positive

__all__ = ["DenseNetBlock", "densenet_block"]


class _DenseLayer(nn.Module):
    def __init__(self, in_channels: int, growth: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(torch.relu(self.bn(x)))], dim=1)


class DenseNetBlock(nn.Module):
    """Stem conv, one dense block, transition (BN-ReLU-1x1 conv), global pool, linear.

    Use :func:`densenet_block` to build one.
    """

    def __init__(
        self,
        image_channels: int,
        in_channels: int,
        growth: int,
        layers: int,
        out_channels: int,
        num_classes: int,
    ) -> None:
        super().__init__()
        self.stem = nn.Conv2d(image_channels, in_channels, 3, padding=1, bias=False)
        self.block = nn.Sequential(
            *(_DenseLayer(in_channels + i * growth, growth) for i in range(layers))
        )
        c = in_channels + layers * growth
        self.bn = nn.BatchNorm2d(c)
        self.transition = nn.Conv2d(c, out_channels, 1, bias=False)
        self.fc = nn.Linear(out_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(self.stem(x))
        x = self.transition(torch.relu(self.bn(x)))
        return self.fc(torch.relu(x).mean((2, 3)))


def densenet_block(
    in_channels: int = 8,
    growth: int = 4,
    layers: int = 3,
    *,
    image_channels: int = 3,
    out_channels: int = 8,
    num_classes: int = 10,
) -> DenseNetBlock:
    """A DenseNet block (Huang et al. 2017) in a small network.

    Each layer is BN-ReLU-3x3 conv producing ``growth`` channels, concatenated onto its input
    along the channel axis (``torch.cat``), so the block ends with
    ``in_channels + layers * growth`` channels.

    Parameters
    ----------
    in_channels : int
        Channels entering the dense block (the stem's output).
    growth : int
        Channels each layer adds.
    layers : int
        Number of dense layers.
    image_channels : int
        Channels of the network's input image.
    out_channels : int
        Channels after the 1x1 transition conv.
    num_classes : int
        Output classes.

    Examples
    --------
    >>> net = densenet_block()
    >>> net.transition.in_channels  # 8 + 3 * 4
    20
    >>> net(torch.zeros(2, 3, 8, 8)).shape
    torch.Size([2, 10])
    """
    for k, v in dict(
        in_channels=in_channels,
        growth=growth,
        layers=layers,
        image_channels=image_channels,
        out_channels=out_channels,
        num_classes=num_classes,
    ).items():
        positive(k, v)
    return DenseNetBlock(image_channels, in_channels, growth, layers, out_channels, num_classes)
