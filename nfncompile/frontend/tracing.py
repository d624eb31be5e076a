"""The compiler front end: ``nn.Module`` -> verified :class:`~nfncompile.spec.WeightSpaceSpec`.

:func:`trace` runs the four front-end passes: torch.fx tracing with shape propagation
(:mod:`nfncompile.frontend.fx`), the neuron-symmetry graph (:mod:`nfncompile.frontend.graph`), space
derivation (:mod:`nfncompile.frontend.spaces`) and numerical verification (:mod:`nfncompile.frontend.verification`).
:func:`trace_with_report` also returns a :class:`TraceReport` saying, for every space, which
parameters index it and which ops tied it, and what broke symmetry.

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
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
from torch import nn

from ..errors import SymmetryError
from ..spec import ParamSpec, Space, WeightSpaceSpec, check_mode
from .fx import trace_module
from .graph import build_symmetry_graph
from .spaces import BrokenInfo, Derived, derive_spaces
from .verification import VerifyReport
from .verification import verify as _verify

__all__ = ["trace", "trace_with_report", "TraceReport", "SpaceReport", "spec_from_derived"]


@dataclass
class SpaceReport:
    """One space of a traced model: what indexes it and what tied it together."""

    name: str
    size: int
    role: str
    params: list  # "key[axis]" strings
    ops: list
    origins: list
    touched: list = field(default_factory=list)


@dataclass
class TraceReport:
    """What :func:`trace_with_report` found.

    Attributes
    ----------
    model : str
        The traced model's class name.
    spaces : list of SpaceReport
        Per space: size, role, the parameter axes that index it, the ops that tied it.
    broken : list of BrokenInfo
        Every op that broke symmetry: op, fx node, reason, the neurons it made fixed.
    spec : WeightSpaceSpec
    verification : VerifyReport or None
        ``None`` when tracing ran with ``verify=False``.
    graph : networkx.MultiGraph
        The neuron-symmetry graph (see :func:`nfncompile.frontend.drawing.draw_symmetry_graph`).
    derived : spaces.Derived
    timings : dict
        Seconds per pass: ``trace``, ``graph``, ``spaces``, ``verify``.
    """

    model: str
    spaces: list
    broken: list
    spec: WeightSpaceSpec
    verification: VerifyReport | None
    graph: nx.MultiGraph
    derived: Derived
    timings: dict = field(default_factory=dict)

    def space(self, name: str) -> SpaceReport:
        """The :class:`SpaceReport` called ``name``."""
        for s in self.spaces:
            if s.name == name:
                return s
        raise KeyError(f"no space {name!r}; spaces: {', '.join(s.name for s in self.spaces)}")

    @property
    def run_space(self) -> dict:
        return self.derived.run_space

    def __str__(self) -> str:
        lines = [f"symmetry report for {self.model} ({self.spec.mode} mode)"]
        lines.append(f"{len(self.spaces)} neuron spaces:")
        for s in self.spaces:
            lines.append(f"  {s.name}: size {s.size}, {s.role}")
            if s.params:
                lines.append(f"    indexes: {_wrap(s.params)}")
            if s.ops:
                lines.append(f"    tied by: {_wrap(s.ops)}")
        if self.broken:
            lines.append("symmetry broken by:")
            for b in self.broken:
                what = ", ".join(b.neurons)
                lines.append(f"  {b.op} [node {b.node}]: {b.reason}; fixed {b.count} ({what})")
        else:
            lines.append("symmetry broken by: nothing")
        if self.verification is not None:
            lines.append(str(self.verification))
        t = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in self.timings.items())
        lines.append(f"time: {t}")
        return "\n".join(lines)


def _wrap(items: list, limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def spec_from_derived(derived: Derived, mode: str = "np") -> WeightSpaceSpec:
    """Build the :class:`WeightSpaceSpec` from :func:`nfncompile.frontend.spaces.derive_spaces` output."""
    spaces = [Space(s.name, s.size, s.role) for s in derived.spaces]
    params = [ParamSpec(k, p.shape, tuple(p.axes), p.view) for k, p in derived.params.items()]
    return WeightSpaceSpec(spaces, params, mode)


class _IO:
    def __init__(self, derived: Derived) -> None:
        self.inputs = derived.inputs
        self.outputs = derived.outputs


def trace_with_report(
    model: nn.Module,
    example_input: Any,
    *,
    verify: bool = True,
    mode: str = "np",
    trials: int = 2,
    seed: int = 0,
    fake: bool | None = None,
) -> tuple[WeightSpaceSpec, TraceReport]:
    """Like :func:`trace`, and also return a :class:`TraceReport`.

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
    t0 = time.perf_counter()
    gm = trace_module(model, example_input, fake=fake)
    t1 = time.perf_counter()
    graph = build_symmetry_graph(gm, model)
    t2 = time.perf_counter()
    derived = derive_spaces(graph)
    spec = spec_from_derived(derived, mode)
    t3 = time.perf_counter()
    timings = {"trace": t1 - t0, "graph": t2 - t1, "spaces": t3 - t2}
    spaces = [
        SpaceReport(
            s.name,
            s.size,
            s.role,
            [f"{k}[{a}]" for k, a in s.params],
            list(s.ops),
            s.origins,
            list(s.touched),
        )
        for s in derived.spaces
    ]
    broken: list[BrokenInfo] = derived.broken
    vr = None
    if verify:
        # joint random group elements detect any wrong space (each moves every space); only
        # when one fails are the spaces checked one by one, to name the culprit
        kw = dict(trials=trials, mode=mode, seed=seed, io=_IO(derived))
        vr = _verify(model, spec, example_input, per_space=False, **kw)
        if not vr.ok:
            vr = _verify(model, spec, example_input, per_space=True, **kw)
        timings["verify"] = time.perf_counter() - t3
    report = TraceReport(type(model).__name__, spaces, broken, spec, vr, graph, derived, timings)
    if vr is not None and not vr.ok:
        raise SymmetryError(_failure_message(report, vr))
    return spec, report


