"""Code generation: turn a :class:`~nfncompile.backend.plan.Plan` into a ``torch.fx.GraphModule``.

The graph is built node by node (``placeholder`` / ``get_attr`` / ``call_function`` /
``call_method`` / ``output``), never from source text. Its inputs are the feature tensors, one
placeholder per parameter in spec order, each ``(B, C_in, *param shape)``; it returns a tuple of
``(B, C_out, *param shape)`` tensors in the same order.

Inside, every tile is held **channels-last**: ``(B, *permutable dims, C * prod(fixed dims))``
(a block axis split into its block and inner dims; fixed dims, e.g. conv kernel dims, folded into
the channels after them). Each input tile is permuted into that layout once, by one
:func:`~.fused.tile_in` call (``*_cl``: a view when the tile is a whole tensor without fixed
dims, so a channels-first input is not copied), and each output tile out of it once, inside the
one call that writes it (``*_native``: :func:`~.fused.tile_sum` or :func:`~.fused.tile_add`, or
one :func:`~.fused.tensor_add` for every tile of a composite tensor; a view, so a stack of layers
stays channels-last in memory).

A composite tensor (a DenseNet layer's input, a concatenation) whose tiles have the same dims and
are cut only along permutable dims lies on a *grid*: it is brought into the layout as a whole,
once, and each tile is a slice of that view (no copy per tile), made only where something reads
the tile itself; the means of its tiles over one set of dims are one
:func:`~.fused.grid_means` of the whole tensor. When every tile's pointwise term
is the same weight on the tile itself (the linear basis, whose weights are indexed by relation,
not by tile), its output is one :func:`~.fused.tensor_sum`: each tile's broadcasts written into
its region of one fresh tensor and one GEMM over the whole tensor added in place, with no
concatenation after it. (Its nested per-tile arguments are kept on the module, a
:class:`~.fused.TensorSumArgs` each, and only its tensors are in the code:
:func:`~.fused.packed_tensor_sum`.)

A layer is a few calls per tile, each with a bounded number of arguments: creating, printing and
compiling fx nodes is most of a large layer's build. So an entry of a tuple a call returned (a
split's views, a ``means`` or ``grid_means`` result) is passed on as ``(node, index)`` and read
by the fused operation that takes it, without a ``getitem`` node of its own. Between them reductions are means over
middle dims, channel mixes are GEMMs over the last dim and placement only inserts singleton dims
to broadcast into: no permute sits between a broadcast and a concatenation, which
``torch.compile`` on CPU turned into slow fused backward kernels (a sum over broadcast dims into
a strided, kernel-sized inner dim). The operations that read tiles are those of :mod:`.fused`:
means in the input's memory order (the means of one source in one :func:`~.fused.means` call,
one pass over a large tile), GEMMs reading any strides, and one :func:`~.fused.tile_sum` per
output tile that writes the broadcast contributions' sum once at full size and adds the tile's
pointwise GEMM into it in place, its backward reducing the output gradient once per broadcast
shape (a large gradient to all of them in one pass).

The generated module owns the layer's weights:

``mix{i}``
    complete basis: the ``(rows, cols)`` channel-mixing weight of plan mix ``i``;
``bias{g}``
    complete basis: the ``(C_out * prod(Q fixed dims),)`` bias of plan group ``g``;
``embed{j}``
    complete basis: a learned position embedding added to an input tile (``io_embed``);
``w{r}``
    linear basis: the weight of plan relation ``r`` (shared by every term of that relation);
``sums{n}``
    not a weight: the static arguments of a composite tensor's
    :func:`~.fused.packed_tensor_sum` (a :class:`~.fused.TensorSumArgs`);
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

import functools
import itertools
import math
import operator
import re
from collections.abc import Mapping

import torch
from torch import fx, nn

from .fused import (
    TensorSumArgs,
    average,
    blocks,
    channel_mix,
    each_mean,
    grid_means,
    mean,
    means,
    packed_tensor_sum,
    stack_cat,
    tensor_add,
    tile_add,
    tile_in,
    tile_sum,
    total,
)
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


#: the fused operations that read their arguments from this position on in order, as
#: :func:`~.fused._refs` (runs of one tuple's entries allowed); ``stack_cat`` reads rows
_READS_IN_ORDER = {channel_mix: 1, total: 0, average: 0}


class _Builder:
    """An fx.Graph plus the static (batch-free) shape of every tensor node."""

    def __init__(self) -> None:
        self.graph = fx.Graph()
        self.shape: dict = {}
        self.refs: dict = {}  # (node, index) -> its getitem node, where one is needed

    def _node(self, op: str, target, args: tuple, kwargs: dict, shape, name: str):
        # created bare, then given its arguments: ``create_node`` walks nested arguments in
        # Python looking for symbolic ints (none here): an eighth of a large layer's build
        node = self.graph.create_node(op, target, (), {}, name=name)
        node.args, node.kwargs = args, kwargs
        if shape is not None:
            self.shape[node] = tuple(shape)
        return node

    def call(self, fn, args: tuple, shape: tuple | None, name: str, kwargs: dict | None = None):
        if fn in _READS_IN_ORDER:  # its references: each run of a tuple's entries named once
            k = _READS_IN_ORDER[fn]
            args = (*args[:k], *_runs(args[k:]))
        elif fn is stack_cat:
            args = (_row_runs(args[0]),)
        return self._node("call_function", fn, args, kwargs or {}, shape, name)

    def method(self, meth: str, args: tuple, shape: tuple | None, name: str):
        return self._node("call_method", meth, args, {}, shape, name)

    def reshape(self, x, shape: tuple, name: str):
        if self.shape[x] == tuple(shape):
            return x
        return self.method("reshape", (x, (-1, *shape)), shape, name)

    def node_of(self, x):
        """``x`` as a node: a ``(node, index)`` reference (entry ``index`` of the tuple a call
        returned, which the fused operations read directly) becomes a ``getitem`` node."""
        if type(x) is not tuple:
            return x
        if x not in self.refs:
            node = self.call(operator.getitem, x, self.shape[x], f"{x[0].name}_{x[1]}")
            self.refs[x] = node
        return self.refs[x]

    def permute(self, x, order: tuple, name: str):
        """Permute the non-batch dims (``order`` indexes them); ``x`` a node or a reference."""
        if tuple(order) == tuple(range(len(order))):
            return x
        x = self.node_of(x)
        old = self.shape[x]
        return self.method(
            "permute", (x, (0, *(1 + o for o in order))), tuple(old[o] for o in order), name
        )

    def cat(self, xs: list, name: str):
        """Concatenate along the last (channel) dim."""
        xs = [self.node_of(x) for x in xs]
        if len(xs) == 1:
            return xs[0]
        shape = (*self.shape[xs[0]][:-1], sum(self.shape[x][-1] for x in xs))
        return self.call(torch.cat, (xs, -1), shape, name)

    def add(self, a, b, name: str):
        if a is None:
            return b
        shape = tuple(max(x, y) for x, y in zip(self.shape[a], self.shape[b]))
        return self.call(operator.add, (a, b), shape, name)


def _extends(last, x) -> bool:
    """Whether reference ``x``, ``(node, i)``, is the entry after reference or run ``last``."""
    return (
        type(last) is tuple
        and type(x) is tuple
        and len(x) == 2
        and len(last) in (2, 3)
        and last[0] is x[0]
        and type(last[1]) is int
        and last[-1] + (len(last) == 2) == x[1]
    )


def _runs(xs) -> tuple:
    """A variadic argument's references with each run of consecutive entries of one tuple,
    ``(node, i), (node, i + 1), ...``, written as one ``(node, i, stop)`` (see
    :func:`~.fused._refs`; :meth:`_Builder.call` does it for :data:`_READS_IN_ORDER`): a
    concatenation's tiles are read in order, and DenseNet-201's code named 8,500 such entries
    one by one."""
    out: list = []
    for x in xs:
        if out and _extends(out[-1], x):
            out[-1] = (x[0], out[-1][1], x[1] + 1)
        else:
            out.append(x)
    return tuple(out)


def _row_runs(rows: tuple) -> tuple:
    """:func:`~.fused.stack_cat` 's rows, each row's references in runs (:func:`_runs`) and
    consecutive rows of one entry each, ``((node, i),), ((node, i + 1),), ...``, as one run
    of rows ``(node, i, stop)``."""
    out: list = []
    for r in rows:
        last = out[-1] if out else None
        if last is not None and len(last) == 1:  # the row before: one entry
            last = last[0]
        if len(r) == 1 and _extends(last, r[0]):
            out[-1] = (r[0][0], last[1], r[0][1] + 1)
        else:
            out.append(_runs(r))
    return tuple(out)


def _key(tile: TileRef) -> tuple:
    """A tile's identity, cheap to compare: its parameter and its index among that one's."""
    return tile.param, tile.index


@functools.lru_cache(maxsize=65536)
def _tag(tile: TileRef) -> str:
    """A tile's name as part of an identifier (asked for by every node that writes a tile)."""
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
    ident_of = dict(zip(spec.names, names))  # parameter -> its identifier in the code
    inputs = {}
    for pname, ident in ident_of.items():
        node = b.graph.placeholder(ident)
        b.shape[node] = (c_in, *spec[pname].shape)
        inputs[pname] = node

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

    linear = _Relations(b, plan, assembled, lambda r: relation(r, rel_shape(r)))

    # ---- input tiles, in the internal layout (B, *permutable dims, C_in * fixed) -----------
    embeds: dict = {}
    for ei, (ti, axis, rel) in enumerate(plan.embeds):
        embeds.setdefault(ti, []).append((ei, axis, rel))
    tile_nodes: dict = {}
    # composite tensor -> (its whole input node, its tiles' grid, its shape)
    grids_of: dict = {}
    grid_views: dict = {}  # composite tensor on a grid -> its tiles' views (_GridViews)
    tiles_of: dict = {name: [] for name in spec.names}
    for ti, t in enumerate(plan.tiles):
        tiles_of[t.param].append((ti, t))
    # a tile's position among its tensor's (row-major over a grid)
    position = {_key(t): k for tiles in tiles_of.values() for k, (_, t) in enumerate(tiles)}
    for pname in spec.names:
        p = spec[pname]
        x = inputs[pname]
        if p.view is not None:
            x = b.reshape(x, (c_in, *p.view), f"{ident_of[pname]}_view")
        tiles = tiles_of[pname]
        grid = None if any(ti in embeds for ti, _ in tiles) else _grid([t for _, t in tiles])
        if grid is not None:
            # a composite tensor cut only along permutable dims, its tiles laid out alike: one
            # view (or copy) of the whole tensor in the internal layout, each tile a view of it
            t = tiles[0][1]
            shape = list(t.shape)
            for dim, sizes in grid:
                shape[t.perm_dims[dim - 1]] = sum(sizes)
            steps, whole = _layout_steps(t, b.shape[x], tuple(shape), c_in)
            ident = ident_of[pname]
            x_whole = b.call(tile_in, (x,), whole, f"{ident}_cl", steps) if steps else x
            grids_of[pname] = (x_whole, grid, tuple(shape))
            grid_views[pname] = _GridViews(b, x_whole, grid, f"{ident}_cl")
            continue  # its tiles' views are made when something reads a tile (tile_view)
        # a composite tensor off a grid: its pieces split off it (views), each copied once
        pieces = [x] * len(tiles)
        cuts = _cuts([t for _, t in tiles]) if len(tiles) > 1 else None
        if cuts is not None:
            native = tuple((2 + axis, sizes) for axis, sizes in cuts)
            ident = ident_of[pname]
            views = _GridViews(b, x, native, ident)
            pieces = [views.view(k) for k in range(len(tiles))]
        for (ti, t), piece in zip(tiles, pieces):
            # one call per tile (fused.tile_in): its slice of a composite tensor, embeddings,
            # block axes split, one permute (permutable dims first, then channels and fixed
            # dims, folded into one channel dim by the reshape)
            steps: dict = {}
            if len(tiles) > 1 and cuts is None:
                steps["index"] = tuple((s, s + n) for s, n in zip(t.starts, t.shape))
            emb_nodes = []
            for ei, axis, rel in embeds.get(ti, ()):
                shape = [1] * len(t.shape)
                shape[axis] = t.shape[axis]
                shape = (c_in, *shape)
                if rel is None:
                    emb_nodes.append(get_attr(f"embed{ei}", torch.zeros(shape), True))
                else:
                    emb_nodes.append(relation(rel, shape))
            if emb_nodes:
                steps["embeds"] = tuple(emb_nodes)
            have = (c_in, *t.shape) if len(tiles) > 1 else b.shape[x]
            more, shape = _layout_steps(t, have, t.dim_shape, c_in)
            steps.update(more)
            if len(tiles) > 1:  # a slice of a composite tensor off a grid: copied once
                steps["copy"] = True
            if steps:
                x_t = b.call(tile_in, (piece,), shape, f"{_tag(t)}_cl", steps)
            else:
                x_t = piece
            tile_nodes[t] = x_t

    def tile_view(t: TileRef):
        """The node of tile ``t`` in the internal layout: a grid's tiles are views of its
        whole tensor, each made on first use (where only means read a grid's tiles,
        :func:`~.fused.grid_means` takes them from the whole tensor and no view is made)."""
        if t not in tile_nodes:
            tile_nodes[t] = grid_views[t.param].view(position[_key(t)])
        return tile_nodes[t]

    # ---- reductions: (B, *kept, C_in * fixed) ------------------------------------------
    # the means of one source (a tile, or a reduction of it): two or more are one call
    # (fused.means: one pass over a large tile), each taken out of its result by index
    by_source: dict = {}
    for ri, red in enumerate(plan.reductions):
        if red.source is not None:
            src = plan.reductions[red.source].side
            src_kept = [j for j, k in enumerate(src.linked) if k]
            pos = [1 + i for i, j in enumerate(src_kept) if not red.side.linked[j]]
            by_source.setdefault(red.source, {})[ri] = tuple(pos)
    means_nodes: dict = {}
    red_nodes: list = []
    # a grid tile's own (pointwise) reduction whose node would be the tile's view itself: the
    # tile, its view made only where something other than its means reads it (red_node)
    on_grid: dict = {}
    grid_nodes: dict = {}  # (tensor, dims) -> its fused.grid_means node
    each_nodes: dict = {}  # (grid_means node, dims) -> its fused.each_mean node

    def red_node(ri: int):
        """Reduction ``ri``'s node or reference (a grid tile's own: its view, made now)."""
        if red_nodes[ri] is None:
            red_nodes[ri] = tile_view(on_grid[ri])
        return red_nodes[ri]

    for ri, red in enumerate(plan.reductions):
        side, t = red.side, red.tile
        tag = f"{_tag(t)}_r{ri}"
        kept_shape = (*red.kept_shape, red.channels)
        own = red.source is None and t.param in grids_of and side.is_pointwise
        if own and [c[0] for c in side.classes] == list(t.perm_dims):  # no permute after it
            on_grid[ri] = t
            red_nodes.append(None)
            continue
        if red.source in on_grid:
            # the means of a grid's tiles over these dims: one fused.grid_means of the whole
            # tensor (the means of one tile and another a few dims apart: one call each)
            dims = by_source[red.source][ri]
            if (t.param, dims) not in grid_nodes:
                x_whole, grid, _ = grids_of[t.param]
                name = f"{ident_of[t.param]}_means{len(grid_nodes)}"
                node = b.call(grid_means, (x_whole, grid, dims), None, name)
                grid_nodes[t.param, dims] = node
            ref = (grid_nodes[t.param, dims], position[_key(t)])
            b.shape[ref] = kept_shape
            red_nodes.append(ref)
            continue
        if red.source is not None:
            siblings = by_source[red.source]
            source = red_node(red.source)
            if type(source) is tuple and source[0].target is grid_means:
                # a mean of a grid tile's mean: those of every tile of the grid in one call
                g_node, index = source
                key = (g_node, siblings[ri])
                if key not in each_nodes:
                    name = f"{g_node.name}_means{len(each_nodes)}"
                    each_nodes[key] = b.call(each_mean, key, None, name)
                ref = (each_nodes[key], index)
                b.shape[ref] = kept_shape
                red_nodes.append(ref)
                continue
            if len(siblings) == 1:
                red_nodes.append(b.call(mean, (source, siblings[ri]), kept_shape, tag))
                continue
            if red.source not in means_nodes:
                name = f"r{red.source}_means"
                sets = tuple(siblings.values())
                means_nodes[red.source] = b.call(means, (source, sets), None, name)
            ref = (means_nodes[red.source], list(siblings).index(ri))
            b.shape[ref] = kept_shape
            red_nodes.append(ref)  # read by index where it is used (fused._ref)
            continue
        x = tile_view(t) if t.param in grids_of else tile_nodes[t]
        # labels of the non-batch dims: ("d", dim), ("c", class) or ("k",) (channels)
        labels = [("d", d) for d in t.perm_dims] + [("k",)]
        shape = list(b.shape[x])
        for j, cls in enumerate(side.classes):
            if len(cls) == 1:
                labels[labels.index(("d", cls[0]))] = ("c", j)
                continue
            cur = ("d", cls[0])
            for other in cls[1:]:
                x = b.node_of(x)
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

    # ---- mixes: channel mixes (GEMMs over the last dim), per group its parts in mix order ----
    # group -> ((node, start, stop), ...): channels of mix results (B, *kept, ...), summed
    group_values: dict = {}
    pointwise: dict = {}  # group -> (weight node, input nodes): added by the tile's last GEMM
    for mi, mix in enumerate(plan.mixes):
        pieces = [
            b.permute(red_node(ri), (*perm, len(perm)), f"r{ri}_t") for ri, perm in mix.inputs
        ]
        kept = mix.kept_shape
        if plan.basis == "complete":
            w = get_attr(f"mix{mi}", torch.zeros(mix.out_channels, mix.in_channels), True)
            b.shape[w] = (mix.out_channels, mix.in_channels)
            if len(mix.groups) == 1 and _is_full(plan, mix.groups[0]):
                pointwise[mix.groups[0]] = (w, pieces)
                continue
            y = b.call(channel_mix, (w, *pieces), (*kept, mix.out_channels), f"mix{mi}_out")
            sizes = [plan.groups[g].channels for g in mix.groups]
            for g, part in zip(mix.groups, _parts(b, y, sizes, f"mix{mi}")):
                group_values[g] = (part,)
            continue
        _linear_mix(b, plan, mi, mix, pieces, linear, group_values, pointwise)

    # ---- placement: broadcast dims are new singletons, no permute -----------------------
    # per output tile: its groups as fused.place takes them, with their static shapes
    out_values: dict = {}
    n_delta = 0
    for gi, g in enumerate(plan.groups):
        side, q = g.side, g.tile
        parts = group_values.get(gi, ())
        perm = None
        if parts and g.perm != tuple(range(len(g.perm))):
            perm = tuple(g.perm)
        bias = None
        if g.bias:
            bias = get_attr(f"bias{gi}", torch.zeros(g.channels), True)
        if gi in pointwise:  # added inside the tile's last GEMM
            out_values.setdefault(q, []).append(("gemm", gi))
        if not parts and bias is None:
            continue
        # linked classes are ordered by first dim, as the kept dims of the value: only
        # singletons for the broadcast (and the diagonal's other) dims are inserted
        firsts = {c[0] for c in side.linked_classes}
        full = tuple(q.dims[d].size if d in firsts else 1 for d in q.perm_dims)
        if parts:
            kept = tuple(q.dims[c[0]].size for c in side.linked_classes)
            have = (*kept, g.channels)  # the kept dims in the tile's class order
        else:
            have = (g.channels,)
        place_shape = None if have == (*full, g.channels) else (*full, g.channels)
        shp = (*full, g.channels)
        deltas = []
        for cls in side.classes:
            if len(cls) < 2:
                continue
            n = q.dims[cls[0]].size
            dshape = [n if d in cls else 1 for d in q.perm_dims] + [1]
            eye = torch.zeros(*dshape)
            idx = torch.arange(n)
            eye[tuple(idx if d in cls else 0 for d in q.perm_dims) + (0,)] = 1.0
            deltas.append(get_attr(f"delta{n_delta}", eye, False))
            n_delta += 1
            shp = tuple(max(a, d) for a, d in zip(shp, dshape))
        group = (parts, place_shape, perm, bias, tuple(deltas))
        out_values.setdefault(q, []).append(("value", (group, shp)))

    # ---- sum into tiles (smallest first, the pointwise GEMM last), back to (B, C_out, ...) ---
    # one call per tile: fused.tile_sum (with its pointwise GEMM) or fused.tile_add
    tile_out: dict = {}
    # composite tensors on a grid: one fused.tensor_sum each, when no tile has a pointwise GEMM
    # or every tile's is one weight on the tile itself (then one GEMM over the whole tensor)
    summed: dict = {}  # tensor -> (weight node or None, [groups of each tile])
    for pname in grids_of:
        ws = set()
        for _, t in tiles_of[pname]:
            gemms = [gi for kind, gi in out_values.get(t, []) if kind == "gemm"]
            if len(gemms) > 1 or (gemms and pointwise[gemms[0]][1] != [tile_nodes.get(t)]):
                break
            ws.add(pointwise[gemms[0]][0] if gemms else None)
        else:
            if len(ws) == 1:
                summed[pname] = (ws.pop(), [])
    # other composite tensors without a pointwise GEMM in any tile: one fused.tensor_add each
    whole = {
        pname
        for pname, tiles in tiles_of.items()
        if len(tiles) > 1
        and pname not in summed
        and not any(kind == "gemm" for _, t in tiles for kind, _ in out_values.get(t, ()))
    }
    for q in plan.tiles:
        perm_shape = tuple(q.dims[d].size for d in q.perm_dims)
        full = (*perm_shape, c_out * q.fixed_size)
        vals = [v for kind, v in out_values.get(q, []) if kind == "value"]
        gemms = [gi for kind, gi in out_values.get(q, []) if kind == "gemm"]
        vals.sort(key=lambda v: math.prod(v[1]))
        layout = _layout_out(q, q.dim_shape, c_out)
        if q.param in summed:  # (packed for the module: every field of every group)
            summed[q.param][1].append(tuple(g for g, _ in vals))
            continue
        groups = tuple(_trimmed(g) for g, _ in vals)  # as they are written into the code
        name = f"{_tag(q)}_native"
        if gemms:  # the broadcasts' sum written once, the GEMM added in place
            acc = None
            for k, gi in enumerate(gemms):
                w, xs = pointwise[gi]
                x = b.cat(xs, f"{_tag(q)}_cat{k}")
                kwargs = {"layout": layout} if k == len(gemms) - 1 and layout else {}
                if k == 0 and groups:
                    kwargs["groups"] = groups
                args = (x, w) if acc is None else (x, w, acc)
                last = k == len(gemms) - 1
                acc = b.call(tile_sum, args, full, name if last else f"{_tag(q)}_mix", kwargs)
            b.shape[acc] = (c_out, *q.shape)
        else:
            shp = None
            for _, s_ in vals:
                shp = s_ if shp is None else tuple(max(x, y) for x, y in zip(shp, s_))
            args = (inputs[q.param], groups)
            if shp is None or shp != full:
                args += (full,)
            if layout:
                args += (() if len(args) == 3 else (None,)) + (layout,)
            if q.param in whole:  # with its tensor's other tiles, in one call
                tile_out[q] = args[1:]
                continue
            acc = b.call(tile_add, args, full, name)
        b.shape[acc] = (c_out, *q.shape)
        tile_out[q] = acc

    outputs = []
    n_sums = 0
    for pname, ident in zip(spec.names, names):
        p = spec[pname]
        tiles = [t for _, t in tiles_of[pname]]
        tensors = [tile_out[t] for t in tiles if t in tile_out]
        counts = [len(a) if isinstance(a, tuple) else 1 for a in p.axes]
        if pname in summed:
            x_whole, grid, shape = grids_of[pname]
            w, groups = summed[pname]
            layout = _layout_out(tiles[0], shape, c_out)
            # the tensors in the code, the rest of the arguments on the module
            refs, packed = _pack(groups)
            channels = c_out * tiles[0].fixed_size if w is None else None
            name, n_sums = f"sums{n_sums}", n_sums + 1
            setattr(root, name, TensorSumArgs(packed, grid, layout or None, channels))
            args = (x_whole, w, refs, b.graph.get_attr(name))
            node = b.call(packed_tensor_sum, args, (c_out, *shape), f"{ident}_native")
            tensors, counts = [node], []
        if pname in whole:
            shape = (c_out, *(p.shape if p.view is None else p.view))
            args = (inputs[pname], tuple(tensors), tuple(counts))
            tensors = [b.call(tensor_add, args, shape, f"{ident}_native")]
            counts = []
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
    for views in grid_views.values():
        views.drop_unused()
    # no dead-code pass or lint here: every node is used and the graph lints
    # (tests/backend/test_codegen.py); on DenseNet-201 they took 5% of the build
    return fx.GraphModule(root, b.graph, class_name="NFLinearGraph")


