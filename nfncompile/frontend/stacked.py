"""Stacked weights: a parameter with an axis per head, ensemble member or expert.

An ensemble written with stacked weights (``x @ W`` with ``W`` of shape ``(members, in,
out)``, EDAC's and REDQ's critics, a ``torch.func.stack_module_state`` ensemble), a mixture of
experts whose experts are one ``(experts, d, hidden)`` tensor, or attention whose projections
are ``(d_model, heads, d_head)`` tensors read by ``einsum`` (XLNet, Transformer-XL) holds one
sub-network per index of one axis. Each sub-network's hidden units may permute on their own:
the exact group moves member ``e``'s units by a permutation of its own (and the members
themselves as blocks, where nothing meets them in place), which is the reading
:mod:`~nfncompile.frontend.heads` gives attention heads split out of one projection.

Two steps bring such a parameter into that reading:

* :func:`seed`: a product whose operand is a parameter with a batch axis (``matmul``, ``bmm``,
  ``einsum``) makes its output columns a :class:`~nfncompile.frontend.labels.HeadSplit` of a
  fresh run of ``members * columns`` neurons, its heads the batch axis: the product's output
  holds ``(heads, dims)`` as attention's ``view(B, T, H, D)`` does;
* :func:`adopt`: after the forward, a parameter axis tied whole to a split's dims, whose
  parameter has another axis tied whole to that split's heads (the stacked weight's own
  columns, the next layer's stacked rows, a stacked bias ``(members, 1, out)``, XLNet's
  ``r_w_bias`` of shape ``(heads, d_head)``), is read per head: it becomes the dims of a split
  of its own (a fresh run standing for its ``heads x dims`` entries), so that a tie with the
  other split's dims ties them head by head instead of tying every head's to one.

Hugging Face's ``grouped_mm`` experts (``transformers`` 5's default) run the token-expert
pairs sorted by expert: ``grouped_mm(rows, W, offs)`` multiplies group ``e`` of the rows (cut
at the cumulative counts ``offs``) by ``W[e]``. There the experts are no dim of any tensor:
:func:`grouped` seeds the weight and labels the product's rows with a run that stands for the
split's heads (each row is in one expert's group, so its columns are that expert's units), and
a later ``grouped_mm`` with the same ``offs`` over those rows reads its weight's contracted
axis per expert (:func:`adopt`). Rows reordered, summed or mixed across groups hold the units
without that run, and the split falls back. A parameter read at the sorted ids the offsets
were counted from (:func:`expert_ids`; GPT-OSS's bias per expert) gives each row its group's
expert's entry (:func:`gathered`): its rows are the same run, its first axis the experts. An
expert's interleaved gate and up (``h[..., ::2]``, ``h[..., 1::2]``) make the split in
neurons of two positions each (:meth:`~.analysis.SymmetryAnalysis.split_heads`).

A ``torch.vmap`` over stacked weights (``functional_call`` on each member's slice) is traced as
the loop it computes (:mod:`~nfncompile.frontend.vmap`). :func:`member_slice` reads each
weight's slice for member ``i`` as chunk ``i`` of a split of each of its axes (the members'
axis is not read at ``i``), and :func:`member_stack` reads the stack of the results as the
members (the splits' heads), a dim of member ``i``'s chunks in each result as that split's
dims. Where a mapped input is data (each member reads its own), the members are held where
they stand: fixed blocks. Where the results are not stacked, the members are fixed.

Where the heads cannot move as blocks, or an op reads the dims across heads, the splits fall
back to the conservative reading (one permutation for every head's dims), as before.

Examples
--------
>>> import torch
>>> from torch import nn
>>> import nfncompile as nfc
>>> class Ensemble(nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.w1 = nn.Parameter(torch.randn(3, 4, 5))
...         self.w2 = nn.Parameter(torch.randn(3, 5, 2))
...     def forward(self, x):
...         return (torch.relu(x @ self.w1) @ self.w2).mean(0)
>>> spec = nfc.trace(Ensemble(), torch.randn(6, 4), channel_dim=-1)
>>> spec["w1"].axes
('w1.head', 'in', Inner('w1', 0))
>>> spec.block_shape("w1")  # each member's 5 hidden units permute on their own
(3, 5)
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

import networkx as nx
import torch.fx
import torch.nn.functional as F

from .fx import call_name
from .labels import HeadSplit, Seg, TensorLabels, Tie

if TYPE_CHECKING:
    from .analysis import SymmetryAnalysis

__all__ = [
    "seed", "grouped", "expert_ids", "gathered", "adopt", "whole_run", "member_slice",
    "member_stack",
]  # fmt: skip


def whole_run(a: SymmetryAnalysis, label: Any, spans: bool = False) -> int | None:
    """The run ``label`` is, whole and of single positions (or, with ``spans``, of neurons
    spanning any number of positions each); else ``None``."""
    if not isinstance(label, tuple) or len(label) != 1:
        return None
    (s,) = label
    whole = s.offset == 0 and s.length == a.runs[s.run].size
    return s.run if whole and (s.inner == 1 or spans) else None


def seed(a: SymmetryAnalysis, t: TensorLabels, h: int, d: int) -> TensorLabels | None:
    """A product's operand ``t``, a stacked parameter, with its batch dim ``h`` relabelled as
    the heads and its output columns ``d`` as the per-head dims (each one whole parameter
    axis). Records a split of a fresh run of ``t.shape[h] * t.shape[d]`` neurons (named after
    the parameter's module) into one chunk per head and ties the parameter's axes to it;
    returns ``None`` (nothing recorded) where the dims are not two whole parameter axes of
    more than one position each."""
    hr, dr = whole_run(a, t.labels[h]), whole_run(a, t.labels[d], spans=True)
    if hr is None or dr is None or not {hr, dr} <= a.param_runs:
        return None
    # a column may be a neuron of several positions (an interleaved gate and up, made in
    # blocks): the chunks and the per-head dims are then made so too (rules.shape._sliced)
    count, width = a.runs[hr].size, t.shape[d]
    if count < 2 or a.runs[dr].size < 2:
        return None
    flat = a.new_run(count * width, "neuron", _origin(a, dr))
    chunks = [a.slice_label(flat, k * width, (k + 1) * width) for k in range(count)]
    split = a.split_heads(chunks, stacked=True)
    if split is None:
        return None
    labels = list(t.labels)
    for k, new in zip((h, d), split):
        a.tie(t.labels[k], new)
        labels[k] = new
    return TensorLabels(t.shape, tuple(labels))


def grouped(
    a: SymmetryAnalysis, x: TensorLabels, w: TensorLabels, offs: Any, bias: TensorLabels | None
) -> TensorLabels:
    """``grouped_mm(x, w, offs=offs)``: rows ``x`` ``(S, K)``, cut into groups at ``offs``,
    group ``e`` times matrix ``e`` of ``w`` ``(E, K, N)`` (Hugging Face's ``grouped_mm``
    experts: the tokens sorted by expert, ``offs`` the cumulative count per expert).

    Where ``w`` is a stacked parameter (the experts' weights), its output columns are each
    expert's own units (:func:`seed`) and the output's rows a fresh run that stands for the
    experts (:attr:`~.analysis.SymmetryAnalysis.routed`): each row is in one expert's group,
    so a tensor holding those rows holds the experts as a heads dim would, and each row's
    columns are its expert's units. The experts stay in place (the groups meet the matrices
    by position): fixed blocks. A later ``grouped_mm`` with the same ``offs`` whose rows are
    those reads its weight's contracted axis per expert (:func:`adopt`). Elsewhere the
    contracted axes are tied and the rows and the matrices' dim fixed (one permutation for
    every expert's units). A ``bias`` ``(E, N)`` adds a row per expert to its group's rows;
    ``(N,)``, one row to all.
    """
    why = "grouped_mm meets its groups of rows with its matrices by position"
    rows = x.labels[0]
    experts, inner = whole_run(a, w.labels[0]), whole_run(a, w.labels[1])
    again = offs is not None and a.is_routed(rows) and a.routed[rows[0].run] == _offsets_key(offs)
    split = a.head_splits[a.routed_splits[_offsets_key(offs)]] if again else None
    adopted = (
        again and {experts, inner} <= a.param_runs and a.runs[experts].size == len(split.chunks)
    )
    if adopted:
        heads = (Seg(split.heads, 0, len(split.chunks)),)
        a.tie(w.labels[0], heads, "a row meets the matrix of its group's expert")
        a.routed_axes.append((experts, inner, split.id))
    else:
        a.fix(rows, why)
    a.tie(x.labels[1], w.labels[1], "grouped_mm contracts neurons with positions")
    # the experts' units are the first product's columns; a later product's (the layer after
    # the experts) are every expert's alike
    seeded = seed(a, w, 0, 2) if offs is not None and not again else None
    per_expert = bias is not None and bias.ndim == 2
    if seeded is None:
        if not adopted:
            a.fix(w.labels[0], why)
        columns = a.name_output(a.plain_label(w.labels[2], uniform=True))
        if bias is not None:
            a.fix(bias.labels[0] if per_expert else None, "a bias per group of rows")
            a.tie(columns, bias.labels[-1])
        return TensorLabels(a.out_shape(), (None, columns))
    a.hold_heads(seeded.labels[0])
    if bias is not None:
        a.tie(seeded.labels[2], bias.labels[-1], "a bias added to every group's rows")
        if per_expert:
            a.tie(seeded.labels[0], bias.labels[0], "a bias per group of rows")
    split_id = a.split_runs[seeded.labels[2][0].run][0]
    key = _offsets_key(offs)
    if key in a.routed_splits:  # another product of the same groups (SwiGLU's w1 and w3):
        other = a.head_splits[a.routed_splits[key]]  # group e meets expert e of both
        a.tie(seeded.labels[0], (Seg(other.heads, 0, len(other.chunks)),), why)
    a.routed_splits[key] = split_id
    return TensorLabels(a.out_shape(), (_routed_run(a, key, x.shape[0]), seeded.labels[2]))


#: ``grouped_mm``'s functions, and the steps from sorted expert ids to its offsets: casts, a
#: count per expert, a cumulative sum (methods, or these ``torch`` functions)
_GROUPED = (torch._grouped_mm, *((F.grouped_mm,) if hasattr(F, "grouped_mm") else ()))
_CASTS = frozenset({"to", "int", "long", "float", "type", "contiguous", "clone", "detach"})
_COUNTS = frozenset({"histc", "bincount"})
_STEPS = _CASTS | _COUNTS | {"cumsum"}
_FUNCTIONS = frozenset({torch.histc, torch.bincount, torch.cumsum, torch.sort})


def expert_ids(gm: torch.fx.GraphModule) -> dict:
    """The fx nodes of sorted expert ids that a ``grouped_mm``'s offsets were counted from
    (``ids, perm = torch.sort(chosen)``; ``offs = cumsum(histc(ids, bins=E, min=0, max=E-1))``
    or ``bincount``), each -> the offsets' key (:func:`_offsets_key`): row ``r`` of that
    product is in expert ``ids[r]``'s group, so a parameter read at ``ids`` (a bias per
    expert) gives each row its expert's entry (:func:`gathered`)."""
    found = {}
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target in _GROUPED:
            offs = n.kwargs.get("offs", n.args[2] if len(n.args) > 2 else None)
            ids = _counted_from(offs) if isinstance(offs, torch.fx.Node) else None
            if ids is not None:
                found[ids] = _offsets_key(offs)
    return found


