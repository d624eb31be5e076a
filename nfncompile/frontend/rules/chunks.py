"""Chunks that are only ever selected one by one: a fused projection's ``(3, heads, head_dim)``.

A reshape that splits a dim of neurons into ``k`` equal chunks (a fused ``qkv`` projection's
``3 * dim`` outputs viewed as ``(3, heads, head_dim)``) reads the chunks as moving together:
the new leading dim is positions, and one label serves every chunk
(:func:`~nfncompile.frontend.rules.shape.split_label`). That ties q's, k's and v's features,
though attention only needs q's and k's alike. Where every use of the reshaped tensor, through
permutes and transposes, picks one chunk at a time (``q, k, v = qkv.unbind(0)``,
``qkv[0]``; a reshape that leaves the chunk dim a dim of its own may come between), nothing
combines two chunks, so each may keep its own neurons: the split records
the chunks (:attr:`~nfncompile.frontend.analysis.SymmetryAnalysis.selected_chunks`) instead of
tying them, the tensor carries the first chunk's labels, and the select gives chunk ``i`` its
own (:func:`rebased`).

Examples
--------
>>> from nfncompile.frontend.labels import Seg
>>> q, v = (Seg(0, 0, 4),), (Seg(0, 8, 4),)
>>> rebased((Seg(0, 2, 2),), q, v)
(Seg(run=0, offset=10, length=2, inner=1),)
"""

from __future__ import annotations

import math
import operator
from typing import TYPE_CHECKING, Any

import torch
import torch.fx

from ..fx import call_name
from ..labels import Prod, Seg

if TYPE_CHECKING:
    from ..analysis import SymmetryAnalysis

__all__ = ["only_selected", "chunks_at", "piece", "mirror", "rebased", "dim_order"]

#: ops that move dims around without reading values: a chunk dim passes through them
_PERMUTES = frozenset(
    {"permute", "transpose", "swapaxes", "swapdims", "contiguous", "reshape", "view"}
)


#: the ``torch`` functions :func:`_name` names (their methods are named by fx itself)
_TORCH = {
    torch.permute, torch.transpose, torch.swapaxes, torch.swapdims, torch.reshape, torch.unbind,
    torch.flatten, torch.unflatten,
}  # fmt: skip


def _name(node: torch.fx.Node) -> str | None:
    """``permute``, ``transpose``, ``unbind``, ... for a call of one (method or ``torch``
    function)."""
    return call_name(node, _TORCH)


def _shape(node: Any) -> tuple | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, torch.fx.Node) else None
    shape = getattr(meta, "shape", None)
    return tuple(shape) if shape is not None else None


def _ndim(node: Any) -> int | None:
    shape = _shape(node)
    return len(shape) if shape is not None else None


def _moved(node: torch.fx.Node, d: int) -> int | None:
    """Where dim ``d`` of ``node``'s input is in its output (``node`` a permute, transpose or
    contiguous), or ``None`` when the arguments cannot be read."""
    n = _ndim(node)
    if n is None:
        return None
    if _name(node) == "contiguous":
        return d
    if _name(node) in ("reshape", "view"):
        # a reshape that only merges dims (SAM's (3, B, heads, H * W, head_dim) to
        # (3, B * heads, H * W, head_dim)) keeps a dim that is a group of its own: the same
        # size after the same number of positions (one that splits a dim would split the
        # first chunk's labels alone)
        before, after = _shape(node.args[0]), _shape(node)
        if before is None or after is None or d >= len(before):
            return None
        if not _boundaries(after) <= _boundaries(before):
            return None
        lead = math.prod(before[:d])
        for k, m in enumerate(after):
            if math.prod(after[:k]) == lead and m == before[d]:
                return k
        return None
    dims = dim_order(node, n)
    return dims.index(d) if dims is not None and d in dims else None


def dim_order(node: torch.fx.Node, n: int) -> list | None:
    """The input dim at each output dim of ``node``, a permute or transpose (swapaxes,
    swapdims) of an ``n``-dim tensor, or ``None`` where its arguments cannot be read."""
    args = node.args[1:]
    if _name(node) == "permute":
        dims = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
        dims = node.kwargs.get("dims", dims)
        if not all(isinstance(k, int) for k in dims) or len(dims) != n:
            return None
        return [k % n for k in dims]
    pair = [node.kwargs.get(k, v) for k, v in zip(("dim0", "dim1"), args)]
    pair += [node.kwargs[k] for k in ("dim0", "dim1")[len(pair) :] if k in node.kwargs]
    if len(pair) != 2 or not all(isinstance(k, int) for k in pair):
        return None
    order = list(range(n))
    a, b = (k % n for k in pair)
    order[a], order[b] = b, a
    return order


