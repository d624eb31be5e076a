"""Read the neuron spaces off the symmetry graph.

The constraints of :func:`~nfncompile.frontend.graph.build_symmetry_graph` are interval
equalities between runs of neurons (ties), cut points (group boundaries, slices), fixed
intervals, and block links (grouped ops). :func:`derive_spaces` solves them:

1. every boundary of every tie, parameter-axis label, input/output label, block-link label and
   fixed interval is a *cut* in its run; cuts are propagated through the ties to a fixpoint,
   so that tied intervals are cut at the same relative positions;
2. the *atoms* are the intervals between consecutive cuts; union-find over atoms (following
   the ties, which now map atoms onto atoms of equal length) gives the classes;
3. a class with a fixed atom is fixed; the others are the neuron spaces. A class holding the
   model input's channels has role ``input``, the model output's ``output``, else ``hidden``;
4. every block link (:class:`~nfncompile.frontend.labels.BlockLink`) is checked: it holds
   when each of its labels is one whole space, its in-block axes are used nowhere else and
   no space is cut into two different block counts. A link that does not hold is replaced by
   the conservative constraints recorded with it, and the constraints are solved again until
   every remaining link holds. Links sharing a space share one block permutation
   (union-find over the links).

The result is one :class:`~nfncompile.frontend.derivation.Derivation`: the
:class:`~nfncompile.spec.WeightSpaceSpec`, the provenance of every space and block
permutation, how the spaces act on the model's inputs and outputs, what broke symmetry and
what happened to every op.

Examples
--------
>>> import torch
>>> from nfncompile.frontend.fx import trace_module
>>> from nfncompile.frontend.graph import build_symmetry_graph
>>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
>>> d = derive_spaces(build_symmetry_graph(trace_module(net, torch.randn(5, 3)), net))
>>> [(s.name, s.size, s.role) for s in d.spaces.values()]
[('in', 3, 'input'), ('0', 4, 'hidden'), ('out', 2, 'output')]
>>> d.spec["0.weight"].axes
('0', 'in')
>>> d.io.inputs
(TensorAxes(shape=(5, 3), view=None, axes=(None, 'in')),)
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import functools
import itertools
from collections.abc import Callable
from typing import Any

import networkx as nx

from ..spec import Blocks, Inner, ParamSpec, Space, Span, WeightSpaceSpec, spaces_named
from . import heads
from .derivation import (
    BlockInfo,
    BrokenInfo,
    Derivation,
    IOAxes,
    OpInfo,
    SpaceInfo,
    TensorAxes,
)
from .labels import MEETS_POSITIONS, POSITIONS, Seg, canonical, segments

__all__ = ["derive_spaces", "fixed_labels"]

_ORDER = {"input": 0, "hidden": 1, "output": 2}
#: kinds of runs a space is named after only when it has no other: a parameter's axis, a
#: constant's equal slices
_UNNAMED = ("param", "constant")


def _named_after(runs: dict, members: list, run_of: Callable[[Any], int]) -> list:
    """The ``members`` whose runs (``run_of(member)``) a space is named after: those made by
    an op, before those that only hold one value (padding, a zero piece of a
    concatenation), before a parameter's axis or a constant's slices."""

    def rank(member: Any) -> int:
        run = runs[run_of(member)]
        return 2 if run["kind"] in _UNNAMED else 1 if run.get("uniform") else 0

    best = min(map(rank, members))
    return [m for m in members if rank(m) == best]


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        p = self.parent
        while p[i] != i:
            p[i] = p[p[i]]
            i = p[i]
        return i

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            if a > b:
                a, b = b, a
            self.parent[b] = a


def _label_cuts(label: Any, cuts: dict) -> None:
    for s in segments(label):
        cuts[s.run].add(s.offset)
        cuts[s.run].add(s.offset + s.length)


def _io_axes(info: Any) -> tuple:
    """(view, labels) of an input/output TensorLabels: axes with flattened blocks are split."""
    view, labels, split = [], [], False
    for lab, n in zip(info.labels, info.shape):
        inner = {s.inner for s in lab} if lab else {1}
        q = inner.pop() if len(inner) == 1 else 0
        if q > 1:
            split = True
            view += [n // q, q]
            labels += [tuple(Seg(s.run, s.offset, s.length) for s in lab), None]
        elif q == 0:
            view.append(n)
            labels.append(None)
        else:
            view.append(n)
            labels.append(lab)
    return (tuple(view) if split else None), labels


def _in_label_order(params: dict) -> tuple[dict, dict]:
    """``params`` with every axis that reads runs interleaved (after a channel shuffle) read
    run by run (:func:`~nfncompile.frontend.labels.canonical`), and ``key -> {axis: order}``
    of those axes: each run may then be one space, the axis's stored positions a fixed
    reordering of its label's (:attr:`~nfncompile.spec.ParamSpec.order`)."""
    out, orders = {}, {}
    for key, p in params.items():
        axes = list(p.axes)
        for j, lab in enumerate(axes):
            found = canonical(lab) if isinstance(lab, tuple) and lab else None
            if found is not None:
                axes[j], order = found
                orders.setdefault(key, {})[j] = (lab, order)
        out[key] = dataclasses.replace(p, axes=axes) if key in orders else p
    return out, orders


def _stored_order(sol: _Solution, axes: list, orders: dict, axis_label: Callable) -> dict:
    """``{axis: order}`` of the axes (of ``orders``: axis -> (label as stored, order)) that
    stay read in label order; the others get their stored label back in ``axes``. An axis
    whose stored label cuts the spaces no finer than its label order does (two halves of one
    space swapped, rotary's ``cat([-x2, x1])`` read by a layer) needs no order."""
    kept = {}
    for j, (stored, order) in orders.items():
        cuts = [(s.run, c) for s in stored for c in (s.offset, s.offset + s.length)]
        if all(c in sol.starts[r] or c == sol.problem.runs[r]["size"] for r, c in cuts):
            plain = axis_label(stored)
            if _pieces_of(plain) <= _pieces_of(axes[j]):
                axes[j] = plain
                continue
        kept[j] = order
    return kept


def _pieces_of(label: Any) -> int:
    return len(label) if isinstance(label, tuple) else 1


def _joined(ties: list, nodes: list, split: set) -> tuple[list, list]:
    """``ties`` (and their fx ``nodes``) with one-neuron ties of one op at one node that
    continue each other in both runs joined: the neuron-by-neuron ties of interleaved runs
    (two tensors after one channel shuffle, added) tie whole runs, and cut none. Runs in
    ``split`` (attention heads' chunks, which are read head by head) are left as they are."""
    groups: dict = {}
    for k, (tie, node) in enumerate(zip(ties, nodes)):
        src, _, dst, _, length, op = tie
        alone = length != 1 or src in split or dst in split
        groups.setdefault(k if alone else (src, dst, op, node), []).append((tie, node))
    if len(groups) == len(ties):
        return ties, nodes
    out, out_nodes = [], []
    for group in groups.values():
        group.sort(key=lambda tn: (tn[0][1], tn[0][3]))
        joined = [group[0][0]]
        for t, _ in group[1:]:
            src, src_off, dst, dst_off, length, op = joined[-1]
            if t[1] == src_off + length and t[3] == dst_off + length:
                joined[-1] = (src, src_off, dst, dst_off, length + t[4], op)
            else:
                joined.append(t)
        out += joined
        out_nodes += [group[0][1]] * len(joined)
    return out, out_nodes


def _labels(params: dict, inputs: list, outputs: list) -> list:
    """Every parameter and input/output label (``_Problem``'s fields of those names)."""
    labels = [lab for p in params.values() for lab in p.axes]
    return labels + [lab for io in inputs + outputs if io for lab in io[1][1]]


