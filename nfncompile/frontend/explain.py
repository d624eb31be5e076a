"""Why a verification failed: what a failing space permutes and where the model first diverges.

For a space whose check failed, :func:`explain_failure` draws one permutation of it, runs the
model's torch.fx graph on the original weights and input and on the permuted ones, and compares
the two runs node by node. Under a true symmetry every intermediate value of the permuted run
holds the same numbers as the original, rearranged (hidden neurons swap places; a tensor
indexed by two permuted axes rearranges along both), so each node is compared as a multiset:
its sorted values. The first input-dependent node whose values differ is where the claimed
symmetry breaks: the report names it, the source line that created it, its inputs and the
size of the difference there.

The multiset test is a necessary condition: it never blames a node that is a rearrangement,
and a node that only rearranges values in a way the spec does not (fixed indexing of a
permuted axis) is passed and the next node that computes with them is named instead.

Examples
--------
>>> import torch
>>> from nfncompile.testing import mlp_spec
>>> net = torch.nn.Sequential()
>>> net.add_module("l1", torch.nn.Linear(3, 4)); net.add_module("act", torch.nn.Tanh())
>>> net.add_module("l2", torch.nn.Linear(4, 2))
>>> spec = mlp_spec([3, 4, 2])
>>> wrong = spec.from_yaml(spec.to_yaml().replace("axes: [out, h1]", "axes: [out, null]"))
>>> d = explain_failure(net, wrong, torch.randn(5, 3), ["h1"], mode="hnp")
>>> d.params, d.node
(('l1.weight[0]', 'l1.bias[0]'), 'l2')
>>> print(d)  # doctest: +ELLIPSIS
h1 permutes l1.weight[0], l1.bias[0]
  first diverging node: l2 = call_module l2 (Linear) on act
  values differ by up to ... (tolerance ...); every node before it only rearranges
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
from torch import nn

from ..errors import is_user_file
from ..spec import Permutation, WeightSpaceSpec
from .fx import (
    PlainArgsInterpreter,
    as_args,
    copy_model,
    evaluating,
    leaves,
    same_draws,
    trace_graph,
)

__all__ = ["Divergence", "explain_failure", "params_moved", "permuted_state"]


@dataclass(frozen=True)
class Divergence:
    """Where the model stops computing the same function under one space's permutation.

    Attributes
    ----------
    space : str
        The failing space (``"g (blocks)"`` for a block permutation, ``"joint"`` for all).
    params : tuple of str
        The parameter axes the permutation moves, as ``name[axis]``.
    node : str or None
        The first input-dependent fx node whose values differ (``None`` when none could be
        named: see ``note``).
    op : str
        What the node computes (``call_module l2 (Linear) on act``).
    source : str
        The user's source line that created the node (``file:line: code``), when known.
    error : float
        Largest difference of the node's sorted values (``inf`` if it raised or its shape
        changed).
    tolerance : float
        ``atol + rtol * max |value|`` at that node.
    note : str
        Why no node is named, or what happened at it (an exception).
    """

    space: str
    params: tuple
    node: str | None = None
    op: str = ""
    source: str = ""
    error: float = 0.0
    tolerance: float = 0.0
    note: str = ""

    def __str__(self) -> str:
        lines = [f"{self.space} permutes {', '.join(self.params) or 'no parameter'}"]
        if self.node is not None:
            lines.append(f"  first diverging node: {self.node} = {self.op}")
            if self.source:
                lines.append(f"    at {self.source}")
            if self.note:
                lines.append(f"  {self.note}")
            else:
                lines.append(
                    f"  values differ by up to {self.error:.3g} (tolerance {self.tolerance:.3g});"
                    " every node before it only rearranges"
                )
        elif self.note:
            lines.append(f"  {self.note}")
        return "\n".join(lines)


def params_moved(spec: WeightSpaceSpec, moved: Sequence[str]) -> tuple:
    """``name[axis]`` of every parameter axis that a permutation of ``moved`` spaces (or block
    permutations) moves.

    >>> from nfncompile.testing import mlp_spec
    >>> params_moved(mlp_spec([2, 3, 1]), ["h1"])
    ('l1.weight[0]', 'l1.bias[0]', 'l2.weight[1]')
    """
    spaces = _moved_spaces(spec, moved)
    out = []
    for p in spec.params:
        for i, label in enumerate(p.axes):
            if _spaces_of(label) & spaces:
                out.append(f"{p.name}[{i}]")
    return tuple(out)


def _moved_spaces(spec: WeightSpaceSpec, moved: Sequence[str]) -> set:
    moved = set(moved)
    return {s for s, sp in spec.spaces.items() if s in moved or sp.blocks in moved}


def _spaces_of(label: Any) -> set:
    if label is None or isinstance(label, int):
        return set()
    if isinstance(label, str):
        return {label}
    if isinstance(label, tuple):
        return {x for piece in label for x in _spaces_of(piece)}
    return {label.space}  # Inner


def permuted_state(
    spec: WeightSpaceSpec, perm: Permutation, state: dict, moved: Sequence[str]
) -> dict:
    """``state`` with every parameter that uses a ``moved`` space (or block) permuted."""
    spaces = _moved_spaces(spec, moved)
    uses = {p.name: p.spaces_used() for p in spec.params}
    return {
        k: perm.apply_tensor(k, v) if uses.get(k, set()) & spaces else v for k, v in state.items()
    }


class _Recorder(PlainArgsInterpreter):
    """Runs a GraphModule and keeps every node's value (or the exception that stopped it)."""

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[str, Any] = {}
        self.failed: tuple[str, BaseException] | None = None

    def run_node(self, n: torch.fx.Node) -> Any:
        try:
            value = super().run_node(n)
        except Exception as e:
            self.failed = (n.name, e)
            raise
        self.values[n.name] = value
        return value


