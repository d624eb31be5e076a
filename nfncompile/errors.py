"""Named exceptions of nfncompile.

Every user error is raised as one of these (never a bare ``assert``); each message names the
offending node, key, path or value and what would be valid.
"""

from __future__ import annotations

__all__ = [
    "NfnCompileError",
    "SpecError",
    "StateDictMismatchError",
    "FeatureMismatchError",
    "TraceError",
    "SymmetryError",
    "ConfigError",
    "FieldError",
    "ModelArgumentError",
    "ZooError",
]


class NfnCompileError(Exception):
    """Base class of every error nfncompile raises on purpose."""


class SpecError(NfnCompileError, ValueError):
    """A weight-space spec (or its YAML) is malformed: the message names the key path."""


class StateDictMismatchError(NfnCompileError, KeyError):
    """A state_dict does not match a spec: lists missing, unexpected and mis-shaped keys at once."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class FeatureMismatchError(NfnCompileError, ValueError):
    """Weight-space features do not match a layer: wrong keys, shapes or channel count."""


class TraceError(NfnCompileError, RuntimeError):
    """torch.fx could not trace a model, or an op could not be analysed."""


class SymmetryError(NfnCompileError, RuntimeError):
    """A derived symmetry does not hold numerically: names the space and the op."""


class ConfigError(NfnCompileError, ValueError):
    """An NFN or experiment YAML is malformed: path-qualified, with the nearest valid key."""


class FieldError(ConfigError):
    """A cross-field check failed on one field; raise it from a config's ``__post_init__``.

    :func:`parse` reports it at the field's path (``nfn.layers[2].channels: ...``).

    Parameters
    ----------
    field : str
        The field name (or a dotted sub-path relative to the dataclass).
    message : str
        What is wrong and what would be valid.

    Examples
    --------
    >>> str(FieldError("out_features", "required when output is 'invariant'"))
    "out_features: required when output is 'invariant'"
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ModelArgumentError(ConfigError):
    """A model factory rejected its keyword arguments (kept apart so callers can point at the
    ``kwargs`` field rather than the model name)."""


class ZooError(NfnCompileError):
    """A zoo directory is incomplete, corrupted, or made with a different config."""