@dataclasses.dataclass
class _Problem:
    """What the graph says, whichever block links end up holding."""

    runs: dict  # run id -> node attributes
    ties: list  # (src, src_off, dst, dst_off, length, op)
    cuts: dict  # run id -> set of positions
    fixed: list  # (run, offset, length)
    params: dict  # state_dict key -> ParamLabel
    inputs: list  # (TensorLabels, (view, labels)) per model input
    outputs: list  # (TensorLabels, (view, labels)) or None per output leaf
    links: list  # BlockLink
    tie_nodes: list  # the fx node of each tie
    splits: list  # HeadSplit
    merges: list  # HeadMerge
    faults: dict  # head split id -> why it cannot hold (SymmetryAnalysis.head_checks)
    carried: list  # (heads split id, dims split id, node)
    labelled: set  # runs a parameter, input/output or block-link label reads
    heads_met: set  # fx nodes at which a tie met a heads run
    heads_held: dict  # heads runs that met positions where they stand -> (op, node) there
    adopted: list  # (key, heads axis, dims axis, split id, parent split id): stacked.adopt
    orders: dict  # key -> {axis: (stored label, order)}: axes read in label order (shuffles)
    heads_in_place: bool = False  # every head stays in place (verification's second reading)
    #: head split ids whose families stay in place (verification's reading of each family)
    families_held: frozenset = frozenset()

    @functools.cached_property
    def still(self) -> set:
        """The runs that no permutation moves: constants' positions and attention heads."""
        return {r for r, d in self.runs.items() if d["kind"] in ("fixed", "heads")}

    @staticmethod
    def read(graph: nx.MultiGraph) -> _Problem:
        runs = {n[1]: d for n, d in graph.nodes(data=True) if n[0] == "run"}
        edges = [d for _, _, d in graph.edges(data=True) if d.get("kind") == "tie"]
        ties = [
            (d["src"], d["src_off"], d["dst"], d["dst_off"], d["length"], d["op"]) for d in edges
        ]
        params, orders = _in_label_order(graph.graph["params"])
        splits = graph.graph.get("head_splits", [])
        in_splits = {s.heads for s in splits} | {s.dims for s in splits}
        in_splits |= {g.run for s in splits for chunk in s.chunks for g in chunk}
        ties, tie_nodes = _joined(ties, [d["node"] for d in edges], in_splits)
        inputs = [(info, _io_axes(info)) for _, info in graph.graph["inputs"]]
        outputs = [None if i is None else (i, _io_axes(i)) for i in graph.graph["outputs"]]
        links = graph.graph.get("links", [])
        cuts = {r: {0, d["size"]} | set(d["cuts"]) for r, d in runs.items()}
        fixed = [(r, off, length) for r, d in runs.items() for off, length, _ in d["fixed"]]
        labels = _labels(params, inputs, outputs)
        labels += [lab for link in links for lab in link.members]
        labels += [inner[0] for link in links for inner in link.inner]
        for lab in labels:
            _label_cuts(lab, cuts)
        heads = {s.heads for s in splits}
        # a stacked parameter's axis read per head is a split's dims: its label reads it
        # head by head, not whole (stacked.adopt)
        adopted = graph.graph.get("adopted") or []
        per_head = {(key, j) for key, _, j, _, _ in adopted}
        read_whole = [
            lab for key, p in params.items() for j, lab in enumerate(p.axes)
            if (key, j) not in per_head
        ]  # fmt: skip
        read_whole += labels[sum(len(p.axes) for p in params.values()) :]
        return _Problem(
            runs, ties, cuts, fixed, params, inputs, outputs, links,
            tie_nodes=tie_nodes,
            orders=orders,
            splits=splits,
            merges=graph.graph.get("head_merges", []),
            faults=graph.graph.get("head_faults", {}),
            carried=graph.graph.get("head_carried", []),
            labelled={s.run for lab in read_whole for s in segments(lab)},
            heads_met={d["node"] for d in edges if d["src"] in heads or d["dst"] in heads}
            | graph.graph.get("routed_met", set()),
            heads_held=graph.graph.get("heads_held", {}),
            adopted=adopted,
            heads_in_place=bool(graph.graph.get("heads_in_place")),
            families_held=frozenset(graph.graph.get("families_held", ())),
        )  # fmt: skip


class _Solution:
    """Atoms and their classes for one set of ties, cuts and fixed intervals."""

    def __init__(self, problem: _Problem, fallen: dict) -> None:
        self.problem = problem
        runs = problem.runs
        ties = list(problem.ties)
        nodes = list(problem.tie_nodes)
        cuts = {r: set(cs) for r, cs in problem.cuts.items()}
        fixed = list(problem.fixed)
        for link in problem.links:
            if link.id not in fallen:
                continue
            ties += [(t.a, t.a_off, t.b, t.b_off, t.length, t.op) for t in link.ties]
            nodes += [t.node for t in link.ties]
            for run, pos, _op, _node in link.cuts:
                cuts[run].add(pos)
            fixed += [(s.run, s.offset, s.length) for segs, _ in link.fixes for s in segs]
        ties, fixed, synthetic, self.met = heads.rewrite(
            problem.splits, fallen, ties, nodes, cuts, fixed
        )
        self.ties = ties  # as solved: each holding split's dims read per head
        for r, off, length in fixed + synthetic:
            cuts[r].update((off, off + length))

        # 1. cuts, propagated through ties
        by_run: dict = {r: [] for r in runs}
        for src, src_off, dst, dst_off, length, _ in ties:
            cuts[src].update((src_off, src_off + length))
            cuts[dst].update((dst_off, dst_off + length))
            by_run[src].append((src_off, dst, dst_off, length))
            by_run[dst].append((dst_off, src, src_off, length))
        # each run's ties sorted by start, with the furthest end among those up to each, so
        # a cut visits only the ties that may hold it (a kernel predictor's 24,576 output
        # channels, each tied on its own, made this quadratic: 4.5 s per solution)
        spans = {}
        for r, entries in by_run.items():
            entries.sort(key=lambda e: e[0])
            reach = list(itertools.accumulate((lo + n for lo, _, _, n in entries), max))
            spans[r] = ([e[0] for e in entries], reach)
        stack = [(r, c) for r, cs in cuts.items() for c in cs]
        while stack:
            r, c = stack.pop()
            entries, (starts, reach) = by_run[r], spans[r]
            k = bisect.bisect_left(starts, c) - 1  # the last tie starting before c
            while k >= 0 and reach[k] > c:  # (none before k reaches past c otherwise)
                lo, other, olo, length = entries[k]
                k -= 1
                if c < lo + length:
                    c2 = olo + (c - lo)
                    if c2 not in cuts[other]:
                        cuts[other].add(c2)
                        stack.append((other, c2))

        # 2. atoms and union-find
        self.starts = {r: sorted(cs)[:-1] for r, cs in cuts.items()}
        stops = {r: sorted(cs)[1:] for r, cs in cuts.items()}
        self.atom_id: dict = {}
        self.atoms: list = []
        for r in sorted(runs):
            for a, b in zip(self.starts[r], stops[r]):
                self.atom_id[(r, a)] = len(self.atoms)
                self.atoms.append((r, a, b))
        self.uf = _UnionFind(len(self.atoms))
        self.tie_ops: dict = {}
        for src, src_off, dst, dst_off, length, op in ties:
            p = src_off
            while p < src_off + length:
                i = self.atom_id[(src, p)]
                j = self.atom_id[(dst, dst_off + p - src_off)]
                self.uf.union(i, j)
                self.tie_ops.setdefault(i, []).append(op)
                p = self.atoms[i][2]

        # 3. classes, fixed classes, roles
        self.classes: dict = {}
        for i in range(len(self.atoms)):
            self.classes.setdefault(self.uf.find(i), []).append(i)
        # fixed by an op; then also by the reading of attention heads (heads.rewrite)
        self.prefixed = {
            self.uf.find(i) for r, off, length in fixed for i in self.atoms_in(r, off, length)
        }
        self.fixed_roots = self.prefixed | {
            self.uf.find(i) for r, off, length in synthetic for i in self.atoms_in(r, off, length)
        }
        self.roles: dict = {}
        views = [("output", io) for io in problem.outputs] + [
            ("input", io) for io in problem.inputs
        ]
        for role, io in views:  # input overrides output (assigned last)
            for lab in io[1][1] if io else ():
                for root in self.roots(lab):
                    self.roles[root] = role

    def atoms_in(self, r: int, off: int, length: int) -> list:
        """Atom ids covering neurons ``[off, off + length)`` of run ``r``, in order."""
        starts = self.starts[r]
        k = bisect.bisect_left(starts, off)
        out = []
        while k < len(starts) and starts[k] < off + length:
            out.append(self.atom_id[(r, starts[k])])
            k += 1
        return out

    def label_atoms(self, label: Any) -> list:
        return [i for s in segments(label) for i in self.atoms_in(s.run, s.offset, s.length)]

    def roots(self, label: Any) -> list:
        return [self.uf.find(i) for i in self.label_atoms(label)]

    def origin(self, root: int) -> str:
        return self.problem.runs[self.atoms[root][0]]["origin"]