class _GridViews:
    """The tiles of ``x`` on ``grid`` as views, row-major, each made on first use: one
    ``torch.split`` per cut dim (and per part of the dims before it), each tile a ``(split,
    index)`` reference. Their backward writes the gradient of ``x`` once (a concatenation),
    where a slice per tile would zero-fill a full-size gradient per tile; splits nothing reads
    are erased (the generated graph has no dead-code pass)."""

    def __init__(self, b: _Builder, x, grid: tuple, tag: str) -> None:
        self.b, self.grid, self.tag = b, grid, tag
        self.nodes: dict = {(): x}  # per-level part indices -> node
        self.splits: dict = {}  # parent's part indices -> its split node

    def view(self, k: int):
        """Tile ``k`` (row-major over the grid) as a ``(split node, index)`` reference (see
        :meth:`_Builder.node_of`)."""
        path = []
        for _, sizes in reversed(self.grid):
            k, j = divmod(k, len(sizes))
            path.insert(0, j)
        b = self.b
        for level, ((dim, sizes), j) in enumerate(zip(self.grid, path)):
            here, parent = tuple(path[: level + 1]), tuple(path[:level])
            if here in self.nodes:
                continue
            node = self.nodes[parent]
            if parent not in self.splits:
                split = b.call(torch.split, (node, list(sizes), dim), None, f"{self.tag}_split")
                self.splits[parent] = split
            shape = list(b.shape[node])
            shape[dim - 1] = sizes[j]
            if level == len(self.grid) - 1:  # a tile: read by reference where it is used
                self.nodes[here] = (self.splits[parent], j)
                b.shape[self.nodes[here]] = tuple(shape)
                continue
            label = f"{self.tag}_part"
            part = b.call(operator.getitem, (self.splits[parent], j), tuple(shape), label)
            self.nodes[here] = part
        return self.nodes[tuple(path)]

    def drop_unused(self) -> None:
        """Erase the splits (and the parts above them) that nothing read in the end (a tile's
        own term that a whole-tensor call took over), deepest first."""
        for parent in sorted(self.splits, key=len, reverse=True):
            split = self.splits[parent]
            if not split.users:
                self.b.graph.erase_node(split)
                part = self.nodes[parent]
                if parent and not part.users:
                    self.b.graph.erase_node(part)


