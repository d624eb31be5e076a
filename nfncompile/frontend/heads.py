"""Attention heads in the derivation: a split's dims standing for each of its heads.

A reshape that views equal chunks of neurons as ``(heads, rest)`` (attention's
``C -> (H, C / H)``) records a :class:`~nfncompile.frontend.labels.HeadSplit`: its heads dim is
labelled with a ``heads`` run and the rest with a ``dims`` run that stands for every chunk.
Where the split holds, the solver (:mod:`~nfncompile.frontend.spaces`) reads every constraint on
``dims`` as one constraint per head (:func:`rewrite`):

* a tie of ``dims`` with another holding split's ``dims`` ties chunk ``i`` of one with chunk
  ``i`` of the other (a head's queries with the same head's keys), or, where the other has
  ``g`` times fewer heads, with its chunk ``i // g`` (grouped-query attention: a key/value
  head repeated for ``g`` query heads in a row, by ``repeat_interleave``, by ``expand`` and a
  reshape, or by ``enable_gqa``), or with its chunk ``i % count`` where :func:`check` found
  the heads tiled (``repeat``, einops' ``(r h)``: ``("tiled", id)`` in ``fallen``);
* a tie with anything else ties every chunk to it (a weight shared by all heads);
* a fix or a cut of ``dims`` fixes or cuts every chunk alike.

Each head's neurons then permute on their own. The heads themselves move as blocks where
nothing meets them in place (:func:`blocks`): head ``i`` of the queries, keys and values
together, the wreath product of the heads' permutation and the per-head ones, given to the spec
as block spaces sharing one block permutation. Where an axis reads the heads one after
another (a piece fixed in every head, RoPE's rotated queries and keys, all of a head's dims or
the first of them; a projection laid out per head, GPT-NeoX's ``(heads, 3 * d)`` rows; dims
every head shares), the heads themselves are a space of one neuron per head in that block
permutation, and the axis is viewed as ``(heads, one head)``: fixed positions, positions
inside the blocks of the block spaces, and shared spaces. Under grouped-query attention a
block is a key/value head with the query heads that read it, and those query heads permute
inside it (a space ``"<origin>.query"`` in the same blocks; :func:`_queries`), where every
label reads them one query head after another. Under multi-query attention (one key/value
head, which no split holds: expanded, repeated or broadcast for every query head) each query
head's dims are the key's and its output's the value's: every head's dims one space they all
share, read per head as a view ``(heads, shared space)`` or, fused as ``[q | k | v]``, as a
span of the heads each a copy of it. A parameter's axis of one value per head (a
relative-position bias table's columns, a temperature per head), tied to the heads where it
meets them, moves with them: that axis reads the heads' space itself. Where something else
meets them in place (a constant per head such as ALiBi's slopes times the key positions, a
mask per head that no weight makes, an op that fixed one head's neurons where they stand),
they stay. A split whose chunks are tied instead (it does not hold) gives one permutation for
every head: the conservative reading; where only a weight every head reads made it so (a
norm over each head's dims, :data:`SHARED`), its heads may still move.

:func:`check` says which holding splits cannot hold: one whose dims a tensor holds without one
whole heads dim (heads summed, mixed by a layer, sliced), a parameter or input/output reads
whole, whose heads an op reads position by position (a flip, a gather), or whose
heads are not aligned, position by position (or in the groups above), with those of a split
whose dims meet its own.

Examples
--------
>>> import torch
>>> from torch import nn
>>> import nfncompile as nfc
>>> class Attention(nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.q, self.k, self.v, self.o = (nn.Linear(4, 4) for _ in range(4))
...     def forward(self, x):
...         q, k, v = (f(x).view(2, 3, 2, 2).transpose(1, 2) for f in (self.q, self.k, self.v))
...         y = (q @ k.transpose(-1, -2)).softmax(-1) @ v
...         return self.o(y.transpose(1, 2).reshape(2, 3, 4))
>>> spec = nfc.trace(Attention(), torch.randn(2, 3, 4), channel_dim=-1)
>>> spec["q.weight"].axes[0] == spec["k.weight"].axes[0], spec["v.weight"].axes[0]
(True, 'v')
>>> spec.spaces["v"].blocks, spec.block_shape("v")  # 2 heads of 2, moved with q's and k's
('q.heads', (2, 2))
"""

