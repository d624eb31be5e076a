"""The one activation table: every activation name nfncompile accepts, and what it computes.

NF-Layers (:class:`~nfncompile.nn.NFActivation`), the catalogue's source networks,
MLP heads of declarative models and the vectorised zoo trainers all look names up here, so a
name valid in one YAML field is valid in every other.

Examples
--------
>>> import torch
>>> activation_fn("leaky_relu", negative_slope=0.5)(torch.tensor([-2.0, 2.0]))
tensor([-1.,  2.])
>>> make_activation("sin")
Activation('sin')
>>> activation_fn("swishy")
Traceback (most recent call last):
...
nfncompile.errors.ConfigError: unknown activation 'swishy' (did you mean 'hardswish'?); valid activations: relu, gelu, tanh, sigmoid, silu, leaky_relu, elu, softplus, hardswish, relu6, sin
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

__all__ = ["ACTIVATIONS", "activation_fn", "Activation", "make_activation"]

#: Activation name -> the elementwise function it stands for.
ACTIVATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "silu": F.silu,
    "leaky_relu": F.leaky_relu,
    "elu": F.elu,
    "softplus": F.softplus,
    "hardswish": F.hardswish,
    "relu6": F.relu6,
    "sin": torch.sin,
}


def activation_fn(name: str, **kwargs: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """The elementwise function called ``name``, with ``kwargs`` bound.

    Raises
    ------
    ConfigError
        For an unknown name (with the nearest valid one and the full list) or keyword
        arguments the function does not take.
    """
    if not isinstance(name, str) or name not in ACTIVATIONS:
        near = difflib.get_close_matches(str(name), ACTIVATIONS, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError(
            f"unknown activation {name!r}{hint}; valid activations: {', '.join(ACTIVATIONS)}"
        )
    fn = ACTIVATIONS[name]
    if not kwargs:
        return fn
    try:
        fn(torch.zeros(1), **kwargs)
    except TypeError as e:
        raise ConfigError(f"activation {name!r}: bad keyword arguments {kwargs}: {e}") from None
    return functools.partial(fn, **kwargs)


class Activation(nn.Module):
    """An activation from :data:`ACTIVATIONS` as a module (for source networks and MLP heads).

    Parameters
    ----------
    name : str
        A key of :data:`ACTIVATIONS`.
    **kwargs
        Keyword arguments of the function (``negative_slope=0.2`` for ``leaky_relu``).

    Examples
    --------
    >>> Activation("relu")(torch.tensor([-1.0, 1.0]))
    tensor([0., 1.])
    """

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__()
        self.fn = activation_fn(name, **kwargs)
        self.name = name
        self.kwargs = dict(kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.kwargs.items())
        return f"Activation({self.name!r}{extra})"


def make_activation(name: str, **kwargs: Any) -> Activation:
    """A fresh :class:`Activation` module by name (raises :class:`ConfigError` if unknown)."""
    return Activation(name, **kwargs)
