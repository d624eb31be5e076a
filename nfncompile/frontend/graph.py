"""The neuron-symmetry graph of a traced model, as a :class:`networkx.MultiGraph`.

:func:`build_symmetry_graph` runs the symmetry analysis
(:class:`~nfncompile.frontend.analysis.SymmetryAnalysis`) and exports what it found: one node
per run of neurons and per parameter axis, one edge per tie and per parameter-axis reference.
:mod:`nfncompile.frontend.spaces` reads the spaces off it.

Examples
--------
>>> import torch
>>> from nfncompile.frontend.fx import trace_module
>>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
>>> g = build_symmetry_graph(trace_module(net, torch.randn(5, 3)), net)
>>> sorted(d["origin"] for n, d in g.nodes(data=True) if n[0] == "run")
['0', '2', 'in']
"""

from __future__ import annotations

import math

import networkx as nx
import torch.fx
from torch import nn

from .analysis import SymmetryAnalysis
from .channel_dims import ChannelDim, check_entries
from .labels import ParamLabel, Seg
from .spaces import derive_spaces, fixed_labels
from .stacked import adopt

__all__ = ["build_symmetry_graph"]


#: how many times :func:`build_symmetry_graph` analyses a graph again with runs made in blocks
BLOCK_ROUNDS = 3


def build_symmetry_graph(
    gm: torch.fx.GraphModule, model: nn.Module | None = None, channel_dim: ChannelDim = 1
) -> nx.MultiGraph:
    """Run :class:`SymmetryAnalysis` on a traced model and return its symmetry graph.

    Parameters
    ----------
    gm : torch.fx.GraphModule
        From :func:`nfncompile.frontend.fx.trace_module`.
    model : nn.Module, optional
        The traced model (its state_dict keys name the parameters); defaults to ``gm``.
    channel_dim : int, sequence of (int or None), or None
        The dim of each input that holds its neurons (default 1, see
        :mod:`~nfncompile.frontend.channel_dims`).

    Returns
    -------
    networkx.MultiGraph
        Nodes ``("run", i)`` (attributes ``size``, ``kind``, ``origin``, ``node``, ``op``,
        ``uniform``: whether its positions all hold one value, ``cuts``, ``fixed``,
        ``touched``: the ops that create or read it) and ``("param", key, axis)``
        (``size``); edges ``kind="tie"``
        (``src``, ``src_off``, ``dst``, ``dst_off``, ``length``, ``op``, ``node``) and
        ``kind="index"`` (a param axis read by a run slice). ``graph.graph`` holds ``params``
        (:class:`ParamLabel` per float state_dict key, aliases resolved), ``inputs``,
        ``outputs``, ``broken``, ``probes`` (a
        :class:`~nfncompile.frontend.probe.ProbeRecord` per op no rule knows), ``leaf_calls`` (a
        :class:`~nfncompile.frontend.fx.LeafCall` per submodule torch.fx could not trace
        through), ``links`` (the :class:`~nfncompile.frontend.labels.BlockLink` s of grouped
        ops, with their conservative alternatives), ``calls`` (``(op, node)`` of every call),
        ``state_keys``, ``specialised`` (where plain symbolic tracing failed, for a graph
        traced with the example input's shapes fixed; ``""`` otherwise) and ``values_fixed``
        (where the forward branched on its data, for a graph traced with the example's values
        fixed: :class:`~nfncompile.frontend.fx.ValueSpecialisingTracer`; ``values_refused``
        why such a trace was not taken). Where a strided slice
        of single positions made its runs in blocks for a larger group, ``fallback`` holds
        the graph without them, for a verification that finds the larger group does not hold.
    """
    g, strided, reordered = _analysed(gm, model, channel_dim, stride_blocks=False, chains=True)
    if reordered:
        # a channel shuffle read as one reordering of positions: each run it interleaves keeps
        # its neurons (ShuffleNetV2), but a grouped conv after it cannot read its blocks off
        # the interleaved runs (ShuffleNet v1), where reading its ops one by one ties them in
        # blocks; the larger group stands
        h, _, _ = _analysed(gm, model, channel_dim, stride_blocks=False, chains=False)
        if _order(h) > _order(g):
            g, reordered = h, False
    if strided:
        # a strided slice took single positions (``h[..., ::2]``): try again with its run made
        # in blocks of the stride (an interleaved gate and up), and keep that if its group is
        # larger (an interleaved rotary's pairs are fixed either way)
        h, _, _ = _analysed(gm, model, channel_dim, stride_blocks=True, chains=reordered)
        if _order(h) > _order(g):
            # the derivation is verified on the model; where that fails, the graph without
            # those blocks is the one to fall back to
            h.graph["fallback"] = g
            g = h
    return g


