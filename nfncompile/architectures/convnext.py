"""The ConvNeXt block (Liu et al. 2022): depthwise 7x7 conv, channels-last LayerNorm and MLP,
layer scale, stochastic depth, residual add.

Stochastic depth is the identity in eval mode. By default the block writes it as an identity
module; ``wrapped_drop_path=True`` calls
:func:`~nfncompile.architectures.efficientnets.stochastic_depth` instead, a function
``torch.fx`` keeps as one opaque call (as torchvision's is), which no rule knows (the front
end probes it).
"""

from __future__ import annotations

import torch
import torch.fx
from torch import nn

from .args import positives
from .efficientnets import stochastic_depth

__all__ = ["ConvNeXtBlock", "ConvNeXtNet", "convnext_block"]


torch.fx.wrap("stochastic_depth")  # in this module too: its calls here stay opaque


class ConvNeXtBlock(nn.Module):
    """``x + drop_path(gamma * pw2(gelu(pw1(ln(dwconv(x))))))``, the MLP in channels-last.

    Parameters
    ----------
    channels : int
    drop_path : float
        Stochastic depth rate (training only).
    wrapped_drop_path : bool
        Call the opaque ``stochastic_depth`` (``torch.fx.wrap``) instead of an identity.
    """

    def __init__(self, channels: int, drop_path: float = 0.0, wrapped_drop_path: bool = False):
        super().__init__()
        self.dwconv = nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.pwconv1 = nn.Linear(channels, 4 * channels)
        self.pwconv2 = nn.Linear(4 * channels, channels)
        self.gamma = nn.Parameter(torch.full((channels,), 1e-1))
        self.drop_path = drop_path
        self.wrapped_drop_path = wrapped_drop_path
        self.drop = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        y = self.gamma * self.pwconv2(nn.functional.gelu(self.pwconv1(y)))
        y = y.permute(0, 3, 1, 2)
        if self.wrapped_drop_path:  # fixed at construction: no data-dependent control flow
            y = stochastic_depth(y, self.drop_path, self.training)
        else:
            y = self.drop(y)
        return x + y


class ConvNeXtNet(nn.Module):
    """Patchify stem (2x2, stride 2) + LayerNorm, ConvNeXt blocks, global pool, LayerNorm,
    linear. Use :func:`convnext_block` to build one."""

    def __init__(
        self, image_channels: int, channels: int, depth: int, num_classes: int, wrapped: bool
    ) -> None:
        super().__init__()
        self.stem = nn.Conv2d(image_channels, channels, 2, stride=2)
        self.blocks = nn.Sequential(
            *[ConvNeXtBlock(channels, 0.1, wrapped_drop_path=wrapped) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(self.norm(x.mean((2, 3))))


def convnext_block(
    channels: int = 8,
    depth: int = 1,
    *,
    wrapped_drop_path: bool = False,
    image_channels: int = 3,
    num_classes: int = 10,
) -> ConvNeXtNet:
    """ConvNeXt blocks on a patchify stem, in a small network.

    Parameters
    ----------
    channels : int
        Channels of the stem and of the residual stream.
    depth : int
        Number of blocks.
    wrapped_drop_path : bool
        Stochastic depth through the opaque ``stochastic_depth`` (as torchvision writes it)
        instead of an identity module.
    image_channels, num_classes : int
        Input image channels and output classes.

    Examples
    --------
    >>> net = convnext_block()
    >>> net.blocks[0].dwconv.groups, net.blocks[0].pwconv1
    (8, Linear(in_features=8, out_features=32, bias=True))
    >>> net(torch.zeros(2, 3, 8, 8)).shape
    torch.Size([2, 10])
    """
    positives(
        channels=channels, depth=depth, image_channels=image_channels, num_classes=num_classes
    )
    return ConvNeXtNet(image_channels, channels, depth, num_classes, bool(wrapped_drop_path))
