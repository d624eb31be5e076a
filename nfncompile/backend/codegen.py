"""Code generation: turn a :class:`~nfncompile.backend.plan.Plan` into a ``torch.fx.GraphModule``.

The graph is built node by node (``placeholder`` / ``get_attr`` / ``call_function`` /
``call_method`` / ``output``), never from source text. Its inputs are the feature tensors, one
placeholder per parameter in spec order, each ``(B, C_in, *param shape)``; it returns a tuple of
``(B, C_out, *param shape)`` tensors in the same order.

Inside, every tile is held **channels-last**: ``(B, *permutable dims, C * prod(fixed dims))``
(a block axis split into its block and inner dims; fixed dims, e.g. conv kernel dims, folded into
the channels after them). Each input tile is permuted into that layout once (``*_cl``, ``*_in``:
a view when the tile is a whole tensor without fixed dims, so a channels-first input is not
copied) and each output
tile out of it once (``*_unfold``, ``*_native``: a view, so a stack of layers stays
channels-last in memory). Between them reductions are means over middle dims, channel mixes are
GEMMs over the last dim and placement only inserts singleton dims to broadcast into: no permute
sits between a broadcast and a concatenation, which ``torch.compile`` on CPU turned into slow
fused backward kernels (a sum over broadcast dims into a strided, kernel-sized inner dim). The
operations that read tiles are those of :mod:`.fused`: means in the input's memory order, GEMMs
reading any strides, and one :func:`~.fused.tile_sum` per output tile that writes the broadcast
contributions' sum once at full size and adds the tile's pointwise GEMM into it in place, its
backward reducing the output gradient once per broadcast shape.

The generated module owns the layer's weights:

``mix{i}``
    complete basis: the ``(rows, cols)`` channel-mixing weight of plan mix ``i``;
``bias{g}``
    complete basis: the ``(C_out * prod(Q fixed dims),)`` bias of plan group ``g``;
``embed{j}``
    complete basis: a learned position embedding added to an input tile (``io_embed``);
``w{r}``
    linear basis: the weight of plan relation ``r`` (shared by every term of that relation);
``delta{k}``
    constant 0/1 buffers that write diagonals (``(*permutable dims of Q, 1)``, 1 where a
    diagonal class's dims are equal).

Examples
--------
>>> from nfncompile.spec import WeightSpaceSpec
>>> from nfncompile.backend.plan import build_plan
>>> spec = WeightSpaceSpec.from_dict({
...     "spaces": {"i": {"size": 2, "role": "input"}, "o": {"size": 2, "role": "output"}},
...     "params": {"w": {"shape": [2, 2], "axes": ["o", "i"]}}})
>>> gm = generate(build_plan(spec, "np", 1, 1, bias=False))
>>> print(gm.code.strip())  # doctest: +ELLIPSIS
def forward(self, w):
    ...
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Mapping

import torch
from torch import fx, nn

from .fused import channel_mix, mean, tile_sum
from .plan import Plan
from .tiles import TileRef

__all__ = ["generate", "placeholder_names"]


def placeholder_names(names: tuple) -> list[str]:
    """Python identifiers for parameter names (``conv1.weight`` -> ``conv1_weight``)."""
    out, seen = [], set()
    for n in names:
        base = re.sub(r"\W", "_", n)
        if not base or base[0].isdigit():
            base = "p_" + base
        cand, k = base, 1
        while cand in seen:
            k += 1
            cand = f"{base}_{k}"
        seen.add(cand)
        out.append(cand)
    return out


class _Builder:
    """An fx.Graph plus the static (batch-free) shape of every tensor node."""

    def __init__(self) -> None:
        self.graph = fx.Graph()
        self.shape: dict = {}

    def call(self, fn, args: tuple, shape: tuple | None, name: str, kwargs: dict | None = None):
        node = self.graph.create_node("call_function", fn, args, kwargs or {}, name=name)
        if shape is not None:
            self.shape[node] = tuple(shape)
        return node

    def method(self, meth: str, args: tuple, shape: tuple | None, name: str):
        node = self.graph.create_node("call_method", meth, args, {}, name=name)
        if shape is not None:
            self.shape[node] = tuple(shape)
        return node

    def reshape(self, x, shape: tuple, name: str):
        if self.shape[x] == tuple(shape):
            return x
        return self.method("reshape", (x, (-1, *shape)), shape, name)

    def permute(self, x, order: tuple, name: str):
        """Permute the non-batch dims (``order`` indexes them)."""
        if tuple(order) == tuple(range(len(order))):
            return x
        old = self.shape[x]
        return self.method(
            "permute", (x, (0, *(1 + o for o in order))), tuple(old[o] for o in order), name
        )

    def cat(self, xs: list, name: str):
        """Concatenate along the last (channel) dim."""
        if len(xs) == 1:
            return xs[0]
        shape = (*self.shape[xs[0]][:-1], sum(self.shape[x][-1] for x in xs))
        return self.call(torch.cat, (xs, -1), shape, name)

    def add(self, a, b, name: str):
        if a is None:
            return b
        shape = tuple(max(x, y) for x, y in zip(self.shape[a], self.shape[b]))
        return self.call(operator.add, (a, b), shape, name)


def _tag(tile: TileRef) -> str:
    return re.sub(r"\W+", "_", tile.name).strip("_")


def generate(
    plan: Plan, *, io_embed: bool = False, weights: Mapping[str, nn.Parameter] | None = None
) -> fx.GraphModule:
    """Build the layer's ``GraphModule`` (weights allocated, not initialised).

    Parameters
    ----------
    plan : Plan
    io_embed : bool
        Deprecated spelling of ``plan.embeds``: ignored (the plan says which embeddings exist).
    weights : mapping str -> Parameter, optional
        Linear basis: existing parameters by relation key, used instead of new ones (the
        generated module then shares them).
    """
    spec = plan.spec
    c_in, c_out = plan.in_channels, plan.out_channels
    b = _Builder()
    root = nn.Module()
    names = placeholder_names(spec.names)
    inputs = {}
    for pname, ident in zip(spec.names, names):
        node = b.graph.placeholder(ident)
        b.shape[node] = (c_in, *spec[pname].shape)
        inputs[pname] = node
    batch = None

    def batch_size():
        nonlocal batch
        if batch is None:
            batch = b.graph.create_node(
                "call_method", "size", (inputs[spec.names[0]], 0), {}, name="batch"
            )
        return batch

    def get_attr(name: str, value: torch.Tensor, param: bool):
        if param:
            root.register_parameter(
                name, value if isinstance(value, nn.Parameter) else nn.Parameter(value)
            )
        else:
            root.register_buffer(name, value)
        node = b.graph.get_attr(name)
        b.shape[node] = None
        return node

    rel_nodes: dict = {}
    grids: dict = {}

    def assembled(grid: tuple, name: str):
        """One weight from a grid of relations, built once per distinct grid."""
        if grid not in grids:
            blocks = [[relation(r, rel_shape(r)) for r in line] for line in grid]
            grids[grid] = _assemble(b, blocks, name)
        return grids[grid]

    def relation(r: int, shape: tuple):
        """The weight of relation ``r`` (created on first use)."""
        if r not in rel_nodes:
            rel = plan.relations[r]
            value = None if weights is None else weights.get(rel.key)
            if value is None:
                value = torch.zeros(shape)
            rel_nodes[r] = get_attr(f"w{r}", value, True)
            b.shape[rel_nodes[r]] = tuple(shape)
        return rel_nodes[r]

    def rel_shape(r: int) -> tuple:
        return plan.relations[r].shape(c_in, c_out, plan.width)

    # ---- input tiles, in the internal layout (B, *permutable dims, C_in * fixed) -----------
    embeds: dict = {}
    for ei, (ti, axis, rel) in enumerate(plan.embeds):
        embeds.setdefault(ti, []).append((ei, axis, rel))
    tile_nodes: dict = {}
    for pname in spec.names:
        p = spec[pname]
        x = inputs[pname]
        if p.view is not None:
            x = b.reshape(x, (c_in, *p.view), f"{names[spec.names.index(pname)]}_view")
        tiles = [(ti, t) for ti, t in enumerate(plan.tiles) if t.param == pname]
        for ti, t in tiles:
            xt = x
            if len(tiles) > 1:
                idx = (slice(None), slice(None)) + tuple(
                    slice(s, s + n) for s, n in zip(t.starts, t.shape)
                )
                xt = b.call(operator.getitem, (x, idx), (c_in, *t.shape), _tag(t))
            for ei, axis, rel in embeds.get(ti, ()):
                shape = [1] * len(t.shape)
                shape[axis] = t.shape[axis]
                shape = (c_in, *shape)
                if rel is None:
                    emb = get_attr(f"embed{ei}", torch.zeros(shape), True)
                else:
                    emb = relation(rel, shape)
                xt = b.call(operator.add, (xt, emb), (c_in, *t.shape), f"{_tag(t)}_emb")
            if t.is_split:
                xt = b.reshape(xt, (c_in, *t.dim_shape), f"{_tag(t)}_split")
            # one permute per tile: permutable dims first, then channels and fixed dims
            # (folded into one channel dim by the reshape)
            order = [1 + d for d in t.perm_dims] + [0] + [1 + d for d in t.fixed_dims]
            xt = b.permute(xt, tuple(order), f"{_tag(t)}_cl")
            perm_shape = tuple(t.dims[d].size for d in t.perm_dims)
            # a view when the tile has no fixed dims: reductions and GEMMs read it in its own
            # strides (channels-first from the user, channels-last from another layer) ...
            xt = b.reshape(xt, (*perm_shape, c_in * t.fixed_size), f"{_tag(t)}_in")
            if len(tiles) > 1:  # ... unless it is a slice of a composite tensor: copied once
                xt = b.method("contiguous", (xt,), b.shape[xt], f"{_tag(t)}_cl_mem")
            tile_nodes[t] = xt

    # ---- reductions: (B, *kept, C_in * fixed) ------------------------------------------
    red_nodes: list = []
    for ri, red in enumerate(plan.reductions):
        side, t = red.side, red.tile
        tag = f"{_tag(t)}_r{ri}"
        kept_shape = (*red.kept_shape, red.channels)
        if red.source is not None:
            src = plan.reductions[red.source].side
            src_kept = [j for j, k in enumerate(src.linked) if k]
            pos = [1 + i for i, j in enumerate(src_kept) if not side.linked[j]]
            red_nodes.append(b.call(mean, (red_nodes[red.source], tuple(pos)), kept_shape, tag))
            continue
        x = tile_nodes[t]
        # labels of the non-batch dims: ("d", dim), ("c", class) or ("k",) (channels)
        labels = [("d", d) for d in t.perm_dims] + [("k",)]
        shape = list(b.shape[x])
        for j, cls in enumerate(side.classes):
            if len(cls) == 1:
                labels[labels.index(("d", cls[0]))] = ("c", j)
                continue
            cur = ("d", cls[0])
            for other in cls[1:]:
                d1, d2 = labels.index(cur), labels.index(("d", other))
                n = shape[d1]
                for d in sorted((d1, d2), reverse=True):
                    del labels[d], shape[d]
                labels.append(("c", j))
                shape.append(n)
                x = b.call(
                    torch.diagonal,
                    (x,),
                    tuple(shape),
                    f"{tag}_diag",
                    {"offset": 0, "dim1": 1 + d1, "dim2": 1 + d2},
                )
                cur = ("c", j)
        mean_dims = [1 + labels.index(("c", j)) for j, k in enumerate(side.linked) if not k]
        if mean_dims:
            keep = [lab for i, lab in enumerate(labels) if 1 + i not in mean_dims]
            shape = [s for i, s in enumerate(shape) if 1 + i not in mean_dims]
            x = b.call(mean, (x, tuple(mean_dims)), tuple(shape), f"{tag}_mean")
            labels = keep
        want = [("c", j) for j, k in enumerate(side.linked) if k] + [("k",)]
        x = b.permute(x, tuple(labels.index(w) for w in want), tag)
        red_nodes.append(x)

    # ---- mixes: channel mixes (GEMMs over the last dim), per group a value in mix order ----
    group_values: dict = {}  # group -> node (B, *kept in mix order, C_out * fixed)
    pointwise: dict = {}  # group -> (weight node, input node): added by the tile's last GEMM
    for mi, mix in enumerate(plan.mixes):
        pieces = [
            b.permute(red_nodes[ri], (*perm, len(perm)), f"r{ri}_t") for ri, perm in mix.inputs
        ]
        kept = mix.kept_shape
        if plan.basis == "complete":
            w = get_attr(f"mix{mi}", torch.zeros(mix.out_channels, mix.in_channels), True)
            b.shape[w] = (mix.out_channels, mix.in_channels)
            if len(mix.groups) == 1 and _is_full(plan, mix.groups[0]):
                pointwise[mix.groups[0]] = (w, b.cat(pieces, f"cat{mi}"))
                continue
            x = b.cat(pieces, f"cat{mi}")
            y = b.call(channel_mix, (w, x), (*kept, mix.out_channels), f"mix{mi}_out")
            sizes = [plan.groups[g].channels for g in mix.groups]
            for g, part in zip(mix.groups, _split(b, y, sizes, f"mix{mi}")):
                group_values[g] = part
            continue
        _linear_mix(b, plan, mi, mix, pieces, assembled, group_values, pointwise)

    # ---- placement: broadcast dims are new singletons, no permute -----------------------
    out_values: dict = {}
    n_delta = 0
    for gi, g in enumerate(plan.groups):
        side, q = g.side, g.tile
        y = group_values.get(gi)
        if y is not None and g.perm != tuple(range(len(g.perm))):
            y = b.permute(y, (*g.perm, len(g.perm)), f"g{gi}_t")
        if g.bias:
            bias = get_attr(f"bias{gi}", torch.zeros(g.channels), True)
            if y is None:
                y = b.method("reshape", (bias, (1, g.channels)), (g.channels,), f"b{gi}")
            else:
                y = b.call(operator.add, (y, bias), b.shape[y], f"g{gi}_b")
        if gi in pointwise:  # added inside the tile's last GEMM
            out_values.setdefault(q, []).append(("gemm", gi))
        if y is None:
            continue
        # linked classes are ordered by first dim, as the kept dims of y: only singletons for
        # the broadcast (and the diagonal's other) dims are inserted
        firsts = {c[0] for c in side.linked_classes}
        full = [q.dims[d].size if d in firsts else 1 for d in q.perm_dims]
        y = b.reshape(y, (*full, g.channels), f"g{gi}_place")
        for cls in side.classes:
            if len(cls) < 2:
                continue
            n = q.dims[cls[0]].size
            dshape = [n if d in cls else 1 for d in q.perm_dims] + [1]
            eye = torch.zeros(*dshape)
            idx = torch.arange(n)
            eye[tuple(idx if d in cls else 0 for d in q.perm_dims) + (0,)] = 1.0
            delta = get_attr(f"delta{n_delta}", eye, False)
            n_delta += 1
            delta = b.method("type_as", (delta, y), None, f"delta{n_delta - 1}_t")
            shp = tuple(max(a, d) for a, d in zip(b.shape[y], dshape))
            y = b.call(operator.mul, (y, delta), shp, f"g{gi}_delta")
        out_values.setdefault(q, []).append(("value", y))

    # ---- sum into tiles (smallest first, the pointwise GEMM last), back to (B, C_out, ...) ---
    tile_out: dict = {}
    for q in plan.tiles:
        perm_shape = tuple(q.dims[d].size for d in q.perm_dims)
        fixed_shape = tuple(q.dims[d].size for d in q.fixed_dims)
        full = (*perm_shape, c_out * q.fixed_size)
        vals = [v for kind, v in out_values.get(q, []) if kind == "value"]
        gemms = [gi for kind, gi in out_values.get(q, []) if kind == "gemm"]
        vals.sort(key=lambda n: math.prod(b.shape[n]))
        acc = None
        if gemms:  # one fused op: the broadcasts' sum written once, the GEMM added in place
            w, x = pointwise[gemms[0]]
            acc = b.call(tile_sum, (x, w, *vals), full, f"{_tag(q)}_mix")
            vals = []
        for v in vals:
            acc = b.add(acc, v, f"{_tag(q)}_acc")
        for gi in gemms[1:]:
            w, x = pointwise[gi]
            acc = b.call(tile_sum, (x, w, acc), full, f"{_tag(q)}_mix")
        if acc is None:
            acc = b.method("new_zeros", (inputs[q.param], (1, *full)), full, f"{_tag(q)}_zeros")
        if b.shape[acc] != full:
            acc = b.method("expand", (acc, batch_size(), *full), full, f"{_tag(q)}_full")
        n_perm = len(perm_shape)
        acc = b.reshape(acc, (*perm_shape, c_out, *fixed_shape), f"{_tag(q)}_unfold")
        order = [n_perm] + [
            q.perm_dims.index(d) if d in q.perm_dims else n_perm + 1 + q.fixed_dims.index(d)
            for d in range(len(q.dims))
        ]
        acc = b.permute(acc, tuple(order), f"{_tag(q)}_native")
        if q.is_split:
            acc = b.reshape(acc, (c_out, *q.shape), f"{_tag(q)}_merge")
        tile_out[q] = acc

    outputs = []
    for pname, ident in zip(spec.names, names):
        p = spec[pname]
        tensors = [tile_out[t] for t in plan.tiles if t.param == pname]
        counts = [len(a) if isinstance(a, tuple) else 1 for a in p.axes]
        for ax in reversed(range(len(counts))):
            c = counts[ax]
            if c == 1:
                continue
            merged = []
            for i in range(0, len(tensors), c):
                chunk = tensors[i : i + c]
                shp = list(b.shape[chunk[0]])
                shp[1 + ax] = sum(b.shape[t][1 + ax] for t in chunk)
                merged.append(b.call(torch.cat, (chunk, 2 + ax), tuple(shp), f"{ident}_cat"))
            tensors = merged
        (out,) = tensors
        out = b.reshape(out, (c_out, *p.shape), f"{ident}_out")
        outputs.append(out)
    b.graph.output(tuple(outputs))
    b.graph.eliminate_dead_code()
    b.graph.lint()
    return fx.GraphModule(root, b.graph, class_name="NFLinearGraph")


def _is_full(plan: Plan, g: int) -> bool:
    """Whether group ``g`` covers its whole tile with no broadcast, diagonal or permute: its
    value can be added by the tile's GEMM itself."""
    group = plan.groups[g]
    return (
        group.side.is_pointwise and group.perm == tuple(range(len(group.perm))) and not group.bias
    )


