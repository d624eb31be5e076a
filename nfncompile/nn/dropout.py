"""Elementwise dropout of weight-space features."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..features import WeightSpaceFeatures
from .checks import as_features

__all__ = ["NFDropout"]


class NFDropout(nn.Module):
    """Elementwise dropout on every entry of every parameter (the identity in eval mode).

    Each entry is zeroed independently with probability ``p`` and the rest scaled by
    ``1 / (1 - p)``, as :func:`torch.nn.functional.dropout`. The mask is drawn independently of
    positions, so the module is equivariant in distribution in both modes; in eval mode it is
    exactly equivariant.

    Parameters
    ----------
    p : float
        Drop probability, ``0 <= p < 1``.

    Examples
    --------
    >>> import torch
    >>> from nfncompile.features import WeightSpaceFeatures
    >>> drop = NFDropout(0.5).eval()
    >>> drop(WeightSpaceFeatures({"b": torch.ones(1, 1, 3)}))["b"]
    tensor([[[1., 1., 1.]]])
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 <= p < 1:
            raise ConfigError(f"NFDropout: p must be a float in [0, 1), got {p!r}")
        self.p = float(p)

    def forward(self, features: WeightSpaceFeatures) -> WeightSpaceFeatures:
        """Drop entries (training) or pass through (eval)."""
        features = as_features(features, "NFDropout")
        if not self.training or self.p == 0:
            return features
        return features.map(lambda t: F.dropout(t, self.p, True))

    def extra_repr(self) -> str:
        return f"p={self.p}"