def _analysed(
    gm: torch.fx.GraphModule,
    model: nn.Module | None,
    channel_dim: ChannelDim,
    stride_blocks: bool,
    chains: bool,
) -> tuple:
    """The graph of the analysis of ``gm`` (its runs made in the blocks that rounds of it ask
    for), whether any round met a strided slice of single positions, and whether one read a
    channel shuffle as one reordering (``chains``: read them so)."""
    blocks: dict = {}
    # the analysis before chunks were made in blocks, its graph, and the runs made so
    before, before_graph, tried = None, None, []
    strided = reordered = False
    for _ in range(BLOCK_ROUNDS + 1):
        a = SymmetryAnalysis(gm, model, blocks, channel_dim, stride_blocks, chains)
        a.run(*[None for n in gm.graph.nodes if n.op == "placeholder"], enable_io_processing=False)
        check_entries(channel_dim, [name for name, _ in a.inputs])
        strided = strided or a.strided
        reordered = reordered or a.reordered
        g = _graph(a, gm) if before is not None else None  # built once, where needed
        # runs tied to neurons spanning several positions each, not yet made in such blocks
        asked = any(blocks.get(k) != b for k, b in a.requests.items())
        worse = before is not None and (
            (tried and all(_fixed_runs(a, g, tried))) or _order(g) <= _order(before_graph)
        )
        if worse and not asked:
            # the blocks left those runs fixed, or fixed more than they freed (a fused qkv
            # whose q and k a rotation fixes: its heads as blocks, but v's dims fixed in them;
            # a head's interleaved rotary pairs, which would tie its other dims to every head's)
            a = before
            break
        # a run tied to neurons spanning several positions each is made in blocks and the
        # graph analysed again (a channel shuffle's second half, one conv's output added to a
        # depthwise conv with two outputs per channel). Blocks may need another round before
        # they pay (a bias added to a weight's outputs read two by two: the weight's blocks
        # first, then the bias's), so a round that is worse but asks for more goes on, and
        # the best round so far stays the one to fall back to
        if asked:
            if not worse:
                before, before_graph = a, g or _graph(a, gm)
            tried = []
            blocks = {**blocks, **a.requests}
            continue
        # then a dim split into chunks whose label ends up wholly fixed: its neurons are
        # asked for in blocks instead (a Linear's output viewed as (C, H, W) feature maps)
        chunks = _chunk_requests(a, g or _graph(a, gm)) if a.chunked else {}
        if all(blocks.get(k) == b for k, b in chunks.items()):
            break
        before, tried, before_graph = a, list(chunks), g or _graph(a, gm)
        blocks = {**blocks, **chunks}
    else:  # rounds spent: the last one stands only if it is no worse than the best before it
        if (
            before is not None
            and a is not before
            and _order(g or _graph(a, gm)) <= _order(before_graph)
        ):
            a = before
    for run in a.unused_param_runs:
        a.op = "unused parameter"
        a.node = None
        a.fix((Seg(run, 0, a.runs[run].size),), "parameter read but never used")
    a.fix_unread()
    return _graph(a, gm), strided, reordered