def _split(b: _Builder, y, sizes: list, tag: str) -> list:
    """Split the channels of ``y`` into parts of ``sizes``."""
    if len(sizes) == 1:
        return [y]
    parts = b.call(torch.split, (y, sizes, -1), None, f"{tag}_split")
    kept = b.shape[y][:-1]
    return [
        b.call(operator.getitem, (parts, j), (*kept, n), f"{tag}_part") for j, n in enumerate(sizes)
    ]


def _assemble(b: _Builder, blocks: list, name: str):
    """One weight from a grid of relation weights (rows of blocks)."""
    rows = []
    for line in blocks:
        if len(line) == 1:
            rows.append(line[0])
            continue
        shape = (b.shape[line[0]][0], sum(b.shape[w][1] for w in line))
        rows.append(b.call(torch.cat, (line, 1), shape, f"{name}_row"))
    if len(rows) == 1:
        return rows[0]
    shape = (sum(b.shape[r][0] for r in rows), *b.shape[rows[0]][1:])
    return b.call(torch.cat, (rows, 0), shape, name)


def _mean(b: _Builder, xs: list, name: str):
    """The average of same-shape tensors."""
    if len(xs) == 1:
        return xs[0]
    stacked = b.call(torch.stack, (xs, 0), None, f"{name}_stack")
    return b.method("mean", (stacked, 0), b.shape[xs[0]], name)


