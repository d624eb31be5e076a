"""The tensor operations the generated code calls, written for as few full-size memory passes as
eager PyTorch allows.

A tile is held as ``(B, *permutable dims, channels)``; an input tile may be a permuted *view* of
a channels-first tensor (the layer does not copy it). So every operation here reads its inputs
in whatever strides they have:

* :func:`mean` reduces in the input's memory order (a reduction over a strided outer dim of a
  permuted view is otherwise an order of magnitude slower); :func:`means` takes several means
  of a large tile in one pass over chunks of it that stay in cache;
* :func:`channel_mix` is one GEMM over the last dim, reading a transposed view as such;
* :func:`tile_sum` writes an output tile: the broadcast contributions and the pointwise channel
  mix land in one fresh tensor (the sum of the broadcasts written once, the GEMM added into it
  in place), and its backward reduces the output gradient once per distinct broadcast shape,
  each from the smallest reduction already made (those only the gradient covers in one
  chunked pass when it is large), and writes the input's gradient once, in the strides of the
  parameter the tile views (so autograd neither copies it into the parameter's layout nor
  sums the means' gradients into it out of place);
* :func:`tensor_sum` does the same for every tile of a composite tensor at once: each tile's
  broadcasts written into its region of one fresh tensor, one GEMM over all of it.

Those savings are in passes over the data; their custom autograd functions cost more per call
in Python than plain ops. Below :data:`FUSE_MIN` elements (a norm's vector, a small conv), where
a pass costs less than that, each operation is its plain composition, as under ``vmap`` and
``torch.compile``.

Examples
--------
>>> x = torch.randn(2, 3, 4, 5).permute(0, 2, 3, 1)  # channels-first memory, (B, 4, 5, 3) view
>>> torch.allclose(mean(x, (1,)), x.mean(1))
True
>>> w, row = torch.randn(6, 3), torch.randn(2, 4, 1, 6)
>>> torch.allclose(tile_sum(x, w, row), row + x @ w.t(), atol=1e-6)
True
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "mean",
    "means",
    "channel_mix",
    "tile_sum",
    "tile_in",
    "place",
    "unfold",
    "tile_add",
    "tensor_add",
    "tensor_sum",
    "average",
    "total",
    "stack_cat",
    "blocks",
]


#: below this many elements a tile's operations are their plain compositions (the custom
#: autograd functions' per-call cost in Python is more than the passes they save; the two
#: cross at 2^17 to 2^18 elements on the 2-core CPU, bench/README.md "small tiles in plain ops")
FUSE_MIN = 1 << 17


def _plain() -> bool:
    """Whether the operations here should be their plain compositions: under a functorch
    transform (``vmap``, ``jacfwd``: the custom autograd functions have no rules for them) or
    while ``torch.compile`` traces (the compiler fuses the plain ops itself; the eager
    chunking and in-place GEMMs would only unroll into its graph)."""
    return torch._C._are_functorch_transforms_active() or torch.compiler.is_compiling()


def _fused(x: torch.Tensor) -> bool:
    """Whether an operation on ``x`` takes its fused path: ``x`` is large enough for the passes
    saved to pay for a custom autograd function's call (:data:`FUSE_MIN`), and nothing asks
    for plain ops (:func:`_plain`)."""
    return x.numel() >= FUSE_MIN and not _plain()


def _needs_grad(x: torch.Tensor) -> bool:
    """Whether autograd will record an operation on ``x``."""
    return x.requires_grad and torch.is_grad_enabled()


def _ref(x):
    """A tensor argument of the generated code: a tensor, or ``(tuple, index)`` (entry
    ``index`` of the tuple a call such as :func:`grid_means` returned)."""
    return x[0][x[1]] if type(x) is tuple else x


def _refs(xs) -> list:
    """The tensors of a variadic argument of the generated code: each entry as :func:`_ref`
    reads it, or a *run* ``(tuple, start, stop)`` standing for the entries ``start`` to
    ``stop - 1`` of one tuple (the code names a tuple once for a run of its entries).

    >>> parts = torch.ones(4).split(1)
    >>> len(_refs((torch.zeros(1), (parts, 0, 3), (parts, 3))))
    5
    """
    out = []
    for x in xs:
        if _is_run(x):
            out.extend(x[0][x[1] : x[2]])
        else:
            out.append(_ref(x))
    return out


def _is_run(x) -> bool:
    """Whether ``x`` is a run ``(tuple, start, stop)`` (see :func:`_refs`)."""
    return type(x) is tuple and len(x) == 3 and type(x[1]) is int


def _memory_order(x: torch.Tensor) -> list:
    """The dims of ``x`` from the outermost in memory to the innermost."""
    return sorted(range(x.dim()), key=lambda d: -x.stride(d))


#: a sum over the outer dims of a contiguous CPU tensor at least this large (elements) is a
#: matrix-vector product with ones (see :func:`_outer_sum`)
GEMV_MIN = 1 << 16


def _outer_sum(y: torch.Tensor, dims: tuple, op: str) -> torch.Tensor | None:
    """``y.sum``/``y.mean`` over ``dims`` (keepdim) as ``ones @ y.view(M, N)``, or ``None``
    where that does not apply.

    It applies to a contiguous CPU tensor of at least :data:`GEMV_MIN` elements whose
    ``dims`` are its outermost dims of size above one, with a kept dim inside them (the sum
    over the rows of an ``(M, N)`` matrix), and where autograd does not record the op (the
    product's backward would write a full-size gradient; a sum's is a view). There torch's
    reduction reads the matrix at a third to a half of the bandwidth of a BLAS matrix-vector
    product (bench/README.md, "sums as matrix-vector products").

    >>> y = (torch.arange(2.0**17) % 7).reshape(2**12, 32)  # sums exact in float32
    >>> torch.equal(_outer_sum(y, (0,), "sum"), y.sum(0, keepdim=True))
    True
    """
    if y.device.type != "cpu" or y.numel() < GEMV_MIN or not y.is_contiguous() or _needs_grad(y):
        return None
    big = [d for d in range(y.dim()) if y.shape[d] > 1]
    cut = [d for d in dims if y.shape[d] > 1]
    if not cut or len(cut) == len(big) or sorted(cut) != big[: len(cut)]:
        return None
    m = math.prod(y.shape[d] for d in cut)
    out = (y.new_ones(1, m) @ y.view(m, -1)).view(
        tuple(1 if d in dims else n for d, n in enumerate(y.shape))
    )
    return out.div_(m) if op == "mean" else out


def _reduce(x: torch.Tensor, dims: tuple, op: str) -> torch.Tensor:
    """``x.sum`` or ``x.mean`` over ``dims`` (keepdim), iterating in ``x``'s memory order (a
    small ``x``, under :data:`GEMV_MIN` elements, as it is: there the two permutes would cost
    more than the reduction)."""
    if x.numel() < GEMV_MIN:
        return getattr(x, op)(dims, keepdim=True)
    order = _memory_order(x)
    if order == sorted(order):
        out = _outer_sum(x, dims, op)
        return getattr(x, op)(dims, keepdim=True) if out is None else out
    inverse = [order.index(d) for d in range(x.dim())]
    y, pdims = x.permute(order), tuple(order.index(d) for d in dims)
    out = _outer_sum(y, pdims, op)
    return (getattr(y, op)(pdims, keepdim=True) if out is None else out).permute(inverse)


class _Mean(torch.autograd.Function):
    """A mean whose gradient is a broadcast view (see :func:`mean`); ``value``, when given, is
    the mean already computed (:func:`means` takes several in one pass)."""

    @staticmethod
    def forward(ctx, x, dims, value=None):
        ctx.shape, ctx.dims = x.shape, dims
        return _reduce(x, dims, "mean").squeeze(dims) if value is None else value

    @staticmethod
    def backward(ctx, grad):
        for d in ctx.dims:  # sorted: each reduced dim back in turn
            grad = grad.unsqueeze(d)
        n = math.prod(ctx.shape[d] for d in ctx.dims)
        return (grad / n).expand(ctx.shape), None, None


def mean(x: torch.Tensor, dims: tuple) -> torch.Tensor:
    """``x.mean(dims)``, reduced in ``x``'s memory order.

    Its gradient is the output gradient divided by the count and *expanded*, a view: torch's own
    mean divides after expanding, writing a full-size tensor per mean that the layer then adds
    into the input's gradient (on a DenseNet-121 layer whose inputs need gradients, 4,900
    means' divisions took a tenth of the step).

    Over no dims it is ``x`` itself (``torch.mean`` would average over every dim). ``x`` may be
    a reference (:func:`_ref`), as in :func:`means` and :func:`tile_in`. Below
    :data:`FUSE_MIN` elements, or where ``x`` needs no gradient, it is torch's mean (the custom
    backward's call would cost more than the division it saves).

    >>> x = torch.arange(6.0).reshape(3, 2).t()  # a transposed view
    >>> mean(x, (1,))
    tensor([2., 3.])
    """
    x = _ref(x)
    if not dims:
        return x
    if x.numel() < FUSE_MIN:  # the common case (a norm's vector, a mean of a mean) first
        return x.mean(dims)
    dims = tuple(sorted(dims))
    if not _fused(x) or not _needs_grad(x):
        return _reduce(x, dims, "mean").squeeze(dims)
    return _Mean.apply(x, dims)


def means(x: torch.Tensor, sets: tuple) -> tuple:
    """``tuple(x.mean(dims) for dims in sets)``; for a large ``x`` in one pass over it (chunks
    that stay in cache, each reduced to every mean) instead of one pass per mean.

    Each mean is still its own autograd node (its gradient a broadcast view, as :func:`mean`'s),
    so that autograd adds each into the tile's other gradient in place: one node for all of
    them would have to return their sum, a full-size tensor.

    >>> x = torch.arange(6.0).reshape(1, 2, 3)
    >>> [m.tolist() for m in means(x, ((1,), (2,)))]
    [[[1.5, 2.5, 3.5]], [[1.0, 4.0]]]
    """
    x = _ref(x)
    sets = tuple(tuple(sorted(d)) for d in sets)
    if not _chunks(x) or len(sets) < 2 or not _fused(x):
        return tuple(mean(x, dims) for dims in sets)
    shapes = [tuple(1 if d in dims else n for d, n in enumerate(x.shape)) for dims in sets]
    with torch.no_grad():
        sums = _chunked_sums(x.detach(), shapes)
    values = [
        (sums[s] / math.prod(x.shape[d] for d in dims)).squeeze(dims)
        for s, dims in zip(shapes, sets)
    ]
    if not _needs_grad(x):
        return tuple(values)
    return tuple(_Mean.apply(x, dims, v) for dims, v in zip(sets, values))


def _merges(x: torch.Tensor, start: int, stop: int) -> bool:
    """Whether dims ``start:stop`` of ``x`` merge into one dim as a view."""
    expected = None
    for d in range(stop - 1, start - 1, -1):
        if x.shape[d] == 1:
            continue
        if expected is not None and x.stride(d) != expected:
            return False
        expected = x.stride(d) * x.shape[d]
    return True


def _rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a ``(rows, last dim)`` matrix: a view when its leading dims merge, else a copy."""
    return x.reshape(-1, x.shape[-1])


def channel_mix(weight: torch.Tensor, x: torch.Tensor, *more: torch.Tensor) -> torch.Tensor:
    """``(R, K)`` weight applied to the channels (last dim) of ``x`` ``(B, *kept, K)``:
    ``(B, *kept, R)``, one ``(B*N, K) x (K, R)`` GEMM. With ``more`` tensors, ``x`` and they are
    concatenated along channels first (``K`` is their total). Each may be a reference
    (:func:`_ref`).

    An ``x`` whose leading dims merge (any tile with batch 1, a channels-last tile) is read as
    one matrix whatever its strides. On CUDA, an ``x`` that is channels-first in memory is mixed
    there by a 1x1 ``conv1d``.

    >>> torch.equal(channel_mix(torch.eye(3), torch.ones(2, 4, 3)), torch.ones(2, 4, 3))
    True
    >>> channel_mix(torch.ones(1, 3), torch.ones(2, 1), torch.ones(2, 2)).tolist()
    [[3.0], [3.0]]
    """
    if more or _is_run(x):
        xs = _refs((x, *more))
        x = xs[0] if len(xs) == 1 else torch.cat(xs, -1)
    else:
        x = _ref(x)
    if x.dim() > 2 and x.stride(-1) != 1:
        if x.is_cuda:
            first = x.movedim(-1, 1)
            if first.is_contiguous():
                y = F.conv1d(first.flatten(2), weight.unsqueeze(-1))
                return y.unflatten(2, x.shape[1:-1]).movedim(1, -1)
        if _merges(x, 0, x.dim() - 1):
            return (_rows(x) @ weight.t()).view(*x.shape[:-1], weight.shape[0])
    return F.linear(x, weight)


def _per_batch_rows(x: torch.Tensor) -> bool:
    """Whether ``x`` is a batch of channels-first tiles: its dims after the batch merge into one
    matrix per batch entry as a view, but the batch dim does not merge with them."""
    return x.dim() > 2 and not _merges(x, 0, x.dim() - 1) and _merges(x, 1, x.dim() - 1)


def _gemm_into(out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> None:
    """``out += x @ weight.T`` over the last dim, in place (``out`` contiguous, full shape)."""
    r = weight.shape[0]
    if _per_batch_rows(x):
        # a batch of channels-first tiles: one strided GEMM per batch entry, no copy
        b, k = x.shape[0], x.shape[-1]
        out.view(b, -1, r).baddbmm_(x.reshape(b, -1, k), weight.t().expand(b, k, r))
        return
    out.view(-1, r).addmm_(_rows(x), weight.t())


def _input_grad(grad: torch.Tensor, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``grad @ weight``, the ``x``-gradient of a channel mix, written in ``x``'s own strides
    into a fresh tensor that is not a view.

    Both matter on the way back to a parameter: a channels-first tile is a permuted view of
    its input, so a gradient in channels-last memory would be copied into the input's layout
    by autograd's accumulation (a full-size transposing copy per tensor); and autograd adds a
    second gradient (a mean's) into the first in place only when the first is no view.
    """
    if not torch.is_grad_enabled():  # (a double backward needs differentiable ops, no out=)
        b, k, r = x.shape[0], x.shape[-1], weight.shape[0]
        dx = torch.empty_like(x)  # x's strides where x is dense
        if dx.is_contiguous():
            torch.mm(_rows(grad), weight, out=dx.view(-1, k))
            return dx
        first = dx.movedim(-1, 1)
        if first.is_contiguous():  # a batch of channels-first tiles: a transposed GEMM each
            g = grad.reshape(b, -1, r).transpose(1, 2)
            torch.bmm(weight.t().expand(b, k, r), g, out=first.view(b, k, -1))
            return dx
    return (_rows(grad) @ weight).view(x.shape)


def _weight_grad(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``sum over entries of grad^T x``: the ``(R, K)`` gradient of a channel mix."""
    if _per_batch_rows(x):
        b = x.shape[0]
        g = grad.reshape(b, -1, grad.shape[-1])
        return torch.bmm(g.transpose(1, 2), x.reshape(b, -1, x.shape[-1])).sum(0)
    return _rows(grad).t() @ _rows(x)


#: a gradient at least this large (elements) is reduced in chunks (see :func:`_sum_to`)
CHUNK_MIN = 1 << 20
#: below this many elements, a gradient's sums are each taken from it directly (a region of a
#: norm's few entries: planning which sum to take from which cost more than the sums)
SMALL = 1 << 12
#: bytes of a chunk: a few rows of a large tile, small enough to stay in a core's cache
CHUNK_BYTES = 1 << 21


def _covers(have: tuple, want: tuple) -> bool:
    """Whether a sum of shape ``have`` can be reduced further to ``want`` (same rank)."""
    return all(w in (1, h) for w, h in zip(want, have))


def _chunks(x: torch.Tensor) -> bool:
    """Whether reductions of ``x`` go chunk by chunk: a large tensor on the CPU (on a GPU one
    kernel per reduction is already one pass; chunks would only add launches)."""
    return x.device.type == "cpu" and x.numel() >= CHUNK_MIN


def _dims_to(x: torch.Tensor, shape: tuple) -> tuple:
    """The dims of ``x`` a sum to ``shape`` (same rank) reduces."""
    return tuple(d for d, (w, h) in enumerate(zip(shape, x.shape)) if w == 1 and h != 1)


def _sum(x: torch.Tensor, dims: tuple) -> torch.Tensor:
    """``x`` summed over ``dims`` (keepdim, in memory order); ``x`` itself for no dims (where
    ``torch.sum`` would sum over every dim)."""
    return _reduce(x, dims, "sum") if dims else x


def _chunked_sums(grad: torch.Tensor, shapes: list) -> dict:
    """``grad`` summed to each of ``shapes`` (full rank) in one pass over ``grad``: chunks
    along one dim, each reduced to every shape while it is in cache (a shape that keeps that
    dim takes the chunk's rows, the others add the chunk's sum). The dim is the outermost in
    memory whose slices fit in :data:`CHUNK_BYTES` (the rows of a channels-first tile, not
    its channels)."""
    # each shape once (two means can have one shape: a dim of size 1), with the dims it sums
    reduced = {s: _dims_to(grad, s) for s in shapes}
    outer = [d for d in _memory_order(grad) if grad.shape[d] > 1]
    size = {d: grad.numel() // grad.shape[d] * grad.element_size() for d in outer}
    dim = next((d for d in outer[:-1] if size[d] <= CHUNK_BYTES), None)
    if dim is None:  # no slice fits (or only the innermost dim's would): one pass per sum
        return {s: _sum(grad, dims) for s, dims in reduced.items()}
    step = CHUNK_BYTES // size[dim]
    parts: dict = {s: [] for s in reduced}
    for start in range(0, grad.shape[dim], step):
        chunk = grad.narrow(dim, start, min(step, grad.shape[dim] - start))
        for s, dims in reduced.items():
            r = _sum(chunk, dims)
            if s[dim] == 1:
                parts[s] = [r] if not parts[s] else [parts[s][0].add_(r)]
            else:
                parts[s].append(r)
    return {s: p[0] if len(p) == 1 else torch.cat(p, dim) for s, p in parts.items()}


def _sum_to(grad: torch.Tensor, shapes: list) -> list:
    """``grad`` summed to each broadcastable shape in ``shapes`` (``None`` where a shape is
    ``None``), each from the smallest sum already made that covers it.

    The sums only ``grad`` covers are made first; when there are two or more of them and
    ``grad`` is large and contiguous, in one chunked pass over it (:func:`_chunked_sums`)
    instead of one full pass each. A small ``grad`` gives each sum directly."""
    if grad.numel() < SMALL and not _chunks(grad):  # each sum straight from the gradient
        small: dict = {}
        for s in shapes:
            if s is not None and tuple(s) not in small:
                dims = _dims_to(grad, (1,) * (grad.dim() - len(s)) + tuple(s))
                small[tuple(s)] = (grad.sum(dims, keepdim=True) if dims else grad).reshape(s)
        return [None if s is None else small[tuple(s)] for s in shapes]
    full = {tuple(s): (1,) * (grad.dim() - len(s)) + tuple(s) for s in shapes if s is not None}
    done: dict = {tuple(grad.shape): grad}
    first = [
        f
        for f in dict.fromkeys(full.values())
        if f != tuple(grad.shape)
        and not any(g != f and g != tuple(grad.shape) and _covers(g, f) for g in full.values())
    ]
    if len(first) > 1 and _chunks(grad) and grad.is_contiguous():
        done.update(_chunked_sums(grad, first))
    out: dict = {}
    for shape in sorted(full, key=lambda s: -math.prod(s)):
        f = full[shape]
        if f not in done:
            best = min((t for have, t in done.items() if _covers(have, f)), key=torch.Tensor.numel)
            done[f] = _sum(best, _dims_to(best, f))
        out[shape] = done[f].reshape(shape)
    return [None if s is None else out[tuple(s)] for s in shapes]


class _TileSum(torch.autograd.Function):
    """``sum(values) + x @ weight.T`` into one fresh tensor (see :func:`tile_sum`)."""

    @staticmethod
    def forward(ctx, x, weight, *values):
        shape = (*x.shape[:-1], weight.shape[0])
        acc = None
        for v in values:  # smallest first: the full-size write happens once
            acc = v if acc is None else acc + v
        if acc is not None and tuple(acc.shape) == shape:
            if len(values) == 1:  # an input: not ours to write into
                acc = acc.clone(memory_format=torch.contiguous_format)
            elif not acc.is_contiguous():
                acc = acc.contiguous()
            _gemm_into(acc, x, weight)
            out = acc
        else:
            out = channel_mix(weight, x).contiguous()
            if acc is not None:
                out.add_(acc)
        ctx.save_for_backward(x, weight)
        ctx.shapes = [tuple(v.shape) for v in values]
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_w, *need_v = ctx.needs_input_grad
        dx = dw = None
        if need_x:
            dx = _input_grad(grad, weight, x)
        if need_w:
            dw = _weight_grad(grad, x)
        dvals = _sum_to(grad, [s if n else None for s, n in zip(ctx.shapes, need_v)])
        return (dx, dw, *dvals)


def tile_sum(
    x: torch.Tensor,
    weight: torch.Tensor,
    *values: torch.Tensor,
    groups: tuple = (),
    layout: tuple | None = None,
) -> torch.Tensor:
    """One output tile: ``values`` (each broadcastable to it, smallest first) plus the channel
    mix of ``x`` ``(B, *dims, K)`` by ``weight`` ``(R, K)``, as a fresh contiguous
    ``(B, *dims, R)`` tensor.

    The values' sum is written once at full size and the GEMM adds into it in place (no copy
    of it, unlike ``addmm``); ``x`` is read in its own strides. In the backward, the gradient
    of each value is a sum of the output gradient over its broadcast dims, computed once per
    distinct shape from the smallest sum that covers it.

    The generated code hands a tile's contributions over as ``groups`` (see :func:`place`;
    placed first, they come before ``values``) and its way back to the parameter's layout as
    ``layout`` (:func:`unfold` 's arguments), so that one output tile is one call.

    >>> x, w = torch.randn(2, 3, 4, 5), torch.randn(6, 5)
    >>> row, col = torch.randn(1, 3, 1, 6), torch.randn(2, 1, 4, 6)
    >>> torch.allclose(tile_sum(x, w, row, col), row + col + x @ w.t(), atol=1e-5)
    True
    """
    values = (*[place(*g) for g in groups], *values)
    if not _fused(x):
        acc = channel_mix(weight, x)
        for v in values:
            acc = acc + v
    else:
        acc = _TileSum.apply(x, weight, *values)
    return acc if layout is None else unfold(acc, *layout)


def tile_in(
    x: torch.Tensor,
    index: tuple | None = None,
    embeds: tuple = (),
    split: tuple | None = None,
    order: tuple | None = None,
    shape: tuple | None = None,
    copy: bool = False,
) -> torch.Tensor:
    """An input tile in the internal layout ``(B, *permutable dims, C * fixed)``, from its
    parameter's channels-first features ``(B, C, *param shape)``.

    In order, each step skipped when ``None`` or empty: ``index`` (per parameter axis,
    ``(start, stop)``: the tile of a composite tensor), ``embeds`` added, ``split`` (a
    reshape to the tile's dims), ``order`` (a permute, batch dim included), ``shape`` (a
    reshape, batch dim not included), ``copy`` (made contiguous).

    >>> x = torch.arange(12.0).reshape(1, 2, 6)  # (B, C, n): two tiles of 3 along n
    >>> tile_in(x, index=((3, 6),), order=(0, 2, 1)).tolist()
    [[[3.0, 9.0], [4.0, 10.0], [5.0, 11.0]]]
    """
    x = _ref(x)
    if index is not None:
        x = x[(slice(None), slice(None), *(slice(a, b) for a, b in index))]
    for e in embeds:
        x = x + e
    x = unfold(x, split, order, shape)  # the same three steps as an output tile's way back
    return x.contiguous() if copy else x


def place(
    parts: tuple,
    shape: tuple | None = None,
    perm: tuple | None = None,
    bias: torch.Tensor | None = None,
    deltas: tuple = (),
) -> torch.Tensor:
    """One output pattern's contribution to its tile, broadcastable to it.

    ``parts`` are summed in order, each a mix's result (a tensor) or a part of it
    (``(parts, index)``: entry ``index`` of the tuple a ``torch.split`` or ``torch.unbind`` made);
    then ``perm`` (its kept dims permuted to the tile's order), ``bias`` added (alone: a
    ``(1, channels)`` tensor), ``shape`` (a reshape inserting the broadcast singletons, batch
    dim not included) and each of ``deltas`` (0/1 masks writing a diagonal) multiplied in.

    >>> y = torch.arange(6.0).reshape(1, 3, 2)  # a mix's result: 3 kept indices, 2 channels
    >>> place(((y.split([1, 1], -1), 1),), (3, 1, 1)).shape
    torch.Size([1, 3, 1, 1])
    """
    y = None
    for part in parts:
        v = _ref(part)
        y = v if y is None else y + v
    if y is not None and perm is not None:
        y = y.permute(0, *(1 + p for p in perm), len(perm) + 1)
    if bias is not None:
        y = bias.reshape(1, -1) if y is None else y + bias
    if shape is not None:
        y = y.reshape(-1, *shape)
    for d in deltas:
        y = y * d.type_as(y)
    return y


def unfold(
    acc: torch.Tensor,
    shape: tuple | None = None,
    order: tuple | None = None,
    merge: tuple | None = None,
) -> torch.Tensor:
    """An output tile from the internal layout back to its parameter's: the channels unfolded
    from the fixed dims (``shape``), permuted back (``order``) and block dims merged (``merge``);
    shapes without the batch dim, each step skipped when ``None``. (An input tile's way in,
    :func:`tile_in`, is the same three steps: split, permute, fold.)

    >>> unfold(torch.zeros(2, 3, 4), None, (0, 2, 1)).shape
    torch.Size([2, 4, 3])
    """
    if shape is not None:
        acc = acc.reshape(-1, *shape)
    if order is not None:
        acc = acc.permute(order)
    if merge is not None:
        acc = acc.reshape(-1, *merge)
    return acc


def tile_add(
    like: torch.Tensor, groups: tuple, full: tuple | None = None, layout: tuple = ()
) -> torch.Tensor:
    """An output tile without a pointwise channel mix: the sum of its ``groups`` (each as
    :func:`place` takes it, smallest first), zeros of ``like`` when there are none (then
    ``full`` is given), expanded to ``(B, *full)`` with ``like``'s batch size when ``full`` is
    given, and :func:`unfold` ed by ``layout``.

    >>> like = torch.zeros(2, 5, 3)
    >>> tile_add(like, (((torch.ones(1, 4),), (1, 4)),), (3, 4)).shape
    torch.Size([2, 3, 4])
    """
    acc = None
    for g in groups:
        v = place(*g)
        acc = v if acc is None else acc + v
    if acc is None:
        acc = like.new_zeros((1, *full))
    if full is not None:
        acc = acc.expand(like.size(0), *full)
    return unfold(acc, *layout)


def tensor_add(like: torch.Tensor, tiles: tuple, counts: tuple) -> torch.Tensor:
    """A composite tensor's output tiles, none with a pointwise channel mix, in one call: each
    tile :func:`tile_add` ``(like, *tile)``, concatenated along each composite axis (``counts``:
    the tiles along each axis of the parameter, row-major).

    >>> like = torch.zeros(2, 5, 3)
    >>> tile = ((((torch.ones(1, 4),), (1, 4)),), (3, 4), (None, (0, 2, 1)))  # (2, 4, 3)
    >>> tensor_add(like, (tile, tile), (2,)).shape
    torch.Size([2, 4, 6])
    """
    outs = [tile_add(like, *t) for t in tiles]
    for ax in reversed(range(len(counts))):
        c = counts[ax]
        if c > 1:
            outs = [torch.cat(outs[i : i + c], 2 + ax) for i in range(0, len(outs), c)]
    (out,) = outs
    return out


def grid_regions(grid: tuple) -> list:
    """The regions of a grid of tiles, row-major: ``grid`` is ``((dim, sizes), ...)``, the dims
    (batch dim counted) the tiles cut and their sizes along each; each region an index tuple.

    >>> grid_regions(((2, (1, 3)),))
    [(slice(None, None, None), slice(None, None, None), slice(0, 1, None)), \
(slice(None, None, None), slice(None, None, None), slice(1, 4, None))]
    """
    spans = []
    for dim, sizes in grid:
        starts = itertools.accumulate(sizes[:-1], initial=0)
        spans.append([(dim, a, a + n) for a, n in zip(starts, sizes)])
    depth = 1 + max(dim for dim, _ in grid)
    regions = []
    for combo in itertools.product(*spans):
        index = [slice(None)] * depth
        for dim, a, b in combo:
            index[dim] = slice(a, b)
        regions.append(tuple(index))
    return regions


def _remembered(cache: dict, key, make):
    """``cache[key]``, made by ``make()`` on first use; a cache holds at most 4,096 entries (a
    plain dict, not ``functools.lru_cache``: dynamo warns about that wrapper). For what a
    layer asks every step: one per composite tensor or grid."""
    value = cache.get(key)
    if value is None:
        value = make()
        if len(cache) >= 4096:
            cache.clear()
        cache[key] = value
    return value


_REGIONS: dict = {}  # grid -> its regions


def _cached_regions(grid: tuple) -> list:
    """:func:`grid_regions`, remembered (the compiled path calls :func:`grid_regions`
    itself)."""
    return _remembered(_REGIONS, grid, lambda: grid_regions(grid))


def region_shape(index: tuple, shape: tuple) -> tuple:
    """The shape of ``x[index]`` for an ``x`` of ``shape`` and a region ``index`` of
    :func:`grid_regions`.

    >>> region_shape((slice(None), slice(2, 5)), (4, 6, 7))
    (4, 3, 7)
    """
    return tuple(
        n if i >= len(index) or index[i].start is None else index[i].stop - index[i].start
        for i, n in enumerate(shape)
    )


def _fill(dst: torch.Tensor, values: tuple) -> None:
    """Write the sum of ``values`` (broadcastable to ``dst``, same rank, smallest first) into
    ``dst``: the last addition writes ``dst`` itself, so the full-size sum is written once."""
    if not values:
        dst.zero_()
        return
    acc = values[0]
    for v in values[1:-1]:
        acc = acc + v
    if len(values) == 1:
        dst.copy_(acc)
        return
    last = values[-1]
    # (not torch.broadcast_shapes: a region of a norm's few entries costs microseconds, and
    # that call alone took twice what the addition does)
    if all(max(a, b) == n for a, b, n in zip(acc.shape, last.shape, dst.shape)):
        torch.add(acc, last, out=dst)
    else:
        dst.copy_(acc + last)


class _TensorSum(torch.autograd.Function):
    """Each region's values written into one fresh tensor of ``channels``, and one GEMM over
    all of it added in place when there is a ``weight`` (see :func:`tensor_sum`)."""

    @staticmethod
    def forward(ctx, x, weight, channels, regions, counts, *values):
        out = x.new_empty((*x.shape[:-1], channels))
        k = 0
        for index, n in zip(regions, counts):
            _fill(out[index], values[k : k + n])
            k += n
        if weight is not None:
            _gemm_into(out, x, weight)
            ctx.save_for_backward(x, weight)
        ctx.regions, ctx.counts = regions, counts
        ctx.shapes = [tuple(v.shape) for v in values]
        return out

    @staticmethod
    def backward(ctx, grad):
        need_x, need_w, _, _, _, *need_v = ctx.needs_input_grad
        dx = dw = None
        if ctx.saved_tensors:
            x, weight = ctx.saved_tensors
            dx = _input_grad(grad, weight, x) if need_x else None
            dw = _weight_grad(grad, x) if need_w else None
        dvals, k = [], 0
        for index, n in zip(ctx.regions, ctx.counts):
            shapes = [s if need else None for s, need in zip(ctx.shapes[k : k + n], need_v[k:])]
            dvals += _sum_to(grad[index], shapes)
            k += n
        return (dx, dw, None, None, None, *dvals)


def tensor_sum(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    tiles: tuple,
    grid: tuple,
    layout: tuple | None = None,
    channels: int | None = None,
) -> torch.Tensor:
    """A composite tensor's output, its tiles on a grid: each tile's ``groups`` (see
    :func:`place`) written into its region of one fresh ``(B, *dims, R)`` tensor; when every
    tile's pointwise term is one channel mix by the same ``weight`` ``(R, K)``, the mix of the
    whole ``x`` ``(B, *dims, K)`` added in place by one GEMM; then :func:`unfold` ed by
    ``layout``. Without a weight, ``x`` only gives the batch, dims and dtype, and the output
    has ``channels`` (``R``) channels.

    ``tiles`` holds each tile's groups, row-major over ``grid``: ``((dim, sizes), ...)``, the
    dims of ``x`` (batch dim counted) the tiles cut, with their sizes along each. Against a
    :func:`tile_sum` or :func:`tile_add` per tile and a concatenation, nothing is copied: the
    tiles are views of ``x`` and of the output, and the GEMM is one call. In the backward, each
    tile's values' gradients are sums of its region of the output gradient.

    >>> x, w = torch.randn(2, 3, 5, 4), torch.randn(6, 4)
    >>> row = torch.randn(1, 3, 1, 6)  # tile 0 (dim 2, 0:2): a row term; tile 1 (2:5): none
    >>> got = tensor_sum(x, w, ((((row,), (3, 1, 6)),), ()), ((2, (2, 3)),))
    >>> want = x @ w.t() + torch.cat([row.expand(2, 3, 2, 6), torch.zeros(2, 3, 3, 6)], 2)
    >>> torch.allclose(got, want, atol=1e-6)
    True
    >>> got = tensor_sum(x, None, ((((row,), (3, 1, 6)),), ()), ((2, (2, 3)),), channels=6)
    >>> torch.allclose(got, want - x @ w.t(), atol=1e-6)
    True
    """
    placed = [[place(*g) for g in groups] for groups in tiles]
    return _tensor_sum(x, weight, placed, grid, layout, channels)


def _tensor_sum(x, weight, placed: list, grid: tuple, layout, channels) -> torch.Tensor:
    """:func:`tensor_sum` from each tile's placed values."""
    channels = weight.shape[0] if weight is not None else channels
    if not _fused(x):
        full = (*x.shape[:-1], channels)
        parts = []
        for index, vals in zip(grid_regions(grid), placed):
            shape = region_shape(index, full)
            acc = x.new_zeros(shape) if not vals else sum(vals[1:], vals[0]).expand(shape)
            parts.append(acc)
        for dim, sizes in reversed(grid):
            c = len(sizes)
            parts = [torch.cat(parts[i : i + c], dim) for i in range(0, len(parts), c)]
        (acc,) = parts
        if weight is not None:
            acc = acc + channel_mix(weight, x)
    else:
        counts = tuple(len(v) for v in placed)
        values = [v for vals in placed for v in vals]
        acc = _TensorSum.apply(x, weight, channels, _cached_regions(grid), counts, *values)
    return acc if layout is None else unfold(acc, *layout)


@dataclass(frozen=True)
class TensorSumArgs:
    """:func:`tensor_sum` 's arguments without their tensors: what the generated code keeps on
    the module (one attribute per composite tensor) and hands to :func:`packed_tensor_sum`
    with the tensors, instead of writing this nesting into the code, where printing and
    compiling it took a third of a DenseNet's build.

    ``tiles`` is per tile its groups as :func:`place` takes them, with each tensor replaced by
    its position in the call's ``refs``: a part is ``(position, None)`` (the tensor) or
    ``(position, index)`` (an entry of a tuple), a bias a position or ``None``, a mask a
    position. ``grid``, ``layout`` and ``channels`` are :func:`tensor_sum` 's.
    """

    tiles: tuple
    grid: tuple
    layout: tuple | None = None
    channels: int | None = None

    def placed(self, refs: tuple) -> list:
        """Each tile's groups :func:`place` d, the tensors taken from ``refs``."""
        return [
            [
                place(
                    [refs[i] if j is None else refs[i][j] for i, j in parts],
                    shape,
                    perm,
                    None if bias is None else refs[bias],
                    tuple(refs[i] for i in deltas),
                )
                for parts, shape, perm, bias, deltas in tile
            ]
            for tile in self.tiles
        ]


def packed_tensor_sum(
    x: torch.Tensor, weight: torch.Tensor | None, refs: tuple, args: TensorSumArgs
) -> torch.Tensor:
    """:func:`tensor_sum` with its tensors (``refs``) apart from the rest of its arguments
    (``args``).

    >>> x, row = torch.ones(1, 2, 3, 4), torch.ones(1, 2, 1, 4)
    >>> group = (((0, None),), None, None, None, ())  # refs[0] as it is
    >>> args = TensorSumArgs(((group,), ()), ((2, (1, 2)),), channels=4)  # tiles of 1, 2 cols
    >>> packed_tensor_sum(x, None, (row,), args)[0, :, :, 0].tolist()
    [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]
    """
    return _tensor_sum(x, weight, args.placed(refs), args.grid, args.layout, args.channels)


_SEGMENTS: dict = {}  # (sizes, dtype, device) -> its averaging matrix


def _segment_matrix(sizes: tuple, dtype, device) -> torch.Tensor:
    """The ``(len(sizes), sum(sizes))`` matrix whose row ``i`` is ``1 / sizes[i]`` on segment
    ``i`` and 0 elsewhere (left-multiplied, it averages each segment), remembered."""

    def make() -> torch.Tensor:
        m = torch.zeros(len(sizes), sum(sizes), dtype=dtype, device=device)
        for i, (start, n) in enumerate(zip(itertools.accumulate(sizes, initial=0), sizes)):
            m[i, start : start + n] = 1.0 / n
        return m

    return _remembered(_SEGMENTS, (sizes, dtype, device), make)


def grid_means(x: torch.Tensor, grid: tuple, dims: tuple) -> tuple:
    """``tuple(tile.mean(dims) for tile in tiles)`` for the tiles of ``x`` on ``grid``
    (row-major; ``grid`` as :func:`tensor_sum` takes it), from a few reductions of the whole
    ``x`` instead of one call per tile.

    The dims that no tile cuts are averaged over the whole ``x`` once; each cut dim in ``dims``
    is averaged per segment (on a small tensor one product with a ``(segments, n)`` averaging
    matrix, on a large one a mean per segment); the tiles' means are views of the result (one
    ``unbind`` or ``split`` per cut dim, whose backward writes the gradient once). A DenseNet
    layer's norm reads the concatenation of every earlier layer's output: its tiles' means
    were a view and a mean per tile, half of a DenseNet-121 layer's 15,000 graph nodes.

    >>> x = torch.arange(10.0).reshape(1, 5, 2)  # (B, n, C): tiles of 2 and 3 along n
    >>> [m.tolist() for m in grid_means(x, ((1, (2, 3)),), (1,))]
    [[[1.0, 2.0]], [[6.0, 7.0]]]
    """
    plain, steps = _grid_steps(grid, dims)
    parts = [_reduce(x, plain, "mean").squeeze(plain) if plain else x]
    for at, sizes, reduced in steps:
        if not reduced:
            parts = [q for p in parts for q in p.split(sizes, at)]
            continue
        out: list = []
        for p in parts:
            if p.numel() < FUSE_MIN:
                m = _segment_matrix(sizes, p.dtype, p.device)
                if at == p.dim() - 2:  # (a vector's segments, a conv's rows: no moves)
                    out += (m @ p).unbind(at)
                else:
                    out += (m @ p.movedim(at, -2)).movedim(-2, at).unbind(at)
            else:
                out += [mean(q, (at,)) for q in p.split(sizes, at)]
        parts = out
    return tuple(parts)


def each_mean(xs: tuple, dims: tuple) -> tuple:
    """``tuple(mean(x, dims) for x in xs)``: a mean of every entry of a tuple (a grid's tiles'
    means, :func:`grid_means`) as one call of the generated code, where it had one per tile
    (GCViT-tiny's 12,825 tiles: 14,302 of its 54,630 nodes were means of their means).

    >>> [m.tolist() for m in each_mean((torch.ones(1, 2, 3), torch.zeros(1, 4, 3)), (1,))]
    [[[1.0, 1.0, 1.0]], [[0.0, 0.0, 0.0]]]
    """
    return tuple(mean(x, dims) for x in xs)


_STEPS: dict = {}  # (grid, dims) -> grid_means' steps


def _grid_steps(grid: tuple, dims: tuple) -> tuple:
    """For :func:`grid_means`: the dims no tile cuts (averaged first), and per cut dim its
    index once those and the cut dims before it are reduced away, its sizes, and whether it
    is averaged (else split); remembered."""

    def make() -> tuple:
        cut = dict(grid)
        plain = tuple(d for d in dims if d not in cut)
        gone, per_dim = list(plain), []
        for d, sizes in grid:
            per_dim.append((d - sum(g < d for g in gone), sizes, d in dims))
            if d in dims:
                gone.append(d)
        return plain, tuple(per_dim)

    return _remembered(_STEPS, (grid, dims), make)


def average(*xs: torch.Tensor) -> torch.Tensor:
    """The mean of same-shape tensors (stacked, then averaged), as :func:`_refs` reads them.

    >>> average(torch.ones(2), torch.zeros(2)).tolist()
    [0.5, 0.5]
    """
    return torch.stack(_refs(xs), 0).mean(0)


def total(*xs: torch.Tensor) -> torch.Tensor:
    """The sum of same-shape tensors (stacked, then summed), as :func:`_refs` reads them.

    >>> total(torch.ones(2), torch.ones(2)).tolist()
    [2.0, 2.0]
    """
    return torch.stack(_refs(xs), 0).sum(0)


def stack_cat(rows: tuple) -> torch.Tensor:
    """Each row's tensors concatenated along channels (last dim), the rows stacked on a new
    leading dim; a row's tensors as :func:`_refs` reads them, and a row that is a run
    ``(tuple, start, stop)`` one row per entry (rows of one tensor each, named once).

    >>> stack_cat(((torch.ones(2, 1), torch.zeros(2, 2)), (torch.ones(2, 3),))).shape
    torch.Size([2, 2, 3])
    >>> stack_cat(((torch.ones(4, 3).unbind(0), 0, 4),)).shape
    torch.Size([4, 3])
    """
    out = []
    for r in rows:
        if _is_run(r):  # a run of rows
            out.extend(r[0][r[1] : r[2]])
        else:
            xs = _refs(r)
            out.append(xs[0] if len(xs) == 1 else torch.cat(xs, -1))
    return torch.stack(out, 0)


def blocks(grid: tuple) -> torch.Tensor:
    """One matrix from a grid (rows of blocks) of matrices.

    >>> blocks(((torch.ones(1, 1), torch.zeros(1, 2)), (torch.zeros(2, 3),))).shape
    torch.Size([3, 3])
    """
    rows = [line[0] if len(line) == 1 else torch.cat(line, 1) for line in grid]
    return rows[0] if len(rows) == 1 else torch.cat(rows, 0)
