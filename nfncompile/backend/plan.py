"""The fused execution plan of an NF-Layer: shared reductions, one channel mix per pattern.

A basis term (see :mod:`nfncompile.backend.basis`) splits into an input side and an output side:

* its **reduction** of the input block ``P``: which of ``P``'s permutable axes are merged by a
  diagonal read, which are averaged and which are kept. Many terms share one reduction (every
  term that needs the column means of ``W2`` reads the same tensor), so each distinct reduction
  is computed once;
* its **pattern** on the output block ``Q``: how the kept indices land on ``Q``'s axes, which
  axes are broadcast and which are written on a diagonal.

Terms with the same ``(Q, pattern)`` form a :class:`Group`: their reduced inputs (transposed so
that the kept dims follow ``Q``'s order) are concatenated along channels and mixed by a single
matmul, whose result is broadcast-added into ``Q``. Biases join the group of their pattern.

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
>>> plan = build_plan(spec, "hnp", 1, 1)
>>> len(plan.terms), len(plan.reductions), len(plan.groups)
(29, 7, 7)
>>> print(plan)
Plan(mode='hnp', in_channels=1, out_channels=1, terms=29, params=81)
reductions:
  r0 = l1.weight[h, -] keep (h)
  r1 = l1.weight[h, -] mean (h) from r0
  r2 = l1.bias[h] keep (h)
  r3 = l1.bias[h] mean (h) from r2
  r4 = l2.weight[-, h] keep (h)
  r5 = l2.weight[-, h] mean (h) from r4
  r6 = l2.bias[-] fixed only
groups:
  g0: l1.weight[h, -] <- m0[0:2](r0, r2, r4)
  g1: l1.weight[h*, -] <- m1[0:2](r1, r3, r5, r6, bias)
  g2: l1.bias[h] <- m0[2:3](r0, r2, r4)
  g3: l1.bias[h*] <- m1[2:3](r1, r3, r5, r6, bias)
  g4: l2.weight[-, h] <- m0[3:5](r0, r2, r4)
  g5: l2.weight[-, h*] <- m1[3:5](r1, r3, r5, r6, bias)
  g6: l2.bias[-] <- m1[5:7](r1, r3, r5, r6, bias)
mixes:
  m0: [5x5] -> g0, g2, g4
  m1: [7x7] -> g1, g3, g5, g6
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..spec import WeightSpaceSpec, check_mode
from .basis import BlockRef, block_refs, enumerate_basis

__all__ = ["Reduction", "Pattern", "Contribution", "Group", "Mix", "Plan", "build_plan"]


@dataclass(frozen=True)
class Reduction:
    """One reduction of an input block, computed once and shared by every term that reads it.

    Attributes
    ----------
    block : BlockRef
        The input block.
    groups : tuple of tuple of int
        A partition of the block's permutable axes (ordered by first axis): axes in one group
        are read on their diagonal.
    kept : tuple of bool
        Per group: kept (an output dim) or averaged.
    source : int or None
        Index of an earlier reduction with the same groups that keeps a superset of these
        groups: this one is its mean over the extra dims. ``None``: computed from the block.
    channels : int
        Channels of the result: ``C_in * prod(fixed dims)``.

    The result has shape ``(B, channels, *kept sizes)``, kept groups in ``groups`` order.
    """

    block: BlockRef
    groups: tuple
    kept: tuple
    source: int | None
    channels: int

    @property
    def kept_groups(self) -> tuple:
        return tuple(g for g, k in zip(self.groups, self.kept) if k)

    @property
    def shape(self) -> tuple:
        """Result shape without the batch dim."""
        return (self.channels, *(self.block.shape[g[0]] for g in self.kept_groups))

    def __str__(self) -> str:
        ids = {}
        for j, g in enumerate(self.groups):
            for a in g:
                ids[a] = j
        labels = [
            "-" if a is None else f"{a}" + ("" if len(self.groups[ids[i]]) == 1 else f"~{ids[i]}")
            for i, a in enumerate(self.block.axes)
        ]
        what = []
        for g, k in zip(self.groups, self.kept):
            what.append(
                ("keep " if k else "mean ") + "(" + ",".join(self.block.axes[a] for a in g) + ")"
            )
        src = "" if self.source is None else f" from r{self.source}"
        return f"{self.block.name}[{', '.join(labels)}] {' '.join(what) or 'fixed only'}{src}"


@dataclass(frozen=True)
class Pattern:
    """How a group's mixed result lands on an output block.

    Attributes
    ----------
    block : BlockRef
        The output block ``Q``.
    groups : tuple of tuple of int
        A partition of ``Q``'s permutable axes (ordered by first axis): axes in one group are
        written on their diagonal (zero elsewhere).
    linked : tuple of bool
        Per group: fed by a kept input index (in group order) or broadcast.
    """

    block: BlockRef
    groups: tuple
    linked: tuple

    @property
    def linked_groups(self) -> tuple:
        return tuple(g for g, k in zip(self.groups, self.linked) if k)

    @property
    def kept_shape(self) -> tuple:
        return tuple(self.block.shape[g[0]] for g in self.linked_groups)

    def __str__(self) -> str:
        ids = {}
        for j, g in enumerate(self.groups):
            for a in g:
                ids[a] = j
        labels = []
        for i, a in enumerate(self.block.axes):
            if a is None:
                labels.append("-")
                continue
            j = ids[i]
            mark = "" if self.linked[j] else "*"
            diag = "" if len(self.groups[j]) == 1 else f"~{j}"
            labels.append(f"{a}{mark}{diag}")
        return f"{self.block.name}[{', '.join(labels)}]"


@dataclass(frozen=True)
class Contribution:
    """One term's input to a group: a reduction, its kept dims reordered by ``perm``.

    ``perm[j]`` is the reduction's kept dim that feeds the group's ``j``-th linked output group.
    ``columns`` is the term's slice of the group's mixing weight.
    """

    term: int
    reduction: int
    perm: tuple
    columns: tuple


@dataclass(frozen=True)
class Group:
    """All terms that share an output pattern: one concatenation, one channel mix.

    Attributes
    ----------
    pattern : Pattern
    contributions : tuple of Contribution
    in_channels : int
        Columns of the mixing weight (sum over contributions).
    out_channels : int
        Rows: ``C_out * prod(Q fixed dims)``.
    bias_terms : tuple of int
        Bias terms with this pattern (added to the mixed result; at most one).
    mix : int or None
        The :class:`Mix` that computes this group (``None``: bias only).
    rows : tuple of int
        ``(start, stop)``: the group's rows of that mix's weight.
    """

    pattern: Pattern
    contributions: tuple
    in_channels: int
    out_channels: int
    bias_terms: tuple = ()
    mix: int | None = None
    rows: tuple = (0, 0)


@dataclass(frozen=True)
class Mix:
    """One matmul: groups that read the same concatenated inputs share it, row-stacked.

    Every output block typically has a group fed by the global means of every parameter; those
    groups all read the same concatenation and so are computed by one matmul.

    Attributes
    ----------
    groups : tuple of int
        The groups it computes, in row order.
    inputs : tuple of (int, tuple)
        ``(reduction, perm)`` per concatenated input.
    in_channels, out_channels : int
        The weight's shape is ``(out_channels, in_channels)``.
    kept_shape : tuple of int
        The kept dims of the inputs (and of the result).
    """

    groups: tuple
    inputs: tuple
    in_channels: int
    out_channels: int
    kept_shape: tuple


@dataclass(frozen=True)
class Plan:
    """The fused plan of an NF-Layer (data; printable).

    Attributes
    ----------
    spec : WeightSpaceSpec
    mode : str
    in_channels, out_channels : int
    blocks : tuple of BlockRef
        Every parameter block (input and output blocks coincide).
    terms : tuple of Term
        The basis (bias terms last, when ``bias``).
    reductions : tuple of Reduction
        In computation order (a reduction's ``source`` comes before it).
    groups : tuple of Group
        Ordered by output block.
    mixes : tuple of Mix
        The matmuls.
    """

    spec: WeightSpaceSpec
    mode: str
    in_channels: int
    out_channels: int
    blocks: tuple
    terms: tuple
    reductions: tuple
    groups: tuple
    mixes: tuple

    @property
    def num_params(self) -> int:
        """Free parameters (mixing weights and biases)."""
        return sum(t.num_params(self.in_channels, self.out_channels) for t in self.terms)

    def term_location(self, term: int) -> tuple:
        """Where a term's weight lives: ``("mix", mix index, row slice, column slice)`` or
        ``("bias", group index)``."""
        for gi, g in enumerate(self.groups):
            for c in g.contributions:
                if c.term == term:
                    return "mix", g.mix, slice(*g.rows), slice(*c.columns)
            if term in g.bias_terms:
                return "bias", gi
        raise KeyError(f"no term {term}; the plan has {len(self.terms)}")

    def __str__(self) -> str:
        lines = [
            f"Plan(mode={self.mode!r}, in_channels={self.in_channels}, "
            f"out_channels={self.out_channels}, terms={len(self.terms)}, params={self.num_params})",
            "reductions:",
        ]
        lines += [f"  r{i} = {r}" for i, r in enumerate(self.reductions)]
        lines.append("groups:")
        for i, g in enumerate(self.groups):
            srcs = []
            for c in g.contributions:
                ident = tuple(range(len(c.perm)))
                srcs.append(f"r{c.reduction}" + ("" if c.perm == ident else f"^{list(c.perm)}"))
            if g.bias_terms:
                srcs.append("bias" if len(g.bias_terms) == 1 else f"bias x{len(g.bias_terms)}")
            lines.append(
                f"  g{i}: {g.pattern} <- m{g.mix}[{g.rows[0]}:{g.rows[1]}]({', '.join(srcs)})"
            )
        lines.append("mixes:")
        for i, m in enumerate(self.mixes):
            lines.append(
                f"  m{i}: [{m.out_channels}x{m.in_channels}] -> "
                + ", ".join(f"g{g}" for g in m.groups)
            )
        return "\n".join(lines)


def _partition(assign: tuple) -> dict:
    """block id -> tuple of axes, for the axes whose assignment is not None."""
    out: dict = {}
    for i, a in enumerate(assign):
        if a is not None:
            out.setdefault(a, []).append(i)
    return {k: tuple(v) for k, v in out.items()}


def build_plan(
    spec: WeightSpaceSpec,
    mode: str,
    in_channels: int,
    out_channels: int,
    *,
    bias: bool = True,
) -> Plan:
    """Enumerate the basis and fuse it into a :class:`Plan`.

    Parameters
    ----------
    spec : WeightSpaceSpec
    mode : {"np", "hnp"}
    in_channels, out_channels : int
    bias : bool
        Include the equivariant bias terms.
    """
    check_mode(mode)
    blocks = tuple(block_refs(spec, mode))
    terms = tuple(enumerate_basis(spec, mode, bias=bias))

    red_index: dict = {}
    red_list: list = []  # (block, groups, kept)
    group_map: dict = {}  # (out block, groups, linked) -> [contribs (term, red key, perm)], [bias]
    for ti, t in enumerate(terms):
        q_parts = _partition(t.out_assign)
        q_groups = sorted(q_parts.values())
        q_ids = {q_parts[k]: k for k in q_parts}
        linked = tuple(q_ids[g] in t.in_assign for g in q_groups)
        gkey = (t.out.name, tuple(q_groups), linked)
        entry = group_map.setdefault(gkey, (t.out, [], []))
        if t.inp is None:
            entry[2].append(ti)
            continue
        p_parts = _partition(t.in_assign)
        p_groups = sorted(p_parts.values())
        p_ids = [next(k for k, v in p_parts.items() if v == g) for g in p_groups]
        kept = tuple(b in t.out_assign for b in p_ids)
        rkey = (t.inp.name, tuple(p_groups), kept)
        if rkey not in red_index:
            red_index[rkey] = len(red_list)
            red_list.append((t.inp, tuple(p_groups), kept))
        kept_ids = [b for b, k in zip(p_ids, kept) if k]
        perm = tuple(kept_ids.index(q_ids[g]) for g, lk in zip(q_groups, linked) if lk)
        entry[1].append((ti, rkey, perm))

    # order reductions: per block, most kept first; then pick sources
    order = sorted(
        range(len(red_list)),
        key=lambda i: (blocks.index(red_list[i][0]), -sum(red_list[i][2]), i),
    )
    new_pos = {old: new for new, old in enumerate(order)}
    reductions: list = []
    for old in order:
        block, groups, kept = red_list[old]
        source = None
        best = None
        for j, r in enumerate(reductions):
            if r.block != block or r.groups != groups or r.kept == kept:
                continue
            if all(rk or not k for rk, k in zip(r.kept, kept)):
                size = math.prod(r.shape)
                if best is None or size < best:
                    best, source = size, j
        reductions.append(Reduction(block, groups, kept, source, in_channels * block.fixed_size))
    rpos = {k: new_pos[i] for k, i in red_index.items()}

    proto = []
    for (_, q_groups, linked), (qblock, contribs, biases) in sorted(
        group_map.items(), key=lambda kv: (blocks.index(kv[1][0]), -sum(kv[0][2]), kv[0][1:])
    ):
        pattern = Pattern(qblock, q_groups, linked)
        cs, col = [], 0
        for ti, rkey, perm in sorted(contribs, key=lambda c: (rpos[c[1]], c[2], c[0])):
            r = reductions[rpos[rkey]]
            cs.append(Contribution(ti, rpos[rkey], perm, (col, col + r.channels)))
            col += r.channels
        proto.append(
            Group(pattern, tuple(cs), col, out_channels * qblock.fixed_size, tuple(biases))
        )

    mix_keys: dict = {}
    for gi, g in enumerate(proto):
        if g.contributions:
            key = tuple((c.reduction, c.perm) for c in g.contributions)
            mix_keys.setdefault(key, []).append(gi)
    groups = list(proto)
    mixes = []
    for key, members in mix_keys.items():
        row = 0
        for gi in members:
            g = proto[gi]
            groups[gi] = Group(
                g.pattern,
                g.contributions,
                g.in_channels,
                g.out_channels,
                g.bias_terms,
                len(mixes),
                (row, row + g.out_channels),
            )
            row += g.out_channels
        first = proto[members[0]]
        mixes.append(Mix(tuple(members), key, first.in_channels, row, first.pattern.kept_shape))
    return Plan(
        spec,
        mode,
        in_channels,
        out_channels,
        blocks,
        terms,
        tuple(reductions),
        tuple(groups),
        tuple(mixes),
    )