def _counted_from(offs: torch.fx.Node) -> torch.fx.Node | None:
    """The ascending ``sort`` values whose counts per expert ``offs`` sums up, else ``None``."""
    steps, cur = [], offs
    while (step := call_name(cur, _FUNCTIONS)) in _STEPS and cur.args:
        if step == "histc" and not _bin_per_id(cur):
            return None
        steps.append(step)
        cur = cur.args[0]
    if "cumsum" not in steps or not _COUNTS & set(steps):
        return None
    ok = (
        isinstance(cur, torch.fx.Node) and cur.op == "call_function"
        and cur.target is operator.getitem and cur.args[1] == 0
        and call_name(cur.args[0], _FUNCTIONS) == "sort"
    )  # fmt: skip
    sort = cur.args[0] if ok else None
    descending = sort is not None and (
        sort.kwargs.get("descending", False) or (len(sort.args) > 2 and sort.args[2] is True)
    )
    return cur if ok and not descending else None


def _bin_per_id(histc: torch.fx.Node) -> bool:
    """Whether a ``histc`` has one bin per integer from 0: ``bins=E, min=0`` and ``max=E - 1``
    (Hugging Face's) or ``max=E`` (torchtitan's, bins of width 1)."""
    given = histc.args[1:]
    bins, lo, hi = (
        histc.kwargs.get(k, given[i] if i < len(given) else d)
        for i, (k, d) in enumerate((("bins", 100), ("min", 0), ("max", 0)))
    )
    return lo == 0 and hi in (bins - 1, bins)


