"""The torch modules :func:`~.builder.build` returns: :class:`NFN`, :class:`StatNN`, :class:`FlatMLP`.

Each keeps the weight space (``.spec``), its symmetry (``.mode``), the config it was built
from (``.config``) and what it returns (``.output``: ``"invariant"`` or ``"weight_space"``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, FeatureMismatchError, NfnCompileError
from ..features import WeightSpaceFeatures
from ..nn import IOEncoding, NFLinear
from ..nn.activations import make_activation
from ..spec import WeightSpaceSpec
from .config import MLPConfig, MLPHead, ModelConfig

__all__ = ["NFN", "StatNN", "FlatMLP", "mlp_head"]


def _as_features(x: Any, who: str, channels: int) -> WeightSpaceFeatures:
    if not isinstance(x, WeightSpaceFeatures):
        if not isinstance(x, Mapping):
            raise FeatureMismatchError(f"{who} expects WeightSpaceFeatures, got {type(x).__name__}")
        x = WeightSpaceFeatures(x)
    if x.channels != channels:
        raise FeatureMismatchError(
            f"{who}(in_channels={channels}) got features with {x.channels} channels"
        )
    return x


def mlp_head(in_features: int, head: MLPHead | MLPConfig, out_features: int) -> nn.Sequential:
    """Linear layers of widths ``head.hidden`` then ``out_features``, with ``head``'s activation
    (and dropout) between them.

    Examples
    --------
    >>> mlp_head(4, MLPHead(hidden=(8,), out_features=2), 2)
    Sequential(
      (0): Linear(in_features=4, out_features=8, bias=True)
      (1): Activation('relu')
      (2): Linear(in_features=8, out_features=2, bias=True)
    )
    """
    layers: list[nn.Module] = []
    width = in_features
    for h in head.hidden:
        layers += [nn.Linear(width, h), make_activation(head.activation)]
        if head.dropout > 0:
            layers.append(nn.Dropout(head.dropout))
        width = h
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


def _io_encoding_for(encoding: IOEncoding, spec: WeightSpaceSpec) -> IOEncoding:
    """``encoding`` made again for ``spec``; it must give the same channels (the same input and
    output roles)."""
    new = IOEncoding(
        spec, encoding.channels, max_freq=encoding.max_freq, num_freqs=encoding.num_freqs
    )
    if new.out_channels != encoding.out_channels:
        raise ConfigError(
            f"the new weight space encodes roles {new.roles} ({new.out_channels} channels), "
            f"this one {encoding.roles} ({encoding.out_channels})"
        )
    return new


class NFN(nn.Module):
    """A neural functional built from an :class:`NFNConfig` (see :func:`build`).

    ``forward(features)`` maps :class:`WeightSpaceFeatures` of ``in_channels`` channels to a
    ``(B, out_features)`` tensor (``output == "invariant"``) or to weight-space features of
    ``out_channels`` channels (``output == "weight_space"``).

    Attributes
    ----------
    spec : WeightSpaceSpec
        The weight space, in :attr:`mode`.
    mode : {"np", "hnp"}
    config : ModelConfig
    layers : nn.ModuleList
    output : {"invariant", "weight_space"}
    in_channels, out_channels, out_features : int or None
    """

    def __init__(
        self,
        spec: WeightSpaceSpec,
        config: ModelConfig,
        layers: list[nn.Module],
        out_channels: int | None,
        out_features: int | None,
    ) -> None:
        super().__init__()
        body = config.nfn
        self.spec = spec.with_mode(body.mode)
        self.mode = body.mode
        self.config = config
        self.in_channels = body.in_channels
        self.output = body.output
        self.out_channels = out_channels
        self.out_features = out_features
        self.layers = nn.ModuleList(layers)

    def forward(self, features: WeightSpaceFeatures) -> torch.Tensor | WeightSpaceFeatures:
        x: Any = _as_features(features, "NFN", self.in_channels)
        for layer in self.layers:
            x = layer(x)
        return x

    def to_spec(self, spec: WeightSpaceSpec) -> NFN:
        """This NFN for another weight space, with the same weights (shared, not copied).

        Each NF-Layer is moved by :meth:`NFLinear.to_spec <nfncompile.nn.NFLinear.to_spec>`
        (so each must use ``basis: linear``, whose weights belong to relations between kinds
        of tensors, and the new space may only need relations it has: a deeper network of the
        same family); an :class:`~nfncompile.nn.IOEncoding` (no weights) is made again for the
        new space; activations, norms, dropout and value encodings are shared as they are.
        Training either NFN trains both. The new NFN's ``config`` is this one's without its
        ``weight_space`` (``build(config, spec=...)`` makes a fresh one for the new space).

        Only an equivariant NFN (``output == "weight_space"``) moves: an invariant one's head
        reads the pooled features of its own space's tensors by position.

        Raises
        ------
        ConfigError
            For an invariant NFN, or naming the layer (``layers[i]``) that cannot move and why.

        Examples
        --------
        >>> from nfncompile.declarative import build
        >>> from nfncompile.testing import mlp_spec
        >>> net = build({"nfn": {"mode": "np", "layers": [
        ...     {"type": "nf_linear", "channels": 4, "basis": "linear"}, {"type": "activation"},
        ...     {"type": "nf_linear", "channels": 1, "basis": "linear"}]}},
        ...     spec=mlp_spec([4, 8, 8, 2]))
        >>> deeper = net.to_spec(mlp_spec([4, 8, 8, 8, 8, 2]))
        >>> sum(p.numel() for p in deeper.parameters()) <= sum(p.numel() for p in net.parameters())
        True
        """
        if self.output != "weight_space":
            raise ConfigError(
                "NFN.to_spec: only an NFN with output: weight_space moves to another weight "
                "space; this one pools (nf_pool) and its head reads its own space's tensors by "
                "position"
            )
        spec = spec.with_mode(self.mode)
        layers: list[nn.Module] = []
        for i, layer in enumerate(self.layers):
            try:
                if isinstance(layer, NFLinear):
                    layer = layer.to_spec(spec)
                elif isinstance(layer, IOEncoding):
                    layer = _io_encoding_for(layer, spec)
                elif hasattr(layer, "spec"):  # any other layer bound to its weight space
                    raise ConfigError("it is built for the positions of its own weight space")
            except NfnCompileError as e:
                raise ConfigError(
                    f"NFN.to_spec: layers[{i}] ({type(layer).__name__}): {e}"
                ) from None
            layers.append(layer)
        body = dataclasses.replace(self.config.nfn, weight_space=None)
        config = dataclasses.replace(self.config, nfn=body)
        return NFN(spec, config, layers, self.out_channels, self.out_features)

    def extra_repr(self) -> str:
        out = (
            f"out_features={self.out_features}"
            if self.output == "invariant"
            else (f"out_channels={self.out_channels}")
        )
        return f"mode={self.mode!r}, in_channels={self.in_channels}, {out}"


class StatNN(nn.Module):
    """StatNN baseline: :class:`~nfncompile.nn.stats.StatFeatures`, then an MLP; ``(B, F)`` out.

    Attributes: ``spec``, ``mode`` (``None``: invariant under every permutation),
    ``config``, ``output == "invariant"``, ``in_channels``, ``out_features``.
    """

    def __init__(self, spec: WeightSpaceSpec, config: ModelConfig) -> None:
        super().__init__()
        from ..nn.stats import StatFeatures

        body = config.stat_nn
        self.spec = spec
        self.mode = None
        self.config = config
        self.output = "invariant"
        self.in_channels = body.in_channels
        self.out_channels = None
        self.out_features = body.head.out_features
        self.stats = StatFeatures(spec, quantiles=body.quantiles, in_channels=body.in_channels)
        self.head = mlp_head(self.stats.num_features, body.head, body.head.out_features)

    def forward(self, features: WeightSpaceFeatures) -> torch.Tensor:
        return self.head(self.stats(_as_features(features, "StatNN", self.in_channels)))


class FlatMLP(nn.Module):
    """MLP baseline on the concatenated, flattened weights (in the spec's param order).

    Attributes: ``spec``, ``mode`` (``None``: no symmetry), ``config``, ``output``,
    ``in_channels``, ``out_features`` (invariant) or ``out_channels`` (weight space).
    """

    def __init__(self, spec: WeightSpaceSpec, config: ModelConfig) -> None:
        super().__init__()
        body = config.mlp
        self.spec = spec
        self.mode = None
        self.config = config
        self.output = body.output
        self.in_channels = body.in_channels
        self.out_features = body.out_features
        self.out_channels = body.out_channels
        total = sum(p.numel for p in spec.params)
        width = body.out_features if body.output == "invariant" else body.out_channels * total
        self.net = mlp_head(body.in_channels * total, body, width)

    def forward(self, features: WeightSpaceFeatures) -> torch.Tensor | WeightSpaceFeatures:
        x = _as_features(features, "FlatMLP", self.in_channels)
        try:
            self.spec.check_state_dict(x, leading=2)
        except NfnCompileError as e:
            raise FeatureMismatchError(f"FlatMLP: {e}") from None
        names = self.spec.names
        y = self.net(torch.cat([x[n].flatten(1) for n in names], dim=1))
        if self.output == "invariant":
            return y
        c = self.out_channels
        sizes = [c * p.numel for p in self.spec.params]
        chunks = torch.split(y, sizes, dim=1)
        return WeightSpaceFeatures(
            {p.name: t.reshape(y.shape[0], c, *p.shape) for p, t in zip(self.spec.params, chunks)}
        )
