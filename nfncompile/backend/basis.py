"""The orbit basis of the equivariant linear maps between two weight spaces, in diagram form.

For an input parameter block ``P`` and an output parameter block ``Q`` the permutation-equivariant
linear maps ``P -> Q`` have one basis element per choice, for every permutable space ``s``, of a
set partition of the axes of ``P`` and ``Q`` labelled ``s`` into at most ``size(s)`` blocks. In
*diagram form* a term reads:

* axes in one partition block share an index;
* a block with only ``P`` axes is averaged over (mean);
* a block with only ``Q`` axes is broadcast;
* two ``P`` axes in one block read a diagonal, two ``Q`` axes write one (zero elsewhere).

Fixed axes (``None`` labels, the ``int`` pieces of composite axes, and spaces that the mode does
not permute) take no part in the partitions: they are folded into channels, so every term owns a
``(C_out * prod(Q fixed dims)) x (C_in * prod(P fixed dims))`` channel-mixing weight.

Equivariant *biases* are the same construction with an empty input block: one term per partition
of ``Q``'s permutable axes with every block broadcast (for a block whose spaces are all distinct,
that is the single "constant" pattern).

Examples
--------
>>> from nfncompile.spec import WeightSpaceSpec
>>> spec = WeightSpaceSpec.from_dict({
...     "spaces": {"in": {"size": 2, "role": "input"}, "h": {"size": 3, "role": "hidden"},
...                "out": {"size": 2, "role": "output"}},
...     "params": {"l1.weight": {"shape": [3, 2], "axes": ["h", "in"]},
...                "l1.bias": {"shape": [3], "axes": ["h"]},
...                "l2.weight": {"shape": [2, 3], "axes": ["out", "h"]},
...                "l2.bias": {"shape": [2], "axes": ["out"]}}})
>>> terms = enumerate_basis(spec, "np")
>>> len(terms)
32
>>> print(terms[0])
l1.weight -> l1.weight: P[h:0, in:1] Q[h:0, in:1]
>>> num_basis_dims(spec, "np", bias=True), num_basis_dims(spec, "hnp", bias=True)
(36, 81)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from ..spec import WeightSpaceSpec, check_mode

__all__ = [
    "BlockRef",
    "Term",
    "block_refs",
    "set_partitions",
    "enumerate_basis",
    "count_terms",
    "num_basis_dims",
]


@dataclass(frozen=True)
class BlockRef:
    """One block of a parameter (a composite-free rectangle), as the basis sees it in a mode.

    Attributes
    ----------
    param : str
        The parameter's name.
    index : int
        Position of the block in ``ParamSpec.blocks`` (row-major over composite pieces).
    name : str
        Printable name, ``param`` or ``param[a:b, :]``.
    axes : tuple of (str or None)
        The block's simple labels, with spaces that the mode fixes replaced by ``None``.
    shape : tuple of int
        The block's shape.
    starts : tuple of int
        Offset of the block along each labelled axis of the parameter.
    labels : tuple of (str or None)
        The block's simple labels before the mode fixed any space.
    """

    param: str
    index: int
    name: str
    axes: tuple
    shape: tuple
    starts: tuple
    labels: tuple

    @property
    def fixed_axes(self) -> tuple:
        """Indices of the axes folded into channels."""
        return tuple(i for i, a in enumerate(self.axes) if a is None)

    @property
    def perm_axes(self) -> tuple:
        """Indices of the axes the group permutes."""
        return tuple(i for i, a in enumerate(self.axes) if a is not None)

    @property
    def fixed_size(self) -> int:
        """``prod`` of the fixed dims: how many channels each input channel becomes."""
        return math.prod(self.shape[i] for i in self.fixed_axes)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def __str__(self) -> str:
        return self.name


def block_refs(spec: WeightSpaceSpec, mode: str) -> list[BlockRef]:
    """Every parameter block of ``spec`` in ``mode``, in parameter then row-major order.

    Examples
    --------
    >>> from nfncompile.spec import WeightSpaceSpec, Space, ParamSpec
    >>> spec = WeightSpaceSpec([Space("a", 2, "input"), Space("b", 3, "hidden")],
    ...                        [ParamSpec("w", (3, 4), ("b", ("a", 2)))])
    >>> [(r.name, r.axes) for r in block_refs(spec, "hnp")]
    [('w[:, 0:2]', ('b', None)), ('w[:, 2:4]', ('b', None))]
    """
    check_mode(mode)
    permutable = set(spec.permutable_spaces(mode))
    out = []
    for p in spec.params:
        for i, b in enumerate(p.tiles(spec.spaces)):
            axes = tuple(a if a in permutable else None for a in b.axes)
            out.append(
                BlockRef(
                    p.name,
                    i,
                    b.name,
                    axes,
                    tuple(b.shape),
                    tuple(s.start for s in b.index),
                    tuple(b.axes),
                )
            )
    return out


@dataclass(frozen=True)
class Term:
    """One basis element: a labelled set partition of the permutable axes of ``P`` and ``Q``.

    Attributes
    ----------
    inp : BlockRef or None
        The input block ``P`` (``None`` for a bias term: the constant input).
    out : BlockRef
        The output block ``Q``.
    in_assign : tuple of (int or None)
        Per axis of ``P``: its partition block id, ``None`` for a fixed axis.
    out_assign : tuple of (int or None)
        Per axis of ``Q``: its partition block id, ``None`` for a fixed axis.
    spaces : tuple of str
        The space of each partition block id.

    Block ids are numbered in order of first appearance over ``P``'s axes, then ``Q``'s.
    """

    inp: BlockRef | None
    out: BlockRef
    in_assign: tuple
    out_assign: tuple
    spaces: tuple

    @property
    def is_bias(self) -> bool:
        return self.inp is None

    @property
    def in_fixed(self) -> int:
        """``prod`` of ``P``'s fixed dims (1 for a bias)."""
        return 1 if self.inp is None else self.inp.fixed_size

    @property
    def out_fixed(self) -> int:
        """``prod`` of ``Q``'s fixed dims."""
        return self.out.fixed_size

    def num_params(self, in_channels: int = 1, out_channels: int = 1) -> int:
        """Free parameters of the term's channel-mixing weight."""
        c_in = 1 if self.inp is None else in_channels * self.in_fixed
        return out_channels * self.out_fixed * c_in

    def kind(self, block: int) -> str:
        """``"kept"`` (in P and Q), ``"mean"`` (P only) or ``"broadcast"`` (Q only)."""
        in_p, in_q = block in self.in_assign, block in self.out_assign
        return "kept" if in_p and in_q else ("mean" if in_p else "broadcast")

    def __str__(self) -> str:
        def side(ref: BlockRef | None, assign: tuple) -> str:
            if ref is None:
                return "1"
            parts = ["-" if a is None else f"{ref.axes[i]}:{a}" for i, a in enumerate(assign)]
            return "[" + ", ".join(parts) + "]"

        src = "bias" if self.inp is None else self.inp.name
        return (
            f"{src} -> {self.out.name}: P{side(self.inp, self.in_assign)} "
            f"Q{side(self.out, self.out_assign)}"
        )


