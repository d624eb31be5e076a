"""Plain (non-residual) CNNs: LeNet, the Small CNN Zoo network and VGG-style stacks."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..nn.activations import make_activation
from .args import positive, positive_tuple

__all__ = ["lenet", "SmallCNN", "small_cnn", "vgg"]


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
    positive("in_channels", in_channels)
    positive("num_classes", num_classes)
    positive("image_size", image_size)
    positive("hidden", hidden)
    channels = positive_tuple("channels", channels)
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
    positive("in_channels", in_channels)
    positive("channels", channels)
    positive("num_classes", num_classes)
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
    positive("in_channels", in_channels)
    positive("num_classes", num_classes)
    positive("image_size", image_size)
    positive("hidden", hidden)
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
            out = positive(f"cfg[{i}]", item) if not isinstance(item, str) else None
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