def _difference(a: Any, b: Any, atol: float, rtol: float) -> tuple[float, float]:
    """(error, tolerance) between two node values compared as multisets of numbers."""
    xs, ys = leaves(a, fields=True), leaves(b, fields=True)
    if len(xs) != len(ys):
        return math.inf, atol
    err, tol = 0.0, atol
    for x, y in zip(xs, ys):
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            continue
        if x.shape != y.shape:
            return math.inf, tol
        if x.numel() == 0:
            continue
        xf, yf = x.detach().flatten(), y.detach().flatten()
        if xf.is_complex():  # (a conjugate view resolved first: Autoformer's conj(fft))
            xf, yf = (torch.view_as_real(t.resolve_conj()).flatten() for t in (xf, yf))
        if not xf.is_floating_point():
            xf, yf = xf.double(), yf.double()
        tol = max(tol, atol + rtol * float(xf.abs().max()))
        err = max(err, float((xf.sort().values - yf.sort().values).abs().max()))
    return err, tol


def _source(node: torch.fx.Node) -> str:
    """``file:line: code`` of the innermost user frame of the node's recorded stack trace."""
    frames = re.findall(
        r'File "([^"]+)", line (\d+), in [^\n]*\n +([^\n]*)', node.stack_trace or ""
    )
    users = [f for f in frames if is_user_file(f[0])]
    return ":".join(users[-1][:2]) + f": {users[-1][2].strip()}" if users else ""


def _describe(gm: torch.fx.GraphModule, node: torch.fx.Node) -> str:
    target = node.target
    if node.op == "call_module":
        what = f"call_module {target} ({type(gm.get_submodule(str(target))).__name__})"
    elif node.op == "call_function":
        module = (getattr(target, "__module__", None) or "").replace("_operator", "operator")
        fn = getattr(target, "__name__", repr(target))
        what = f"call_function {module}.{fn}" if module else f"call_function {fn}"
    else:
        what = f"{node.op} {target}"
    args = [a.name for a in node.all_input_nodes]
    return what + (f" on {', '.join(args)}" if args else "")


def _input_dependent(graph: torch.fx.Graph) -> set:
    dependent: set = set()
    for n in graph.nodes:
        if n.op == "placeholder" or any(a.name in dependent for a in n.all_input_nodes):
            dependent.add(n.name)
    return dependent


