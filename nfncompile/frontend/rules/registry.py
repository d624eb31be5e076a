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
    "class_rule",
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
    """The rule for ``module``'s class, looked up along its MRO, or ``None``.

    A subclass is read by its base class's rule only where it computes what the base class
    does: its own classes (those not in torch) write neither ``forward`` nor anything the
    ``forward`` it runs reads through ``self`` (a conv's ``_conv_forward``, a ``weight``
    property), so a ``Conv2d`` subclass that only sets its arguments is a conv. One that
    writes its own may compute anything (segmentation_models_pytorch's ``LayerNorm``
    normalises the channels of a ``(B, C, H, W)`` map, where ``nn.LayerNorm`` normalises the
    last dim): it has no rule, so the tracer goes through it, or keeps it as one call that is
    probed.

    >>> import torch
    >>> class Arguments(torch.nn.Conv2d): ...
    >>> module_rule(Arguments(1, 1, 3)) is module_rule(torch.nn.Conv2d(1, 1, 3)) is not None
    True
    >>> class Channels(torch.nn.LayerNorm):
    ...     def forward(self, x):
    ...         return super().forward(x.transpose(1, -1)).transpose(1, -1)
    >>> class Standardised(torch.nn.Conv2d):
    ...     def _conv_forward(self, x, weight, bias):
    ...         return super()._conv_forward(x, weight - weight.mean((1, 2, 3), True), bias)
    >>> module_rule(Channels(4)), module_rule(Standardised(1, 1, 3))
    (None, None)
    >>> module_rule(torch.nn.Module()) is None
    True
    """
    mro = type(module).__mro__
    for k, t in enumerate(mro):
        rule = MODULE_RULES.get(t)
        if rule is not None:
            return None if _rewrites(mro[:k], type(module).forward) else rule
    return None


def class_rule(cls: type) -> Rule | None:
    """The rule for instances of ``cls`` itself, looked up along its MRO (a subclass that
    calls ``super().forward`` runs its base class's forward, which this rule reads).

    >>> import torch
    >>> class_rule(torch.nn.LSTM) is module_rule(torch.nn.LSTM(1, 1)) is not None
    True
    """
    return next((MODULE_RULES[t] for t in cls.__mro__ if t in MODULE_RULES), None)


def _rewrites(classes: tuple, forward: Any) -> bool:
    """Whether any of ``classes`` outside torch (torch's own subclasses, ``nn.Dropout`` under
    the rule of every dropout, are what their rule was written for) defines ``forward`` or a
    name that ``forward`` reads."""
    code = getattr(forward, "__code__", None)
    read = {"forward", *(code.co_names if code is not None else ())}
    return any(
        not c.__module__.startswith("torch.") and not read.isdisjoint(vars(c)) for c in classes
    )


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