def _offsets_key(offs: torch.fx.Node) -> Any:
    """One key for one tensor of offsets: its node, or the attribute a constant is read from
    (a ``get_attr`` per use)."""
    return ("attr", offs.target) if offs.op == "get_attr" else offs


def _routed_run(a: SymmetryAnalysis, key: Any, size: int) -> tuple:
    """The label of the rows of the groups that offsets ``key`` cut (made at first use):
    positions that stand for the experts beside their units, never neurons of their own
    (the rows may reach an output)."""
    run = next((r for r, k in a.routed.items() if k == key and a.runs[r].size == size), None)
    if run is None:
        (seg,) = a.new_run(size, "fixed", f"{a.node.name} (rows by expert)")
        run = seg.run
        a.routed[run] = key
    return (Seg(run, 0, size),)


def gathered(a: SymmetryAnalysis, x: TensorLabels) -> TensorLabels | None:
    """``x[ids]`` where ``ids`` are the sorted expert ids a ``grouped_mm``'s offsets were
    counted from (:attr:`~.analysis.SymmetryAnalysis.expert_ids`) and ``x``'s first axis is a
    parameter's whole axis (a bias per expert, GPT-OSS's): row ``r`` is row ``ids[r]``, its
    group's expert's, so the result's rows are those groups' (:func:`grouped`) and ``x``'s axis
    is the experts (tied to them in :func:`adopt`). ``None`` where it is no such read."""
    raw = a.node.args[1]
    key = a.expert_ids.get(raw) if isinstance(raw, torch.fx.Node) else None
    if key is None or x.ndim < 1 or whole_run(a, x.labels[0]) not in a.param_runs:
        return None
    shape = a.out_shape()
    a.routed_params.append((x.labels[0], key))
    return TensorLabels(shape, (_routed_run(a, key, shape[0]), *x.labels[1:]))


