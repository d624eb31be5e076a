"""Weight-standardised convolutions (BiT's ``StdConv2d``, NF-ResNet's ``ScaledStdConv2d``) in a
small residual network.

The conv normalises its weight per output channel before using it: the weight is reshaped to
``(1, out, in * kh * kw)``, normalised by :func:`torch.nn.functional.batch_norm` in training
mode (statistics over the flattened ``in * kh * kw`` axis), reshaped back and convolved. The
statistics are symmetric in the input channels, so the network keeps the plain ResNet's
neuron symmetries.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .args import positives

__all__ = ["StdConv2d", "ScaledStdConv2d", "StdConvResNet", "std_conv_block"]


class StdConv2d(nn.Conv2d):
    """A conv whose weight is standardised per output channel (Kolesnikov et al. 2020)."""

    def __init__(self, *args, eps: float = 1e-6, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.batch_norm(
            self.weight.reshape(1, self.out_channels, -1), None, None,
            training=True, momentum=0.0, eps=self.eps,
        ).reshape_as(self.weight)  # fmt: skip
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class ScaledStdConv2d(nn.Conv2d):
    """Standardised weight times a learned per-channel gain and ``fan_in ** -0.5`` (Brock et
    al. 2021)."""

    def __init__(self, *args, eps: float = 1e-6, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.ones(self.out_channels, 1, 1, 1))
        self.scale = self.weight[0].numel() ** -0.5
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.batch_norm(
            self.weight.reshape(1, self.out_channels, -1), None, None,
            weight=(self.gain * self.scale).view(-1), training=True, momentum=0.0, eps=self.eps,
        ).reshape_as(self.weight)  # fmt: skip
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class StdConvResNet(nn.Module):
    """Scaled-standardised stem conv + ReLU, one residual block of two standardised convs
    (``StdConv2d`` then ``ScaledStdConv2d``), global pool, linear.

    Use :func:`std_conv_block` to build one."""

    def __init__(self, image_channels: int, channels: int, num_classes: int) -> None:
        super().__init__()
        self.stem = ScaledStdConv2d(image_channels, channels, 3, padding=1)
        self.conv1 = StdConv2d(channels, channels, 3, padding=1, bias=False)
        self.conv2 = ScaledStdConv2d(channels, channels, 3, padding=1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def std_conv_block(
    channels: int = 8, *, image_channels: int = 3, num_classes: int = 10
) -> StdConvResNet:
    """A residual block of weight-standardised convs in a small network.

    Examples
    --------
    >>> net = std_conv_block()
    >>> type(net.conv1).__name__, tuple(net.conv2.gain.shape)
    ('StdConv2d', (8, 1, 1, 1))
    >>> net(torch.zeros(2, 3, 8, 8)).shape
    torch.Size([2, 10])
    """
    positives(channels=channels, image_channels=image_channels, num_classes=num_classes)
    return StdConvResNet(image_channels, channels, num_classes)
