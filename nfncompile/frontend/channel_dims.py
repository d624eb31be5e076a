"""Which dim of a model's input (or output) tensor holds its neurons: the ``channel_dim``
argument of :func:`~nfncompile.frontend.tracing.trace` and
:func:`~nfncompile.frontend.verification.verify`.

By default it is dim 1, after the batch (``(batch, channels, ...)``: an MLP's features, a
CNN's channels), and dim 0 of a 1-D tensor. A sequence model that reads
``(batch, sequence, features)`` names its features with ``channel_dim=-1``; a model with
several inputs may give one entry per tensor input, ``None`` for an input without neurons.

Examples
--------
>>> channel_dim_of(1, 0, (2, 5, 4)), channel_dim_of(-1, 0, (2, 5, 4)), channel_dim_of(-1, 0, (4,))
(1, 2, 0)
>>> channel_dim_of((1, None), 1, (2, 7)) is None
True
>>> channel_dim_of(3, 0, (2, 5, 4), "x")
Traceback (most recent call last):
    ...
nfncompile.errors.ConfigError: channel_dim=3 does not fit input 'x' of shape (2, 5, 4): give a dim in -3..2 (its neurons' dim), or None for an input without neurons
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import ConfigError

__all__ = ["ChannelDim", "channel_dim_of", "check_channel_dim", "check_entries"]

#: one dim for every tensor input, or one entry per tensor input (``None``: no neurons)
ChannelDim = int | Sequence[int | None] | None


def check_channel_dim(channel_dim: ChannelDim) -> None:
    """Raise :class:`~nfncompile.errors.ConfigError` unless ``channel_dim`` is ``None``, an int
    or a sequence of ints and ``None``."""
    entries = channel_dim if isinstance(channel_dim, Sequence) else (channel_dim,)
    for d in entries:
        if d is not None and (isinstance(d, bool) or not isinstance(d, int)):
            raise ConfigError(
                f"channel_dim must be an int (the neurons' dim of every input, e.g. -1 for "
                f"(batch, sequence, features)), None, or one such entry per input; got "
                f"{channel_dim!r}"
            )


def check_entries(channel_dim: ChannelDim, names: list) -> None:
    """Refuse a ``channel_dim`` sequence with more entries than the model has tensor inputs
    (``names``: theirs, in order; too few entries :func:`channel_dim_of` refuses)."""
    if isinstance(channel_dim, Sequence) and len(channel_dim) > len(names):
        listed = ", ".join(repr(name) for name in names) or "none"
        raise ConfigError(
            f"channel_dim {tuple(channel_dim)!r} has {len(channel_dim)} entries, but the model "
            f"has {len(names)} tensor inputs ({listed}): give one per input"
        )


def channel_dim_of(channel_dim: ChannelDim, index: int, shape: tuple, name: str = "") -> int | None:
    """The non-negative dim of tensor ``index`` (of shape ``shape``) that holds its neurons.

    Parameters
    ----------
    channel_dim : int, sequence of (int or None), or None
        As given to :func:`~nfncompile.frontend.tracing.trace`. A 1-D tensor's dim is 0
        whatever the int (a single sample's channels).
    index : int
        The tensor's position among the model's tensor inputs (or outputs).
    shape : tuple of int
    name : str
        What the error calls the tensor (an input's placeholder name; by default its number,
        from 1).

    Returns
    -------
    int or None
        ``None`` when the entry for this tensor is ``None``.

    Raises
    ------
    ConfigError
        When the dim does not exist in ``shape``, or a sequence has no entry for the tensor.
    """
    check_channel_dim(channel_dim)
    what = f"input {name!r}" if name else f"input {index + 1}"
    if isinstance(channel_dim, Sequence):
        if index >= len(channel_dim):
            raise ConfigError(
                f"channel_dim {tuple(channel_dim)!r} has {len(channel_dim)} entries, but the model "
                f"has more tensor inputs ({what} is number {index + 1}): give one per input"
            )
        channel_dim = channel_dim[index]
    if channel_dim is None:
        return None
    n = len(shape)
    if n <= 1:
        return 0
    if not -n <= channel_dim < n:
        raise ConfigError(
            f"channel_dim={channel_dim} does not fit {what} of shape {tuple(shape)}: give a dim "
            f"in {-n}..{n - 1} (its neurons' dim), or None for an input without neurons"
        )
    return channel_dim % n
