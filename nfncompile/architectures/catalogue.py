"""A catalogue of small source architectures: the networks whose weights NFNs process.

Every factory returns a plain ``torch.nn.Module`` (pure torch, no torchvision) with readable
parameter names (``conv1.weight``, ``fc.bias``, ...: state_dict keys matter for model zoos),
keyword arguments with small defaults so that tracing and running stay in milliseconds on a
CPU, and no data-dependent control flow, so ``torch.fx.symbolic_trace`` works on all of them.

:data:`CATALOGUE` names one default instance of each, with an example input shape (batch
dim included); :func:`get` looks one up.

Examples
--------
>>> import torch
>>> arch = get("small_cnn")
>>> arch.input_shape
(2, 1, 8, 8)
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> model = arch.factory()
>>> model(torch.randn(arch.input_shape)).shape
torch.Size([2, 10])
>>> [k for k in model.state_dict()][:4]
['conv1.weight', 'conv1.bias', 'conv2.weight', 'conv2.bias']
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import importlib
import importlib.util
import math
import os
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, ModelArgumentError
from ..nn.activations import make_activation

__all__ = [
    "Architecture",
    "CATALOGUE",
    "FACTORIES",
    "get",
    "names",
    "mlp",
    "siren",
    "lenet",
    "small_cnn",
    "resnet_cifar",
    "resnet20",
    "densenet_block",
    "mobilenetv2_block",
    "se_block",
    "unet",
    "vgg",
]


def _positive(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive int, got {value!r}")
    return value


def _widths(name: str, values: Sequence[int]) -> tuple[int, ...]:
    if isinstance(values, int):
        values = (values,)
    return tuple(_positive(f"{name}[{i}]", v) for i, v in enumerate(values))


# --------------------------------------------------------------------------------------------
# MLPs
# --------------------------------------------------------------------------------------------


def mlp(
    in_features: int = 16,
    hidden: Sequence[int] = (32, 32),
    out_features: int = 10,
    activation: str = "relu",
) -> nn.Sequential:
    """A multilayer perceptron ``fc1, act1, fc2, act2, ..., fcN``.

    Parameters
    ----------
    in_features, out_features : int
        Input and output widths.
    hidden : sequence of int
        Hidden widths (may be empty: a single linear layer).
    activation : str
        A name from :data:`nfncompile.nn.activations.ACTIVATIONS`.

    Examples
    --------
    >>> net = mlp(4, (8,), 2, activation="tanh")
    >>> list(net.state_dict())
    ['fc1.weight', 'fc1.bias', 'fc2.weight', 'fc2.bias']
    >>> net(torch.zeros(3, 4)).shape
    torch.Size([3, 2])
    """
    widths = (_positive("in_features", in_features), *_widths("hidden", hidden))
    widths += (_positive("out_features", out_features),)
    make_activation(activation)  # validate the name before building anything
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i in range(len(widths) - 1):
        layers[f"fc{i + 1}"] = nn.Linear(widths[i], widths[i + 1])
        if i < len(widths) - 2:
            layers[f"act{i + 1}"] = make_activation(activation)
    return nn.Sequential(layers)


class Siren(nn.Module):
    """A SIREN (Sitzmann et al. 2020): ``sin(w0 * linear(x))`` hidden layers, a linear output.

    Initialisation follows the paper: the first layer's weights are uniform in
    ``[-1/fan_in, 1/fan_in]``, later ones in ``[-sqrt(6/fan_in)/w0, sqrt(6/fan_in)/w0]``.
    Use :func:`siren` to build one.
    """

    def __init__(
        self, in_features: int, hidden: Sequence[int], out_features: int, w0: float
    ) -> None:
        super().__init__()
        self.w0 = float(w0)
        widths = (in_features, *hidden)
        self.hidden = nn.ModuleList(
            nn.Linear(widths[i], widths[i + 1]) for i in range(len(widths) - 1)
        )
        self.out = nn.Linear(widths[-1], out_features)
        with torch.no_grad():
            for i, layer in enumerate([*self.hidden, self.out]):
                fan_in = layer.in_features
                bound = 1.0 / fan_in if i == 0 else math.sqrt(6.0 / fan_in) / self.w0
                layer.weight.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden:
            x = torch.sin(self.w0 * layer(x))
        return self.out(x)


def siren(
    in_features: int = 2,
    hidden: Sequence[int] = (32, 32, 32),
    out_features: int = 1,
    w0: float = 30.0,
) -> Siren:
    """A SIREN implicit neural representation (e.g. coordinates -> pixel value).

    Parameters
    ----------
    in_features, out_features : int
        Coordinate and value dimensions.
    hidden : sequence of int
        Widths of the sine layers.
    w0 : float
        The frequency factor (30 in the paper).

    Examples
    --------
    >>> net = siren(2, (8, 8), 1)
    >>> list(net.state_dict())
    ['hidden.0.weight', 'hidden.0.bias', 'hidden.1.weight', 'hidden.1.bias', 'out.weight', 'out.bias']
    >>> net(torch.zeros(5, 2)).shape
    torch.Size([5, 1])
    """
    _positive("in_features", in_features)
    _positive("out_features", out_features)
    hidden = _widths("hidden", hidden)
    if not hidden:
        raise ConfigError("siren needs at least one hidden (sine) layer, got hidden=()")
    if not isinstance(w0, (int, float)) or isinstance(w0, bool) or w0 <= 0:
        raise ConfigError(f"w0 must be a positive number, got {w0!r}")
    return Siren(in_features, hidden, out_features, w0)


# --------------------------------------------------------------------------------------------
# plain CNNs
# --------------------------------------------------------------------------------------------


def lenet(
    in_channels: int = 1,
    num_classes: int = 10,
    image_size: int = 8,
    channels: Sequence[int] = (6, 16),
    hidden: int = 32,
) -> nn.Sequential:
    """A LeNet-style CNN: (3x3 conv, ReLU, 2x2 max-pool) per channel count, flatten, 2 linears.

    The flatten keeps the remaining spatial positions (``image_size / 2**len(channels)`` per
    side), so ``fc1`` reads channels x positions.

    Parameters
    ----------
    in_channels, num_classes : int
        Image channels and classes.
    image_size : int
        Side of the square input; divisible by ``2 ** len(channels)``.
    channels : sequence of int
        Output channels of each conv.
    hidden : int
        Width of the hidden linear layer.

    Examples
    --------
    >>> net = lenet()
    >>> net.fc1.in_features  # 16 channels x 2 x 2 positions
    64
    >>> net(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """
    _positive("in_channels", in_channels)
    _positive("num_classes", num_classes)
    _positive("image_size", image_size)
    _positive("hidden", hidden)
    channels = _widths("channels", channels)
    factor = 2 ** len(channels)
    if image_size % factor:
        raise ConfigError(
            f"image_size must be divisible by 2**len(channels) = {factor}, got {image_size}"
        )
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    c = in_channels
    for i, out in enumerate(channels, 1):
        layers[f"conv{i}"] = nn.Conv2d(c, out, 3, padding=1)
        layers[f"relu{i}"] = nn.ReLU()
        layers[f"pool{i}"] = nn.MaxPool2d(2)
        c = out
    side = image_size // factor
    layers["flatten"] = nn.Flatten()
    layers["fc1"] = nn.Linear(c * side * side, hidden)
    layers[f"relu{len(channels) + 1}"] = nn.ReLU()
    layers["fc2"] = nn.Linear(hidden, num_classes)
    return nn.Sequential(layers)


class SmallCNN(nn.Module):
    """The CNN of the Small CNN Zoo (Unterthiner et al. 2020). Use :func:`small_cnn`."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, act: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=2, padding=1)
        self.act1 = make_activation(act)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.act2 = make_activation(act)
        self.conv3 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.act3 = make_activation(act)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.conv1(x))
        x = self.act2(self.conv2(x))
        x = self.act3(self.conv3(x))
        x = x.mean((2, 3))  # global average pool
        return self.fc(x)


