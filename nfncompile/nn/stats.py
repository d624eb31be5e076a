"""The StatNN baseline: permutation-invariant summary statistics of every parameter tensor.

Unterthiner et al. (2020), *Predicting Neural Network Accuracy from Weights*, predict a
network's accuracy from the mean, variance and quantiles of each of its weight tensors.
:class:`StatFeatures` computes exactly those per parameter and per channel; every statistic
is a function of the multiset of a tensor's entries, so it is invariant to every permutation
of the weight space (``np`` and, a fortiori, ``hnp``).

Examples
--------
>>> import torch
>>> from nfncompile.features import WeightSpaceFeatures
>>> feats = WeightSpaceFeatures({"w": torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])})
>>> StatFeatures(quantiles=(0.0, 0.5, 1.0))(feats)
tensor([[2.5000, 1.2500, 1.0000, 2.5000, 4.0000]])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError, FeatureMismatchError, SpecError
from ..features import WeightSpaceFeatures
from ..spec import WeightSpaceSpec

__all__ = ["StatFeatures", "quantiles_by_sort"]

#: torch.quantile refuses to reduce a dim longer than this.
_QUANTILE_MAX_NUMEL = 2**24


def quantiles_by_sort(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Quantiles of ``x`` along its last dim by sorting, with linear interpolation.

    The same values as ``torch.quantile(x, q, dim=-1)`` (its default ``"linear"``
    interpolation), but without :func:`torch.quantile`'s limit of ``2**24`` elements along
    the reduced dim.

    Parameters
    ----------
    x : Tensor
        ``(..., N)``.
    q : Tensor
        ``(K,)`` levels in ``[0, 1]``, same dtype as ``x``.

    Returns
    -------
    Tensor
        ``(K, ...)``.

    Examples
    --------
    >>> quantiles_by_sort(torch.tensor([3.0, 1.0, 2.0, 4.0]), torch.tensor([0.0, 0.5, 1.0]))
    tensor([1.0000, 2.5000, 4.0000])
    """
    s = x.sort(dim=-1).values
    pos = q * (x.shape[-1] - 1)
    lo = pos.floor().long()
    hi = pos.ceil().long()
    frac = (pos - lo.to(pos.dtype)).reshape((-1,) + (1,) * (x.dim() - 1))
    s_lo = s.index_select(-1, lo).movedim(-1, 0)
    s_hi = s.index_select(-1, hi).movedim(-1, 0)
    return s_lo + frac * (s_hi - s_lo)