def explain_failure(
    model: nn.Module,
    spec: WeightSpaceSpec,
    example_input: Any,
    moved: Sequence[str],
    *,
    name: str | None = None,
    mode: str | None = None,
    seed: int = 0,
    atol: float = 1e-8,
    rtol: float = 1e-6,
    permute_input: Any = None,
    state: dict | None = None,
    dtype: torch.dtype = torch.float64,
) -> Divergence:
    """Find where ``model`` first diverges when the spaces ``moved`` are permuted.

    Parameters
    ----------
    model : nn.Module
        The network (an eval-mode copy in ``dtype`` is traced and run; the model is not
        modified).
    spec : WeightSpaceSpec
    example_input : Tensor or tuple of Tensor
        The input both runs read.
    moved : sequence of str
        The spaces (or block permutations) to permute.
    name : str, optional
        The label of the failing check (default: ``moved`` joined).
    mode : {"np", "hnp"}, optional
        Overrides the spec's mode.
    seed : int
        Seeds the permutation.
    atol, rtol : float
        A node diverges when its sorted values differ by more than ``atol + rtol * max|v|``.
    permute_input : callable, optional
        ``permute_input(perm, args) -> args``: how the permutation moves the model's inputs
        (verification passes its own; by default inputs are not moved).
    state : dict, optional
        The weights to use (default: the model's own).
    dtype : torch.dtype
        What the copy runs in (verification passes float32 for a model that fails in
        float64).

    Returns
    -------
    Divergence
        The node is ``None`` (with a ``note``) when the model cannot be traced by torch.fx or
        no node differs.
    """
    if mode is not None:
        spec = spec.with_mode(mode)
    name = name or ", ".join(moved)
    params = params_moved(spec, moved)
    net = evaluating(copy_model(model, dtype))
    if state is not None:
        net.load_state_dict(state)
    state = dict(net.state_dict())
    args = tuple(
        a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
        for a in as_args(example_input)
    )
    try:
        # as the analysis traced it (node.stack_trace: the user's source line)
        tracer, graph, _ = trace_graph(net, args, record_stack_traces=True)
        gm = torch.fx.GraphModule(tracer.root, graph)
    except Exception as e:
        note = (
            f"torch.fx cannot trace {type(model).__name__}, so no node can be named "
            f"({type(e).__name__}: {e})"
        )
        return Divergence(name, params, note=note)
    perm = None
    gen = torch.Generator().manual_seed(seed)
    for _ in range(8):  # a permutation that is not the identity, when the group allows
        perm = spec.sample_permutation(gen, move=list(moved))
        if any(not torch.equal(p, torch.arange(len(p))) for p in perm.perms.values()):
            break
    moved_gm = copy_model(gm)
    # strict=False: a buffer the traced graph does not read is not in it
    moved_gm.load_state_dict(permuted_state(spec, perm, state, moved), strict=False)
    moved_args = permute_input(perm, args) if permute_input is not None else args
    original, permuted = _Recorder(gm), _Recorder(moved_gm)
    with torch.no_grad():
        try:
            with same_draws():
                original.run(*args)
        except Exception as e:  # the traced graph differs from the model's own forward
            note = f"the fx graph of {type(model).__name__} fails on the example input ({e})"
            return Divergence(name, params, note=note)
        with contextlib.suppress(Exception), same_draws():  # recorded: the node that raised
            permuted.run(*moved_args)
    dependent = _input_dependent(gm.graph)
    raised = permuted.failed[0] if permuted.failed is not None else None
    for node in gm.graph.nodes:
        if node.name == raised and permuted.failed is not None:
            e = permuted.failed[1]
            return Divergence(
                name, params, node.name, _describe(gm, node), _source(node), math.inf, 0.0,
                note=f"raised {type(e).__name__} on the permuted weights: {e}",
            )  # fmt: skip
        if node.op == "output" or node.name not in dependent:
            continue
        err, tol = _difference(original.values[node.name], permuted.values[node.name], atol, rtol)
        if err > tol:
            return Divergence(name, params, node.name, _describe(gm, node), _source(node), err, tol)
    return Divergence(
        name, params, note="no node differs beyond rearrangement with this permutation"
    )