def _chunk_requests(a: SymmetryAnalysis, g: nx.MultiGraph) -> dict:
    """Blocks for the runs of every chunked split (:attr:`SymmetryAnalysis.chunked`) whose
    label ends up wholly fixed in ``a``'s graph ``g``: run key -> block size."""
    asked = dict(a.requests)
    fixed = fixed_labels(g, [label for label, _ in a.chunked])
    for (label, rest), whole in zip(a.chunked, fixed):
        if whole:
            a.request_blocks(label, rest)
    return {k: b for k, b in a.requests.items() if asked.get(k) != b}


def _order(g: nx.MultiGraph) -> float:
    """The log of the order of the group ``g`` derives: each space's symmetric group, or for a
    space in blocks, one per block; and each block permutation's own where its blocks move
    (fixed blocks of one neuron each are no symmetry at all)."""
    spec = derive_spaces(g).spec
    total = 0.0
    for space in spec.spaces.values():
        count = spec.blocks[space.blocks].count if space.blocks else 1
        total += count * math.lgamma(space.size // count + 1)
    return total + sum(math.lgamma(b.count + 1) for b in spec.blocks.values() if not b.fixed)


def _fixed_runs(a: SymmetryAnalysis, g: nx.MultiGraph, keys: list) -> list:
    """Whether each run of ``keys`` (:attr:`SymmetryAnalysis.run_keys`) is wholly fixed in
    ``a``'s graph ``g``."""
    runs = [a.runs[a.run_keys.index(k)] for k in keys if k in a.run_keys]
    return fixed_labels(g, [(Seg(r.id, 0, r.size),) for r in runs])


def _graph(a: SymmetryAnalysis, gm: torch.fx.GraphModule) -> nx.MultiGraph:
    """The symmetry graph of a finished analysis (see :func:`build_symmetry_graph`)."""
    adopt(a)
    g = nx.MultiGraph()
    for r in a.runs:
        g.add_node(
            ("run", r.id),
            size=r.size, kind=r.kind, origin=r.origin, node=r.node, op=r.op, uniform=r.uniform,
            cuts=set(), fixed=[],
            touched=list(dict.fromkeys([r.op, *a.touched.get(r.id, [])])),
        )  # fmt: skip
    for run, pos, _op, _node in a.cuts:
        g.nodes[("run", run)]["cuts"].add(pos)
    for run, off, length, bi in a.fixes:
        g.nodes[("run", run)]["fixed"].append((off, length, bi))
    for t in a.ties:
        g.add_edge(
            ("run", t.a), ("run", t.b), kind="tie", src=t.a, src_off=t.a_off, dst=t.b,
            dst_off=t.b_off, length=t.length, op=t.op, node=t.node,
        )  # fmt: skip
    params = {}
    for key in a.state_keys:
        canon = a._canonical[key]
        p = a.params.get(canon)
        if p is None:
            shape = tuple(a.state[key].shape)
            p = ParamLabel(shape, None, [None] * len(shape), [])
        params[key] = p
    for key, p in params.items():
        for axis, lab in enumerate(p.axes):
            pn = ("param", key, axis)
            g.add_node(pn, size=(p.view or p.shape)[axis])
            for s in lab or ():
                g.add_edge(pn, ("run", s.run), kind="index", offset=s.offset, length=s.length)
    faults, carried = a.head_checks()
    g.graph.update(
        head_faults=faults,
        head_carried=carried,
        heads_held=a.heads_held,
        routed_met=a.routed_met,
        params=params,
        inputs=a.inputs,
        outputs=a.outputs,
        broken=a.broken,
        probes=a.probes,
        leaf_calls=list(
            dict.fromkeys(n.meta["nfn_leaf"] for n in gm.graph.nodes if "nfn_leaf" in n.meta)
        ),
        specialised=gm.meta.get("nfn_specialised", ""),
        values_fixed=gm.meta.get("nfn_values", ""),
        values_refused=gm.meta.get("nfn_values_refused", ""),
        links=a.links,
        head_splits=a.head_splits,
        adopted=a.adopted,
        head_merges=a.head_merges,
        calls=a.calls,
        state_keys=a.state_keys,
        model=type(a.model).__name__,
    )
    return g