def _member_names(link: Any) -> list:
    if len(link.members) == 2:
        return ["input channels", "output channels"]
    return ["channels"] * len(link.members)


def _check_links(sol: _Solution, fallen: dict) -> tuple:
    """Which block links hold: ``(count_of, inner_of)`` for the holding ones (space root ->
    (count, link), inner atom root -> (link, indexed, row)), and the newly failing ones
    (link id -> reason) added to ``fallen``."""
    count_of: dict = {}
    inner_of: dict = {}
    failed: dict = {}
    for link in sol.problem.links:
        if link.id in fallen:
            continue
        reason, roots = "", []
        for what, member in zip(_member_names(link), link.members):
            atoms = sol.label_atoms(member)
            rs = [sol.uf.find(i) for i in atoms]
            if any(r in sol.fixed_roots for r in rs):
                reason = f"its {what} include fixed neurons"
            elif len(atoms) != 1:
                parts = ", ".join(dict.fromkeys(sol.origin(r) for r in rs))
                reason = f"its {what} are not one whole space but {len(atoms)} pieces (of {parts})"
            if reason:
                break
            roots.append(rs[0])
        for label, _, _ in link.inner if not reason else ():
            atoms = sol.label_atoms(label)
            root = sol.uf.find(atoms[0]) if len(atoms) == 1 else None
            if root is None or root in sol.fixed_roots or len(sol.classes[root]) > 1:
                reason = "its weight's in-group axis is tied to other neurons (a shared weight)"
        for root in roots if not reason else ():
            count, other = count_of.get(root, (link.count, link))
            if count != link.count:
                reason = (
                    f"its channels ({sol.origin(root)}) are already cut into {count} blocks "
                    f"by {other.op}"
                )
                break
        if reason:
            failed[link.id] = reason
            continue
        for root in roots:
            count_of.setdefault(root, (link.count, link))
        for label, indexed, row in link.inner:
            inner_of[sol.uf.find(sol.label_atoms(label)[0])] = (link, roots[indexed], roots[row])
    fallen.update(failed)
    return count_of, inner_of, failed


def fixed_labels(graph: nx.MultiGraph, labels: list) -> list[bool]:
    """Whether each of ``labels`` (run labels of the analysis behind ``graph``) ends up wholly
    fixed once ties are followed (block links taken as holding)."""
    problem, fallen = _Problem.read(graph), {}
    sol = _Solution(problem, fallen)
    while heads.check(sol, fallen):
        sol = _Solution(problem, fallen)
    return [all(sol.uf.find(i) in sol.fixed_roots for i in sol.label_atoms(lab)) for lab in labels]


def derive_spaces(graph: nx.MultiGraph) -> Derivation:
    """Solve the graph's constraints into neuron spaces and per-parameter axis labels.

    Parameters
    ----------
    graph : networkx.MultiGraph
        From :func:`nfncompile.frontend.graph.build_symmetry_graph`.

    Returns
    -------
    Derivation
        The spec (spaces: inputs first, then hidden spaces in creation order, outputs last;
        every float state_dict entry in state_dict order; block permutations of the grouped
        ops that hold), the provenance of each space, the input/output labels, what broke
        symmetry and what happened to every op.
    """
    problem = _Problem.read(graph)
    fallen: dict = {}  # link id -> why it does not hold
    while True:
        sol = _Solution(problem, fallen)
        count_of, inner_of, failed = _check_links(sol, fallen)
        if heads.check(sol, fallen) or failed:
            continue
        derivation = _build(graph, sol, count_of, inner_of, fallen)
        if derivation is not None:
            return derivation


