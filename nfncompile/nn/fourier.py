"""Encodings of weight *values*: nonlinear features of every entry, added as input channels.

An NF-Layer is affine in the weights it reads, and an NFN is only as nonlinear as the
activations between its layers. Handing the first layer a few nonlinear functions of each
weight value makes distributional facts (spread, tails, how often a value exceeds a threshold)
a mean away: the pooled mean of ``sin(f w)`` over a tensor is its empirical characteristic
function at ``f``, the pooled mean of ``sigmoid((w - t) / s)`` a smoothed fraction of entries
above ``t``. Both modules act on every entry separately, so they commute with every
permutation: they are equivariant in ``np`` and ``hnp`` mode alike.

================== ==============================================================================
module             channels added per entry ``x`` (the input channels are kept in front)
================== ==============================================================================
FourierFeatures    ``sin(z)``, ``cos(z)``; ``kind="sinusoidal"``: ``z = f_k x`` with ``num_freqs``
                   log-spaced angular frequencies in ``[min_freq, max_freq]`` for each input
                   channel; ``kind="gaussian"``: ``z = 2 pi x B`` with a seeded random
                   ``B ~ N(0, scale^2)`` of shape ``(C, num_freqs)`` (the reference ``nfn``
                   package's ``GaussianFourierFeatureTransform``, ``inp_enc_cls: gaussian``)
ThresholdFeatures  ``sigmoid((x - t_k) / width)`` for ``num_thresholds`` evenly spaced ``t_k`` in
                   ``[low, high]``, for each input channel (a soft histogram of the values)
================== ==============================================================================

Both expect inputs of a known scale (the tasks divide every parameter tensor by its standard
deviation over the training networks), so that the frequencies and thresholds mean something.

Examples
--------
>>> import torch
>>> from nfncompile.features import WeightSpaceFeatures
>>> feats = WeightSpaceFeatures({"w": torch.tensor([[[0.0, 1.0]]])})
>>> enc = FourierFeatures(in_channels=1, num_freqs=2, min_freq=1.0, max_freq=2.0)
>>> enc.out_channels
5
>>> enc(feats)["w"][0, :, 1]  # x, sin(1 x), sin(2 x), cos(1 x), cos(2 x) at x = 1
tensor([ 1.0000,  0.8415,  0.9093,  0.5403, -0.4161])
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, FeatureMismatchError
from ..features import WeightSpaceFeatures
from .checks import as_features, check_channels

__all__ = ["FourierFeatures", "ThresholdFeatures", "FOURIER_KINDS"]

#: The kinds of :class:`FourierFeatures`.
FOURIER_KINDS = ("sinusoidal", "gaussian")


def _positive_int(who: str, name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{who}: {name} must be a positive int, got {value!r}")
    return value


def _number(who: str, name: str, value: Any, *, positive: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (positive and value <= 0):
        need = "a positive number" if positive else "a finite number"
        raise ConfigError(f"{who}: {name} must be {need}, got {value!r}")
    return float(value)


class _ValueEncoding(nn.Module):
    """Shared plumbing: check the input, encode every tensor, concatenate along channels."""

    def __init__(self, in_channels: int, keep_input: bool) -> None:
        super().__init__()
        self.in_channels = check_channels(f"{type(self).__name__}: in_channels", in_channels)
        self.keep_input = bool(keep_input)

    @property
    def encoded_channels(self) -> int:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    @property
    def out_channels(self) -> int:
        """Channels of the output: the kept input channels, then the encoded ones."""
        return self.in_channels * self.keep_input + self.encoded_channels

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def forward(self, features: Mapping[str, torch.Tensor]) -> WeightSpaceFeatures:
        """Concatenate the encoding of every entry to its channels (dim 1)."""
        who = type(self).__name__
        features = as_features(features, who)
        out = {}
        for name, x in features.items():
            if x.dim() < 2 or x.shape[1] != self.in_channels:
                raise FeatureMismatchError(
                    f"{who}(in_channels={self.in_channels}): parameter {name!r} has shape "
                    f"{tuple(x.shape)}; expected (B, {self.in_channels}, *shape)"
                )
            enc = self.encode(x)
            out[name] = torch.cat([x, enc], dim=1) if self.keep_input else enc
        return WeightSpaceFeatures(out)


class FourierFeatures(_ValueEncoding):
    """Fourier features of every weight value, as extra channels.

    Parameters
    ----------
    in_channels : int
        ``C`` of the incoming features.
    num_freqs : int, default 3
        Frequencies: per input channel (``sinusoidal``) or in all (``gaussian``).
    kind : {"sinusoidal", "gaussian"}
        ``sinusoidal``: angular frequencies ``f_k`` log-spaced over ``[min_freq, max_freq]``,
        ``z = f_k x`` for each input channel. ``gaussian``: ``z = 2 pi x B``, ``B`` a fixed
        ``(C, num_freqs)`` draw from ``N(0, scale^2)`` (``torch.Generator`` seeded with
        ``seed``; a buffer, so it is saved with the model).
    min_freq, max_freq : float
        ``sinusoidal`` only; ``0 < min_freq <= max_freq``. One frequency is ``min_freq``.
    scale : float
        ``gaussian`` only: standard deviation of ``B``.
    seed : int
        ``gaussian`` only.
    keep_input : bool, default True
        Keep the input channels in front of the encoding.

    Attributes
    ----------
    out_channels : int
        ``C * keep_input + 2 * C * num_freqs`` (sinusoidal) or ``+ 2 * num_freqs`` (gaussian).

    Raises
    ------
    ConfigError
        For an unknown ``kind`` (the message lists the valid ones) or out-of-range numbers.
    FeatureMismatchError
        When the features do not have ``in_channels`` channels.

    Examples
    --------
    >>> enc = FourierFeatures(1, num_freqs=3, min_freq=0.5, max_freq=2.0)
    >>> enc.frequencies
    tensor([0.5000, 1.0000, 2.0000])
    >>> FourierFeatures(2, num_freqs=8, kind="gaussian", scale=0.5).out_channels
    18
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_freqs: int = 3,
        kind: str = "sinusoidal",
        min_freq: float = 0.5,
        max_freq: float = 16.0,
        scale: float = 1.0,
        seed: int = 0,
        keep_input: bool = True,
    ) -> None:
        super().__init__(in_channels, keep_input)
        who = "FourierFeatures"
        if kind not in FOURIER_KINDS:
            raise ConfigError(f"{who}: unknown kind {kind!r}; valid: {', '.join(FOURIER_KINDS)}")
        self.kind = kind
        self.num_freqs = _positive_int(who, "num_freqs", num_freqs)
        self.min_freq = _number(who, "min_freq", min_freq, positive=True)
        self.max_freq = _number(who, "max_freq", max_freq, positive=True)
        self.scale = _number(who, "scale", scale, positive=True)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ConfigError(f"{who}: seed must be an int, got {seed!r}")
        self.seed = seed
        if kind == "sinusoidal":
            if self.min_freq > self.max_freq:
                raise ConfigError(
                    f"{who}: min_freq ({self.min_freq}) must not exceed max_freq ({self.max_freq})"
                )
            freqs = torch.logspace(
                math.log10(self.min_freq), math.log10(self.max_freq), self.num_freqs
            )
            self.register_buffer("frequencies", freqs)
        else:
            g = torch.Generator().manual_seed(seed)
            proj = torch.randn(self.in_channels, self.num_freqs, generator=g) * self.scale
            self.register_buffer("projection", proj)

    @property
    def encoded_channels(self) -> int:
        per = self.in_channels * self.num_freqs if self.kind == "sinusoidal" else self.num_freqs
        return 2 * per

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, encoded_channels, *shape)``: all sines, then all cosines."""
        if self.kind == "sinusoidal":
            f = self.frequencies.to(x.dtype).view(1, 1, -1, *([1] * (x.dim() - 2)))
            z = (x.unsqueeze(2) * f).flatten(1, 2)
        else:
            proj = self.projection.to(x.dtype)
            z = 2 * math.pi * torch.einsum("bc...,ck->bk...", x, proj)
        return torch.cat([z.sin(), z.cos()], dim=1)

    def extra_repr(self) -> str:
        common = (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, kind={self.kind!r}"
        )
        if self.kind == "sinusoidal":
            return f"{common}, num_freqs={self.num_freqs}, min_freq={self.min_freq}, max_freq={self.max_freq}"
        return f"{common}, num_freqs={self.num_freqs}, scale={self.scale}, seed={self.seed}"


class ThresholdFeatures(_ValueEncoding):
    """Soft threshold indicators of every weight value, as extra channels.

    Entry ``x`` of input channel ``c`` gets ``sigmoid((x - t_k) / width)`` for ``num_thresholds``
    thresholds ``t_k`` evenly spaced over ``[low, high]``. Pooled (averaged) over a tensor, they
    are its smoothed empirical distribution function at the ``t_k``: the quantile information
    a StatNN reads off sorted weights, in a form an NFN can average.

    Parameters
    ----------
    in_channels : int
    num_thresholds : int, default 9
    low, high : float, default -3, 3
        ``low <= high``; a single threshold sits at ``low``.
    width : float, default 0.3
        Softness (> 0): the sigmoid's scale.
    keep_input : bool, default True

    Attributes
    ----------
    out_channels : int
        ``C * keep_input + C * num_thresholds``.

    Examples
    --------
    >>> import torch
    >>> enc = ThresholdFeatures(1, num_thresholds=3, low=-1.0, high=1.0, width=0.1)
    >>> enc.thresholds
    tensor([-1.,  0.,  1.])
    >>> feats = {"b": torch.tensor([[[0.5]]])}
    >>> enc(feats)["b"].flatten().round(decimals=3)
    tensor([0.5000, 1.0000, 0.9930, 0.0070])
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_thresholds: int = 9,
        low: float = -3.0,
        high: float = 3.0,
        width: float = 0.3,
        keep_input: bool = True,
    ) -> None:
        super().__init__(in_channels, keep_input)
        who = "ThresholdFeatures"
        self.num_thresholds = _positive_int(who, "num_thresholds", num_thresholds)
        self.low = _number(who, "low", low)
        self.high = _number(who, "high", high)
        self.width = _number(who, "width", width, positive=True)
        if self.low > self.high:
            raise ConfigError(f"{who}: low ({self.low}) must not exceed high ({self.high})")
        self.register_buffer("thresholds", torch.linspace(self.low, self.high, self.num_thresholds))

    @property
    def encoded_channels(self) -> int:
        return self.in_channels * self.num_thresholds

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, encoded_channels, *shape)``, thresholds fastest within each input channel."""
        t = self.thresholds.to(x.dtype).view(1, 1, -1, *([1] * (x.dim() - 2)))
        return torch.sigmoid((x.unsqueeze(2) - t) / self.width).flatten(1, 2)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
            f"num_thresholds={self.num_thresholds}, low={self.low}, high={self.high}, "
            f"width={self.width}"
        )
