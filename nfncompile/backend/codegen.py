"""Code generation: turn a :class:`~nfncompile.backend.plan.Plan` into a ``torch.fx.GraphModule``.

The graph is built node by node (``placeholder`` / ``get_attr`` / ``call_function`` /
``call_method`` / ``output``), never from source text. Its inputs are the feature tensors, one
placeholder per parameter in spec order, each ``(B, C_in, *param shape)``; it returns a tuple of
``(B, C_out, *param shape)`` tensors in the same order.

Inside, every block is held **channels-last**: ``(B, *permutable dims, C * prod(fixed dims))``
(fixed axes, e.g. conv kernel dims, folded into the channels after them). Each input block is
permuted into that layout once (``*_cl``, ``*_in``) and each output block out of it once
(``*_unfold``, ``*_native``: a view, so a stack of layers stays channels-last in memory).
Between them reductions are means over middle dims, channel mixes are GEMMs over the last dim
and placement only inserts singleton dims to broadcast into: no permute sits between a
broadcast and a concatenation, which ``torch.compile`` on CPU turned into slow fused
backward kernels (a sum over broadcast dims into a strided, kernel-sized inner dim).

The generated module owns the layer's weights:

``mix{i}``
    ``(rows, cols)`` channel-mixing weight of plan mix ``i``;
``bias{g}``
    ``(C_out * prod(Q fixed dims),)`` bias of plan group ``g`` (only groups with a bias term);
``embed{j}``
    learned position embedding added to an input block (``io_embed``);
``delta{k}``
    constant 0/1 buffers that write diagonals (``(*permutable dims of Q, 1)``, 1 where a
    diagonal group's axes are equal).

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

import torch
import torch.nn.functional as F
from torch import fx, nn

from .basis import BlockRef
from .plan import Plan

__all__ = ["generate", "placeholder_names", "channel_mix"]


def channel_mix(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``(R, K)`` weight applied to the channels (last dim) of ``x`` ``(B, *kept, K)``:
    ``(B, *kept, R)``, one ``(B*N, K) x (K, R)`` GEMM.

    On CUDA, an ``x`` that is channels-first in memory (an input block without fixed dims,
    read as is) is mixed there by a 1x1 ``conv1d`` instead of being copied channels-last.
    """
    if x.is_cuda and x.dim() > 2 and x.stride(-1) != 1:
        first = x.movedim(-1, 1)
        if first.is_contiguous():
            y = F.conv1d(first.flatten(2), weight.unsqueeze(-1))
            return y.unflatten(2, x.shape[1:-1]).movedim(1, -1)
    return F.linear(x, weight)


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


def _tag(block: BlockRef) -> str:
    return re.sub(r"\W+", "_", block.name).strip("_")