def _build(
    graph: nx.MultiGraph, sol: _Solution, count_of: dict, inner_of: dict, fallen: dict
) -> Derivation | None:
    """The derivation of a solution whose links all hold (``None``, with the culprit added to
    ``fallen``, when a grouped weight's in-block axis cannot be labelled)."""
    problem, runs, uf, atoms = sol.problem, sol.problem.runs, sol.uf, sol.atoms

    # block permutations: links sharing a space share one
    holding = [link for link in problem.links if link.id not in fallen]
    link_uf = _UnionFind(len(problem.links))
    first_link: dict = {}
    for root, (_, link) in count_of.items():
        first_link.setdefault(root, link)
    for link in holding:
        for member in link.members:
            link_uf.union(link.id, first_link[sol.roots(member)[0]].id)

    infos: dict = {}
    for root, members in sol.classes.items():
        if root in sol.fixed_roots or root in inner_of:
            continue
        first = atoms[min(members)]
        # named after its first run made by an op (:func:`_named_after`)
        named = _named_after(runs, members, lambda i: atoms[i][0])
        role = sol.roles.get(root, "hidden")
        base = {"input": "in", "output": "out"}.get(role, runs[atoms[min(named)][0]]["origin"])
        ops = list(dict.fromkeys(op for i in members for op in sol.tie_ops.get(i, ())))
        infos[root] = SpaceInfo(
            base,
            first[2] - first[1],
            role,
            atoms=[atoms[i] for i in members],
            origins=sorted({runs[atoms[i][0]]["origin"] for i in members}),
            ops=ops,
            touched=list(dict.fromkeys(op for i in members for op in runs[atoms[i][0]]["touched"])),
        )
    alias, families, views = _merge_heads(sol, fallen, count_of, inner_of, infos)
    # a stacked parameter's heads (an ensemble's members) that stay in place: one axis
    # cannot index another's space per head, so they fall back to one permutation for every
    # member's units (and the members, neurons of their own)
    moved = {s.id for fam, _, _ in families for s in fam.splits}
    stuck = [
        s.id for s in problem.splits
        if s.stacked and ("heads", s.id) not in fallen and s.id not in moved
    ]  # fmt: skip
    stuck += [
        sid for key, _, j, sid, _ in problem.adopted
        if ("heads", sid) not in fallen and sid in moved and (key, j) not in views
    ]  # fmt: skip
    # a stacked split that does not hold, whose members met their own data (held) and are in
    # no family's fixed blocks: they are fixed, as neurons that meet positions are
    in_family = {r for fam, _, _ in families for r in fam.roots}
    stuck_held = [
        s.id for s in problem.splits
        if s.stacked and ("heads", s.id) in fallen and ("fix heads", s.id) not in fallen
        and s.heads in problem.heads_held
        and not any(sol.uf.find(i) in in_family for i in sol.atoms_in(s.heads, 0, len(s.chunks)))
    ]  # fmt: skip
    if stuck or stuck_held:
        fallen.update({("heads", sid): "its heads (a stacked parameter's axis) stay in place"
                       for sid in stuck})  # fmt: skip
        fallen.update({("fix heads", sid): _OWN_DATA for sid in stuck_held})
        return None
    _name_spaces(infos)
    blocks = _name_blocks(holding, link_uf, sol, count_of, infos)
    blocks.update(_name_heads(families, infos, blocks))

    def axis_label(lab: Any) -> Any:
        if not lab:
            return None
        pieces: list = []
        for i in sol.label_atoms(lab):
            root = uf.find(i)
            _, a, b = atoms[i]
            if root in alias:
                if alias[root][1] == 0:  # a whole column of heads: the block space, once
                    pieces.append(infos[alias[root][0]].name)
            elif root in inner_of:
                _, indexed, row = inner_of[root]
                pieces.append(_InnerRef(infos[indexed].name, infos[row].name))
            elif root in infos:
                pieces.append(infos[root].name)
            else:
                pieces.append(b - a)
        return _as_label(pieces)

    params = []
    for key, p in problem.params.items():
        axes = [axis_label(lab) for lab in p.axes]
        order = _stored_order(sol, axes, problem.orders.get(key, {}), axis_label)
        for k, label in enumerate(axes):
            pieces = label if isinstance(label, tuple) else (label,)
            if not any(isinstance(x, _InnerRef) for x in pieces):
                continue
            row = [j for j, other in enumerate(axes) if j != k and other == pieces[0].row]
            if len(pieces) > 1 or not row:
                link = next(inner_of[r][0] for r in sol.roots(p.axes[k]) if r in inner_of)
                fallen[link.id] = (
                    f"its weight {key} has no axis indexed by the blocks of its rows alone"
                )
                return None
            axes[k] = Inner(label.space, row[0])
        view = p.view
        mine = {k: v for (name, k), v in views.items() if name == key}
        for k, v in mine.items():
            if v.per_head is not None:  # one head's pieces, the heads on axis per_head
                axes[k] = _head_label(v.layout, infos, v.per_head)
                for root in {c[0] for c, _ in v.layout if isinstance(c, tuple)}:
                    infos[root].params.append(f"{key}[{k}]")
        mine = {k: v for k, v in mine.items() if v.per_head is None}
        for k in (k for k, v in mine.items() if isinstance(v.layout, list)):
            # an axis that reads the heads run after run (each head's run fixed): spans
            axes[k] = _span_label(mine[k].layout, infos, mine[k])
            for root in mine[k].spaces:
                infos[root].params.append(f"{key}[{k}]")
        viewed = sorted(k for k, v in mine.items() if isinstance(v.layout, tuple))
        at = {k: k + sum(mine[j].extra for j in viewed if j < k) for k in viewed}
        for k in reversed(viewed):
            # an axis that reads the heads one after another: viewed as (heads, one head),
            # or (heads, query heads, one query head), the head's pieces fixed positions or
            # positions inside its columns' blocks
            shape, labels = mine[k].axes(infos, at[k])
            view = (*(view or p.shape)[:k], *shape, *(view or p.shape)[k + 1 :])
            axes[k : k + 1] = labels
            for root in mine[k].spaces:
                infos[root].params.append(f"{key}[{k}]")
        order = {j + sum(mine[k].extra for k in viewed if k < j): o for j, o in order.items()}
        params.append(ParamSpec(key, p.shape, tuple(axes), view, order))
        for k, lab in enumerate(p.axes):
            for root in set(sol.roots(lab)):
                info = infos.get(inner_of[root][1] if root in inner_of else _at(alias, root))
                if info is None:
                    continue
                if f"{key}[{k}]" not in info.params:
                    info.params.append(f"{key}[{k}]")
                for op in p.ops:
                    if op not in info.ops:
                        info.ops.append(op)
    io = IOAxes(
        tuple(
            TensorAxes(i.shape, v, tuple(axis_label(x) for x in ls))
            for i, (v, ls) in problem.inputs
        ),
        tuple(
            None
            if io is None
            else TensorAxes(io[0].shape, io[1][0], tuple(axis_label(x) for x in io[1][1]))
            for io in problem.outputs
        ),
    )
    positions = _is_position(problem, sol)
    broken = _broken(graph, problem, fallen, positions)
    run_space = {}
    for r in runs:
        root = uf.find(sol.atom_id[(r, sol.starts[r][0])]) if sol.starts[r] else None
        if root in inner_of:
            root = inner_of[root][1]
        root = _at(alias, root)
        run_space[r] = infos[root].name if root in infos else "fixed"
    # a hidden space no weight indexes (the free run a constant left where a later write
    # covered it all) moves nothing in the weight space: not one of the spec's spaces
    indexed = set().union(*(spaces_named(t.axes) for t in [*params, *io.inputs, *io.outputs] if t))
    ranked = [
        s
        for _, s in sorted(infos.items(), key=lambda kv: (_ORDER[kv[1].role], kv[0]))
        if s.role != "hidden" or s.blocks or s.name in indexed
    ]
    spec = WeightSpaceSpec(
        [Space(s.name, s.size, s.role, blocks=s.blocks) for s in ranked],
        params,
        blocks=[Blocks(b.name, b.count, fixed=b.fixed) for b in blocks.values()],
    )
    return Derivation(
        spec, {s.name: s for s in ranked}, blocks, io, broken, _ops(graph, problem, fallen, positions),
        run_space, graph,
    )  # fmt: skip


def _at(alias: dict, root: Any) -> Any:
    """The root that holds ``root``'s space once heads are merged into block spaces."""
    return alias[root][0] if root in alias else root