def small_cnn(
    in_channels: int = 1, channels: int = 16, num_classes: int = 10, activation: str = "relu"
) -> SmallCNN:
    """The Small CNN Zoo network: three 3x3 stride-2 convs, global average pool, linear.

    Parameters
    ----------
    in_channels : int
        Image channels (1 for the 8x8 sklearn digits the zoo tasks use).
    channels : int
        Channels of every conv.
    num_classes : int
        Output classes.
    activation : str
        A name from :data:`nfncompile.nn.activations.ACTIVATIONS` (the zoo varies it).

    Examples
    --------
    >>> net = small_cnn()
    >>> list(net.state_dict())
    ['conv1.weight', 'conv1.bias', 'conv2.weight', 'conv2.bias', 'conv3.weight', 'conv3.bias', 'fc.weight', 'fc.bias']
    >>> net(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """
    _positive("in_channels", in_channels)
    _positive("channels", channels)
    _positive("num_classes", num_classes)
    return SmallCNN(in_channels, channels, num_classes, activation)


class _VGG(nn.Module):
    def __init__(self, features: nn.Sequential, classifier: nn.Sequential) -> None:
        super().__init__()
        self.features = features
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def vgg(
    in_channels: int = 3,
    cfg: Sequence[int | str] = (8, "M", 16, "M"),
    num_classes: int = 10,
    image_size: int = 8,
    hidden: int = 32,
) -> nn.Module:
    """A VGG-style network: 3x3 conv + ReLU stacks with max-pooling, then an MLP classifier.

    Parameters
    ----------
    in_channels, num_classes : int
        Image channels and classes.
    cfg : sequence of int or "M"
        Conv output channels, ``"M"`` for a 2x2 max-pool.
    image_size : int
        Side of the square input; divisible by ``2 ** cfg.count("M")``.
    hidden : int
        Width of the classifier's hidden layer.

    Examples
    --------
    >>> net = vgg()
    >>> [k for k in net.state_dict() if k.endswith("weight")]
    ['features.conv1.weight', 'features.conv2.weight', 'classifier.fc1.weight', 'classifier.fc2.weight']
    >>> net(torch.zeros(2, 3, 8, 8)).shape
    torch.Size([2, 10])
    """
    _positive("in_channels", in_channels)
    _positive("num_classes", num_classes)
    _positive("image_size", image_size)
    _positive("hidden", hidden)
    feats: OrderedDict[str, nn.Module] = OrderedDict()
    c, side, n_conv, n_pool = in_channels, image_size, 0, 0
    for i, item in enumerate(cfg):
        if item == "M":
            if side % 2:
                raise ConfigError(f"cfg[{i}]: cannot max-pool a {side}x{side} feature map")
            n_pool += 1
            feats[f"pool{n_pool}"] = nn.MaxPool2d(2)
            side //= 2
        else:
            out = _positive(f"cfg[{i}]", item) if not isinstance(item, str) else None
            if out is None:
                raise ConfigError(f"cfg[{i}]: expected a channel count or 'M', got {item!r}")
            n_conv += 1
            feats[f"conv{n_conv}"] = nn.Conv2d(c, out, 3, padding=1)
            feats[f"relu{n_conv}"] = nn.ReLU()
            c = out
    if n_conv == 0:
        raise ConfigError(f"cfg needs at least one conv layer, got {list(cfg)}")
    classifier = nn.Sequential(
        OrderedDict(
            flatten=nn.Flatten(),
            fc1=nn.Linear(c * side * side, hidden),
            relu=nn.ReLU(),
            fc2=nn.Linear(hidden, num_classes),
        )
    )
    return _VGG(nn.Sequential(feats), classifier)


