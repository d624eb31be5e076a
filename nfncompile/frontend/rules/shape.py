"""Op rules that move, reshape, index, concatenate and split dims.

Index maps carry labels along: a slice of a labelled dim is the slice of its label, a concat
is the concatenation of labels, a split the matching slices. Reshapes are handled by
:func:`reshape_labels`.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from ...errors import TraceError
from .. import fx, stacked
from ..labels import GATHERED, INDEXED, UNIFORM, Label, Prod, Seg, TensorLabels
from .chunks import chunks_at, mirror, only_selected, piece
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
from .reorder import read_chain

if TYPE_CHECKING:
    from ..analysis import SymmetryAnalysis


def reshape_labels(a: SymmetryAnalysis, info: TensorLabels, shape: tuple) -> TensorLabels:
    """Labels after reshaping ``info`` to ``shape`` (view, flatten, squeeze, ...).

    The dims are matched in the smallest groups with equal products (row-major order); each
    group of source dims is merged into one dim (:func:`merge_label`), then split into the
    group's target dims (:func:`split_label`). A labelled one-neuron dim that disappears is
    fixed.

    Examples
    --------
    Flattening channels x positions, and space-to-depth (``bs x bs`` offsets before the
    channels: the channels repeated):

    >>> from nfncompile.frontend.labels import Seg
    >>> c = (Seg(0, 0, 3),)
    >>> reshape_labels(None, TensorLabels((3, 4), (c, None)), (12,)).labels
    ((Seg(run=0, offset=0, length=3, inner=4),),)
    >>> reshape_labels(None, TensorLabels((2, 3), (None, c)), (6,)).labels[0] == c + c
    True
    """
    shape = tuple(shape)
    for d, n in enumerate(info.shape):
        if n == 1 and info.labels[d] is not None:
            a.fix(info.labels[d], "reshape drops a one-neuron axis")
    src = [(d, n) for d, n in enumerate(info.shape) if n != 1]
    dst = [(d, n) for d, n in enumerate(shape) if n != 1]
    labels: list = [None] * len(shape)
    i = j = 0
    while i < len(src) or j < len(dst):
        gi, gj = [src[i]] if i < len(src) else [], [dst[j]] if j < len(dst) else []
        i, j = i + len(gi), j + len(gj)
        pi = math.prod(n for _, n in gi)
        pj = math.prod(n for _, n in gj)
        while pi != pj:
            if pi < pj and i < len(src):
                gi.append(src[i])
                pi *= src[i][1]
                i += 1
            elif pj < pi and j < len(dst):
                gj.append(dst[j])
                pj *= dst[j][1]
                j += 1
            else:
                raise TraceError(f"internal: reshape {info.shape} -> {shape} does not match")
        merged = merge_label(a, [info.labels[d] for d, _ in gi], [n for _, n in gi])
        split = split_label(a, merged, [n for _, n in gj], [d for d, _ in gj])
        for (d, _), lab in zip(gj, split):
            labels[d] = lab
    return TensorLabels(shape, tuple(labels))


def merge_label(a: SymmetryAnalysis, labels: list, sizes: list) -> Any:
    """The label of dims of ``sizes`` flattened into one (row-major).

    One labelled dim among unlabelled ones: its neurons, each spanning the positions of the
    dims after it, repeated for every position of the dims before it. Several labelled dims:
    a :class:`~nfncompile.frontend.labels.Prod` of them. A split's heads and dims flattened
    back (attention's ``(H, C / H) -> C``) are the split's chunks
    (:class:`~nfncompile.frontend.labels.HeadSplit`).
    """
    # a dim of one position that holds no neuron adds nothing: (1, H) flattened is H (a
    # multi-query key/value head repeated for every query head: its copies stay alike)
    kept = [
        t for t, (lab, n) in enumerate(zip(labels, sizes)) if n > 1 or lab not in (None, UNIFORM)
    ]
    if kept and len(kept) < len(labels):
        labels, sizes = [labels[t] for t in kept], [sizes[t] for t in kept]
    if len(labels) == 1:
        return labels[0]
    if a is not None:
        if len(labels) == 2 and (heads := a.merge_heads(*labels)) is not None:
            return heads  # a split's heads and dims flattened back: its chunks
        if len(labels) == 2 and labels[1] is UNIFORM and a.is_whole_heads(labels[0]):
            # each head copied in a row (GQA's key/value heads repeated for the queries)
            return tuple(Seg(s.run, s.offset, s.length, s.inner * sizes[1]) for s in labels[0])
        # heads last, after dims of positions (SAM's batch and heads, (B * H, N, d)): the
        # heads repeated for each position, read back by a view; any other heads dim is
        # positions that stay in place, as an unlabelled dim's
        tiled = a.is_heads(labels[-1]) and all(lab in (None, UNIFORM) for lab in labels[:-1])
        if not tiled:
            a.hold_heads(*(lab for lab in labels if a.is_heads(lab)))
        labels = [None if a.is_heads(lab) and not tiled else lab for lab in labels]
    if all(lab is UNIFORM for lab in labels):
        return UNIFORM
    labelled = [t for t, lab in enumerate(labels) if lab is not None and lab is not UNIFORM]
    if not labelled:
        return None
    if len(labelled) == 1 and isinstance(labels[labelled[0]], tuple):
        t = labelled[0]
        after = math.prod(sizes[t + 1 :])
        lab = tuple(Seg(s.run, s.offset, s.length, s.inner * after) for s in labels[t])
        return lab * math.prod(sizes[:t])
    factors, dims = [], []
    for lab, n in zip(labels, sizes):
        if isinstance(lab, Prod):
            factors += lab.factors
            dims += lab.sizes
        else:
            factors.append(None if lab is UNIFORM else lab)
            dims.append(n)
    return Prod(tuple(factors), tuple(dims))


def split_label(a: SymmetryAnalysis, label: Any, sizes: list, dims: list | None = None) -> list:
    """The labels of the dims of ``sizes`` that one dim labelled ``label`` is split into.

    A flattened product splits back at its factors' boundaries. A label whose neurons each
    span the positions of every dim after the first stays on the first; otherwise the first
    dim counts equal chunks of the label (a ``2C`` vector viewed as ``(2, C)``, attention's
    ``C`` as ``(heads, C / heads)``): each chunk is a head of a
    :class:`~nfncompile.frontend.labels.HeadSplit`, whose heads label the first dim and whose
    dims, standing for every chunk, are split over the other dims. Where the split cannot
    hold, the chunks are tied to move together; where that leaves the label wholly fixed, the
    graph is analysed again with its neurons made in blocks of the other dims' positions, each
    a neuron of the first dim (:func:`~nfncompile.frontend.graph.build_symmetry_graph`). Where every use of the
    reshaped tensor selects one chunk at a time (``dims``: the output dims of ``sizes``), the
    chunks are not tied: see :mod:`~nfncompile.frontend.rules.chunks`. A split that cuts
    through a neuron's positions fixes the label.
    """
    if len(sizes) == 1:
        return [label]
    if label is None or label is UNIFORM:
        return [label] * len(sizes)
    if isinstance(label, Prod):
        return _split_product(a, label, sizes)
    rest = math.prod(sizes[1:])
    if all(s.inner % rest == 0 for s in label):
        first = tuple(Seg(s.run, s.offset, s.length, s.inner // rest) for s in label)
        return [first] + [None] * (len(sizes) - 1)
    try:
        chunks = [a.slice_label(label, k * rest, (k + 1) * rest) for k in range(sizes[0])]
    except Unsupported:
        a.fix(label, "reshape splits neurons across several axes")
        return [None] * len(sizes)
    inner = dims[1:] if dims else None
    if all(chunk == chunks[0] for chunk in chunks[1:]):
        # one label repeated for each position of the first dim (heads merged with the
        # batch, viewed apart again): those positions, then the label
        return [None, *split_label(a, chunks[0], sizes[1:], inner)]
    # or each neuron of the first dim is a block of ``rest`` (a Linear's output viewed as
    # (C, H, W) feature maps): tried when this reading leaves the label fixed
    a.chunked.append((label, rest))
    single = all(s.inner == 1 for c in chunks for s in c)
    if dims and a.node is not None and single and only_selected(a.node, dims[0]):
        # q, k, v = qkv.unbind(0): each chunk its own neurons, split alike
        a.selected_chunks[(a.node.name, dims[0])] = chunks
        made = len(a.head_splits)
        since = (len(a.ties), len(a.fixes), len(a.cuts))
        first = split_label(a, chunks[0], sizes[1:], inner)
        ours = a.head_splits[made:]
        if not ours:  # the other chunks constrained as the first: read through its labels
            mirror(a, chunks, since)
            return [None, *first]
        for chunk in chunks[1:]:
            made = len(a.head_splits)
            split_label(a, chunk, sizes[1:], inner)
            theirs = a.head_splits[made:]
            if len(theirs) == len(ours):  # the heads of q, k and v: each chunk its own splits
                a.twin_runs[tuple(chunk)] = {
                    r: t for o, h in zip(ours, theirs) for r, t in ((o.heads, h.heads), (o.dims, h.dims))
                }  # fmt: skip
        return [None, *first]
    if len({s.inner for c in chunks for s in c}) == 1 and sizes[0] > 1:
        # each chunk a head (attention's C -> (H, C / H)): see HeadSplit; or a group of
        # channels, each spanning its positions (GroupNorm written out: (groups, C / groups
        # * H * W)), whose split is made so in the next round
        split = a.split_heads(chunks)
        if split is not None:
            heads, dims = split
            return [heads, *split_label(a, dims, sizes[1:], inner)]
    for chunk in chunks[1:]:
        a.tie(chunks[0], chunk)
    return [None, *split_label(a, chunks[0], sizes[1:], inner)]


def _split_product(a: SymmetryAnalysis, label: Prod, sizes: list) -> list:
    out, k = [], 0
    for n in sizes:
        group, size = [], 1
        while size < n and k < len(label.sizes):
            group.append(k)
            size *= label.sizes[k]
            k += 1
        if size != n:
            a.fix(label, "reshape splits a flattened product inside one of its axes")
            return [None] * len(sizes)
        out.append(
            merge_label(a, [label.factors[t] for t in group], [label.sizes[t] for t in group])
        )
    return out


@register_module(nn.Flatten, nn.Unflatten)
@structured
def _module_reshape(a: SymmetryAnalysis, mod: nn.Module, target: str, args: Any, kw: Any):
    return reshape_labels(a, args[0], a.out_shape())


@register_function(
    torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.ravel, torch.unflatten
)
@register_method(
    "view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as",
    "ravel", "squeeze_", "unsqueeze_",
)  # fmt: skip
@structured
def _reshape(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    if a.node.target == "view" and len(args) == 2 and isinstance(args[1], torch.dtype):
        raise Unsupported("view as another dtype")
    chain = read_chain(a, args[0])
    if chain is not None:  # a channel shuffle
        return chain
    return reshape_labels(a, _first_of_reshapes(a, args[0]), a.out_shape())


#: reshapes whose only argument of interest is the tensor (the shape is the node's own)
_RESHAPES = frozenset({"view", "reshape", "flatten", "unflatten"})
_TORCH_RESHAPES = (torch.reshape, torch.flatten, torch.unflatten)


def _first_of_reshapes(a: SymmetryAnalysis, x: TensorLabels) -> TensorLabels:
    """The labels a chain of reshapes ending at this node starts from: where ``x`` is a
    reshape that nothing else reads, the tensor before it (and so on back), else ``x``. Two
    reshapes are one, and read as one they split a dim once: Falcon's ``(3H, d)`` then
    ``(H, 3)`` is Bloom's ``(H, 3, d)``, whose middle dim is then its heads' q, k and v."""
    node, out = a.node.args[0], x
    while isinstance(node, torch.fx.Node) and len(node.users) == 1 and node.args:
        reshape = (node.op == "call_method" and node.target in _RESHAPES) or (
            node.op == "call_function" and node.target in _TORCH_RESHAPES
        )
        before = node.args[0]
        if not reshape or not isinstance(before, torch.fx.Node):
            break
        labels = a.env.get(before)
        if not isinstance(labels, TensorLabels):
            break
        # the skipped reshape's labels are read by nothing: heads it split are no family's
        # (else, free of every constraint, they would move as blocks of their own)
        a.hold_heads(
            *((Seg(s.heads, 0, len(s.chunks)),) for s in a.head_splits if s.node == node.name)
        )
        node, out = before, labels
    return out


@register_module(nn.PixelShuffle, nn.PixelUnshuffle)
@structured
def _module_pixel_shuffle(a: SymmetryAnalysis, mod: nn.Module, target: str, args: Any, kw: Any):
    up = isinstance(mod, nn.PixelShuffle)
    return _pixel_shuffle(a, args[0], mod.upscale_factor if up else mod.downscale_factor, up)


@register_function(F.pixel_shuffle, F.pixel_unshuffle)
@structured
def _function_pixel_shuffle(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    up = a.node.target is F.pixel_shuffle
    factor = arg(args, kwargs, 1, "upscale_factor" if up else "downscale_factor")
    return _pixel_shuffle(a, args[0], factor, up)


def _pixel_shuffle(a: SymmetryAnalysis, x: TensorLabels, r: int, up: bool) -> TensorLabels:
    """``pixel_shuffle``: each block of ``r * r`` consecutive channels becomes one output
    channel's ``r x r`` pixels (a super-resolution net's upsampler), so a neuron of the output
    is a block of input channels, which move together: a run of single channels is asked for
    in such blocks (:meth:`SymmetryAnalysis.request_blocks`) and fixed until then.
    ``pixel_unshuffle`` is the inverse: each channel's ``r x r`` pixels become a block of
    channels. The pixels inside a block keep their place."""
    step = r * r
    x = a.keep(a.plain(x, a.op), tuple(range(x.ndim - 2, x.ndim)), "pixel_shuffle moves pixels")
    reason = "pixel_shuffle makes each block of channels one channel's pixels"
    out = a.regrouped(x.labels[-3], step, not up, reason)
    shape = a.out_shape()
    return TensorLabels(shape, x.labels[:-3] + (out, None, None))


@register_function(torch.view_as_complex)
@structured
def _view_as_complex(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    """Pairs of the last dim read as complex numbers (Llama's rotary embedding)."""
    x = args[0]
    a.fix(a.plain_label(x.labels[-1]), "view_as_complex reads a real and an imaginary part")
    return TensorLabels(a.out_shape(), x.labels[:-1])


@register_function(torch.view_as_real)
@structured
def _view_as_real(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    return TensorLabels(a.out_shape(), args[0].labels + (None,))


@register_method("permute")
@register_function(torch.permute)
@structured
def _permute(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    x = args[0]
    dims = arg(args, kwargs, 1, "dims")
    if isinstance(dims, int) or len(args) > 2:
        dims = list(args[1:])
    dims = [norm_dim(d, x.ndim) for d in dims]
    return TensorLabels(a.out_shape(), tuple(x.labels[d] for d in dims))


@register_method("transpose", "swapaxes", "swapdims", "transpose_")
@register_function(torch.transpose, torch.swapaxes, torch.swapdims)
@structured
def _transpose(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    x = args[0]
    d0 = norm_dim(arg(args, kwargs, 1, "dim0"), x.ndim)
    d1 = norm_dim(arg(args, kwargs, 2, "dim1"), x.ndim)
    labels = list(x.labels)
    labels[d0], labels[d1] = labels[d1], labels[d0]
    return TensorLabels(a.out_shape(), tuple(labels))


@register_method("t")
@register_function(torch.t)
@structured
def _t(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    return TensorLabels(a.out_shape(), tuple(reversed(args[0].labels)))


@register_method("movedim", "moveaxis")
@register_function(torch.movedim, torch.moveaxis)
@structured
def _movedim(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    x = args[0]
    src, dst = arg(args, kwargs, 1, "source"), arg(args, kwargs, 2, "destination")
    src = [src] if isinstance(src, int) else list(src)
    dst = [dst] if isinstance(dst, int) else list(dst)
    src = [norm_dim(d, x.ndim) for d in src]
    dst = [norm_dim(d, x.ndim) for d in dst]
    order: list = [None] * x.ndim
    for s, d in zip(src, dst):
        order[d] = s
    rest = iter(d for d in range(x.ndim) if d not in src)
    order = [o if o is not None else next(rest) for o in order]
    return TensorLabels(a.out_shape(), tuple(x.labels[d] for d in order))


@register_method("expand", "expand_as", "broadcast_to")
@register_function(torch.broadcast_to)
@structured
def _expand(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    return _expanded(a, args[0], a.out_shape())


@register_function(torch.broadcast_tensors)
@structured
def _broadcast_tensors(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    # each tensor expanded to the shape they share, on its own: no value of one meets another's
    tensors = [t for t in args if isinstance(t, TensorLabels)]
    if len(tensors) != len(args):
        raise Unsupported("torch.broadcast_tensors of a value that is no tensor")
    shape = tuple(torch.broadcast_shapes(*(t.shape for t in tensors)))
    return tuple(_expanded(a, t, shape) for t in tensors)


@register_function(torch.diag, torch.diag_embed, torch.diagonal)
@register_method("diag", "diag_embed", "diagonal")
def _diag(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    """A vector set on a matrix's diagonal (``diag`` of a 1-D tensor, ``diag_embed`` of the last
    dim) moves with both of the matrix's dims, since ``P diag(v) P^T = diag(P v)``; a matrix's
    diagonal (``diag`` of a 2-D tensor, ``diagonal``) keeps the label its two dims share."""
    x, name = args[0], getattr(a.node.target, "__name__", a.node.target)
    offset = arg(args, kwargs, 1, "offset" if name != "diag" else "diagonal", 0)
    if offset != 0:
        raise Unsupported(f"{name} off the main diagonal reads neurons by position")
    if name == "diag_embed" or (name == "diag" and x.ndim == 1):
        if name == "diag_embed" and (
            arg(args, kwargs, 2, "dim1", -2) % (x.ndim + 1) != x.ndim - 1
            or arg(args, kwargs, 3, "dim2", -1) % (x.ndim + 1) != x.ndim
        ):
            raise Unsupported("diag_embed into other dims than the last two")
        return TensorLabels(a.out_shape(), (*x.labels[:-1], x.labels[-1], x.labels[-1]))
    d1 = norm_dim(arg(args, kwargs, 2, "dim1", 0), x.ndim) if name == "diagonal" else 0
    d2 = norm_dim(arg(args, kwargs, 3, "dim2", 1), x.ndim) if name == "diagonal" else 1
    if x.labels[d1] != x.labels[d2]:
        raise Unsupported(f"{name} of dims that hold different neurons")
    rest = tuple(lab for d, lab in enumerate(x.labels) if d not in (d1, d2))
    return TensorLabels(a.out_shape(), (*rest, x.labels[d1]))


def _expanded(a: SymmetryAnalysis, x: TensorLabels, shape: tuple) -> TensorLabels:
    """``x`` expanded to ``shape``: new leading dims and size-1 dims repeat one value."""
    labels = [UNIFORM] * (len(shape) - x.ndim)  # new leading dims: copies
    for d, (lab, n) in enumerate(zip(x.labels, x.shape)):
        if n == shape[len(shape) - x.ndim + d]:
            labels.append(lab)
        else:  # a size-1 dim expanded: the same value at every position
            a.fix(lab, "broadcasts one neuron's value to all positions")
            labels.append(UNIFORM)
    return TensorLabels(shape, tuple(labels))


@register_method("repeat", "tile")
@register_function(torch.tile)
@structured
def _repeat(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    """``x.repeat(*reps)``, and ``x.tile(reps)``, which is the repeat of ``reps`` padded with
    leading ones to ``x``'s dims."""
    x = args[0]
    if "dims" in kwargs:  # torch.tile(x, dims=...)
        args = (x, kwargs["dims"])
    reps = list(args[1]) if len(args) == 2 and not isinstance(args[1], int) else list(args[1:])
    reps = [1] * (x.ndim - len(reps)) + reps
    shape = a.out_shape()
    labels = [UNIFORM] * (len(shape) - x.ndim)  # new leading dims: copies
    for lab, r, n in zip(x.labels, reps[len(shape) - x.ndim :], x.shape):
        if isinstance(lab, Prod):
            lab = a.plain_label(lab)
        if isinstance(lab, tuple):
            labels.append(lab * r)
        else:
            labels.append(UNIFORM if lab is UNIFORM or (n == 1 and r > 1) else None)
    return TensorLabels(shape, tuple(labels))


@register_method("repeat_interleave")
@register_function(torch.repeat_interleave)
@structured
def _repeat_interleave(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    """Each position ``r`` times in a row along ``dim`` (GQA's key/value heads): that dim with
    a new one of ``r`` copies after it, flattened; without ``dim``, the flattened tensor's."""
    x, r = args[0], arg(args, kwargs, 1, "repeats")
    if not isinstance(x, TensorLabels) or not isinstance(r, int):
        raise Unsupported("repeats given per position (a tensor)")
    dim = arg(args, kwargs, 2, "dim")
    if dim is None:
        x, dim = reshape_labels(a, x, (math.prod(x.shape),)), 0
    d = norm_dim(dim, x.ndim)
    lab = merge_label(a, [x.labels[d], UNIFORM], [x.shape[d], r])
    return TensorLabels(a.out_shape(), x.with_label(d, lab).labels)


@register_method("unfold")
def _windows(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    """``x.unfold(dimension, size, step)``: windows of ``size`` positions along a dim, taken
    every ``step`` (the patches of a series: TimeXer, PatchTST). The windows and the positions
    inside them are positions of that dim (fixed where it holds neurons); every other dim keeps
    its label. Without this rule the call was probed, and a probe that matched a neuron axis
    with another of the same size found it "not equivariant"."""
    x = args[0]
    d = norm_dim(arg(args, kwargs, 1, "dimension"), x.ndim)
    if x.labels[d] is not None:
        a.fix(x.labels[d], INDEXED)
    labels = x.labels[:d] + (None,) + x.labels[d + 1 :] + (None,)
    return TensorLabels(a.out_shape(), labels)


@register_function(getattr)
@structured
def _attribute(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    """A field of a named result (``x.topk(k).indices``, ``torch.max(x, 1).values``): the
    labels of that field (the fields as ``torch.return_types`` names them)."""
    value, name = args[0], args[1]
    source = a.sources[0][0] if a.sources[0] else None
    op = getattr(source, "target", None)
    op = op if isinstance(op, str) else getattr(op, "__name__", "")
    fields = getattr(value, "_fields", None) or getattr(
        getattr(torch.return_types, op, None), "__match_args__", ()
    )
    if isinstance(value, tuple) and name in fields and len(fields) == len(value):
        return value[list(fields).index(name)]
    if isinstance(value, TensorLabels) and name in _TRANSPOSES:
        # a tensor's transposes (Falcon's ``x @ self.weight.T``): all dims reversed (``T``,
        # ``H``) or the last two swapped (``mT``, ``mH``); conjugation keeps positions
        order = list(range(value.ndim))[::-1]
        if name in ("mT", "mH"):
            order = [*range(value.ndim - 2), value.ndim - 1, value.ndim - 2]
        return TensorLabels(a.out_shape(), tuple(value.labels[d] for d in order))
    if isinstance(value, TensorLabels) and name in ("real", "imag"):
        # a complex tensor's parts (asteroid's complex convs): views of the same positions
        return TensorLabels(a.out_shape(), value.labels)
    raise Unsupported(f"the attribute {name!r} of a {type(value).__name__}")


#: the transposes a tensor has as attributes
_TRANSPOSES = ("T", "H", "mT", "mH")


@register_function(operator.getitem)
@structured
@reads_values  # an index tensor of neuron positions reads the dim of those neurons
def _getitem(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    x, idx = args
    if not isinstance(x, TensorLabels):
        return x[idx]
    raw = a.node.args[1]
    if _sequence_as_tuple(idx):
        idx, raw = tuple(idx), tuple(raw)
    idx = idx if isinstance(idx, tuple) else (idx,)
    raw = raw if isinstance(raw, tuple) else (raw,)
    # a tuple inside the index is a sequence of positions, as a list is (RecBole's FiGNN:
    # ``x[:, src_nodes]`` with ``src_nodes`` from ``zip(*product(...))``)
    idx = tuple(list(i) if isinstance(i, tuple) else i for i in idx)
    raw = tuple(list(r) if isinstance(r, tuple) else r for r in raw)
    idx = tuple(_Mask(i.ndim) if is_mask(r) else _constant_run(a, i, r) for i, r in zip(idx, raw))
    idx = tuple(_recorded_bounds(i, r) if isinstance(i, slice) else i for i, r in zip(idx, raw))
    if any(i is Ellipsis for i in idx):
        k = idx.index(Ellipsis)
        used = sum(_consumed(i) for i in idx if i is not Ellipsis)
        idx = idx[:k] + (slice(None),) * (x.ndim - used) + idx[k + 1 :]
    idx = _bounds_from_shape(a, x, idx)
    idx = _runs_as_slices(idx, x.shape)
    if len(idx) == 1 and (rows := stacked.gathered(a, x)) is not None:
        return rows  # a bias per expert read at the sorted expert ids
    loop = a.node.meta.get("nfn_member")
    if loop is not None and len(idx) == 1 and isinstance(idx[0], int):
        # one member of a stacked weight, picked by the example's values (an expert's)
        sliced = stacked.member_slice(a, x, 0, idx[0] % x.shape[0], loop)
        if sliced is not None:
            return sliced
    if any(is_advanced(i) for i in idx):
        return _advanced_getitem(a, x, idx)
    return _basic_getitem(a, x, idx)


def _sequence_as_tuple(idx: Any) -> bool:
    """Whether torch reads a list index as a tuple of indices, one per dim (NumPy's old rule,
    still torch's): a list shorter than 32 that holds a tensor, a sequence, a slice, Ellipsis
    or ``None`` (gluonts' ``a[[slice(None), slice(-12, None)]]``). A list of integers is one
    advanced index along the first dim."""
    return (
        isinstance(idx, list)
        and len(idx) < 32
        and any(
            i is None
            or i is Ellipsis
            or isinstance(i, (slice, list, tuple, TensorLabels, torch.Tensor))
            for i in idx
        )
    )


@register_function(fx.read_at_example)
def _read_at_example(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    """Values the forward read as Python values (the graph holds the example's): the neurons
    they index are fixed, as by any op that reads positions as values (the analysis does so
    for every rule that does not read values itself)."""
    return args[0]


@register_function(torch.select)
@register_method("select")
@structured
def _select(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    """``x.select(dim, i)``: ``x[:, ..., i]`` with ``i`` at ``dim`` (the loop a traced
    ``torch.vmap`` runs reads each member's weights so)."""
    x, dim, i = args[0], arg(args, kwargs, 1, "dim"), arg(args, kwargs, 2, "index")
    if not isinstance(i, int):
        raise Unsupported("select at an index a tensor gives")
    d = norm_dim(dim, x.ndim)
    loop = a.node.meta.get("nfn_member")
    sliced = stacked.member_slice(a, x, d, i, loop) if loop is not None else None
    return sliced or _basic_getitem(a, x, (slice(None),) * d + (i,))


def _basic_getitem(a: SymmetryAnalysis, x: TensorLabels, idx: tuple) -> TensorLabels:
    """``x[idx]`` with integers, slices and ``None`` s (no Ellipsis)."""
    labels = []
    d = 0
    chunk = None  # the chunk one integer index selects, when it is one of selected chunks
    for i in idx:
        if i is None:
            labels.append(None)
            continue
        lab, n = x.labels[d], x.shape[d]
        if isinstance(i, int):
            lab = _read_at(a, lab, i % n)
            chunks = chunks_at(a, a.node.args[0], d) if lab is None else None
            if chunks is not None and len(chunks) == n:
                chunk = (chunks, i % n)
        elif isinstance(i, slice):
            labels.append(_sliced(a, lab, n, i))
        else:
            raise Unsupported(f"indexing with {type(i).__name__}")
        d += 1
    labels.extend(x.labels[d:])
    if chunk is not None:
        labels = list(piece(a, tuple(labels), *chunk))
    return TensorLabels(a.out_shape(), tuple(labels))


def _tensor_bound(b: Any) -> bool:
    """Whether a slice bound is a tensor's label (a 0-dim integer tensor the forward made)."""
    return isinstance(b, TensorLabels)


def _at_tensor_bound(i: Any) -> bool:
    """Whether index entry ``i`` is a slice with a bound :func:`_tensor_bound` names."""
    return isinstance(i, slice) and any(map(_tensor_bound, (i.start, i.stop, i.step)))


def _recorded_bounds(i: slice, raw: Any) -> slice:
    """Slice ``i`` with each bound that is a 0-dim integer tensor (torchaudio's ``Resample``
    cuts its output at ``resampled[..., :target_length]``, the length a tensor it computes
    from Python numbers) read as the example's value, where shape propagation recorded it."""
    if not isinstance(raw, slice):
        return i
    bounds = []
    for b, r in zip((i.start, i.stop, i.step), (raw.start, raw.stop, raw.step)):
        value = r.meta.get("nfn_integer_value") if isinstance(r, torch.fx.Node) else None
        if _tensor_bound(b) and value is not None and value.ndim == 0:
            b = int(value)
        bounds.append(b)
    return slice(*bounds)


def _bounds_from_shape(a: SymmetryAnalysis, x: TensorLabels, idx: tuple) -> tuple:
    """``idx`` (no Ellipsis) with a slice's one bound that is a tensor and whose value was not
    recorded (shape propagation on fake tensors) read from the output's length along its
    dim: the slice of step 1 that makes that length. Any other tensor bound is
    :class:`Unsupported`."""
    if not any(map(_at_tensor_bound, idx)):
        return idx
    unsupported = Unsupported("slicing at a bound a tensor gives, whose value is not known")
    if any(is_advanced(i) for i in idx):  # (its dims move: no output dim to read)
        raise unsupported
    out, d, od, resolved = a.out_shape(), 0, 0, []
    for i in idx:
        if _at_tensor_bound(i):
            n, length = x.shape[d], out[od]
            if i.step not in (None, 1) or (_tensor_bound(i.start) and _tensor_bound(i.stop)):
                raise unsupported
            if _tensor_bound(i.stop):
                start = slice(i.start, None).indices(n)[0]
                i = slice(start, start + length)
            else:
                stop = slice(None, i.stop).indices(n)[1]
                i = slice(stop - length, stop)
        resolved.append(i)
        d += i is not None  # (None adds an output dim, an integer takes one)
        od += not isinstance(i, int)
    return tuple(resolved)


def _constant_run(a: SymmetryAnalysis, i: Any, raw: Any) -> Any:
    """Index entry ``i`` as the list of its positions where it is a one-dim integer tensor
    of consecutive ascending positions that the forward computes from constants alone
    (pykan's ``x[:, self.input_id.long()]``, ``input_id = torch.arange(n)``): it reads what
    the slice of those positions reads (:func:`_runs_as_slices`). An index computed from the
    input or the weights, whose values another input changes, stays an index tensor."""
    if not isinstance(i, TensorLabels) or i.ndim != 1 or not isinstance(raw, torch.fx.Node):
        return i
    values = raw.meta.get("nfn_integer_value")
    if values is None or values.ndim != 1 or not len(values) or not _from_constants(a, raw):
        return i
    pos = values.tolist()
    return pos if pos == list(range(pos[0], pos[0] + len(pos))) else i


def _from_constants(a: SymmetryAnalysis, node: torch.fx.Node) -> bool:
    """Whether ``node`` is computed by torch functions and methods from tensors no
    state_dict holds (no input, no weight, no module call)."""
    seen, todo = set(), [node]
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "get_attr":
            if a.key("", str(n.target)) is not None:
                return False
        elif n.op not in ("call_function", "call_method"):
            return False
        todo.extend(n.all_input_nodes)
    return True


def _runs_as_slices(idx: tuple, shape: tuple) -> tuple:
    """``idx`` with a list of consecutive ascending positions (``x[..., [-1], :]``,
    ``x[:, [2, 3]]``) read as the slice of those positions, where it is the only advanced
    index (torch, which selects at integers first, then keeps its dim in place): both read the
    same entries in the same order.

    >>> _runs_as_slices((slice(None), [-2], slice(None)), (2, 5, 3))
    (slice(None, None, None), slice(3, 4, None), slice(None, None, None))
    >>> _runs_as_slices(([0, 2],), (4,)), _runs_as_slices(([0], [1, 2]), (2, 4))
    (([0, 2],), ([0], [1, 2]))
    """
    lists = [k for k, i in enumerate(idx) if isinstance(i, list)]
    if len(lists) != 1 or any(is_advanced(i) for k, i in enumerate(idx) if k != lists[0]):
        return idx
    (k,) = lists
    n = shape[sum(_consumed(i) for i in idx[:k])]
    run = idx[k]
    if not run or not all(type(v) is int and -n <= v < n for v in run):
        return idx
    pos = [v % n for v in run]
    if pos != list(range(pos[0], pos[0] + len(pos))):
        return idx
    return idx[:k] + (slice(pos[0], pos[0] + len(pos)),) + idx[k + 1 :]


@register_method("narrow")
@register_function(torch.narrow)
@structured
def _narrow(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    """``x.narrow(dim, start, length)``: the slice ``start : start + length`` of ``dim``."""
    x = args[0]
    dim, start, length = (
        arg(args, kwargs, k, name) for k, name in ((1, "dim"), (2, "start"), (3, "length"))
    )
    if not all(isinstance(v, int) for v in (dim, start, length)):
        raise Unsupported("narrow at a start a tensor gives")
    d = norm_dim(dim, x.ndim)
    start %= x.shape[d]  # a negative start counts from the end
    labels = list(x.labels)
    labels[d] = _sliced(a, x.labels[d], x.shape[d], slice(start, start + length))
    return TensorLabels(a.out_shape(), tuple(labels))


def _sliced(a: SymmetryAnalysis, lab: Any, n: int, i: slice) -> Any:
    """The label of a dim of ``n`` positions labelled ``lab`` after slicing it with ``i``: a
    whole slice keeps any label, a uniform dim stays uniform, neurons are sliced. A stride
    ``k`` that takes one position of every ``k`` (``::2``, ``1::2``) takes one position of
    each neuron where neurons span ``k`` positions (asked for, where they do not, by the
    analysis with ``stride_blocks``, outside attention heads); another
    stride takes single neurons where they are few and span one position each, else fixes
    them."""
    start, stop, step = i.indices(n)
    if (start, stop, step) == (0, n, 1):
        return lab
    lab = a.plain_label(lab, uniform=True)
    if lab is UNIFORM:  # every position alike: any slice keeps that
        return UNIFORM if len(range(start, stop, step)) > 1 else None
    if lab is None:
        return None
    if step == 1:
        return a.slice_label(lab, start, stop) if stop > start else None
    pos = list(range(start, stop, step))
    if start < step and n % step == 0 and len(pos) == n // step:
        # one position of every block of ``step`` (an interleaved gate and up, ``h[..., ::2]``
        # and ``h[..., 1::2]``): the same neurons, each spanning ``step`` positions fewer
        if all(s.inner % step == 0 for s in lab):
            return tuple(Seg(s.run, s.offset, s.length, s.inner // step) for s in lab)
        # (not neurons split into attention heads, nor a head's dims: an interleaved rotary's
        # pairs, which the heads' solver reads position by position; but not a stacked
        # weight's members' dims: an expert's interleaved gate and up, made in blocks with
        # the split's chunks)
        heads = set()
        for sp in a.head_splits:
            if not sp.stacked:
                heads |= {s.run for chunk in sp.chunks for s in chunk} | {sp.heads, sp.dims}
        if not heads & {s.run for s in lab}:
            a.strided = True
            if a.stride_blocks:  # next time its runs are made of such blocks
                a.request_blocks(lab, step)
                # a stacked split's dims: its chunks too, so that the split is made in them
                runs = {s.run for s in lab}
                for sp in (sp for sp in a.head_splits if sp.stacked and sp.dims in runs):
                    for chunk in sp.chunks:
                        a.request_blocks(chunk, step)
    if len(pos) > 64 or any(s.inner != 1 for s in lab):
        a.fix(lab, "strided slicing of neurons")
        return None
    return tuple(s for p in pos for s in a.slice_label(lab, p, p + 1))


@dataclass(frozen=True)
class _Mask:
    """A boolean mask index, reading ``ndim`` dims of the indexed tensor."""

    ndim: int


def is_mask(raw: Any) -> bool:
    """Whether an index argument (a graph node or a tensor) is a boolean mask."""
    if isinstance(raw, torch.fx.Node):
        meta = raw.meta.get("tensor_meta")
        return getattr(meta, "dtype", None) == torch.bool
    return isinstance(raw, torch.Tensor) and raw.dtype == torch.bool


def is_advanced(i: Any) -> bool:
    """Whether an index entry is advanced: a tensor, a list or a boolean mask."""
    return isinstance(i, (TensorLabels, list, torch.Tensor, _Mask))


def _consumed(i: Any) -> int:
    """How many dims of the indexed tensor index ``i`` reads (a boolean mask: its own)."""
    if i is None:
        return 0
    return i.ndim if isinstance(i, _Mask) else 1


def _advanced_getitem(a: SymmetryAnalysis, x: TensorLabels, idx: tuple) -> TensorLabels:
    """``x[idx]`` with tensor or list indices (``x[:, [-1]]``, a relative-position table read
    at an index grid, a boolean mask). A dim read at indexed positions is fixed where
    labelled; the dims the indices make are unlabelled (an index tensor that depends on the
    order of neurons is fixed); every sliced or untouched dim keeps its label, as in
    basic indexing. As torch does, the index dims stand in place of the indexed ones when
    those are adjacent, else first; an integer is a selection made first (unlike NumPy's
    rule, ``x[0, :, [1, 2]]`` keeps the list's dim last), so it parts no index dims, and
    it fixes only the neuron it reads, as in basic indexing."""
    reason = GATHERED
    labels: list = []
    where = None  # output position of the index dims
    previous = None  # the last entry that was an index
    front = False
    d = 0
    # one index tensor of the positions of a dim's neurons (a codebook's rows read at their
    # nearest entries): the same rows whichever way they are permuted, the index's dims made
    # (an integer is no index here: torch has selected at it before it reads the tensor)
    advanced = [i for i in idx if is_advanced(i)]
    (only,) = advanced if len(advanced) == 1 else (None,)
    made_labels = None
    for k, i in enumerate(idx):
        if i is None:
            labels.append(None)
            continue
        if i is only and isinstance(i, TensorLabels) and i.values is not None:
            a.tie(x.labels[d], i.values, "reads the rows its index gives")
            made_labels, where, d = i.labels, len(labels), d + 1
            continue
        if isinstance(i, int):  # torch selects it first: it joins index dims either side
            _read_at(a, x.labels[d], i % x.shape[d])  # as in basic indexing
            previous = k if where is not None and previous == k - 1 else previous
            d += 1
            continue
        if is_advanced(i):
            for lab in x.labels[d : d + _consumed(i)]:
                a.fix(a.plain_label(lab), reason)
            if isinstance(i, TensorLabels):
                a.fix_values(i, "an index tensor's values are neuron positions")
                a.fix_all(i, "an index tensor that depends on the order of neurons")
            if where is None:
                where = len(labels)
            elif previous != k - 1:
                front = True
            previous = k
            d += _consumed(i)
            continue
        if not isinstance(i, slice):
            raise Unsupported(f"indexing with {type(i).__name__}")
        labels.append(_sliced(a, x.labels[d], x.shape[d], i))
        d += 1
    labels.extend(x.labels[d:])
    shape = a.out_shape()
    made = made_labels or (None,) * (len(shape) - len(labels))
    at = 0 if front else where
    return TensorLabels(shape, tuple(labels[:at]) + made + tuple(labels[at:]))


@register_function(torch.masked_select)
@register_method("masked_select")
@structured
def _masked_select(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    """``torch.masked_select(x, mask)``: the entries the mask selects, flattened. A mask
    constant along ``x``'s last dims (DeepCTR's DIEN: ``masked_select(keys, mask.view(-1, 1,
    1)).view(-1, T, D)``, rows picked by their lengths) selects whole blocks of them, so the
    output is those dims flattened, repeated once per block selected; the dims it varies along
    are read at the positions it picks (fixed where labelled, as a boolean index fixes them),
    and so are the mask's own labelled dims there (a mask computed from neurons' values)."""
    x, mask = arg(args, kwargs, 0, "input"), arg(args, kwargs, 1, "mask")
    if not isinstance(x, TensorLabels) or not isinstance(mask, TensorLabels):
        raise Unsupported("masked_select of a non-tensor")
    ndim = max(x.ndim, mask.ndim)
    xs = (1,) * (ndim - x.ndim) + tuple(x.shape)
    xl = (None,) * (ndim - x.ndim) + tuple(x.labels)
    ms = (1,) * (ndim - mask.ndim) + tuple(mask.shape)
    ml = (None,) * (ndim - mask.ndim) + tuple(mask.labels)
    k = ndim
    while k > 0 and ms[k - 1] == 1:
        k -= 1
    for lab, mlab in zip(xl[:k], ml[:k]):
        a.fix(a.plain_label(lab), GATHERED)
        a.fix(a.plain_label(mlab), "a mask that depends on neurons' values")
    (n,) = a.out_shape()
    width = math.prod(xs[k:])
    if k == ndim:
        return TensorLabels((n,), (None,))
    block = merge_label(a, list(xl[k:]), list(xs[k:]))
    if isinstance(block, Prod):  # several neuron axes flattened: its largest factor's neurons
        block = a.plain_label(block, "masked_select")
    if block is None or block is UNIFORM:
        return TensorLabels((n,), (block,))
    if n % width:
        a.fix(block, "masked_select selects a part of a block")
        return TensorLabels((n,), (None,))
    return TensorLabels((n,), (tuple(block) * (n // width),))


@register_function(torch.gather, torch.take_along_dim)
@register_method("gather", "take_along_dim")
@structured  # an index repeated over the features is uniform along them
@reads_values
def _gather(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    """``torch.gather(x, dim, index)``: ``out[..., i, ...] = x[..., index[..., i, ...], ...]``
    along ``dim``, every other position read where it is (MAE's token masking gathers
    tokens with an index repeated over the features). ``dim`` is read at the indices (fixed
    where labelled); each other dim ties ``x`` with ``index`` as an elementwise op does (an
    index constant along the features leaves them free; ``take_along_dim``'s one-sized index
    dim broadcasts)."""
    x = args[0]
    if a.node.target in (torch.take_along_dim, "take_along_dim"):
        index, dim = arg(args, kwargs, 1, "indices"), arg(args, kwargs, 2, "dim")
    else:
        dim, index = arg(args, kwargs, 1, "dim"), arg(args, kwargs, 2, "index")
    if dim is None or not isinstance(index, TensorLabels) or index.ndim != x.ndim:
        raise Unsupported("gather over a flattened tensor or with a broadcast index")
    d = norm_dim(dim, x.ndim)
    reason = "gather reads neurons at positions a tensor gives"
    if index.values is not None and index.values == x.labels[d]:
        # positions of x's own neurons along dim (argsort's): they move with the neurons, so
        # what is gathered does not depend on their order
        a.consume(x.labels[d])
    else:
        a.fix_values(index)
        a.fix(a.plain_label(x.labels[d]), reason)
    a.fix(a.plain_label(index.labels[d]), "a gather index that depends on the order of neurons")
    broadcast = a.node.target in (torch.take_along_dim, "take_along_dim")
    labels = []
    for k in range(x.ndim):
        if k == d:
            labels.append(None)
        elif x.shape[k] == index.shape[k]:
            labels.append(a.tie(x.labels[k], index.labels[k], reason))
        elif broadcast and index.shape[k] == 1:  # take_along_dim broadcasts the index
            labels.append(x.labels[k])
        else:  # a prefix of x's positions
            a.fix(a.plain_label(x.labels[k]), reason)
            a.fix(a.plain_label(index.labels[k]), reason)
            labels.append(None)
    return TensorLabels(a.out_shape(), tuple(labels))


def _read_at(a: SymmetryAnalysis, label: Any, pos: int) -> Any:
    """An integer index at ``pos`` of a dim labelled ``label``: it reads one neuron, which is
    fixed; returns the plain label (``None`` where the dim has no neurons)."""
    label = a.plain_label(label)
    if label is not None:
        a.fix((_neuron_at(label, pos),), INDEXED)
    return label


def _neuron_at(label: Label, pos: int) -> Seg:
    p = 0
    for s in label:
        if p <= pos < p + s.width:
            return Seg(s.run, s.offset + (pos - p) // s.inner, 1)
        p += s.width
    raise TraceError(f"internal: position {pos} outside a label of width {p}")


@register_function(torch.cat, torch.concat, torch.concatenate)
@structured
def _cat(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    dim = arg(args, kwargs, 1, "dim", 0)
    shape = a.out_shape()
    d = norm_dim(dim, len(shape))
    # torch.cat skips an empty 1-D piece whatever the others' shape (a key cache's start)
    xs = [
        x
        for x in arg(args, kwargs, 0, "tensors")
        if not (x.ndim != len(shape) and math.prod(x.shape) == 0)
    ]
    if len(xs) == 1:  # one piece (einops' pack of one tensor): a copy
        return xs[0]
    # a flattened product along the joined dim is fixed; a uniform piece (torch.zeros) is
    # kept as such, and the other dims are tied as an elementwise op ties them
    xs = [x.with_label(d, a.plain_label(x.labels[d], uniform=True)) for x in xs]
    others = [
        TensorLabels(x.shape[:d] + x.shape[d + 1 :], x.labels[:d] + x.labels[d + 1 :]) for x in xs
    ]
    rest = a.broadcast(others, shape[:d] + shape[d + 1 :])
    if all(x.labels[d] is None or x.labels[d] is UNIFORM for x in xs):
        cat = None
    else:
        cat = ()
        for x in xs:
            lab = x.labels[d]
            if lab is UNIFORM:  # one value along the dim: its positions are free neurons
                lab = a.uniform_run(x.shape[d], "const")
            elif lab is None:
                lab = a.new_run(x.shape[d], "fixed", f"{a.node.name}.const")
            cat = cat + lab
    labels = rest.labels[:d] + (cat,) + rest.labels[d:]
    return TensorLabels(shape, labels)


@register_function(torch.hstack, torch.vstack, torch.dstack, torch.column_stack, torch.row_stack)
@structured
def _stacks(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    """``torch.hstack``, ``vstack``, ``dstack``, ``column_stack``: the concatenation they are
    of pieces of at least the dims they join along (``hstack`` of 1-dim pieces, dim 0);
    pieces they first make 2- or 3-dim are not read here."""
    xs = list(arg(args, kwargs, 0, "tensors"))
    name = a.node.target.__name__
    ndim = len(a.out_shape())
    if any(not isinstance(x, TensorLabels) or x.ndim != ndim for x in xs):
        raise Unsupported(f"torch.{name} of pieces it first reshapes")
    dim = {"hstack": 1, "column_stack": 1, "dstack": 2}.get(name, 0) if ndim > 1 else 0
    return _cat(a, (xs, dim), {})


@register_function(torch.stack)
@structured
def _stack(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    xs = list(arg(args, kwargs, 0, "tensors"))
    shape = a.out_shape()
    d = norm_dim(arg(args, kwargs, 1, "dim", 0), len(shape))
    loop = a.node.meta.get("nfn_members")  # a traced vmap's results, member by member
    out = stacked.member_stack(a, xs, d, loop) if loop is not None else None
    if out is not None:
        return out
    rest = a.broadcast(xs, shape[:d] + shape[d + 1 :])
    return TensorLabels(shape, rest.labels[:d] + (None,) + rest.labels[d:])


@register_function(torch.split, torch.chunk, torch.tensor_split, torch.split_with_sizes)
@register_method("split", "chunk", "tensor_split", "split_with_sizes")
def _split(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    x = args[0]
    outs = a.out()
    dim = arg(args, kwargs, 2, "dim", 0)
    d = norm_dim(dim, x.ndim)
    pieces, start = [], 0
    for o in outs:
        n = o.shape[d]
        lab = a.slice_label(x.labels[d], start, start + n) if n else None
        pieces.append(TensorLabels(o.shape, x.labels[:d] + (lab,) + x.labels[d + 1 :]))
        start += n
    return tuple(pieces)


@register_function(torch.unbind)
@register_method("unbind")
def _unbind(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    x = args[0]
    d = norm_dim(arg(args, kwargs, 1, "dim", 0), x.ndim)
    a.fix(x.labels[d], "unbind gives each neuron its own tensor")
    rest = x.labels[:d] + x.labels[d + 1 :]
    chunks = chunks_at(a, a.node.args[0], d)
    if chunks is not None and len(chunks) == x.shape[d]:  # each chunk its own neurons
        return tuple(
            TensorLabels(o.shape, piece(a, rest, chunks, i)) for i, o in enumerate(a.out())
        )
    return tuple(TensorLabels(o.shape, rest) for o in a.out())