from __future__ import annotations

import bisect
import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["pieces", "rewrite", "check", "Family", "blocks"]


def pieces(label: tuple, off: int, length: int) -> list[tuple]:
    """The ``(run, offset, length)`` pieces of positions ``[off, off + length)`` of ``label``
    (segments of single positions).

    >>> from nfncompile.frontend.labels import Seg
    >>> pieces((Seg(0, 2, 3), Seg(1, 0, 2)), 1, 3)
    [(0, 3, 2), (1, 0, 1)]
    """
    out, start = [], 0
    for s in label:
        lo, hi = max(off, start), min(off + length, start + s.length)
        if lo < hi:
            out.append((s.run, s.offset + lo - start, hi - lo))
        start += s.length
    return out


def _ties(a: list, b: list, op: str) -> list[tuple]:
    """Ties, position by position, of two piece lists of equal total length."""
    out, i, j, ua, ub = [], 0, 0, 0, 0  # ua, ub: positions used of pieces a[i], b[j]
    while i < len(a) and j < len(b):
        (ra, oa, la), (rb, ob, lb) = a[i], b[j]
        n = min(la - ua, lb - ub)
        out.append((ra, oa + ua, rb, ob + ub, n, op))
        ua, ub = ua + n, ub + n
        if ua == la:
            i, ua = i + 1, 0
        if ub == lb:
            j, ub = j + 1, 0
    return out


def rewrite(
    splits: list, fallen: dict, ties: list, nodes: list, cuts: dict, fixed: list
) -> tuple[list, list, list]:
    """The constraints with each holding split's ``dims`` read as one per head.

    Parameters
    ----------
    splits : list of HeadSplit
    fallen : dict
        ``("heads", split id)`` for the splits that do not hold (their chunks are tied to
        their dims instead); ``("fix heads", split id)`` for those of them, stacked, whose
        members met their own data and are in no family of fixed blocks (their heads fixed).
    ties : list
        ``(src, src_off, dst, dst_off, length, op)``; ``nodes`` their fx node names.
    cuts : dict
        Run id -> cut positions; updated in place.
    fixed : list
        ``(run, offset, length)``.

    Returns
    -------
    ties, fixed : list
        The rewritten constraints.
    synthetic : list
        Fixed intervals of this reading, not of any op: every heads run (heads stay in place)
        and every holding split's dims run (it stands for its chunks, no space of its own).
    met : list
        ``(split id, split id, node)`` for each tie of two holding splits' dims.
    """
    holding = {s.dims: s for s in splits if ("heads", s.id) not in fallen}
    ties, nodes = list(ties), list(nodes)
    for s in splits:  # the conservative reading of those that do not hold, rewritten below
        if ("heads", s.id) not in fallen:  # too: a split of a holding split's dims
            continue
        width = s.width
        for chunk in s.chunks:
            new = _ties(pieces(chunk, 0, width), [(s.dims, 0, width)], "attention heads")
            ties += new
            nodes += [s.node] * len(new)
    out, met = [], []
    for (src, src_off, dst, dst_off, length, op), node in zip(ties, nodes):
        f, g = holding.get(src), holding.get(dst)
        if f is None and g is None:
            out.append((src, src_off, dst, dst_off, length, op))
        elif f is not None and g is not None:
            met.append((f.id, g.id, node))  # counts that do not divide: not aligned (check)
            big, small = sorted((len(f.chunks), len(g.chunks)), reverse=True)
            if big % small:
                out.append((src, src_off, dst, dst_off, length, op))
                continue
            # chunk i with chunk i // group of the one with fewer (GQA: a key/value head read
            # by ``group`` query heads in a row), or chunk i % small where the one with more
            # was found to read them tiled (``("tiled", id)``: einops' ``(r h)`` repeat)
            more = f if len(f.chunks) == big else g
            tiled = ("tiled", more.id) in fallen
            for i in range(big):
                j = i % small if tiled else i * small // big
                cf, cg = (f.chunks[i], g.chunks[j]) if f is more else (f.chunks[j], g.chunks[i])
                out += _ties(pieces(cf, src_off, length), pieces(cg, dst_off, length), op)
        else:  # a weight or neurons every head meets: each chunk tied to them
            split, off, other, other_off = (
                (f, src_off, dst, dst_off) if f else (g, dst_off, src, src_off)
            )
            for chunk in split.chunks:
                out += _ties(pieces(chunk, off, length), [(other, other_off, length)], op)
    new_fixed = []
    for r, off, length in fixed:
        split = holding.get(r)
        chunks = split.chunks if split is not None else ()
        new_fixed += [p for chunk in chunks for p in pieces(chunk, off, length)]
        if split is None:
            new_fixed.append((r, off, length))
    new_fixed += [
        (s.heads, 0, len(s.chunks))
        for s in splits
        if s.stacked and s.dims not in holding and ("fix heads", s.id) in fallen
    ]
    # a stacked parameter's heads that do not hold are its axis's neurons, free as before
    synthetic = [
        (s.heads, 0, len(s.chunks)) for s in splits if not (s.stacked and s.dims not in holding)
    ]
    for r, split in holding.items():
        width = split.width
        for chunk in split.chunks:  # a head's dims are a span of their own, tied or not
            for run, at, length in pieces(chunk, 0, width):
                cuts[run].update((at, at + length))
        for c in cuts[r] - {0, width}:
            for chunk in split.chunks:
                run, at, _ = pieces(chunk, c, width - c)[0]
                cuts[run].add(at)
        synthetic.append((r, 0, width))
    return out, new_fixed, synthetic, met