def generate(plan: Plan, *, io_embed: bool = False) -> fx.GraphModule:
    """Build the layer's ``GraphModule`` (weights allocated, not initialised).

    Parameters
    ----------
    plan : Plan
    io_embed : bool
        Add a learned ``(C_in, n)`` position embedding along every input block axis labelled
        with an ``input`` or ``output`` role space, before the reductions.
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
            root.register_parameter(name, nn.Parameter(value))
        else:
            root.register_buffer(name, value)
        node = b.graph.get_attr(name)
        b.shape[node] = None
        return node

    # ---- input blocks, in the internal layout (B, *permutable dims, C_in * fixed) -----------
    block_nodes: dict = {}
    n_embed = 0
    for pname in spec.names:
        p = spec[pname]
        x = inputs[pname]
        if p.view is not None:
            x = b.reshape(x, (c_in, *p.view), f"{names[spec.names.index(pname)]}_view")
        refs = [r for r in plan.blocks if r.param == pname]
        for r in refs:
            xb = x
            if len(refs) > 1:
                idx = (slice(None), slice(None)) + tuple(
                    slice(s, s + n) for s, n in zip(r.starts, r.shape)
                )
                xb = b.call(operator.getitem, (x, idx), (c_in, *r.shape), _tag(r))
            if io_embed:
                for ax, lab in enumerate(r.labels):
                    if lab is None or spec.spaces[lab].role == "hidden":
                        continue
                    shape = [1] * len(r.shape)
                    shape[ax] = r.shape[ax]
                    emb = get_attr(f"embed{n_embed}", torch.zeros(c_in, *shape), True)
                    n_embed += 1
                    xb = b.call(operator.add, (xb, emb), (c_in, *r.shape), f"{_tag(r)}_emb")
            # one permute per block: permutable dims first, then channels and fixed dims
            # (folded into one channel dim by the reshape)
            order = [1 + a for a in r.perm_axes] + [0] + [1 + a for a in r.fixed_axes]
            xb = b.permute(xb, tuple(order), f"{_tag(r)}_cl")
            perm_shape = tuple(r.shape[a] for a in r.perm_axes)
            block_nodes[r] = b.reshape(xb, (*perm_shape, c_in * r.fixed_size), f"{_tag(r)}_in")

    # ---- reductions: (B, *kept, C_in * fixed) ------------------------------------------
    red_nodes: list = []
    for ri, red in enumerate(plan.reductions):
        r = red.block
        tag = f"{_tag(r)}_r{ri}"
        kept_shape = (*red.shape[1:], red.channels)
        if red.source is not None:
            src = plan.reductions[red.source]
            pos = [
                1 + j for j, g in enumerate(src.kept_groups) if not red.kept[red.groups.index(g)]
            ]
            node = b.method("mean", (red_nodes[red.source], tuple(pos)), kept_shape, tag)
            red_nodes.append(node)
            continue
        x = block_nodes[r]
        # current labels of the non-batch dims: ("a", axis), ("g", group) or ("k",) (channels)
        dims = [("a", i) for i in r.perm_axes] + [("k",)]
        shape = list(b.shape[x])
        for gi, g in enumerate(red.groups):
            if len(g) == 1:
                dims[dims.index(("a", g[0]))] = ("g", gi)
                continue
            cur = ("a", g[0])
            for other in g[1:]:
                d1, d2 = dims.index(cur), dims.index(("a", other))
                n = shape[d1]
                for d in sorted((d1, d2), reverse=True):
                    del dims[d], shape[d]
                dims.append(("g", gi))
                shape.append(n)
                x = b.call(
                    torch.diagonal,
                    (x,),
                    tuple(shape),
                    f"{tag}_diag",
                    {"offset": 0, "dim1": 1 + d1, "dim2": 1 + d2},
                )
                cur = ("g", gi)
        mean_dims = [1 + dims.index(("g", gi)) for gi, k in enumerate(red.kept) if not k]
        if mean_dims:
            keep = [d for i, d in enumerate(dims) if 1 + i not in mean_dims]
            shape = [s for i, s in enumerate(shape) if 1 + i not in mean_dims]
            x = b.method("mean", (x, tuple(mean_dims)), tuple(shape), f"{tag}_mean")
            dims = keep
        want = [("g", gi) for gi, k in enumerate(red.kept) if k] + [("k",)]
        x = b.permute(x, tuple(dims.index(d) for d in want), tag)
        red_nodes.append(x)

    # ---- mixes: one channel mix (a GEMM over the last dim) per concatenation ------------
    group_values: dict = {}
    for mi, mix in enumerate(plan.mixes):
        pieces = []
        for ri, perm in mix.inputs:
            pieces.append(b.permute(red_nodes[ri], (*perm, len(perm)), f"r{ri}_t"))
        kept = mix.kept_shape
        if len(pieces) == 1:
            x = pieces[0]
        else:
            x = b.call(torch.cat, (pieces, -1), (*kept, mix.in_channels), f"cat{mi}")
        w = get_attr(f"mix{mi}", torch.zeros(mix.out_channels, mix.in_channels), True)
        y = b.call(channel_mix, (w, x), (*kept, mix.out_channels), f"mix{mi}_out")
        if len(mix.groups) == 1:
            group_values[mix.groups[0]] = y
            continue
        sizes = [plan.groups[g].out_channels for g in mix.groups]
        parts = b.call(torch.split, (y, sizes, -1), None, f"mix{mi}_split")
        for j, g in enumerate(mix.groups):
            group_values[g] = b.call(operator.getitem, (parts, j), (*kept, sizes[j]), f"g{g}")

    # ---- placement: broadcast dims are new singletons, no permute -----------------------
    out_blocks: dict = {}
    n_delta = 0
    for gi, g in enumerate(plan.groups):
        pat = g.pattern
        q = pat.block
        y = group_values.get(gi)
        if g.bias_terms:
            bias = get_attr(f"bias{gi}", torch.zeros(g.out_channels), True)
            if y is None:
                y = b.method("reshape", (bias, (1, g.out_channels)), (g.out_channels,), f"b{gi}")
            else:
                y = b.call(operator.add, (y, bias), b.shape[y], f"g{gi}_b")
        # linked groups are ordered by first axis, as the kept dims of y: only singletons
        # for the broadcast (and the diagonal's other) axes are inserted
        firsts = {grp[0] for grp in pat.linked_groups}
        full = [q.shape[ax] if ax in firsts else 1 for ax in q.perm_axes]
        y = b.reshape(y, (*full, g.out_channels), f"g{gi}_place")
        for grp in pat.groups:
            if len(grp) < 2:
                continue
            n = q.shape[grp[0]]
            dshape = [n if ax in grp else 1 for ax in q.perm_axes] + [1]
            eye = torch.zeros(*dshape)
            idx = torch.arange(n)
            eye[tuple(idx if ax in grp else 0 for ax in q.perm_axes) + (0,)] = 1.0
            delta = get_attr(f"delta{n_delta}", eye, False)
            n_delta += 1
            delta = b.method("type_as", (delta, y), None, f"delta{n_delta - 1}_t")
            shp = tuple(max(a, d) for a, d in zip(b.shape[y], dshape))
            y = b.call(operator.mul, (y, delta), shp, f"g{gi}_diag")
        out_blocks.setdefault(q, []).append(y)

    # ---- sum into blocks, back to (B, C_out, *shape), assemble params -------------------
    block_out: dict = {}
    for q in plan.blocks:
        vals = sorted(out_blocks.get(q, []), key=lambda n: -math.prod(b.shape[n]))
        perm_shape = tuple(q.shape[a] for a in q.perm_axes)
        fixed_shape = tuple(q.shape[a] for a in q.fixed_axes)
        full = (*perm_shape, c_out * q.fixed_size)
        if not vals:
            acc = b.method("new_zeros", (inputs[q.param], (1, *full)), full, f"{_tag(q)}_zeros")
            vals = [acc]
        acc = vals[0]
        for v in vals[1:]:
            shp = tuple(max(x, y) for x, y in zip(b.shape[acc], b.shape[v]))
            acc = b.call(operator.add, (acc, v), shp, f"{_tag(q)}_acc")
        if b.shape[acc] != full:
            acc = b.method("expand", (acc, batch_size(), *full), full, f"{_tag(q)}_full")
        n_perm = len(perm_shape)
        acc = b.reshape(acc, (*perm_shape, c_out, *fixed_shape), f"{_tag(q)}_unfold")
        order = [n_perm] + [
            q.perm_axes.index(ax) if ax in q.perm_axes else n_perm + 1 + q.fixed_axes.index(ax)
            for ax in range(len(q.shape))
        ]
        block_out[q] = b.permute(acc, tuple(order), f"{_tag(q)}_native")

    outputs = []
    for pname, ident in zip(spec.names, names):
        p = spec[pname]
        refs = [r for r in plan.blocks if r.param == pname]
        tensors = [block_out[r] for r in refs]
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
