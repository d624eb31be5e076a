"""Tiles: the rectangles of a weight space as the group sees them in one mode.

A parameter whose axes are all simple (a space, an :class:`~nfncompile.spec.Inner` position or
fixed) is one tile; composite axes cut it into several (:meth:`ParamSpec.tiles`). The basis,
the plan, the generated code and :class:`~nfncompile.nn.NFPool` all read a tile through its
:class:`Dim` s: one per index the group acts on separately.

* An axis labelled with an ordinary space that the mode permutes is one dim of that space's
  :class:`Factor` (``kind="space"``, at most ``size`` distinct values in a basis term).
* An axis labelled with a *block space* (``g`` blocks of ``k`` neurons, ``S_k wr S_g``) is two
  dims, split row-major: its block index (``kind="blocks"``, shared by every space of that block
  permutation, at most ``g`` values) and its position inside the block (``kind="inner"``, at
  most ``k`` values *within one block*), whose :attr:`Dim.tie` is the block dim.
* An ``Inner(space, block_of)`` axis is one inner dim tied to the block dim of axis
  ``block_of``.
* A ``Span(space, span)`` axis is the dims of ``space`` followed by a fixed dim of ``span``
  (or by the dims of space ``span``, where it names one).
* Everything else (``None`` labels, ``int`` pieces of composite axes, spaces the mode does not
  permute) is a fixed dim: folded into the channels.

A block of ``k = 1`` neuron has no inner dim (the space moves only by its block permutation,
a depthwise conv's channels), and one block (``g = 1``) is an ordinary space.

In ``hnp`` a block permutation shared with an input or output space does not move (the
spec's :attr:`Blocks.permutable` is False). The tiles still give it block dims, on the axes of
every space sharing it: the layer is then equivariant to the larger group that also moves those
blocks (the input/output spaces' positions inside their blocks stay fixed). That is sound (hnp's
group is a subgroup), and the basis is complete for the larger group, not for hnp's own.

Examples
--------
>>> from nfncompile.spec import WeightSpaceSpec
>>> spec = WeightSpaceSpec.from_yaml('''
... blocks: {g: {count: 2}}
... spaces:
...   in: {size: 3, role: input}
...   c1: {size: 4, role: hidden, blocks: g}
...   c2: {size: 6, role: hidden, blocks: g}
... params:
...   conv1.weight: {shape: [4, 3], axes: [c1, in]}
...   conv2.weight: {shape: [6, 2, 3, 3], axes: [c2, {space: c1, block_of: 0}, null, null]}
... ''')
>>> tiles = tile_refs(spec, "hnp")
>>> [str(d) for d in tiles[1].dims]
['g', "c2'@0", "c1'@0", '3', '3']
>>> tiles[1].dim_shape, tiles[1].fixed_size
((2, 3, 2, 3, 3), 9)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..spec import Inner, Span, WeightSpaceSpec

__all__ = [
    "Factor",
    "Dim",
    "TileRef",
    "tile_refs",
    "permutable",
    "module_of",
    "fold_limit",
    "MAX_FOLD",
    "SMALL_FOLD",
]

#: the linear basis's default ``max_fold``: a tile folds at most this many fixed entries into
#: each channel (a 7x7 kernel folds 49, one relation then has ``(C * 49)**2`` weights), its other
#: fixed dims are exchanged (:func:`tile_refs`)
MAX_FOLD = 64
#: a fold this small is always kept (a 3x3 kernel's 9); above it, a tile of a layer with
#: ``C_in * C_out`` channels folds at most ``sqrt(entries / (C_in * C_out))``: a relation then
#: has no more weights than the tile has entries (:func:`fold_limit`)
SMALL_FOLD = 16

_KIND_ORDER = {"space": 0, "blocks": 1, "inner": 2}


@dataclass(frozen=True)
class Factor:
    """One factor of the group: a symmetric group acting on some dims of some tiles.

    Attributes
    ----------
    kind : {"space", "blocks", "inner"}
        An ordinary space's permutation, a block permutation, or the permutations inside the
        blocks of one block space (one per block, independent).
    name : str
        The space (``space``, ``inner``) or block permutation (``blocks``).
    limit : int
        How many distinct values its indices can take: the space's size, the block count, or
        the neurons per block (counted within one block).
    """

    kind: str
    name: str
    limit: int

    @property
    def order(self) -> tuple:
        """Sort key: spaces, then block permutations, then insides of blocks; by name."""
        return (_KIND_ORDER[self.kind], self.name)

    def __str__(self) -> str:
        return {"space": self.name, "blocks": self.name, "inner": self.name + "'"}[self.kind]


@dataclass(frozen=True)
class Dim:
    """One index of a tile after block axes are split into (block, position in block).

    Attributes
    ----------
    axis : int
        The tile axis it comes from.
    size : int
    factor : Factor or None
        The group factor that permutes it; ``None`` for a fixed dim.
    tie : int or None
        For an inner dim: the position (in the tile's dims) of the block dim whose value picks
        the block it lives in.
    """

    axis: int
    size: int
    factor: Factor | None
    tie: int | None = None

    def __str__(self) -> str:
        if self.factor is None:
            return str(self.size)
        return str(self.factor) + ("" if self.tie is None else f"@{self.tie}")


@dataclass(frozen=True)
class TileRef:
    """One tile of a parameter as the basis sees it in a mode.

    Attributes
    ----------
    param : str
        The parameter's name.
    index : int
        Position among the parameter's tiles (row-major over composite pieces).
    name : str
        Printable name, ``param`` or ``param[a:b, :]``.
    labels : tuple
        The tile's simple axis labels (space name, ``Inner`` or ``None``), as in the spec.
    shape : tuple of int
        The tile's shape (one entry per labelled axis).
    starts : tuple of int
        Offset of the tile along each labelled axis of the parameter.
    dims : tuple of Dim
        The tile's indices; ``dim_shape`` is ``shape`` with block axes split in two.
    module : str
        The parameter's name up to its last ``.`` (tiles of one layer share it).
    """

    param: str
    index: int
    name: str
    labels: tuple
    shape: tuple
    starts: tuple
    dims: tuple
    module: str

    def __post_init__(self) -> None:
        # derived once: the basis and the plan read them for every side of every tile
        perm = tuple(i for i, d in enumerate(self.dims) if d.factor is not None)
        fixed = tuple(i for i, d in enumerate(self.dims) if d.factor is None)
        object.__setattr__(self, "perm_dims", perm)
        object.__setattr__(self, "fixed_dims", fixed)
        object.__setattr__(self, "fixed_size", math.prod(self.dims[i].size for i in fixed))
        object.__setattr__(self, "dim_shape", tuple(d.size for d in self.dims))
        object.__setattr__(
            self, "_hash", hash((self.param, self.index, self.labels, self.shape, self.dims))
        )

    def __hash__(self) -> int:
        return self._hash

    #: The dims' sizes: ``shape`` with block axes split in two.
    dim_shape: tuple = field(init=False, repr=False, compare=False)
    #: Positions of the dims the group permutes.
    perm_dims: tuple = field(init=False, repr=False, compare=False)
    #: Positions of the dims folded into channels.
    fixed_dims: tuple = field(init=False, repr=False, compare=False)
    #: ``prod`` of the fixed dims: how many channels each input channel becomes.
    fixed_size: int = field(init=False, repr=False, compare=False)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def is_split(self) -> bool:
        """Whether some axis is split into two dims (a block axis)."""
        return len(self.dims) != len(self.shape)

    def __str__(self) -> str:
        return self.name


def permutable(spec: WeightSpaceSpec, space: str, mode: str) -> bool:
    """Whether ``mode`` permutes ``space`` (``np``: every space; ``hnp``: hidden ones)."""
    return mode == "np" or spec.spaces[space].role == "hidden"


def module_of(param: str) -> str:
    """The layer a parameter belongs to: its name up to the last ``.``.

    >>> module_of("layer1.0.bn1.weight"), module_of("w")
    ('layer1.0.bn1', '')
    """
    return param.rpartition(".")[0]


def tile_refs(
    spec: WeightSpaceSpec, mode: str, max_fold: int | None = None, channels: int = 1
) -> list[TileRef]:
    """Every tile of ``spec`` in ``mode`` (``"np"`` or ``"hnp"``, trusted), in parameter then
    row-major order.

    With ``max_fold``, a tile whose fixed dims would fold more than :func:`fold_limit` entries
    into each of a layer's channels (``channels = C_in * C_out``) has some of them *exchanged*:
    given a factor of their own, as if a permutation moved them. That only adds symmetry (the
    layer stays equivariant to the true group); what is lost is telling those positions apart.

    Examples
    --------
    >>> from nfncompile.spec import WeightSpaceSpec, Space, ParamSpec
    >>> spec = WeightSpaceSpec([Space("a", 2, "input"), Space("b", 3, "hidden")],
    ...                        [ParamSpec("w", (3, 4), ("b", ("a", 2)))])
    >>> [(t.name, [str(d) for d in t.dims]) for t in tile_refs(spec, "hnp")]
    [('w[:, 0:2]', ['b', '2']), ('w[:, 2:4]', ['b', '2'])]
    >>> [str(d) for d in tile_refs(spec, "hnp", max_fold=1)[0].dims]
    ['b', 'a']
    """
    moving = {}  # block permutation -> whether any space sharing it is permutable
    for s in spec.spaces.values():
        if s.blocks is not None:
            moving[s.blocks] = moving.get(s.blocks, False) or permutable(spec, s.name, mode)
    out = []
    for p in spec.params:
        for i, tile in enumerate(p.tiles(spec.spaces, spec.blocks)):
            dims = _dims(spec, mode, tile.axes, tile.shape, moving)
            if max_fold is not None:
                dims = _exchanged(p.name, tile.axes, dims, max_fold, channels)
            out.append(
                TileRef(
                    p.name,
                    i,
                    tile.name,
                    tuple(tile.axes),
                    tuple(tile.shape),
                    tuple(s.start for s in tile.index),
                    dims,
                    module_of(p.name),
                )
            )
    return out


def _exchanged(param: str, labels: tuple, dims: tuple, max_fold: int, channels: int) -> tuple:
    """``dims`` with fixed ones made exchangeable until the others fold at most
    :func:`fold_limit` entries: first those of a space (``hnp``'s input and output neurons,
    exchanged as ``np`` exchanges them, under the space's name so that the tiles sharing it
    stay linked), then the others (kernel dims, axes without a space), largest first, each
    private to this dim of ``param``."""

    def spaced(i: int) -> bool:
        d = dims[i]  # a space's whole axis, not a part of a block axis
        return isinstance(labels[d.axis], str) and sum(e.axis == d.axis for e in dims) == 1

    fixed = [i for i, d in enumerate(dims) if d.factor is None]
    fold = math.prod(dims[i].size for i in fixed)
    limit = fold_limit(math.prod(d.size for d in dims), max_fold, channels)
    out = list(dims)
    for i in sorted(fixed, key=lambda i: (not spaced(i), -dims[i].size)):
        if fold <= limit:
            break
        d = dims[i]
        name = labels[d.axis] if spaced(i) else f"{param}#{d.axis}:{i}"
        out[i] = Dim(d.axis, d.size, Factor("space", name, d.size))
        fold //= d.size
    return tuple(out)


def fold_limit(entries: int, max_fold: int, channels: int = 1) -> int:
    """How many fixed entries a tile of ``entries`` may fold into each channel of a layer with
    ``channels = C_in * C_out``: :data:`SMALL_FOLD` always, and above it at most ``max_fold``
    and as many as keep one relation's ``channels * fold**2`` weights within the tile's
    entries.

    >>> fold_limit(64 * 64 * 9, 64, 16 * 16), fold_limit(3 * 64 * 49, 64, 16 * 16)
    (16, 16)
    >>> fold_limit(64 * 64 * 49, 64, 16 * 16), fold_limit(64 * 64 * 49, 64, 1)
    (28, 64)
    """
    return min(max_fold, max(SMALL_FOLD, math.isqrt(entries // channels)))


def _dims(spec: WeightSpaceSpec, mode: str, labels: tuple, shape: tuple, moving: dict) -> tuple:
    dims: list = []
    block_dim: dict = {}  # axis -> position of its block dim
    pending = []  # (position in dims, axis of the Inner label, label)
    for axis, (label, n) in enumerate(zip(labels, shape)):
        if label is None:
            dims.append(Dim(axis, n, None))
            continue
        if isinstance(label, Span):  # the space's dims, then each neuron's fixed positions
            # (or the dims of the space whose neurons each of its neurons copies)
            spanned = isinstance(label.span, str)
            width = spec.spaces[label.span].size if spanned else label.span
            parts = [(label.space, n // width)] + ([(label.span, width)] if spanned else [])
            for name, size in parts:
                sub, base = _dims(spec, mode, (name,), (size,), moving), len(dims)
                dims += [Dim(axis, d.size, d.factor, None if d.tie is None else d.tie + base)
                         for d in sub]  # fmt: skip
            if not spanned:
                dims.append(Dim(axis, label.span, None))
            continue
        space = label.space if isinstance(label, Inner) else label
        perm = permutable(spec, space, mode)
        block = spec.block_shape(space)
        if block is None or block[0] == 1:  # an ordinary space (one block is no block)
            factor = Factor("space", space, spec.spaces[space].size) if perm else None
            dims.append(Dim(axis, n, factor))
            continue
        count, k = block
        blocks = spec.spaces[space].blocks
        if not moving[blocks]:
            dims.append(Dim(axis, n, None))
            continue
        inner = Factor("inner", space, k) if perm and k > 1 else None
        if isinstance(label, Inner):
            if inner is None:
                dims.append(Dim(axis, n, None))
            else:
                pending.append((len(dims), label.block_of))
                dims.append(Dim(axis, k, inner))
            continue
        block_dim[axis] = len(dims)
        dims.append(Dim(axis, count, Factor("blocks", blocks, count)))
        if k > 1:
            dims.append(Dim(axis, k, inner, len(dims) - 1 if inner is not None else None))
    for pos, ref in pending:
        d = dims[pos]
        dims[pos] = Dim(d.axis, d.size, d.factor, block_dim[ref])
    return tuple(dims)
