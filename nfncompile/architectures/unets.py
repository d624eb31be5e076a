"""A two-level U-Net (Ronneberger et al. 2015) with ``torch.cat`` skip connections."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .args import positive

__all__ = ["UNet", "unet"]


def _double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(in_channels, out_channels, 3, padding=1),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(out_channels, out_channels, 3, padding=1),
            relu2=nn.ReLU(),
        )
    )


class UNet(nn.Module):
    """A two-level U-Net (Ronneberger et al. 2015). Use :func:`unet` to build one."""

    def __init__(self, in_channels: int, base: int, out_channels: int) -> None:
        super().__init__()
        self.down1 = _double_conv(in_channels, base)
        self.down2 = _double_conv(base, 2 * base)
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _double_conv(2 * base, 4 * base)
        self.up2 = nn.ConvTranspose2d(4 * base, 2 * base, 2, stride=2)
        self.dec2 = _double_conv(4 * base, 2 * base)
        self.up1 = nn.ConvTranspose2d(2 * base, base, 2, stride=2)
        self.dec1 = _double_conv(2 * base, base)
        self.out = nn.Conv2d(base, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = self.down1(x)
        d2 = self.down2(self.pool(d1))
        b = self.bottleneck(self.pool(d2))
        u2 = self.dec2(torch.cat([self.up2(b), d2], dim=1))
        u1 = self.dec1(torch.cat([self.up1(u2), d1], dim=1))
        return self.out(u1)


def unet(in_channels: int = 1, base: int = 8, out_channels: int = 1) -> UNet:
    """A small U-Net with two down/up levels and ``torch.cat`` skip connections.

    Down path: double 3x3 conv, 2x2 max-pool (twice); a bottleneck double conv; up path:
    2x2 stride-2 ``ConvTranspose2d``, concatenation with the skip, double conv (twice); a 1x1
    output conv. Input sides must be divisible by 4 (e.g. 8x8 or 16x16).

    Parameters
    ----------
    in_channels, out_channels : int
        Image channels in and out.
    base : int
        Channels of the first level (doubled per level).

    Examples
    --------
    >>> net = unet()
    >>> net(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 1, 8, 8])
    """
    positive("in_channels", in_channels)
    positive("base", base)
    positive("out_channels", out_channels)
    return UNet(in_channels, base, out_channels)
