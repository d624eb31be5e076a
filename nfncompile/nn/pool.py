"""Invariant pooling of weight-space features: :class:`NFPool`.

Examples
--------
>>> import torch
>>> from nfncompile.testing import mlp_spec, random_features
>>> spec = mlp_spec([2, 3, 1])
>>> pool = NFPool(spec, mode="hnp", in_channels=4)
>>> pool.features_per_channel, pool(random_features(spec, 4, batch=5)).shape
(5, torch.Size([5, 20]))
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..backend.tiles import tile_refs
from ..errors import ConfigError
from ..spec import WeightSpaceSpec, check_mode
from .checks import check_channels, check_features
from .reorder import Reorders

__all__ = ["NFPool"]


class NFPool(nn.Module):
    """Invariant pooling: the mean over every permutable dim of every tile.

    Tiles and dims are those of :func:`~nfncompile.backend.tiles.tile_refs`, the same the layers
    read: a block axis is averaged over its blocks and over the positions inside them. Fixed
    dims (kernel dims, and in ``hnp`` the input/output neuron positions) are kept as separate
    features.

    Parameters
    ----------
    spec : WeightSpaceSpec
    mode : {"np", "hnp"}
    in_channels : int, optional
        Needed for :attr:`num_features` (and checked in ``forward`` when given).
    max_fold : int, optional
        Keep at most this many fixed positions of a tile as separate features: its larger
        fixed dims are averaged like permutable ones (as :class:`~nfncompile.nn.NFLinear`'s
        ``max_fold`` exchanges them). Default: every fixed position is a feature.

    Attributes
    ----------
    tiles : list of TileRef
    features_per_channel : int
        Output features per input channel: the sum over tiles of their fixed positions.

    Examples
    --------
    >>> from nfncompile.spec import WeightSpaceSpec
    >>> spec = WeightSpaceSpec.from_dict({
    ...     "spaces": {"i": {"size": 3, "role": "input"}, "o": {"size": 2, "role": "output"}},
    ...     "params": {"w": {"shape": [2, 3], "axes": ["o", "i"]}}})
    >>> NFPool(spec, "np").features_per_channel, NFPool(spec, "hnp").features_per_channel
    (1, 6)
    """

    def __init__(
        self,
        spec: WeightSpaceSpec,
        mode: str = "np",
        in_channels: int | None = None,
        max_fold: int | None = None,
    ):
        super().__init__()
        check_mode(mode)
        self.spec = spec
        self.mode = mode
        self.in_channels = (
            None if in_channels is None else check_channels("in_channels", in_channels)
        )
        if max_fold is not None:
            check_channels("max_fold", max_fold)
        self.max_fold = max_fold
        self.tiles = tile_refs(spec, mode, max_fold)
        self.features_per_channel = sum(t.fixed_size for t in self.tiles)
        self.reorders = Reorders(spec) if spec.ordered else None

    @property
    def num_features(self) -> int:
        """``in_channels * features_per_channel``: the width of the output."""
        if self.in_channels is None:
            raise ConfigError(
                "NFPool.num_features needs in_channels: build it as "
                "NFPool(spec, mode, in_channels=C) (features_per_channel="
                f"{self.features_per_channel})"
            )
        return self.in_channels * self.features_per_channel

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``(B, C * features_per_channel)`` invariant features."""
        check_features(self.spec, features, self.in_channels, "NFPool")
        out = []
        labelled: dict = {}  # each tensor in label order once, whatever its tiles
        for r in self.tiles:
            p = self.spec[r.param]
            x = labelled.get(r.param)
            if x is None:
                x = features[r.param]
                if self.reorders is not None:
                    x = self.reorders.to_labels(r.param, x)
                x = labelled[r.param] = x.reshape(x.shape[0], x.shape[1], *p.labelled_shape)
            if r.shape != p.labelled_shape:
                idx = (slice(None), slice(None)) + tuple(
                    slice(s, s + n) for s, n in zip(r.starts, r.shape)
                )
                x = x[idx]
            if r.is_split:
                x = x.reshape(x.shape[0], x.shape[1], *r.dim_shape)
            dims = tuple(2 + d for d in r.perm_dims)
            if dims:
                x = x.mean(dim=dims)
            out.append(x.flatten(1))
        return torch.cat(out, dim=1)

    def extra_repr(self) -> str:
        fold = "" if self.max_fold is None else f", max_fold={self.max_fold}"
        return (
            f"mode={self.mode!r}, in_channels={self.in_channels}{fold}, "
            f"features_per_channel={self.features_per_channel}"
        )
