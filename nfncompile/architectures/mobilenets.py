"""The MobileNetV2 inverted residual block (expand, depthwise, project) in a small network."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .args import positive

__all__ = ["InvertedResidual", "MobileNetV2Block", "mobilenetv2_block"]


class InvertedResidual(nn.Module):
    """The MobileNetV2 block (Sandler et al. 2018): 1x1 expand, depthwise 3x3, 1x1 project.

    The residual add is used when the stride is 1 and the channel count is unchanged.
    """

    def __init__(self, in_channels: int, out_channels: int, expand: int, stride: int) -> None:
        super().__init__()
        hidden = in_channels * expand
        self.expand = nn.Conv2d(in_channels, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.depthwise = nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.project = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU6()
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.expand(x)))
        out = self.act(self.bn2(self.depthwise(out)))
        out = self.bn3(self.project(out))
        if self.use_residual:  # fixed at construction: no data-dependent control flow
            out = out + x
        return out


class MobileNetV2Block(nn.Module):
    """Stem conv + BN + ReLU6, one inverted residual block, global pool, linear.

    Use :func:`mobilenetv2_block` to build one.
    """

    def __init__(
        self,
        image_channels: int,
        in_channels: int,
        out_channels: int,
        expand: int,
        stride: int,
        num_classes: int,
    ) -> None:
        super().__init__()
        self.stem = nn.Conv2d(image_channels, in_channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(in_channels)
        self.act = nn.ReLU6()
        self.block = InvertedResidual(in_channels, out_channels, expand, stride)
        self.fc = nn.Linear(out_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(self.act(self.bn(self.stem(x))))
        return self.fc(x.mean((2, 3)))


def mobilenetv2_block(
    in_channels: int = 8,
    expand: int = 4,
    out_channels: int | None = None,
    stride: int = 1,
    *,
    image_channels: int = 3,
    num_classes: int = 10,
) -> MobileNetV2Block:
    """A MobileNetV2 inverted residual block in a small network.

    Parameters
    ----------
    in_channels : int
        Channels entering the block (the stem's output).
    expand : int
        Expansion factor: the depthwise conv has ``in_channels * expand`` channels.
    out_channels : int, optional
        Channels leaving the block (default ``in_channels``, which keeps the residual add).
    stride : {1, 2}
        Stride of the depthwise conv; 2 drops the residual add.
    image_channels, num_classes : int
        Input image channels and output classes.

    Examples
    --------
    >>> net = mobilenetv2_block()
    >>> net.block.depthwise.groups
    32
    >>> net(torch.zeros(2, 3, 8, 8)).shape
    torch.Size([2, 10])
    """
    out_channels = in_channels if out_channels is None else out_channels
    for k, v in dict(
        in_channels=in_channels,
        expand=expand,
        out_channels=out_channels,
        image_channels=image_channels,
        num_classes=num_classes,
    ).items():
        positive(k, v)
    if stride not in (1, 2):
        raise ConfigError(f"stride must be 1 or 2, got {stride!r}")
    return MobileNetV2Block(image_channels, in_channels, out_channels, expand, stride, num_classes)
