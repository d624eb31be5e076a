"""Anti-aliased downsampling (Zhang 2019): a fixed binomial blur, the same for every channel,
applied as a depthwise strided conv.

:class:`BlurPool2d` keeps its filter in a non-persistent buffer repeated over the channels
(as timm does), or, with ``expand=True``, one ``(1, 1, k, k)`` filter (a frozen parameter, so
it is in the state_dict) expanded to the channels at every call.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .args import positives

__all__ = ["BlurPool2d", "BlurPoolCNN", "blurpool_cnn"]


class BlurPool2d(nn.Module):
    """Reflect-pad, then a stride-``stride`` depthwise conv with a ``filt_size`` binomial blur.

    Parameters
    ----------
    channels : int
    filt_size, stride : int
    expand : bool
        Keep one filter (a frozen parameter) and ``expand`` it to ``channels`` at every call,
        instead of a non-persistent buffer repeated over the channels.
    """

    def __init__(
        self, channels: int, filt_size: int = 3, stride: int = 2, expand: bool = False
    ) -> None:
        super().__init__()
        coeffs = torch.tensor([float(math.comb(filt_size - 1, k)) for k in range(filt_size)])
        blur = (coeffs[:, None] * coeffs[None, :]) / coeffs.sum() ** 2
        if expand:
            self.filt = nn.Parameter(blur[None, None], requires_grad=False)
        else:
            self.register_buffer(
                "filt", blur[None, None].repeat(channels, 1, 1, 1), persistent=False
            )
        self.channels, self.filt_size, self.stride, self.expand = (
            channels,
            filt_size,
            stride,
            expand,
        )
        self.pad = [(filt_size - 1) // 2, filt_size // 2] * 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, self.pad, mode="reflect")
        weight = self.filt
        if self.expand:  # fixed at construction: no data-dependent control flow
            weight = weight.expand(self.channels, 1, self.filt_size, self.filt_size)
        return F.conv2d(x, weight, stride=self.stride, groups=self.channels)


class BlurPoolCNN(nn.Module):
    """Conv + ReLU, blur pool, conv + ReLU, blur pool, global pool, linear.

    Use :func:`blurpool_cnn` to build one."""

    def __init__(
        self, image_channels: int, channels: int, num_classes: int, expand_filter: bool
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(image_channels, channels, 3, padding=1)
        self.pool1 = BlurPool2d(channels, expand=expand_filter)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.pool2 = BlurPool2d(channels, expand=expand_filter)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(torch.relu(self.conv1(x)))
        x = self.pool2(torch.relu(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def blurpool_cnn(
    channels: int = 8,
    *,
    expand_filter: bool = False,
    image_channels: int = 3,
    num_classes: int = 10,
) -> BlurPoolCNN:
    """Two convs, each followed by a blur pool, in a small network.

    Parameters
    ----------
    channels : int
    expand_filter : bool
        Blur pools hold one filter and expand it to the channels at every call, instead of a
        non-persistent buffer repeated over the channels.
    image_channels, num_classes : int

    Examples
    --------
    >>> net = blurpool_cnn()
    >>> tuple(net.pool1.filt.shape), "pool1.filt" in net.state_dict()
    ((8, 1, 3, 3), False)
    >>> net(torch.zeros(2, 3, 8, 8)).shape
    torch.Size([2, 10])
    """
    positives(channels=channels, image_channels=image_channels, num_classes=num_classes)
    return BlurPoolCNN(image_channels, channels, num_classes, bool(expand_filter))