def _merge_heads(
    sol: _Solution, fallen: dict, count_of: dict, inner_of: dict, infos: dict
) -> tuple[dict, list, dict]:
    """Merge each movable family of attention heads (:func:`~nfncompile.frontend.heads.blocks`)
    into block spaces: one space per piece of a head's dims, cut into one block per head, and
    where an axis reads the heads one after another (fixed dims per head: RoPE's queries and
    keys; a projection laid out per head; dims every head shares) a space of the heads
    themselves (``"<origin>.head"``, one neuron per block), read through a view of that axis
    or as spans of it; an axis of one value per head (a bias table's columns) is that space.

    A family is merged only where every parameter and input/output label reads each of its
    pieces whole, head after head in order (the block space's layout), one head after another
    (:func:`_head_pattern`) or run after run (:func:`_head_spans`); else its heads stay in
    place. Returns ``alias`` (a merged root -> (the block space's root, its head)), per merged
    family ``(family, block space roots, base name)``, and ``views``: ``(param key, axis) ->``
    :class:`_View` (a view of the axis, or spans of it). ``infos`` is updated in place.
    """
    p = sol.problem
    busy = set(count_of) | set(inner_of) | {v[1] for v in inner_of.values()}
    # a grouped op whose block permutation fell keeps its groups in place (group i of its
    # output reads group i of its input): neither is free to move as heads
    busy |= {r for link in p.links if link.id in fallen for m in link.members for r in sol.roots(m)}
    io = [lab for io in p.inputs + p.outputs if io for lab in io[1][1] if lab]
    alias: dict = {}
    merged: list = []
    views: dict = {}
    families = [] if p.heads_in_place else heads.blocks(sol, fallen, busy)
    # families the verification found do not move as blocks stay in place, as every family
    # does where heads_in_place
    families = [f for f in families if not p.families_held & {s.id for s in f.splits}]
    # one weight read by several attention calls (ALBERT's layers share theirs): each call's
    # heads a family of its own over the same spaces; those heads stay in place
    shared = {fam.root: _shared_roots(sol, fam) for fam in families}
    uses = collections.Counter(r for fam in families for c in fam.columns for r in set(c))
    uses.update(r for fam in families for r in shared[fam.root])
    near = None  # the ties between fixed atoms, once a family with fixed splits needs them
    for fam in families:
        columns, count = fam.columns, fam.count
        # an ensemble's members all read the input features and write the outputs: their
        # weights' axes read those spaces whole, member by member (stacked.adopt)
        ensemble = all(s.stacked for s in fam.splits)
        if any(uses[r] > 1 for c in columns for r in c) or any(
            uses[r] > 1 or r not in infos or (infos[r].role != "hidden" and not ensemble)
            for r in shared[fam.root]
        ):
            continue
        at = {r: (column, i) for column in columns for i, r in enumerate(column)}
        if fam.fixed and near is None:
            near = _fixed_ties(sol, set().union(*shared.values()))
        tags = _head_tags(sol, fam, near)
        # the query heads inside their blocks too (GQA), where every label reads them one
        # after another; else the blocks alone
        found = _read_heads(sol, fam, tags, at, inner_of, io, fam.group, near)
        if found is None and fam.group > 1:
            found = _read_heads(sol, fam, tags, at, inner_of, io, 1, near)
        if found is None or not all(
            infos[r].role == "hidden" and infos[r].size == infos[c[0]].size
            for c in columns for r in c
        ):  # fmt: skip
            continue
        for column in columns:
            first = infos[column[0]]
            for i, r in enumerate(column):
                alias[r] = (column[0], i)
                if i:
                    info = infos.pop(r)
                    first.size += info.size
                    first.atoms += info.atoms
                    for attr in ("origins", "ops", "touched"):
                        getattr(first, attr).extend(
                            x for x in getattr(info, attr) if x not in getattr(first, attr)
                        )
            first.origins.sort()
        roots = [c[0] for c in columns]
        base = infos[roots[0]].name if roots else ""
        if found:  # the heads themselves, a neuron each ("<origin>.head"): an axis that
            # reads them one after another is viewed as (heads, one head's layout), one of a
            # value per head is the space;
            # named as a space is (:func:`_named_after`)
            runs = sorted({sol.atoms[a][0] for a, h in tags.items() if h >= 0})
            if runs:
                base = p.runs[_named_after(p.runs, runs, lambda r: r)[0]]["origin"]
            members = [sol.atoms[i] for i in sol.classes[fam.root]]
            space = functools.partial(
                SpaceInfo, role="hidden", atoms=members,
                origins=sorted({p.runs[r]["origin"] for r, _, _ in members}),
                ops=list(dict.fromkeys(s.op for s in fam.splits)),
            )  # fmt: skip
            # an ensemble's members that an output holds are its neurons (_read_heads)
            role = sol.roles.get(fam.root, "hidden")
            name = {"input": "in", "output": "out"}.get(role, f"{base}.head")
            infos[fam.root] = space(name, count, role=role)
            roots.insert(0, fam.root)
            # the query heads inside their blocks: a space keyed after the heads' (it has no
            # root of the solution's: the heads runs' class is the heads')
            queries = fam.root + 0.5 if any(v.group > 1 for v in found.values()) else None
            if queries is not None:
                infos[queries] = space(f"{base}.query", count * fam.group)
                roots.insert(1, queries)
            views.update(
                {
                    key: dataclasses.replace(v, heads=fam.root, queries=queries)
                    for key, v in found.items()
                }
            )
            # grouped-query attention: each key/value head's place a root of its own
            alias.update({r: (fam.root, j) for j, r in enumerate(fam.roots) if j})
        if roots:
            merged.append((fam, roots, base))
    return alias, merged, views


@dataclasses.dataclass(frozen=True)
class _View:
    """How one parameter axis reads a family of heads (:func:`_merge_heads`).

    ``layout`` is a tuple (one head's pieces, or one query head's where ``group`` > 1: the
    axis viewed as ``(heads, one head)``, ``(heads, query heads, one query head)`` or, where
    ``tiled``, ``(query heads, heads, one query head)``; where ``per_head`` is set, a stacked
    parameter's axis that is one head's pieces, its heads on axis ``per_head``), a list (the spans of
    :func:`_head_spans`: no view) or ``None`` (the axis is the heads themselves, one value per
    head: :func:`_heads_axis`); ``heads`` is the root of the heads' space (one neuron per
    block), ``queries`` the key of the query heads' space.
    """

    count: int
    layout: Any
    heads: Any = None
    group: int = 1
    queries: Any = None
    tiled: bool = False
    per_head: int | None = None

    @property
    def extra(self) -> int:
        """How many axes the view adds."""
        return 1 + int(self.group > 1)

    @property
    def spaces(self) -> list:
        """The keys of the heads' spaces it reads."""
        return [r for r in (self.heads, self.queries) if r is not None]

    def axes(self, infos: dict, at: int) -> tuple[tuple, list]:
        """``(shape, labels)`` of the axes that replace the one viewed, the first at ``at``."""
        block = at + 1 if self.tiled else at
        shape, labels = [self.count], [infos[self.heads].name]
        if self.group > 1:
            # tiled: (query heads, heads, one query head), query head t of every block first
            shape.insert(0 if self.tiled else 1, self.group)
            labels.insert(0 if self.tiled else 1, Inner(infos[self.queries].name, block))
        shape.append(sum(w for _, w in self.layout))
        labels.append(_head_label(self.layout, infos, block))
        return tuple(shape), labels


def _read_heads(
    sol: _Solution, fam: heads.Family, tags: dict, at: dict, inner_of: dict, io: list,
    group: int, near: dict | None,
) -> dict | None:  # fmt: skip
    """``(param key, axis) -> _View`` (its ``heads`` and ``queries`` unset) for every axis that
    reads ``fam``'s heads alone, where every label reads them one head after another, run after
    run or not at all; ``None`` where one reads them otherwise.

    With ``group`` > 1 the query heads permute inside their blocks too: an axis that reads them
    must read them one query head after another in every block (:func:`_query_pattern`), and
    no other axis may read a query head's fixed dims alone."""
    p, count = sol.problem, fam.count
    fine, tiled = {}, False
    if group > 1:
        fine = _spread_tags(_query_seeds(fam), near)
        ways = {s.id in fam.tiled for s in fam.splits if fam.units[s.id] == group}
        if len(ways) > 1:  # query heads tiled by one split and in a row by another
            return None
        tiled = ways.pop()
    found: dict = {}
    # a stacked parameter's axis read per head (stacked.adopt): one head's layout, the heads
    # the parameter's own heads axis
    mine = {s.id: s for s in fam.splits}
    adopted = {(key, j): (i, sid) for key, i, j, sid, _ in p.adopted}
    for (key, j), (i, sid) in adopted.items():
        if sid not in mine:
            continue
        atoms = [x for chunk in fam.chunks(mine[sid]) for x in sol.label_atoms(chunk)]
        per_head = _per_head(sol, atoms, tags, at, count)
        layouts = [_layout(pieces) for pieces in per_head or ()]
        if not layouts or any(x != layouts[0] for x in layouts):
            return None
        found[(key, j)] = _View(count, layouts[0], per_head=i)
    for key, param in p.params.items():
        for k, lab in enumerate(param.axes):
            if (key, k) in adopted:
                continue
            atoms = sol.label_atoms(lab) if lab else []
            direct = _heads_axis(sol, fam, atoms)
            if direct is None:
                return None
            if direct:  # one value per head: the heads' own space, no view
                found[(key, k)] = _View(count, None)
                continue
            unit = (
                _query_pattern(sol, atoms, tags, fine, at, count, group, tiled)
                if group > 1
                else None
            )
            if unit is not None:
                layout = unit
            elif any(fine.get(a, -1) >= 0 for a in atoms):
                # a query head's dims: only run after run ([q | k | v] under RoPE)
                layout = _head_spans(sol, atoms, tags, at, count, fine, group)
                if layout is None:
                    return None
            elif group > 1 and _repeats(sol, atoms, at):
                return None  # a column read twice, not query head by query head
            else:
                layout = _head_pattern(sol, atoms, tags, at, count)
                if layout is None:  # the heads read run after run: [q | k | v] under RoPE
                    layout = _head_spans(sol, atoms, tags, at, count)
            if layout and not any(r in inner_of for r in sol.roots(param.axes)):
                found[(key, k)] = (
                    _View(count, layout, group=group, tiled=tiled)
                    if unit is not None
                    or (isinstance(layout, list) and any(w == "query" for w, _ in layout))
                    else _View(count, layout)
                )
            elif layout != 0:
                return None
    for lab in io:
        atoms = sol.label_atoms(lab)
        held = _heads_axis(sol, fam, atoms)
        # an input or output holds a value per head: only an ensemble's members may be its
        # neurons (each member's output), attention heads stay in place
        if held is None or (held and not all(s.stacked for s in fam.splits)):
            return None
        if _head_pattern(sol, atoms, tags, at, count) != 0:
            return None
    return found


