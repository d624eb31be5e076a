"""Build the model a model spec describes: :func:`load`, :func:`build`, :func:`build_model`.

A spec is a YAML file, the same as plain data, or a validated :class:`~.config.ModelConfig`
(its format is in :mod:`nfncompile.declarative.config`). :func:`build` validates it, resolves
its weight space (:func:`~.weight_space.resolve_weight_space`) and assembles an
:class:`~.models.NFN` of NF-Layers, the :class:`~.models.StatNN` baseline or a
:class:`~.models.FlatMLP`.

Examples
--------
>>> cfg = load({"mlp": {"hidden": [8], "output": "weight_space"}})
>>> cfg.kind, cfg.mlp.out_channels
('mlp', 1)
>>> load({"nfn": {"layers": [{"type": "nf_pool"}, {"type": "io_encoding"}], "mode": "hnp"}})
Traceback (most recent call last):
...
nfncompile.errors.ConfigError: <dict>: nfn.layers[1]: io_encoding after nf_pool: nf_pool (layers[0]) turned the weight-space features into invariant (B, F) features; only mlp layers may follow it
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ConfigError, NfnCompileError
from ..files import load_yaml
from ..spec import WeightSpaceSpec
from .config import (
    ActivationLayer,
    DropoutLayer,
    FourierFeaturesLayer,
    IOEncodingLayer,
    ModelConfig,
    NFLinearLayer,
    NFPoolLayer,
    NormLayer,
    ThresholdFeaturesLayer,
)
from .models import NFN, FlatMLP, StatNN, mlp_head
from .validate import parse
from .weight_space import resolve_weight_space

__all__ = ["load", "build", "build_model"]


def load(
    path_or_dict: str | os.PathLike | Mapping | ModelConfig, *, source: str | None = None
) -> ModelConfig:
    """Read and validate a model spec (a YAML path, plain data, or a ``ModelConfig``).

    Raises
    ------
    ConfigError
        Path-qualified, e.g. ``specs/x.yaml: nfn.layers[2].channels: expected a positive int,
        got -3``.

    Examples
    --------
    >>> cfg = load({"nfn": {"mode": "hnp", "layers": [{"type": "nf_linear", "channels": 4}]}})
    >>> cfg.kind, cfg.nfn.layers
    ('nfn', (NFLinearLayer(channels=4, io_embed=False, bias=True, basis='auto', width=None, max_fold=64),))
    """
    cfg, _, _ = _load(path_or_dict, source)
    return cfg


def _load(path_or_dict: Any, source: str | None = None) -> tuple[ModelConfig, str, Path | None]:
    if isinstance(path_or_dict, ModelConfig):
        return path_or_dict, source or "<config>", None
    if isinstance(path_or_dict, (str, os.PathLike)):
        data, src = load_yaml(path_or_dict)
        return (
            parse(ModelConfig, data, source=source or src),
            source or src,
            Path(path_or_dict).parent,
        )
    if isinstance(path_or_dict, Mapping):
        src = source or "<dict>"
        return parse(ModelConfig, path_or_dict, source=src), src, None
    raise ConfigError(
        f"build/load expect a YAML path, a mapping or a ModelConfig, "
        f"got {type(path_or_dict).__name__}"
    )


def build(
    path_or_dict: str | os.PathLike | Mapping | ModelConfig,
    *,
    spec: WeightSpaceSpec | None = None,
    base_dir: str | os.PathLike | None = None,
) -> nn.Module:
    """Build the model a spec describes.

    Parameters
    ----------
    path_or_dict : path, mapping or ModelConfig
        A model spec YAML file (``nfn:`` / ``stat_nn:`` / ``mlp:``), the same as plain data,
        or an already-validated :class:`ModelConfig`.
    spec : WeightSpaceSpec, optional
        The weight space to use; takes precedence over (and makes optional) the file's
        ``weight_space`` section.
    base_dir : path, optional
        Where relative ``weight_space.spec`` paths start; defaults to the YAML file's directory
        (the current directory for a mapping).

    Returns
    -------
    nn.Module
        :class:`NFN`, :class:`StatNN` or :class:`FlatMLP`; ``forward(WeightSpaceFeatures)``
        returns ``(B, out_features)`` or :class:`WeightSpaceFeatures`. Each keeps ``.spec``,
        ``.mode``, ``.config``, ``.output``.

    Raises
    ------
    ConfigError
        Anything wrong with the spec, the weight space or the stack, with file and key path.

    Examples
    --------
    >>> import torch
    >>> from nfncompile.architectures import mlp
    >>> from nfncompile.features import WeightSpaceFeatures
    >>> net = build({"mlp": {"weight_space": {"model": "mlp"}, "hidden": [32],
    ...                      "out_features": 2}})
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> feats = WeightSpaceFeatures.from_state_dicts(net.spec, [mlp().state_dict()] * 3)
    >>> net(feats).shape
    torch.Size([3, 2])
    """
    cfg, source, file_dir = _load(path_or_dict)
    return build_model(
        cfg, spec=spec, base_dir=base_dir if base_dir is not None else file_dir, source=source
    )


def build_model(
    cfg: ModelConfig,
    *,
    spec: WeightSpaceSpec | None = None,
    base_dir: str | os.PathLike | None = None,
    source: str = "<config>",
) -> nn.Module:
    """:func:`build` from a validated :class:`ModelConfig` (``source`` prefixes errors)."""
    kind, body = cfg.kind, cfg.body
    if spec is None:
        if body.weight_space is None:
            raise ConfigError(
                f"{source}: {kind}.weight_space: missing required key (or pass spec= to build)"
            )
        spec = resolve_weight_space(
            body.weight_space, base_dir, source=source, path=f"{kind}.weight_space"
        )
    elif not isinstance(spec, WeightSpaceSpec):
        raise ConfigError(f"spec must be a WeightSpaceSpec, got {type(spec).__name__}")
    try:
        if kind == "stat_nn":
            return StatNN(spec, cfg)
        if kind == "mlp":
            return FlatMLP(spec, cfg)
    except NfnCompileError as e:
        raise ConfigError(f"{source}: {kind}: {e}") from None
    return _build_nfn(spec, cfg, source)


def _build_nfn(spec: WeightSpaceSpec, cfg: ModelConfig, source: str) -> NFN:
    from ..nn import (
        FourierFeatures,
        IOEncoding,
        NFActivation,
        NFDropout,
        NFLinear,
        NFNorm,
        NFPool,
        ThresholdFeatures,
    )

    body = cfg.nfn
    mode = body.mode
    spec = spec.with_mode(mode)
    channels = body.in_channels
    features = None  # (B, F) width once pooled
    modules: list[nn.Module] = []
    for i, layer in enumerate(body.layers):
        try:
            if isinstance(layer, NFLinearLayer):
                module = NFLinear(
                    spec,
                    channels,
                    layer.channels,
                    mode=mode,
                    io_embed=layer.io_embed,
                    bias=layer.bias,
                    basis=layer.basis,
                    width=layer.width,
                    max_fold=layer.max_fold,
                )
                channels = layer.channels
            elif isinstance(layer, ActivationLayer):
                module = NFActivation(layer.fn)
            elif isinstance(layer, NormLayer):
                module = NFNorm(channels, eps=layer.eps, affine=layer.affine)
            elif isinstance(layer, DropoutLayer):
                module = NFDropout(layer.p)
            elif isinstance(layer, IOEncodingLayer):
                module = IOEncoding(
                    spec, channels, max_freq=layer.max_freq, num_freqs=layer.num_freqs
                )
                channels = module.out_channels
            elif isinstance(layer, (FourierFeaturesLayer, ThresholdFeaturesLayer)):
                # a value encoding's config fields are its module's keyword arguments
                encoding = (
                    FourierFeatures
                    if isinstance(layer, FourierFeaturesLayer)
                    else ThresholdFeatures
                )
                module = encoding(channels, **dataclasses.asdict(layer))
                channels = module.out_channels
            elif isinstance(layer, NFPoolLayer):
                module = NFPool(spec, mode=mode, in_channels=channels, max_fold=layer.max_fold)
                features = module.num_features
            else:  # MLPLayer (the config guarantees it follows nf_pool)
                module = mlp_head(features, layer, layer.out_features)
                features = layer.out_features
        except NfnCompileError as e:
            raise ConfigError(f"{source}: nfn.layers[{i}]: {layer.type}: {e}") from None
        modules.append(module)
    if body.output == "invariant":
        return NFN(spec, cfg, modules, out_channels=None, out_features=features)
    return NFN(spec, cfg, modules, out_channels=channels, out_features=None)
