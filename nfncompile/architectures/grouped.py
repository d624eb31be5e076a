"""Grouped-convolution networks: the ResNeXt / RegNet-X bottleneck and a small RegNet-X stack.

A grouped 3x3 conv with ``g`` groups maps input group ``j`` to output group ``j`` only, so the
weight space's symmetry is a wreath product: whole groups move together (in the grouped conv's
input and output alike), and inside every group the channels permute on their own.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .args import positive_tuple, positives
from .resnets import downsample

__all__ = ["GroupedBottleneck", "ResNeXtBlock", "RegNetX", "resnext_block", "regnet_x"]


class GroupedBottleneck(nn.Module):
    """1x1 conv, grouped 3x3 conv, 1x1 conv (each with BatchNorm), plus a shortcut (Xie et al.
    2017; the RegNet-X block of Radosavovic et al. 2020 with bottleneck ratio 1).

    The shortcut is the identity, or a 1x1 conv + BN (``downsample``) when the stride or the
    channel count changes.
    """

    def __init__(
        self, in_channels: int, width: int, out_channels: int, groups: int, stride: int = 1
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.downsample = downsample(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + shortcut)


class ResNeXtBlock(nn.Module):
    """Stem conv + BN + ReLU, one grouped bottleneck, global pool, linear.

    Use :func:`resnext_block` to build one.
    """

    def __init__(
        self, image_channels: int, channels: int, width: int, groups: int, num_classes: int
    ) -> None:
        super().__init__()
        self.stem = nn.Conv2d(image_channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.block = GroupedBottleneck(channels, width, channels, groups)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(torch.relu(self.bn(self.stem(x))))
        return self.fc(x.mean((2, 3)))


def resnext_block(
    channels: int = 8,
    width: int = 16,
    groups: int = 4,
    *,
    image_channels: int = 3,
    num_classes: int = 10,
) -> ResNeXtBlock:
    """A ResNeXt bottleneck (``groups`` groups of ``width // groups`` channels) in a small net.

    Parameters
    ----------
    channels : int
        The stem's channels: the residual stream.
    width : int
        Channels of the bottleneck's 1x1 and grouped 3x3 convs; ``groups`` must divide it.
    groups : int
        Groups of the 3x3 conv.
    image_channels, num_classes : int
        Input image channels and output classes.

    Examples
    --------
    >>> net = resnext_block()
    >>> net.block.conv2
    Conv2d(16, 16, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), groups=4, bias=False)
    >>> net(torch.zeros(2, 3, 8, 8)).shape
    torch.Size([2, 10])
    """
    positives(
        channels=channels,
        width=width,
        groups=groups,
        image_channels=image_channels,
        num_classes=num_classes,
    )
    if width % groups:
        raise ConfigError(f"resnext_block: groups {groups} must divide width {width}")
    return ResNeXtBlock(image_channels, channels, width, groups, num_classes)


class RegNetX(nn.Module):
    """A RegNet-X-style network: stem, stages of grouped bottlenecks, global pool, linear.

    Use :func:`regnet_x` to build one.
    """

    def __init__(
        self,
        image_channels: int,
        stem: int,
        widths: tuple,
        depths: tuple,
        group_width: int,
        num_classes: int,
    ) -> None:
        super().__init__()
        self.stem = nn.Conv2d(image_channels, stem, 3, 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(stem)
        c = stem
        stages = []
        for w, d in zip(widths, depths):
            blocks = []
            for i in range(d):
                blocks.append(GroupedBottleneck(c, w, w, w // group_width, 2 if i == 0 else 1))
                c = w
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(torch.relu(self.bn(self.stem(x))))
        return self.fc(x.mean((2, 3)))


def regnet_x(
    widths: tuple = (8, 16),
    depths: tuple = (1, 2),
    group_width: int = 4,
    *,
    stem: int = 8,
    image_channels: int = 3,
    num_classes: int = 10,
) -> RegNetX:
    """A small RegNet-X (Radosavovic et al. 2020): stages of X blocks whose grouped convs have
    ``group_width`` channels per group; each stage opens with a stride-2 block.

    Parameters
    ----------
    widths, depths : tuple of int
        Channels and number of blocks of each stage; ``group_width`` must divide every width.
    group_width : int
        Channels per group of every grouped conv.
    stem, image_channels, num_classes : int
        Stem channels, input image channels, output classes.

    Examples
    --------
    >>> net = regnet_x()
    >>> [b.conv2.groups for s in net.stages for b in s]
    [2, 4, 4]
    >>> net(torch.zeros(2, 3, 16, 16)).shape
    torch.Size([2, 10])
    """
    widths, depths = positive_tuple("widths", widths), positive_tuple("depths", depths)
    if len(widths) != len(depths):
        raise ConfigError(f"regnet_x: {len(widths)} widths but {len(depths)} depths")
    positives(
        group_width=group_width, stem=stem, image_channels=image_channels, num_classes=num_classes
    )
    bad = [w for w in widths if w % group_width]
    if bad:
        raise ConfigError(f"regnet_x: group_width {group_width} must divide every width, not {bad}")
    return RegNetX(image_channels, stem, widths, depths, group_width, num_classes)
