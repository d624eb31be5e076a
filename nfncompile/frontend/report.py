"""The symmetry report of a traced model: a readable view over its derivation.

:class:`TraceReport` (what :func:`~nfncompile.frontend.tracing.trace_with_report` returns) holds
the :class:`~nfncompile.frontend.derivation.Derivation`, the returned spec, the verification
report and the time of each pass; its text lists every space (size, role, what indexes it,
what tied it) and every op that broke symmetry. :func:`failure_message` is the text of the
:class:`~nfncompile.errors.SymmetryError` raised when the derived symmetry does not hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..spec import WeightSpaceSpec
from .derivation import Derivation, SpaceInfo
from .fx import DICT_INPUT
from .verification import VerifyReport

__all__ = ["TraceReport", "failure_message"]


@dataclass
class TraceReport:
    """What :func:`~nfncompile.frontend.tracing.trace_with_report` found.

    Attributes
    ----------
    model : str
        The traced model's class name.
    spec : WeightSpaceSpec
        The returned spec (in the requested mode).
    derivation : Derivation
        Everything derived (spaces with their provenance, input/output axes, broken ops, the
        symmetry graph).
    verification : VerifyReport or None
        ``None`` when tracing ran with ``verify=False``.
    timings : dict
        Seconds per pass: ``trace``, ``graph``, ``spaces``, ``verify``.
    graph_differs : str
        Where the traced graph does not compute the model's output on the example, why
        (checked with the verification; :func:`~nfncompile.frontend.fx.graph_differs`).
    """

    model: str
    spec: WeightSpaceSpec
    derivation: Derivation
    verification: VerifyReport | None
    timings: dict = field(default_factory=dict)
    graph_differs: str = ""

    @property
    def spaces(self) -> dict:
        """Space name -> :class:`~nfncompile.frontend.derivation.SpaceInfo`."""
        return self.derivation.spaces

    @property
    def broken(self) -> list:
        """Every op that broke symmetry (:class:`~nfncompile.frontend.derivation.BrokenInfo`)."""
        return self.derivation.broken

    @property
    def graph(self) -> Any:
        """The neuron-symmetry graph (see :func:`~nfncompile.frontend.drawing.draw_symmetry_graph`)."""
        return self.derivation.graph

    @property
    def run_space(self) -> dict:
        """Run id -> the space of its first neurons (or ``"fixed"``)."""
        return self.derivation.run_space

    @property
    def probes(self) -> list:
        """Every op no rule knows, probed numerically
        (:class:`~nfncompile.frontend.probe.ProbeRecord`: passed or why it was fixed)."""
        return self._found("probes", [])

    @property
    def leaf_calls(self) -> list:
        """Every submodule kept as one call because torch.fx could not trace its forward
        (:class:`~nfncompile.frontend.fx.LeafCall`)."""
        return self._found("leaf_calls", [])

    @property
    def specialised(self) -> str:
        """Where plain symbolic tracing of the model failed when it was traced with the example
        input's shapes fixed (:class:`~nfncompile.frontend.fx.ShapeSpecialisingTracer`);
        ``""`` for a plain trace."""
        return self._found("specialised", "")

    @property
    def values_fixed(self) -> str:
        """Where the forward branched on its data (a mixture of experts running the experts its
        router chose) when the model was traced with the example's values fixed
        (:class:`~nfncompile.frontend.fx.ValueSpecialisingTracer`): the graph holds what the
        example picked, and the verification checked the model on other inputs; ``""``
        otherwise."""
        return self._found("values_fixed", "")

    @property
    def values_refused(self) -> str:
        """Why the trace with the example's values fixed was not taken where it read more of
        the model than the calls kept whole (an expert the example never ran); ``""``
        otherwise."""
        return self._found("values_refused", "")

    @property
    def heads_in_place(self) -> str:
        """Why attention heads (every family, or those named) were left in place after moving
        them as blocks failed the verification (a constraint no rule sees); ``""`` where it
        did not."""
        return self._found("heads_in_place", "") or self._found("families_held_line", "")

    def _found(self, what: str, default: Any) -> Any:
        """The symmetry graph's ``what``, or ``default`` where it has none (or there is no
        graph)."""
        graph = self.derivation.graph
        return graph.graph.get(what, default) if graph is not None else default

    def space(self, name: str) -> SpaceInfo:
        """The :class:`~nfncompile.frontend.derivation.SpaceInfo` called ``name``."""
        return self.derivation.space(name)

    @property
    def blocks(self) -> dict:
        """Block permutation name -> :class:`~nfncompile.frontend.derivation.BlockInfo`."""
        return self.derivation.blocks

    @property
    def ops(self) -> list:
        """What happened to every call (:class:`~nfncompile.frontend.derivation.OpInfo`)."""
        return self.derivation.ops

    def __str__(self) -> str:
        lines = [f"symmetry report for {self.model} ({self.spec.mode} mode)"]
        lines.append(f"{len(self.spaces)} neuron spaces:")
        for s in self.spaces.values():
            lines.append(f"  {s.name}: size {s.size}, {s.role}")
            if s.blocks is not None:
                b = self.blocks[s.blocks]
                others = [n for n in b.spaces if n != s.name]
                shared = f", shared with {_wrap(others)}" if others else ""
                still = " (the blocks stay in place)" if b.fixed else ""
                lines.append(f"    blocks {b.name}: {b.count} x {s.size // b.count}{shared}{still}")
            if s.params:
                lines.append(f"    indexes: {_wrap(s.params)}")
            if s.ops:
                lines.append(f"    tied by: {_wrap(s.ops)}")
        lines += _ops_lines(self.ops)
        if self.broken:
            lines.append("symmetry broken by:")
            for b in self.broken:
                what = ", ".join(b.neurons)
                lines.append(f"  {b.op} [node {b.node}]: {b.reason}; fixed {b.count} ({what})")
        else:
            lines.append("symmetry broken by: nothing")
        if self.specialised:
            why = self.specialised
            if why != DICT_INPUT:
                why = f"plain symbolic tracing failed at {why}"
            lines.append(f"traced with the example input's shapes fixed ({why})")
        if self.values_fixed:
            lines.append(
                "traced with the example input's values fixed (the forward branches on its "
                f"data at {self.values_fixed}): the graph holds what the example picked"
            )
        if self.values_refused:
            lines.append(f"not traced with the example input's values fixed: {self.values_refused}")
        if self.heads_in_place:
            lines.append(f"attention heads kept in place: {self.heads_in_place}")
        if self.leaf_calls:
            lines.append("kept as one call (torch.fx cannot trace their forward):")
            lines.extend(f"  {leaf}" for leaf in self.leaf_calls)
        if self.probes:
            lines.append("ops no rule knows, probed numerically:")
            for p in self.probes:
                lines.append(f"  {p.op} [node {p.node}]: {p.detail} ({p.seconds * 1000:.1f} ms)")
        if self.graph_differs:
            lines.append(f"warning: {self.graph_differs}")
        if self.verification is not None:
            lines.append(str(self.verification))
        t = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in self.timings.items())
        lines.append(f"time: {t}")
        return "\n".join(lines)


def _ops_lines(ops: list) -> list:
    """A count per status, then every op that did not simply follow its rule."""
    counts = {
        st: sum(o.status == st for o in ops) for st in ("known", "fell back", "broke symmetry")
    }
    lines = ["ops: " + ", ".join(f"{n} {st}" for st, n in counts.items())]
    for o in ops:
        if o.fell_back:
            lines.append(f"  fell back: {o.op} [node {o.node}]: {o.fell_back}")
    return lines


def _wrap(items: list, limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def failure_message(report: TraceReport) -> str:
    """Why the symmetry derived for a model does not hold: per failing space or block
    permutation, the error, the parameters it moves and the ops that touch it."""
    vr = report.verification
    lines = [f"the symmetry derived for {report.model} does not hold numerically:"]
    for c in vr.failures:
        lines.append(f"  {c.describe()}")
        lines += [f"  {line}" for line in vr.why(c)]  # the first diverging node
        if c.role == "blocks" and c.name in report.blocks:
            b = report.blocks[c.name]
            lines.append(f"    spaces: {', '.join(b.spaces)}; linked by: {_wrap(b.ops, 20)}")
        elif c.name in report.spaces:
            touched = report.space(c.name).touched
            lines.append(f"    ops that touch it: {_wrap(touched, 20) or '(none)'}")
    if report.graph_differs:
        lines.append(f"  cause: {report.graph_differs}")
        lines.append(
            "Make the forward's branch depend on its arguments rather than on a traced value "
            "(its type, values or truth), or write the spec by hand."
        )
        return "\n".join(lines)
    lines.append(
        "An op rule is missing a constraint: please report it. Until it is fixed, wrap the op "
        "with torch.fx.wrap (its neurons then become fixed) or write the spec by hand."
    )
    return "\n".join(lines)
