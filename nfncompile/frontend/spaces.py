"""Stage 3 of the front end: read the neuron spaces off the symmetry graph.

The constraints of :func:`nfncompile.frontend.graph.build_symmetry_graph` are interval equalities
between runs of neurons (ties), cut points (group boundaries, slices) and fixed intervals.
:func:`derive_spaces` solves them:

1. every boundary of every tie, parameter-axis label, input/output label and fixed interval
   is a *cut* in its run; cuts are propagated through the ties to a fixpoint, so that tied
   intervals are cut at the same relative positions;
2. the *atoms* are the intervals between consecutive cuts; union-find over atoms (following
   the ties, which now map atoms onto atoms of equal length) gives the classes;
3. a class with a fixed atom is fixed; the others are the neuron spaces. A class holding the
   model input's channels has role ``input``, the model output's ``output``, else ``hidden``.

The result is one :class:`~nfncompile.frontend.derivation.Derivation`: the
:class:`~nfncompile.spec.WeightSpaceSpec`, the provenance of every space, how the spaces act on
the model's inputs and outputs, and what broke symmetry.

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
from typing import Any

import networkx as nx

from ..spec import ParamSpec, Space, WeightSpaceSpec
from .derivation import BrokenInfo, Derivation, IOAxes, SpaceInfo, TensorAxes

__all__ = ["derive_spaces"]


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
    for s in label or ():
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
            labels += [tuple(type(s)(s.run, s.offset, s.length) for s in lab), None]
        elif q == 0:
            view.append(n)
            labels.append(None)
        else:
            view.append(n)
            labels.append(lab)
    return (tuple(view) if split else None), labels


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
        every float state_dict entry in state_dict order), the provenance of each space, the
        input/output labels and what broke symmetry.
    """
    runs = {n[1]: d for n, d in graph.nodes(data=True) if n[0] == "run"}
    ties = [d for _, _, d in graph.edges(data=True) if d.get("kind") == "tie"]
    graph_params = graph.graph["params"]
    io_in = [(name, info) for name, info in graph.graph["inputs"]]
    io_out = graph.graph["outputs"]
    io_views = {
        "in": [_io_axes(info) for _, info in io_in],
        "out": [_io_axes(info) if info is not None else None for info in io_out],
    }

    # 1. cuts, propagated through ties
    cuts = {r: {0, d["size"]} | set(d["cuts"]) for r, d in runs.items()}
    for r, d in runs.items():
        for off, length, _ in d["fixed"]:
            cuts[r].update((off, off + length))
    for p in graph_params.values():
        for lab in p.axes:
            _label_cuts(lab, cuts)
    for views in io_views.values():
        for v in views:
            for lab in v[1] if v else ():
                _label_cuts(lab, cuts)
    by_run: dict = {r: [] for r in runs}
    for t in ties:
        cuts[t["src"]].update((t["src_off"], t["src_off"] + t["length"]))
        cuts[t["dst"]].update((t["dst_off"], t["dst_off"] + t["length"]))
        by_run[t["src"]].append((t["src_off"], t["dst"], t["dst_off"], t["length"]))
        by_run[t["dst"]].append((t["dst_off"], t["src"], t["src_off"], t["length"]))
    stack = [(r, c) for r, cs in cuts.items() for c in cs]
    while stack:
        r, c = stack.pop()
        for lo, other, olo, length in by_run[r]:
            if lo < c < lo + length:
                c2 = olo + (c - lo)
                if c2 not in cuts[other]:
                    cuts[other].add(c2)
                    stack.append((other, c2))

    # 2. atoms and union-find
    starts = {r: sorted(cs)[:-1] for r, cs in cuts.items()}
    stops = {r: sorted(cs)[1:] for r, cs in cuts.items()}
    atom_id: dict = {}
    atoms: list = []
    for r in sorted(runs):
        for a, b in zip(starts[r], stops[r]):
            atom_id[(r, a)] = len(atoms)
            atoms.append((r, a, b))
    uf = _UnionFind(len(atoms))
    tie_ops: dict = {}
    for t in ties:
        p = t["src_off"]
        while p < t["src_off"] + t["length"]:
            i = atom_id[(t["src"], p)]
            j = atom_id[(t["dst"], t["dst_off"] + p - t["src_off"])]
            uf.union(i, j)
            tie_ops.setdefault(i, []).append(t["op"])
            p = atoms[i][2]

    # 3. classes
    def atoms_in(r: int, off: int, length: int) -> list:
        k = bisect.bisect_left(starts[r], off)
        out = []
        while k < len(starts[r]) and starts[r][k] < off + length:
            out.append(atom_id[(r, starts[r][k])])
            k += 1
        return out

    fixed_roots = set()
    for r, d in runs.items():
        for off, length, _ in d["fixed"]:
            fixed_roots.update(uf.find(i) for i in atoms_in(r, off, length))
    roles: dict = {}
    for role, views in (("output", io_views["out"]), ("input", io_views["in"])):
        for v in views:
            for lab in v[1] if v else ():
                for s in lab or ():
                    for i in atoms_in(s.run, s.offset, s.length):
                        roles[uf.find(i)] = role  # input overrides output (assigned last)
    classes: dict = {}
    for i in range(len(atoms)):
        classes.setdefault(uf.find(i), []).append(i)

    infos: dict = {}
    for root, members in classes.items():
        if root in fixed_roots:
            continue
        first = atoms[min(members)]
        role = roles.get(root, "hidden")
        base = {"input": "in", "output": "out"}.get(role, runs[first[0]]["origin"])
        ops = []
        for i in members:
            for op in tie_ops.get(i, ()):
                if op not in ops:
                    ops.append(op)
        infos[root] = SpaceInfo(
            base,
            first[2] - first[1],
            role,
            atoms=[atoms[i] for i in members],
            origins=sorted({runs[atoms[i][0]]["origin"] for i in members}),
            ops=ops,
            touched=list(dict.fromkeys(op for i in members for op in runs[atoms[i][0]]["touched"])),
        )
    # readable, unique, deterministic names
    order = {"input": 0, "hidden": 1, "output": 2}
    ranked = sorted(infos.items(), key=lambda kv: (order[kv[1].role], kv[0]))
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
    space_of = {root: s for root, s in infos.items()}

    def axis_label(lab: Any) -> Any:
        if not lab:
            return None
        pieces: list = []
        for s in lab:
            for i in atoms_in(s.run, s.offset, s.length):
                info = space_of.get(uf.find(i))
                _, a, b = atoms[i]
                if info is None:
                    if pieces and isinstance(pieces[-1], int):
                        pieces[-1] += b - a
                    else:
                        pieces.append(b - a)
                else:
                    pieces.append(info.name)
        if all(isinstance(p, int) for p in pieces):
            return None
        if len(pieces) == 1:
            return pieces[0]
        return tuple(pieces)

    def ops_of(lab: Any) -> set:
        return {uf.find(i) for s in lab or () for i in atoms_in(s.run, s.offset, s.length)}

    params = []
    for key, p in graph_params.items():
        params.append(ParamSpec(key, p.shape, tuple(axis_label(lab) for lab in p.axes), p.view))
        for k, lab in enumerate(p.axes):
            for root in ops_of(lab):
                if root in space_of:
                    info = space_of[root]
                    if f"{key}[{k}]" not in info.params:
                        info.params.append(f"{key}[{k}]")
                    for op in p.ops:
                        if op not in info.ops:
                            info.ops.append(op)
    io = IOAxes(
        tuple(
            TensorAxes(info.shape, v[0], tuple(axis_label(x) for x in v[1]))
            for (_, info), v in zip(io_in, io_views["in"])
        ),
        tuple(
            None if v is None else TensorAxes(info.shape, v[0], tuple(axis_label(x) for x in v[1]))
            for info, v in zip(io_out, io_views["out"])
        ),
    )

    broken = []
    for b in graph.graph["broken"]:
        if b.reason == "fixed positions (not neurons)":
            continue
        names, count = [], 0
        for r, off, length in b.neurons:
            if runs[r]["kind"] == "fixed":
                continue  # constant positions (padding, concatenated constants), not neurons
            origin = runs[r]["origin"]
            whole = off == 0 and length == runs[r]["size"]
            names.append(origin if whole else f"{origin}[{off}:{off + length}]")
            count += length
        broken.append(BrokenInfo(b.op, b.node, b.reason, sorted(set(names)), count))

    run_space = {}
    for r in runs:
        root = uf.find(atom_id[(r, starts[r][0])]) if starts[r] else None
        run_space[r] = space_of[root].name if root in space_of else "fixed"
    ranked = [s for _, s in sorted(infos.items(), key=lambda kv: (order[kv[1].role], kv[0]))]
    spec = WeightSpaceSpec([Space(s.name, s.size, s.role) for s in ranked], params)
    return Derivation(spec, {s.name: s for s in ranked}, io, broken, run_space, graph)
