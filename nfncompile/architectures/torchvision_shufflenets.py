"""ShuffleNetV2 as torchvision defines it (Ma et al. 2018), written here so that no download is
needed: a strided 3x3 stem and a max pool, three stages of units, a 1x1 conv, global pool and
a linear classifier.

A unit of stride 1 splits its channels in two, passes the first half through and sends the
second through a 1x1 conv, a depthwise 3x3 conv and another 1x1 conv; a unit of stride 2 (the
first of each stage) sends all of them through two branches. Either way the two halves are
concatenated and *shuffled*: viewed as ``(2, C / 2)``, transposed and flattened, so that the
next unit's split takes half of each. Every layer after a shuffle reads several spaces
interleaved position by position (:attr:`~nfncompile.spec.ParamSpec.order`).

Parameter names follow torchvision's (``conv1.0.weight``, ``stage2.0.branch1.0.weight``,
``stage3.1.branch2.3.weight``, ``conv5.0.weight``, ``fc.weight``); so do the shapes with its
channel settings (``STAGES_OUT_CHANNELS``). The catalogue entry uses narrower stages.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .args import positive, positive_tuple

__all__ = ["ShuffleUnit", "ShuffleNetV2", "shufflenetv2", "channel_shuffle", "STAGES_OUT_CHANNELS"]

#: torchvision's channels per width: stem, the three stages, the last 1x1 conv
STAGES_OUT_CHANNELS = {
    "x0_5": (24, 48, 96, 192, 1024),
    "x1_0": (24, 116, 232, 464, 1024),
    "x1_5": (24, 176, 352, 704, 1024),
    "x2_0": (24, 244, 488, 976, 2048),
}


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave ``groups`` equal runs of channels: channel ``j * (C / groups) + i`` moves to
    position ``i * groups + j``."""
    n, c, h, w = x.shape
    x = x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous()
    return x.view(n, c, h, w)


def _conv_bn(inp: int, oup: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True):
    layers: list = [
        nn.Conv2d(inp, oup, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(oup),
    ]
    return layers + [nn.ReLU(inplace=True)] if act else layers


class ShuffleUnit(nn.Module):
    """One ShuffleNetV2 unit: ``branch1`` (stride 2 only: depthwise 3x3, 1x1) and ``branch2``
    (1x1, depthwise 3x3, 1x1), concatenated and shuffled."""

    def __init__(self, inp: int, oup: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = oup // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                *_conv_bn(inp, inp, 3, stride, groups=inp, act=False), *_conv_bn(inp, half, 1)
            )
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            *_conv_bn(inp if stride > 1 else half, half, 1),
            *_conv_bn(half, half, 3, stride, groups=half, act=False),
            *_conv_bn(half, half, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:  # fixed at construction: no data-dependent control flow
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """Use :func:`shufflenetv2` to build one."""

    def __init__(self, repeats: tuple, channels: tuple, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(*_conv_bn(in_channels, channels[0], 3, 2))
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inp = channels[0]
        for k, (n, oup) in enumerate(zip(repeats, channels[1:4]), start=2):
            units = [ShuffleUnit(inp, oup, 2)] + [ShuffleUnit(oup, oup, 1) for _ in range(n - 1)]
            setattr(self, f"stage{k}", nn.Sequential(*units))
            inp = oup
        self.conv5 = nn.Sequential(*_conv_bn(inp, channels[4], 1))
        self.fc = nn.Linear(channels[4], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
        return self.fc(x.mean((2, 3)))


def shufflenetv2(
    stages_out_channels: tuple | str = "x1_0",
    stages_repeats: tuple = (4, 8, 4),
    num_classes: int = 1000,
    in_channels: int = 3,
) -> ShuffleNetV2:
    """ShuffleNetV2 (torchvision's ``shufflenet_v2_x1_0`` by default: 2.3M params).

    Parameters
    ----------
    stages_out_channels : str or tuple of 5 ints
        A torchvision width (``"x0_5"``, ``"x1_0"``, ``"x1_5"``, ``"x2_0"``) or the channels
        of the stem, the three stages (even) and the last 1x1 conv.
    stages_repeats : tuple of 3 ints
        Units per stage.

    Examples
    --------
    >>> sum(p.numel() for p in shufflenetv2().parameters())
    2278604
    >>> shufflenetv2("x0_5", num_classes=10)(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """
    if isinstance(stages_out_channels, str):
        if stages_out_channels not in STAGES_OUT_CHANNELS:
            raise ConfigError(
                f"unknown ShuffleNetV2 width {stages_out_channels!r}; valid widths: "
                f"{', '.join(STAGES_OUT_CHANNELS)}, or a tuple of 5 channel counts"
            )
        stages_out_channels = STAGES_OUT_CHANNELS[stages_out_channels]
    channels = positive_tuple("stages_out_channels", stages_out_channels)
    repeats = positive_tuple("stages_repeats", stages_repeats)
    if len(channels) != 5 or len(repeats) != 3:
        raise ConfigError(
            "stages_out_channels takes 5 channel counts (stem, 3 stages, last conv) and "
            f"stages_repeats 3 unit counts, got {list(channels)} and {list(repeats)}"
        )
    if any(c % 2 for c in channels[1:4]):
        raise ConfigError(
            f"a stage's channels must be even (the units split them in two), got {channels[1:4]}"
        )
    positive("num_classes", num_classes)
    positive("in_channels", in_channels)
    return ShuffleNetV2(repeats, channels, num_classes, in_channels)