def _failure_message(report: TraceReport, vr: VerifyReport) -> str:
    lines = [f"the symmetry derived for {report.model} does not hold numerically:"]
    for name in vr.failed:
        c = vr.spaces.get(name) or vr.joint
        if name == "joint":
            lines.append(
                f"  joint permutations of all spaces change the output by {c.max_error:.3g} "
                f"(tolerance {c.tolerance:.3g}) although each space alone passes"
            )
            continue
        s = report.space(name)
        lines.append(
            f"  space {name!r} ({s.size} neurons, {s.role}): permuting it changes the output by "
            f"{c.max_error:.3g} (tolerance {c.tolerance:.3g}){'; ' + c.message if c.message else ''}"
        )
        lines.append(f"    ops that touch it: {_wrap(s.touched, 20) or '(none)'}")
        lines.append(f"    parameters: {', '.join(s.params) or '(none)'}")
    lines.append(
        "An op rule is missing a constraint: please report it. Until it is fixed, wrap the op "
        "with torch.fx.wrap (its neurons then become fixed) or write the spec by hand."
    )
    return "\n".join(lines)


def trace(
    model: nn.Module,
    example_input: Any,
    *,
    verify: bool = True,
    mode: str = "np",
    trials: int = 2,
    seed: int = 0,
    fake: bool | None = None,
) -> WeightSpaceSpec:
    """Derive the weight-space spec of any traceable MLP or CNN, verified numerically.

    Parameters
    ----------
    model : nn.Module
        The network whose weights the NFN will process (not modified).
    example_input : Tensor or tuple of Tensor
        One example batch (only shapes and dtypes matter). Dim 1 (dim 0 of a 1-D input) is the
        channel dim: its neurons form the ``input`` space(s); likewise for the output.
    verify : bool
        Check the derived group numerically (default) and raise if it does not hold: ``trials``
        joint random group elements (every space moves); when one fails, every space is
        checked on its own to name the failing ones.
    mode : {"np", "hnp"}
        The spec's mode: ``np`` permutes every space, ``hnp`` only hidden ones.
    trials : int
        Random group elements tried during verification.
    seed : int
        Seed of the verification's random draws.
    fake : bool, optional
        Shape propagation on fake tensors (see :func:`nfncompile.frontend.fx.trace_module`).

    Returns
    -------
    WeightSpaceSpec
        Params in state_dict order (float buffers such as BatchNorm running statistics
        included, integer counters skipped).

    Raises
    ------
    TraceError
        torch.fx cannot trace the model (with fx's reason and what to do).
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
        model, example_input, verify=verify, mode=mode, trials=trials, seed=seed, fake=fake
    )
    return spec