def _heads_axis(sol: _Solution, fam: heads.Family, atoms: list) -> bool | None:
    """Whether a label of ``atoms`` is ``fam``'s heads themselves, one position per head in
    head order (a parameter of one value per head: a bias table's columns, a temperature):
    ``True``; ``False`` where it takes none of their places; ``None`` where it takes some
    otherwise (a few heads, another order, with other neurons beside them)."""
    taken = [sol.uf.find(a) in fam.roots for a in atoms]
    if not any(taken):
        return False
    if not all(taken):
        return None
    at = [(sol.uf.find(a), o) for a in atoms for o in range(sol.atoms[a][2] - sol.atoms[a][1])]
    return True if at == fam.places else None


def _repeats(sol: _Solution, atoms: list, at: dict) -> bool:
    """Whether a label of ``atoms`` reads some neurons of the heads' columns more than once:
    where it does not read them query head by query head, maybe its query heads' rows beside
    their key head's (Falcon's fused layout) or several query heads' rows as one."""
    roots = [r for r in (sol.uf.find(a) for a in atoms) if r in at]
    return len(roots) != len(set(roots))


def _head_spans(
    sol: _Solution, atoms: list, tags: dict, at: dict, count: int, fine: dict | None = None,
    group: int = 1,
) -> list | None:  # fmt: skip
    """How a label of ``atoms`` reads a family's heads run after run: a list of pieces,
    ``("span", width)`` for the heads' fixed dims one head after another (each head ``width``
    positions), ``("query", width)`` for the query heads' fixed dims one query head after
    another (where the ``group`` query heads of a block permute inside it: ``fine`` says
    whose dims an atom is), ``("column", column)`` for a whole column of heads, ``("fixed",
    width)`` for positions no head holds alone, ``("space", root)`` for neurons every head
    reads (multi-query attention's value head), ``("spanned", root)`` for the heads one after
    another, each a copy of those neurons (its queries, each the key head's features);
    ``None`` where it reads them otherwise or holds no span.

    One projection sliced into ``[q | k | v]`` under RoPE: ``[("span", d), ("span", d),
    ("column", v)]``; under grouped-query attention ``[("query", d), ("span", d), ("column",
    v)]``.
    """
    fine = fine or {}
    roots = [sol.uf.find(a) for a in atoms]
    width = [sol.atoms[a][2] - sol.atoms[a][1] for a in atoms]
    pieces: list = []
    i = 0
    while i < len(atoms):
        if tags.get(atoms[i], -1) >= 0 and roots[i] not in sol.fixed_roots:
            # heads 0, 1, ..., count - 1, each a copy of the neurons every head shares
            # (multi-query attention's queries, each the one key head's features)
            run = list(range(i, i + count))
            if run[-1] >= len(atoms) or any(
                tags.get(atoms[j], -1) != h or roots[j] != roots[i] for h, j in enumerate(run)
            ):
                return None
            pieces.append(("spanned", roots[i]))
            i += count
        elif tags.get(atoms[i], -1) >= 0:  # heads 0, 1, ..., count - 1, each its fixed dims
            per_head, j = [0] * count, i
            while j < len(atoms) and roots[j] in sol.fixed_roots:
                h = tags.get(atoms[j], -1)
                prev = tags[atoms[j - 1]] if j > i else 0
                if h not in (prev, prev + 1) or (j == i and h):
                    break
                per_head[h] += width[j]
                j += 1
            if j == i or tags[atoms[j - 1]] != count - 1 or len(set(per_head)) > 1:
                return None
            span = _query_span(sol, atoms[i:j], fine, count, group) if group > 1 else None
            if span is None and any(fine.get(a, -1) >= 0 for a in atoms[i:j]):
                return None  # query heads' dims not read one query head after another
            pieces.append(("span", per_head[0]) if span is None else ("query", span))
            i = j
        elif roots[i] in at and roots[i] not in sol.fixed_roots:
            column, h = at[roots[i]]
            if h or tuple(roots[i : i + len(column)]) != column:
                return None
            pieces.append(("column", column))
            i += len(column)
        elif roots[i] in sol.fixed_roots:
            pieces.append(("fixed", width[i]))
            i += 1
        elif tags.get(atoms[i], -1) < 0 and roots[i] not in at:  # neurons every head reads
            pieces.append(("space", roots[i]))  # (multi-query attention's one value head)
            i += 1
        else:
            return None
    return pieces if any(what in ("span", "query", "spanned") for what, _ in pieces) else None


def _query_span(sol: _Solution, atoms: list, fine: dict, count: int, group: int) -> int | None:
    """The width of each query head's run where ``atoms`` (one span of every block, in block
    order) hold, per block, its ``group`` query heads' fixed dims one after another, each as
    wide; ``None`` where they do not."""
    runs = _parts(_pieces(sol, atoms), count * group)
    if runs is None or any(
        fine.get(a) != k % group for k, run in enumerate(runs) for a, _, _ in run
    ):
        return None
    return sum(w for _, _, w in runs[0])


def _span_label(pieces: list, infos: dict, view: _View) -> Any:
    """The label of :func:`_head_spans`' pieces: spans of the heads' space, or of the query
    heads' (``view``'s), block spaces by name, fixed positions as ints."""
    names = {
        "span": lambda w: Span(infos[view.heads].name, w),
        "query": lambda w: Span(infos[view.queries].name, w),
        "column": lambda c: infos[c[0]].name,
        "space": lambda r: infos[r].name,
        "spanned": lambda r: Span(infos[view.heads].name, infos[r].name),
    }
    return _as_label([names[what](x) if what in names else x for what, x in pieces])


def _head_label(layout: tuple, infos: dict, head_axis: int) -> Any:
    """The label of one head's axis of :func:`_head_pattern`'s ``layout``: its fixed widths as
    ints, each column's piece the position inside the block of its block space that axis
    ``head_axis`` (the heads) reads, a shared space by name; ``None`` where every piece is
    fixed."""
    return _as_label(
        [
            width
            if column is None
            else infos[column].name
            if isinstance(column, int)
            else Inner(infos[column[0]].name, head_axis)
            for column, width in layout
        ]
    )