def _trimmed(group: tuple) -> tuple:
    """A group as :func:`~.fused.place` takes it, its trailing defaults left out of the code."""
    while group[-1] in (None, ()) and len(group) > 1:
        group = group[:-1]
    return group


def _pack(tiles: list) -> tuple:
    """The tensors (nodes) in a composite tensor's tile groups, each once, and the groups
    with each replaced by its position (the form :class:`~.fused.TensorSumArgs` keeps)."""
    at: dict = {}

    def pos(node) -> int:
        return at.setdefault(node, len(at))

    packed = []
    for groups in tiles:
        tile = []
        for parts, shape, perm, bias, deltas in groups:
            tile.append(
                (
                    tuple(
                        (pos(p), None) if type(p) is not tuple else (pos(p[0]), p[1]) for p in parts
                    ),
                    shape,
                    perm,
                    None if bias is None else pos(bias),
                    tuple(pos(d) for d in deltas),
                )
            )
        packed.append(tuple(tile))
    return tuple(at), tuple(packed)


def _layout_out(t: TileRef, sizes: tuple, c_out: int) -> tuple:
    """:func:`~.fused.unfold` 's arguments taking an output of tile ``t`` (its dims of
    ``sizes``) from the internal layout back to its parameter's, trailing defaults left out."""
    perm_shape = tuple(sizes[d] for d in t.perm_dims)
    fixed_shape = tuple(sizes[d] for d in t.fixed_dims)
    n_perm = len(perm_shape)
    unfolded = (*perm_shape, c_out, *fixed_shape)
    order = (0, 1 + n_perm) + tuple(
        1 + t.perm_dims.index(d) if d in t.perm_dims else 2 + n_perm + t.fixed_dims.index(d)
        for d in range(len(t.dims))
    )
    layout = (
        None if unfolded == (*perm_shape, c_out * t.fixed_size) else unfolded,
        None if order == tuple(range(len(order))) else order,
        (c_out, *t.shape) if t.is_split else None,
    )
    while layout and layout[-1] is None:
        layout = layout[:-1]
    return layout


