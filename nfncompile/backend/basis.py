"""The orbit basis of the equivariant linear maps between two weight spaces, in diagram form.

For an input tile ``P`` and an output tile ``Q`` (see :mod:`.tiles`), the equivariant linear maps
``P -> Q`` have one basis element per partition of the permutable dims of ``P`` and ``Q`` into
*classes* (dims in one class share an index) such that

* a class holds dims of one group factor (one space, one block permutation, or the insides of
  one block space's blocks);
* the insides of blocks form *nested* classes: two inner dims share a class only when their
  block dims share one (a partition by equal block, then inside each block by equal neuron);
* no factor has more classes than it has distinct values (a space of ``n`` neurons at most
  ``n``; ``g`` blocks at most ``g``; inside one block class, ``k`` neurons at most ``k``).

In *diagram form* a term reads: a class with only ``P`` dims is averaged over (mean); a class
with only ``Q`` dims is broadcast; a class with dims of both is *linked* (kept); two ``P`` dims
in one class read a diagonal, two ``Q`` dims write one (zero elsewhere). Fixed dims take no part:
they are folded into channels, so every term owns a ``(C_out * Q fixed) x (C_in * P fixed)``
channel-mixing weight. Equivariant *biases* are the terms with no input: one per partition of
``Q``'s dims with every class broadcast.

A term splits into two halves, a :class:`Side` on ``P`` (its classes, which are linked) and one
on ``Q``. Terms are not enumerated pair by pair: every side of every tile is enumerated once,
and sides are grouped by their *key*, the structure of their linked classes (which factor each
has, which block class each inner class sits in). Every input side and every output side of one
key form a term, once per structure-preserving matching of their linked classes; a
:class:`Coupling` holds all of them. Tiles that share no factor meet in the coupling of the
empty key (every invariant of every tile broadcast to every tile); tiles that share a space
meet in that space's couplings. So the basis is built in time linear in the number of sides,
and :func:`enumerate_basis` lists individual terms only when asked.

Examples
--------
>>> from nfncompile.testing import mlp_spec
>>> spec = mlp_spec([2, 3, 2])  # spaces in, h1, out; tensors l1.weight, l1.bias, l2.*
>>> terms = enumerate_basis(spec, "np")
>>> len(terms)
32
>>> print(terms[0])
l1.weight -> l1.weight: P[h1:0, in:1] Q[h1:0, in:1]
>>> num_basis_dims(spec, "np", bias=True), num_basis_dims(spec, "hnp", bias=True)
(36, 81)
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..spec import WeightSpaceSpec
from .tiles import Factor, TileRef, tile_refs

__all__ = [
    "Side",
    "Coupling",
    "Term",
    "set_partitions",
    "tile_sides",
    "couplings",
    "term_of",
    "bias_term",
    "enumerate_basis",
    "count_terms",
    "num_basis_dims",
]


@dataclass(frozen=True)
class Side:
    """One tile's half of a basis term.

    Attributes
    ----------
    tile : TileRef
    classes : tuple of tuple of int
        A partition of the tile's permutable dims (positions in ``tile.dims``), ordered by first
        dim: dims in one class share an index (a diagonal when there are several).
    linked : tuple of bool
        Per class: linked to the other half (kept on an input, fed on an output), or not
        (averaged on an input, broadcast on an output).
    key : tuple
        The structure of the linked classes in canonical order: ``(kind, name, limit, tie)`` per
        class, ``tie`` the canonical position of the block class an inner class sits in (-1).
    orderings : tuple of tuple of int
        Every order of the linked classes (class indices) that reads as ``key``: one per
        automorphism of the key (two linked classes of one space can be matched either way).
    """

    tile: TileRef
    classes: tuple
    linked: tuple
    key: tuple
    orderings: tuple

    def __post_init__(self) -> None:
        # sides are dict keys and their linked classes are read all through a plan's build:
        # both computed once (a large layer's build spent a fifth of its plan hashing them)
        object.__setattr__(self, "_hash", hash((self.tile, self.classes, self.linked)))
        linked = tuple(c for c, k in zip(self.classes, self.linked) if k)
        object.__setattr__(self, "linked_classes", linked)

    def __hash__(self) -> int:
        return self._hash

    #: The classes that are linked, in class order.
    linked_classes: tuple = field(init=False, repr=False, compare=False)

    def factor(self, j: int) -> Factor:
        """The group factor of class ``j``."""
        return self.tile.dims[self.classes[j][0]].factor

    def tie(self, j: int) -> int | None:
        """For an inner class: the class holding its block dims (else ``None``)."""
        t = self.tile.dims[self.classes[j][0]].tie
        if t is None:
            return None
        return next(i for i, c in enumerate(self.classes) if t in c)

    @property
    def is_pointwise(self) -> bool:
        """Every class linked and a single dim: the tile read (or written) entry by entry."""
        return all(self.linked) and all(len(c) == 1 for c in self.classes)

    def unlinked_counts(self, ordering: tuple) -> dict:
        """Unlinked classes per factor instance, for the class-count limits of a pairing.

        Instances: ``("f", kind, name, limit)`` for a space or block permutation;
        ``("i", name, limit, j)`` for the insides of ``name``'s blocks within the linked block
        class at position ``j`` of ``ordering``. Inner classes of an unlinked block class are this side's alone.
        """
        out: dict = {}
        for j, linked in enumerate(self.linked):
            if linked:
                continue
            f = self.factor(j)
            if f.kind != "inner":
                inst = ("f", f.kind, f.name, f.limit)
            else:
                t = self.tie(j)
                if not self.linked[t]:
                    continue
                inst = ("i", f.name, f.limit, ordering.index(t))
            out[inst] = out.get(inst, 0) + 1
        return out

    def label(self) -> str:
        """``tile[dim labels]``: ``~j`` marks a diagonal class, ``*`` an unlinked one."""
        ids = {d: j for j, c in enumerate(self.classes) for d in c}
        parts = []
        for i, d in enumerate(self.tile.dims):
            if d.factor is None:
                parts.append("-")
                continue
            j = ids[i]
            mark = "" if self.linked[j] else "*"
            diag = "" if len(self.classes[j]) == 1 else f"~{j}"
            parts.append(f"{d.factor}{mark}{diag}")
        return f"{self.tile.name}[{', '.join(parts)}]"


@dataclass(frozen=True)
class Coupling:
    """Every term between some input sides and some output sides of one key.

    Each ``(column, row)`` pair is one term: column ``(side, ordering)`` is an input side read
    with its linked classes in ``ordering``; row ``(side, ordering)`` an output side. The term
    links the input's class ``col_ordering[j]`` with the output's ``row_ordering[j]``.
    """

    key: tuple
    cols: tuple
    rows: tuple

    @property
    def num_terms(self) -> int:
        return len(self.cols) * len(self.rows)


@dataclass(frozen=True)
class Term:
    """One basis element: a labelled partition of the permutable dims of ``P`` and ``Q``.

    Attributes
    ----------
    inp : TileRef or None
        The input tile ``P`` (``None`` for a bias term: the constant input).
    out : TileRef
        The output tile ``Q``.
    in_assign : tuple of (int or None)
        Per dim of ``P``: its class id, ``None`` for a fixed dim.
    out_assign : tuple of (int or None)
        Per dim of ``Q``: its class id, ``None`` for a fixed dim.
    factors : tuple of Factor
        The factor of each class id.

    Class ids are numbered in order of first appearance over ``P``'s dims, then ``Q``'s.
    """

    inp: TileRef | None
    out: TileRef
    in_assign: tuple
    out_assign: tuple
    factors: tuple

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

    def kind(self, cls: int) -> str:
        """``"kept"`` (in P and Q), ``"mean"`` (P only) or ``"broadcast"`` (Q only)."""
        in_p, in_q = cls in self.in_assign, cls in self.out_assign
        return "kept" if in_p and in_q else ("mean" if in_p else "broadcast")

    def __str__(self) -> str:
        def side(ref: TileRef | None, assign: tuple) -> str:
            if ref is None:
                return "1"
            parts = [
                "-" if a is None else f"{ref.dims[i].factor}:{a}" for i, a in enumerate(assign)
            ]
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


# ---- one side of one tile -----------------------------------------------------------------------


def tile_sides(tile: TileRef) -> list[Side]:
    """Every side of ``tile``: each valid partition of its permutable dims, with every valid
    choice of linked classes (an inner class is linked only when its block class is).

    Examples
    --------
    >>> from nfncompile.testing import mlp_spec
    >>> from nfncompile.backend.tiles import tile_refs
    >>> w = tile_refs(mlp_spec([2, 3, 1]), "np")[0]
    >>> [s.label() for s in tile_sides(w)]
    ['l1.weight[h1*, in*]', 'l1.weight[h1*, in]', 'l1.weight[h1, in*]', 'l1.weight[h1, in]']
    """
    dims = tuple((d.factor, d.tie) for d in tile.dims)
    return [Side(tile, *shape) for shape in _side_shapes(dims)]


@functools.lru_cache(maxsize=4096)
def _side_shapes(dims: tuple) -> tuple:
    """The sides of a tile whose dims have these ``(factor, tie)`` (``factor`` None: fixed), as
    ``(classes, linked, key, orderings)``: all they depend on, so that the tiles of one kind on
    the same spaces (a norm's four vectors) enumerate them once."""
    perm_dims = [i for i, (f, _) in enumerate(dims) if f is not None]
    outer: dict = {}  # factor -> dims (spaces and block permutations)
    inner: list = []
    for i in perm_dims:
        f = dims[i][0]
        if f.kind == "inner":
            inner.append(i)
        else:
            outer.setdefault(f, []).append(i)
    out = []
    outer_items = list(outer.items())
    for combo in itertools.product(
        *(list(set_partitions(len(ds), f.limit)) for f, ds in outer_items)
    ):
        cls_of: dict = {}
        for (f, ds), rgs in zip(outer_items, combo):
            for d, b in zip(ds, rgs):
                cls_of[d] = (f, b)
        groups: dict = {}
        for d in inner:
            groups.setdefault((dims[d][0], cls_of[dims[d][1]]), []).append(d)
        group_items = list(groups.items())
        for combo2 in itertools.product(
            *(list(set_partitions(len(ds), g[0].limit)) for g, ds in group_items)
        ):
            labels = dict(cls_of)
            for (g, ds), rgs in zip(group_items, combo2):
                for d, b in zip(ds, rgs):
                    labels[d] = (g, b)
            members: dict = {}
            for d in perm_dims:
                members.setdefault(labels[d], []).append(d)
            classes = tuple(sorted(tuple(m) for m in members.values()))
            out.extend(_with_links(dims, classes))
    return tuple(out)


def _with_links(dims: tuple, classes: tuple) -> list[tuple]:
    tie_cls = []
    for c in classes:
        t = dims[c[0]][1]
        tie_cls.append(None if t is None else next(i for i, o in enumerate(classes) if t in o))
    out = []
    for linked in itertools.product((False, True), repeat=len(classes)):
        if any(t is not None and lk and not linked[t] for t, lk in zip(tie_cls, linked)):
            continue
        key, orderings = _canonical(dims, classes, linked, tie_cls)
        out.append((classes, linked, key, orderings))
    return out


def _canonical(dims: tuple, classes: tuple, linked: tuple, tie_cls: list) -> tuple:
    """The key of the linked classes and every ordering of them that reads as the key."""
    lk = [j for j, k in enumerate(linked) if k]
    if not lk:
        return (), ((),)
    factor = [dims[c[0]][0] for c in classes]
    lk.sort(key=lambda j: factor[j].order)
    runs = [list(g) for _, g in itertools.groupby(lk, key=lambda j: factor[j])]
    best, found = None, []
    for choice in itertools.product(*(itertools.permutations(r) for r in runs)):
        order = tuple(j for run in choice for j in run)
        desc = tuple(
            (
                factor[j].kind,
                factor[j].name,
                factor[j].limit,
                -1 if tie_cls[j] is None else order.index(tie_cls[j]),
            )
            for j in order
        )
        if best is None or desc < best:
            best, found = desc, [order]
        elif desc == best:
            found.append(order)
    return best, tuple(found)


# ---- couplings ---------------------------------------------------------------------------------


def couplings(tiles: list[TileRef], *, complete: bool = True) -> tuple[list[Coupling], list[Side]]:
    """Group every side of every tile into couplings, and list the bias sides.

    Parameters
    ----------
    tiles : list of TileRef
    complete : bool
        Split couplings so that no term exceeds a factor's number of distinct values (the exact
        orbit basis). Without it every pair of one key is a term (still equivariant: a diagram
        with more classes than values is a valid map, only linearly dependent on the others).

    Returns
    -------
    couplings : list of Coupling
        In order of first appearance of their key over the tiles' output sides.
    biases : list of Side
        The output sides with no linked class: one bias term each.
    """
    by_key: dict = {}
    biases = []
    for t in tiles:
        for s in tile_sides(t):
            entry = by_key.setdefault(s.key, ([], []))
            entry[0].extend((s, o) for o in s.orderings)
            entry[1].append((s, s.orderings[0]))
            if not s.key:
                biases.append(s)
    out = []
    for key, (cols, rows) in by_key.items():
        if not complete:
            out.append(Coupling(key, tuple(cols), tuple(rows)))
            continue
        out.extend(_split_by_limits(key, cols, rows))
    return out, biases


def _room(key: tuple, inst: tuple) -> int:
    """How many unlinked classes a factor instance's limit leaves beside the key's classes."""
    if inst[0] == "f":
        _, kind, name, limit = inst
        return limit - sum(1 for k in key if k[0] == kind and k[1] == name)
    _, name, limit, j = inst
    return limit - sum(1 for k in key if k[0] == "inner" and k[1] == name and k[3] == j)


def _split_by_limits(key: tuple, cols: list, rows: list) -> list[Coupling]:
    """One coupling per set of rows that accept the same columns under the class limits.

    Only *tight* factor instances (where the most unlinked classes of a column plus those of a
    row could exceed the limit: spaces of very few neurons) split a coupling.
    """
    col_counts = [s.unlinked_counts(o) for s, o in cols]
    row_counts = [s.unlinked_counts(o) for s, o in rows]
    tight = []
    for inst in sorted(set().union(*col_counts, *row_counts)):
        room = _room(key, inst)
        mc = max(c.get(inst, 0) for c in col_counts)
        mr = max(r.get(inst, 0) for r in row_counts)
        if mc + mr > room:
            tight.append((inst, room))
    if not tight:
        return [Coupling(key, tuple(cols), tuple(rows))]
    sigs: dict = {}
    for row, counts in zip(rows, row_counts):
        sig = tuple(counts.get(inst, 0) for inst, _ in tight)
        sigs.setdefault(sig, []).append(row)
    out = []
    for sig, members in sigs.items():
        ok = [
            col
            for col, counts in zip(cols, col_counts)
            if all(counts.get(inst, 0) + r <= room for (inst, room), r in zip(tight, sig))
        ]
        if ok:
            out.append(Coupling(key, tuple(ok), tuple(members)))
    return out


# ---- explicit terms (introspection, tests) ----------------------------------------------------


def term_of(col: tuple, row: tuple) -> Term:
    """The term of one column and one row (P's classes are already in first-dim order)."""
    (p, po), (q, qo) = col, row
    in_assign = [None] * len(p.tile.dims)
    for j, c in enumerate(p.classes):
        for d in c:
            in_assign[d] = j
    factors = [p.factor(j) for j in range(len(p.classes))]
    link = dict(zip(qo, po))
    out_assign = [None] * len(q.tile.dims)
    for j, c in enumerate(q.classes):
        if j not in link:
            link[j] = len(factors)
            factors.append(q.factor(j))
        for d in c:
            out_assign[d] = link[j]
    return Term(p.tile, q.tile, tuple(in_assign), tuple(out_assign), tuple(factors))


def bias_term(q: Side) -> Term:
    """The bias term of an output side with no linked class."""
    out_assign = [None] * len(q.tile.dims)
    for j, c in enumerate(q.classes):
        for d in c:
            out_assign[d] = j
    return Term(
        None, q.tile, (), tuple(out_assign), tuple(q.factor(j) for j in range(len(q.classes)))
    )


def enumerate_basis(spec: WeightSpaceSpec, mode: str = "np", *, bias: bool = False) -> list[Term]:
    """Every basis term of the equivariant linear (``bias=True``: affine) maps of ``spec``.

    Lists them one by one (quadratic in the number of tiles: meant for small specs, tests and
    reading); the layer itself is built from :func:`couplings`.

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
        Ordered by output tile, then input tile, then number of classes.
    """
    tiles = tile_refs(spec, mode)
    pos = {t: i for i, t in enumerate(tiles)}
    cps, biases = couplings(tiles)
    terms = [
        (pos[row[0].tile], pos[col[0].tile], term_of(col, row))
        for c in cps
        for row in c.rows
        for col in c.cols
    ]
    terms.sort(key=lambda x: (x[0], x[1], len(x[2].factors), x[2].out_assign))
    out = [t for _, _, t in terms]
    if bias:
        out += [bias_term(q) for q in sorted(biases, key=lambda s: pos[s.tile])]
    return out


def count_terms(spec: WeightSpaceSpec, mode: str = "np", *, bias: bool = False) -> dict:
    """Number of basis terms per ``(input tile name, output tile name)``.

    Bias terms are keyed ``("bias", output tile name)``.
    """
    out: dict = {}
    cps, biases = couplings(tile_refs(spec, mode))
    for c in cps:
        for q, _ in c.rows:
            for p, _ in c.cols:
                k = (p.tile.name, q.tile.name)
                out[k] = out.get(k, 0) + 1
    if bias:
        for q in biases:
            k = ("bias", q.tile.name)
            out[k] = out.get(k, 0) + 1
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
    the free-parameter count of a complete :class:`~nfncompile.nn.NFLinear`.
    """
    cps, biases = couplings(tile_refs(spec, mode))
    total = 0
    for c in cps:
        rows = sum(out_channels * q.tile.fixed_size for q, _ in c.rows)
        cols = sum(in_channels * p.tile.fixed_size for p, _ in c.cols)
        total += rows * cols
    if bias:
        total += sum(out_channels * q.tile.fixed_size for q in biases)
    return total