# --------------------------------------------------------------------------------------------
# ResNet (CIFAR)
# --------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN layers with a residual connection (He et al. 2016).

    The shortcut is the identity, or a 1x1 conv + BN (``downsample``) when the stride or the
    channel count changes.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + shortcut)


class ResNetCIFAR(nn.Module):
    """A CIFAR ResNet: conv stem, 3 stages of ``n`` BasicBlocks, global pool, linear.

    Use :func:`resnet_cifar` to build one.
    """

    def __init__(self, n: int, width: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        c = width
        stages = []
        for stage, mult in enumerate((1, 2, 4)):
            blocks = []
            for i in range(n):
                stride = 2 if (stage > 0 and i == 0) else 1
                blocks.append(BasicBlock(c, width * mult, stride))
                c = width * mult
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean((2, 3)))


def resnet_cifar(
    depth: int = 20, width: int = 16, num_classes: int = 10, in_channels: int = 3
) -> ResNetCIFAR:
    """The CIFAR ResNet of He et al. (2016) with ``depth = 6n + 2`` layers.

    Stages have ``width``, ``2 * width`` and ``4 * width`` channels; shortcuts that change
    shape are a 1x1 conv + BatchNorm.

    Parameters
    ----------
    depth : int
        ``6n + 2`` for a positive ``n`` (8, 14, 20, 32, 44, 56, 110, ...).
    width : int
        Channels of the first stage.
    num_classes, in_channels : int
        Output classes and image channels.

    Raises
    ------
    ConfigError
        When ``depth`` is not ``6n + 2``.

    Examples
    --------
    >>> net = resnet_cifar(8, width=4)
    >>> sum(isinstance(m, nn.Conv2d) for m in net.modules())  # 1 + 3 * 2 + 2 shortcuts
    9
    >>> net(torch.zeros(2, 3, 8, 8)).shape
    torch.Size([2, 10])
    >>> resnet_cifar(21)
    Traceback (most recent call last):
    ...
    nfncompile.errors.ConfigError: resnet_cifar: depth must be 6n + 2 (8, 14, 20, 32, 44, 56, 110, ...), got 21
    """
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 8 or (depth - 2) % 6:
        raise ConfigError(
            f"resnet_cifar: depth must be 6n + 2 (8, 14, 20, 32, 44, 56, 110, ...), got {depth!r}"
        )
    _positive("width", width)
    _positive("num_classes", num_classes)
    _positive("in_channels", in_channels)
    return ResNetCIFAR((depth - 2) // 6, width, num_classes, in_channels)


def resnet20(width: int = 16, num_classes: int = 10, in_channels: int = 3) -> ResNetCIFAR:
    """``resnet_cifar(depth=20, ...)``.

    Examples
    --------
    >>> sum(p.numel() for p in resnet20().parameters())
    272474
    """
    return resnet_cifar(20, width, num_classes, in_channels)


# --------------------------------------------------------------------------------------------
# blocks of modern CNNs, each wrapped into a full small network
# --------------------------------------------------------------------------------------------


class _DenseLayer(nn.Module):
    def __init__(self, in_channels: int, growth: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(torch.relu(self.bn(x)))], dim=1)


