"""The hyperparameters of :func:`~nfncompile.experiments.train.fit` and the device they name."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ...errors import ConfigError

__all__ = ["TrainConfig", "SCHEDULES", "lr_factor", "resolve_device"]


def _field(default: Any, help: str, **meta: Any) -> Any:
    return field(default=default, metadata={"help": help, **meta})


#: Learning-rate schedules of :class:`TrainConfig`.
SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of :func:`fit`.

    Every field carries ``metadata["help"]`` (and ``"min"`` for numbers), which
    ``nfncompile.declarative.validate.parse`` uses to read it from YAML.

    Parameters
    ----------
    epochs : int
        Passes over the training data.
    batch_size : int
        Examples per optimizer step *per process* (the global batch under DDP is
        ``batch_size * world_size``).
    lr : float
        AdamW learning rate (> 0).
    weight_decay : float
        AdamW decoupled weight decay.
    schedule : {"constant", "cosine"}
        ``cosine`` anneals the learning rate from ``lr`` to 0 over all ``epochs`` (per step,
        by :func:`lr_factor`; a resumed run continues the same curve).
    seed : int
        Seeds shuffling, augmentation and dropout.
    grad_clip : float or None
        Max global gradient norm; ``None`` disables clipping.
    val_every : int
        Validate every this many epochs (and always after the last one).
    patience : int or None
        Stop after this many validations without improvement; ``None`` never stops early.
    device : str
        ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``. Under
        DDP ``"auto"`` / ``"cuda"`` mean ``cuda:LOCAL_RANK``.

    Raises
    ------
    ConfigError
        When a value has the wrong type or is out of range.

    Examples
    --------
    >>> TrainConfig(epochs=10, lr=1e-2)
    TrainConfig(epochs=10, batch_size=64, lr=0.01, weight_decay=0.01, schedule='constant', seed=0, grad_clip=1.0, val_every=1, patience=None, device='auto')
    >>> TrainConfig.__dataclass_fields__["lr"].metadata["min"]
    0.0
    """

    epochs: int = _field(50, "passes over the training data", min=1)
    batch_size: int = _field(64, "examples per optimizer step, per process", min=1)
    lr: float = _field(1e-3, "AdamW learning rate (must be > 0)", min=0.0)
    weight_decay: float = _field(1e-2, "AdamW decoupled weight decay", min=0.0)
    schedule: Literal["constant", "cosine"] = _field(
        "constant", "learning-rate schedule: constant, or cosine (from lr to 0 over all epochs)"
    )
    seed: int = _field(0, "seed of shuffling, augmentation and dropout", min=0)
    grad_clip: float | None = _field(
        1.0, "max global gradient norm; null disables clipping (must be > 0)", min=0.0
    )
    val_every: int = _field(1, "validate every N epochs (and after the last)", min=1)
    patience: int | None = _field(
        None, "stop after N validations without improvement; null never stops early", min=1
    )
    device: str = _field("auto", "auto (cuda if available, else cpu), cpu, cuda or cuda:N")

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "seed", "val_every", "patience"):
            v = getattr(self, name)
            if v is None and name == "patience":
                continue
            if not isinstance(v, int) or isinstance(v, bool):
                raise ConfigError(f"TrainConfig.{name}: expected an int, got {v!r}")
            lo = self.__dataclass_fields__[name].metadata["min"]
            if v < lo:
                raise ConfigError(f"TrainConfig.{name}: must be >= {lo}, got {v}")
        for name in ("lr", "weight_decay", "grad_clip"):
            v = getattr(self, name)
            if v is None and name == "grad_clip":
                continue
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise ConfigError(f"TrainConfig.{name}: expected a finite number, got {v!r}")
            object.__setattr__(self, name, float(v))
            strict = name != "weight_decay"
            if v < 0 or (strict and v == 0):
                raise ConfigError(
                    f"TrainConfig.{name}: must be {'> 0' if strict else '>= 0'}, got {v}"
                )
        if self.schedule not in SCHEDULES:
            raise ConfigError(
                f"TrainConfig.schedule: expected one of {', '.join(SCHEDULES)}, "
                f"got {self.schedule!r}"
            )
        resolve_device(self.device)  # validates


def lr_factor(schedule: str, step: int, total: int) -> float:
    """The multiplier of ``lr`` at optimizer step ``step`` (0-based) of ``total``.

    Examples
    --------
    >>> [round(lr_factor("cosine", s, 4), 3) for s in range(4)]
    [1.0, 0.854, 0.5, 0.146]
    >>> lr_factor("constant", 3, 4)
    1.0
    """
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * step / max(total, 1)))
    return 1.0


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """The ``torch.device`` a :attr:`TrainConfig.device` string names.

    ``"auto"`` is ``cuda:local_rank`` when CUDA is available, else ``cpu``; ``"cuda"`` is
    ``cuda:local_rank``.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("tpu")
    Traceback (most recent call last):
    ...
    nfncompile.errors.ConfigError: TrainConfig.device: unknown device 'tpu'; valid: auto, cpu, cuda, cuda:N

    Raises
    ------
    ConfigError
        For a device string torch does not know, or a device this machine cannot use (CUDA
        on a CPU-only torch build or without a visible GPU, an index past the last GPU).
    """
    if not isinstance(device, str):
        raise ConfigError(f"TrainConfig.device: expected a string, got {device!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        dev = torch.device("cuda", local_rank)
        _check_available(dev)
        return dev
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(
            f"TrainConfig.device: unknown device {device!r}; valid: auto, cpu, cuda, cuda:N"
        ) from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(
            f"TrainConfig.device: unsupported device {device!r}; valid: auto, cpu, cuda, cuda:N"
        )
    _check_available(dev)
    return dev


def _check_available(dev: torch.device) -> None:
    """A :class:`ConfigError` for a device this torch cannot use (a CPU build asked for CUDA,
    no GPU visible, an index past the last GPU)."""
    if dev.type == "cuda":
        if torch.version.cuda is None:
            raise ConfigError(
                f"TrainConfig.device: {str(dev)!r} asked for, but this torch "
                f"({torch.__version__}) is a CPU-only build; use cpu or auto, or install a "
                "CUDA build of torch"
            )
        count = torch.cuda.device_count()
        if count == 0:
            raise ConfigError(
                f"TrainConfig.device: {str(dev)!r} asked for, but no CUDA device is visible "
                "(check CUDA_VISIBLE_DEVICES and the driver); use cpu or auto"
            )
        if dev.index is not None and dev.index >= count:
            raise ConfigError(
                f"TrainConfig.device: {str(dev)!r} asked for, but only {count} CUDA "
                f"device(s) are visible (cuda:0..cuda:{count - 1})"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("TrainConfig.device: 'mps' asked for, but MPS is not available here")