def _boundaries(shape: tuple) -> set:
    """The positions (in elements) where the dims of ``shape`` start."""
    return {math.prod(shape[:k]) for k in range(len(shape) + 1)}


def _selects(node: torch.fx.Node, d: int) -> bool:
    """Whether ``node`` takes its input's dim ``d`` apart one position at a time
    (``unbind(d)``, an integer index at ``d``)."""
    n = _ndim(node.args[0]) if node.args else None
    if n is None:
        return False
    if _name(node) == "unbind":
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        return isinstance(dim, int) and dim % n == d
    if node.op == "call_function" and node.target is operator.getitem:
        idx = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
        if any(i is Ellipsis for i in idx):  # Bloom's fused_qkv[..., 0, :]
            if sum(i is Ellipsis for i in idx) > 1 or any(i is None for i in idx):
                return False
            at = next(k for k, i in enumerate(idx) if i is Ellipsis)
            idx = (*idx[:at], *[slice(None)] * (n - len(idx) + 1), *idx[at + 1 :])
        if len(idx) <= d:
            return False
        before_whole = all(i == slice(None) for i in idx[:d])
        rest_basic = all(isinstance(i, (int, slice)) for i in idx[d + 1 :])
        return before_whole and isinstance(idx[d], int) and rest_basic
    return False


def only_selected(node: torch.fx.Node, d: int) -> bool:
    """Whether every use of ``node``'s dim ``d``, through permutes, transposes, ``contiguous``
    and reshapes that keep the dim, takes one position of it at a time (and nothing else reads
    ``node``)."""
    if not node.users:
        return False
    for user in node.users:
        if _name(user) in _PERMUTES and user.args[0] is node:
            moved = _moved(user, d)
            if moved is None or not only_selected(user, moved):
                return False
        elif not (user.args and user.args[0] is node and _selects(user, d)):
            return False
    return True


def chunks_at(a: SymmetryAnalysis, node: Any, d: int) -> list | None:
    """The chunk labels recorded for dim ``d`` of ``node`` (followed back through permutes,
    transposes, ``contiguous`` and reshapes that keep the dim to the reshape that made it),
    or ``None``."""
    while isinstance(node, torch.fx.Node):
        found = a.selected_chunks.get((node.name, d))
        if found is not None:
            return found
        if _name(node) not in _PERMUTES or not node.args:
            return None
        source = node.args[0]
        if not isinstance(source, torch.fx.Node) or _ndim(source) is None:
            return None
        back = [k for k in range(_ndim(source)) if _moved(node, k) == d]
        if len(back) != 1:
            return None
        node, d = source, back[0]
    return None


def piece(a: SymmetryAnalysis, labels: tuple, chunks: list, i: int) -> tuple:
    """``labels`` (of a tensor carrying the first chunk's labels) for chunk ``i``: rebased onto
    it, or, where a neuron of the first chunk cannot be rebased (a segment spanning several
    positions), left as they are with the two chunks tied, as a plain reading ties them."""
    twins = a.twin_runs.get(tuple(chunks[i]), {}) if i else {}
    out = tuple(rebased(lab, chunks[0], chunks[i], twins) for lab in labels)
    # head splits of the first chunk that have no twin in this one: the chunks tied instead
    # (not a split the chunks are taken from: Bloom's q, k, v inside each head's dims)
    untwinned = not twins and any(_split_of(a, s.run, chunks[0]) for s in _segs(out))
    if i and (
        any(_position(s, chunks[0]) is None and _overlaps(s, chunks[0]) for s in _segs(out))
        or untwinned
    ):
        a.tie(chunks[0], chunks[i])
        return labels
    return out