def _layout_steps(t: TileRef, have: tuple, sizes: tuple, c_in: int) -> tuple:
    """:func:`~.fused.tile_in` 's ``split``, ``order`` and ``shape`` steps from ``have``
    (``(C_in, *axes)``) to the internal layout of tile ``t`` whose dims have ``sizes``; and the
    shape they give (batch dim not included)."""
    steps: dict = {}
    shape = have
    if t.is_split and shape != (c_in, *sizes):
        steps["split"] = shape = (c_in, *sizes)
    order = [1 + d for d in t.perm_dims] + [0] + [1 + d for d in t.fixed_dims]
    if order != list(range(len(order))):
        steps["order"] = (0, *(1 + o for o in order))
        shape = tuple(shape[o] for o in order)
    perm_shape = tuple(sizes[d] for d in t.perm_dims)
    # a view when the tile has no fixed dims: reductions and GEMMs read it in its own strides
    # (channels-first from the user, channels-last from another layer)
    if shape != (*perm_shape, c_in * t.fixed_size):
        steps["shape"] = shape = (*perm_shape, c_in * t.fixed_size)
    return steps, shape


def _cuts(tiles: list) -> tuple | None:
    """For a composite tensor's tiles (row-major over its pieces): the axes they cut and the
    pieces' sizes along each, ``((axis, sizes), ...)``; ``None`` unless they are that grid."""
    first = tiles[0]
    cuts, starts = [], []
    for axis in range(len(first.shape)):
        sizes = dict(sorted({t.starts[axis]: t.shape[axis] for t in tiles}.items()))
        if len(sizes) > 1:
            cuts.append((axis, tuple(sizes.values())))
            starts.append(tuple(sizes))
    expected = list(itertools.product(*starts))
    if len(expected) != len(tiles) or any(
        tuple(t.starts[a] for a, _ in cuts) != e for t, e in zip(tiles, expected)
    ):
        return None
    return tuple(cuts)


