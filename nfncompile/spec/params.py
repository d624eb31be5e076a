"""Labelled parameters: a :class:`ParamSpec` per state_dict entry, split into :class:`Tile` s
where composite axes concatenate several spaces."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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

    Examples
    --------
    >>> ParamSpec("fc.weight", (10, 64), ("out", "c2", None), view=(10, 16, 4))
    ParamSpec('fc.weight', (10, 64), ('out', 'c2', None), view=(10, 16, 4))
    """

    name: str
    shape: tuple
    axes: tuple
    view: tuple | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(self.shape))
        object.__setattr__(self, "axes", tuple(_freeze_axis(a) for a in self.axes))
        if self.view is not None:
            object.__setattr__(self, "view", tuple(self.view))
        where = f"param {self.name!r}"
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

    @property
    def labelled_shape(self) -> tuple:
        """The shape the axis labels refer to: ``view`` if given, else ``shape``."""
        return self.view if self.view is not None else self.shape

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
        return f"ParamSpec({self.name!r}, {self.shape}, {self.axes}{view})"

    def _short(self) -> str:
        labels = ", ".join(_axis_str(a) for a in self.axes)
        view = "" if self.view is None else f"->{self.view}"
        return f"{self.name}{self.shape}{view}[{labels}]"


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
