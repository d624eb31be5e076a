"""The schema of model spec files: frozen dataclasses that :func:`~.validate.parse` reads.

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
``input_shape`` and ``channel_dim``, or a weight-space ``spec`` YAML (relative to the spec file). It may be
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
        - {type: fourier_features, num_freqs: 3, min_freq: 0.5, max_freq: 16}  # of the values
        - {type: threshold_features, num_thresholds: 9, low: -3, high: 3, width: 0.3}
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
after nf_pool: ...``. :func:`~.builder.load` reads these files, :func:`~.builder.build` builds
the models they describe, and :func:`~.schema_export.schema` is their JSON Schema
(``specs/schema.json``).

Examples
--------
>>> from nfncompile.declarative.validate import parse
>>> cfg = parse(ModelConfig, {"mlp": {"hidden": [8], "output": "weight_space"}})
>>> cfg.kind, cfg.mlp.out_channels
('mlp', 1)
>>> parse(ModelConfig, {"nfn": {"layers": [{"type": "nf_pool"}, {"type": "io_encoding"}],
...                            "mode": "hnp"}})
Traceback (most recent call last):
...
nfncompile.errors.ConfigError: <dict>: nfn.layers[1]: io_encoding after nf_pool: nf_pool (layers[0]) turned the weight-space features into invariant (B, F) features; only mlp layers may follow it
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from ..errors import ConfigError, FieldError
from ..nn.activations import ACTIVATIONS
from ..nn.linear import MAX_FOLD

__all__ = [
    "WeightSpaceConfig",
    "NFLinearLayer",
    "ActivationLayer",
    "NormLayer",
    "DropoutLayer",
    "IOEncodingLayer",
    "FourierFeaturesLayer",
    "ThresholdFeaturesLayer",
    "NFPoolLayer",
    "MLPLayer",
    "Layer",
    "MLPHead",
    "NFNConfig",
    "StatNNConfig",
    "MLPConfig",
    "ModelConfig",
]


def _activations() -> tuple:
    return tuple(ACTIVATIONS)


# --------------------------------------------------------------------------------------------
# weight space
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightSpaceConfig:
    """The weight space the model reads: a model to trace, or a weight-space spec YAML.

    Exactly one of ``model`` and ``spec``.

    Examples
    --------
    >>> from nfncompile.declarative.validate import parse
    >>> parse(WeightSpaceConfig, {"model": "small_cnn", "kwargs": {"channels": 8}})
    WeightSpaceConfig(model='small_cnn', kwargs={'channels': 8}, input_shape=None, channel_dim=1, spec=None)
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
    channel_dim: int = field(
        default=1,
        metadata={
            "help": "the example input's dim that holds its neurons, the input space: 1 for "
            "(batch, channels, ...), -1 for (batch, sequence, features)"
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
            if self.channel_dim != 1:
                raise FieldError("channel_dim", "only used with model, not with spec")


# --------------------------------------------------------------------------------------------
# NFN layers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NFLinearLayer:
    """An equivariant NF-Layer (:class:`~nfncompile.nn.NFLinear`) to ``channels`` channels."""

    type: ClassVar[str] = "nf_linear"
    channels: int = field(metadata={"min": 1, "help": "output channels"})
    io_embed: bool = field(
        default=False, metadata={"help": "learned embeddings of input/output neurons (hnp)"}
    )
    bias: bool = field(default=True, metadata={"help": "include the equivariant biases"})
    basis: Literal["auto", "complete", "linear"] = field(
        default="auto",
        metadata={
            "help": "complete: every equivariant map (size quadratic in the number of tensors); "
            "linear: weights per relation between tensors, size independent of depth; auto: "
            "complete up to 2**24 weights"
        },
    )
    width: int | None = field(
        default=None,
        metadata={"min": 1, "help": "linear basis: width of its channels (default 4 x channels)"},
    )
    max_fold: int | None = field(
        default=MAX_FOLD,
        metadata={
            "min": 1,
            "help": "linear basis: fixed entries a tile folds into each channel at most, its "
            "larger fixed dims exchanged (null: fold all)",
        },
    )


@dataclass(frozen=True)
class ActivationLayer:
    """An elementwise activation (:class:`~nfncompile.nn.NFActivation`)."""

    type: ClassVar[str] = "activation"
    fn: str = field(default="relu", metadata={"choices": _activations, "help": "activation"})


@dataclass(frozen=True)
class NormLayer:
    """Channel normalisation of every parameter (:class:`~nfncompile.nn.NFNorm`)."""

    type: ClassVar[str] = "norm"
    eps: float = field(default=1e-5, metadata={"min": 0, "help": "added to the variance"})
    affine: bool = field(default=True, metadata={"help": "learned per-channel scale and shift"})


@dataclass(frozen=True)
class DropoutLayer:
    """Elementwise dropout (:class:`~nfncompile.nn.NFDropout`)."""

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
class FourierFeaturesLayer:
    """Fourier features of every weight value, concatenated as channels
    (:class:`~nfncompile.nn.fourier.FourierFeatures`; equivariant in np and hnp)."""

    type: ClassVar[str] = "fourier_features"
    kind: Literal["sinusoidal", "gaussian"] = field(
        default="sinusoidal",
        metadata={"help": "sinusoidal: log-spaced frequencies; gaussian: random N(0, scale^2)"},
    )
    num_freqs: int = field(
        default=3, metadata={"min": 1, "help": "frequencies (per input channel if sinusoidal)"}
    )
    min_freq: float = field(
        default=0.5, metadata={"min": 0, "help": "sinusoidal: lowest angular frequency (> 0)"}
    )
    max_freq: float = field(
        default=16.0, metadata={"min": 0, "help": "sinusoidal: highest angular frequency"}
    )
    scale: float = field(default=1.0, metadata={"min": 0, "help": "gaussian: std of the draw"})
    seed: int = field(default=0, metadata={"min": 0, "help": "gaussian: seeds the draw"})
    keep_input: bool = field(default=True, metadata={"help": "keep the input channels"})


@dataclass(frozen=True)
class ThresholdFeaturesLayer:
    """Soft indicators ``sigmoid((w - t) / width)`` of every weight value at evenly spaced
    thresholds, concatenated as channels (:class:`~nfncompile.nn.fourier.ThresholdFeatures`)."""

    type: ClassVar[str] = "threshold_features"
    num_thresholds: int = field(default=9, metadata={"min": 1, "help": "thresholds"})
    low: float = field(default=-3.0, metadata={"help": "lowest threshold"})
    high: float = field(default=3.0, metadata={"help": "highest threshold"})
    width: float = field(default=0.3, metadata={"min": 0, "help": "softness (> 0)"})
    keep_input: bool = field(default=True, metadata={"help": "keep the input channels"})


@dataclass(frozen=True)
class NFPoolLayer:
    """Invariant pooling (:class:`~nfncompile.nn.NFPool`): features become ``(B, F)``."""

    type: ClassVar[str] = "nf_pool"
    max_fold: int | None = field(
        default=None,
        metadata={
            "min": 1,
            "help": "fixed positions of a tile kept as features at most, its larger fixed "
            "dims averaged (default: all kept)",
        },
    )


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
    | FourierFeaturesLayer
    | ThresholdFeaturesLayer
    | NFPoolLayer
    | MLPLayer
)


# --------------------------------------------------------------------------------------------
# model kinds
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class NFNConfig:
    """A neural functional: NF-Layers, pointwise modules, optional pooling and MLP head.

    The stack is checked at construction: weight-space layers (``nf_linear``, ``activation``,
    ``norm``, ``dropout``, ``io_encoding``, ``fourier_features``, ``threshold_features``) come
    before ``nf_pool``, ``mlp`` layers after it;
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
