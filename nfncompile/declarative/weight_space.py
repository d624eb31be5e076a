"""Weight-space resolution: the :class:`WeightSpaceSpec` a ``weight_space`` section names.

A section names a weight-space spec YAML (read from disk) or a model to trace (built seeded
and traced with :func:`nfncompile.frontend.trace`). Traced specs are kept in one trace cache
for the process, keyed by model name, kwargs and input shape: callers that need the spec of a
named model go through :func:`resolve_weight_space` rather than keep a cache of their own.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, ModelArgumentError, NfnCompileError, SpecError
from ..spec import WeightSpaceSpec
from .config import WeightSpaceConfig

__all__ = ["resolve_weight_space"]

_TRACE_CACHE: dict = {}


def resolve_weight_space(
    cfg: WeightSpaceConfig,
    base_dir: str | os.PathLike | None = None,
    *,
    source: str = "<dict>",
    path: str = "weight_space",
) -> WeightSpaceSpec:
    """The :class:`WeightSpaceSpec` a ``weight_space`` section names.

    ``spec:`` reads the YAML (relative to ``base_dir``); ``model:`` builds the model
    (seeded, without touching the global RNG) and traces it with
    :func:`nfncompile.frontend.trace` on a seeded ``torch.randn(input_shape)``, its neurons
    along ``channel_dim``. Traced specs are cached per (model, kwargs, input_shape,
    channel_dim).

    Parameters
    ----------
    cfg : WeightSpaceConfig
    base_dir : path, optional
        Directory relative ``spec`` paths start from (default: the current directory).
    source, path : str
        For error messages (``specs/x.yaml: nfn.weight_space.model: ...``).

    Raises
    ------
    ConfigError
        Unknown model, bad kwargs, missing spec file, invalid spec, failed trace.
    """
    if cfg.spec is not None:
        return _read_spec(cfg.spec, base_dir, source, f"{path}.spec")
    key = None
    with contextlib.suppress(TypeError, ValueError):
        key = (cfg.model, json.dumps(cfg.kwargs, sort_keys=True), cfg.input_shape, cfg.channel_dim)
    if key is not None and key in _TRACE_CACHE:
        return _TRACE_CACHE[key]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, shape = _make_model(cfg, source, path)
        from ..frontend.channel_dims import channel_dim_of
        from ..frontend.tracing import trace

        try:
            channel_dim_of(cfg.channel_dim, 0, shape)
        except ConfigError as e:
            raise ConfigError(f"{source}: {path}.channel_dim: {e}") from None
        example = torch.randn(shape)

        try:
            spec = trace(model, example, channel_dim=cfg.channel_dim)
        except (NfnCompileError, RuntimeError) as e:
            raise ConfigError(
                f"{source}: {path}.model: tracing {cfg.model!r} on an input of shape "
                f"{list(shape)} failed: {e}"
            ) from None
    if key is not None:
        _TRACE_CACHE[key] = spec
    return spec


def _read_spec(spec_path: str, base_dir: Any, source: str, path: str) -> WeightSpaceSpec:
    p = Path(spec_path)
    if not p.is_absolute() and base_dir is not None:
        p = Path(base_dir) / p
    if not p.is_file():
        rel = f" (relative paths start at {base_dir})" if base_dir is not None else ""
        raise ConfigError(f"{source}: {path}: no such file {str(p)!r}{rel}")
    try:
        return WeightSpaceSpec.from_yaml(p)
    except SpecError as e:
        raise ConfigError(f"{source}: {path}: {e}") from None


def _make_model(cfg: WeightSpaceConfig, source: str, path: str) -> tuple[nn.Module, tuple]:
    from ..architectures import load

    try:
        model, default_shape = load(cfg.model, cfg.kwargs)
    except ModelArgumentError as e:
        raise ConfigError(f"{source}: {path}.kwargs: {e}") from None
    except ConfigError as e:
        raise ConfigError(f"{source}: {path}.model: {e}") from None
    shape = cfg.input_shape or default_shape
    if shape is None:
        raise ConfigError(
            f"{source}: {path}.input_shape: missing required key (only catalogue models have "
            "a default example input)"
        )
    return model, tuple(shape)
