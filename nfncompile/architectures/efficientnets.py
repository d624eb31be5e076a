"""EfficientNet-style MBConv blocks (Tan & Le 2019) in small networks, in two spellings.

:func:`efficientnet_block` writes them as torchvision does: stochastic depth is a function that
``torch.fx`` keeps as one opaque call (:func:`stochastic_depth`, wrapped with
:func:`torch.fx.wrap` like torchvision's ``ops.stochastic_depth``), which no symmetry rule
knows. :func:`tf_efficientnet` writes them as timm's ``tf_efficientnet`` family does: every conv
is a :class:`Conv2dSame`, whose TensorFlow "SAME" padding is computed from the input size in
its forward, which ``torch.fx`` cannot trace symbolically (the tracer reads it with the input's
shapes fixed).
"""

from __future__ import annotations

import math

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .args import positive, positive_tuple

__all__ = [
    "stochastic_depth",
    "Conv2dSame",
    "MBConv",
    "EfficientNetBlocks",
    "efficientnet_block",
    "tf_efficientnet",
]


def stochastic_depth(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Drop whole samples with probability ``p`` in training (rescaling the others), as
    torchvision's ``ops.stochastic_depth(mode="row")``; the identity in eval mode.

    Wrapped with :func:`torch.fx.wrap`: a traced model calls it as one opaque function.

    >>> x = torch.ones(2, 3)
    >>> torch.equal(stochastic_depth(x, 0.5, training=False), x)
    True
    """
    if not training or p == 0.0:
        return x
    keep = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device)
    return x * keep.bernoulli_(1.0 - p).div_(1.0 - p)


torch.fx.wrap("stochastic_depth")


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> int:
    """Total padding that makes a conv's output ``ceil(size / stride)`` long (TensorFlow's
    "SAME").

    >>> same_padding(8, 3, 2, 1), same_padding(7, 3, 2, 1), same_padding(8, 1, 1, 1)
    (1, 2, 0)
    """
    return max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)


class Conv2dSame(nn.Conv2d):
    """A ``Conv2d`` with TensorFlow "SAME" padding computed from the input size, as timm's
    ``Conv2dSame`` (the ``tf_*`` models): ``max`` and ``if`` on traced sizes make its forward
    untraceable by ``torch.fx``.

    >>> conv = Conv2dSame(3, 4, 3, stride=2)
    >>> conv(torch.zeros(1, 3, 7, 7)).shape
    torch.Size([1, 4, 4, 4])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, 0, 1, groups, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        ph = same_padding(ih, self.kernel_size[0], self.stride[0], self.dilation[0])
        pw = same_padding(iw, self.kernel_size[1], self.stride[1], self.dilation[1])
        if ph > 0 or pw > 0:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _conv(same: bool, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Module:
    if same:
        return Conv2dSame(cin, cout, k, stride, groups, bias=False)
    return nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)


