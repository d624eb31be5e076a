"""Code generation: turn a :class:`~nfncompile.plan.Plan` into a ``torch.fx.GraphModule``.

The graph is built node by node (``placeholder`` / ``get_attr`` / ``call_function`` /
``call_method`` / ``output``), never from source text. Its inputs are the feature tensors, one
placeholder per parameter in spec order, each ``(B, C_in, *param shape)``; it returns a tuple of
``(B, C_out, *param shape)`` tensors in the same order.

The generated module owns the layer's weights:

``mix{i}``
    ``(rows, cols)`` channel-mixing weight of plan mix ``i``;
``bias{g}``
    ``(C_out * prod(Q fixed dims),)`` bias of plan group ``g`` (only groups with a bias term);
``embed{j}``
    learned position embedding added to an input block (``io_embed``);
``delta{k}``
    constant 0/1 buffers that write diagonals.

Examples
--------
>>> from nfncompile.spec import WeightSpaceSpec
>>> from nfncompile.plan import build_plan
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
    """``(R, K)`` weight applied to the channels of ``x`` ``(B, K, N)``: ``(B, R, N)``.

    One GEMM either way: a 1x1 ``conv1d`` on CUDA (fastest there), a channels-last
    ``linear`` on CPU (one ``(B*N, K) x (K, R)`` matmul).
    """
    if x.is_cuda:
        return F.conv1d(x, weight.unsqueeze(-1))
    return F.linear(x.transpose(1, 2), weight).transpose(1, 2)


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

    # ---- input blocks -------------------------------------------------------------------
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
            block_nodes[r] = xb

    # ---- reductions ---------------------------------------------------------------------
    red_nodes: list = []
    for ri, red in enumerate(plan.reductions):
        r = red.block
        tag = f"{_tag(r)}_r{ri}"
        if red.source is not None:
            src = plan.reductions[red.source]
            pos = [
                2 + j for j, g in enumerate(src.kept_groups) if not red.kept[red.groups.index(g)]
            ]
            node = b.method("mean", (red_nodes[red.source], tuple(pos)), red.shape, tag)
            red_nodes.append(node)
            continue
        x = block_nodes[r]
        # current labels of the non-batch, non-channel dims: ("a", axis) or ("g", group)
        dims = [("a", i) for i in range(len(r.shape))]
        shape = list(r.shape)
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
                    (c_in, *shape),
                    f"{tag}_diag",
                    {"offset": 0, "dim1": 2 + d1, "dim2": 2 + d2},
                )
                cur = ("g", gi)
        mean_dims = [2 + dims.index(("g", gi)) for gi, k in enumerate(red.kept) if not k]
        if mean_dims:
            keep = [d for i, d in enumerate(dims) if 2 + i not in mean_dims]
            shape = [s for i, s in enumerate(shape) if 2 + i not in mean_dims]
            x = b.method("mean", (x, tuple(mean_dims)), (c_in, *shape), f"{tag}_mean")
            dims = keep
        fixed = [("a", i) for i in r.fixed_axes]
        want = fixed + [("g", gi) for gi, k in enumerate(red.kept) if k]
        order = [0] + [1 + dims.index(d) for d in want]
        x = b.permute(x, tuple(order), f"{tag}_perm")
        x = b.reshape(x, red.shape, tag)
        red_nodes.append(x)

    # ---- mixes --------------------------------------------------------------------------
    group_values: dict = {}
    for mi, mix in enumerate(plan.mixes):
        pieces = []
        for ri, perm in mix.inputs:
            node = red_nodes[ri]
            order = (0, *(1 + p for p in perm))
            pieces.append(b.permute(node, order, f"r{ri}_t"))
        kept = mix.kept_shape
        if len(pieces) == 1:
            x = pieces[0]
        else:
            x = b.call(torch.cat, (pieces, 1), (mix.in_channels, *kept), f"cat{mi}")
        w = get_attr(f"mix{mi}", torch.zeros(mix.out_channels, mix.in_channels), True)
        if not kept:
            y = b.call(F.linear, (x, w), (mix.out_channels,), f"mix{mi}_out")
        else:
            k = math.prod(kept)
            if len(kept) > 1:
                x = b.reshape(x, (mix.in_channels, k), f"cat{mi}_flat")
            y = b.call(channel_mix, (w, x), (mix.out_channels, k), f"mix{mi}_out")
        if len(mix.groups) == 1:
            group_values[mix.groups[0]] = y
            continue
        sizes = [plan.groups[g].out_channels for g in mix.groups]
        parts = b.call(torch.split, (y, sizes, 1), None, f"mix{mi}_split")
        for j, g in enumerate(mix.groups):
            shp = (sizes[j], *b.shape[y][1:])
            group_values[g] = b.call(operator.getitem, (parts, j), shp, f"g{g}")

    # ---- placement ----------------------------------------------------------------------
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
                kept_n = len(b.shape[y]) - 1
                if kept_n:
                    bias = b.method(
                        "reshape", (bias, (g.out_channels,) + (1,) * kept_n), None, f"b{gi}"
                    )
                y = b.call(operator.add, (y, bias), b.shape[y], f"g{gi}_b")
        fixed_dims = [q.shape[i] for i in q.fixed_axes]
        kept = list(pat.kept_shape)
        y = b.reshape(y, (c_out, *fixed_dims, *kept), f"g{gi}_split")
        # source dim (in the reshaped value) of each Q axis, or None for a new singleton
        first_of = {grp[0]: j for j, grp in enumerate(pat.linked_groups)}
        src = []
        for ax in range(len(q.shape)):
            if q.axes[ax] is None:
                src.append(1 + q.fixed_axes.index(ax))
            elif ax in first_of:
                src.append(1 + len(fixed_dims) + first_of[ax])
            else:
                src.append(None)
        present = [s for s in src if s is not None]
        y = b.permute(y, (0, *present), f"g{gi}_perm")
        full = [c_out]
        for ax, s in enumerate(src):
            full.append(q.shape[ax] if s is not None else 1)
        y = b.reshape(y, tuple(full), f"g{gi}_place")
        for grp in pat.groups:
            if len(grp) < 2:
                continue
            n = q.shape[grp[0]]
            dshape = [1] * (1 + len(q.shape))
            for ax in grp:
                dshape[1 + ax] = n
            eye = torch.zeros(*dshape[1:])
            idx = torch.arange(n)
            eye[tuple(idx if a in grp else 0 for a in range(len(q.shape)))] = 1.0
            delta = get_attr(f"delta{n_delta}", eye.reshape(dshape), False)
            n_delta += 1
            delta = b.method("type_as", (delta, y), None, f"delta{n_delta - 1}_t")
            shp = tuple(max(a, d) for a, d in zip(b.shape[y], dshape))
            y = b.call(operator.mul, (y, delta), shp, f"g{gi}_diag")
        out_blocks.setdefault(q, []).append(y)

    # ---- sum into blocks, assemble params -----------------------------------------------
    block_out: dict = {}
    for q in plan.blocks:
        vals = sorted(out_blocks.get(q, []), key=lambda n: -math.prod(b.shape[n]))
        full = (c_out, *q.shape)
        if not vals:
            acc = b.method("new_zeros", (inputs[q.param], (1, *full)), full, f"{_tag(q)}_zeros")
            vals = [acc]
        acc = vals[0]
        for v in vals[1:]:
            shp = tuple(max(x, y) for x, y in zip(b.shape[acc], b.shape[v]))
            acc = b.call(operator.add, (acc, v), shp, f"{_tag(q)}_acc")
        if b.shape[acc] != full:
            acc = b.method("expand", (acc, batch_size(), *full), full, f"{_tag(q)}_full")
        block_out[q] = acc

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
    b.graph.lint()
    return fx.GraphModule(root, b.graph, class_name="NFLinearGraph")