def _origin(a: SymmetryAnalysis, run: int) -> str:
    """What to name the members' units of parameter axis ``run``: the parameter (``w1``), or
    its module where it is a module's ``weight``."""
    return a.runs[run].origin.rsplit(".", 1)[0].removesuffix(".weight")


def adopt(a: SymmetryAnalysis) -> None:
    """Read every parameter axis that stands for a split's dims per head (see the module
    docstring): a new split per such axis, its dims the axis's run, its chunks a fresh run,
    its heads a fresh run tied to the parameter's heads axis. Runs once per analysis."""
    if a.adopted is not None:
        return
    # a traced vmap's weights, each member's axes its own (member_slice), where the loop's
    # results were stacked as its members; else the members stay (as each reads its slice)
    a.adopted = [(key, d, j, sid, sid) for key, d, j, sid in a.member_axes]
    a.op, a.node = "torch.vmap", None
    for loop in a.member_loops.values():
        if loop["picked"] or (loop["stacked"] and loop["own_data"]):
            # each member picked by the data (an expert the routing ran), or reading its own
            # data: in place (fixed blocks)
            a.hold_heads(*((Seg(s.heads, 0, len(s.chunks)),) for s in _loop_splits(loop)))
        elif not loop["stacked"]:
            a.fix(loop["members"], "a torch.vmap's results are not stacked member by member")
    a.op = "grouped_mm"
    for label, key in a.routed_params:  # a bias per expert read at the sorted ids
        sid = a.routed_splits.get(key)
        if sid is None:  # no split of those groups: its rows are positions
            a.fix(label, "read at the experts' ids, whose groups meet no expert's units")
        else:
            heads = (Seg(a.head_splits[sid].heads, 0, len(a.head_splits[sid].chunks)),)
            a.tie(label, heads, "a row per expert, read at its group's rows")
    whole = _whole_ties(a)
    classes = {r: i for i, runs in enumerate(nx.connected_components(whole)) for r in runs}
    axes = _param_axes(a)
    for experts, inner, sid in a.routed_axes:  # read per expert where grouped_mm's rows are
        for key, j, runs in axes.get(inner, ()):
            if runs.count(experts) == 1:
                split = a.head_splits[sid]
                _adopt_axis(a, key, (runs.index(experts), experts), (j, inner), split, classes)
    done: set = set()
    changed = True
    while changed:  # an adopted axis's own ties may adopt another parameter's
        changed = False
        for split in list(a.head_splits):
            for run in whole.adj.get(split.dims, ()):
                for key, j, i, runs in _stacked_axes(run, split, classes, axes):
                    if (key, j) in done:
                        continue
                    done.add((key, j))
                    changed |= _adopt_axis(a, key, (i, runs[i]), (j, runs[j]), split, classes)


