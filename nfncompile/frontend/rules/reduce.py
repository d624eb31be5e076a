"""Op rules for reductions (symmetric: sum, mean, max, norms) and for ops that depend on
positions along a dim (cumulative sums, sorting, flips, rolls).

``argmin``/``argmax`` (and ``max``/``min`` with a dim) over one labelled dim return positions
of its neurons: their result carries that label as its ``values``
(:class:`~nfncompile.frontend.labels.TensorLabels`). A rule that reads such indices as rows of
a table labelled alike (an embedding lookup, ``table[ids]``, ``one_hot``, a ``scatter`` into
zeros: a VQ-VAE's codebook) keeps the neurons free; any other use fixes them.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..labels import TensorLabels, is_plain, remade
from .registry import (
    Unsupported,
    arg,
    norm_dim,
    register_function,
    register_method,
    structured,
)

if TYPE_CHECKING:
    from ..analysis import SymmetryAnalysis


_REDUCE_FUNCTIONS = (
    torch.sum, torch.mean, torch.amax, torch.amin, torch.prod, torch.std, torch.var,
    torch.logsumexp, torch.norm, torch.all, torch.any, torch.nansum, torch.nanmean,
    torch.linalg.vector_norm, torch.linalg.norm, torch.linalg.matrix_norm, torch.std_mean,
    torch.var_mean,
)  # fmt: skip
#: norms whose ``dim`` comes after their ``ord`` (or ``p``); a matrix norm's (any ``ord``:
#: Frobenius, nuclear, spectral, max row or column sums) is invariant under permutations of
#: its rows and of its columns, so it reduces its two dims as a sum does
_AFTER_ORD = ("norm", "vector_norm", "linalg_norm", "linalg_vector_norm", "linalg_matrix_norm")
_REDUCE_METHODS = (
    "sum", "mean", "amax", "amin", "prod", "std", "var", "logsumexp", "norm", "all", "any",
    "nansum", "nanmean",
)  # fmt: skip


#: reductions that, given a dim, also return where along it their values are
_WITH_INDICES = ("max", "min", "median", "nanmedian", "mode", "kthvalue")


@register_function(
    *_REDUCE_FUNCTIONS, torch.max, torch.min, torch.argmax, torch.argmin, torch.median,
    torch.nanmedian, torch.mode, torch.kthvalue,
)  # fmt: skip
@register_method(*_REDUCE_METHODS, "argmax", "argmin", *_WITH_INDICES)
@structured
def _reduce(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    """Symmetric reductions: reducing over a neuron axis is invariant (sum, mean, max, median,
    the k-th smallest, ...)."""
    x = args[0]
    name = getattr(a.node.target, "__name__", a.node.target)
    if name in ("max", "min") and len(args) > 1 and isinstance(args[1], TensorLabels):
        return a.broadcast([args[0], args[1]])  # torch.max(a, b) is elementwise
    at = 2 if name in (*_AFTER_ORD, "kthvalue") else 1  # after p, or k
    default = {"kthvalue": -1, "mode": -1, "linalg_matrix_norm": (-2, -1)}.get(name)
    dim = arg(args, kwargs, at, "dim", default)
    if dim is None:
        dims = set(range(x.ndim))
    else:
        dims = {norm_dim(d, x.ndim) for d in ([dim] if isinstance(dim, int) else dim)}
    positions = name in ("argmax", "argmin") or (name in _WITH_INDICES and dim is not None)
    # the positions along one plain labelled dim (a VQ codebook's nearest entry): values
    # that index its neurons, read by the rules that know them (an embedding lookup)
    (d0,) = dims if len(dims) == 1 else (None,)
    index = x.labels[d0] if positions and dim is not None and d0 is not None else None
    index = _neuron_index(a, index)
    if positions and index is None:
        for d in dims:
            a.fix(x.labels[d], f"{name} returns neuron positions")
    out = a.out()
    keepdim = (out[0] if isinstance(out, tuple) else out).ndim == x.ndim and dim is not None
    labels = []
    for d, lab in enumerate(x.labels):
        if d in dims:
            a.consume(lab)
        if d not in dims:
            labels.append(lab)
        elif keepdim:
            labels.append(None)
    if isinstance(out, tuple):  # (values, indices), or (std, mean) and (var, mean)
        values, indices = (TensorLabels(o.shape, tuple(labels)) for o in out)
        return remade(out, (values, dataclasses.replace(indices, values=index)))
    return TensorLabels(out.shape, tuple(labels), values=index)


def _neuron_index(a: SymmetryAnalysis, label: Any) -> Any:
    """``label`` where positions along it can be values that index its neurons (plain, no
    attention heads), else ``None``."""
    heads = a.is_heads(label) and not a.is_stacked(label)  # an ensemble's members are neurons
    if isinstance(label, tuple) and is_plain(label) and not heads:
        return label
    a.hold_heads(label)
    return None


@register_function(torch.sort, torch.argsort, torch.topk)
@register_method("sort", "argsort", "topk")
def _sorted(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    """Sorting along a dim (``sort``, ``argsort``, ``topk``): the sorted values do not depend
    on the order of the neurons along it (a symmetric reduction keeps them apart from the
    rest), and the indices are values that index those neurons (as ``argmax``'s)."""
    x = args[0]
    name = getattr(a.node.target, "__name__", a.node.target)
    dim = arg(args, kwargs, 2 if name == "topk" else 1, "dim", -1)  # topk: after k
    if not isinstance(dim, int):
        return _positional(a, args, kwargs)
    d = norm_dim(dim, x.ndim)
    index = _neuron_index(a, x.labels[d])
    if index is None:
        return _positional(a, args, kwargs)
    a.consume(index)
    labels = tuple(None if k == d else lab for k, lab in enumerate(x.labels))
    out = a.out()
    if name == "argsort":
        return TensorLabels(out.shape, labels, values=index)
    values, indices = (TensorLabels(o.shape, labels) for o in out)
    return remade(out, (values, dataclasses.replace(indices, values=index)))


@register_function(torch.cumsum, torch.cumprod, torch.cummax, torch.cummin, torch.flip,
                   torch.roll, torch.fliplr, torch.flipud)  # fmt: skip
@register_method("cumsum", "cumprod", "flip", "roll")
def _positional(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    """Ops that depend on positions along the dims they act on."""
    x = args[0]
    name = getattr(a.node.target, "__name__", a.node.target)
    dims = arg(
        args, kwargs, 2 if name == "roll" else 1, "dims" if name in ("roll", "flip") else "dim"
    )
    if name in ("fliplr", "flipud"):  # the columns (dim 1) or the rows (dim 0)
        dims = int(name == "fliplr")
    if name == "topk":
        dims = arg(args, kwargs, 2, "dim", -1)
    if name in ("sort", "argsort") and dims is None:
        dims = -1
    if dims is None:
        dims = list(range(x.ndim))
    dims = [dims] if isinstance(dims, int) else list(dims)
    dims = {norm_dim(d, x.ndim) for d in dims}
    x = a.keep(x, tuple(dims), f"{name} depends on neuron positions")

    def labelled(o: Any) -> Any:
        # every dim the op does not act on keeps its label (topk's k values and their indices
        # per channel: ETSformer's frequencies); the dims it acts on are positions
        if not isinstance(o, TensorLabels) or o.ndim != x.ndim:
            return o
        if o.shape == x.shape:
            return TensorLabels(o.shape, x.labels)
        if any(n != m and k not in dims for k, (n, m) in enumerate(zip(o.shape, x.shape))):
            return o
        return TensorLabels(
            o.shape, tuple(None if k in dims else x.labels[k] for k in range(o.ndim))
        )

    out = a.out()
    return remade(out, (labelled(o) for o in out)) if isinstance(out, tuple) else labelled(out)


@register_function(F.mse_loss, F.l1_loss, F.smooth_l1_loss, F.huber_loss)
def _pointwise_loss(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    """A loss of each entry against its target (a VQ layer's commitment loss, a VAE's
    reconstruction), then averaged or summed over every entry (``reduction="none"``: kept
    per entry): elementwise in the pair, a symmetric reduction after."""
    x, y = args[0], arg(args, kwargs, 1, "target")
    if not (isinstance(x, TensorLabels) and isinstance(y, TensorLabels)):
        raise Unsupported("a loss of a value that is no tensor")
    legacy = (arg(args, kwargs, 2, "size_average"), arg(args, kwargs, 3, "reduce"))
    if any(v is not None for v in legacy):
        raise Unsupported("a loss with the legacy size_average or reduce arguments")
    # (a per-entry weight, where given, is one more operand of the elementwise part)
    ops = [x, y, *(v for v in (*args[2:], *kwargs.values()) if isinstance(v, TensorLabels))]
    pair = a.broadcast(ops, tuple(torch.broadcast_shapes(*(t.shape for t in ops))))
    if arg(args, kwargs, 4, "reduction", "mean") == "none":
        return TensorLabels(a.out_shape(), pair.labels)
    for lab in pair.labels:
        a.consume(lab)
    return TensorLabels.plain(a.out_shape())
