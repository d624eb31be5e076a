"""Selective-kernel convolution (Li et al. 2019): several conv paths mixed by a channel-wise
softmax attention over the paths.

The attention's last conv produces ``paths * C`` values that a view splits into
``(paths, C)``: the ``C`` channel-attention values of every path, one softmax per channel.
"""

from __future__ import annotations

import torch
from torch import nn

from .args import positives

__all__ = ["SelectiveKernel", "SKNet", "sk_block"]


class SelectiveKernel(nn.Module):
    """Paths (3x3 convs of growing dilation, each + BN + ReLU) mixed by attention: sum the
    paths, global pool, 1x1 reduce + BN + ReLU, 1x1 select to ``paths * C``, view as
    ``(paths, C)``, softmax over the paths, weighted sum of the paths."""

    def __init__(self, channels: int, paths: int = 2, attn_channels: int = 4) -> None:
        super().__init__()
        self.paths = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels, channels, 3, padding=1 + i, dilation=1 + i, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(),
            )
            for i in range(paths)
        )
        self.num_paths = paths
        self.fc_reduce = nn.Conv2d(channels, attn_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(attn_channels)
        self.fc_select = nn.Conv2d(attn_channels, channels * paths, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.stack([p(x) for p in self.paths], dim=1)  # (B, paths, C, H, W)
        a = x.sum(1).mean((2, 3), keepdim=True)
        a = self.fc_select(torch.relu(self.bn(self.fc_reduce(a))))
        b, c, h, w = a.shape
        a = torch.softmax(a.view(b, self.num_paths, c // self.num_paths, h, w), dim=1)
        return (x * a).sum(1)


class SKNet(nn.Module):
    """Stem conv + ReLU, one selective-kernel unit, global pool, linear.

    Use :func:`sk_block` to build one."""

    def __init__(
        self, image_channels: int, channels: int, paths: int, attn: int, num_classes: int
    ) -> None:
        super().__init__()
        self.stem = nn.Conv2d(image_channels, channels, 3, padding=1)
        self.sk = SelectiveKernel(channels, paths, attn)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.sk(torch.relu(self.stem(x))).mean((2, 3)))


def sk_block(
    channels: int = 8,
    paths: int = 2,
    attn_channels: int = 4,
    *,
    image_channels: int = 3,
    num_classes: int = 10,
) -> SKNet:
    """A selective-kernel unit in a small network.

    Parameters
    ----------
    channels : int
        Channels of the stem and of every path.
    paths : int
        Conv paths (dilations 1, 2, ...).
    attn_channels : int
        Channels of the attention's bottleneck.
    image_channels, num_classes : int
        Input image channels and output classes.

    Examples
    --------
    >>> net = sk_block()
    >>> net.sk.fc_select
    Conv2d(4, 16, kernel_size=(1, 1), stride=(1, 1))
    >>> net(torch.zeros(2, 3, 8, 8)).shape
    torch.Size([2, 10])
    """
    positives(
        channels=channels,
        paths=paths,
        attn_channels=attn_channels,
        image_channels=image_channels,
        num_classes=num_classes,
    )
    return SKNet(image_channels, channels, paths, attn_channels, num_classes)
