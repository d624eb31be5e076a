"""The elementwise activation of weight-space features (names from the one activation table,
:mod:`nfncompile.nn.activations`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..features import WeightSpaceFeatures
from .activations import ACTIVATIONS, activation_fn
from .checks import as_features

__all__ = ["NFActivation"]


class NFActivation(nn.Module):
    """An elementwise activation applied to every entry of every parameter.

    Any elementwise function commutes with every permutation, so this module is equivariant in
    both modes.

    Parameters
    ----------
    fn : str or callable or nn.Module, default "relu"
        A name from :data:`~nfncompile.nn.activations.ACTIVATIONS` (``relu``, ``gelu``,
        ``tanh``, ``sigmoid``, ``silu``, ...), or any elementwise callable / module
        ``Tensor -> Tensor`` (a module is registered as the submodule ``fn``).
    **kwargs
        Keyword arguments for a named activation, e.g. ``negative_slope=0.2`` for
        ``leaky_relu``.

    Raises
    ------
    ConfigError
        For an unknown name (the message lists the valid names) or keyword arguments the named
        function does not take.

    Examples
    --------
    >>> import torch
    >>> from nfncompile.features import WeightSpaceFeatures
    >>> act = NFActivation("leaky_relu", negative_slope=0.5)
    >>> act
    NFActivation('leaky_relu', negative_slope=0.5)
    >>> act(WeightSpaceFeatures({"b": torch.tensor([[[-2.0, 2.0]]])}))["b"]
    tensor([[[-1.,  2.]]])
    """

    def __init__(self, fn: str | Callable[[torch.Tensor], torch.Tensor] = "relu", **kwargs: Any):
        super().__init__()
        self.name: str | None = None
        self.kwargs = dict(kwargs)
        if isinstance(fn, str):
            self.name = fn
            self.fn = activation_fn(fn, **self.kwargs)
        elif callable(fn):
            if kwargs:
                raise ConfigError("keyword arguments are only taken with an activation name")
            self.fn = fn
        else:
            raise ConfigError(
                f"fn must be an activation name ({', '.join(ACTIVATIONS)}) or a callable, "
                f"got {type(fn).__name__}"
            )

    def forward(self, features: WeightSpaceFeatures) -> WeightSpaceFeatures:
        """Apply the activation to every tensor."""
        features = as_features(features, "NFActivation")
        return features.map(self.fn)

    def __repr__(self) -> str:
        if self.name is None:
            return f"NFActivation({self.fn!r})"
        extra = "".join(f", {k}={v!r}" for k, v in self.kwargs.items())
        return f"NFActivation({self.name!r}{extra})"
