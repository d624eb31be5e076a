"""Op rules for writes into a tensor: ``x[index] = value``, ``x.copy_(src)``, ``fill_``,
``zero_``, and constant tensors (``torch.zeros``, ``x.new_zeros``) that such writes often fill.

A write returns the labels the written tensor has *after* it; the analysis then reads those
for every later use of the tensor (see
:meth:`~nfncompile.frontend.analysis.SymmetryAnalysis.written`). Along a dim the write covers
only in part, the label is pieced together: the positions outside keep the tensor's own labels
(free runs where it was constant, fixed ones where it depended on position), the positions
inside take the value's. A write the rules cannot place (a tensor index, a strided slice) fixes
the neurons of both sides.

Examples
--------
>>> import torch
>>> import nfncompile as nfc
>>> class Shifted(torch.nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.a, self.b = torch.nn.Linear(3, 4), torch.nn.Linear(6, 2)
...     def forward(self, x):
...         buf = torch.zeros(x.shape[0], 6)
...         buf[:, 2:] = self.a(x)  # a's four neurons after two zero channels
...         return self.b(torch.relu(buf))
>>> spec = nfc.trace(Shifted(), torch.randn(5, 3))
>>> spec["b.weight"].axes
('out', ('setitem.const', 'a'))
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

import torch

from ..labels import GATHERED, UNIFORM, TensorLabels
from .registry import Unsupported, arg, register_function, register_method, structured
from .shape import is_advanced, is_mask

if TYPE_CHECKING:
    from ..analysis import SymmetryAnalysis


def _uniform(shape: tuple) -> TensorLabels:
    return TensorLabels(tuple(shape), tuple(UNIFORM if n > 1 else None for n in shape))


@register_function(torch.zeros, torch.ones, torch.full, torch.empty)
@register_method("new_zeros", "new_ones", "new_full", "new_empty")
@structured
def _constant(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    # one value everywhere: any permutation of any dim leaves it as it is. An empty tensor's
    # values are whatever its memory held, which a model writes before it reads (DeepSeek's
    # queries, pieced together in a `new_empty` tensor), as `empty_like` is read
    return _uniform(a.out_shape())


@register_method("fill_", "zero_")
@structured
def _fill(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    # a constant may carry any labels: the tensor's own where it has them, uniform elsewhere
    x = args[0]
    return TensorLabels(
        x.shape,
        tuple(UNIFORM if lab is None and n > 1 else lab for lab, n in zip(x.labels, x.shape)),
    )


@register_function(operator.setitem)
@register_method("__setitem__")
@structured
def _setitem(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    x, index, value = args
    if not isinstance(x, TensorLabels):
        return None
    return write(a, x, index, value)


@register_method("copy_")
@structured
def _copy(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    return write(a, args[0], (), arg(args, kwargs, 1, "src"))


def write(a: SymmetryAnalysis, x: TensorLabels, index: Any, value: Any) -> TensorLabels:
    """The labels of ``x`` after ``x[index] = value``."""
    if _tensor_indexed(index):
        try:
            return _indexed_write(a, x, index, value)
        except Unsupported as e:
            return _fixed_write(a, x, value, str(e))
    try:
        ranges = index_ranges(x, index)
        region = tuple(len(range(start, stop, step)) for start, stop, kept, step in ranges if kept)
        written = iter(_value_labels(a, value, region))
        full = [
            (start, stop, step) == (0, n, 1) for (start, stop, _, step), n in zip(ranges, x.shape)
        ]
        labels = []
        for d, ((start, stop, kept, step), n) in enumerate(zip(ranges, x.shape)):
            inside = next(written) if kept else UNIFORM  # an int index: one position
            old = a.plain_label(x.labels[d], "a write into the tensor", uniform=True)
            if step > 1:
                # every step-th position (a parallel scan's odd steps of a time axis; a
                # positional table's sines and cosines in turn): the dim stays positions, and
                # neurons written along it, or there before, are fixed there (the other
                # dims keep theirs)
                if isinstance(old, tuple):
                    a.fix(old, "a write through a strided slice of neurons")
                if isinstance(inside, tuple):
                    a.fix(inside, "written at every few positions of a dim")
                labels.append(None)
                continue
            if not all(full[:d] + full[d + 1 :]):
                # the old values stay at the other dims' unwritten positions: both move alike
                inside = _meet(a, _slice(a, old, start, stop), inside)
            if not full[d]:
                # the old neurons written over and those kept no longer move alike (a slice
                # scaled in place, `h[:, :4] *= 2`, gives its neurons back in their places)
                if isinstance(old, tuple):
                    a.cut(old, start)
                    a.cut(old, stop)
                pieces = (_slice(a, old, 0, start), inside, _slice(a, old, stop, n))
                inside = _pieced(a, pieces, (start, stop - start, n - stop))
            labels.append(None if n <= 1 and inside is UNIFORM else inside)
    except Unsupported as e:
        return _fixed_write(a, x, value, str(e))
    return TensorLabels(x.shape, tuple(labels))


def _tensor_indexed(index: Any) -> bool:
    index = index if isinstance(index, tuple) else (index,)
    return any(is_advanced(i) for i in index)


def _indexed_write(a: SymmetryAnalysis, x: TensorLabels, index: Any, value: Any) -> TensorLabels:
    """``x[..., i, j, ...] = value`` with adjacent integer index tensors ``i, j`` and full
    slices elsewhere (Informer's ``ctx[arange(B)[:, None], top, :] = rows``), or with one
    boolean mask over adjacent dims (Switch Transformers' ``out[mask] = expert(x[mask])``:
    the rows a token's expert wrote): the indexed dims are written at positions data gives
    (fixed where labelled), every full-sliced dim meets the value's as an elementwise op would
    (the old values stay at the unwritten positions)."""
    index = index if isinstance(index, tuple) else (index,)
    raw = a.sources[0][1] if len(a.sources[0]) > 1 else ()
    raw = raw if isinstance(raw, tuple) else (raw,)
    tensor = [k for k, i in enumerate(index) if is_advanced(i)]
    others = [i for k, i in enumerate(index) if k not in tensor]
    mask = [k for k in tensor if k < len(raw) and is_mask(raw[k])]
    consumed = index[tensor[0]].ndim if mask else len(tensor)
    if (
        tensor != list(range(tensor[0], tensor[-1] + 1))
        or any(not isinstance(i, slice) or i != slice(None) for i in others)
        or (mask and len(tensor) > 1)
        or len(others) + consumed > x.ndim
    ):
        raise Unsupported("a write through a tensor index or a new axis")
    first, last = tensor[0], tensor[0] + consumed
    if mask:
        # the mask's dims become one of its true entries, as many as the value's rows (one
        # where the value broadcasts along them)
        trailing = x.ndim - last
        rows = value.shape[-trailing - 1] if _has_dim(value, trailing + 1) else 1
        block: tuple = (rows,)
    else:
        shapes = [
            tuple(i.shape) if not isinstance(i, list) else (len(i),)
            for i in (index[k] for k in tensor)
        ]
        block = tuple(torch.broadcast_shapes(*shapes))
    region = tuple(x.shape[:first]) + block + tuple(x.shape[last:])
    written = _value_labels(a, value, region)
    filled = _filled(a, index[first], written[first]) if mask else None
    if filled is None:
        for lab in written[first : first + len(block)]:  # the value's rows, placed by the data
            if lab is not UNIFORM:
                a.fix(lab, GATHERED)
        for i in (index[k] for k in tensor):
            if isinstance(i, TensorLabels):
                a.fix_all(i, "an index tensor that depends on the order of neurons")
    diagonal = _diagonal(a, x, raw, tensor, written[first : first + len(block)])
    labels = []
    for d, lab in enumerate(x.labels):
        old = a.plain_label(lab, "a write into the tensor", uniform=True)
        if diagonal is not None and first <= d < last:
            labels.append(diagonal)
            continue
        if filled is not None and first <= d < last:
            labels.append(_meet(a, old, filled[d - first]))
            continue
        if first <= d < last:
            if old is not None and old is not UNIFORM:
                a.fix(old, GATHERED)
            labels.append(None)
            continue
        new = written[d if d < first else d - (last - first) + len(block)]
        labels.append(_meet(a, old, new))
    return TensorLabels(x.shape, tuple(labels))


def _filled(a: SymmetryAnalysis, mask: Any, rows: Any) -> tuple | None:
    """The mask's labels along its dims where ``x[mask] = value`` writes one value along the
    rows (``x[x < 0] = 0``, ``scores[pad] = -inf``): a ``masked_fill``, elementwise in ``x``
    and the mask; ``None`` where the rows differ (placed by the mask's order)."""
    if rows is not UNIFORM:
        return None
    if not isinstance(mask, TensorLabels):  # a constant mask: its entries depend on position
        return tuple(None if n > 1 else UNIFORM for n in mask.shape)
    return tuple(a.plain_label(lab, "a mask of a write", uniform=True) for lab in mask.labels)


def _has_dim(value: Any, n: int) -> bool:
    """Whether ``value`` is a tensor with at least ``n`` dims."""
    return isinstance(value, (TensorLabels, torch.Tensor)) and value.ndim >= n


def _diagonal(a: SymmetryAnalysis, x: TensorLabels, raw: tuple, tensor: list, rows: list) -> Any:
    """The label of both dims of a diagonal written into a constant, ``w[i, i] = v``: ``i``
    the same index values on two dims of ``n`` positions that hold one value everywhere, every
    position ``0 .. n - 1`` among them, and ``v`` the same for every ``i`` (diffusers' 1-D
    down- and upsampling filters, ``i = torch.arange(n)``, traced or folded to a constant). A
    permutation of both dims at once leaves it as it is, so both carry one new run; else
    ``None``."""
    if len(tensor) != 2 or any(r is not UNIFORM for r in rows):
        return None
    n = x.shape[tensor[0]]
    if x.shape[tensor[1]] != n or any(x.labels[k] is not UNIFORM for k in tensor):
        return None
    first, second = (_index_values(a, raw[k] if k < len(raw) else None) for k in tensor)
    if first is None or second is None or first.shape != second.shape or first.ndim != 1:
        return None
    if first.dtype is torch.bool or not torch.equal(first, second):
        return None
    if first.numel() and (first.min() < -n or first.max() >= n):
        return None
    if not torch.equal(torch.unique(first.remainder(n)), torch.arange(n)):
        return None
    return a.new_run(n, "neuron", f"{a.node.name} (diagonal)")


def _index_values(a: SymmetryAnalysis, node: Any) -> torch.Tensor | None:
    """The values of an index known without running the model: a tensor constant of the
    traced module, or ``torch.arange`` of sizes; ``None`` for anything else."""
    if not isinstance(node, torch.fx.Node):
        return None
    if node.op == "get_attr" and a.key("", node.target) is None:
        value = a.fetch_attr(node.target)
        return value if isinstance(value, torch.Tensor) and not value.is_meta else None
    if node.op != "call_function" or node.target is not torch.arange:
        return None
    sizes = [a.env.get(v, v) if isinstance(v, torch.fx.Node) else v for v in node.args]
    if not sizes or len(sizes) > 3 or not all(isinstance(v, int) for v in sizes):
        return None
    return torch.arange(*sizes)


def _pieced(a: SymmetryAnalysis, pieces: tuple, sizes: tuple) -> Any:
    """One dim's label from the labels of its consecutive pieces: a constant piece becomes a
    free run, a position-dependent one a fixed run (``None`` when every piece is)."""
    if all(p is None or p == () or (p is UNIFORM and n <= 1) for p, n in zip(pieces, sizes)):
        return None  # positions (one written position holds one value: no neuron moves)
    label: tuple = ()
    for piece, size, what in zip(pieces, sizes, ("const", "written", "const")):
        if piece is UNIFORM:
            piece = a.uniform_run(size, what)
        elif piece is None:
            piece = a.new_run(size, "fixed", f"{a.node.name}.kept") if size else ()
        label += piece
    return label


def index_ranges(x: TensorLabels, index: Any) -> list:
    """``(start, stop, kept, step)`` per dim of ``x`` for a basic index (ints and slices;
    ``kept`` is False for an int, whose dim the value does not have; ``[start, stop)`` spans
    the positions a strided slice takes, one in every ``step``)."""
    index = index if isinstance(index, tuple) else (index,)
    if any(i is None or not isinstance(i, (int, slice, type(Ellipsis))) for i in index):
        raise Unsupported("a write through a tensor index or a new axis")
    if index.count(Ellipsis) > 1:
        raise Unsupported("a write with two ellipses")
    if Ellipsis in index:
        k = index.index(Ellipsis)
        index = index[:k] + (slice(None),) * (x.ndim - len(index) + 1) + index[k + 1 :]
    index = index + (slice(None),) * (x.ndim - len(index))
    ranges = []
    for i, n in zip(index, x.shape):
        if isinstance(i, slice):
            start, stop, step = i.indices(n)
            if step < 1:
                raise Unsupported("a write through a reversed slice")
            count = len(range(start, stop, step))
            ranges.append((start, start + (count - 1) * step + 1 if count else start, True, step))
        else:
            ranges.append((i % n, i % n + 1, False, 1))
    return ranges


def _value_labels(a: SymmetryAnalysis, value: Any, region: tuple) -> list:
    """The value's label along each dim of the region it is written to (broadcast from the
    right: a missing or one-sized dim is uniform)."""
    labels: list = [UNIFORM] * len(region)
    if not isinstance(value, TensorLabels):
        return labels  # a number
    for k in range(1, min(len(region), value.ndim) + 1):
        lab = a.plain_label(value.labels[-k], "a write into a tensor", uniform=True)
        n = value.shape[-k]
        if n == 1 and region[-k] > 1:
            a.fix(lab, "broadcasts one neuron's value to all positions")
            lab = UNIFORM
        labels[-k] = lab
    return labels


def _slice(a: SymmetryAnalysis, label: Any, start: int, stop: int) -> Any:
    if label is None or label is UNIFORM:
        return label
    return a.slice_label(label, start, stop) if stop > start else ()


def _meet(a: SymmetryAnalysis, old: Any, new: Any) -> Any:
    """One dim holding the old values at some positions of the other dims and the new ones at
    others: tied as an elementwise op ties them."""
    if old == () or old is UNIFORM:
        return new
    if new is UNIFORM:
        return old
    if old is None or new is None:
        a.fix(old if new is None else new, "written next to values that depend on position")
        return None
    return a.tie(old, new)


def _fixed_write(a: SymmetryAnalysis, x: TensorLabels, value: Any, reason: str) -> TensorLabels:
    a.fix_all((x, value), reason)
    return TensorLabels.plain(x.shape)