class DenseNetBlock(nn.Module):
    """Stem conv, one dense block, transition (BN-ReLU-1x1 conv), global pool, linear.

    Use :func:`densenet_block` to build one.
    """

    def __init__(
        self,
        image_channels: int,
        in_channels: int,
        growth: int,
        layers: int,
        out_channels: int,
        num_classes: int,
    ) -> None:
        super().__init__()
        self.stem = nn.Conv2d(image_channels, in_channels, 3, padding=1, bias=False)
        self.block = nn.Sequential(
            *(_DenseLayer(in_channels + i * growth, growth) for i in range(layers))
        )
        c = in_channels + layers * growth
        self.bn = nn.BatchNorm2d(c)
        self.transition = nn.Conv2d(c, out_channels, 1, bias=False)
        self.fc = nn.Linear(out_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(self.stem(x))
        x = self.transition(torch.relu(self.bn(x)))
        return self.fc(torch.relu(x).mean((2, 3)))


def densenet_block(
    in_channels: int = 8,
    growth: int = 4,
    layers: int = 3,
    *,
    image_channels: int = 3,
    out_channels: int = 8,
    num_classes: int = 10,
) -> DenseNetBlock:
    """A DenseNet block (Huang et al. 2017) in a small network.

    Each layer is BN-ReLU-3x3 conv producing ``growth`` channels, concatenated onto its input
    along the channel axis (``torch.cat``), so the block ends with
    ``in_channels + layers * growth`` channels.

    Parameters
    ----------
    in_channels : int
        Channels entering the dense block (the stem's output).
    growth : int
        Channels each layer adds.
    layers : int
        Number of dense layers.
    image_channels : int
        Channels of the network's input image.
    out_channels : int
        Channels after the 1x1 transition conv.
    num_classes : int
        Output classes.

    Examples
    --------
    >>> net = densenet_block()
    >>> net.transition.in_channels  # 8 + 3 * 4
    20
    >>> net(torch.zeros(2, 3, 8, 8)).shape
    torch.Size([2, 10])
    """
    for k, v in dict(
        in_channels=in_channels,
        growth=growth,
        layers=layers,
        image_channels=image_channels,
        out_channels=out_channels,
        num_classes=num_classes,
    ).items():
        _positive(k, v)
    return DenseNetBlock(image_channels, in_channels, growth, layers, out_channels, num_classes)


class InvertedResidual(nn.Module):
    """The MobileNetV2 block (Sandler et al. 2018): 1x1 expand, depthwise 3x3, 1x1 project.

    The residual add is used when the stride is 1 and the channel count is unchanged.
    """

    def __init__(self, in_channels: int, out_channels: int, expand: int, stride: int) -> None:
        super().__init__()
        hidden = in_channels * expand
        self.expand = nn.Conv2d(in_channels, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.depthwise = nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.project = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU6()
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.expand(x)))
        out = self.act(self.bn2(self.depthwise(out)))
        out = self.bn3(self.project(out))
        if self.use_residual:  # fixed at construction: no data-dependent control flow
            out = out + x
        return out


