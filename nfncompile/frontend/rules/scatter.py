"""Op rules for writes at positions an index tensor gives: ``index_add``, ``index_copy``,
``index_reduce``, ``index_fill``, ``index_put``, ``scatter``, ``scatter_add`` and
``scatter_reduce`` (and their in-place forms), and the read ``index_select``: a graph network's message passing sums each edge's features into its
target node this way.

Along the indexed dim the positions are read and written where the index says, so a label
there is fixed (nodes, not neurons, in a graph network). Every other dim is written position
for position, as an elementwise op writes: the tensor written into, the values and (for
``scatter``) the index are tied along it; an index constant along the features (an index
expanded over them) leaves the features free. The rules read uniform labels (``structured``).

Examples
--------
>>> import torch
>>> import nfncompile as nfc
>>> class Mean(torch.nn.Module):  # a GraphSAGE layer's neighbour sum
...     def __init__(self):
...         super().__init__()
...         self.a, self.b = torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)
...     def forward(self, x, edges):
...         h = torch.relu(self.a(x))
...         return self.b(torch.zeros_like(h).index_add_(0, edges[1], h[edges[0]]))
>>> spec = nfc.trace(Mean(), (torch.randn(5, 3), torch.tensor([[0, 1, 2], [1, 2, 0]])),
...                  channel_dim=(1, None))
>>> spec["b.weight"].axes
('out', 'a')
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..labels import UNIFORM, TensorLabels, label_width
from .registry import (
    Unsupported,
    arg,
    norm_dim,
    reads_values,
    register_function,
    register_method,
    structured,
)

if TYPE_CHECKING:
    from ..analysis import SymmetryAnalysis

#: the reason an indexed dim's neurons are fixed
WRITTEN_AT = "writes at positions a tensor gives"


def _indexed(a: SymmetryAnalysis, x: TensorLabels, d: int, index: Any, *values: Any) -> list:
    """Fix dim ``d`` of ``x`` and of every tensor among ``values`` (read or written at the
    index), and a 1-D ``index``'s labels; return ``x``'s labels with ``d`` unlabelled."""
    a.fix(a.plain_label(x.labels[d]), WRITTEN_AT)
    a.fix_all(index, "an index tensor that depends on the order of neurons")
    for v in values:
        if isinstance(v, TensorLabels) and v.ndim == x.ndim:
            a.fix(a.plain_label(v.labels[d]), WRITTEN_AT)
    return [None if k == d else a.plain_label(lab, uniform=True) for k, lab in enumerate(x.labels)]


@register_function(torch.index_add, torch.index_copy, torch.index_reduce)
@register_method(
    "index_add", "index_add_", "index_copy", "index_copy_", "index_reduce", "index_reduce_"
)
@structured
def _index_write(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    """``x.index_add(dim, index, source)``: ``x[..., index[i], ...] += source[..., i, ...]``."""
    x, dim = args[0], arg(args, kwargs, 1, "dim")
    index, source = arg(args, kwargs, 2, "index"), arg(args, kwargs, 3, "source")
    if not isinstance(x, TensorLabels) or not isinstance(source, TensorLabels):
        raise Unsupported("an index write of something that is not a tensor")
    if dim is None or source.ndim != x.ndim:
        raise Unsupported("an index write with a source of another rank")
    d = norm_dim(dim, x.ndim)
    labels = _indexed(a, x, d, index, source)
    for k in range(x.ndim):
        if k != d:
            labels[k] = a.tie(labels[k], a.plain_label(source.labels[k], uniform=True), WRITTEN_AT)
    return TensorLabels(a.out_shape(), tuple(labels))


@register_function(torch.index_fill)
@register_method("index_fill", "index_fill_")
@structured
def _index_fill(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    """``x.index_fill(dim, index, value)``: one value at the indexed positions."""
    x, dim = args[0], arg(args, kwargs, 1, "dim")
    value = arg(args, kwargs, 3, "value")
    if not isinstance(x, TensorLabels) or dim is None:
        raise Unsupported("index_fill of something that is not a tensor")
    if isinstance(value, TensorLabels) and value.ndim:
        raise Unsupported("index_fill with a tensor value")
    labels = _indexed(a, x, norm_dim(dim, x.ndim), arg(args, kwargs, 2, "index"))
    return TensorLabels(a.out_shape(), tuple(labels))


@register_function(torch.scatter, torch.scatter_add, torch.scatter_reduce)
@register_method(
    "scatter", "scatter_", "scatter_add", "scatter_add_", "scatter_reduce", "scatter_reduce_"
)
@structured
@reads_values
def _scatter(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    """``x.scatter_add(dim, index, src)``: ``x[..., index[..., j, ...], ...] += src[..., j,
    ...]`` along ``dim``, every other position where it is (``index`` and ``src`` may cover a
    prefix of ``x``'s positions)."""
    x, dim, index = args[0], arg(args, kwargs, 1, "dim"), arg(args, kwargs, 2, "index")
    src = arg(args, kwargs, 3, "src", kwargs.get("value"))
    if not isinstance(x, TensorLabels) or not isinstance(index, TensorLabels) or dim is None:
        raise Unsupported("scatter without a tensor index")
    if index.ndim != x.ndim or (isinstance(src, TensorLabels) and src.ndim != x.ndim):
        raise Unsupported("scatter with an index or values of another rank")
    d = norm_dim(dim, x.ndim)
    a.fix_values(src, "scatter writes neuron positions as values")
    labels = _indexed(a, x, d, None, index, src)
    whole = index.values is not None and label_width(index.values) == x.shape[d]
    if whole and x.labels[d] is UNIFORM:
        # positions of neurons written into one value everywhere (AntixK's VQ-VAE one-hot
        # codes): the written dim is those neurons
        labels[d] = index.values
    else:
        a.fix_values(index, "scatter writes at neuron positions")
    parts = [index] + ([src] if isinstance(src, TensorLabels) else [])
    for k in range(x.ndim):
        if k == d:
            continue
        if any(p.shape[k] != x.shape[k] for p in parts):  # a prefix of x's positions
            for lab in [labels[k], *(p.labels[k] for p in parts)]:
                a.fix(a.plain_label(lab), WRITTEN_AT)
            labels[k] = None
            continue
        for p in parts:
            labels[k] = a.tie(labels[k], a.plain_label(p.labels[k], uniform=True), WRITTEN_AT)
    return TensorLabels(a.out_shape(), tuple(labels))


@register_function(torch.index_select)
@register_method("index_select")
@structured
def _index_select(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    """``x.index_select(dim, index)``: the positions of ``dim`` the index gives (a graph
    network's source nodes), every other dim as it is."""
    x, dim = args[0], arg(args, kwargs, 1, "dim")
    if not isinstance(x, TensorLabels) or dim is None:
        raise Unsupported("index_select of something that is not a tensor")
    labels = _indexed(a, x, norm_dim(dim, x.ndim), arg(args, kwargs, 2, "index"))
    return TensorLabels(a.out_shape(), tuple(labels))


@register_function(torch.index_put)
@register_method("index_put", "index_put_")
@structured
def _index_put(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    """``x.index_put((i0, i1, ...), values, accumulate)``: the leading dims read at the index
    tensors, the trailing dims written position for position (``values`` broadcast to them)."""
    x, indices = args[0], arg(args, kwargs, 1, "indices")
    values = arg(args, kwargs, 2, "values")
    if not isinstance(x, TensorLabels) or not isinstance(indices, (tuple, list)):
        raise Unsupported("index_put of something that is not a tensor")
    if not all(isinstance(i, TensorLabels) for i in indices) or len(indices) > x.ndim:
        raise Unsupported("index_put with None or non-tensor indices")
    lead = len(indices)
    labels = [a.plain_label(lab, uniform=True) for lab in x.labels]
    for k in range(lead):
        a.fix(a.plain_label(labels[k]), WRITTEN_AT)
        labels[k] = None
    a.fix_all(list(indices), "an index tensor that depends on the order of neurons")
    if isinstance(values, TensorLabels):
        trailing = x.ndim - lead
        for j in range(values.ndim):
            lab = a.plain_label(values.labels[values.ndim - 1 - j], uniform=True)
            k = x.ndim - 1 - j
            if j >= trailing:  # a dim of the index positions
                a.fix(a.plain_label(lab), WRITTEN_AT)
            elif values.shape[values.ndim - 1 - j] == 1 and x.shape[k] > 1:
                a.fix(a.plain_label(lab), "broadcasts one neuron's value to all positions")
            else:
                labels[k] = a.tie(labels[k], lab, WRITTEN_AT)
    return TensorLabels(a.out_shape(), tuple(labels))
