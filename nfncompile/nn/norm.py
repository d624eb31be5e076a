"""Channel layer norm of weight-space features."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, FeatureMismatchError
from ..features import WeightSpaceFeatures
from .checks import as_features

__all__ = ["NFNorm"]


class NFNorm(nn.Module):
    """Channel layer norm: normalise across the ``C`` channels of every entry of every parameter.

    For each network ``b``, parameter and position ``i``, the vector ``x[b, :, i]`` is shifted
    to mean 0 and scaled to variance 1 (biased variance, ``eps`` added inside the square root,
    as :func:`torch.nn.functional.layer_norm`), then ``gamma * x + beta`` is applied with one
    learnable ``gamma, beta`` per channel. Positions never mix, so the module is equivariant in
    both modes.

    Unlike the reference ``nfn`` package's ``ChannelLayerNorm`` (which divides by the unbiased
    standard deviation plus ``eps``), this is exactly :class:`torch.nn.LayerNorm` over the
    channel dim; and unlike its ``SimpleLayerNorm`` it never folds fixed axes (conv kernel
    positions) into the normalised group.

    Parameters
    ----------
    channels : int
        ``C``, the channel count of the features.
    eps : float, default 1e-5
        Added to the variance.
    affine : bool, default True
        Learn ``weight`` (``gamma``, init 1) and ``bias`` (``beta``, init 0), shape ``(C,)``.

    Raises
    ------
    FeatureMismatchError
        When the features do not have ``channels`` channels.

    Examples
    --------
    >>> import torch
    >>> from nfncompile.features import WeightSpaceFeatures
    >>> norm = NFNorm(2)
    >>> norm(WeightSpaceFeatures({"b": torch.tensor([[[1.0], [3.0]]])}))["b"].squeeze()
    tensor([-1.0000,  1.0000], grad_fn=<SqueezeBackward0>)
    """

    def __init__(self, channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
            raise ConfigError(f"NFNorm: channels must be a positive int, got {channels!r}")
        self.channels = channels
        self.eps = eps
        self.affine = affine
        if affine:
            self.weight = nn.Parameter(torch.ones(channels))
            self.bias = nn.Parameter(torch.zeros(channels))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, features: WeightSpaceFeatures) -> WeightSpaceFeatures:
        """Normalise every ``(B, C, *shape)`` tensor over ``C``."""
        features = as_features(features, "NFNorm")
        if features.channels != self.channels:
            raise FeatureMismatchError(
                f"NFNorm({self.channels}) got features with {features.channels} channels"
            )
        return features.map(self._norm)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.movedim(1, -1), (self.channels,), self.weight, self.bias, self.eps)
        return y.movedim(-1, 1)

    def extra_repr(self) -> str:
        return f"{self.channels}, eps={self.eps}, affine={self.affine}"
