"""Fully connected source networks: the MLP and the SIREN implicit neural representation."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..nn.activations import make_activation
from .args import positive, positive_tuple

__all__ = ["mlp", "Siren", "siren"]


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
    widths = (positive("in_features", in_features), *positive_tuple("hidden", hidden))
    widths += (positive("out_features", out_features),)
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
    positive("in_features", in_features)
    positive("out_features", out_features)
    hidden = positive_tuple("hidden", hidden)
    if not hidden:
        raise ConfigError("siren needs at least one hidden (sine) layer, got hidden=()")
    if not isinstance(w0, (int, float)) or isinstance(w0, bool) or w0 <= 0:
        raise ConfigError(f"w0 must be a positive number, got {w0!r}")
    return Siren(in_features, hidden, out_features, w0)
