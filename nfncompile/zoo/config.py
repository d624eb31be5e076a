"""Zoo specs: the frozen configs of a CNN zoo and an INR zoo, parsed from YAML.

``type: cnn`` (:class:`CNNZooConfig`)
    Small CNNs in the manner of the Small CNN Zoo (Unterthiner et al. 2020): the
    :func:`~nfncompile.architectures.small_cnn` network trained on the 8x8 digits with a
    learning rate, weight decay, init scale, dropout, train fraction, step count, activation and
    optimizer drawn per model; each model's test accuracy is recorded (the target of
    generalization prediction).
``type: inr`` (:class:`INRZooConfig`)
    One :func:`~nfncompile.architectures.siren` fitted to every digit image, with its PSNR, the
    image's label and index (INR classification and editing).

A top-level ``quick:`` mapping of a spec holds overrides for a tiny zoo (``--quick``).

Examples
--------
>>> config = config_from_dict({"type": "inr", "num_images": 4, "hidden": [8]})
>>> config.num_models, config.architecture, config.param_shapes["out.weight"]
(4, 'siren', (1, 8))
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..architectures import siren, small_cnn
from ..declarative import parse
from ..errors import ConfigError, FieldError
from ..files import load_yaml
from ..nn.activations import ACTIVATIONS
from .data import NUM_DIGITS, split_indices

__all__ = [
    "OPTIMIZERS",
    "CNNZooConfig",
    "INRZooConfig",
    "ZooConfig",
    "load_zoo_config",
    "config_from_dict",
]

OPTIMIZERS = ("adam", "sgd")


def _positive_range(name: str, value: tuple, *, allow_zero: bool = False) -> None:
    lo, hi = value
    if lo > hi:
        raise FieldError(name, f"expected [low, high] with low <= high, got [{lo}, {hi}]")
    if (lo < 0) if allow_zero else (lo <= 0):
        need = "non-negative" if allow_zero else "positive (the range is log-uniform)"
        raise FieldError(name, f"expected {need} bounds, got [{lo}, {hi}]")


@dataclass(frozen=True)
class CNNZooConfig:
    """A zoo of small CNNs trained on the digits with hyperparameters drawn per model.

    Ranges are ``[low, high]``: learning rate, weight decay, init scale and steps are drawn
    log-uniformly, dropout and train fraction uniformly; activation and optimizer uniformly
    from their lists. The digits are split once (``test_fraction``, ``split_seed``) into a
    train pool and a test set shared by every model.
    """

    type: ClassVar[str] = "cnn"

    name: str = field(default="digits_cnn", metadata={"help": "zoo name"})
    out: str = field(default="zoos/digits_cnn", metadata={"help": "default output directory"})
    seed: int = field(default=0, metadata={"help": "seeds every shard (with its index)"})
    num_models: int = field(default=1536, metadata={"min": 1})
    models_per_shard: int = field(default=128, metadata={"min": 1})
    channels: int = field(default=8, metadata={"min": 1, "help": "channels of every conv"})
    activations: tuple[str, ...] = field(
        default=("relu", "tanh"), metadata={"min_items": 1, "choices": tuple(ACTIVATIONS)}
    )
    optimizers: tuple[str, ...] = field(
        default=("adam", "sgd"), metadata={"min_items": 1, "choices": OPTIMIZERS}
    )
    learning_rate: tuple[float, float] = field(
        default=(1e-3, 0.3), metadata={"help": "log-uniform"}
    )
    weight_decay: tuple[float, float] = field(
        default=(1e-6, 0.03), metadata={"help": "L2 coefficient, log-uniform"}
    )
    init_scale: tuple[float, float] = field(
        default=(1.0, 6.0), metadata={"help": "multiplies PyTorch's default init; log-uniform"}
    )
    dropout: tuple[float, float] = field(
        default=(0.0, 0.5),
        metadata={"min": 0.0, "max": 0.95, "help": "on the pooled features; uniform"},
    )
    train_fraction: tuple[float, float] = field(
        default=(0.05, 1.0),
        metadata={"min": 0.0, "max": 1.0, "help": "of the train pool; uniform"},
    )
    steps: tuple[int, int] = field(
        default=(30, 1000), metadata={"min": 1, "help": "SGD/Adam steps; log-uniform"}
    )
    batch_size: int = field(default=32, metadata={"min": 1})
    momentum: float = field(default=0.9, metadata={"min": 0.0, "max": 0.999})
    max_grad_norm: float = field(default=5.0, metadata={"help": "per-model gradient clipping"})
    test_fraction: float = field(default=0.3, metadata={"min": 0.01, "max": 0.9})
    split_seed: int = 0

    def __post_init__(self) -> None:
        for name in ("learning_rate", "weight_decay", "init_scale"):
            _positive_range(name, getattr(self, name))
        for name in ("dropout", "train_fraction", "steps"):
            _positive_range(name, getattr(self, name), allow_zero=True)
        if self.train_fraction[0] <= 0:
            raise FieldError(
                "train_fraction", f"expected a low bound > 0, got {self.train_fraction[0]}"
            )
        if self.max_grad_norm <= 0:
            raise FieldError(
                "max_grad_norm", f"expected a positive number, got {self.max_grad_norm}"
            )

    @property
    def num_shards(self) -> int:
        """``ceil(num_models / models_per_shard)``."""
        return -(-self.num_models // self.models_per_shard)

    @property
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """State_dict key -> shape of one model (``small_cnn``'s order)."""
        c = self.channels
        return {
            "conv1.weight": (c, 1, 3, 3),
            "conv1.bias": (c,),
            "conv2.weight": (c, c, 3, 3),
            "conv2.bias": (c,),
            "conv3.weight": (c, c, 3, 3),
            "conv3.bias": (c,),
            "fc.weight": (10, c),
            "fc.bias": (10,),
        }

    @property
    def input_shape(self) -> tuple[int, ...]:
        """An example input shape for tracing (batch of 2 digits)."""
        return (2, 1, 8, 8)

    @property
    def architecture(self) -> str:
        """The :data:`~nfncompile.architectures.FACTORIES` name of the zoo's networks."""
        return "small_cnn"

    @property
    def architecture_kwargs(self) -> dict[str, Any]:
        """The factory's keyword arguments (the activation, drawn per model, is not one)."""
        return {"in_channels": 1, "channels": self.channels, "num_classes": 10}

    def build(self, activation: str = "relu") -> nn.Module:
        """A fresh ``small_cnn`` of this zoo's width (load weights into it)."""
        return small_cnn(**self.architecture_kwargs, activation=activation)

    def split(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(train_pool, test)`` digit indices shared by every model of the zoo."""
        train, test = split_indices(
            NUM_DIGITS, (1 - self.test_fraction, self.test_fraction), self.split_seed
        )
        return train, test


@dataclass(frozen=True)
class INRZooConfig:
    """A zoo of SIRENs, each fitted to one digit image (full-batch Adam on its 64 pixels).

    Every image gets ``views_per_image`` SIRENs fitted from independent random initialisations
    (the multi-view augmentation of the INR-classification literature): rows
    ``i * views_per_image ... (i + 1) * views_per_image - 1`` all draw image ``i``. Tasks split
    such a zoo by *image*, never by view.

    ``phase_bias`` draws the sine layers' biases as phases, ``U(-pi/w0, pi/w0)`` (so
    ``w0 * b`` covers a full period), instead of PyTorch's ``U(-1/sqrt(fan_in), ...)``, which
    at ``w0 = 30`` wraps them many times. ``pixel_range`` is the range the images' ``[0, 1]``
    grey levels are mapped to before fitting; the PSNR uses its width as the peak.
    """

    type: ClassVar[str] = "inr"

    name: str = field(default="digits_inr", metadata={"help": "zoo name"})
    out: str = field(default="zoos/digits_inr", metadata={"help": "default output directory"})
    seed: int = field(default=0, metadata={"help": "seeds every shard (with its index)"})
    num_images: int | None = field(
        default=None,
        metadata={"min": 1, "max": 1797, "help": "the first N digits (null: all 1797)"},
    )
    views_per_image: int = field(
        default=1, metadata={"min": 1, "help": "SIRENs per image, from independent random inits"}
    )
    models_per_shard: int = field(default=128, metadata={"min": 1})
    hidden: tuple[int, ...] = field(default=(32, 32, 32), metadata={"min": 1, "min_items": 1})
    w0: float = field(default=30.0, metadata={"min": 1e-6})
    phase_bias: bool = field(
        default=False,
        metadata={"help": "sine-layer biases drawn as phases U(-pi/w0, pi/w0)"},
    )
    pixel_range: tuple[float, float] = field(
        default=(0.0, 1.0), metadata={"help": "[low, high] the [0, 1] grey levels map to"}
    )
    steps: int = field(default=300, metadata={"min": 1})
    learning_rate: float = field(default=2e-4, metadata={"min": 1e-12, "help": "Adam"})

    def __post_init__(self) -> None:
        low, high = self.pixel_range
        if not low < high:
            raise FieldError(
                "pixel_range", f"expected [low, high] with low < high, got {[low, high]}"
            )

    @property
    def num_models(self) -> int:
        """``num_images * views_per_image``."""
        return (self.num_images or NUM_DIGITS) * self.views_per_image

    @property
    def num_shards(self) -> int:
        """``ceil(num_models / models_per_shard)``."""
        return -(-self.num_models // self.models_per_shard)

    @property
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """State_dict key -> shape of one model (``siren``'s order)."""
        widths = (2, *self.hidden)
        out: dict[str, tuple[int, ...]] = {}
        for i in range(len(self.hidden)):
            out[f"hidden.{i}.weight"] = (widths[i + 1], widths[i])
            out[f"hidden.{i}.bias"] = (widths[i + 1],)
        out["out.weight"] = (1, widths[-1])
        out["out.bias"] = (1,)
        return out

    @property
    def input_shape(self) -> tuple[int, ...]:
        """An example input shape for tracing (2 coordinates)."""
        return (2, 2)

    @property
    def architecture(self) -> str:
        """The :data:`~nfncompile.architectures.FACTORIES` name of the zoo's networks."""
        return "siren"

    @property
    def architecture_kwargs(self) -> dict[str, Any]:
        """The factory's keyword arguments: 2 coordinates in, 1 value out."""
        return {"in_features": 2, "hidden": self.hidden, "out_features": 1, "w0": self.w0}

    def build(self) -> nn.Module:
        """A fresh ``siren`` of this zoo's shape (load weights into it)."""
        return siren(**self.architecture_kwargs)

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Grey levels in ``[0, 1]`` mapped to :attr:`pixel_range` (what the SIRENs draw).

        Examples
        --------
        >>> INRZooConfig(pixel_range=(-1.0, 1.0)).pixels(torch.tensor([0.0, 0.25, 1.0]))
        tensor([-1.0000, -0.5000,  1.0000])
        """
        low, high = self.pixel_range
        return images * (high - low) + low


#: Either zoo config; YAML picks one by its ``type`` key (``cnn`` or ``inr``).
ZooConfig = CNNZooConfig | INRZooConfig


def load_zoo_config(path: str | os.PathLike, *, quick: bool = False) -> ZooConfig:
    """Read a zoo spec YAML.

    A top-level ``quick:`` mapping holds overrides that ``quick=True`` (``--quick``) applies:
    a tiny zoo for tests and smoke runs.

    Raises
    ------
    ConfigError
        Path-qualified, naming the file (and ``quick.`` for an error in the overrides).
    """
    data, source = load_yaml(path)
    return config_from_dict(data, source=source, quick=quick)


def config_from_dict(data: Any, *, source: str = "<dict>", quick: bool = False) -> ZooConfig:
    """Like :func:`load_zoo_config`, from plain data."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with a 'type' key (cnn or inr)")
    data = dict(data)
    overrides = data.pop("quick", None) or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{source}: quick: expected a mapping of overrides")
    if "type" in overrides:
        raise ConfigError(f"{source}: quick.type: the zoo type cannot be overridden")
    config = parse(ZooConfig, data, source=source)
    try:
        quick_config = parse(ZooConfig, {**data, **overrides}, source=source)
    except ConfigError as e:
        raise ConfigError(f"{e} (in the quick: overrides)") from None
    return quick_config if quick else config