def _linear_mix(b, plan, mi, mix, pieces, assembled, group_values, pointwise) -> None:
    """The linear basis's mixing of one mix: per layer, then per kind, into each group."""
    kept = mix.kept_shape

    def weight(grid: tuple, name: str):
        return assembled(tuple(tuple(line) for line in grid), name)

    sh = mix.shared
    values: dict = {}  # position in mix.groups -> node
    # terms between the tiles of one layer: their own relations
    for li, loc in enumerate(mix.local):
        w = weight(loc.weights, f"m{mi}_l{li}_w")
        x = b.cat([pieces[j] for j in loc.cols], f"m{mi}_l{li}_cat")
        if sh is None and len(loc.groups) == 1 and _is_full(plan, mix.groups[loc.groups[0]]):
            pointwise[mix.groups[loc.groups[0]]] = (w, x)
            continue
        sizes = [plan.groups[mix.groups[i]].channels for i in loc.groups]
        y = b.call(channel_mix, (w, x), (*kept, sum(sizes)), f"m{mi}_l{li}_out")
        for i, part in zip(loc.groups, _split(b, y, sizes, f"m{mi}_l{li}")):
            values[i] = part
    if sh is None:
        for i, g in enumerate(mix.groups):
            if i in values:
                group_values[g] = values[i]
        return
    # terms from every tile of a kind, averaged
    aggs = [
        _mean(b, [pieces[j] for j in cols], f"m{mi}_k{k}") for k, cols in enumerate(sh.col_kinds)
    ]
    rep = [sh.row_kinds.index(k) for k in range(max(sh.row_kinds) + 1)]
    sizes = [plan.groups[mix.groups[i]].channels for i in rep]
    x = b.cat(aggs, f"m{mi}_kinds")
    if mix.key:
        y = b.call(
            channel_mix, (weight(sh.weights, f"m{mi}_w"), x), (*kept, sum(sizes)), f"m{mi}_shared"
        )
    else:  # the invariant channel
        into, out = sh.weights
        v = b.call(channel_mix, (weight([into], f"m{mi}_inv_in"), x), (plan.width,), f"m{mi}_inv")
        w_out = weight([[r] for r in out], f"m{mi}_inv_out")
        y = b.call(channel_mix, (w_out, v), (sum(sizes),), f"m{mi}_shared")
        if sh.biases:
            bias = weight([[r] for r in sh.biases], f"m{mi}_bias")
            y = b.call(operator.add, (y, bias), (sum(sizes),), f"m{mi}_shared_b")
    per_kind = _split(b, y, sizes, f"m{mi}_shared")
    for i, g in enumerate(mix.groups):
        shared_val = per_kind[sh.row_kinds[i]]
        group_values[g] = b.add(values.get(i), shared_val, f"g{g}_sum")
