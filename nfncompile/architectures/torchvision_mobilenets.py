"""MobileNetV2 as torchvision defines it (Sandler et al. 2018), written here so that no download
is needed: a strided stem, 17 inverted residual blocks (1x1 expand, 3x3 depthwise, 1x1
project), a 1x1 conv to 1280 channels, global pool and a linear classifier (torchvision's dropout
before it is left out: forwards are deterministic).

Parameter names follow torchvision's (``features.0.0.weight``, ``features.1.conv.0.0.weight``,
``classifier.1.weight``); so do the shapes at ``width_mult=1``. A smaller ``width_mult`` scales
the channels (rounded to multiples of 8, as torchvision does); the catalogue entry uses 0.25.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .args import positive

__all__ = ["InvertedResidual", "MobileNetV2", "mobilenetv2"]

#: (expansion t, channels c, blocks n, first stride s) per stage, as in the paper.
SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _divisible(v: float, divisor: int = 8) -> int:
    """torchvision's ``_make_divisible``: round to a multiple of 8, never below 90% of v."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def _conv_bn_act(inp: int, oup: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """Expand (1x1, unless t = 1), depthwise 3x3, project (1x1 + BN, no activation); a residual
    add when the stride is 1 and the channel count is kept."""

    def __init__(self, inp: int, oup: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = inp * expand
        layers = [] if expand == 1 else [_conv_bn_act(inp, hidden, 1)]
        layers += [
            _conv_bn_act(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, oup, 1, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and inp == oup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        if self.use_residual:  # fixed at construction: no data-dependent control flow
            out = out + x
        return out


class MobileNetV2(nn.Module):
    """Use :func:`mobilenetv2` to build one."""

    def __init__(self, width_mult: float, num_classes: int, in_channels: int) -> None:
        super().__init__()
        inp = _divisible(32 * width_mult)
        last = _divisible(1280 * max(1.0, width_mult))
        features: list = [_conv_bn_act(in_channels, inp, 3, 2)]
        for t, c, n, s in SETTINGS:
            oup = _divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(inp, oup, s if i == 0 else 1, t))
                inp = oup
        features.append(_conv_bn_act(inp, last, 1))
        self.features = nn.Sequential(*features)
        # torchvision's dropout (p=0.2) is left out, so that a forward is deterministic; the
        # identity keeps the classifier's parameter names (classifier.1.weight)
        self.classifier = nn.Sequential(nn.Identity(), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


def mobilenetv2(
    width_mult: float = 1.0, num_classes: int = 1000, in_channels: int = 3
) -> MobileNetV2:
    """MobileNetV2 (262 weight tensors with BN, 3.5M params at ``width_mult=1``).

    Examples
    --------
    >>> sum(p.numel() for p in mobilenetv2().parameters())
    3504872
    >>> mobilenetv2(0.25)(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 1000])
    """
    if not isinstance(width_mult, (int, float)) or isinstance(width_mult, bool) or width_mult <= 0:
        raise ConfigError(f"width_mult must be a positive number, got {width_mult!r}")
    positive("num_classes", num_classes)
    positive("in_channels", in_channels)
    return MobileNetV2(float(width_mult), num_classes, in_channels)