def check(sol: Any, fallen: dict) -> dict:
    """Which holding splits cannot hold, with why: ``("heads", id) -> reason``, added to
    ``fallen``.

    ``sol`` is the :class:`~nfncompile.frontend.spaces._Solution` of the rewritten constraints;
    its problem holds the splits and merges, the ``faults`` and ``carried`` of
    :meth:`~nfncompile.frontend.analysis.SymmetryAnalysis.head_checks`, the runs a parameter or
    input/output label reads (``labelled``) and the fx nodes at which a tie met a heads run
    (``heads_met``); ``sol.prefixed`` holds the roots fixed before the heads runs were and
    ``sol.met`` what :func:`rewrite` returned.
    """
    p = sol.problem
    splits = p.splits
    by_id = {s.id: s for s in splits}
    dims_runs = {s.dims for s in splits}
    failed: dict = {}

    def heads_of(split: Any) -> list:
        return _heads_at(sol, split)

    tiled: dict = {}  # splits found to read another's heads tiled, not yet read so

    def aligned(i: int, j: int) -> bool:
        """Head by head, or each of the one with fewer heads met by ``group`` heads in a row
        of the other, or tiled where :func:`rewrite` read them so (as it ties their chunks).
        Heads that are tiled where the rewrite read them in a row are recorded in ``tiled``
        (to be solved again)."""
        (big_id, big), (_, small) = sorted(
            ((k, heads_of(by_id[k])) for k in (i, j)), key=lambda kv: len(kv[1]), reverse=True
        )
        if len(big) % len(small):
            return False
        group, read_tiled = len(big) // len(small), ("tiled", big_id) in fallen
        if big == _spread(small, group, read_tiled):
            return True
        if (
            not read_tiled and group > 1 and big == _spread(small, group, True)
            and len(set(small)) == len(small)
        ):  # fmt: skip
            tiled[("tiled", big_id)] = "its heads read another split's tiled"
            return True
        return False

    # the heads a split may share: in blocks of ``group`` in a row, where it met a split with
    # that many times fewer heads (the rewrite tied each block's chunks to one of its chunks)
    fewer = {f: set() for f in by_id}
    for f, g, _ in sol.met:
        fewer[f].add(len(by_id[f].chunks) // max(1, len(by_id[g].chunks)))
        fewer[g].add(len(by_id[g].chunks) // max(1, len(by_id[f].chunks)))

    def shared_as_met(split: Any) -> bool:
        """Its heads each in a place of their own, or in blocks of ``group`` in a row where
        its dims met a split with that many times fewer heads, or where another split's heads
        are those places, each once (GQA's key heads, met head by head by the query heads
        where RoPE fixes their dims)."""
        at = heads_of(split)
        distinct = list(dict.fromkeys(at))
        group = len(at) // len(distinct)

        def taken_once() -> bool:  # another split's heads take those places, each once
            return any(heads_of(other) == distinct for other in splits if other is not split)

        read_tiled = ("tiled", split.id) in fallen
        if at == _spread(distinct, group, False) or (
            read_tiled and at == _spread(distinct, group, True)
        ):
            return group == 1 or group in fewer[split.id] or taken_once()
        if group > 1 and at == _spread(distinct, group, True) and taken_once():
            tiled[("tiled", split.id)] = "its heads read another split's tiled"
            return True
        return False

    shared: set = set()  # splits that fall only for a weight every head reads (SHARED)
    for s in splits:
        if ("heads", s.id) in fallen:
            continue
        roots = [root for root, _ in heads_of(s)]
        positions = any(r in sol.prefixed for r in roots) or not shared_as_met(s)
        # a split of another split's per-head dims ((C * H * W) viewed as (C, H, W)):
        # read with its chunks tied, which the outer split's reading then rewrites
        nested = any(seg.run in dims_runs for chunk in s.chunks for seg in chunk)
        if s.id in p.faults:
            failed[("heads", s.id)] = p.faults[s.id]
        elif s.dims in p.labelled:
            failed[("heads", s.id)] = SHARED
            if not (positions or nested):
                shared.add(s.id)
        elif positions:
            failed[("heads", s.id)] = "an op reads its heads position by position"
        elif nested:
            failed[("heads", s.id)] = "its chunks are another split's per-head dims"
    pairs = [(h, d, node, "carried") for h, d, node in p.carried]
    pairs += [(m.heads, m.split, m.node, "flattened") for m in p.merges]
    pairs += [(f, g, node, "met") for f, g, node in sol.met]
    for f, g, node, how in pairs:
        bad = not aligned(f, g) or (how == "met" and f != g and node not in p.heads_met)
        for i in (f, g) if bad else ():
            shared.discard(i)
            if ("heads", i) not in fallen:
                failed.setdefault(
                    ("heads", i), f"{node}: its heads are not aligned with those it meets"
                )
    # a stacked parameter's axis is read per head only where the split it meets is
    for *_, sid, parent in p.adopted:
        gone = ("heads", parent) in fallen or ("heads", parent) in failed
        if gone and ("heads", sid) not in fallen:
            failed.setdefault(("heads", sid), "the split whose dims it meets does not hold")
    if tiled and not failed:  # solve again with those chunks tied tiled
        fallen.update(tiled)
        return tiled
    fallen.update(failed)
    # heads whose dims share one permutation (a norm over each head's dims, timm's q_norm)
    # may still move: their split is read with its chunks tied, its heads in the family
    fallen.update({("shared", i): SHARED for i in shared})
    return failed


#: Why a split whose per-head dims a parameter (or an input/output) reads whole falls: its
#: heads' dims share one permutation; its heads may still move as blocks (:func:`blocks`).
SHARED = "a parameter or an input/output reads its per-head dims whole"


def _spread(places: list, times: int, tiled: bool) -> list:
    """``places`` each ``times`` times: in a row (``[a, a, b, b]``: ``repeat_interleave``), or
    the whole list ``times`` times where ``tiled`` (``[a, b, a, b]``: ``repeat``)."""
    return places * times if tiled else [h for h in places for _ in range(times)]


def _heads_at(sol: Any, split: Any) -> list:
    """Each head's place in the solution: (its atom's root, its offset in the atom)."""
    starts = sol.starts[split.heads]
    out = []
    for pos in range(len(split.chunks)):
        start = starts[bisect.bisect_right(starts, pos) - 1]
        out.append((sol.uf.find(sol.atom_id[(split.heads, start)]), pos - start))
    return out


@dataclass
class Family:
    """Holding splits whose heads move as blocks (:func:`blocks`).

    Attributes
    ----------
    roots : tuple of int
        The solution's roots of their heads' places, in head order: one (the heads runs' class)
        or, where grouped-query attention ties each key/value head to its query heads one by
        one, one per key/value head. :attr:`root` is the first.
    count : int
        The number of heads (of key/value heads: each a block of its query heads).
    splits : list of HeadSplit
    units : dict
        Split id -> how many of its heads make one block (GQA's query heads per key/value
        head; 1 for the others).
    columns : list of tuple
        Per piece of a head's dims that is a space, its spaces' roots in head order.
    fixed : list of tuple
        Per split with per-head dims that stay in place (RoPE's rotated queries and keys, all of
        a head's dims or, with partial rotary, the first of them), or that every head shares
        (a norm over each head's dims: the split's chunks tied, :data:`SHARED`): per head,
        those dims' atoms. A label that reads them reads the heads, each head a neuron of
        fixed positions or shared spaces (and of positions inside the blocks of its columns,
        where a head holds those too).
    group : int
        Query heads per block that permute inside it (grouped-query attention's query heads of
        one key/value head, each block's on its own); 1 where they stay in place inside it.
    queries : list of tuple
        Per split with ``group`` heads per block: per block, per query head, the atoms of its
        fixed dims (RoPE's rotated queries), which say which query head a label reads.
    places : list of tuple
        Each block's place in the solution (its atom's root, its offset in the atom), in head
        order: where a parameter's axis holds one value per head (a relative-position bias
        table's columns, a temperature per head), its positions take these places.
    still : bool
        The blocks stay in place (a stacked parameter's members that an op reads where they
        stand): fixed blocks, each head's neurons still permuting on their own.
    """

    roots: tuple
    count: int
    splits: list
    columns: list
    fixed: list
    units: dict = dataclasses.field(default_factory=dict)
    tiled: set = dataclasses.field(default_factory=set)
    group: int = 1
    queries: list = dataclasses.field(default_factory=list)
    places: list = dataclasses.field(default_factory=list)
    still: bool = False

    @property
    def root(self) -> int:
        """The root of the first head's place: the heads' space is named after it."""
        return self.roots[0]

    def chunks(self, split: Any) -> list:
        """The labels of ``split``'s blocks, one per head of the family: its chunks joined
        ``units[split.id]`` at a time, in a row, or every ``count``-th where it reads the
        heads tiled (``tiled``: split ids)."""
        return [sum(heads, ()) for heads in self.heads(split)]

    def heads(self, split: Any) -> list:
        """Per block of the family, the labels of ``split``'s chunks in it, in head order:
        ``units[split.id]`` chunks in a row, or every ``count``-th where it reads the heads
        tiled."""
        g = self.units.get(split.id, 1)
        if split.id in self.tiled:
            return [split.chunks[j :: self.count] for j in range(self.count)]
        return [split.chunks[j * g : (j + 1) * g] for j in range(self.count)]


def blocks(sol: Any, fallen: dict, busy: set) -> list[Family]:
    """The families of holding splits whose heads can move as blocks.

    Heads that move together carry their neurons with them, so where nothing reads a head by
    its position the heads are one more permutation: head ``i`` of every split of a family
    (splits whose heads runs are one class of the solution) goes to the same place, and each
    head's neurons still permute on their own. That is the wreath product of the per-head
    permutations and the heads' one (as a grouped convolution's blocks), given to the spec as
    block spaces that share one block permutation.

    A family is the splits whose heads take the same places in the solution: head ``i`` of
    each in one place, or, under grouped-query attention, each key/value head's place taken by
    ``g`` query heads in a row (their chunks then join into one block). It qualifies when its
    places hold only the heads runs of its splits and, where each block is one head, axes of
    parameters of one value per head (no constant per head, no input/output reads them, no
    op met them as positions: ``heads_held``) and, split by
    split, each piece of a head's dims is, head by head, a distinct space that no other block
    permutation cuts (``busy``: roots of spaces already in blocks or indexed inside them), or
    is fixed in every head (then the heads move with those dims in place: RoPE's rotated
    dims, all of a head's or the first of them), or is one space every head shares (a
    :data:`SHARED` split's, or one tied to it). A family that does not qualify keeps its heads
    in place, as :func:`rewrite` reads them.
    """
    p = sol.problem
    family: dict = {}  # the roots of the heads' places -> splits
    # neurons an op fixed where they stand, not through a split's per-head dims (a gather of
    # a table's rows after its (7, 7) view was flattened back): a head holding them alone is
    # held where it stands (a fix of a weight every head's dims share fixes all heads alike)
    dims_runs = {s.dims for s in p.splits}
    direct = {
        sol.uf.find(i)
        for r, off, length in p.fixed
        if r not in dims_runs
        for i in sol.atoms_in(r, off, length)
    }

    def touched(split: Any) -> bool:
        """Whether an op fixed any of its chunks' neurons directly (a constant per position
        added before the view: PointNet's identity), which the rewrite's ties of each chunk
        to the shared dims hide: a layer that reads its heads then keeps them in place."""
        return any(sol.uf.find(i) in direct for c in split.chunks for i in sol.label_atoms(c))

    def pinned(split: Any) -> bool:
        held: dict = {}  # a directly fixed root -> the heads whose chunks hold it
        for h, chunk in enumerate(split.chunks):
            for i in sol.label_atoms(chunk):
                if (r := sol.uf.find(i)) in direct:
                    held.setdefault(r, set()).add(h)
        return any(len(heads) < len(split.chunks) for heads in held.values())

    # the heads of a stacked split that fell (its chunks tied: one permutation for every
    # member's dims, an ensemble's last layer whose outputs the members' mean reads) may take
    # the family's places too: its chunks are runs no weight reads, so the members move with
    # the family's where no op reads them in place. An attention split that fell may not
    # (its chunks are a projection's rows, which the family would leave where they are:
    # Autoformer's queries, read across heads, beside keys that hold)
    loose = set()
    # an ensemble's members an input or output holds (each member's output) may still move:
    # they are its neurons (spaces._read_heads)
    io_runs = {
        seg.run
        for io in p.inputs + p.outputs if io
        for lab in io[1][1] if isinstance(lab, tuple)
        for seg in lab
    }  # fmt: skip
    places: dict = {}
    for s in p.splits:
        if ("heads", s.id) in fallen and ("shared", s.id) not in fallen:
            if s.stacked:
                loose.add(s.heads)
            continue
        places[s.id] = _heads_at(sol, s)
        family.setdefault(frozenset(r for r, _ in places[s.id]), []).append(s)
    out = []
    for roots, splits in family.items():
        # the places of the fewest heads, each once (a key/value head per block, under GQA),
        # and every split's heads those places in order, each ``units`` times in a row
        fewest = places[min(splits, key=lambda s: len(s.chunks)).id]
        count, order = len(fewest), fewest
        units = {s.id: len(s.chunks) // count for s in splits}
        heads_runs = {s.heads for s in splits}
        tiled = {s.id for s in splits if ("tiled", s.id) in fallen}
        # besides the heads runs, a parameter's axis of one value per head may take their
        # places (Swin's and BEiT's bias tables, XCiT's temperature; T5's, an embedding's
        # features), where each block is one head: it moves with them, read as the heads' own
        # space (spaces._read_heads checks that every label reads them so)
        per_head = set(units.values()) == {1}
        if (
            count < 2 or len(set(order)) != count
            or any(places[s.id] != _spread(order, units[s.id], s.id in tiled) for s in splits)
        ):  # fmt: skip
            continue
        in_place = (
            any(r in sol.prefixed for r in roots)
            or any(sol.atoms[i][0] not in heads_runs | loose
                   and not (per_head and p.runs[sol.atoms[i][0]]["kind"] in _PER_HEAD)
                   for r in roots for i in sol.classes.get(r, []))
            or any((s.heads in p.labelled
                    and not (s.stacked and s.heads in io_runs)
                    and not (per_head and s.heads not in io_runs and not touched(s)))
                   or s.heads in p.heads_held for s in splits)
            or any(sol.atoms[i][0] in (p.labelled | p.heads_held.keys()) & loose
                   for r in roots for i in sol.classes.get(r, []))
            or any(pinned(s) for s in splits)
        )  # fmt: skip
        # attention heads that stay in place are read as rewrite() reads them (each head's
        # dims spaces of their own, spans of the axis); a stacked parameter's members that do
        # (each reads its own data, experts routed by index) are fixed blocks, each member's
        # units inside its block (one axis cannot index a space per member otherwise)
        if in_place and not all(s.stacked for s in splits):
            continue
        fam = Family(tuple(dict.fromkeys(r for r, _ in order)), count, splits, [], [], units, tiled)
        fam.still = in_place
        fam.places = list(order)
        fam.group, fam.queries = _queries(sol, fam)
        columns: list = []  # per piece, its roots in head order
        fixed: list = []
        uneven = False
        shared: list = []  # roots of the dims every head of a shared split holds
        per_split = []
        for s in splits:
            chunks = [sol.label_atoms(chunk) for chunk in fam.chunks(s)]
            # per head: its free dims' roots
            rows = [[r for i in a if (r := sol.uf.find(i)) not in sol.fixed_roots] for a in chunks]
            per_split.append((s, chunks, rows))
        for s, chunks, rows in per_split:
            # every head's dims one space: a shared split's, those it ties its chunks to, or
            # neurons every head reads (multi-query attention's one key and value head)
            common = ("shared", s.id) in fallen or (
                count > 1 and rows[0] and all(r == rows[0] for r in rows)
            )
            # per head: the atoms of its fixed (or shared) dims
            still = [
                tuple(i for i in a if common or sol.uf.find(i) in sol.fixed_roots) for a in chunks
            ]
            if any(still):
                fixed.append(tuple(still))
            if common:
                uneven |= any(r != rows[0] for r in rows)
                shared += rows[0]
            elif any(rows):
                uneven |= any(len(r) != len(rows[0]) for r in rows)
                columns += zip(*rows)
        columns = list(dict.fromkeys(columns))  # q's and k's pieces: the same spaces
        seen = [r for column in columns for r in column]
        if (
            uneven or not (columns or fixed) or len(seen) != len(set(seen))
            or any(r in sol.fixed_roots or r in busy for r in seen + shared)
            or set(seen) & set(shared)
        ):  # fmt: skip
            continue
        # heads a layer reads (their own space's axis of that layer's weight) move only with
        # dims of their own or dims they share: with nothing per head but fixed positions (a
        # Linear's outputs viewed as feature maps, DCGAN's) they stay a plain space
        read = any(s.heads in p.labelled and not s.stacked for s in splits)
        if read and not (columns or shared):
            continue
        # blocks that stay in place with no dims of their own inside them (experts whose
        # units a bias per expert, gathered by the routing, reads as one space) move nothing
        if in_place and not columns:
            continue
        fam.columns, fam.fixed = columns, list(dict.fromkeys(fixed))
        out.append(fam)
    return out


#: The kinds of runs besides the heads' own that may take the heads' places: a parameter's
#: axis, or the features a layer makes from its weight (an embedding's columns)
_PER_HEAD = frozenset({"param", "neuron"})


def _queries(sol: Any, fam: Family) -> tuple[int, list]:
    """Whether ``fam``'s query heads may permute inside their blocks: ``(group, queries)`` of
    :class:`Family`, ``group`` 1 where they may not.

    Under grouped-query attention the ``g`` query heads of one key/value head each meet that
    head's keys and values alike, so inside each block they permute on their own (the
    wreath product of the blocks' permutation and ``S_g``). That holds where every split
    takes either ``g`` heads per block (the queries, the attention's output) or one (the
    keys, the values), and each of the ``g`` heads of a block has the dims (spaces) of the
    others. Whether every label reads them one query head after another is
    :mod:`~nfncompile.frontend.spaces`' to check.
    """
    group = max(fam.units.values())
    if group < 2 or any(u not in (1, group) for u in fam.units.values()):
        return 1, []
    queries = []
    for s in (s for s in fam.splits if fam.units[s.id] == group):
        per_block = []
        for heads in fam.heads(s):
            atoms = [sol.label_atoms(chunk) for chunk in heads]
            roots = [[sol.uf.find(i) for i in a] for a in atoms]
            free = [[r for r in rs if r not in sol.fixed_roots] for rs in roots]
            if any(f != free[0] for f in free):  # a query head with dims of its own
                return 1, []
            per_block.append(
                tuple(tuple(i for i, r in zip(a, rs) if r in sol.fixed_roots)
                      for a, rs in zip(atoms, roots))
            )  # fmt: skip
        queries.append(tuple(per_block))
    return group, queries