def _as_label(pieces: list) -> Any:
    """An axis label of ``pieces`` (space names, :class:`Inner` or :class:`Span` pieces, ints
    of fixed positions): consecutive ints joined, ``None`` where every piece is fixed, the one
    piece where there is one, else the composite.

    >>> _as_label([2, 3]), _as_label(["c1", 2, 3]), _as_label(["c1"])
    (None, ('c1', 5), 'c1')
    """
    out: list = []
    for x in pieces:
        if isinstance(x, int) and out and isinstance(out[-1], int):
            out[-1] += x
        else:
            out.append(x)
    if all(isinstance(x, int) for x in out):
        return None
    return out[0] if len(out) == 1 else tuple(out)


def _shared_roots(sol: _Solution, fam: heads.Family) -> set:
    """The roots of the dims every head of ``fam``'s shared splits holds (not fixed)."""
    return {
        sol.uf.find(a)
        for per_head in fam.fixed
        for atoms in per_head
        for a in atoms
        if sol.uf.find(a) not in sol.fixed_roots
    }


def _fixed_ties(sol: _Solution, shared: set) -> dict:
    """Atom -> the atoms the solution's ties join it to, among fixed atoms and those of the
    ``shared`` roots (dims every head of a split shares)."""
    near: dict = collections.defaultdict(list)
    for src, src_off, dst, dst_off, length, _ in sol.ties:
        pos = src_off
        while pos < src_off + length:
            i = sol.atom_id[(src, pos)]
            root = sol.uf.find(i)
            if root in sol.fixed_roots or root in shared:
                j = sol.atom_id[(dst, dst_off + pos - src_off)]
                near[i].append(j)
                near[j].append(i)
            pos = sol.atoms[i][2]
    return near


def _head_tags(sol: _Solution, fam: heads.Family, near: dict | None) -> dict:
    """Which head each atom tied to a fixed split's chunks stands for: atom -> head, or ``-1``
    for one tied to several heads (a table every head reads: RoPE's angles, a norm's weight
    per head dim). Followed through the ties among fixed atoms (``near``, from
    :func:`_fixed_ties`) from the chunks' own atoms, so that a layer whose outputs become the
    chunks after an elementwise op (Olmo-2's projection before its norm over every head) has
    its rows read head by head too."""
    seeds = {a: h for per_head in fam.fixed for h, atoms in enumerate(per_head) for a in atoms}
    return _spread_tags(seeds, near)


def _query_seeds(fam: heads.Family) -> dict:
    """Atom -> the query head inside its block (0 to ``group - 1``) whose fixed dims it is."""
    return {
        a: t
        for per_block in fam.queries
        for block in per_block
        for t, atoms in enumerate(block)
        for a in atoms
    }


def _spread_tags(seeds: dict, near: dict | None) -> dict:
    """``seeds`` (atom -> tag) followed through ``near``'s ties: an atom reached from one tag
    takes it, one reached from several takes ``-1`` (and passes nothing on)."""
    tags = dict(seeds)
    queue = collections.deque(tags)
    while queue:
        a = queue.popleft()
        for b in (near or {}).get(a, ()) if tags[a] >= 0 else ():
            if b not in tags:
                tags[b] = tags[a]
                queue.append(b)
            elif tags[b] != tags[a]:
                tags[b] = -1
    return tags


def _head_pattern(sol: _Solution, atoms: list, tags: dict, at: dict, count: int) -> Any:
    """How a label of ``atoms`` reads a family's heads: ``0`` where it reads no head alone (no
    atom of :func:`_head_tags`' heads, its columns whole and in order), else the layout of one
    head where it reads the heads one after another, each alike (a projection laid out per
    head): a tuple of ``(column, width)``, ``column`` the column (of ``at``) whose block a
    piece reads, the root of a space every head shares, or ``None`` for fixed positions.
    ``None`` where it does neither.

    GPT-NeoX's fused rows hold per head its queries, keys and values: ``((qk, d), (qk, d),
    (v, d))``; with the first ``r`` of them rotated (partial rotary) ``((None, r), (qk, d -
    r), (None, r), (qk, d - r), (v, d))``.
    """
    roots = [sol.uf.find(a) for a in atoms]
    if all(tags.get(a, -1) < 0 for a in atoms) and _whole_columns(roots, at):
        return 0
    per_head = _per_head(sol, atoms, tags, at, count)
    if per_head is None:
        return None
    layouts = [_layout(pieces) for pieces in per_head]
    return layouts[0] if all(x == layouts[0] for x in layouts) else None


def _per_head(sol: _Solution, atoms: list, tags: dict, at: dict, count: int) -> list | None:
    """Per head, the ``(atom, column, width)`` of a label's atoms where it reads the heads one
    after another (``column`` as in :func:`_head_pattern`); ``None`` where it does not."""
    heads: list = []  # per atom: (head, its column, shared root or None)
    for a in atoms:
        root = sol.uf.find(a)
        if tags.get(a, -1) >= 0:
            heads.append((tags[a], None if root in sol.fixed_roots else root))
        elif root in at and root not in sol.fixed_roots:
            heads.append((at[root][1], at[root][0]))
        else:
            heads.append((-1, None))
    order = [h for h, _ in heads]
    if min(order, default=-1) < 0 or order != sorted(order) or set(order) != set(range(count)):
        return None
    per_head: list = [[] for _ in range(count)]
    for a, (h, column) in zip(atoms, heads):
        per_head[h].append((a, column, sol.atoms[a][2] - sol.atoms[a][1]))
    return per_head


def _layout(pieces: list) -> tuple:
    """The ``(column, width)`` layout of ``(atom, column, width)`` pieces, consecutive fixed
    positions joined."""
    out: list = []
    for _, column, width in pieces:
        if column is None and out and out[-1][0] is None:
            out[-1] = (None, out[-1][1] + width)
        else:
            out.append((column, width))
    return tuple(out)


def _query_pattern(
    sol: _Solution, atoms: list, tags: dict, fine: dict, at: dict, count: int, group: int,
    tiled: bool = False,
) -> tuple | None:  # fmt: skip
    """The layout of one query head (as :func:`_head_pattern`'s of one head) where a label of
    ``atoms`` reads a family's heads one after another and, inside each block, its ``group``
    query heads one after another, each alike; ``None`` where it does not.

    A query head's fixed dims must be those of that query head (``fine``: atom -> query head
    inside its block, from :func:`_query_seeds`); a key head's, tied to every query head of
    its block, are not. Under grouped-query attention without RoPE, ``q``'s rows read per
    block ``((q, d), (q, d))`` for two query heads: one query head's layout ``((q, d),)``.
    Where the query heads read their key/value heads ``tiled`` (query head ``i`` the key/value
    head ``i % count``), the label reads query head 0 of every block, then query head 1, ...
    """
    if tiled:  # query head t of every block, then t + 1: ``group`` runs of the blocks
        runs = _parts(_pieces(sol, atoms), group)
        if runs is None:
            return None
        parts = []
        for t, run in enumerate(runs):
            per_head = _per_head(sol, [a for a, _, _ in run], tags, at, count)
            if per_head is None:
                return None
            parts += [(t, pieces) for pieces in per_head]
    else:  # in each block, its query heads one after another
        per_head = _per_head(sol, atoms, tags, at, count)
        if per_head is None:
            return None
        parts = []
        for pieces in per_head:
            if (split := _parts(pieces, group)) is None:
                return None
            parts += list(enumerate(split))
    # a query head's fixed dims must be its own
    if any(column is None and fine.get(a) != t for t, part in parts for a, column, _ in part):
        return None
    units = {_layout(part) for _, part in parts}
    return units.pop() if len(units) == 1 else None


def _pieces(sol: _Solution, atoms: list) -> list:
    """``(atom, None, width)`` for each of ``atoms``: :func:`_parts`' pieces, no column."""
    return [(a, None, sol.atoms[a][2] - sol.atoms[a][1]) for a in atoms]