def _grid(tiles: list) -> tuple | None:
    """For a composite tensor's tiles (row-major over its pieces): where they all have the same
    dims (no block axis) and are cut only along permutable dims, the grid ``((dim, sizes),
    ...)`` of the cut dims in the internal layout (batch dim counted); else ``None``."""
    first = tiles[0]
    if len(tiles) < 2 or first.is_split:
        return None
    kinds = [d.factor is None for d in first.dims]
    if any(t.is_split or [d.factor is None for d in t.dims] != kinds for t in tiles):
        return None
    cuts = _cuts(tiles)
    if cuts is None or any(axis not in first.perm_dims for axis, _ in cuts):
        return None
    return tuple((1 + first.perm_dims.index(axis), sizes) for axis, sizes in cuts)


def _is_full(plan: Plan, g: int) -> bool:
    """Whether group ``g`` covers its whole tile with no broadcast, diagonal or permute: its
    value can be added by the tile's GEMM itself."""
    group = plan.groups[g]
    return (
        group.side.is_pointwise and group.perm == tuple(range(len(group.perm))) and not group.bias
    )


def _parts(b: _Builder, y, sizes: list, tag: str) -> list:
    """The channels of ``y`` in parts of ``sizes``, as ``fused.place`` reads them: ``y``
    itself, or ``(split, j)`` from one ``torch.split`` (its backward writes the gradient of
    ``y`` once, where a slice per part would zero-fill a full-size gradient per part)."""
    if len(sizes) == 1:
        return [y]
    parts = b.call(torch.split, (y, sizes, -1), None, f"{tag}_split")
    return [(parts, j) for j in range(len(sizes))]


