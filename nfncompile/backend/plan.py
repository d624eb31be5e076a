"""The fused execution plan of an NF-Layer: shared reductions, one channel mix per coupling.

A basis term (see :mod:`nfncompile.backend.basis`) has an input half and an output half:

* its **reduction** of the input tile ``P`` (the input :class:`~.basis.Side`): which dims are
  merged by a diagonal read, which are averaged and which are kept. Many terms share one
  reduction (every term that needs the column means of ``W2`` reads the same tensor), so each
  distinct reduction is computed once, from a cheaper earlier one when it can be;
* its **pattern** on the output tile ``Q`` (the output side): how the kept indices land on
  ``Q``'s dims, which dims are broadcast and which are written on a diagonal. Each pattern is a
  :class:`Group`: it is placed (broadcast-added) into ``Q`` once.

Every :class:`~.basis.Coupling` becomes one :class:`Mix`: its reduced inputs are permuted to one
order of the kept dims, concatenated along channels and mixed into the rows of all its groups.

Two kinds of basis share this structure (``Plan.basis``):

``"complete"``
    every term has its own weight: one dense ``(rows, cols)`` matrix per mix (one GEMM), and a
    bias per broadcast-only group. The exact orbit basis; its size grows with the square of the
    number of tensors (the coupling of the empty key joins every tile to every tile).
``"linear"``
    term weights are indexed by the *relation* between the two tiles (:mod:`.relations`), not by
    their position: between tiles of one layer (:class:`Local`), every term has the weight of its
    relation; from every other tile, the inputs of one kind are averaged first and mixed once
    per kind of output (:class:`Shared`). Between different tiles only terms through at most one
    kept index are used (a reduction to a row, column or scalar, broadcast back): the terms that
    copy one tile entry by entry onto another would each cost a full-size GEMM. The invariants
    every tile sends to every tile go through a fixed-width channel: each kind's averaged
    invariants are projected to ``width`` numbers, summed, and projected back per kind of
    output. A space read by many kinds of tiles (a CNN's channels: convs, norms' weights, biases
    and statistics, at several kernel sizes) would need a weight per pair of kinds; where that
    costs over :data:`CHANNEL_GAIN` times more, its kinds meet the same way, through ``width``
    features per neuron of the space. The weights grow with the number of kinds of relation,
    not with depth, and a layer applies to any spec whose relations it has.

Examples
--------
>>> from nfncompile.testing import mlp_spec
>>> spec = mlp_spec([2, 3, 2])  # spaces in, h1, out; tensors l1.weight, l1.bias, l2.*
>>> plan = build_plan(spec, "hnp", 1, 1)
>>> len(plan.reductions), len(plan.groups), plan.num_terms
(7, 7, 29)
>>> print(plan)
Plan(mode='hnp', basis='complete', in_channels=1, out_channels=1, terms=29, params=81)
reductions:
  r0 = l1.weight[h1, -] keep (h1)
  r1 = l1.weight[h1*, -] mean (h1) from r0
  r2 = l1.bias[h1] keep (h1)
  r3 = l1.bias[h1*] mean (h1) from r2
  r4 = l2.weight[-, h1] keep (h1)
  r5 = l2.weight[-, h1*] mean (h1) from r4
  r6 = l2.bias[-] fixed only
groups:
  g0: l1.weight[h1*, -] <- m0[0:2] + bias
  g1: l1.weight[h1, -] <- m1[0:2]
  g2: l1.bias[h1*] <- m0[2:3] + bias
  g3: l1.bias[h1] <- m1[2:3]
  g4: l2.weight[-, h1*] <- m0[3:5] + bias
  g5: l2.weight[-, h1] <- m1[3:5]
  g6: l2.bias[-] <- m0[5:7] + bias
mixes:
  m0: () [7x7] (r1, r3, r5, r6) -> g0, g2, g4, g6
  m1: (h1) [5x5] (r0, r2, r4) -> g1, g3, g5
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

from ..spec import WeightSpaceSpec, axis_pieces
from .basis import Coupling, Side, couplings, tile_sides
from .relations import Relation, link_str, side_kind, tile_kind
from .tiles import TileRef, tile_refs

__all__ = [
    "BASES",
    "CHANNEL_GAIN",
    "Reduction",
    "Group",
    "Local",
    "Shared",
    "Mix",
    "Plan",
    "build_plan",
    "complete_num_params",
]

#: The linear basis routes a keyed mix's terms between kinds of tiles through a channel of
#: ``width`` features per kept index where a weight per pair of kinds would cost over this many
#: times the channel's weights (the terms are the same; their weights are then of rank
#: ``width`` at most)
CHANNEL_GAIN = 4
#: The kinds of basis a plan can have.
BASES = ("complete", "linear")


@dataclass(frozen=True)
class Reduction:
    """One reduction of an input tile, computed once and shared by every term that reads it.

    Attributes
    ----------
    side : Side
        The input side: its classes are read on their diagonal; linked classes are kept, the
        others averaged.
    source : int or None
        An earlier reduction of the same classes that keeps a superset of these: this one is its
        mean over the extra dims. ``None``: computed from the tile.
    channels : int
        ``C_in * prod(fixed dims)``.

    The result has shape ``(B, *kept sizes, channels)``, kept classes in class order.
    """

    side: Side
    source: int | None
    channels: int

    @property
    def tile(self) -> TileRef:
        return self.side.tile

    @property
    def kept_shape(self) -> tuple:
        t = self.side.tile
        return tuple(t.dims[c[0]].size for c in self.side.linked_classes)

    def __str__(self) -> str:
        s, t = self.side, self.side.tile
        what = []
        for c, k in zip(s.classes, s.linked):
            names = ",".join(str(t.dims[d].factor) for d in c)
            what.append(("keep " if k else "mean ") + f"({names})")
        src = "" if self.source is None else f" from r{self.source}"
        return f"{s.label()} {' '.join(what) or 'fixed only'}{src}"


@dataclass(frozen=True)
class Group:
    """One output side: everything its mix computes for it is placed into its tile at once.

    Attributes
    ----------
    side : Side
        The output side (its linked classes are fed, the others broadcast).
    mix : int or None
        The :class:`Mix` whose rows it reads (``None``: only a bias).
    rows : tuple of int
        ``(start, stop)``: its channels in that mix's output.
    perm : tuple of int
        For each of its linked classes (class order), the mix dim that feeds it.
    bias : bool
        Whether it adds a bias (the complete basis: every broadcast-only group).
    channels : int
        ``C_out * prod(fixed dims)``.
    """

    side: Side
    mix: int | None
    rows: tuple
    perm: tuple
    bias: bool
    channels: int

    @property
    def tile(self) -> TileRef:
        return self.side.tile


@dataclass(frozen=True)
class Local:
    """Linear basis: the terms between the tiles of one layer in one mix.

    The term from the mix's column ``cols[j]`` to its group ``groups[i]`` (positions in
    ``Mix.inputs`` and ``Mix.groups``) has the relation (index into ``Plan.relations``)
    ``table[role, col_kinds[j], row_kinds[i]]``: role ``"self"`` when the two are one tile
    (``col_tiles[j] == row_tiles[i]``), else ``"module"``. Kinds and tiles are numbered per
    mix. A layer that reads the concatenation of ``k`` earlier outputs has ``k`` tiles of a
    kind on each side: its ``k**2`` terms are a few relations, kept as such (:attr:`weights`
    writes out the grid).
    """

    module: str
    cols: tuple
    groups: tuple
    col_kinds: tuple
    row_kinds: tuple
    col_tiles: tuple
    row_tiles: tuple
    #: ``((role, column kind, row kind), relation)`` for every pair of kinds that meets
    table: tuple
    #: per row: its distinct relations in the order of its first column with each
    row_relations: tuple

    @cached_property
    def lookup(self) -> dict:
        """:attr:`table` as a dict."""
        return dict(self.table)

    @property
    def weights(self) -> tuple:
        """``weights[i][j]``: the relation of the term from column ``j`` to row ``i``."""
        table = self.lookup
        return tuple(
            tuple(
                table["self" if ct == rt else "module", ck, rk]
                for ck, ct in zip(self.col_kinds, self.col_tiles)
            )
            for rk, rt in zip(self.row_kinds, self.row_tiles)
        )


@dataclass(frozen=True)
class Shared:
    """Linear basis: terms from the averaged columns of each kind to every group of a kind.

    Attributes
    ----------
    col_kinds : tuple of tuple of int
        The mix columns of each column kind (averaged together).
    row_kinds : tuple of int
        Per mix group: its row kind.
    weights : tuple of tuple of int
        ``weights[row kind][col kind]``: the relation of the averaged term. Through a channel,
        ``weights[0]`` holds the relations into it (one per column kind) and ``weights[1]``
        those out of it (one per row kind).
    biases : tuple of int
        Empty key only: the bias relation of each row kind.
    channel : bool
        Whether the kinds meet through a channel of ``Plan.width`` features (per kept index):
        always for the empty key (the invariant channel), for a keyed mix where a weight per
        pair of kinds would cost over :data:`CHANNEL_GAIN` times more.
    """

    col_kinds: tuple
    row_kinds: tuple
    weights: tuple
    biases: tuple = ()
    channel: bool = False


@dataclass(frozen=True)
class Mix:
    """One coupling's channel mixing.

    Attributes
    ----------
    key : tuple
        The coupling's key (the factors of the kept dims).
    inputs : tuple of (int, tuple)
        Per column: ``(reduction, perm)``, the reduction's kept dims in mix order.
    groups : tuple of int
        The groups it feeds, in row order.
    kept_shape : tuple of int
        The kept dims of its inputs and of its result.
    in_channels, out_channels : int
        The dense weight's shape is ``(out_channels, in_channels)`` (complete basis).
    local, shared : tuple of Local, Shared or None
        The linear basis's mixing (empty for the complete basis; no ``shared`` for a mix within
        one layer).
    """

    key: tuple
    inputs: tuple
    groups: tuple
    kept_shape: tuple
    in_channels: int
    out_channels: int
    local: tuple = ()
    shared: Shared | None = None

    def key_str(self) -> str:
        return "(" + ", ".join(k[1] + ("'" if k[0] == "inner" else "") for k in self.key) + ")"


@dataclass(frozen=True)
class Plan:
    """The fused plan of an NF-Layer (data; printable).

    Attributes
    ----------
    spec : WeightSpaceSpec
    mode : str
    basis : {"complete", "linear"}
    in_channels, out_channels : int
    tiles : tuple of TileRef
        Every tile (input and output tiles coincide).
    reductions : tuple of Reduction
        In computation order (a reduction's ``source`` comes before it).
    groups : tuple of Group
        Ordered by output tile.
    mixes : tuple of Mix
    couplings : tuple of Coupling
        The basis: ``mixes[i]`` computes ``couplings[i]``.
    relations : tuple of Relation
        The linear basis's weights (empty for the complete basis).
    width : int
        The linear basis's channel width (the invariant channel's, a space's).
    embeds : tuple of (int, int, int or None)
        With ``io_embed``: ``(tile, axis, relation)`` per learned position embedding, added to an
        input tile along an axis of an input- or output-role space (``relation`` is ``None`` in
        the complete basis, where each embedding is its tile's own).
    """

    spec: WeightSpaceSpec
    mode: str
    basis: str
    in_channels: int
    out_channels: int
    tiles: tuple
    reductions: tuple
    groups: tuple
    mixes: tuple
    couplings: tuple
    relations: tuple = ()
    width: int = 0
    embeds: tuple = ()

    @property
    def num_terms(self) -> int:
        """Basis terms: every (column, row) pair of every coupling, plus the biases."""
        biases = sum(g.bias for g in self.groups) + sum(
            len(m.groups) for m in self.mixes if m.shared is not None and m.shared.biases
        )
        return sum(c.num_terms for c in self.couplings) + biases

    @property
    def num_params(self) -> int:
        """Free parameters (mixing weights and biases; position embeddings not included)."""
        if self.basis == "linear":
            return sum(
                math.prod(r.shape(self.in_channels, self.out_channels, self.width))
                for r in self.relations
                if r.role != "embed"
            )
        return sum(m.in_channels * m.out_channels for m in self.mixes) + sum(
            g.channels for g in self.groups if g.bias
        )

    def __str__(self) -> str:
        lines = [
            f"Plan(mode={self.mode!r}, basis={self.basis!r}, in_channels={self.in_channels}, "
            f"out_channels={self.out_channels}, terms={self.num_terms}, params={self.num_params})",
            "reductions:",
        ]
        lines += [f"  r{i} = {r}" for i, r in enumerate(self.reductions)]
        lines.append("groups:")
        for i, g in enumerate(self.groups):
            src = "" if g.mix is None else f"m{g.mix}[{g.rows[0]}:{g.rows[1]}]"
            if g.bias:
                src += " + bias" if src else "bias"
            lines.append(f"  g{i}: {g.side.label()} <- {src}")
        lines.append("mixes:")
        for i, m in enumerate(self.mixes):
            cols = []
            for r, perm in m.inputs:
                ident = tuple(range(len(perm)))
                cols.append(f"r{r}" + ("" if perm == ident else f"^{list(perm)}"))
            via = (
                " through the channel"
                if m.key and m.shared is not None and m.shared.channel
                else ""
            )
            lines.append(
                f"  m{i}: {m.key_str()} [{m.out_channels}x{m.in_channels}] ({', '.join(cols)})"
                " -> " + ", ".join(f"g{g}" for g in m.groups) + via
            )
        if self.relations:
            lines.append(f"relations ({len(self.relations)}, channel width {self.width}):")
            lines += [f"  w{i}: {r}" for i, r in enumerate(self.relations)]
        return "\n".join(lines)


def complete_num_params(
    spec: WeightSpaceSpec, mode: str, in_channels: int, out_channels: int, *, bias: bool = True
) -> int:
    """Free parameters of the complete basis, counted from its couplings without building it.

    >>> from nfncompile.testing import mlp_spec
    >>> complete_num_params(mlp_spec([2, 3, 3, 2]), "np", 1, 1)
    68
    """
    cps, biases = couplings(tile_refs(spec, mode))
    total = sum(
        sum(out_channels * q.tile.fixed_size for q, _ in c.rows)
        * sum(in_channels * p.tile.fixed_size for p, _ in c.cols)
        for c in cps
    )
    if bias:
        total += sum(out_channels * q.tile.fixed_size for q in biases)
    return total


def build_plan(
    spec: WeightSpaceSpec,
    mode: str,
    in_channels: int,
    out_channels: int,
    *,
    bias: bool = True,
    basis: str = "complete",
    width: int | None = None,
    io_embed: bool = False,
    max_fold: int | None = None,
) -> Plan:
    """Enumerate the basis and fuse it into a :class:`Plan`.

    Parameters
    ----------
    spec : WeightSpaceSpec
    mode : {"np", "hnp"}
        Trusted (validated where it enters, by the layer).
    in_channels, out_channels : int
    bias : bool
        Include the equivariant biases.
    basis : {"complete", "linear"}
        Trusted, like ``mode``.
    width : int, optional
        The linear basis's channel width (default ``4 * max(in, out)``).
    io_embed : bool
        Learned position embeddings along the input tiles' input/output-role axes.
    max_fold : int, optional
        Linear basis: fold at most this many fixed entries of a tile into each channel, its
        larger fixed dims exchanged (:func:`~.tiles.tile_refs`); ignored by the complete basis,
        which folds every fixed dim.
    """
    linear = basis == "linear"
    tiles = tuple(tile_refs(spec, mode, max_fold if linear else None, in_channels * out_channels))
    cps, _ = couplings(list(tiles), complete=not linear)
    if linear:
        cps = _within_tiles_when_wide(cps)
    width = width or 4 * max(in_channels, out_channels)
    pos = {t: i for i, t in enumerate(tiles)}

    # ---- reductions: every distinct input side, most kept first, each from a cheaper source
    sides: dict = {}
    for c in cps:
        for s, _ in c.cols:
            sides.setdefault(s, None)
    order = sorted(sides, key=lambda s: (pos[s.tile], s.classes, -sum(s.linked), s.linked))
    reductions: list = []
    red_index: dict = {}
    same_classes: dict = {}  # (tile, classes) -> reductions so far
    for s in order:
        source, best = None, None
        earlier = same_classes.setdefault((s.tile, s.classes), [])
        for j in earlier:
            r = reductions[j]
            o = r.side
            if all(ok or not k for ok, k in zip(o.linked, s.linked)):
                size = math.prod(r.kept_shape)
                if best is None or size < best:
                    best, source = size, j
        red_index[s] = len(reductions)
        earlier.append(len(reductions))
        reductions.append(Reduction(s, source, in_channels * s.tile.fixed_size))

    # ---- groups: every output side of a coupling (and, complete, every bias side), by tile
    row_sides = {s: None for c in cps for s, _ in c.rows}
    if bias and not linear:
        row_sides.update({s: None for t in tiles for s in tile_sides(t) if not s.key})
    out_sides = sorted(row_sides, key=lambda s: (pos[s.tile], sum(s.linked), s.classes, s.linked))
    group_index = {s: i for i, s in enumerate(out_sides)}

    mixes: list = []
    group_mix: dict = {}  # side -> (mix, rows, perm)
    vocab = _Vocabulary()
    for c in cps:
        # mix dims follow the largest row's linked classes: its placement needs no permute
        ref_side, ref_order = max(
            c.rows, key=lambda r: (math.prod(r[0].tile.dim_shape), -pos[r[0].tile])
        )
        ref_linked = [j for j, k in enumerate(ref_side.linked) if k]
        key_pos = [ref_order.index(j) for j in ref_linked]  # mix dim -> key position
        inputs = []
        for s, o in c.cols:
            lk = [j for j, k in enumerate(s.linked) if k]
            inputs.append((red_index[s], tuple(lk.index(o[p]) for p in key_pos)))
        rows = sorted(c.rows, key=lambda r: group_index[r[0]])
        groups, row = [], 0
        for s, o in rows:
            lk = [j for j, k in enumerate(s.linked) if k]
            ch = out_channels * s.tile.fixed_size
            group_mix[s] = (
                len(mixes),
                (row, row + ch),
                tuple(key_pos.index(o.index(j)) for j in lk),
            )
            groups.append(group_index[s])
            row += ch
        r0, perm0 = inputs[0]
        kept = tuple(reductions[r0].kept_shape[p] for p in perm0)
        cols_ch = sum(reductions[r].channels for r, _ in inputs)
        local, shared = (), None
        if linear:
            local, shared = _linear_mixing(c, rows, vocab, bias, (in_channels, out_channels, width))
        mixes.append(Mix(c.key, tuple(inputs), tuple(groups), kept, cols_ch, row, local, shared))

    embeds = []
    if io_embed:
        for ti, t in enumerate(tiles):
            for axis, label in enumerate(t.labels):
                space = axis_pieces(label)
                if not space or spec.spaces[space[0]].role == "hidden":
                    continue
                rel = None
                if linear:
                    rel = vocab(f"embed: {tile_kind(t)} axis {axis}", "embed", 0, 0)
                embeds.append((ti, axis, rel))

    groups = []
    for s in out_sides:
        mix, rows, perm = group_mix.get(s, (None, (0, 0), ()))
        has_bias = bias and not linear and not s.key
        groups.append(Group(s, mix, rows, perm, has_bias, out_channels * s.tile.fixed_size))
    return Plan(
        spec,
        mode,
        basis,
        in_channels,
        out_channels,
        tiles,
        tuple(reductions),
        tuple(groups),
        tuple(mixes),
        tuple(cps),
        tuple(vocab.relations),
        width if linear else 0,
        tuple(embeds),
    )


def _within_tiles_when_wide(cps: list) -> list:
    """Linear basis: a coupling that keeps two or more indices joins tiles entry by entry (a
    transposed weight onto the next weight), a full-size GEMM per pair; keep only each tile's
    own terms there. Between different tiles the linear basis reads at most one kept index."""
    out = []
    for c in cps:
        if len(c.key) < 2:
            out.append(c)
            continue
        by_tile: dict = {}
        for col in c.cols:
            by_tile.setdefault(col[0].tile, ([], []))[0].append(col)
        for row in c.rows:
            by_tile.setdefault(row[0].tile, ([], []))[1].append(row)
        out.extend(
            Coupling(c.key, tuple(cols), tuple(rows)) for cols, rows in by_tile.values() if cols
        )
    return out


class _Vocabulary:
    """The relations of a linear-basis plan, in order of first use."""

    def __init__(self) -> None:
        self.index: dict = {}
        self.relations: list = []

    def __call__(self, key: str, role: str, rows: int | str, cols: int | str) -> int:
        if key not in self.index:
            self.index[key] = len(self.relations)
            self.relations.append(Relation(key, role, rows, cols))
        return self.index[key]


def _linear_mixing(c: Coupling, rows: list, vocab: _Vocabulary, bias: bool, sizes: tuple) -> tuple:
    """The relation-indexed weights of one linear-basis mix (``rows`` in group order);
    ``sizes`` is ``(in_channels, out_channels, width)``."""
    cols = c.cols
    col_kind = [(side_kind(s), o) for s, o in cols]
    row_kind = [(side_kind(s), o) for s, o in rows]

    def link(j: int, i: int) -> str:
        return "" if not c.key else f" [{link_str(cols[j], rows[i])}]"

    # between the tiles of one layer: every term by its own relation
    by_module: dict = {}
    for j, (s, _) in enumerate(cols):
        by_module.setdefault(s.tile.module, ([], []))[0].append(j)
    for i, (s, _) in enumerate(rows):
        by_module.setdefault(s.tile.module, ([], []))[1].append(i)
    # a term's relation is a function of its role and the two kinds (which fix the link and
    # the fixed sizes): named once per (role, column kind, row kind), not per pair of tiles
    ck_index: dict = {}
    rk_index: dict = {}
    col_id = [ck_index.setdefault(k, len(ck_index)) for k in col_kind]
    row_id = [rk_index.setdefault(k, len(rk_index)) for k in row_kind]
    tile_index: dict = {}
    col_tile = [
        tile_index.setdefault((s.tile.param, s.tile.index), len(tile_index)) for s, _ in cols
    ]
    row_tile = [
        tile_index.setdefault((s.tile.param, s.tile.index), len(tile_index)) for s, _ in rows
    ]
    named: dict = {}

    def name(role: str, j: int, i: int) -> int:
        k = (role, col_id[j], row_id[i])
        if k not in named:
            key = f"{role}: {col_kind[j][0]} -> {row_kind[i][0]}{link(j, i)}"
            rf, cf = rows[i][0].tile.fixed_size, cols[j][0].tile.fixed_size
            named[k] = vocab(key, role, rf, cf)
        return named[k]

    local = []
    for module, (mcols, mrows) in by_module.items():
        if not mcols or not mrows:
            continue
        # a row's terms, in column order, first meet each column kind either in the row's own
        # tile (self) or at the kind's first column in another tile (module): found from the
        # kinds, not from every column (a layer reading k pieces has k**2 pairs)
        of_tile: dict = {}
        of_kind: dict = {}
        for p, j in enumerate(mcols):
            of_tile.setdefault(col_tile[j], []).append(p)
            of_kind.setdefault(col_id[j], []).append(p)
        table: dict = {}
        row_relations = []
        for i in mrows:
            t = row_tile[i]
            first: dict = {}  # (role, column kind) -> its first column position
            for p in of_tile.get(t, ()):
                first.setdefault(("self", col_id[mcols[p]]), p)
            for ck, ps in of_kind.items():
                p = next((p for p in ps if col_tile[mcols[p]] != t), None)
                if p is not None:
                    first[("module", ck)] = p
            line = []
            for (role, ck), p in sorted(first.items(), key=lambda kv: kv[1]):
                r = name(role, mcols[p], i)
                table[role, ck, row_id[i]] = r
                line.append(r)
            row_relations.append(tuple(dict.fromkeys(line)))
        local.append(
            Local(
                module,
                tuple(mcols),
                tuple(mrows),
                tuple(col_id[j] for j in mcols),
                tuple(row_id[i] for i in mrows),
                tuple(col_tile[j] for j in mcols),
                tuple(row_tile[i] for i in mrows),
                tuple(table.items()),
                tuple(row_relations),
            )
        )
    # from every tile of a kind, averaged, to every row of a kind (not within a single layer:
    # its local terms already read every tile; the invariant channel always)
    if c.key and len(by_module) == 1:
        return tuple(local), None
    members: dict = {}  # column kind -> its columns, kinds in order of first use
    for j, k in enumerate(col_kind):
        members.setdefault(k, []).append(j)
    col_kinds = tuple(tuple(m) for m in members.values())
    row_kinds = tuple(rk_index[k] for k in row_kind)  # rk_index: in order of first use
    ck_rep = [m[0] for m in col_kinds]
    first: dict = {}
    for i, r in enumerate(row_kinds):
        first.setdefault(r, i)
    rk_rep = [first[r] for r in range(len(rk_index))]

    def channel(name: str, role: str) -> tuple:
        """The relations into (one per column kind) and out of (per row kind) a channel."""
        into = tuple(
            vocab(f"{name} in: {col_kind[j][0]}", f"{role}_in", "width", cols[j][0].tile.fixed_size)
            for j in ck_rep
        )
        out = tuple(
            vocab(
                f"{name} out: {row_kind[i][0]}", f"{role}_out", rows[i][0].tile.fixed_size, "width"
            )
            for i in rk_rep
        )
        return into, out

    if c.key and _through_channel(
        sizes,
        [cols[j][0].tile.fixed_size for j in ck_rep],
        [rows[i][0].tile.fixed_size for i in rk_rep],
    ):
        return tuple(local), Shared(col_kinds, row_kinds, channel("channel", "chan"), channel=True)
    if c.key:
        weights = tuple(
            tuple(
                vocab(
                    f"other: {col_kind[j][0]} -> {row_kind[i][0]}{link(j, i)}",
                    "other",
                    rows[i][0].tile.fixed_size,
                    cols[j][0].tile.fixed_size,
                )
                for j in ck_rep
            )
            for i in rk_rep
        )
        return tuple(local), Shared(col_kinds, row_kinds, weights)
    weights = channel("invariant", "inv")
    biases = ()
    if bias:
        biases = tuple(
            vocab(f"bias: {row_kind[i][0]}", "bias", rows[i][0].tile.fixed_size, 1) for i in rk_rep
        )
    return tuple(local), Shared(col_kinds, row_kinds, weights, biases, channel=True)


def _through_channel(sizes: tuple, col_folds: list, row_folds: list) -> bool:
    """Whether a keyed mix's terms between kinds go through a channel of ``width`` features
    per kept index: when one weight per pair of kinds would cost more than
    :data:`CHANNEL_GAIN` times the channel's."""
    c_in, c_out, width = sizes
    f_in, f_out = c_in * sum(col_folds), c_out * sum(row_folds)
    return f_in * f_out > CHANNEL_GAIN * width * (f_in + f_out)