def _parts(pieces: list, n: int) -> list | None:
    """``(atom, column, width)`` pieces cut into ``n`` runs of equal width at atom bounds;
    ``None`` where an atom would be cut."""
    total = sum(w for _, _, w in pieces)
    if total % n:
        return None
    step, pos = total // n, 0
    parts: list = [[] for _ in range(n)]
    for piece in pieces:
        t = pos // step
        if (pos + piece[2] - 1) // step != t:
            return None
        parts[t].append(piece)
        pos += piece[2]
    return parts


def _whole_columns(roots: list, at: dict) -> bool:
    """Whether a label's ``roots`` read every column of heads they touch whole and in order."""
    k = 0
    while k < len(roots):
        if roots[k] in at:
            column, i = at[roots[k]]
            if i or tuple(roots[k : k + len(column)]) != column:
                return False
            k += len(column)
        else:
            k += 1
    return True


def _name_heads(families: list, infos: dict, taken: dict) -> dict:
    """One :class:`BlockInfo` per merged family of heads, named after its first block space's
    creator (``"<origin>.heads"``); sets each block space's ``blocks``."""
    used = {s.name for s in infos.values()} | set(taken)
    out: dict = {}
    for fam, roots, base in families:
        name = f"{base}.heads"
        while name in used:
            name += "'"
        used.add(name)
        info = BlockInfo(
            name, fam.count, [], list(dict.fromkeys(s.op for s in fam.splits)), heads=True,
            fixed=fam.still, splits=tuple(s.id for s in fam.splits),
        )  # fmt: skip
        for root in roots:
            infos[root].blocks = name
            info.spaces.append(infos[root].name)
        out[name] = info
    return out


@dataclasses.dataclass(frozen=True)
class _InnerRef:
    """An axis inside the blocks of ``space``, the block chosen by an axis labelled ``row``."""

    space: str
    row: str


def _name_spaces(infos: dict) -> None:
    """Readable, unique, deterministic names: the creator's, ``/k`` for the k-th of several."""
    ranked = sorted(infos.items(), key=lambda kv: (_ORDER[kv[1].role], kv[0]))
    counts: dict = {}
    for _, s in ranked:
        counts[s.name] = counts.get(s.name, 0) + 1
    used: set = set()
    seen: dict = {}
    for _, s in ranked:
        base = s.name
        if counts[base] > 1:
            seen[base] = seen.get(base, -1) + 1
            name = f"{base}/{seen[base]}"
        else:
            name = base
        while name in used:
            name += "'"
        used.add(name)
        s.name = name


def _name_blocks(
    holding: list, link_uf: _UnionFind, sol: _Solution, count_of: dict, infos: dict
) -> dict:
    """One :class:`BlockInfo` per group of links that share spaces, named after the first
    link's op (``"<origin>.groups"``, ``"<origin>.heads"``); sets each block space's
    ``blocks``."""
    groups: dict = {}
    for link in holding:
        groups.setdefault(link_uf.find(link.id), []).append(link)
    used = {s.name for s in infos.values()}
    out: dict = {}
    for links in groups.values():
        name = f"{links[0].origin}.{links[0].what}"
        while name in used:
            name += "'"
        used.add(name)
        roots = list(dict.fromkeys(r for link in links for m in link.members for r in sol.roots(m)))
        info = BlockInfo(name, links[0].count, [], list(dict.fromkeys(lk.op for lk in links)))
        for root in sorted(roots, key=lambda r: (_ORDER[infos[r].role], r)):
            infos[root].blocks = name
            info.spaces.append(infos[root].name)
        out[name] = info
    return out


def _is_position(problem: _Problem, sol: _Solution) -> Callable[[int, int, int], bool]:
    """Whether neurons ``[off, off + length)`` of run ``r`` are positions, not neurons:
    constants (padding, concatenated constants, a constant's equal slices), or an axis of a
    parameter that nothing ties to any other run (a position table's rows, met only by a
    token axis)."""
    runs = problem.runs
    alone = {root: {sol.atoms[i][0] for i in atoms} for root, atoms in sol.classes.items()}

    def positions(r: int, off: int, length: int) -> bool:
        if runs[r]["kind"] in ("fixed", "heads", "constant"):
            return True
        return runs[r]["kind"] == "param" and all(
            alone[sol.uf.find(i)] == {r} for i in sol.atoms_in(r, off, length)
        )

    return positions


def _fixes_neurons(b: Any, positions: Callable[[int, int, int], bool], still: set) -> bool:
    """Whether a :class:`~nfncompile.frontend.labels.Broken` record fixed any neurons: one
    that met positions and fixed only positions (a position table's rows added to tokens)
    broke no symmetry; any other (an op no rule knows, unread rows) is reported. Runs that
    stay in place anyway (``still``: constants' positions, attention heads, see
    :mod:`~nfncompile.frontend.heads`) break nothing when fixed either (such a record was
    listed as "fixed 0 ()")."""
    if b.reason == POSITIONS or (b.neurons and all(r in still for r, _, _ in b.neurons)):
        return False
    if b.reason not in MEETS_POSITIONS or not b.neurons:
        return True
    return not all(positions(*item) for item in b.neurons)


def _broken(graph: nx.MultiGraph, problem: _Problem, fallen: dict, positions: Callable) -> list:
    runs, still = problem.runs, problem.still

    def neurons(items: Any, tables: bool) -> tuple:
        """Names and count of the neurons of ``items`` (with ``tables``, a parameter axis
        nothing ties to another run is positions, not neurons)."""
        names, count = [], 0
        for r, off, length in items:
            if r in still or (tables and positions(r, off, length)):
                continue
            origin = runs[r]["origin"]
            whole = off == 0 and length == runs[r]["size"]
            names.append(origin if whole else f"{origin}[{off}:{off + length}]")
            count += length
        return sorted(set(names)), count

    out = []
    for b in graph.graph["broken"]:
        if not _fixes_neurons(b, positions, still):
            continue
        names, count = neurons(b.neurons, b.reason in MEETS_POSITIONS)
        out.append(BrokenInfo(b.op, b.node, b.reason, names, count))
    for link in problem.links:
        if link.id not in fallen:
            continue
        for segs, reason in link.fixes:
            items = [(s.run, s.offset, s.length) for s in segs]
            out.append(BrokenInfo(link.op, link.node, reason, *neurons(items, True)))
    # a stacked parameter's members that each met their own data where their units are read
    # across members: fixed by the reading (heads.rewrite), named where they met the data
    for s in problem.splits:
        if ("fix heads", s.id) in fallen and s.heads in problem.heads_held:
            op, node = problem.heads_held[s.heads]
            # named after the parameters' members axes tied to them (``l1.weight.d0``)
            axes = {
                runs[r]["origin"] for t in problem.ties if s.heads in (t[0], t[2])
                for r in (t[0], t[2]) if runs[r]["kind"] == "param"
            }  # fmt: skip
            names = sorted(axes) or [runs[s.heads]["origin"]]
            out.append(BrokenInfo(op, node, _OWN_DATA, names, len(s.chunks)))
    return out


#: Why a stacked parameter's members are fixed where their split does not hold
_OWN_DATA = (
    "each member meets its own data or positions there, and an op reads their units across members"
)


def _ops(graph: nx.MultiGraph, problem: _Problem, fallen: dict, positions: Callable) -> list:
    ops = {node: OpInfo(op, node) for op, node in graph.graph.get("calls", [])}
    still = problem.still
    for link in problem.links:
        if link.id in fallen and link.node in ops:
            ops[link.node].fell_back = fallen[link.id]
    for b in graph.graph["broken"]:
        if b.node in ops and _fixes_neurons(b, positions, still):
            ops[b.node].broke.append(b.reason)
    for link in problem.links:
        if link.id in fallen and link.node in ops:
            ops[link.node].broke += [reason for _, reason in link.fixes]
    return list(ops.values())