def _whole_ties(a: SymmetryAnalysis) -> nx.Graph:
    """The runs that ties join whole, position by position, each such tie an edge."""
    whole = nx.Graph()
    whole.add_edges_from(
        (t.a, t.b)
        for t in a.ties
        if not (t.a_off or t.b_off) and t.a != t.b
        and t.length == a.runs[t.a].size == a.runs[t.b].size
    )  # fmt: skip
    return whole


def _param_axes(a: SymmetryAnalysis) -> dict:
    """Run -> ``(key, axis, runs)`` of every parameter one of whose axes is that run whole,
    ``runs`` the whole run of each of its axes (``None`` where none is). A viewed parameter's
    axes are its view's only where the view splits one axis into neurons and the positions
    each spans (an interleaved gate and up, ``(E, I, 2, D)``): its other views (flattened
    products) are read whole."""
    out: dict = {}
    for key, p in a.params.items():
        if p.view is not None and not _spans_view(p):
            continue
        runs = [whole_run(a, lab) for lab in p.axes]
        for j, r in enumerate(runs):
            if r is not None and runs.count(r) == 1:
                out.setdefault(r, []).append((key, j, runs))
    return out


def _spans_view(p: Any) -> bool:
    """Whether parameter label ``p``'s view only splits axes into a labelled dim and an
    unlabelled one after it (neurons spanning positions)."""
    shape, k = list(p.shape), 0
    for d, n in enumerate(p.view):
        if k < len(shape) and shape[k] == n:
            k += 1
        elif (
            k < len(shape)
            and p.axes[d] is not None
            and d + 1 < len(p.view)
            and (p.axes[d + 1] is None and n * p.view[d + 1] == shape[k])
        ):
            shape[k] = n  # the neurons; the next dim, their positions, closes the axis
            shape.insert(k + 1, p.view[d + 1])
            k += 1
        else:
            return False
    return k == len(shape)


