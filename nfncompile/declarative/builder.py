"""Declarative models: build an NFN (or a baseline) from a YAML spec.

A model spec file has exactly one top-level key, which names the kind of model:

``nfn``
    A neural functional: a stack of NF-Layers, pointwise modules, an optional invariant
    pooling and an MLP head. Without ``nf_pool`` the stack ends in weight space (features of
    the same shapes as the input weights, for equivariant tasks such as INR editing).
``stat_nn``
    The StatNN baseline: per-parameter statistics (:class:`~nfncompile.nn.stats.StatFeatures`)
    followed by an MLP head; invariant output.
``mlp``
    An MLP on the flattened weights (no symmetry): an invariant output of ``out_features``,
    or ``output: weight_space`` (weight-space features of ``out_channels`` channels).

Every kind names its weight space under ``weight_space``: a ``model`` to trace (a
:data:`~nfncompile.architectures.CATALOGUE` name, an
:data:`~nfncompile.architectures.FACTORIES` name, or ``"module:function"``), with ``kwargs``
and ``input_shape``, or a weight-space ``spec`` YAML (relative to the spec file). It may be
left out when :func:`build` is given ``spec=``.

.. code-block:: yaml

    nfn:
      weight_space: {model: small_cnn, kwargs: {channels: 16}}   # or {spec: ws.yaml}
      mode: hnp                    # np | hnp
      in_channels: 1
      layers:
        - {type: nf_linear, channels: 16, io_embed: false}
        - {type: activation, fn: relu}
        - {type: norm}
        - {type: dropout, p: 0.1}
        - {type: io_encoding}      # hnp only: adds channels encoding input/output positions
        - {type: nf_linear, channels: 16}
        - {type: nf_pool}          # invariant features (B, F)
        - {type: mlp, hidden: [64], out_features: 1, activation: relu, dropout: 0.0}

    stat_nn:
      weight_space: {model: small_cnn}
      head: {hidden: [64, 64], out_features: 1}

    mlp:
      weight_space: {model: siren}
      hidden: [256, 256]
      output: weight_space        # or: invariant (then out_features is required)

Every error names the file and key path, e.g. ``specs/x.yaml: nfn.layers[3]: io_encoding
after nf_pool: ...``. :func:`schema` is the JSON Schema of these files (``specs/schema.json``).

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

import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from ..errors import (
    ConfigError,
    FeatureMismatchError,
    FieldError,
    ModelArgumentError,
    NfnCompileError,
    SpecError,
)
from ..features import WeightSpaceFeatures
from ..files import load_yaml
from ..nn.activations import ACTIVATIONS, make_activation
from ..spec import WeightSpaceSpec
from .schema import json_schema
from .validate import parse

__all__ = [
    "WeightSpaceConfig",
    "NFLinearLayer",
    "ActivationLayer",
    "NormLayer",
    "DropoutLayer",
    "IOEncodingLayer",
    "NFPoolLayer",
    "MLPLayer",
    "Layer",
    "MLPHead",
    "NFNConfig",
    "StatNNConfig",
    "MLPConfig",
    "ModelConfig",
    "NFN",
    "StatNN",
    "FlatMLP",
    "load",
    "build",
    "build_model",
    "resolve_weight_space",
    "schema",
    "write_schema",
]


def _activations() -> tuple:
    return tuple(ACTIVATIONS)


# --------------------------------------------------------------------------------------------
# schema: weight space
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightSpaceConfig:
    """The weight space the model reads: a model to trace, or a weight-space spec YAML.

    Exactly one of ``model`` and ``spec``.

    Examples
    --------
    >>> from nfncompile.declarative.validate import parse
    >>> parse(WeightSpaceConfig, {"model": "small_cnn", "kwargs": {"channels": 8}})
    WeightSpaceConfig(model='small_cnn', kwargs={'channels': 8}, input_shape=None, spec=None)
    """

    _exactly_one: ClassVar = (("model", "spec"),)

    model: str | None = field(
        default=None,
        metadata={
            "help": "a catalogue name (nfncompile.architectures.CATALOGUE), a factory in "
            "nfncompile.architectures.FACTORIES, or 'module:function'; traced to get the spec"
        },
    )
    kwargs: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "keyword arguments for the model factory"}
    )
    input_shape: tuple[int, ...] | None = field(
        default=None,
        metadata={
            "min": 1,
            "min_items": 1,
            "help": "example input shape (batch dim included) for tracing; defaults to the "
            "catalogue entry's",
        },
    )
    spec: str | None = field(
        default=None,
        metadata={
            "help": "a weight-space spec YAML (WeightSpaceSpec.from_yaml), relative to this file"
        },
    )

    def __post_init__(self) -> None:
        if self.spec is not None:
            if self.kwargs:
                raise FieldError("kwargs", "only used with model, not with spec")
            if self.input_shape is not None:
                raise FieldError("input_shape", "only used with model, not with spec")


# --------------------------------------------------------------------------------------------
# schema: NFN layers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NFLinearLayer:
    """An equivariant NF-Layer (:class:`~nfncompile.nn.layers.NFLinear`) to ``channels`` channels."""

    type: ClassVar[str] = "nf_linear"
    channels: int = field(metadata={"min": 1, "help": "output channels"})
    io_embed: bool = field(
        default=False, metadata={"help": "learned embeddings of input/output neurons (hnp)"}
    )
    bias: bool = field(default=True, metadata={"help": "include the equivariant biases"})


@dataclass(frozen=True)
class ActivationLayer:
    """An elementwise activation (:class:`~nfncompile.nn.pointwise.NFActivation`)."""

    type: ClassVar[str] = "activation"
    fn: str = field(default="relu", metadata={"choices": _activations, "help": "activation"})


@dataclass(frozen=True)
class NormLayer:
    """Channel normalisation of every parameter (:class:`~nfncompile.nn.pointwise.NFNorm`)."""

    type: ClassVar[str] = "norm"
    eps: float = field(default=1e-5, metadata={"min": 0, "help": "added to the variance"})
    affine: bool = field(default=True, metadata={"help": "learned per-channel scale and shift"})


@dataclass(frozen=True)
class DropoutLayer:
    """Elementwise dropout (:class:`~nfncompile.nn.pointwise.NFDropout`)."""

    type: ClassVar[str] = "dropout"
    p: float = field(default=0.5, metadata={"min": 0, "max": 1, "help": "drop probability"})


@dataclass(frozen=True)
class IOEncodingLayer:
    """Sinusoidal encodings of input/output neuron positions, concatenated as channels (hnp)."""

    type: ClassVar[str] = "io_encoding"
    max_freq: float = field(
        default=10.0, metadata={"min": 0, "help": "the highest frequency is max_freq / 2"}
    )
    num_freqs: int = field(default=6, metadata={"min": 1, "help": "frequencies per encoding"})


@dataclass(frozen=True)
class NFPoolLayer:
    """Invariant pooling (:class:`~nfncompile.nn.layers.NFPool`): features become ``(B, F)``."""

    type: ClassVar[str] = "nf_pool"


@dataclass(frozen=True, kw_only=True)
class MLPHead:
    """An MLP on invariant ``(B, F)`` features: hidden layers, then ``out_features``."""

    hidden: tuple[int, ...] = field(default=(), metadata={"min": 1, "help": "hidden widths"})
    out_features: int = field(metadata={"min": 1, "help": "output width"})
    activation: str = field(
        default="relu", metadata={"choices": _activations, "help": "hidden activation"}
    )
    dropout: float = field(
        default=0.0, metadata={"min": 0, "max": 1, "help": "dropout after each hidden layer"}
    )


@dataclass(frozen=True, kw_only=True)
class MLPLayer(MLPHead):
    """An MLP head after ``nf_pool``: hidden layers, then ``out_features``."""

    type: ClassVar[str] = "mlp"


#: One layer of an NFN stack, picked by its ``type`` key.
Layer = (
    NFLinearLayer
    | ActivationLayer
    | NormLayer
    | DropoutLayer
    | IOEncodingLayer
    | NFPoolLayer
    | MLPLayer
)


# --------------------------------------------------------------------------------------------
# schema: model kinds
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class NFNConfig:
    """A neural functional: NF-Layers, pointwise modules, optional pooling and MLP head.

    The stack is checked at construction: weight-space layers (``nf_linear``, ``activation``,
    ``norm``, ``dropout``, ``io_encoding``) come before ``nf_pool``, ``mlp`` layers after it;
    ``io_encoding`` needs ``mode: hnp``. Without ``nf_pool`` the output is weight-space
    features with the channels of the last ``nf_linear`` (or ``in_channels``).
    """

    weight_space: WeightSpaceConfig | None = field(
        default=None, metadata={"help": "the weight space (optional when build() gets spec=)"}
    )
    mode: Literal["np", "hnp"] = field(
        default="np",
        metadata={"help": "np: every neuron space permutes; hnp: input/output spaces are fixed"},
    )
    in_channels: int = field(default=1, metadata={"min": 1, "help": "channels of the input"})
    layers: tuple[Layer, ...] = field(metadata={"min_items": 1, "help": "the stack, in order"})

    def __post_init__(self) -> None:
        pooled_at = None
        for i, layer in enumerate(self.layers):
            where = f"layers[{i}]"
            if isinstance(layer, IOEncodingLayer) and self.mode != "hnp":
                raise FieldError(
                    where,
                    f"io_encoding with mode {self.mode}: encoding the positions of input and "
                    "output neurons breaks their permutation symmetry; use mode: hnp",
                )
            if isinstance(layer, NFLinearLayer) and layer.io_embed and self.mode != "hnp":
                raise FieldError(
                    where,
                    f"nf_linear with io_embed under mode {self.mode}: input/output embeddings "
                    "tell those neurons apart; use mode: hnp",
                )
            if pooled_at is not None and not isinstance(layer, MLPLayer):
                raise FieldError(
                    where,
                    f"{layer.type} after nf_pool: nf_pool (layers[{pooled_at}]) turned the "
                    "weight-space features into invariant (B, F) features; only mlp layers "
                    "may follow it",
                )
            if isinstance(layer, MLPLayer) and pooled_at is None:
                raise FieldError(
                    where,
                    "mlp before nf_pool: an mlp reads invariant (B, F) features; "
                    "add {type: nf_pool} before it",
                )
            if isinstance(layer, NFPoolLayer):
                pooled_at = i

    @property
    def output(self) -> str:
        """``"invariant"`` when the stack pools, else ``"weight_space"``."""
        pooled = any(isinstance(x, NFPoolLayer) for x in self.layers)
        return "invariant" if pooled else "weight_space"


@dataclass(frozen=True, kw_only=True)
class StatNNConfig:
    """StatNN baseline: per-parameter mean, variance and quantiles, then an MLP head."""

    weight_space: WeightSpaceConfig | None = field(
        default=None, metadata={"help": "the weight space (optional when build() gets spec=)"}
    )
    in_channels: int = field(default=1, metadata={"min": 1, "help": "channels of the input"})
    quantiles: tuple[float, ...] = field(
        default=(0.0, 0.25, 0.5, 0.75, 1.0),
        metadata={"min": 0, "max": 1, "help": "quantile levels per parameter and channel"},
    )
    head: MLPHead = field(metadata={"help": "the MLP on the statistics"})


@dataclass(frozen=True)
class MLPConfig:
    """MLP baseline on the flattened weights (no symmetry)."""

    weight_space: WeightSpaceConfig | None = field(
        default=None, metadata={"help": "the weight space (optional when build() gets spec=)"}
    )
    in_channels: int = field(default=1, metadata={"min": 1, "help": "channels of the input"})
    hidden: tuple[int, ...] = field(
        default=(256, 256), metadata={"min": 1, "help": "hidden widths"}
    )
    activation: str = field(
        default="relu", metadata={"choices": _activations, "help": "hidden activation"}
    )
    dropout: float = field(
        default=0.0, metadata={"min": 0, "max": 1, "help": "dropout after each hidden layer"}
    )
    output: Literal["invariant", "weight_space"] = field(
        default="invariant",
        metadata={"help": "invariant: (B, out_features); weight_space: features like the input"},
    )
    out_features: int | None = field(
        default=None, metadata={"min": 1, "help": "output width (output: invariant)"}
    )
    out_channels: int | None = field(
        default=None,
        metadata={"min": 1, "help": "output channels (output: weight_space; default 1)"},
    )

    def __post_init__(self) -> None:
        if self.output == "invariant":
            if self.out_features is None:
                raise FieldError("out_features", "missing required key (output is 'invariant')")
            if self.out_channels is not None:
                raise FieldError(
                    "out_channels",
                    "only for output: weight_space; an invariant output has out_features",
                )
        else:
            if self.out_features is not None:
                raise FieldError(
                    "out_features",
                    "only for output: invariant; a weight_space output has out_channels",
                )
            if self.out_channels is None:
                object.__setattr__(self, "out_channels", 1)


@dataclass(frozen=True)
class ModelConfig:
    """A model spec file: exactly one of ``nfn``, ``stat_nn``, ``mlp``."""

    _exactly_one: ClassVar = (("nfn", "stat_nn", "mlp"),)

    nfn: NFNConfig | None = field(default=None, metadata={"help": "a neural functional"})
    stat_nn: StatNNConfig | None = field(
        default=None, metadata={"help": "StatNN baseline (statistics + MLP)"}
    )
    mlp: MLPConfig | None = field(
        default=None, metadata={"help": "MLP baseline on the flattened weights"}
    )

    @property
    def kind(self) -> str:
        """``"nfn"``, ``"stat_nn"`` or ``"mlp"``."""
        for name in ("nfn", "stat_nn", "mlp"):
            if getattr(self, name) is not None:
                return name
        raise ConfigError("ModelConfig: expected exactly one of nfn, stat_nn, mlp; got none")

    @property
    def body(self) -> NFNConfig | StatNNConfig | MLPConfig:
        """The config of :attr:`kind`."""
        return getattr(self, self.kind)


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------


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
    ('nfn', (NFLinearLayer(channels=4, io_embed=False, bias=True),))
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


# --------------------------------------------------------------------------------------------
# weight-space resolution
# --------------------------------------------------------------------------------------------

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
    :func:`nfncompile.frontend.trace` on a seeded ``torch.randn(input_shape)``. Traced specs
    are cached per (model, kwargs, input_shape).

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
        key = (cfg.model, json.dumps(cfg.kwargs, sort_keys=True), cfg.input_shape)
    if key is not None and key in _TRACE_CACHE:
        return _TRACE_CACHE[key]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, shape = _make_model(cfg, source, path)
        example = torch.randn(shape)
        from ..frontend.tracing import trace

        try:
            spec = trace(model, example)
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


# --------------------------------------------------------------------------------------------
# modules
# --------------------------------------------------------------------------------------------


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


def _mlp(in_features: int, head: MLPHead | MLPConfig, out_features: int) -> nn.Sequential:

    layers: list[nn.Module] = []
    width = in_features
    for h in head.hidden:
        layers += [nn.Linear(width, h), make_activation(head.activation)]
        if head.dropout > 0:
            layers.append(nn.Dropout(head.dropout))
        width = h
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


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
        self.head = _mlp(self.stats.num_features, body.head, body.head.out_features)

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
        self.net = _mlp(body.in_channels * total, body, width)

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


# --------------------------------------------------------------------------------------------
# build
# --------------------------------------------------------------------------------------------


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
    from ..nn.layers import NFLinear, NFPool
    from ..nn.pointwise import IOEncoding, NFActivation, NFDropout, NFNorm

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
            elif isinstance(layer, NFPoolLayer):
                module = NFPool(spec, mode=mode, in_channels=channels)
                features = module.num_features
            else:  # MLPLayer (the config guarantees it follows nf_pool)
                module = _mlp(features, layer, layer.out_features)
                features = layer.out_features
        except NfnCompileError as e:
            raise ConfigError(f"{source}: nfn.layers[{i}]: {layer.type}: {e}") from None
        modules.append(module)
    if body.output == "invariant":
        return NFN(spec, cfg, modules, out_channels=None, out_features=features)
    return NFN(spec, cfg, modules, out_channels=channels, out_features=None)


# --------------------------------------------------------------------------------------------
# JSON Schema
# --------------------------------------------------------------------------------------------


def schema() -> dict:
    """The JSON Schema (draft 2020-12) of model spec files, generated from the dataclasses.

    Examples
    --------
    >>> sorted(schema()["properties"])
    ['mlp', 'nfn', 'stat_nn']
    """
    return json_schema(ModelConfig, title="nfncompile model spec (nfn / stat_nn / mlp)")


def write_schema(path: str | os.PathLike | None = None) -> str:
    """The schema as JSON text (2-space indent, trailing newline), written to ``path`` if given.

    ``specs/schema.json`` is this text; a test checks that it is up to date. Regenerate with
    ``python -c "from nfncompile.declarative.builder import write_schema; write_schema('specs/schema.json')"``.
    """
    text = json.dumps(schema(), indent=2) + "\n"
    if path is not None:
        Path(path).write_text(text)
    return text