def _assemble(b: _Builder, blocks_: list, name: str):
    """One weight from a grid of relation weights (rows of blocks): one call."""
    if len(blocks_) == 1 and len(blocks_[0]) == 1:
        return blocks_[0][0]
    rows = [
        b.shape[line[0]]
        if len(line) == 1
        else (b.shape[line[0]][0], sum(b.shape[w][1] for w in line))
        for line in blocks_
    ]
    shape = (sum(r[0] for r in rows), *rows[0][1:])
    return b.call(blocks, (tuple(tuple(line) for line in blocks_),), shape, name)


class _Relations:
    """The linear basis's weights in one generated graph, and its local terms by kind.

    Within one layer, the term from column ``j`` to row ``i`` has the weight of the relation
    between their kinds: ``module`` between different tiles, ``self`` within one tile. Where
    a layer has several tiles of one kind (the pieces of a composite tensor), its dense grid of
    weights would repeat a few blocks over ``rows x cols`` tiles; :meth:`by_kind` computes the
    same map as ``E x + D x`` instead: ``E`` the module weight of each (row kind, column kind),
    applied once to the sum of each column kind's tiles, and ``D = self - module`` on the
    columns of the row's own tile, one GEMM for all rows of one pattern (stacked).
    """

    def __init__(self, b: _Builder, plan: Plan, assembled, relation) -> None:
        self.b, self.plan = b, plan
        self.assembled, self.relation = assembled, relation
        self.diffs: dict = {}  # (self relation, module relation) -> node

    def diff(self, s: int, m: int):
        """The node of relation ``s`` minus relation ``m`` (built once)."""
        if (s, m) not in self.diffs:
            a, b_ = self.relation(s), self.relation(m)
            name = f"w{s}_minus_w{m}"
            self.diffs[s, m] = self.b.call(operator.sub, (a, b_), self.b.shape[a], name)
        return self.diffs[s, m]

    def by_kind(self, mi: int, li: int, pieces: list, values: dict) -> bool:
        """Local ``li`` of mix ``mi`` by kind (see the class docstring), its parts added to
        ``values``; False (nothing done) where no kind repeats."""
        b, plan = self.b, self.plan
        mix = plan.mixes[mi]
        loc = mix.local[li]
        if len(loc.cols) < 2 or len(loc.groups) < 2:
            return False
        ckind, rkind = loc.col_kinds, loc.row_kinds  # numbered per mix, as the plan named them
        cc, rc = list(dict.fromkeys(ckind)), list(dict.fromkeys(rkind))
        if len(cc) == len(ckind) and len(rc) == len(rkind):
            return False
        cols_of: dict = {}
        for c, t in enumerate(loc.col_tiles):
            cols_of.setdefault(t, []).append(c)
        # the module relation of each (row kind, column kind): a pair of different tiles
        module = {(rk, ck): loc.lookup.get(("module", ck, rk)) for rk in rc for ck in cc}
        if None in module.values():
            return False  # a kind pair met only within one tile: the dense grid
        kept = mix.kept_shape
        sums = []
        for k, ck in enumerate(cc):
            xs = tuple(pieces[loc.cols[c]] for c in range(len(ckind)) if ckind[c] == ck)
            sums.append(xs[0] if len(xs) == 1 else b.call(total, xs, None, f"m{mi}_l{li}_k{k}"))
        w = self.assembled(tuple(tuple(module[rk, ck] for ck in cc) for rk in rc), f"m{mi}_l{li}_w")
        ch = {rk: plan.groups[mix.groups[loc.groups[rkind.index(rk)]]].channels for rk in rc}
        y = b.call(channel_mix, (w, *sums), (*kept, sum(ch.values())), f"m{mi}_l{li}_out")
        per_kind = dict(zip(rc, _parts(b, y, list(ch.values()), f"m{mi}_l{li}")))
        # each row's own tile: self - module, one GEMM per pattern of rows
        patterns: dict = {}
        for a, rk in enumerate(rkind):
            i = loc.groups[a]
            values.setdefault(i, []).append(per_kind[rk])
            own = cols_of.get(loc.row_tiles[a], [])
            if own:
                pat = (rk, tuple((ckind[c], loc.lookup["self", ckind[c], rk]) for c in own))
                patterns.setdefault(pat, []).append((i, own))
        for p, ((rk, own_kinds), members) in enumerate(patterns.items()):
            line = tuple(self.diff(r, module[rk, ck]) for ck, r in own_kinds)
            dw = line[0]
            if len(line) > 1:
                shape = (b.shape[line[0]][0], sum(b.shape[d][1] for d in line))
                dw = b.call(blocks, ((line,),), shape, f"m{mi}_l{li}_d{p}_w")
            rows = tuple(tuple(pieces[loc.cols[c]] for c in own) for _, own in members)
            tag = f"m{mi}_l{li}_d{p}"
            if len(rows) == 1:
                d = b.call(channel_mix, (dw, *rows[0]), None, f"{tag}_out")
                values[members[0][0]].append(d)
                continue
            x = b.call(stack_cat, (rows,), None, f"{tag}_x")
            d = b.call(channel_mix, (dw, x), None, f"{tag}_out")
            d = b.call(torch.unbind, (d, 0), None, f"{tag}_rows")  # one stack in the backward
            for n, (i, _) in enumerate(members):
                values[i].append((d, n))
        return True