def _stacked_axes(run: int, split: HeadSplit, classes: dict, axes: dict) -> list:
    """``(key, dims axis, heads axis, runs)`` of the parameters (``axes``:
    :func:`_param_axes`, ``runs`` as there) whose axis is ``run`` whole and that have one other
    axis tied whole to ``split``'s heads."""
    heads = classes.get(split.heads)
    out = []
    for key, j, runs in axes.get(run, ()) if heads is not None else ():
        at = [i for i, r in enumerate(runs) if i != j and r is not None and classes.get(r) == heads]
        if len(at) == 1:
            out.append((key, j, at[0], runs))
    return out


def _adopt_axis(
    a: SymmetryAnalysis, key: str, heads: tuple, dims: tuple, split: HeadSplit, classes: dict
) -> bool:
    """Make axis ``dims`` of ``key`` (``(axis, its run)``) the dims of a new split whose heads
    are axis ``heads``'s (that run's class in ``classes`` takes the new heads run)."""
    (i, hr), (j, dr) = heads, dims
    if a.split_runs.get(dr, (0, ""))[1] == "dims":
        return False
    count, width = a.runs[hr].size, a.runs[dr].size
    if count != len(split.chunks) or count < 2:
        return False
    op, node = a.op, a.node
    a.op, a.node = split.op, None
    try:
        flat = a.new_run(count * width, "param", f"{key}.d{j}")
        (own,) = a.new_run(count, "heads", f"{key} (heads)")
    finally:
        a.op, a.node = op, node
    new = _axis_split(a, flat[0].run, own.run, dr, hr, split.op, split.node)
    a.ties.append(Tie(own.run, 0, hr, 0, count, split.op, split.node))
    classes[own.run] = classes[hr]
    a.adopted.append((key, i, j, new.id, split.id))
    return True


def _axis_split(
    a: SymmetryAnalysis, flat: int, heads: int, dims: int, members: int, op: str, node: str
) -> HeadSplit:
    """Record the stacked split of parameter axis run ``dims`` whose members are the run
    ``members``: chunks of the fresh run ``flat``, one per member, its own fresh ``heads`` run.
    The parameter's members' axis reads the heads whole, so a tensor holding ``dims`` beside
    it holds one whole heads dim (:meth:`~.analysis.SymmetryAnalysis.head_checks`)."""
    count, width = a.runs[heads].size, a.runs[dims].size
    chunks = tuple((Seg(flat, k * width, width),) for k in range(count))
    split = HeadSplit(len(a.head_splits), op, node, chunks, heads, dims, True)
    a.head_splits.append(split)
    a.split_runs[heads] = (split.id, "heads")
    a.split_runs[dims] = (split.id, "dims")
    a.split_runs.setdefault(members, (split.id, "heads"))
    return split


# ---- torch.vmap over stacked weights (frontend.vmap marks its loop) ---------------------------


