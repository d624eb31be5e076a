"""The abstract values of the symmetry analysis: which neurons index which dims of a tensor.

A *run* is a set of consecutive neurons created by one op (the outputs of a layer, the model
input's channels, one axis of a parameter used directly); a 2048-channel conv output is one
run, not 2048 nodes. A :data:`Label` says which neurons index one dim of a tensor: a tuple of
:class:`Seg` s, each a slice of a run, in order. A :class:`TensorLabels` is the abstract value
of a whole tensor: its shape and a label per dim. A dim's label is one of

* ``None``: the group does not act along it (batch, spatial, fixed neurons);
* a :data:`Label`;
* a :class:`Prod`: the row-major flattening of several dims, each with its own label (a
  weight reshaped to ``(out, in * kh * kw)``), which only reshapes and symmetric reductions
  read; any other op fixes its factors;
* :data:`UNIFORM`: the values do not depend on the position along the dim (a size-1 dim
  expanded, a constant buffer repeated over channels), so any permutation leaves it unchanged.

The constraints the op rules record are plain records too: :class:`Tie` (two slices of runs
move together), :class:`Broken` (an op that fixed neurons), :class:`ParamLabel` (the labels of
one state_dict entry) and :class:`BlockLink` (labels cut into equal blocks that one block
permutation moves together: a grouped convolution).

Examples
--------
>>> lab = (Seg(0, 0, 4), Seg(1, 2, 3))
>>> label_width(lab)
7
>>> TensorLabels.plain((2, 7)).with_label(1, lab).labelled
True
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .fx import leaves, remade  # noqa: F401 (remade re-exported)

__all__ = [
    "Seg",
    "Label",
    "Prod",
    "UNIFORM",
    "label_width",
    "segments",
    "is_plain",
    "merged",
    "reordered",
    "canonical",
    "TensorLabels",
    "Run",
    "Tie",
    "Broken",
    "ParamLabel",
    "BlockLink",
    "POSITIONS",
    "UNREAD",
    "MIXED",
    "INDEXED",
    "GATHERED",
    "MEETS_POSITIONS",
    "tensors",
]

#: The reason recorded for positions that are not neurons (padding, constants, conv kernel
#: taps of a weight used directly): fixed, but not symmetry an op broke.
POSITIONS = "fixed positions (not neurons)"
#: Reasons an op records where it meets positions: an elementwise op with a tensor that depends
#: on position, an index by position. Where all such an op fixed is an axis of a parameter that
#: nothing ties to any other run (a position table's rows), the report counts them as positions.
MIXED = "combined elementwise with a tensor that depends on position"
INDEXED = "indexes one neuron by its position"
GATHERED = "reads neurons at positions a tensor gives"
MEETS_POSITIONS = frozenset({MIXED, INDEXED, GATHERED})
#: The reason recorded for the rows of a parameter axis that the example's shapes do not read
#: (a positional table longer than the example): reported, as another input may read them.
UNREAD = "not read at the example's shapes (a longer input may read them)"


@dataclass(frozen=True)
class Seg:
    """``length`` consecutive neurons of run ``run`` from ``offset``, each spanning ``inner``
    consecutive positions of the labelled dim (``inner > 1`` after flattening C x P).

    >>> Seg(0, 2, 3).width, Seg(0, 0, 4, inner=9).width
    (3, 36)
    """

    run: int
    offset: int
    length: int
    inner: int = 1

    @property
    def width(self) -> int:
        """Positions covered in the labelled dim."""
        return self.length * self.inner


#: The neurons along one dim: a tuple of segments, in order.
Label = tuple


@dataclass(frozen=True)
class Prod:
    """A dim that is the row-major flattening of dims of ``sizes``, labelled ``factors`` (a
    :data:`Label` or ``None`` each).

    >>> p = Prod(((Seg(0, 0, 4),), None), (4, 9))
    >>> p.width, list(segments(p))
    (36, [Seg(run=0, offset=0, length=4, inner=1)])
    """

    factors: tuple
    sizes: tuple

    @property
    def width(self) -> int:
        """Positions covered in the labelled dim."""
        return math.prod(self.sizes)


def as_prod(label: Any, sizes: tuple) -> Prod | None:
    """``label`` as a :class:`Prod` over dims of ``sizes`` when it is the flattening of one
    labelled dim among unlabelled ones (its neurons spanning the dims after it, repeated for
    the dims before it), else ``None``: the form a flattened product meets it in.

    >>> as_prod((Seg(0, 0, 4, inner=3),), (4, 3))
    Prod(factors=((Seg(run=0, offset=0, length=4, inner=1),), None), sizes=(4, 3))
    >>> as_prod((Seg(0, 0, 4, inner=3),), (3, 4)) is None
    True
    """
    if not isinstance(label, tuple) or not label:
        return None
    for t, n in enumerate(sizes):
        after, before = math.prod(sizes[t + 1 :]), math.prod(sizes[:t])
        block, width = [], 0
        for s in label:
            if width == n * after or s.inner % after:
                break
            block.append(Seg(s.run, s.offset, s.length, s.inner // after))
            width += s.width
        if width != n * after:
            continue
        if tuple(Seg(s.run, s.offset, s.length, s.inner * after) for s in block) * before == label:
            factors = [None] * len(sizes)
            factors[t] = tuple(block)
            return Prod(tuple(factors), tuple(sizes))
    return None


class _Uniform:
    """The label of a dim along which the values do not depend on the position."""

    _instance: _Uniform | None = None

    def __new__(cls) -> _Uniform:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNIFORM"


#: The label of a dim whose values do not depend on the position (see the module docstring).
UNIFORM = _Uniform()


def label_width(label: Label | Prod) -> int:
    """Number of positions a label covers."""
    if isinstance(label, Prod):
        return label.width
    return sum(s.width for s in label)


def segments(label: Any) -> Iterator[Seg]:
    """Every :class:`Seg` a dim label holds (none for ``None`` and :data:`UNIFORM`, the
    factors' for a :class:`Prod`)."""
    if isinstance(label, Prod):
        for f in label.factors:
            yield from segments(f)
    elif isinstance(label, tuple):
        yield from label


def merged(label: Any) -> Any:
    """``label`` with consecutive segments of one run that continue each other as one: the
    same neurons in the same order, so that two spellings of one label compare equal.

    >>> merged((Seg(1, 0, 4), Seg(1, 4, 4), Seg(2, 0, 3)))
    (Seg(run=1, offset=0, length=8, inner=1), Seg(run=2, offset=0, length=3, inner=1))
    """
    if isinstance(label, Prod):
        return Prod(tuple(merged(f) for f in label.factors), label.sizes)
    if not isinstance(label, tuple):
        return label
    out: list = []
    for s in label:
        last = out[-1] if out else None
        if last and (last.run, last.offset + last.length, last.inner) == (s.run, s.offset, s.inner):
            out[-1] = Seg(s.run, last.offset, last.length + s.length, s.inner)
        else:
            out.append(s)
    return tuple(out)


def reordered(label: Label, index: Iterable[int]) -> Label | None:
    """The label of a dim whose position ``p`` holds position ``index[p]`` of a dim labelled
    ``label`` (a channel shuffle), or ``None`` where that splits up a neuron's positions.

    >>> a, b = Seg(0, 0, 2), Seg(1, 0, 2)
    >>> reordered((a, b), [0, 2, 1, 3])
    (Seg(run=0, offset=0, length=1, inner=1), Seg(run=1, offset=0, length=1, inner=1), \
Seg(run=0, offset=1, length=1, inner=1), Seg(run=1, offset=1, length=1, inner=1))
    >>> reordered((Seg(0, 0, 2, inner=2),), [2, 3, 0, 1])
    (Seg(run=0, offset=1, length=1, inner=2), Seg(run=0, offset=0, length=1, inner=2))
    >>> reordered((Seg(0, 0, 2, inner=2),), [0, 2, 1, 3]) is None
    True
    """
    at = [
        (s.run, s.offset + k // s.inner, k % s.inner, s.inner)
        for s in label
        for k in range(s.width)
    ]
    moved = [at[i] for i in index]
    out: list = []
    p = 0
    while p < len(moved):
        run, neuron, k, inner = moved[p]
        if k or moved[p : p + inner] != [(run, neuron, j, inner) for j in range(inner)]:
            return None
        out.append(Seg(run, neuron, 1, inner))
        p += inner
    return merged(tuple(out))


def canonical(label: Label) -> tuple[Label, tuple] | None:
    """``label``'s neurons grouped run by run (in the order the runs first appear, each run's
    neurons in order) and the labelled position of each of ``label``'s positions, where that
    needs fewer segments; else ``None``. A layer reading channels after a channel shuffle
    reads two runs interleaved: as two whole runs with a fixed order of positions
    (:attr:`~nfncompile.spec.ParamSpec.order`), each may be one neuron space.

    >>> a, b = Seg(0, 0, 1), Seg(1, 0, 1)
    >>> canonical((a, b, Seg(0, 1, 1), Seg(1, 1, 1)))
    ((Seg(run=0, offset=0, length=2, inner=1), Seg(run=1, offset=0, length=2, inner=1)), \
(0, 2, 1, 3))
    >>> canonical((Seg(0, 0, 2), Seg(1, 0, 2))) is None
    True
    """
    label = merged(label)
    groups: dict = {}
    for s in label:
        groups.setdefault((s.run, s.inner), []).append(s)
    pieces: list = []
    for segs in groups.values():
        pieces += merged(tuple(sorted(segs, key=lambda s: s.offset)))
    if len(pieces) >= len(label):
        return None
    where: dict = {}
    for s in pieces:
        for k in range(s.width):
            where[(s.run, s.offset + k // s.inner, k % s.inner)] = len(where)
    order = tuple(
        where.get((s.run, s.offset + k // s.inner, k % s.inner), -1)
        for s in label
        for k in range(s.width)
    )
    if len(where) != len(order) or sorted(order) != list(range(len(order))):
        return None  # a neuron read twice: no one order of positions
    return tuple(pieces), order


def is_plain(label: Any) -> bool:
    """Whether ``label`` is a :data:`Label` of whole neurons (every segment ``inner == 1``).

    >>> is_plain((Seg(0, 0, 2),)), is_plain((Seg(0, 0, 2, inner=3),)), is_plain(None)
    (True, False, False)
    """
    return isinstance(label, tuple) and all(s.inner == 1 for s in label)


@dataclass(frozen=True)
class TensorLabels:
    """The abstract value of one tensor: its shape and a label (or ``None``) per dim.

    ``None`` means the group does not act along that dim (batch, spatial, fixed neurons).
    ``values``: for an integer tensor of neuron positions (``argmin`` over a labelled dim, a
    VQ codebook's nearest entries), the label its values index; a permutation of those
    neurons permutes the values alike.
    """

    shape: tuple
    labels: tuple
    values: Any = None

    @staticmethod
    def plain(shape: Any) -> TensorLabels:
        """A tensor the group does not act on."""
        shape = tuple(shape)
        return TensorLabels(shape, (None,) * len(shape))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def with_label(self, dim: int, label: Label | None) -> TensorLabels:
        labels = list(self.labels)
        labels[dim] = label
        return TensorLabels(self.shape, tuple(labels))

    @property
    def labelled(self) -> bool:
        return any(lab is not None for lab in self.labels)


@dataclass
class Run:
    """A run of neurons: created by one op (or the model input, or a parameter axis)."""

    id: int
    size: int
    kind: str  # "input" | "neuron" | "param" | "fixed" | "heads" | "constant"
    origin: str  # readable creator: module target, "in", param key + axis
    node: str  # fx node name
    op: str
    uniform: bool = False  # positions that all hold one value (padding, a zero piece)


@dataclass
class Tie:
    """Neurons ``a[a_off : a_off + length]`` and ``b[b_off : b_off + length]`` move together."""

    a: int
    a_off: int
    b: int
    b_off: int
    length: int
    op: str
    node: str


@dataclass
class Broken:
    """One op that broke symmetry."""

    op: str
    node: str
    reason: str
    neurons: list = field(default_factory=list)  # (run, offset, length)


@dataclass
class ParamLabel:
    """The labels of one state_dict entry: its (view) shape and a label per view axis."""

    shape: tuple
    view: tuple | None
    axes: list
    ops: list = field(default_factory=list)


@dataclass
class BlockLink:
    """Labels that one block permutation moves together: each of ``members`` is cut into
    ``count`` equal blocks, block ``j`` of every member moves to the same place, and the
    neurons inside every block permute on their own (``S_k wr S_count``). A grouped
    convolution links its input and output channels; ``nn.MultiheadAttention`` its query (and
    key) features and its value features, one block per head (``what="heads"``).

    ``inner`` lists the axes indexed by the position *inside* a block, as
    ``(label, indexed, row)``: the label of that axis (a run used nowhere else), the member
    whose blocks it indexes, and the member whose block selects which one (the grouped weight's
    input axis: inside the input blocks, the block given by the output row).

    The link holds only if every member turns out to be one whole neuron space, the inner
    labels stay alone, and no space is cut into two different block counts. Otherwise the
    derivation applies the conservative alternative the rule recorded: ``ties``, ``cuts``
    (``(run, pos, op, node)``) and ``fixes`` (``(label, reason)``).
    """

    id: int
    op: str
    node: str
    origin: str
    count: int
    members: tuple
    inner: tuple = ()
    what: str = "groups"  # what the blocks are: names the block permutation "<origin>.<what>"
    ties: list = field(default_factory=list)
    cuts: list = field(default_factory=list)
    fixes: list = field(default_factory=list)


@dataclass
class HeadSplit:
    """A dim of equal chunks viewed as ``(heads, rest)`` (attention's ``C -> (H, C / H)``):
    each chunk a head.

    The heads dim is labelled with run ``heads`` (the head positions: they stay in place) and
    the rest with run ``dims``, which stands for *every* chunk at once: a tie, cut or fix of
    ``dims`` applies to each chunk, and a tie of ``dims`` with another split's ``dims`` ties
    their chunks head by head (a head's queries with the same head's keys). Each head's
    neurons then permute on their own. Flattening ``(heads, dims)`` back gives the chunks.

    The split holds only if its heads stay aligned (every op that meets two splits' dims
    also meets their heads, whole and in order, and no op reads a head position by position)
    and nothing reads ``dims`` as a whole (a parameter shared by every head). Otherwise the
    derivation falls back to the conservative reading: ``dims`` tied to every chunk, one
    permutation for all heads.
    """

    id: int
    op: str
    node: str
    chunks: tuple  # the label of each chunk (inner 1, or a stacked split's blocks), in order
    heads: int  # run id
    dims: int  # run id
    #: the heads are a stacked parameter's axis (an ensemble's members, the experts): where
    #: the split does not hold they are free neurons, as the axis was before (:mod:`.stacked`)
    stacked: bool = False

    @property
    def width(self) -> int:
        """Neurons per chunk (the ``dims`` run's size)."""
        return sum(s.length for s in self.chunks[0])

    @property
    def span(self) -> int:
        """Positions each neuron of a chunk spans (1, or a stacked split's blocks)."""
        return self.chunks[0][0].inner


@dataclass(frozen=True)
class HeadMerge:
    """A reshape that flattened split ``split``'s ``dims`` with the heads of split ``heads``
    (its label the chunks): it holds only if the two splits' heads are aligned."""

    heads: int  # id of the HeadSplit whose heads run labelled the heads dim
    split: int  # id of the HeadSplit whose dims run labelled the rest
    node: str


def tensors(value: Any) -> list:
    """Every :class:`TensorLabels` in a nested value (args, kwargs, tuples of outputs)."""
    return [v for v in leaves(value) if isinstance(v, TensorLabels)]