class MBConv(nn.Module):
    """The MBConv block: 1x1 expand + BN + SiLU, depthwise kxk + BN + SiLU, squeeze-and-excite
    (``x * sigmoid(up(silu(down(mean_hw(x)))))`` with 1x1 convs), 1x1 project + BN; with
    stochastic depth and the residual add when the stride is 1 and the width unchanged."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        expand: int,
        stride: int,
        drop_path: float,
        same: bool,
    ) -> None:
        super().__init__()
        hidden = in_channels * expand
        squeeze = max(1, in_channels // 4)
        self.expand = _conv(same, in_channels, hidden, 1)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.depthwise = _conv(same, hidden, hidden, 3, stride, groups=hidden)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.se_down = nn.Conv2d(hidden, squeeze, 1)
        self.se_up = nn.Conv2d(squeeze, hidden, 1)
        self.project = _conv(same, hidden, out_channels, 1)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.drop_path = drop_path
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.bn1(self.expand(x)))
        h = F.silu(self.bn2(self.depthwise(h)))
        s = torch.sigmoid(self.se_up(F.silu(self.se_down(h.mean((2, 3), keepdim=True)))))
        h = self.bn3(self.project(h * s))
        if self.use_residual:  # fixed at construction: no data-dependent control flow
            h = x + stochastic_depth(h, self.drop_path, self.training)
        return h


class EfficientNetBlocks(nn.Module):
    """Stem conv + BN + SiLU, MBConv blocks, 1x1 head conv + BN + SiLU, global pool, linear.

    Use :func:`efficientnet_block` or :func:`tf_efficientnet` to build one.
    """

    def __init__(
        self,
        image_channels: int,
        widths: tuple,
        strides: tuple,
        expand: int,
        head: int,
        num_classes: int,
        drop_path: float,
        same: bool,
    ) -> None:
        super().__init__()
        self.stem = _conv(same, image_channels, widths[0], 3, strides[0])
        self.bn = nn.BatchNorm2d(widths[0])
        self.blocks = nn.Sequential(
            *[
                MBConv(cin, cout, expand, stride, drop_path, same)
                for cin, cout, stride in zip(widths, widths[1:], strides[1:])
            ]
        )
        self.head = _conv(same, widths[-1], head, 1)
        self.bn_head = nn.BatchNorm2d(head)
        self.fc = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.silu(self.bn(self.stem(x))))
        x = F.silu(self.bn_head(self.head(x)))
        return self.fc(x.mean((2, 3)))


def _build(
    widths: tuple,
    strides: tuple,
    expand: int,
    head: int,
    drop_path: float,
    image_channels: int,
    num_classes: int,
    same: bool,
) -> EfficientNetBlocks:
    for k, v in dict(
        expand=expand, head=head, image_channels=image_channels, num_classes=num_classes
    ).items():
        positive(k, v)
    widths = positive_tuple("widths", widths)
    if len(strides) != len(widths) or any(s not in (1, 2) for s in strides):
        raise ConfigError(
            f"strides must give 1 or 2 for the stem and each block ({len(widths)} values), "
            f"got {strides!r}"
        )
    if not 0.0 <= drop_path < 1.0:
        raise ConfigError(f"drop_path must be in [0, 1), got {drop_path!r}")
    return EfficientNetBlocks(
        image_channels, widths, strides, expand, head, num_classes, drop_path, same
    )


def efficientnet_block(
    channels: int = 8,
    depth: int = 2,
    expand: int = 4,
    head: int = 16,
    drop_path: float = 0.2,
    *,
    image_channels: int = 3,
    num_classes: int = 10,
) -> EfficientNetBlocks:
    """EfficientNet-B0-style residual MBConv blocks (with squeeze-and-excite and a wrapped
    stochastic depth) in a small network.

    Parameters
    ----------
    channels : int
        Width of the stem and of the residual stream every block adds into.
    depth : int
        Number of MBConv blocks (all stride 1, all residual).
    expand : int
        Expansion factor of the blocks' depthwise convs.
    head : int
        Channels of the 1x1 head conv before pooling.
    drop_path : float
        Stochastic depth rate (training only).
    image_channels, num_classes : int
        Input image channels and output classes.

    Examples
    --------
    >>> net = efficientnet_block()
    >>> len(net.blocks), net.blocks[0].depthwise.groups, net.blocks[0].se_down.out_channels
    (2, 32, 2)
    >>> net(torch.zeros(2, 3, 8, 8)).shape
    torch.Size([2, 10])
    """
    positive("channels", channels)
    positive("depth", depth)
    widths = (channels,) * (depth + 1)
    return _build(
        widths, (1,) * (depth + 1), expand, head, drop_path, image_channels, num_classes, False
    )


def tf_efficientnet(
    widths: tuple = (8, 12, 12),
    strides: tuple = (2, 2, 1),
    expand: int = 4,
    head: int = 16,
    drop_path: float = 0.2,
    *,
    image_channels: int = 3,
    num_classes: int = 10,
) -> EfficientNetBlocks:
    """A small tf_efficientnet: every conv a :class:`Conv2dSame` ("SAME" padding computed in
    the forward, which ``torch.fx`` cannot trace), MBConv blocks with squeeze-and-excite and
    stochastic depth.

    Parameters
    ----------
    widths : tuple of int
        The stem's width, then each block's output width; a block whose stride is 1 and width
        unchanged adds into a residual stream.
    strides : tuple of {1, 2}
        The stem's stride, then each block's depthwise stride.
    expand, head, drop_path, image_channels, num_classes
        As in :func:`efficientnet_block`.

    Examples
    --------
    >>> net = tf_efficientnet()
    >>> type(net.stem).__name__, [b.use_residual for b in net.blocks]
    ('Conv2dSame', [False, True])
    >>> net(torch.zeros(2, 3, 9, 9)).shape
    torch.Size([2, 10])
    """
    return _build(
        tuple(widths), tuple(strides), expand, head, drop_path, image_channels, num_classes, True
    )