def member_slice(a: SymmetryAnalysis, x: Any, d: int, i: int, loop: int) -> Any:
    """The labels of ``x.select(d, i)`` where ``x`` is a weight that traced ``torch.vmap``
    loop ``loop`` maps over: each other axis of more than one position is member ``i``'s
    chunk of a split of that axis (made at the loop's first slice of ``x``), and the members'
    axis is tied to the loop's members, not read at ``i``. ``None`` where ``x`` is no such
    weight (the slice is then read as any other)."""
    count = x.shape[d]
    node = a.node.args[0] if a.node.args else None
    key = str(node.target) if isinstance(node, torch.fx.Node) and node.op == "get_attr" else None
    members = whole_run(a, x.labels[d]) if key is not None else None
    if members is None or members not in a.param_runs or count < 2:
        return None
    made = a.member_loops.setdefault(
        loop, {"members": None, "splits": {}, "stacked": False, "own_data": False, "picked": False}
    )
    made["own_data"] |= bool(a.node.meta.get("nfn_own_data"))
    made["picked"] |= bool(a.node.meta.get("nfn_picked"))
    if made["members"] is None:  # the loop's members: every weight's members' axis
        made["members"] = a.new_run(count, "neuron", f"{key} (members)")
    splits = made["splits"].get((node.name, d))
    if splits is None:
        splits = made["splits"][(node.name, d)] = _member_splits(a, key, x, d, members)
        a.tie(x.labels[d], made["members"])
        for split in splits.values():
            a.tie((Seg(split.heads, 0, count),), made["members"])
    labels = [splits[j].chunks[i] if j in splits else lab for j, lab in enumerate(x.labels)]
    return TensorLabels(a.out_shape(), tuple(labels[:d] + labels[d + 1 :]))


def _member_splits(a: SymmetryAnalysis, key: str, x: Any, d: int, members: int) -> dict:
    """Axis -> the split of weight ``key``'s axis (its members the run ``members`` on axis
    ``d``), for each axis that is one whole parameter run of more than one position."""
    count, out = a.runs[members].size, {}
    for j, lab in enumerate(x.labels):
        run = whole_run(a, lab) if j != d else None
        if run is None or run not in a.param_runs or a.runs[run].size < 2:
            continue
        (flat,) = a.new_run(count * a.runs[run].size, "neuron", _origin(a, run))
        (heads,) = a.new_run(count, "heads", f"{key} (members)")
        split = _axis_split(a, flat.run, heads.run, run, members, a.op, a.node.name)
        a.member_axes.append((a._canonical.get(key, key), d, j, split.id))
        out[j] = split
    return out


def member_stack(a: SymmetryAnalysis, xs: list, d: int, loop: int) -> Any:
    """The labels of ``torch.stack(xs, d)`` where ``xs`` are a traced ``torch.vmap``'s results
    (member by member): the stacked dim is the members (a split's heads), and a dim that holds
    member ``i``'s chunk of one split in each is that split's dims. ``None`` where the loop made
    no split (the stack is then read as any other)."""
    made = a.member_loops.get(loop)
    splits = _loop_splits(made or {})
    if not splits or len(xs) != len(splits[0].chunks):
        return None
    made["stacked"] = True
    by_run = {s.chunks[0][0].run: s for s in splits}
    shape = a.out_shape()
    rest = []
    for k in range(len(shape) - 1):
        labs = [x.labels[k] for x in xs]
        split = _member_dims(labs, by_run)
        if split is not None:
            rest.append((Seg(split.dims, 0, a.runs[split.dims].size),))
        else:
            column = [TensorLabels((x.shape[k],), (lab,)) for x, lab in zip(xs, labs)]
            rest.append(a.broadcast(column, (shape[d + (k >= d)],)).labels[0])
    heads = (Seg(splits[0].heads, 0, len(xs)),)
    return TensorLabels(shape, (*rest[:d], heads, *rest[d:]))


def _loop_splits(made: dict) -> list[HeadSplit]:
    """Every split a traced ``torch.vmap`` loop made (``a.member_loops``' entry ``made``)."""
    return [s for per in made.get("splits", {}).values() for s in per.values()]


def _member_dims(labels: list, by_run: dict) -> HeadSplit | None:
    """The split whose chunk ``i`` each of ``labels`` (member ``i``'s) is, whole; else
    ``None``."""
    first = labels[0]
    if not isinstance(first, tuple) or len(first) != 1 or first[0].run not in by_run:
        return None
    split = by_run[first[0].run]
    ok = all(isinstance(lab, tuple) and lab == split.chunks[i] for i, lab in enumerate(labels))
    return split if ok else None
