"""Axis labels, roles and modes: the vocabulary of weight-space specs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import SpecError

__all__ = [
    "ROLES",
    "MODES",
    "AxisLabel",
    "Inner",
    "Span",
    "check_mode",
    "axis_pieces",
    "piece_space",
    "spaces_named",
]

ROLES = ("input", "hidden", "output")
MODES = ("np", "hnp")

#: A piece of a composite axis: a space name, a number of fixed positions, an :class:`Inner`
#: position inside one block of a block space (the block chosen by another axis), or a
#: :class:`Span` (a space's neurons, each a run of fixed positions).
Piece = str | int | Any
#: An axis label: a space name, ``None`` (fixed), a tuple of pieces (composite), an
#: :class:`Inner` position inside a block or a :class:`Span` of a space's neurons.
AxisLabel = str | None | tuple | Any


def check_mode(mode: str) -> str:
    """Return ``mode`` if it is ``"np"`` or ``"hnp"``, else raise :class:`SpecError`."""
    if mode not in MODES:
        raise SpecError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}")
    return mode


@dataclass(frozen=True)
class Inner:
    """Axis label: the position inside one block of block space ``space``; the block is the one
    that axis ``block_of`` of the same tensor sits in.

    A grouped convolution's weight ``(C_out, C_in / g, kh, kw)`` has axes
    ``[c_out, Inner("c_in", 0), None, None]``: row ``j * k_out + r`` reads only the inputs of
    block ``j``, and its column ``i`` is input neuron ``j * k_in + i``.

    >>> Inner("c1", 0)
    Inner('c1', 0)
    """

    space: str
    block_of: int

    def __post_init__(self) -> None:
        _check_piece(self, "block_of", 0, "an axis index")

    def __repr__(self) -> str:
        return f"Inner({self.space!r}, {self.block_of})"


@dataclass(frozen=True)
class Span:
    """Composite piece (or axis label): the neurons of space ``space``, each spanning ``span``
    consecutive fixed positions (an int), or a copy of the neurons of space ``span`` (a
    name); ``size * span`` positions in all, or ``size * size(span)``.

    One projection sliced into queries, keys and values (``[q | k | v]``) whose query and key
    features RoPE fixes holds its queries as one neuron per head (a space of the heads, moved
    as blocks with the values') of ``head_dim`` fixed positions: ``[Span("h", d), Span("h",
    d), "v"]``. Without RoPE, under multi-query attention (one key head, whose features every
    query head shares), each query head's rows are those features: ``[Span("h", "qk"), "qk",
    "v"]``.

    >>> Span("h", 4), Span("h", "qk")
    (Span('h', 4), Span('h', 'qk'))
    """

    space: str
    span: int | str

    def __post_init__(self) -> None:
        if isinstance(self.span, str):
            if not self.span:
                raise SpecError(f"Span({self.space!r}): span must name a space, got ''")
            if self.span == self.space:
                raise SpecError(f"Span({self.space!r}): a space cannot span its own neurons")
            return
        _check_piece(self, "span", 1, "a positive int or a space name")

    def __repr__(self) -> str:
        return f"Span({self.space!r}, {self.span!r})"


def _check_piece(piece: Any, field: str, least: int, what: str) -> None:
    """Validate an :class:`Inner` or :class:`Span`: a space name and an int ``field`` of at
    least ``least`` (``what`` it must be, for the error)."""
    kind = type(piece).__name__
    if not isinstance(piece.space, str) or not piece.space:
        raise SpecError(f"{kind}: space must be a space name, got {piece.space!r}")
    value = getattr(piece, field)
    if not _is_int(value) or value < least:
        raise SpecError(f"{kind}({piece.space!r}): {field} must be {what}, got {value!r}")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _freeze_axis(a: Any) -> AxisLabel:
    if isinstance(a, (list, tuple)):
        return tuple(_freeze_axis(p) if isinstance(p, Mapping) else p for p in a)
    if isinstance(a, Mapping) and "span" in a:  # {space: h, span: 4}
        return Span(a.get("space"), a.get("span"))
    if isinstance(a, Mapping):  # {space: c1, block_of: 0}
        return Inner(a.get("space"), a.get("block_of"))
    return a


def piece_space(p: Any) -> str | None:
    """The space a composite piece (or a simple label) names: its name, an :class:`Inner`'s
    space, ``None`` for fixed positions.

    >>> piece_space("c1"), piece_space(3), piece_space(Inner("v", 0)), piece_space(Span("h", 2))
    ('c1', None, 'v', 'h')
    """
    if isinstance(p, (Inner, Span)):
        return p.space
    return p if isinstance(p, str) else None


def axis_pieces(a: AxisLabel) -> tuple:
    """The pieces of an axis label: ``()`` for fixed, ``(name,)`` for a space or a position
    inside one of its blocks, the tuple of a composite (whose :class:`Inner` pieces stay
    :class:`Inner`: their length is a block's, not the space's).

    >>> axis_pieces(None), axis_pieces("c1"), axis_pieces(("c1", 3)), axis_pieces(Inner("c", 0))
    ((), ('c1',), ('c1', 3), ('c',))
    """
    if a is None:
        return ()
    if isinstance(a, (Inner, Span)):
        return (a.space,)
    return a if isinstance(a, tuple) else (a,)


def spaces_named(axes: tuple) -> set:
    """Names of every space that labels one of ``axes`` (or a composite piece, or a position
    inside its blocks, or the neurons a span copies).

    >>> sorted(spaces_named((None, "c1", ("c2", 3), Inner("c3", 0), (2, Span("c4", "c5")))))
    ['c1', 'c2', 'c3', 'c4', 'c5']
    """
    out = set()
    for a in axes:
        for p in a if isinstance(a, tuple) else (a,):
            out.add(piece_space(p))
            if isinstance(p, Span) and isinstance(p.span, str):
                out.add(p.span)
    return out - {None}


def _axis_str(a: AxisLabel) -> str:
    if a is None:
        return "-"
    if isinstance(a, tuple):
        return "(" + "|".join(str(p) if _is_int(p) else _axis_str(p) for p in a) + ")"
    if isinstance(a, Inner):
        return f"{a.space}@{a.block_of}"
    if isinstance(a, Span):
        return f"{a.space}*{a.span}"
    return a


def _axis_data(a: AxisLabel) -> Any:
    """The plain-data (YAML) form of an axis label."""
    if isinstance(a, tuple):
        return [_axis_data(p) for p in a]
    if isinstance(a, Inner):
        return {"space": a.space, "block_of": a.block_of}
    if isinstance(a, Span):
        return {"space": a.space, "span": a.span}
    return a
