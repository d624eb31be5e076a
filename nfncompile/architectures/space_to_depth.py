"""Space-to-depth stem (TResNet, Ridnik et al. 2021): ``bs x bs`` spatial blocks moved into the
channels by a view and a permute, then a conv.

After the move, channel ``(i * bs + j) * C + c`` is input channel ``c`` at offset ``(i, j)`` of
its block: the input's channels repeated ``bs * bs`` times.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .args import positives

__all__ = ["SpaceToDepth", "S2DNet", "s2d_stem"]


class SpaceToDepth(nn.Module):
    """``(N, C, H, W) -> (N, C * bs * bs, H / bs, W / bs)``, block offsets outermost."""

    def __init__(self, block_size: int = 2) -> None:
        super().__init__()
        self.bs = block_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.size()
        x = x.view(n, c, h // self.bs, self.bs, w // self.bs, self.bs)
        x = x.permute(0, 3, 5, 1, 2, 4).contiguous()
        return x.view(n, c * self.bs * self.bs, h // self.bs, w // self.bs)


class S2DNet(nn.Module):
    """Space-to-depth, 3x3 conv + ReLU, 3x3 conv + ReLU, global pool, linear.

    Use :func:`s2d_stem` to build one."""

    def __init__(
        self, image_channels: int, channels: int, block_size: int, num_classes: int
    ) -> None:
        super().__init__()
        self.s2d = SpaceToDepth(block_size)
        self.conv1 = nn.Conv2d(image_channels * block_size**2, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(self.s2d(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean((2, 3)))


def s2d_stem(
    channels: int = 8, block_size: int = 2, *, image_channels: int = 3, num_classes: int = 10
) -> S2DNet:
    """A space-to-depth stem and two convs in a small network.

    The example input's height and width must be multiples of ``block_size``.

    Examples
    --------
    >>> net = s2d_stem()
    >>> net.conv1
    Conv2d(12, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
    >>> net(torch.zeros(2, 3, 8, 8)).shape
    torch.Size([2, 10])
    """
    positives(
        channels=channels,
        block_size=block_size,
        image_channels=image_channels,
        num_classes=num_classes,
    )
    if block_size < 2:
        raise ConfigError(f"s2d_stem: block_size must be at least 2, got {block_size}")
    return S2DNet(image_channels, channels, block_size, num_classes)