def mirror(a: SymmetryAnalysis, chunks: list, since: tuple) -> None:
    """Give every chunk after the first the ties, fixes and cuts that reading the first one
    made (the records after ``since``: the counts of ``a.ties``, ``a.fixes`` and ``a.cuts``
    before it), where that reading made no head split: each chunk is read through the first
    one's labels (:func:`piece` rebases them), which stand for its neurons only if they are
    constrained alike. (A fused ``qkv`` whose queries' head dims a rotary embedding makes in
    pairs: q's and k's heads fall back to moving together, v's would split into heads of its
    own, which its rebased labels do not read.) A record that reaches outside the first chunk
    ties the chunks instead, as a plain reading does."""
    ties, fixes, cuts = (records[n:] for records, n in zip((a.ties, a.fixes, a.cuts), since))
    first = chunks[0]

    def inside(run: int, offset: int, length: int) -> bool:
        return _position(Seg(run, offset, length), first) is not None

    def at_end(run: int, offset: int) -> int | None:
        """The position in the first chunk of a cut before neuron ``offset`` of ``run``."""
        if inside(run, offset, 1):
            return _position(Seg(run, offset, 1), first)
        if offset and inside(run, offset - 1, 1):
            return _position(Seg(run, offset - 1, 1), first) + 1
        return None

    held = (
        all(inside(t.a, t.a_off, t.length) and inside(t.b, t.b_off, t.length) for t in ties)
        and all(inside(run, off, n) for run, off, n, _ in fixes)
        and all(at_end(run, off) is not None for run, off, *_ in cuts)
    )
    for chunk in chunks[1:]:
        if not held:
            a.tie(first, chunk)
            continue
        for t in ties:
            a.tie(
                rebased((Seg(t.a, t.a_off, t.length),), first, chunk),
                rebased((Seg(t.b, t.b_off, t.length),), first, chunk),
            )
        for run, off, n, bi in fixes:
            a.fix(rebased((Seg(run, off, n),), first, chunk), a.broken[bi].reason)
        for run, off, *_ in cuts:
            a.cut(chunk, at_end(run, off))


def _split_of(a: SymmetryAnalysis, run: int, chunk: tuple) -> bool:
    """Whether ``run`` is a run of a head split of ``chunk``'s neurons."""
    if run not in a.split_runs:
        return False
    split = a.head_splits[a.split_runs[run][0]]
    return any(_overlaps(s, chunk) for c in split.chunks for s in c)


def _segs(labels: tuple) -> list:
    out: list = []
    for lab in labels:
        if isinstance(lab, Prod):
            out += _segs(lab.factors)
        elif isinstance(lab, tuple):
            out += [s for s in lab if isinstance(s, Seg)]
    return out


def _overlaps(s: Seg, src: tuple) -> bool:
    return any(
        s.run == t.run and s.offset < t.offset + t.length and t.offset < s.offset + s.length
        for t in src
    )


def rebased(label: Any, src: tuple, dst: tuple, twins: dict | None = None) -> Any:
    """``label`` with every neuron of chunk ``src`` replaced by the neuron at the same position
    of chunk ``dst`` (labels of equal widths, neurons of one position each), and every run of
    ``twins`` (the head splits of ``src``: :class:`~nfncompile.frontend.labels.HeadSplit`) by
    its twin (the same split of ``dst``)."""
    if isinstance(label, Prod):
        return Prod(tuple(rebased(f, src, dst, twins) for f in label.factors), label.sizes)
    if not isinstance(label, tuple):
        return label
    out: list = []
    for s in label:
        if twins and s.run in twins:
            out.append(Seg(twins[s.run], s.offset, s.length, s.inner))
            continue
        pos = _position(s, src)
        if pos is None:
            out.append(s)
            continue
        out += _slice(dst, pos, pos + s.length)
    return tuple(out)


def _position(s: Seg, src: tuple) -> int | None:
    """Where segment ``s`` starts inside ``src``'s positions, if it lies in one of its
    segments."""
    p = 0
    for t in src:
        inside = t.offset <= s.offset and s.offset + s.length <= t.offset + t.length
        if s.run == t.run and s.inner == 1 and inside:
            return p + s.offset - t.offset
        p += t.width
    return None


def _slice(label: tuple, start: int, stop: int) -> list:
    out, p = [], 0
    for s in label:
        lo, hi = max(start, p), min(stop, p + s.length)
        if lo < hi:
            out.append(Seg(s.run, s.offset + lo - p, hi - lo))
        p += s.length
    return out