class StatFeatures(nn.Module):
    """Per-parameter, per-channel mean, variance and quantiles, flattened to ``(B, F)``.

    For every parameter (in the spec's order, or the features' order when there is no spec)
    and every channel ``c``, the ``B`` tensors ``x[:, c]`` are flattened and summarised by

    - the mean,
    - the *population* variance (``correction=0``, numpy's default and well defined for a
      one-element tensor; the reference ``nfn`` package's ``StatFeaturizer`` uses the unbiased
      variance),
    - the ``quantiles`` computed by :func:`torch.quantile` with linear interpolation (numpy's
      default ``method="linear"``); parameters of more than ``2**24`` entries, which
      :func:`torch.quantile` refuses, fall back to :func:`quantiles_by_sort`.

    Output layout: parameter-major, then channel, then statistic
    ``[mean, var, q_0, q_1, ...]``; ``num_features = P * C * (2 + len(quantiles))``.

    Parameters
    ----------
    spec : WeightSpaceSpec, optional
        Fixes which parameters are expected, their order, and (with ``in_channels``) the output
        width :attr:`num_features`.
    quantiles : sequence of float, default (0, .25, .5, .75, 1)
        Levels in ``[0, 1]``; may be empty.
    in_channels : int, default 1
        ``C`` of the features (checked when a spec is given).

    Raises
    ------
    ConfigError
        For a quantile level outside ``[0, 1]``.
    FeatureMismatchError
        When features do not match the spec's parameters or ``in_channels``.

    Examples
    --------
    >>> from nfncompile.spec import WeightSpaceSpec
    >>> spec = WeightSpaceSpec.from_dict({
    ...     "spaces": {"in": {"size": 2, "role": "input"}, "out": {"size": 3, "role": "output"}},
    ...     "params": {"weight": {"shape": [3, 2], "axes": ["out", "in"]},
    ...                "bias": {"shape": [3], "axes": ["out"]}}})
    >>> stats = StatFeatures(spec, in_channels=4)
    >>> stats.num_features
    56
    >>> from nfncompile.testing import random_features
    >>> stats(random_features(spec, 4, batch=5)).shape
    torch.Size([5, 56])
    """

    mode = "np"

    def __init__(
        self,
        spec: WeightSpaceSpec | None = None,
        quantiles: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        q = tuple(float(v) for v in quantiles)
        bad = [v for v in q if not 0.0 <= v <= 1.0]
        if bad:
            raise ConfigError(f"StatFeatures: quantiles must lie in [0, 1], got {bad}")
        if not isinstance(in_channels, int) or isinstance(in_channels, bool) or in_channels < 1:
            raise ConfigError(
                f"StatFeatures: in_channels must be a positive int, got {in_channels!r}"
            )
        self.spec = spec
        self.quantiles = q
        self.in_channels = in_channels

    @property
    def stats_per_channel(self) -> int:
        """``2 + len(quantiles)``: mean, variance and each quantile."""
        return 2 + len(self.quantiles)

    @property
    def stat_names(self) -> tuple:
        """Names of the statistics in output order, e.g. ``('mean', 'var', 'q0', ...)``."""
        return ("mean", "var", *(f"q{v:g}" for v in self.quantiles))

    @property
    def num_features(self) -> int:
        """Output width ``P * in_channels * stats_per_channel`` (needs a spec)."""
        if self.spec is None:
            raise SpecError(
                "StatFeatures.num_features needs a spec (the number of parameters); "
                "construct StatFeatures(spec, ...) or use num_features_for(num_params, channels)"
            )
        return self.num_features_for(len(self.spec.params), self.in_channels)

    def num_features_for(self, num_params: int, channels: int) -> int:
        """Output width for ``num_params`` parameters of ``channels`` channels each."""
        return num_params * channels * self.stats_per_channel

    def forward(self, features: WeightSpaceFeatures) -> torch.Tensor:
        """Summarise every parameter; returns ``(B, num_features)``."""
        if not isinstance(features, WeightSpaceFeatures):
            features = WeightSpaceFeatures(features)
        if self.spec is not None:
            names = self.spec.names
            if set(features) != set(names):
                missing = [n for n in names if n not in features]
                extra = [n for n in features if n not in self.spec]
                raise FeatureMismatchError(
                    f"StatFeatures: features do not match the spec; missing: {missing}, "
                    f"unexpected: {extra}"
                )
            if features.channels != self.in_channels:
                raise FeatureMismatchError(
                    f"StatFeatures(in_channels={self.in_channels}) got features with "
                    f"{features.channels} channels"
                )
        else:
            names = tuple(features)
        out = [self.compute_stats(features[n]) for n in names]
        return torch.cat(out, dim=1)

    def compute_stats(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *shape) -> (B, C * stats_per_channel)``."""
        flat = x.flatten(2)  # (B, C, N)
        stats = [flat.mean(-1), flat.var(-1, correction=0)]
        if self.quantiles:
            q = torch.tensor(self.quantiles, dtype=flat.dtype, device=flat.device)
            if flat.shape[-1] <= _QUANTILE_MAX_NUMEL:
                qs = torch.quantile(flat, q, dim=-1)  # (K, B, C)
            else:
                qs = quantiles_by_sort(flat, q)
            stats.extend(qs.unbind(0))
        return torch.stack(stats, dim=-1).flatten(1)

    def extra_repr(self) -> str:
        spec = "" if self.spec is None else f"{len(self.spec.params)} params, "
        return f"{spec}quantiles={self.quantiles}, in_channels={self.in_channels}"
