"""The relation vocabulary of the linear-size basis: weights named by what two tiles are to each
other, never by where they sit.

A tile's *kind* is what it is without its position: the last component of its parameter's name
(``weight``, ``bias``, ``running_var``), then per dim ``sJ`` (the J-th distinct space of the
tile), ``bJ`` (a block permutation), ``iJ@D`` (inside the blocks of a space, tied to the block
dim D) or the size of a fixed dim (kernel positions, and in ``hnp`` the input/output neurons). A
side's kind adds its classes: ``+`` linked or ``-`` not, and the dims in each.

A term's *relation* joins the two sides' kinds, which of the input's linked classes feeds which
of the output's, and how the tiles are related: ``self`` (the same tile), ``module`` (two
tiles of one layer: parameter names equal up to the last ``.``) or ``other`` (averaged over every
tile of the kind). Where the kinds of a space meet through a channel, each has one relation
into it (``channel in: <side kind>``) and one out of it instead. Space names never enter, so a
ResNet-20 and a ResNet-32 (or an MLP of depth 3 and one of depth 5, in ``np``) have the same
relations and one set of weights serves both.

Examples
--------
>>> from nfncompile.testing import mlp_spec
>>> from nfncompile.backend.tiles import tile_refs
>>> from nfncompile.backend.basis import tile_sides
>>> w = tile_refs(mlp_spec([2, 3, 1]), "np")[0]
>>> tile_kind(w)
'weight[s0,s1]'
>>> side = tile_sides(w)[1]
>>> side.label(), side_kind(side)
('l1.weight[h1*, in]', 'weight[s0,s1]{-0|+1}')
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from .basis import Side
from .tiles import TileRef

__all__ = ["Relation", "tile_kind", "side_kind", "link_str", "kind_of_side"]


@dataclass(frozen=True)
class Relation:
    """One weight of the linear-size basis.

    Attributes
    ----------
    key : str
        What it joins (see the module docstring).
    role : str
        ``"self"``, ``"module"``, ``"other"``; ``"inv_in"``/``"inv_out"`` into and out of the
        invariant channel, ``"chan_in"``/``"chan_out"`` into and out of a space's channel
        (``plan.CHANNEL_GAIN``); ``"bias"``, ``"embed"``.
    rows, cols : int or "width"
        Per channel: the output tile's fixed size (``rows * C_out`` rows) and the input tile's
        (``cols * C_in`` columns); ``"width"`` for a channel's side. Unused (0) for
        an embedding, whose shape is its tile's.
    """

    key: str
    role: str
    rows: int | str
    cols: int | str

    def shape(self, in_channels: int, out_channels: int, width: int) -> tuple:
        """The weight's shape for the given channels (a bias is a vector)."""
        if self.role == "bias":
            return (out_channels * self.rows,)
        r = width if self.rows == "width" else out_channels * self.rows
        c = width if self.cols == "width" else in_channels * self.cols
        return (r, c)

    def __str__(self) -> str:
        return self.key


@functools.lru_cache(maxsize=1 << 16)  # asked per mix for each of its sides: once per tile
def tile_kind(tile: TileRef) -> str:
    """What a tile is, without its position (see the module docstring)."""
    leaf = tile.param.rpartition(".")[2]
    seen: dict = {}
    parts = []
    for d in tile.dims:
        if d.factor is None:
            parts.append(str(d.size))
            continue
        j = seen.setdefault(d.factor, len(seen))
        code = {"space": "s", "blocks": "b", "inner": "i"}[d.factor.kind]
        parts.append(f"{code}{j}" + ("" if d.tie is None else f"@{d.tie}"))
    return f"{leaf}[{','.join(parts)}]"


@functools.lru_cache(maxsize=1 << 16)
def side_kind(side: Side) -> str:
    """A tile kind plus the side's classes (``+`` linked, ``-`` not, and their dims)."""
    cls = "|".join(
        ("+" if k else "-") + ",".join(map(str, c)) for c, k in zip(side.classes, side.linked)
    )
    return f"{tile_kind(side.tile)}{{{cls}}}"


def link_str(col: tuple, row: tuple) -> str:
    """Which input class feeds each linked output class (in the output's class order)."""
    (_, co), (q, qo) = col, row
    feed = dict(zip(qo, co))
    return ",".join(str(feed[j]) for j, k in enumerate(q.linked) if k)


def kind_of_side(side: Side, ordering: tuple, which: str) -> tuple:
    """A column's (``which="in"``) or row's (``"out"``) kind within one mix: the side's kind
    and the ordering of its linked classes in the mix (different orderings are different
    kinds: they feed different classes)."""
    return (side_kind(side), ordering)
