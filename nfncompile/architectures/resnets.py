"""The CIFAR ResNet (He et al. 2016): BasicBlocks with identity or 1x1-conv shortcuts."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .args import positive

__all__ = ["downsample", "BasicBlock", "ResNetCIFAR", "resnet_cifar", "resnet20"]


def downsample(in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
    """A residual block's shortcut: ``None`` (the identity) when the stride and the channel
    count stay, else a strided 1x1 conv + BatchNorm.

    >>> downsample(4, 4, 1) is None, len(downsample(4, 8, 1))
    (True, 2)
    """
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
    )


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN layers with a residual connection (He et al. 2016).

    The shortcut is the identity, or a 1x1 conv + BN (``downsample``) when the stride or the
    channel count changes.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = downsample(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + shortcut)


class ResNetCIFAR(nn.Module):
    """A CIFAR ResNet: conv stem, 3 stages of ``n`` BasicBlocks, global pool, linear.

    Use :func:`resnet_cifar` to build one.
    """

    def __init__(self, n: int, width: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        c = width
        stages = []
        for stage, mult in enumerate((1, 2, 4)):
            blocks = []
            for i in range(n):
                stride = 2 if (stage > 0 and i == 0) else 1
                blocks.append(BasicBlock(c, width * mult, stride))
                c = width * mult
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean((2, 3)))


def resnet_cifar(
    depth: int = 20, width: int = 16, num_classes: int = 10, in_channels: int = 3
) -> ResNetCIFAR:
    """The CIFAR ResNet of He et al. (2016) with ``depth = 6n + 2`` layers.

    Stages have ``width``, ``2 * width`` and ``4 * width`` channels; shortcuts that change
    shape are a 1x1 conv + BatchNorm.

    Parameters
    ----------
    depth : int
        ``6n + 2`` for a positive ``n`` (8, 14, 20, 32, 44, 56, 110, ...).
    width : int
        Channels of the first stage.
    num_classes, in_channels : int
        Output classes and image channels.

    Raises
    ------
    ConfigError
        When ``depth`` is not ``6n + 2``.

    Examples
    --------
    >>> net = resnet_cifar(8, width=4)
    >>> sum(isinstance(m, nn.Conv2d) for m in net.modules())  # 1 + 3 * 2 + 2 shortcuts
    9
    >>> net(torch.zeros(2, 3, 8, 8)).shape
    torch.Size([2, 10])
    >>> resnet_cifar(21)
    Traceback (most recent call last):
    ...
    nfncompile.errors.ConfigError: resnet_cifar: depth must be 6n + 2 (8, 14, 20, 32, 44, 56, 110, ...), got 21
    """
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 8 or (depth - 2) % 6:
        raise ConfigError(
            f"resnet_cifar: depth must be 6n + 2 (8, 14, 20, 32, 44, 56, 110, ...), got {depth!r}"
        )
    positive("width", width)
    positive("num_classes", num_classes)
    positive("in_channels", in_channels)
    return ResNetCIFAR((depth - 2) // 6, width, num_classes, in_channels)


def resnet20(width: int = 16, num_classes: int = 10, in_channels: int = 3) -> ResNetCIFAR:
    """``resnet_cifar(depth=20, ...)``.

    Examples
    --------
    >>> sum(p.numel() for p in resnet20().parameters())
    272474
    """
    return resnet_cifar(20, width, num_classes, in_channels)
