"""Stage 1 of the front end: read a model with torch.fx and record every node's shape.

:func:`trace_module` symbolically traces an ``nn.Module`` with :func:`torch.fx.symbolic_trace`
and runs a :class:`~torch.fx.passes.shape_prop.ShapeProp` pass on the example input. Every
tensor-producing node gets ``node.meta["tensor_meta"]`` (shape, dtype) and every other node
its concrete Python value in ``node.meta["nfn_value"]`` (sizes, ints, slices), which the
symmetry analysis (:mod:`nfncompile.frontend.graph`) reads.

Shape propagation runs the real forward in eval mode under ``no_grad`` for small models and
on *fake* tensors for large ones (no arithmetic, so tracing a 2048-channel network costs what a
16-channel one does). The user's model is never modified: its ``training`` flags are restored
and eval mode leaves BatchNorm statistics alone.

Examples
--------
>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
>>> gm = trace_module(net, torch.randn(5, 3))
>>> [(n.name, tuple(n.meta["tensor_meta"].shape)) for n in gm.graph.nodes if n.op != "output"]
[('input_1', (5, 3)), ('_0', (5, 4)), ('_1', (5, 4)), ('_2', (5, 2))]
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.fx
from torch.fx.node import map_aggregate
from torch.fx.passes.shape_prop import ShapeProp, _extract_tensor_metadata

from ..errors import TraceError

__all__ = ["FAKE_ABOVE", "trace_module", "NodeShapeProp", "as_args"]

#: Parameter elements above which :func:`trace_module` propagates shapes on fake tensors.
FAKE_ABOVE = 4_000_000

_ADVICE = (
    "To trace it anyway: wrap the offending function with torch.fx.wrap(...) so it is kept as "
    "one call, or make the offending submodule a leaf module, or remove the data-dependent "
    "control flow (branch on a constructor argument instead of on a tensor); otherwise write "
    "a WeightSpaceSpec by hand (see specs/)."
)


class NodeShapeProp(ShapeProp):
    """ShapeProp that also stores non-tensor results and re-raises errors with the node.

    Parameters
    ----------
    gm : torch.fx.GraphModule
        The traced module.
    fake : FakeTensorMode, optional
        Run on fake tensors (no arithmetic, no per-channel cost). Real parameters are
        converted on the fly, so the module is not copied.
    """

    def __init__(self, gm: torch.fx.GraphModule, fake: Any = None) -> None:
        super().__init__(gm)
        self.fake = fake

    def run_node(self, n: torch.fx.Node) -> Any:
        try:
            if self.fake is not None:
                with self.fake:
                    result = torch.fx.Interpreter.run_node(self, n)
            else:
                result = torch.fx.Interpreter.run_node(self, n)
        except TraceError:
            raise
        except Exception as e:
            raise TraceError(
                f"shape propagation failed at node {n.format_node()}: {type(e).__name__}: {e}. "
                "Check that the example input has the shape the model expects."
            ) from e
        found = False

        def meta(obj: Any) -> Any:
            nonlocal found
            if isinstance(obj, torch.Tensor):
                found = True
                return _extract_tensor_metadata(obj)
            return obj

        m = map_aggregate(result, meta)
        if found:
            n.meta["tensor_meta"] = m
        else:
            n.meta["nfn_value"] = result
        n.meta["type"] = type(result)
        return result


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, t in flags:
            m.training = t


def as_args(example_input: Any) -> tuple:
    """The positional arguments a model is called with: a tuple stays, anything else is wrapped.

    >>> as_args(1), as_args((1, 2))
    ((1,), (1, 2))
    """
    return tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)


def trace_module(
    model: torch.nn.Module, example_input: Any, *, fake: bool | None = None
) -> torch.fx.GraphModule:
    """Symbolically trace ``model`` and propagate the example input's shapes through it.

    Parameters
    ----------
    model : nn.Module
        Any module torch.fx can trace (MLPs, CNNs, residual and concat patterns).
    example_input : Tensor or tuple of Tensor
        One example batch; only its shapes and dtypes are used.
    fake : bool, optional
        Propagate shapes with fake tensors (no arithmetic: the cost does not grow with width,
        but the first use imports torch's fake-tensor machinery, about 3 s) or with the real
        forward. Default: fake when the model holds more than ``FAKE_ABOVE`` parameter
        elements, where one real forward would cost more than that import.

    Returns
    -------
    torch.fx.GraphModule
        Sharing the model's submodules and parameters; every node has ``meta["tensor_meta"]``
        (tensors) or ``meta["nfn_value"]`` (other values).

    Raises
    ------
    TraceError
        When torch.fx cannot trace the model (data-dependent control flow, unsupported Python),
        with fx's reason and what to do, or when the example input does not fit the model.
    """
    if not isinstance(model, torch.nn.Module):
        raise TraceError(f"expected an nn.Module to trace, got {type(model).__name__}")
    args = as_args(example_input)
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as e:
        raise TraceError(
            f"torch.fx could not trace {type(model).__name__}: {type(e).__name__}: {e}. {_ADVICE}"
        ) from e
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) < len(args):
        raise TraceError(
            f"{type(model).__name__}.forward takes {len(placeholders)} inputs "
            f"({', '.join(p.name for p in placeholders)}) but {len(args)} example inputs were given"
        )
    if fake is None:
        fake = sum(t.numel() for t in model.state_dict().values()) > FAKE_ABOVE
    with _eval_mode(model), torch.no_grad():
        if fake:
            from torch._subclasses.fake_tensor import FakeTensorMode

            mode = FakeTensorMode(allow_non_fake_inputs=True)
            fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
            NodeShapeProp(gm, fake=mode).propagate(*fake_args)
        else:
            NodeShapeProp(gm).propagate(*args)
    return gm


def leaves(value: Any) -> list:
    """Flatten nested tuples, lists and dict values (a model's inputs or outputs) into a list.

    >>> leaves((1, [2, {"a": 3}]))
    [1, 2, 3]
    """
    if isinstance(value, (tuple, list)):
        return [x for v in value for x in leaves(v)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in leaves(v)]
    return [value]
