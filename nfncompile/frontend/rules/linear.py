"""Op rules for dense layers: ``nn.Linear``, ``F.linear``, ``nn.Embedding``, matmul, grouped
matmul and ``addmm``/``baddbmm`` (Hugging Face's GPT-2 ``Conv1D`` is
``torch.addmm(bias, x, weight)``).

A dense layer's output neurons are a new run; its weight's input axis is labelled with the
neurons of its input's last dim.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import stacked
from ..labels import UNIFORM, Label, Prod, TensorLabels
from .registry import (
    Unsupported,
    arg,
    norm_dim,
    reads_values,
    register_function,
    register_method,
    register_module,
    structured,
)

if TYPE_CHECKING:
    from ..analysis import SymmetryAnalysis


#: why a linear layer fixes a neuron of a larger run its input carries alone on a dim it does not
#: read (see :meth:`~nfncompile.frontend.analysis.SymmetryAnalysis.fix_pieces`)
_PIECE = "a layer of its own weights runs on one of these neurons alone, others on the rest"


def _linear(a: SymmetryAnalysis, x: TensorLabels, out: Label) -> tuple:
    labels = x.labels[:-1] + (out,)
    return TensorLabels(a.out_shape(), labels)


@register_module(nn.Linear)
@structured
def _module_linear(a: SymmetryAnalysis, mod: nn.Linear, target: str, args: Any, kw: Any):
    """A new run of output neurons. An input that flattens several neuron axes
    (iTransformer's and DLinear's heads: ``(variables, hidden)`` tokens flattened) labels the
    weight viewed ``(out, *factors)``: each factor's neurons move its own axis. An input
    constant along its features (a recurrence's zero state) leaves the weight's input axis to
    the layer's other uses."""
    x = args[0]
    a.fix_pieces(x.labels[:-1], _PIECE)
    if a.viewable(x.labels[-1]):
        lead = a.plain(TensorLabels(x.shape[:-1], x.labels[:-1]), a.op)
        x = TensorLabels(x.shape, lead.labels + x.labels[-1:])
    else:
        x = a.plain(x, a.op)
    out = a.new_run(mod.out_features, "neuron", target)
    constant = (1,) if args[0].labels[-1] is UNIFORM else ()
    a.label_param(a.key(target, "weight"), [out, x.labels[-1]], constant=constant)
    a.label_param(a.key(target, "bias"), [out])
    return _linear(a, x, out)


@register_module(nn.Bilinear)
def _module_bilinear(a: SymmetryAnalysis, mod: nn.Bilinear, target: str, args: Any, kw: Any):
    """``out_k = x1 . W_k x2 + b_k``: each input's features meet one axis of the weight, the
    output is a layer of its own."""
    x1, x2 = args[0], args[1]
    out = a.new_run(mod.out_features, "neuron", target)
    a.label_param(a.key(target, "weight"), [out, x1.labels[-1], x2.labels[-1]])
    a.label_param(a.key(target, "bias"), [out])
    # the leading (batch) dims meet as an elementwise op's do
    inputs = [TensorLabels(x.shape[:-1], x.labels[:-1]) for x in (x1, x2)]
    lead = a.broadcast(inputs, a.out_shape()[:-1])
    return TensorLabels(a.out_shape(), lead.labels + (out,))


@register_module(nn.Embedding)
@reads_values
def _module_embedding(a: SymmetryAnalysis, mod: nn.Embedding, target: str, args: Any, kw: Any):
    """Rows of the table read at the ids: its rows fixed, or, for ids that are neuron
    positions (a VQ codebook's nearest entries), moved with those neurons. Each id is read
    on its own, so the ids' dims are the output's (a layer's outputs binned into ids, or
    thresholded, move the rows read for them)."""
    ids = args[0]
    out = a.new_run(mod.embedding_dim, "neuron", target)
    rows = ids.values if isinstance(ids, TensorLabels) else None
    a.label_param(a.key(target, "weight"), [rows, out])
    lead = ids.labels if isinstance(ids, TensorLabels) else (None,) * (len(a.out_shape()) - 1)
    return TensorLabels(a.out_shape(), lead + (out,))


@register_function(F.embedding)
@reads_values
def _function_embedding(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    """``F.embedding(ids, weight)``: rows of ``weight`` read at the ids (a codebook lookup in
    VQ-VAE-2): its first axis is fixed, or tied to the neurons the ids are positions of
    (``argmin`` over the codebook's distances), and the output's last dim is its second."""
    ids, w = args[0], arg(args, kwargs, 1, "weight")
    if not isinstance(w, TensorLabels) or w.ndim != 2:
        raise Unsupported("F.embedding with a weight that is not a 2-D tensor")
    lead = ids.labels if isinstance(ids, TensorLabels) else (None,) * (len(a.out_shape()) - 1)
    if isinstance(ids, TensorLabels) and ids.values is not None:
        a.tie(w.labels[0], ids.values, "F.embedding reads the rows its ids give")
    else:
        a.fix(w.labels[0], "F.embedding reads the rows its ids give")
    return TensorLabels(a.out_shape(), lead + (w.labels[1],))


@register_function(F.one_hot)
@reads_values
def _one_hot(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    """``F.one_hot(ids, n)``: a new last dim of ``n`` classes, the neurons the ids are
    positions of where they are (VQ's one-hot codes), else positions."""
    ids = args[0]
    if not isinstance(ids, TensorLabels):
        raise Unsupported("F.one_hot of a non-tensor")
    return TensorLabels(a.out_shape(), ids.labels + (ids.values,))


@register_function(F.embedding_bag)
def _function_embedding_bag(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    """``F.embedding_bag(ids, weight, offsets, ...)`` (``nn.EmbeddingBag``, DLRM's sparse
    features): the rows the ids give, summed, averaged or maxed per bag, each feature on its
    own; the rows are fixed, the output's last dim is the weight's second."""
    w = arg(args, kwargs, 1, "weight")
    if not isinstance(w, TensorLabels) or w.ndim != 2:
        raise Unsupported("F.embedding_bag with a weight that is not a 2-D tensor")
    a.fix(w.labels[0], "F.embedding_bag reads the rows its ids give")
    for k, name in ((0, "input"), (2, "offsets"), (8, "per_sample_weights")):
        a.fix_all(arg(args, kwargs, k, name), "F.embedding_bag's ids and weights are positions")
    return TensorLabels(a.out_shape(), (None,) * (len(a.out_shape()) - 1) + (w.labels[1],))


@register_function(F.linear)
@structured
def _function_linear(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    """``x @ weight.T + bias``. The contracted axes are tied, flattened products factor by
    factor (a KAN's spline features ``(B, in * G)`` against its weight viewed ``(out, in * G)``)."""
    x, w, b = args[0], arg(args, kwargs, 1, "weight"), arg(args, kwargs, 2, "bias")
    if not isinstance(w, TensorLabels) or w.ndim != 2:
        raise Unsupported("F.linear with a weight that is not a 2-D tensor")
    a.fix_pieces(x.labels[:-1], _PIECE)
    a.tie(x.labels[-1], w.labels[1], "F.linear input meets an unlabelled weight axis")
    out = a.plain_label(w.labels[0])
    if isinstance(b, TensorLabels):
        a.tie(out, a.plain_label(b.labels[0]) if b.ndim else None)
    return _linear(a, x, a.name_output(out))


# torch.sparse.mm: a sparse constant (a graph's normalised adjacency, RecBole's LightGCN)
# times a dense tensor, which the analysis reads as the dense product it equals
@register_function(torch.matmul, operator.matmul, torch.mm, torch.bmm, torch.sparse.mm)
@register_method("matmul", "mm", "bmm")
@structured
def _matmul(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    """``x @ y``: the contracted axes tied (flattened products factor by factor), the batch
    dims broadcast."""
    x, y = args[0], args[1]
    if not (isinstance(x, TensorLabels) and isinstance(y, TensorLabels)):
        raise Unsupported("matmul with a non-tensor operand")
    # a 1-D operand is a row (x) or a column (y) whose one-position dim the result drops
    row, column = x.ndim == 1, y.ndim == 1
    if row:
        x = TensorLabels((1, *x.shape), (None, *x.labels))
    if column:
        y = TensorLabels((*y.shape, 1), (*y.labels, None))
    # a stacked parameter ((members, in, out): an ensemble's or the experts' weights): its
    # batch axis the heads of its output columns
    y, seeded = _stacked(a, y, y.ndim - 1) if not column else (y, False)
    if not seeded and not row:
        x, _ = _stacked(a, x, x.ndim - 2)
    a.tie(x.labels[-1], y.labels[-2], "matmul contracts neurons with positions")
    bx = TensorLabels(x.shape[:-2], x.labels[:-2])
    by = TensorLabels(y.shape[:-2], y.labels[:-2])
    shape = a.out_shape()
    # the heads (a seeded operand's, else the first's) label the output's batch dim
    both = [by, bx] if seeded else [bx, by]
    batch = a.broadcast(both, shape[: len(shape) - 2 + row + column], batch=True)
    rows = () if row else (x.labels[-2],)
    # x @ self.weight: the output neurons are the weight's axis, named after its module; a
    # flattened product of columns is carried through as the rows are (peft's conv DoRA:
    # lora_B.weight @ lora_A.weight.flatten(1), then reshaped to the conv's weight)
    cols = y.labels[-1]
    if not isinstance(cols, Prod):
        cols = a.name_output(a.plain_label(cols, uniform=True))
    out = () if column else (cols,)
    return TensorLabels(shape, batch.labels + rows + out)


def _stacked(a: SymmetryAnalysis, t: TensorLabels, axis: int) -> tuple[TensorLabels, bool]:
    """``t`` with its one batch dim of more than one position and its dim ``axis`` relabelled
    as a stacked parameter's heads and per-head dims (:func:`.stacked.seed`), and whether they
    were (``t`` unchanged where it is no such parameter)."""
    batch = [d for d in range(t.ndim - 2) if t.shape[d] > 1]
    seeded = stacked.seed(a, t, batch[0], axis) if t.ndim >= 3 and len(batch) == 1 else None
    return (t, False) if seeded is None else (seeded, True)


@register_function(torch._grouped_mm, *([F.grouped_mm] if hasattr(F, "grouped_mm") else []))
@structured
def _grouped_mm(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    """``grouped_mm(mat_a, mat_b, offs=offs)`` (a mixture of experts' dispatch, Hugging Face's
    ``grouped_mm`` experts): ``mat_a``'s rows, cut into groups at ``offs``, each times its
    group's matrix of a 3-D ``mat_b``; or, both 3-D, a batch of products (a matmul).

    The contracted axes are tied and the output's columns are ``mat_b``'s. The groups meet
    ``mat_b``'s matrices in order (row group ``i`` with matrix ``i``), so ``mat_b``'s groups
    dim and ``mat_a``'s rows are positions; a bias ``(groups, N)`` joins the columns.
    """
    x, y = args[0], arg(args, kwargs, 1, "mat_b")
    bias = arg(args, kwargs, 3, "bias")
    if not (isinstance(x, TensorLabels) and isinstance(y, TensorLabels)):
        raise Unsupported("grouped_mm with a non-tensor operand")
    if x.ndim == 2 and y.ndim == 3:
        offs = arg(a.node.args, a.node.kwargs, 2, "offs")
        offs = offs if isinstance(offs, torch.fx.Node) else None
        return stacked.grouped(a, x, y, offs, bias if isinstance(bias, TensorLabels) else None)
    if x.ndim != 3 or y.ndim != 3:
        raise Unsupported(f"grouped_mm of a {x.ndim}-D and a {y.ndim}-D operand (jagged K)")
    out = _matmul(a, (x, y), {})
    if isinstance(bias, TensorLabels):
        a.fix(bias.labels[0] if bias.ndim == 2 else None, "a bias per group of rows")
        a.tie(out.labels[-1], bias.labels[-1])
    return out


@register_function(torch.mv, torch.dot, torch.vdot, torch.inner)
@register_method("mv", "dot", "vdot", "inner")
@structured
def _mv(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    """``torch.mv(M, v)`` and ``torch.dot(u, v)`` (spectral norm's ``u . (W v)``): the
    contracted axes are tied (a flattened weight's factor by factor); ``mv`` keeps ``M``'s
    rows."""
    x, y = args[0], args[1]
    if not (isinstance(x, TensorLabels) and isinstance(y, TensorLabels)) or y.ndim != 1:
        raise Unsupported("mv/dot of a non-tensor or of a matrix")
    a.tie(x.labels[-1], y.labels[0], "a product contracts neurons with positions")
    if x.ndim == 1:
        return TensorLabels(a.out_shape(), ())
    return TensorLabels(a.out_shape(), (a.plain_label(x.labels[0], uniform=True),))


@register_function(torch.cdist)
def _cdist(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    """``torch.cdist(x1, x2)``: distances between the rows of ``x1`` and of ``x2`` over their
    features, which are tied (any p-norm is invariant to permuting them alike)."""
    x, y = args[0], arg(args, kwargs, 1, "x2")
    if not (isinstance(x, TensorLabels) and isinstance(y, TensorLabels)):
        raise Unsupported("cdist with a non-tensor operand")
    a.tie(x.labels[-1], y.labels[-1], "cdist compares features with positions")
    shape = a.out_shape()
    batch = a.broadcast(
        [TensorLabels(x.shape[:-2], x.labels[:-2]), TensorLabels(y.shape[:-2], y.labels[:-2])],
        shape[:-2],
    )
    return TensorLabels(shape, batch.labels + (x.labels[-2], y.labels[-2]))


@register_function(torch.addmm, torch.baddbmm, torch.sparse.addmm)
@register_method("addmm", "baddbmm")
@structured
def _addmm(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    """``beta * input + alpha * (x @ y)``: a matmul, added to ``input`` elementwise."""
    inp = arg(args, kwargs, 0, "input")
    x = arg(args, kwargs, 1, "mat1", kwargs.get("batch1"))
    y = arg(args, kwargs, 2, "mat2", kwargs.get("batch2"))
    product = _matmul(a, (x, y), {})
    # a stacked weight's product (REDQ's ``baddbmm(bias, x, W)``): its heads label the sum
    heads = any(a.is_heads(lab) for lab in product.labels)
    return a.broadcast([product, inp] if heads else [inp, product])


@register_function(torch.outer, torch.ger)
def _outer(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    """``torch.outer(x, y)``: ``einsum("i,j->ij", x, y)``."""
    x, y = args[0], arg(args, kwargs, 1, "vec2")
    return _einsum(a, ("i,j->ij", x, y), {})


@register_function(torch.einsum)
@structured
def _einsum(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    """``torch.einsum(equation, *operands)``: the dims one index letter names are one index
    map, so their labels are tied (as an elementwise op ties them: a one-sized dim broadcasts,
    a dim that depends on position fixes its partners); the output takes each of its letters'
    label, and a letter summed over is invariant under the permutation all its dims share."""
    equation = args[0]
    ops = list(args[1]) if len(args) == 2 and isinstance(args[1], (list, tuple)) else list(args[1:])
    if not isinstance(equation, str) or not all(isinstance(o, TensorLabels) for o in ops):
        raise Unsupported("einsum in the sublist format or with a non-tensor operand")
    # a flattened product is fixed; a uniform dim (an input expanded for every ensemble
    # member) imposes nothing on the dims it meets
    ops = [
        TensorLabels(o.shape, tuple(a.plain_label(lab, uniform=True) for lab in o.labels))
        for o in ops
    ]
    lhs, arrow, rhs = equation.replace(" ", "").partition("->")
    terms = [_einsum_tokens(t, op.ndim) for t, op in zip(lhs.split(","), ops)]
    if len(terms) != len(ops) or any(t is None for t in terms):
        raise Unsupported(f"einsum equation {equation!r} does not fit its operands")
    ellipsis = max((sum(isinstance(k, int) for k in t) for t in terms), default=0)
    if arrow:
        out = _einsum_tokens(rhs, None, ellipsis)
    else:  # implicit: the broadcast dims, then every letter used once, in alphabetical order
        letters = [k for t in terms for k in t if isinstance(k, str)]
        out = [
            *range(ellipsis - 1, -1, -1),
            *sorted(k for k in set(letters) if letters.count(k) == 1),
        ]
    shape = a.out_shape()
    if out is None or len(out) != len(shape):
        raise Unsupported(f"einsum equation {equation!r} does not fit its output")
    ops, first = _einsum_stacked(a, terms, ops, out)
    dims: dict = {}
    for term, op in zip(terms, ops):
        for k, lab, n in zip(term, op.labels, op.shape):
            dims.setdefault(k, []).append(TensorLabels((n,), (lab,)))
    for k, lab in first.items():  # a seeded operand's heads label the output's heads dim
        dims[k].sort(key=lambda t: t.labels[0] != lab)
    reason = "einsum indexes neurons together with positions"
    # every letter, summed ones too: its dims tied as an elementwise op ties them; a letter of
    # every operand and the output is a batch dim, as a matmul's (attention's heads)
    batch = {k for k in dims if k in out and all(k in t for t in terms)}
    merged = {
        k: a.broadcast(ts, (max(t.shape[0] for t in ts),), reason, batch=k in batch).labels[0]
        for k, ts in dims.items()
    }
    return TensorLabels(shape, tuple(merged[k] for k in out))


def _einsum_stacked(a: SymmetryAnalysis, terms: list, ops: list, out: list) -> tuple[list, dict]:
    """The operands with a stacked parameter's heads and per-head dims seeded
    (:func:`.stacked.seed`): an operand's last letter, where the output keeps it and no other
    operand has it, is its dims (XLNet's ``hnd``: ``d``; as a matmul's columns), its one other
    letter of more than one position that the output keeps its heads (``n``). Returns the
    operands and, per seeded heads letter, its heads label."""
    ops, first = list(ops), {}
    for i, (term, op) in enumerate(zip(terms, ops)):
        others = [k for j, t in enumerate(terms) if j != i for k in t]
        if op.ndim < 2 or term[-1] not in out or term[-1] in others or term.count(term[-1]) > 1:
            continue
        d = len(term) - 1
        heads = [h for h, k in enumerate(term) if k in out and h != d and op.shape[h] > 1]
        if len(heads) != 1 or term.count(term[heads[0]]) != 1:
            continue
        seeded = stacked.seed(a, op, heads[0], d)
        if seeded is not None:
            ops[i] = seeded
            first[term[heads[0]]] = seeded.labels[heads[0]]
    return ops, first


@register_function(torch.tensordot)
def _tensordot(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    """``torch.tensordot(x, y, dims)``: the einsum that sums ``x``'s ``dims`` against ``y``'s
    (an int: ``x``'s last ``dims`` dims against ``y``'s first), the free dims of ``x`` then of
    ``y`` in order (e3nn's tensor products contract this way)."""
    x, y, dims = args[0], args[1], arg(args, kwargs, 2, "dims", 2)
    if not (isinstance(x, TensorLabels) and isinstance(y, TensorLabels)):
        raise Unsupported("tensordot of a value that is no tensor")
    if isinstance(dims, int):
        xs, ys = list(range(x.ndim - dims, x.ndim)), list(range(dims))
    else:
        xs, ys = ([d] if isinstance(d, int) else list(d) for d in dims)
    xs, ys = [norm_dim(d, x.ndim) for d in xs], [norm_dim(d, y.ndim) for d in ys]
    letters = iter("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    tx = [next(letters) for _ in range(x.ndim)]
    ty = [next(letters) for _ in range(y.ndim)]
    for dx, dy in zip(xs, ys):
        ty[dy] = tx[dx]
    out = [k for d, k in enumerate(tx) if d not in xs] + [
        k for d, k in enumerate(ty) if d not in ys
    ]
    equation = f"{''.join(tx)},{''.join(ty)}->{''.join(out)}"
    return _einsum(a, (equation, x, y), {})


def _einsum_tokens(term: str, ndim: int | None, ellipsis: int = 0) -> list | None:
    """One einsum term as a token per dim: its letter, or for a dim of ``...`` its position
    counted from the right (``ndim`` gives the operand's, else ``ellipsis`` is the count)."""
    if "..." not in term:
        return list(term) if ndim is None or len(term) == ndim else None
    head, _, tail = term.partition("...")
    count = ellipsis if ndim is None else ndim - len(head) - len(tail)
    if count < 0 or "." in head + tail:
        return None
    return [*head, *range(count - 1, -1, -1), *tail]
