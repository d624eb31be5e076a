"""The rule tables: which op rule the symmetry analysis applies to each call.

A rule computes the :class:`~nfncompile.frontend.labels.TensorLabels` of an op's output from
those of its inputs and records constraints on the analysis (ties, cuts, fixes, parameter
labels). Rules are registered per module type (looked up along the MRO), per function and per
tensor method name. A rule that meets a case it cannot handle raises :class:`Unsupported`; the
analysis then applies the conservative fallback (fix every labelled input) and reports why.

Examples
--------
>>> import torch
>>> @register_function(torch.sinc)
... def sinc_rule(a, args, kwargs):
...     return a.broadcast([args[0]])
>>> FUNCTION_RULES[torch.sinc] is sinc_rule
True
>>> del FUNCTION_RULES[torch.sinc]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = [
    "Rule",
    "Unsupported",
    "MODULE_RULES",
    "FUNCTION_RULES",
    "METHOD_RULES",
    "STRUCTURED",
    "structured",
    "register_module",
    "module_rule",
    "register_function",
    "register_method",
    "arg",
    "norm_dim",
    "module_nd",
    "VALUE_RULES",
    "reads_values",
]

Rule = Callable[..., Any]
#: Module type -> ``rule(analysis, module, target, args, kwargs)``.
MODULE_RULES: dict = {}
#: Function -> ``rule(analysis, args, kwargs)``.
FUNCTION_RULES: dict = {}
#: Tensor method name -> ``rule(analysis, args, kwargs)``.
METHOD_RULES: dict = {}
#: Rules that read flattened products and uniform labels; every other rule sees them fixed
#: (a product) or unlabelled (uniform).
STRUCTURED: set = set()
#: Rules that read index tensors' ``values`` (:class:`~nfncompile.frontend.labels.TensorLabels`)
#: themselves; for every other rule, the neurons an input's values index are fixed first.
VALUE_RULES: set = set()


class Unsupported(Exception):
    """Raised inside a rule: fall back to the conservative rule with this reason."""


def module_rule(module: Any) -> Rule | None:
    """The rule for ``module``'s class, looked up along its MRO (a ``Conv2d`` subclass that
    pads itself is a conv), or ``None``.

    >>> import torch
    >>> class Padded(torch.nn.Conv2d): ...
    >>> module_rule(Padded(1, 1, 3)) is module_rule(torch.nn.Conv2d(1, 1, 3)) is not None
    True
    >>> module_rule(torch.nn.Module()) is None
    True
    """
    for t in type(module).__mro__:
        rule = MODULE_RULES.get(t)
        if rule is not None:
            return rule
    return None


def register_module(*types: type) -> Callable[[Rule], Rule]:
    """Register a rule ``rule(analysis, module, target, args, kwargs) -> value`` for module
    types (looked up along the MRO, so base classes cover their subclasses)."""

    def deco(fn: Rule) -> Rule:
        for t in types:
            MODULE_RULES[t] = fn
        return fn

    return deco


def register_function(*targets: Any) -> Callable[[Rule], Rule]:
    """Register a rule ``rule(analysis, args, kwargs) -> value`` for call_function targets."""

    def deco(fn: Rule) -> Rule:
        for t in targets:
            if t is not None:
                FUNCTION_RULES[t] = fn
        return fn

    return deco


def register_method(*names: str) -> Callable[[Rule], Rule]:
    """Register a rule ``rule(analysis, args, kwargs) -> value`` for tensor method names."""

    def deco(fn: Rule) -> Rule:
        for n in names:
            METHOD_RULES[n] = fn
        return fn

    return deco


def structured(fn: Rule) -> Rule:
    """Mark a rule as reading :class:`~nfncompile.frontend.labels.Prod` and
    :data:`~nfncompile.frontend.labels.UNIFORM` labels itself (see :data:`STRUCTURED`)."""
    STRUCTURED.add(fn)
    return fn


def reads_values(fn: Rule) -> Rule:
    """Mark a rule as reading index tensors' ``values`` itself (see :data:`VALUE_RULES`)."""
    VALUE_RULES.add(fn)
    return fn


def arg(args: tuple, kwargs: dict, i: int, name: str, default: Any = None) -> Any:
    """Argument ``name`` of a call, given by keyword or at position ``i``.

    >>> arg((1, 2), {}, 1, "dim"), arg((1,), {"dim": 3}, 1, "dim"), arg((1,), {}, 1, "dim", 0)
    (2, 3, 0)
    """
    if name in kwargs:
        return kwargs[name]
    return args[i] if len(args) > i else default


def norm_dim(d: int, ndim: int) -> int:
    """A dim index made non-negative.

    >>> norm_dim(-1, 4)
    3
    """
    return d + ndim if d < 0 else d


def module_nd(mod: nn.Module, default: int = 2) -> int:
    """Spatial dims of a ``*1d`` / ``*2d`` / ``*3d`` module (``default`` otherwise).

    >>> module_nd(nn.MaxPool1d(2)), module_nd(nn.Upsample())
    (1, 2)
    """
    name = type(mod).__name__
    for k in ("1d", "2d", "3d"):
        if name.endswith(k):
            return int(k[0])
    return default
