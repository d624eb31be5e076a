"""The compiler front end: ``nn.Module`` -> verified :class:`~nfncompile.spec.WeightSpaceSpec`.

:func:`trace` runs the four front-end passes: torch.fx tracing with shape propagation
(:mod:`~nfncompile.frontend.fx`), the neuron-symmetry graph (:mod:`~nfncompile.frontend.graph`),
space derivation (:mod:`~nfncompile.frontend.spaces`) and numerical verification
(:mod:`~nfncompile.frontend.verification`). :func:`trace_with_report` also returns a
:class:`~nfncompile.frontend.report.TraceReport` saying, for every space, which parameters index
it and which ops tied it, and what broke symmetry.

Examples
--------
>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
>>> spec = trace(net, torch.randn(5, 3))
>>> print(spec.to_yaml(), end="")
spaces:
  in:  {size: 3, role: input}
  '0': {size: 4, role: hidden}
  out: {size: 2, role: output}
params:
  0.weight: {shape: [4, 3], axes: ['0', in]}
  0.bias:   {shape: [4], axes: ['0']}
  2.weight: {shape: [2, 4], axes: [out, '0']}
  2.bias:   {shape: [2], axes: [out]}
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, SymmetryError, TraceError
from ..spec import WeightSpaceSpec, check_mode
from .channel_dims import ChannelDim, check_channel_dim
from .fx import graph_differs, trace_module, unwrapped, wrapped_targets
from .graph import build_symmetry_graph
from .report import TraceReport, failure_message
from .spaces import derive_spaces
from .verification import verify as _verify

__all__ = ["trace", "trace_with_report", "TraceReport"]


def trace_with_report(
    model: nn.Module,
    example_input: Any,
    *,
    verify: bool = True,
    mode: str = "np",
    trials: int = 2,
    seed: int = 0,
    fake: bool | None = None,
    channel_dim: ChannelDim = 1,
    fix_values: bool = True,
) -> tuple[WeightSpaceSpec, TraceReport]:
    """Like :func:`trace`, and also return a :class:`~nfncompile.frontend.report.TraceReport`.

    Returns
    -------
    spec : WeightSpaceSpec
    report : TraceReport

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> spec, report = trace_with_report(net, torch.randn(5, 3))
    >>> report.space("0").params, report.verification.ok
    (['0.weight[0]', '0.bias[0]', '2.weight[1]'], True)
    """
    check_mode(mode)
    check_channel_dim(channel_dim)
    timings: dict = {}
    gm, graph = _traced(model, example_input, fake, channel_dim, fix_values, timings)
    t2 = time.perf_counter()
    derivation, spec = _derived(graph, mode)
    t3 = time.perf_counter()
    timings["spaces"] = t3 - t2
    vr = None
    if verify:
        # joint random group elements detect any wrong space (each moves every space); only
        # when one fails are the spaces checked one by one, to name the culprit
        kw, values = dict(trials=trials, seed=seed), fix_values
        if gm.meta.get("nfn_values"):
            # a graph that holds the example's routing: random inputs route elsewhere
            kw["trials"] = max(trials, VALUE_TRIALS)
        vr = _joint_check(model, spec, example_input, derivation.io, kw)
        if not vr.ok and gm.meta.get("nfn_values"):
            # what the example's values picked is not the model on other inputs: the traces
            # that read no values (the submodule kept as one call and probed)
            values = False
            gm, graph = _traced(model, example_input, fake, channel_dim, values, {})
            derivation, spec = _derived(graph, mode)
            kw["trials"] = trials
            vr = _joint_check(model, spec, example_input, derivation.io, kw)
        if not vr.ok and gm.meta.get("nfn_dead"):
            # a call whose result nothing reads wrote what the model reads on a later call (fx
            # records `w.data *= mask` as a product nothing reads): the trace that keeps them
            gm, graph = _traced(model, example_input, fake, channel_dim, values, {}, True)
            derivation, spec = _derived(graph, mode)
            vr = _joint_check(model, spec, example_input, derivation.io, kw)
        fallback = graph.graph.get("fallback")
        if not vr.ok and fallback is not None:
            # the larger group of a strided slice's blocks does not hold: the graph without them
            graph = fallback
            derivation, spec = _derived(graph, mode)
            vr = _joint_check(model, spec, example_input, derivation.io, kw)
        families = [b for b in derivation.blocks.values() if b.heads]
        if not vr.ok and families:
            # attention heads moved as blocks where something the rules do not see reads them
            # in place: the derivation with those heads where they stand (the report says so)
            derivation, spec, vr = _hold_heads(
                model, example_input, graph, families, vr.max_error, mode, kw
            )
        if not vr.ok:
            vr = _verify(model, spec, example_input, per_space=True, io=derivation.io, **kw)
        differs = graph_differs(model, gm, example_input)
        timings["verify"] = time.perf_counter() - t3
    report = TraceReport(type(model).__name__, spec, derivation, vr, timings)
    if verify:
        report.graph_differs = differs
    if vr is not None and not vr.ok:
        raise SymmetryError(failure_message(report))
    return spec, report


def _joint_check(
    model: nn.Module, spec: WeightSpaceSpec, example_input: Any, io: Any, kw: dict
) -> Any:
    """The verification's joint checks alone, unexplained: each failing one is either
    followed by another reading or by the per-space checks, whose report is the one
    returned and explained (an explanation re-runs the model node by node per check:
    minutes for a vocoder such as UnivNet)."""
    return _verify(model, spec, example_input, per_space=False, explain=False, io=io, **kw)


#: the most families of heads the verification's second reading releases one at a time
FAMILY_CHECKS = 12
#: the fewest verification trials for a graph traced with the example's values fixed (the
#: routing other inputs take is what checks it)
VALUE_TRIALS = 4


def _hold_heads(
    model: nn.Module,
    example_input: Any,
    graph: Any,
    families: list,
    error: float,
    mode: str,
    kw: dict,
) -> tuple:
    """``(derivation, spec, verification)`` where moving the heads of ``families`` (block
    infos) as blocks changed the output by ``error``: every family held in place; then, where
    that holds and there are at most :data:`FAMILY_CHECKS` families, each released again in
    turn and kept moving where the group still holds (a model whose attention reads its
    heads in place, beside experts whose blocks hold). The graph's ``heads_in_place`` says
    why where every family is held; else ``families_held`` holds the held families' head
    splits and ``families_held_line`` says why (the report's line)."""
    graph.graph["heads_in_place"] = _held_line(families, error)
    derivation, spec = _derived(graph, mode)
    vr = _joint_check(model, spec, example_input, derivation.io, kw)
    if not vr.ok or not 1 < len(families) <= FAMILY_CHECKS:
        return derivation, spec, vr
    held, best = list(families), None
    graph.graph["heads_in_place"] = ""
    for family in families:
        trial = [h for h in held if h is not family]
        graph.graph["families_held"] = {i for h in trial for i in h.splits}
        d, s = _derived(graph, mode)
        v = _joint_check(model, s, example_input, d.io, kw)
        if v.ok:
            held, best = trial, (d, s, v)
    if best is None:  # no family moves on its own: every one held, as verified first
        graph.graph["heads_in_place"] = _held_line(families, error)
        graph.graph.pop("families_held")
        return derivation, spec, vr
    graph.graph["families_held"] = {i for h in held for i in h.splits}
    graph.graph["families_held_line"] = _held_line(held, error)
    return best


def _held_line(held: list, error: float) -> str:
    """The report's line on the families of heads held in place."""
    return (
        f"moving the heads of {', '.join(b.name for b in held)} as blocks changed the output "
        f"by {error:.3g}"
    )


def _derived(graph: Any, mode: str) -> tuple:
    """``(derivation, spec)`` of a symmetry graph, the spec in ``mode``."""
    derivation = derive_spaces(graph)
    spec = derivation.spec if mode == derivation.spec.mode else derivation.spec.with_mode(mode)
    return derivation, spec


def _traced(
    model: nn.Module,
    example_input: Any,
    fake: bool | None,
    channel_dim: ChannelDim,
    values: bool,
    timings: dict,
    dead_code: bool = False,
) -> tuple:
    """The trace of ``model`` and its symmetry graph (:func:`_through_wrapped`), the seconds
    of each added to ``timings`` (``trace``, ``graph``); ``dead_code`` keeps the calls whose
    results reach no output (:func:`~nfncompile.frontend.fx.trace_module`)."""
    t0 = time.perf_counter()
    gm = trace_module(model, example_input, fake=fake, values=values, dead_code=dead_code)
    t1 = time.perf_counter()
    graph = build_symmetry_graph(gm, model, channel_dim)
    gm, graph = _through_wrapped(
        model, example_input, fake, channel_dim, gm, graph, values, dead_code
    )
    timings.update(trace=t1 - t0, graph=time.perf_counter() - t1)
    return gm, graph


def _through_wrapped(
    model: nn.Module,
    example_input: Any,
    fake: bool | None,
    channel_dim: ChannelDim,
    gm: torch.fx.GraphModule,
    graph: Any,
    values: bool = True,
    dead_code: bool = False,
) -> tuple:
    """The trace, and its symmetry graph, with the functions registered with
    ``torch.fx.wrap`` whose probe broke symmetry traced through (torchvision's
    ``shifted_window_attention``: Swin's attention with its weights passed in, probed and found
    not equivariant, fixed the whole residual stream). Taken where that trace succeeds and no
    longer has such a call fail its probe; a wrapped call whose probe passes stays one call, as
    the user who wrapped it asked."""
    failed = wrapped_targets(gm, [p.node for p in graph.graph["probes"] if not p.passed])
    if not failed:
        return gm, graph
    try:
        with unwrapped(failed):
            again = trace_module(
                model, example_input, fake=fake, values=values, dead_code=dead_code
            )
        graph_again = build_symmetry_graph(again, model, channel_dim)
    except (TraceError, ConfigError):
        return gm, graph
    still = [p.node for p in graph_again.graph["probes"] if not p.passed]
    return (gm, graph) if wrapped_targets(again, still) & failed else (again, graph_again)


def trace(
    model: nn.Module,
    example_input: Any,
    *,
    verify: bool = True,
    mode: str = "np",
    trials: int = 2,
    seed: int = 0,
    fake: bool | None = None,
    channel_dim: ChannelDim = 1,
    fix_values: bool = True,
) -> WeightSpaceSpec:
    """Derive the weight-space spec of any traceable MLP or CNN, verified numerically.

    Parameters
    ----------
    model : nn.Module
        The network whose weights the NFN will process (not modified). What
        ``torch.compile`` wraps in it (the model, a block, a function) is traced and verified
        as the Python it compiles; a compiled model's names carry its ``_orig_mod.`` prefix,
        as its state_dict does.
    example_input : Tensor or tuple
        One example batch (only shapes and dtypes matter), the model's positional arguments
        when a tuple. Its ``channel_dim`` holds the neurons that form the ``input``
        space(s). An output's spaces are whichever of its dims the analysis finds labelled.
        An argument holding no tensor (``None`` for an optional mask, a flag, a number) is
        traced as the constant it is, like the defaults of the arguments not given.
    verify : bool
        Check the derived group numerically (default) and raise if it does not hold: ``trials``
        joint random group elements (every space moves); when one fails, every space is
        checked on its own to name the failing ones. Where attention heads moved as blocks
        fail it, every head is kept in place and the group checked again; where that holds,
        each family of heads is released in turn (up to :data:`FAMILY_CHECKS` families) and
        kept moving where the group still holds (the report's ``heads_in_place`` names the
        families held) before anything is raised.
    mode : {"np", "hnp"}
        The spec's mode: ``np`` permutes every space, ``hnp`` only hidden ones.
    trials : int
        Random group elements tried during verification.
    seed : int
        Seed of the verification's random draws.
    fake : bool, optional
        Shape propagation on fake tensors (see :func:`nfncompile.frontend.fx.trace_module`).
    channel_dim : int, sequence of (int or None), or None
        The dim of each input that holds its neurons: 1 by default (``(batch, channels,
        ...)``; dim 0 of a 1-D input), ``-1`` for a ``(batch, sequence, features)`` input;
        one entry per tensor input for several (``None``: an input without neurons). See
        :mod:`~nfncompile.frontend.channel_dims`.
    fix_values : bool
        Where the forward branches on its data or loops over what its data picked (a mixture
        of experts running the experts its router chose), which torch.fx refuses: trace it with
        the example's values fixed (default), the loop unrolled over what the example picked
        (:class:`~nfncompile.frontend.fx.ValueSpecialisingTracer`). That graph is taken only
        where it reads every weight the calls it replaces read and every member of a stacked
        weight it reads one of (an expert no token of the example chose is refused, and the
        report says so: give an example whose tokens pick every expert), and where it
        computes the model's output on random inputs too; the verification then runs on at
        least :data:`VALUE_TRIALS` inputs. ``False``: such a submodule is kept as one call and
        probed, and such a model's own forward refused (TraceError).

    Returns
    -------
    WeightSpaceSpec
        Params in state_dict order (float buffers such as BatchNorm running statistics
        included, integer counters skipped).

    Raises
    ------
    TraceError
        torch.fx cannot trace the model (with fx's reason and what to do).
    ConfigError
        ``channel_dim`` names a dim an input does not have, or its entries do not match the
        inputs.
    SymmetryError
        Verification failed: names the failing space and the ops that touch it.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(),
    ...                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
    ...                           torch.nn.Linear(4, 10))
    >>> trace(net, torch.randn(2, 1, 8, 8))
    WeightSpaceSpec(mode='np', spaces=[in:1/input, 0:4/hidden, out:10/output], params=[0.weight(4, 1, 3, 3)[0, in, -, -], 0.bias(4,)[0], 4.weight(10, 4)[out, 0], 4.bias(10,)[out]])
    """
    spec, _ = trace_with_report(
        model, example_input, verify=verify, mode=mode, trials=trials, seed=seed, fake=fake,
        channel_dim=channel_dim, fix_values=fix_values,
    )  # fmt: skip
    return spec
