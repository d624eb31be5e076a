"""The squeeze-and-excitation gate (Hu et al. 2018) in a small network."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .args import positive

__all__ = ["SqueezeExcite", "SEBlock", "se_block"]


class SqueezeExcite(nn.Module):
    """The squeeze-and-excitation gate (Hu et al. 2018).

    ``x * sigmoid(up(relu(down(mean_hw(x)))))``, one gate value per channel.
    """

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.down = nn.Linear(channels, channels // reduction)
        self.up = nn.Linear(channels // reduction, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3))
        s = torch.sigmoid(self.up(torch.relu(self.down(s))))
        return x * s.unsqueeze(-1).unsqueeze(-1)


class SEBlock(nn.Module):
    """Stem conv + ReLU, a squeeze-and-excitation gate, global pool, linear.

    Use :func:`se_block` to build one.
    """

    def __init__(
        self, image_channels: int, channels: int, reduction: int, num_classes: int
    ) -> None:
        super().__init__()
        self.stem = nn.Conv2d(image_channels, channels, 3, padding=1)
        self.se = SqueezeExcite(channels, reduction)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.se(torch.relu(self.stem(x)))
        return self.fc(x.mean((2, 3)))


def se_block(
    channels: int = 8, reduction: int = 4, *, image_channels: int = 3, num_classes: int = 10
) -> SEBlock:
    """A squeeze-and-excitation block in a small network.

    Parameters
    ----------
    channels : int
        Channels of the stem conv and of the gated feature map.
    reduction : int
        The gate's bottleneck has ``channels // reduction`` units; must divide ``channels``.
    image_channels, num_classes : int
        Input image channels and output classes.

    Examples
    --------
    >>> net = se_block()
    >>> net.se.down
    Linear(in_features=8, out_features=2, bias=True)
    >>> net(torch.zeros(2, 3, 8, 8)).shape
    torch.Size([2, 10])
    """
    for k, v in dict(
        channels=channels,
        reduction=reduction,
        image_channels=image_channels,
        num_classes=num_classes,
    ).items():
        positive(k, v)
    if channels % reduction:
        raise ConfigError(f"reduction {reduction} must divide channels {channels}")
    return SEBlock(image_channels, channels, reduction, num_classes)