def _linear_mix(b, plan, mi, mix, pieces, linear, group_values, pointwise) -> None:
    """The linear basis's mixing of one mix: per layer, then per kind, into each group."""
    kept = mix.kept_shape

    def weight(grid: tuple, name: str):
        return linear.assembled(tuple(tuple(line) for line in grid), name)

    sh = mix.shared
    values: dict = {}  # position in mix.groups -> [part]
    # terms between the tiles of one layer: their own relations
    for li, loc in enumerate(mix.local):
        if linear.by_kind(mi, li, pieces, values):
            continue
        w = weight(loc.weights, f"m{mi}_l{li}_w")
        xs = [pieces[j] for j in loc.cols]
        if sh is None and len(loc.groups) == 1 and _is_full(plan, mix.groups[loc.groups[0]]):
            pointwise[mix.groups[loc.groups[0]]] = (w, xs)
            continue
        sizes = [plan.groups[mix.groups[i]].channels for i in loc.groups]
        y = b.call(channel_mix, (w, *xs), (*kept, sum(sizes)), f"m{mi}_l{li}_out")
        for i, part in zip(loc.groups, _parts(b, y, sizes, f"m{mi}_l{li}")):
            values.setdefault(i, []).append(part)
    if sh is None:
        for i, g in enumerate(mix.groups):
            if i in values:
                group_values[g] = tuple(values[i])
        return
    # terms from every tile of a kind, averaged
    aggs = []
    for k, cols in enumerate(sh.col_kinds):
        xs = [pieces[j] for j in cols]
        aggs.append(xs[0] if len(xs) == 1 else b.call(average, tuple(xs), None, f"m{mi}_k{k}"))
    rep = [sh.row_kinds.index(k) for k in range(max(sh.row_kinds) + 1)]
    sizes = [plan.groups[mix.groups[i]].channels for i in rep]
    if not sh.channel:
        y = b.call(
            channel_mix,
            (weight(sh.weights, f"m{mi}_w"), *aggs),
            (*kept, sum(sizes)),
            f"m{mi}_shared",
        )
    else:  # through a channel of plan.width features (per kept index): the invariant channel
        into, out = sh.weights
        v = b.call(
            channel_mix,
            (weight([into], f"m{mi}_chan_in"), *aggs),
            (*kept, plan.width),
            f"m{mi}_chan",
        )
        w_out = weight([[r] for r in out], f"m{mi}_chan_out")
        y = b.call(channel_mix, (w_out, v), (*kept, sum(sizes)), f"m{mi}_shared")
        if sh.biases:
            bias = weight([[r] for r in sh.biases], f"m{mi}_bias")
            y = b.call(operator.add, (y, bias), (sum(sizes),), f"m{mi}_shared_b")
    per_kind = _parts(b, y, sizes, f"m{mi}_shared")
    for i, g in enumerate(mix.groups):
        group_values[g] = (*values.get(i, ()), per_kind[sh.row_kinds[i]])