def set_partitions(n: int, max_blocks: int | None = None) -> Iterator[tuple]:
    """Every set partition of ``range(n)`` with at most ``max_blocks`` blocks.

    Yields restricted growth strings: ``rgs[i]`` is the block of item ``i``, blocks numbered in
    order of first appearance.

    Examples
    --------
    >>> list(set_partitions(3))
    [(0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1), (0, 1, 2)]
    >>> list(set_partitions(3, max_blocks=1))
    [(0, 0, 0)]
    """
    limit = n if max_blocks is None else max_blocks

    def rec(prefix: tuple, used: int) -> Iterator[tuple]:
        if len(prefix) == n:
            yield prefix
            return
        for b in range(min(used + 1, limit)):
            yield from rec((*prefix, b), max(used, b + 1))

    yield from rec((), 0)


def _pair_terms(spec: WeightSpaceSpec, p: BlockRef | None, q: BlockRef) -> list[Term]:
    p_axes = () if p is None else p.axes
    spaces = sorted({a for a in (*p_axes, *q.axes) if a is not None}, key=list(spec.spaces).index)
    items = {
        s: [("p", i) for i, a in enumerate(p_axes) if a == s]
        + [("q", i) for i, a in enumerate(q.axes) if a == s]
        for s in spaces
    }
    per_space = []
    for s in spaces:
        size = spec.spaces[s].size
        opts = []
        for rgs in set_partitions(len(items[s]), size):
            if p is None and any(side == "p" for side, _ in items[s]):
                continue
            opts.append(rgs)
        per_space.append(opts)
    terms = []
    for combo in _product(per_space):
        label: dict = {}
        for s, rgs in zip(spaces, combo):
            for item, b in zip(items[s], rgs):
                label[item] = (s, b)
        # renumber blocks by first appearance over P's axes then Q's axes
        order: dict = {}
        in_assign, out_assign = [], []
        for side, axes, dest in (("p", p_axes, in_assign), ("q", q.axes, out_assign)):
            for i, a in enumerate(axes):
                if a is None:
                    dest.append(None)
                    continue
                key = label[(side, i)]
                if key not in order:
                    order[key] = len(order)
                dest.append(order[key])
        block_spaces = tuple(k[0] for k in sorted(order, key=order.get))
        terms.append(Term(p, q, tuple(in_assign), tuple(out_assign), block_spaces))
    return terms


def enumerate_basis(spec: WeightSpaceSpec, mode: str = "np", *, bias: bool = False) -> list[Term]:
    """Every basis term of the equivariant linear (``bias=True``: affine) maps of ``spec``.

    Parameters
    ----------
    spec : WeightSpaceSpec
    mode : {"np", "hnp"}
        Which spaces permute (``hnp``: input and output spaces are fixed).
    bias : bool
        Also list the bias terms (``Term.inp is None``), after the linear ones.

    Returns
    -------
    list of Term
        Ordered by output block, then input block, then partition.
    """
    check_mode(mode)
    refs = block_refs(spec, mode)
    terms = []
    for q in refs:
        for p in refs:
            terms.extend(_pair_terms(spec, p, q))
    if bias:
        for q in refs:
            terms.extend(_pair_terms(spec, None, q))
    return terms


def count_terms(spec: WeightSpaceSpec, mode: str = "np", *, bias: bool = False) -> dict:
    """Number of basis terms per ``(input block name, output block name)``.

    Bias terms are keyed ``("bias", output block name)``.
    """
    out: dict = {}
    for t in enumerate_basis(spec, mode, bias=bias):
        key = ("bias" if t.inp is None else t.inp.name, t.out.name)
        out[key] = out.get(key, 0) + 1
    return out


def num_basis_dims(
    spec: WeightSpaceSpec,
    mode: str = "np",
    *,
    bias: bool = False,
    in_channels: int = 1,
    out_channels: int = 1,
) -> int:
    """Dimension of the space of equivariant linear (affine) maps with the given channels:
    the free-parameter count of :class:`~nfncompile.nn.NFLinear`.
    """
    return sum(
        t.num_params(in_channels, out_channels) for t in enumerate_basis(spec, mode, bias=bias)
    )


def _product(lists: list) -> list:
    out = [()]
    for opts in lists:
        out = [(*prev, o) for prev in out for o in opts]
    return out
