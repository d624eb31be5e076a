"""Labelled parameters: a :class:`ParamSpec` per state_dict entry, split into :class:`Tile` s
where composite axes concatenate several spaces."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import SpecError
from .labels import Inner, Span, _axis_str, _freeze_axis, _is_int, spaces_named
from .spaces import Blocks, Space

__all__ = ["ParamSpec", "Tile"]


@dataclass(frozen=True)
class Tile:
    """A rectangular piece of a parameter whose axes are all simple (a space, an
    :class:`Inner` position or fixed).

    Composite axes split a parameter into tiles, one per combination of pieces.

    Attributes
    ----------
    param : str
        The parameter the tile belongs to.
    index : tuple of slice
        Where the tile sits in the parameter's ``view`` shape.
    axes : tuple of (str or Inner or None)
        One simple label per view axis.
    shape : tuple of int
        The tile's shape.
    param_shape : tuple of int
        The labelled shape of the whole parameter.
    """

    param: str
    index: tuple
    axes: tuple
    shape: tuple

    param_shape: tuple

    @property
    def name(self) -> str:
        """``param`` alone for an unsplit parameter, else ``param[a:b, ...]``."""
        whole = [s == slice(0, n) for s, n in zip(self.index, self.param_shape)]
        if all(whole):
            return self.param
        parts = [":" if w else f"{s.start}:{s.stop}" for s, w in zip(self.index, whole)]
        return f"{self.param}[{', '.join(parts)}]"


@dataclass(frozen=True)
class ParamSpec:
    """One parameter tensor with a label per axis.

    Parameters
    ----------
    name : str
        The state_dict key.
    shape : tuple of int
        The stored tensor's shape.
    axes : tuple of AxisLabel
        One label per axis of ``view`` (or of ``shape`` when there is no view).
    view : tuple of int, optional
        The shape the axes refer to, when it differs from ``shape`` (same number of elements).
    order : mapping axis -> sequence of int, optional
        Axes whose stored positions are a fixed reordering of the positions their labels
        describe: ``order[axis][p]`` is the labelled position of stored position ``p`` (a
        permutation of ``range(n)``). A layer reading channels after a channel shuffle holds
        two spaces interleaved, ``[a0, b0, a1, b1]``: label ``(a, b)`` with order
        ``[0, 2, 1, 3]``. Stored as a tuple of ``(axis, positions)`` pairs, by axis.

    Examples
    --------
    >>> ParamSpec("fc.weight", (10, 64), ("out", "c2", None), view=(10, 16, 4))
    ParamSpec('fc.weight', (10, 64), ('out', 'c2', None), view=(10, 16, 4))
    >>> p = ParamSpec("conv.weight", (3, 4), ("c", ("a", "b")), order={1: [0, 2, 1, 3]})
    >>> p.to_labelled(torch.tensor([[10, 11, 12, 13]]).expand(3, 4))[0].tolist()
    [10, 12, 11, 13]
    """

    name: str
    shape: tuple
    axes: tuple
    view: tuple | None = None
    order: tuple = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(self.shape))
        object.__setattr__(self, "axes", tuple(_freeze_axis(a) for a in self.axes))
        if self.view is not None:
            object.__setattr__(self, "view", tuple(self.view))
        where = f"param {self.name!r}"
        object.__setattr__(self, "order", _frozen_order(self.order, where))
        if not isinstance(self.name, str) or not self.name:
            raise SpecError(f"param name must be a non-empty string, got {self.name!r}")
        for dims, what in ((self.shape, "shape"), (self.view, "view")):
            if dims is not None and not all(_is_int(d) and d >= 1 for d in dims):
                raise SpecError(
                    f"{where}: {what} must be a list of positive ints, got {list(dims)}"
                )
        if self.view is not None and math.prod(self.view) != math.prod(self.shape):
            raise SpecError(
                f"{where}: view {list(self.view)} has {math.prod(self.view)} elements but shape "
                f"{list(self.shape)} has {math.prod(self.shape)}"
            )
        if len(self.axes) != len(self.labelled_shape):
            raise SpecError(
                f"{where}: {len(self.axes)} axis labels for "
                f"{'view' if self.view else 'shape'} {list(self.labelled_shape)} "
                f"({len(self.labelled_shape)} axes)"
            )
        for axis, positions in self.order:
            if axis >= len(self.labelled_shape):
                raise SpecError(
                    f"{where}: order names axis {axis}, but it has "
                    f"{len(self.labelled_shape)} labelled axes"
                )
            n = self.labelled_shape[axis]
            if sorted(positions) != list(range(n)):
                raise SpecError(
                    f"{where}: order of axis {axis} must be a permutation of 0..{n - 1} "
                    f"(the labelled position of each stored one), got {list(positions)}"
                )
        kept = tuple((a, ps) for a, ps in self.order if ps != tuple(range(len(ps))))
        object.__setattr__(self, "order", kept)

    @property
    def labelled_shape(self) -> tuple:
        """The shape the axis labels refer to: ``view`` if given, else ``shape``."""
        return self.view if self.view is not None else self.shape

    def to_labelled(self, x: torch.Tensor, leading: int = 0) -> torch.Tensor:
        """``x`` (``leading`` dims, then this parameter's stored shape) in the layout its
        labels describe: reshaped to ``labelled_shape`` and each ordered axis's positions
        put in label order."""
        x = x.reshape(*x.shape[:leading], *self.labelled_shape)
        for axis, positions in self.order:
            inverse = torch.argsort(torch.tensor(positions))
            x = x.index_select(leading + axis, inverse.to(x.device))
        return x

    def from_labelled(self, x: torch.Tensor, leading: int = 0) -> torch.Tensor:
        """The inverse of :meth:`to_labelled`: back to the stored order and shape."""
        for axis, positions in self.order:
            x = x.index_select(leading + axis, torch.tensor(positions, device=x.device))
        return x.reshape(*x.shape[:leading], *self.shape)

    @property
    def numel(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    def spaces_used(self) -> set:
        """Names of every space that labels some axis (or composite piece, or block inside)."""
        return spaces_named(self.axes)

    def tiles(
        self, spaces: Mapping[str, Space], blocks: Mapping[str, Blocks] | None = None
    ) -> list[Tile]:
        """Split composite axes into :class:`Tile` s with simple labels (row-major order).

        ``blocks`` gives the block counts an :class:`Inner` piece's length (one block) needs;
        a :class:`Span` piece is its space's size times its span.
        """
        per_axis = []
        for label, n in zip(self.axes, self.labelled_shape):
            if isinstance(label, tuple):
                opts, start = [], 0
                for p in label:
                    size = piece_size(p, spaces, blocks)
                    opts.append((slice(start, start + size), None if _is_int(p) else p))
                    start += size
                per_axis.append(opts)
            else:
                per_axis.append([(slice(0, n), label)])
        tiles = []
        for combo in _product(per_axis):
            index = tuple(c[0] for c in combo)
            tiles.append(
                Tile(
                    self.name,
                    index,
                    tuple(c[1] for c in combo),
                    tuple(s.stop - s.start for s in index),
                    self.labelled_shape,
                )
            )
        return tiles

    def __repr__(self) -> str:
        view = "" if self.view is None else f", view={self.view}"
        order = f", order={dict(self.order)}" if self.order else ""
        return f"ParamSpec({self.name!r}, {self.shape}, {self.axes}{view}{order})"

    def _short(self) -> str:
        labels = ", ".join(_axis_str(a) for a in self.axes)
        view = "" if self.view is None else f"->{self.view}"
        order = f" reordered {sorted(dict(self.order))}" if self.order else ""
        return f"{self.name}{self.shape}{view}[{labels}]{order}"


def _frozen_order(order: Any, where: str) -> tuple:
    """``order`` (a mapping or pairs axis -> positions) as sorted ``(axis, positions)`` pairs
    of ints; raises :class:`SpecError` naming what is malformed."""
    items = order.items() if isinstance(order, Mapping) else order
    try:
        pairs = [(a, tuple(ps)) for a, ps in items]
    except (TypeError, ValueError):
        raise SpecError(
            f"{where}: order must map an axis index to a list of positions, got {order!r}"
        ) from None
    for a, ps in pairs:
        if not _is_int(a) or a < 0 or not all(_is_int(q) for q in ps):
            raise SpecError(
                f"{where}: order must map an axis index to a list of positions, got {a!r}: "
                f"{list(ps)!r}"
            )
    if len({a for a, _ in pairs}) != len(pairs):
        raise SpecError(f"{where}: order names an axis twice")
    return tuple(sorted((int(a), tuple(int(q) for q in ps)) for a, ps in pairs))


def piece_size(
    piece: Any, spaces: Mapping[str, Space], blocks: Mapping[str, Blocks] | None = None
) -> int:
    """Positions a composite piece covers: an int's own count, a space's size, one block of
    an :class:`Inner` position's space (``blocks`` gives the block counts), a :class:`Span`'s
    space size times its span.

    >>> piece_size(Span("h", 4), {"h": Space("h", 3, "hidden")})
    12
    """
    if _is_int(piece):
        return piece
    if isinstance(piece, Inner):
        space = spaces[piece.space]
        return space.size // blocks[space.blocks].count
    if isinstance(piece, Span):
        span = spaces[piece.span].size if isinstance(piece.span, str) else piece.span
        return spaces[piece.space].size * span
    return spaces[piece].size


def _product(lists: list) -> list:
    out = [()]
    for opts in lists:
        out = [prev + (o,) for prev in out for o in opts]
    return out
