"""Argument checks shared by the architecture factories: sizes must be positive ints.

Examples
--------
>>> positive_tuple("hidden", (4, 8))
(4, 8)
>>> positives(channels=4, depth=2)
>>> positive("channels", 0)
Traceback (most recent call last):
...
nfncompile.errors.ConfigError: channels must be a positive int, got 0
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import ConfigError

__all__ = ["positive", "positives", "positive_tuple"]


def positive(name: str, value: object) -> int:
    """``value`` when it is a positive int (not a bool); else a :class:`ConfigError`."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive int, got {value!r}")
    return value


def positives(**values: object) -> None:
    """Check every keyword argument with :func:`positive`."""
    for name, value in values.items():
        positive(name, value)


def positive_tuple(name: str, values: Sequence[int]) -> tuple[int, ...]:
    """A tuple of positive ints from a sequence (or one int), each checked by :func:`positive`."""
    if isinstance(values, int):
        values = (values,)
    return tuple(positive(f"{name}[{i}]", v) for i, v in enumerate(values))