class MobileNetV2Block(nn.Module):
    """Stem conv + BN + ReLU6, one inverted residual block, global pool, linear.

    Use :func:`mobilenetv2_block` to build one.
    """

    def __init__(
        self,
        image_channels: int,
        in_channels: int,
        out_channels: int,
        expand: int,
        stride: int,
        num_classes: int,
    ) -> None:
        super().__init__()
        self.stem = nn.Conv2d(image_channels, in_channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(in_channels)
        self.act = nn.ReLU6()
        self.block = InvertedResidual(in_channels, out_channels, expand, stride)
        self.fc = nn.Linear(out_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(self.act(self.bn(self.stem(x))))
        return self.fc(x.mean((2, 3)))


def mobilenetv2_block(
    in_channels: int = 8,
    expand: int = 4,
    out_channels: int | None = None,
    stride: int = 1,
    *,
    image_channels: int = 3,
    num_classes: int = 10,
) -> MobileNetV2Block:
    """A MobileNetV2 inverted residual block in a small network.

    Parameters
    ----------
    in_channels : int
        Channels entering the block (the stem's output).
    expand : int
        Expansion factor: the depthwise conv has ``in_channels * expand`` channels.
    out_channels : int, optional
        Channels leaving the block (default ``in_channels``, which keeps the residual add).
    stride : {1, 2}
        Stride of the depthwise conv; 2 drops the residual add.
    image_channels, num_classes : int
        Input image channels and output classes.

    Examples
    --------
    >>> net = mobilenetv2_block()
    >>> net.block.depthwise.groups
    32
    >>> net(torch.zeros(2, 3, 8, 8)).shape
    torch.Size([2, 10])
    """
    out_channels = in_channels if out_channels is None else out_channels
    for k, v in dict(
        in_channels=in_channels,
        expand=expand,
        out_channels=out_channels,
        image_channels=image_channels,
        num_classes=num_classes,
    ).items():
        _positive(k, v)
    if stride not in (1, 2):
        raise ConfigError(f"stride must be 1 or 2, got {stride!r}")
    return MobileNetV2Block(image_channels, in_channels, out_channels, expand, stride, num_classes)


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
        _positive(k, v)
    if channels % reduction:
        raise ConfigError(f"reduction {reduction} must divide channels {channels}")
    return SEBlock(image_channels, channels, reduction, num_classes)


# --------------------------------------------------------------------------------------------
# U-Net
# --------------------------------------------------------------------------------------------


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
    _positive("in_channels", in_channels)
    _positive("base", base)
    _positive("out_channels", out_channels)
    return UNet(in_channels, base, out_channels)


# --------------------------------------------------------------------------------------------
# catalogue
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Architecture:
    """A named source architecture with an example input shape.

    Attributes
    ----------
    name : str
        The catalogue key.
    factory : callable
        ``factory()`` builds a fresh model (random init; seed with ``torch.manual_seed``);
        keyword arguments override the defaults, e.g. ``get("resnet8").factory(width=4)``.
    input_shape : tuple of int
        An example input's shape, batch dim included.
    description : str
        One line for listings.

    Examples
    --------
    >>> arch = get("mlp")
    >>> arch.example_input(torch.Generator().manual_seed(0)).shape
    torch.Size([2, 16])
    """

    name: str
    factory: Callable[..., nn.Module]
    input_shape: tuple[int, ...]
    description: str

    def example_input(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """A standard-normal tensor of :attr:`input_shape`."""
        return torch.randn(self.input_shape, generator=generator)


def _arch(
    name: str, factory: Callable[..., nn.Module], shape: tuple, description: str
) -> tuple[str, Architecture]:
    return name, Architecture(name, factory, shape, description)


#: Every catalogued architecture by name, with default (small) hyperparameters.
CATALOGUE: dict[str, Architecture] = dict(
    [
        _arch("mlp", mlp, (2, 16), "MLP 16-32-32-10 with ReLU"),
        _arch("siren", siren, (2, 2), "SIREN 2-32-32-32-1, w0=30"),
        _arch(
            "lenet", lenet, (2, 1, 8, 8), "LeNet: 2 conv+pool, flatten (2x2 positions), 2 linear"
        ),
        _arch("small_cnn", small_cnn, (2, 1, 8, 8), "Small CNN Zoo CNN: 3 stride-2 convs, GAP, fc"),
        _arch(
            "resnet8",
            functools.partial(resnet_cifar, depth=8, width=8),
            (2, 3, 8, 8),
            "CIFAR ResNet-8, width 8 (one block per stage)",
        ),
        _arch("resnet20", resnet20, (2, 3, 8, 8), "CIFAR ResNet-20, width 16"),
        _arch(
            "densenet_block",
            densenet_block,
            (2, 3, 8, 8),
            "stem, DenseNet block (3 layers, growth 4, torch.cat), transition, GAP, fc",
        ),
        _arch(
            "mobilenetv2_block",
            mobilenetv2_block,
            (2, 3, 8, 8),
            "stem, MobileNetV2 inverted residual (expand 4, depthwise), GAP, fc",
        ),
        _arch("se_block", se_block, (2, 3, 8, 8), "stem, squeeze-and-excitation gate, GAP, fc"),
        _arch("unet", unet, (2, 1, 8, 8), "two-level U-Net, ConvTranspose2d + torch.cat skips"),
        _arch("vgg", vgg, (2, 3, 8, 8), "VGG-style conv-ReLU-pool stacks, MLP classifier"),
    ]
)


#: Every factory function by name (they take keyword arguments; see each one's docstring).
FACTORIES: dict[str, Callable[..., nn.Module]] = {
    f.__name__: f
    for f in (
        mlp,
        siren,
        lenet,
        small_cnn,
        resnet_cifar,
        resnet20,
        densenet_block,
        mobilenetv2_block,
        se_block,
        unet,
        vgg,
    )
}


def names() -> list[str]:
    """Catalogue names, in catalogue order."""
    return list(CATALOGUE)


def get(name: str) -> Architecture:
    """The catalogued :class:`Architecture` called ``name``.

    Raises
    ------
    ConfigError
        For an unknown name; the message lists the valid names and the nearest one.

    Examples
    --------
    >>> get("resnet20").input_shape
    (2, 3, 8, 8)
    >>> get("resnet21")
    Traceback (most recent call last):
    ...
    nfncompile.errors.ConfigError: unknown architecture 'resnet21' (did you mean 'resnet20'?); valid names: mlp, siren, lenet, small_cnn, resnet8, resnet20, densenet_block, mobilenetv2_block, se_block, unet, vgg
    """
    try:
        return CATALOGUE[name]
    except (KeyError, TypeError):
        import difflib

        near = difflib.get_close_matches(str(name), CATALOGUE, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError(
            f"unknown architecture {name!r}{hint}; valid names: {', '.join(CATALOGUE)}"
        ) from None


# --------------------------------------------------------------------------------------------
# resolving a model name
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _cwd_on_path() -> Iterator[None]:
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def _import_module(name: str) -> Any:
    if name.endswith(".py") or os.sep in name or "/" in name:
        path = Path(name)
        if not path.is_file():
            raise ConfigError(f"cannot import {name!r}: no such file")
        mod_name = f"_nfncompile_user_{path.stem}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"cannot import {name!r}: not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            with _cwd_on_path():
                spec.loader.exec_module(module)
        except ImportError as e:
            del sys.modules[mod_name]
            raise ConfigError(f"cannot import {name!r}: {e}") from None
        return module
    try:
        with _cwd_on_path():
            return importlib.import_module(name)
    except ImportError as e:
        raise ConfigError(f"cannot import module {name!r}: {e}") from None


def load(target: str, kwargs: dict[str, Any] | None = None) -> tuple[nn.Module, tuple | None]:
    """Build the model a name refers to, as the CLI and YAML specs spell it.

    Parameters
    ----------
    target : str
        A :data:`CATALOGUE` name, a :data:`FACTORIES` name, or ``MODULE:FACTORY`` (the module
        may be a dotted name importable from the current directory or a ``path/to/file.py``;
        ``FACTORY`` may also name an ``nn.Module`` instance).
    kwargs : dict, optional
        Keyword arguments for the factory.

    Returns
    -------
    model : torch.nn.Module
    default_shape : tuple of int or None
        The catalogue entry's example input shape, ``None`` for other targets.

    Raises
    ------
    ConfigError
        When the module cannot be imported, the attribute does not exist, the target is not a
        factory or returns something other than an ``nn.Module``;
        :class:`ModelArgumentError` when the factory rejects ``kwargs``.

    Examples
    --------
    >>> model, shape = load("small_cnn", {"channels": 4})
    >>> shape, model.conv1.out_channels
    ((2, 1, 8, 8), 4)
    """
    kwargs = dict(kwargs or {})
    default_shape = None
    if ":" in target:
        module_name, _, attr = target.rpartition(":")
        if not module_name or not attr:
            raise ConfigError(f"expected MODULE:FACTORY, got {target!r}")
        obj = _import_module(module_name)
        for part in attr.split("."):
            if not hasattr(obj, part):
                avail = sorted(
                    k for k, v in vars(obj).items() if not k.startswith("_") and callable(v)
                )
                near = difflib.get_close_matches(part, avail, n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                listing = f"; callables there: {', '.join(avail)}" if len(avail) <= 12 else ""
                raise ConfigError(f"{module_name!r} has no attribute {attr!r}{hint}{listing}")
            obj = getattr(obj, part)
        factory = obj
    elif target in CATALOGUE:
        factory, default_shape = CATALOGUE[target].factory, CATALOGUE[target].input_shape
    elif target in FACTORIES:
        factory = FACTORIES[target]
    else:
        near = difflib.get_close_matches(target, [*CATALOGUE, *FACTORIES], n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError(
            f"unknown model {target!r}{hint}; give a catalogue name "
            f"({', '.join(CATALOGUE)}), an architectures factory "
            f"({', '.join(k for k in FACTORIES if k not in CATALOGUE)}) or MODULE:FACTORY"
        )
    if isinstance(factory, nn.Module):
        if kwargs:
            raise ModelArgumentError(
                f"{target} is a module instance, not a factory: it takes no keyword arguments"
            )
        model = factory
    elif callable(factory):
        try:
            model = factory(**kwargs)
        except TypeError as e:
            raise ModelArgumentError(f"{target} rejected keyword arguments {kwargs}: {e}") from None
        except ConfigError as e:
            raise ModelArgumentError(str(e)) from None
    else:
        raise ConfigError(f"{target} is a {type(factory).__name__}, not a factory or nn.Module")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{target} returned a {type(model).__name__}, expected a torch.nn.Module")
    return model, default_shape
