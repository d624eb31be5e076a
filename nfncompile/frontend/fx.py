"""Stage 1 of the front end: read a model with torch.fx and record every node's shape.

:func:`trace_module` symbolically traces an ``nn.Module`` (in eval mode: the function that is
analysed is the one verification checks) with :class:`LeafFallbackTracer` and runs a
:class:`~torch.fx.passes.shape_prop.ShapeProp` pass on the example input. Every
tensor-producing node gets ``node.meta["tensor_meta"]`` (shape, dtype) and every other node
its concrete Python value in ``node.meta["nfn_value"]`` (sizes, ints, slices), which the
symmetry analysis (:mod:`nfncompile.frontend.analysis`) reads.

A submodule whose forward torch.fx cannot trace (padding computed with ``math.ceil`` on input
shapes, control flow on a tensor, an ``assert`` on a shape) is kept as one ``call_module``
node: shape propagation runs the real module, and the analysis applies the rule of its class
(found along the MRO: a ``Conv2d`` subclass is still a conv) or probes it
(:mod:`nfncompile.frontend.probe`). Its node's ``meta["nfn_leaf"]`` is a :class:`LeafCall`
saying why. Where the model's own forward cannot be traced (it branches on a shape, as RAFT's
does), or submodules were kept as one call, it is traced again by
:class:`ShapeSpecialisingTracer`, which fixes the example input's shapes and dtypes
(``gm.meta["nfn_specialised"]`` says where the plain trace failed); a submodule that checks its
input's shape or dtype (Hugging Face's ``ViTModel``) is then read op by op. A forward behind a
``functools.wraps`` decorator taking ``(*args, **kwargs)`` (Hugging Face's
``@can_return_tuple``) is called as the example calls it.

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

import builtins
import contextlib
import copy
import dataclasses
import enum
import functools
import gc
import inspect
import logging
import math
import operator
import os
import random
import re
import sys
import traceback
import types
import warnings
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx
import torch.fx._symbolic_trace as fx_tracing
import torch.nn.functional as F
import torch.nn.modules.transformer as transformer_module
import torch.utils._pytree as pytree
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensor,
    FakeTensorMode,
)
from torch.fx._symbolic_trace import _maybe_revert_all_patches
from torch.fx._symbolic_trace import _wrapped_fns_to_patch as _WRAPPED
from torch.fx.graph import magic_methods, reflectable_magic_methods
from torch.fx.node import map_aggregate
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata, _extract_tensor_metadata
from torch.nn.attention.flex_attention import flex_attention
from torch.nn.parameter import is_lazy
from torch.nn.utils import parametrize
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence
from torch.overrides import TorchFunctionMode

from ..errors import TraceError
from . import einops_backend
from .checks import passing_truth
from .rules.registry import class_rule, module_rule
from .vmap import vmap_as_loop

__all__ = [
    "FAKE_ABOVE",
    "trace_module",
    "LeafFallbackTracer",
    "LeafCall",
    "ShapeSpecialisingTracer",
    "NodeShapeProp",
    "trace_graph",
    "PlainArgsInterpreter",
    "as_args",
    "attributes_kept",
    "copy_model",
    "graph_differs",
    "compiled_as_eager",
    "same_draws",
    "unwrapped",
    "wrapped_targets",
]

#: Parameter elements above which :func:`trace_module` propagates shapes on fake tensors.
FAKE_ABOVE = 4_000_000

_ADVICE = (
    "To trace it anyway: wrap the offending function with torch.fx.wrap(...) or move the "
    "offending code into a submodule (either is then kept as one call and probed), or remove "
    "the data-dependent control flow (branch on a constructor argument instead of on a "
    "tensor); otherwise write a WeightSpaceSpec by hand (examples in specs/weight_spaces/)."
)
_TYPE_ASKED = "asks whether a traced value is a tensor, tuple or list, which plain fx answers no"
#: torch's own source files (with the separator: torchvision's, torchaudio's and torchtune's
#: model code sits beside it under names that begin with ``torch``)
_TORCH = os.path.dirname(torch.__file__) + os.sep
_HERE = os.path.dirname(__file__) + os.sep
_ISINSTANCE = builtins.isinstance


@dataclass(frozen=True)
class LeafCall:
    """A submodule kept as one call because torch.fx could not trace its forward.

    Attributes
    ----------
    module : str
        Its qualified name in the model.
    kind : str
        Its class name.
    error : str
        What tracing its forward raised.
    where : str
        The source line that raised (``file:line in function: code``), or ``""``.
    """

    module: str
    kind: str
    error: str
    where: str

    def __str__(self) -> str:
        at = f" at {self.where}" if self.where else ""
        return f"{self.kind} {self.module}: {self.error}{at}"


def raised_at(e: BaseException) -> str:
    """The innermost source line outside torch that the traceback of ``e`` passes through."""
    frames = [
        f
        for f in traceback.extract_tb(e.__traceback__)
        if not f.filename.startswith(_TORCH) and f.filename != __file__
    ]
    return _source_line(frames[-1]) if frames else ""


def _called_at(frame: types.FrameType) -> str:
    """``frame``'s source line where it is the forward's own code, ``""`` where it is torch's
    or this front end's (whose type checks of a proxy are their own)."""
    if frame.f_code.co_filename.startswith((_TORCH, _HERE)):
        return ""
    return _frame_line(frame)


def _frame_line(frame: types.FrameType) -> str:
    """``frame``'s current source line, as :func:`_source_line` writes it."""
    return _source_line(traceback.extract_stack(frame, limit=1)[0])


#: words of an error about a tensor's dtype rather than its shape
_DTYPE_WORDS = re.compile(r"\b(dtype|Double|Half|BFloat16|float64|float16|bfloat16)\b")


def _propagation_hint(e: Exception) -> str:
    """What to check where running a node on the example input failed: its shape, or, where
    the error names a dtype, the dtype (a kernel that takes only some: ``grouped_mm`` on a
    CPU takes float32, bfloat16 and float16, so a float64 model whose experts use it fails
    its own forward)."""
    if _DTYPE_WORDS.search(str(e)):
        return (
            "Check that the model runs in the example input's dtype and in its own: some "
            "kernels take only some dtypes (grouped_mm on a CPU: float32, bfloat16, float16; "
            "a transformers mixture of experts in float64 runs with "
            "experts_implementation='eager')."
        )
    return "Check that the example input has the shape the model expects."


def _check_passed(node: torch.fx.Node, result: Any) -> None:
    """Raise where ``node`` is a check the trace took as passing (``assert (a == b).all()``,
    :meth:`_ShapeProxy._truth`) and its ``result`` on the example says it fails: the model
    raises on the example. Unknown on fake tensors, which hold no values."""
    check = node.meta.get("nfn_check")
    if check is None or not isinstance(result, torch.Tensor) or isinstance(result, FakeTensor):
        return
    truth, where = check
    if result.numel() == 1 and bool(result) != truth:
        raise TraceError(
            f"the example input fails a check of the forward at {where} (node {node.name} is "
            f"{not truth} on it, and the forward raises where it is): give an example input "
            "the model runs on"
        )


def _source_line(f: traceback.FrameSummary) -> str:
    """``file:line in function: code``."""
    return f"{f.filename}:{f.lineno} in {f.name}: {(f.line or '').strip()}"


def _error(e: BaseException, limit: int = 200) -> str:
    text = " ".join(f"{type(e).__name__}: {e}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: packing a batch of sequences for a recurrent layer and padding it back: fx refused
#: packing's checks of the lengths (:mod:`~nfncompile.frontend.rules.recurrent` reads them)
_PACKING = (pack_padded_sequence, pad_packed_sequence)
#: functions recorded as one call wherever a forward calls them, for their rules: flex
#: attention (fx traced into its Python implementation, and the probe of the module around it
#: fixed every space it touched; :mod:`~nfncompile.frontend.rules.attention`) and packing
_RECORDED = (flex_attention, *_PACKING)


@contextlib.contextmanager
def _not_fx_tracing() -> Iterator[None]:
    """While it lasts, torch's own code does not see fx tracing (flex attention, run for
    real on a traced node's values, took fx's path and refused its block mask functions).
    torch keeps that flag in a global (2.13) or per thread (2.14 on); another torch is left
    as it is."""
    context = getattr(fx_tracing, "_is_fx_tracing_context", None)
    if context is not None:
        with context(False):
            yield
        return
    if not hasattr(fx_tracing, "_is_fx_tracing_flag"):
        yield
        return
    tracing, fx_tracing._is_fx_tracing_flag = fx_tracing._is_fx_tracing_flag, False
    try:
        yield
    finally:
        fx_tracing._is_fx_tracing_flag = tracing


def _named(fn: torch.jit.ScriptFunction) -> Callable[..., Any]:
    """A Python function calling the TorchScript function ``fn``, named as it is: fx writes a
    call of ``fn`` itself as ``torch.jit.ScriptFunction(...)`` (it takes the object for torch's
    own, by its module), which does not run (DAC's ``snake``)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    call.__name__ = call.__qualname__ = fn.name
    return call


def _bound(fns: tuple, root: torch.nn.Module) -> list:
    """``(namespace, name, value, fn)`` for every name that holds one of ``fns``, or a
    ``torch.compile`` of one, whatever the name, in the globals of ``root``'s forwards and of
    the functions they reach through their globals (a helper of another module calls it:
    vit-pytorch's ``nd_attention``), and in the modules that define ``fns``."""
    spaces = {id(n): n for f in fns for n in [vars(inspect.getmodule(f))]}
    frontier = [_forward_globals(m) for m in root.modules()]
    for _ in range(_HELPER_DEPTH):
        frontier = [n for n in frontier if id(n) not in spaces]
        spaces.update((id(n), n) for n in frontier)
        frontier = [
            v.__globals__
            for names in frontier
            for v in list(names.values())
            if isinstance(v, types.FunctionType)
            and str(v.__module__).split(".")[0] not in _OWN_PACKAGES
        ]
    found = []
    for names in spaces.values():
        for name, value in list(names.items()):
            target = _compiled_original(value)
            if any(target is f for f in fns):
                found.append((names, name, value, target))
    return found


#: how many calls deep :func:`_bound` follows functions from a forward
_HELPER_DEPTH = 3
#: packages whose functions :func:`_bound` does not follow
_OWN_PACKAGES = frozenset({"torch", "nfncompile", "numpy", "builtins"})


def _compiled_original(fn: Any) -> Any:
    """The function ``torch.compile`` made ``fn`` of, else ``fn``."""
    if not isinstance(fn, types.FunctionType):  # (a module's global may be any object)
        return fn
    original = getattr(fn, "_torchdynamo_orig_callable", None)
    return original if callable(original) else fn


def _classes(cls: Any) -> tuple:
    """``isinstance``'s second argument as a tuple of classes (a tuple may nest)."""
    if not _ISINSTANCE(cls, tuple):  # (builtins.isinstance may be the traced one)
        return (cls,)
    return tuple(c for part in cls for c in _classes(part))


#: classes with a rule whose forward fx refuses (the recurrent layers check packed inputs and
#: states): a subclass's ``super().forward`` is recorded as one call (``_base_forwards``)
_UNTRACEABLE_BASES = (torch.nn.RNNBase,)


class _ClassAttributes:
    """A class's attributes as a namespace the tracer's patches write (``vars(cls)`` is
    read-only)."""

    def __init__(self, cls: type) -> None:
        self.cls = cls

    def __setitem__(self, name: str, value: Any) -> None:
        setattr(self.cls, name, value)


class LeafFallbackTracer(torch.fx.Tracer):
    """A :class:`torch.fx.Tracer` that keeps a submodule whose forward it cannot trace as one
    ``call_module`` node.

    When tracing a submodule's forward raises (control flow on a proxy, ``math.ceil`` of a
    proxy, ...), the nodes it created are rolled back and the submodule is recorded as a leaf
    (a :class:`LeafCall` in its node's ``meta["nfn_leaf"]`` and in :attr:`leaves`). The
    innermost failing module becomes the leaf; the root module's forward is never made one.

    Examples
    --------
    >>> import math
    >>> class Pad(torch.nn.Module):
    ...     def forward(self, x):
    ...         pad = max(math.ceil(x.shape[-1] / 2) - 2, 0)  # bool() of a proxy: untraceable
    ...         return torch.nn.functional.pad(x, [pad] * 4)
    >>> net = torch.nn.Sequential(Pad(), torch.nn.ReLU())
    >>> tracer = LeafFallbackTracer()
    >>> gm = torch.fx.GraphModule(net, tracer.trace(net))
    >>> [(n.op, n.target) for n in gm.graph.nodes]
    [('placeholder', 'input'), ('call_module', '0'), ('call_module', '1'), ('output', 'output')]
    >>> print(tracer.leaves[0].error)
    TraceError: symbolically traced variables cannot be used as inputs to control flow
    """

    def __init__(self) -> None:
        super().__init__()
        self.leaves: list[LeafCall] = []
        self._forced: set[int] = set()
        self._param_cache: dict | None = None
        self._state_cache: dict = {}  # proxies of parameters read by _StateReads
        self._objects = 0  # objects fx cannot record, kept as graph constants
        #: record ``torch.zeros`` & co. (:data:`FACTORIES`) as nodes rather than constants
        self.trace_factories = False
        self._eager = False  # a node being run for real (the shape-specialising trace)
        #: the class whose forward the next call_module node runs (a subclass's
        #: ``super().forward``; see :meth:`_base_forwards`)
        self._base_next: type | None = None
        #: where the forward first asked whether a traced value is a tensor, a tuple or a list
        #: (``isinstance(x, torch.Tensor)``, ``torch.is_tensor``, ``torch.jit.isinstance``,
        #: ``isinstance(out, tuple)``): plain fx answers no and traces the other branch; ``""``
        #: where it never asked
        self.type_asked = ""
        #: why the trace with the example's values fixed was not taken (see :func:`trace_graph`)
        self.values_refused = ""

    def trace(self, root: Any, concrete_args: dict | None = None) -> torch.fx.Graph:
        if not isinstance(root, torch.nn.Module):
            return super().trace(root, concrete_args)
        patches = self._patches(root)
        try:
            for names, name, _, patched in patches.values():
                names[name] = patched
            with _StateReads(self, root), _distributions_unchecked():
                return super().trace(root, concrete_args)
        finally:
            for names, name, fn, _ in patches.values():
                names[name] = fn

    def _patches(self, root: torch.nn.Module) -> dict:
        """The global names replaced while ``root`` is traced: ``(id(namespace), name) ->
        (namespace, name, original, replacement)``."""
        patches = {}
        for m in root.modules():
            names = _forward_globals(m)
            for name, fn in names.items():
                if isinstance(fn, torch.jit.ScriptFunction):
                    # a TorchScript function a forward calls (`@torch.jit.script def swish(x)`)
                    # refuses a proxy: recorded as one call instead, which the analysis probes
                    patches[(id(names), name)] = (
                        names,
                        name,
                        fn,
                        self._recorded(_named(fn), False),
                    )
                elif (target := _compiled_original(fn)) is not fn:
                    # a torch.compile'd function, as the function it compiles
                    patches[(id(names), name)] = (names, name, fn, target)
        # one of _RECORDED as one call wherever a module holds it, compiled or not (a helper
        # of another module than the forward's calls it: vit-pytorch's `nd_attention`), and
        # torch.vmap as the loop it computes (an ensemble over stacked weights)
        bound = _bound((*_RECORDED, torch.vmap), root)
        for names, name, fn, target in [*bound, (vars(torch), "vmap", torch.vmap, torch.vmap)]:
            patched = vmap_as_loop if target is torch.vmap else self._recorded(target, False)
            patches[(id(names), name)] = (names, name, fn, patched)
        patches.update(self._base_forwards(root))
        for name in RANDOM + (FACTORIES if self.trace_factories else ()):
            fn = getattr(torch, name)
            patches[(id(torch), name)] = (vars(torch), name, fn, self._recorded(fn))
        for name in CHECKS:  # an assertion on a traced value: not in the graph
            check = getattr(torch, name)
            patches[(id(torch), name)] = (vars(torch), name, check, _unless_traced(check))
        for name in TYPED_FACTORIES if self.trace_factories else ():
            cls = getattr(torch, name)
            patches[(id(torch), name)] = (vars(torch), name, cls, self._recorded_type(cls))
        is_callable = builtins.callable

        def traced_callable(obj: Any) -> bool:
            # a proxy has __call__ (to record calls of traced functions), so `callable(x)` of a
            # traced tensor was True and x-transformers' `default(context, x)` called `x()`
            if isinstance(obj, torch.fx.Proxy) and not self._eager:
                value = obj._value() if isinstance(obj, _ShapeProxy) else _UNKNOWN
                return value is not _UNKNOWN and is_callable(value)
            return is_callable(obj)

        patches[(id(builtins), "callable")] = (
            vars(builtins), "callable", is_callable, traced_callable
        )  # fmt: skip
        is_instance, is_tensor, jit_isinstance = _ISINSTANCE, torch.is_tensor, torch.jit.isinstance

        def asked(obj: Any, answer: bool, cls: Any = torch.Tensor) -> bool:
            # the question of the forward's own code (the caller of the patched function)
            if answer or self.type_asked or not is_instance(obj, torch.fx.Proxy):
                return answer
            # a traced value may be a tensor, or a tuple or list (a kept submodule's outputs:
            # an LSTM's `(h_n, c_n)`), where plain fx says it is none
            if any(c in (torch.Tensor, tuple, list) for c in _classes(cls)):
                self.type_asked = _called_at(sys._getframe(2))
            return answer

        def traced_isinstance(obj: Any, cls: Any) -> bool:
            return asked(obj, is_instance(obj, cls), cls)

        def traced_is_tensor(obj: Any) -> bool:
            return asked(obj, is_tensor(obj))

        def traced_jit_isinstance(obj: Any, cls: Any) -> bool:
            return asked(obj, jit_isinstance(obj, cls), cls)

        for names, name, fn, patched in (
            (vars(builtins), "isinstance", is_instance, traced_isinstance),
            (vars(torch), "is_tensor", is_tensor, traced_is_tensor),
            (vars(torch.jit), "isinstance", jit_isinstance, traced_jit_isinstance),
        ):
            patches[(id(names), name)] = (names, name, fn, patched)
        return patches

    def _base_forwards(self, root: torch.nn.Module) -> dict:
        """Patches of the ``forward`` of every class with a rule whose forward fx refuses
        (:data:`_UNTRACEABLE_BASES`) that a module of ``root`` subclasses with a ``forward`` of
        its own (which the tracer goes through): its ``super().forward(...)`` on traced values
        is recorded as one call of the module that runs the base class's forward, read by the
        base class's rule. Traced into, it was refused (``nn.LSTM.forward``'s checks:
        pytorch-forecasting's LSTM, which packs its sequences by their lengths first, was kept
        as one call and every unit fixed). A base forward fx traces (a conv's, a norm's) is
        still traced: the graph then runs what the model runs."""
        patches = {}
        for m in root.modules():
            if module_rule(m) is not None or not isinstance(m, _UNTRACEABLE_BASES):
                continue
            if parametrize.is_parametrized(m) or m._forward_hooks or m._forward_pre_hooks:
                continue  # traced through for its computed weights or its hooks
            base = next((t for t in type(m).__mro__[1:] if class_rule(t) is not None), None)
            if base is None or (id(base), "forward") in patches or "forward" not in vars(base):
                continue
            fn = vars(base)["forward"]

            def forward(mod: Any, *args: Any, _fn: Callable = fn, _base: type = base, **kw: Any):
                if self._eager or type(mod) is _base or not _traced((args, kw)):
                    return _fn(mod, *args, **kw)
                self._base_next = _base
                return self.create_proxy("call_module", self.path_of_module(mod), args, kw)

            patches[(id(base), "forward")] = (_ClassAttributes(base), "forward", fn, forward)
        return patches

    def _recorded(self, fn: Callable, always: bool = True) -> Callable:
        """``fn``, recorded as a ``call_function`` node while tracing (``always``, or when a
        proxy is among its arguments), called as it is when a node is run for real."""

        def call(*args: Any, **kwargs: Any) -> Any:
            if self._eager or not (always or _traced((args, kwargs))):
                return fn(*args, **kwargs)
            return self.create_proxy("call_function", fn, args, kwargs)

        return call

    def _recorded_type(self, cls: type) -> type:
        """A legacy tensor type (``torch.FloatTensor``) whose calls are recorded as
        :meth:`_recorded` records a function's, and which ``isinstance`` still reads as
        ``cls``."""
        call = self._recorded(cls)

        class Recorded(type):
            def __instancecheck__(self, obj: Any) -> bool:
                return isinstance(obj, cls)

            def __call__(self, *args: Any, **kwargs: Any) -> Any:
                return call(*args, **kwargs)

        return Recorded(cls.__name__, (), {})

    def create_proxy(
        self, kind: str, target: Any, args: tuple, kwargs: dict, *rest: Any, **options: Any
    ) -> torch.fx.Proxy:
        if kind in ("call_method", "call_function") and _target_name(target) in _SIZES_ONLY:
            # dims or sizes given as 0-d integer tensors (compressai's `x.permute(*perm)` of
            # a `torch.tensor` perm), which torch reads as ints: the ints, not tensor constants
            args = (args[0], *pytree.tree_map(_as_int, tuple(args[1:])))
            kwargs = pytree.tree_map(_as_int, kwargs)
        if kind in ("call_method", "call_function") and _target_name(target) == "repeat_interleave":
            # repeats given as a tensor of one count (pytorch-forecasting's N-HiTS:
            # `torch.tensor([output_size])`), which torch reads as that count: the int (a tensor
            # of repeats decides the output's shape by its values, which fake tensors lack)
            args = (args[0], *(_one_count(a) for a in args[1:2]), *args[2:])
            kwargs = {k: _one_count(v) if k == "repeats" else v for k, v in kwargs.items()}
        return super().create_proxy(kind, target, args, kwargs, *rest, **options)

    def create_node(self, *args: Any, **kwargs: Any) -> torch.fx.Node:
        node = super().create_node(*args, **kwargs)
        if self._base_next is not None and node.op == "call_module":
            node.meta["nfn_base"], self._base_next = self._base_next, None
        if writes(node) and isinstance(node.args[0], torch.fx.Node):
            target = node.args[0]
            if target.op == "get_attr" and str(target.target).startswith("_tensor_constant"):
                raise ConstantWritten(
                    f"{node.format_node()} writes traced values into a tensor the forward "
                    "made with fixed arguments (a constant of the graph)"
                )
        return node

    def is_leaf_module(self, m: torch.nn.Module, module_qualified_name: str) -> bool:
        """torch.nn's own modules are one call (their rules, or a probe), but for one with
        weights or buffers of its own that no rule reads (``nn.MultiheadAttention``,
        ``nn.TransformerEncoderLayer``, spectral norm's power-iteration vectors), and one with
        hooks or parametrizations, and one whose weights were swapped for traced values
        (``torch.func.functional_call``): traced through, its weights are labelled by the ops
        that read them, where a probe would fix every space they touch."""
        if any(
            isinstance(v, torch.fx.Proxy) for v in (*m._parameters.values(), *m._buffers.values())
        ):
            # its weights swapped for traced values (torch.func.functional_call with weights
            # the forward computed): its rule would read its own, so its code is traced
            return False
        if id(m) in self._forced or isinstance(m, torch.jit.ScriptModule):
            # a scripted module's code is TorchScript, not Python: one call, probed with its
            # own weights (torch.fx would record its C++ object's ``forward`` method)
            return True
        if m._forward_pre_hooks or m._forward_hooks or parametrize.is_parametrized(m):
            # fx runs a module's hooks and parametrizations only where it traces through it
            # (pruning's weight_orig * weight_mask, weight and spectral norms)
            return False
        if not super().is_leaf_module(m, module_qualified_name):
            return False
        return module_rule(m) is not None or _stateless(m)

    def proxy(self, node: torch.fx.Node) -> torch.fx.Proxy:
        return _WritableProxy(node, self)

    def create_arg(self, a: Any) -> Any:
        if issubclass(type(a), torch.fx.Proxy):
            # first, by its real type: a proxy of the shape-specialising trace answers
            # ``isinstance`` as its value would (a tensor's, a dict's)
            return a.node
        try:
            return super().create_arg(a)
        except NotImplementedError:
            # an object fx cannot write into code (Hugging Face's DynamicCache, passed to the
            # decoder layers and returned with the outputs): a constant of the graph, like a
            # tensor constant; nothing in it is a weight of the model
            name = f"{_OBJECT}{self._objects}"
            while hasattr(self.root, name):  # one an earlier trace bound (a retrace's)
                self._objects += 1
                name = f"{_OBJECT}{self._objects}"
            self._objects += 1
            setattr(self.root, name, a)
            return self.create_node("get_attr", name, (), {})

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict) -> Any:
        self._param_cache = parameter_proxy_cache  # to forget proxies of rolled-back nodes
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def create_args_for_root(
        self, root_fn: Callable[..., Any], is_module: bool, concrete_args: Any = None
    ) -> tuple[Callable[..., Any], list]:
        """fx's placeholders, and the root called as the example input calls it.

        fx makes the placeholders from the innermost function's parameters but calls
        ``root_fn`` with all of them positionally, through code it rewrites. A forward behind a
        ``functools.wraps`` decorator taking ``(*args, **kwargs)`` (Hugging Face's
        ``@can_return_tuple``) then had ``kwargs`` bound to its second input, and a default fx
        must flatten (a tuple: ``forward(x, sizes=(1, 2))``) made code that does not compile.
        Here the root is called as ``model(*example)`` calls it: the inputs positionally, every
        parameter left at its default (``concrete_args``) not passed at all.
        """
        if isinstance(concrete_args, tuple):  # fx's flat form, not used here
            return super().create_args_for_root(root_fn, is_module, concrete_args)
        inner = inspect.unwrap(root_fn)
        concrete_args = concrete_args or {}
        leaf = {k: v for k, v in concrete_args.items() if pytree.tree_is_leaf(v)}
        code = inner.__code__
        by_keyword = code.co_flags & inspect.CO_VARKEYWORDS or code.co_kwonlyargcount
        if inner is root_fn and len(leaf) == len(concrete_args) and not by_keyword:
            # fx's own way works (and passes ``*args`` inputs on as one tuple); a ``**kwargs``
            # it would make a placeholder, which a forward passing it on then iterates
            # (guided-diffusion's SuperResModel, DINOv2's forward(*args, is_training=False,
            # **kwargs)), is left empty below, keyword-only parameters at their defaults
            return super().create_args_for_root(root_fn, is_module, concrete_args or None)
        _, args = super().create_args_for_root(inner, is_module, leaf)
        params = inspect.signature(inner).parameters
        # fx's order: named parameters as the code lists them, then *args, then **kwargs
        var = sum(bool(code.co_flags & f) for f in (inspect.CO_VARARGS, inspect.CO_VARKEYWORDS))
        names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount + var]

        def call(*values: Any) -> Any:
            pos, kw, by_name = [], {}, False
            for name, value in zip(names, values):
                p = params[name]
                if p.kind is p.VAR_POSITIONAL:
                    pos.extend(value)  # the example's inputs (by value: the shapes' trace)
                    continue
                if p.kind is p.VAR_KEYWORD:
                    continue  # the example call passes none
                if name in concrete_args:
                    if concrete_args[name] is p.default:
                        by_name = True  # left at its default: the later inputs go by name
                        continue
                    # given without a tensor (torchgeo DOFA's list of wavelengths), which fx
                    # would flatten into a placeholder per item
                    value = concrete_args[name]
                if p.kind is p.KEYWORD_ONLY or by_name:
                    kw[name] = value
                else:
                    pos.append(value)
            return root_fn(*pos, **kw)

        return call, args

    def call_module(
        self, m: torch.nn.Module, forward: Callable[..., Any], args: tuple, kwargs: dict
    ) -> Any:
        try:
            path = self.path_of_module(m)
        except NameError:
            # a module the forward calls that is none of the model's (a module-level instance,
            # Hugging Face's kernel-hub rotary embedding): its code is traced as the forward's
            return forward(*args, **kwargs)
        if _stateless(m) and not _traced((args, kwargs)):
            # no weight and no traced value: it computes a constant, as a torch function called
            # on constants does (nflows' identity embedding of an absent context returns None,
            # which the flow then tests with ``is not None``)
            return forward(*args, **kwargs)
        if self.is_leaf_module(m, path):
            if refused := _refused(m, args, kwargs):
                raise refused  # as the call would, for the caller to catch
            return super().call_module(m, forward, args, kwargs)
        mark = len(self.graph.nodes)
        stack, calls = self.module_stack.copy(), dict(self.num_calls)
        try:
            return super().call_module(m, forward, args, kwargs)
        except ConstantWritten:
            raise  # the whole trace is made again, recording the factories
        except Exception as e:
            erased = list(self.graph.nodes)[mark:]
            for node in reversed(erased):
                self.graph.erase_node(node)
            gone = set(erased)
            for cache in (self._param_cache or {}, self._state_cache):
                for k in [k for k, p in cache.items() if p.node in gone]:
                    del cache[k]
            _forget_attributes((args, kwargs), gone)
            self.module_stack.clear()
            self.module_stack.update(stack)
            self.num_calls = calls
            if isinstance(e, TypeError) and _refused(m, args, kwargs):
                # the call itself is wrong, not the forward's code: the caller may catch it
                # (speechbrain's x-vector tries `layer(x, lengths=lens)`, then `layer(x)`)
                raise
            self._forced.add(id(m))
            leaf = LeafCall(path, type(m).__name__, _error(e), raised_at(e))
            self.leaves.append(leaf)
        proxy = super().call_module(m, forward, args, kwargs)
        if isinstance(proxy, torch.fx.Proxy):
            proxy.node.meta["nfn_leaf"] = leaf
        return proxy


def _stateless(m: torch.nn.Module) -> bool:
    """Whether ``m`` (with its submodules) holds no parameter and no buffer."""
    return next(m.parameters(), None) is None and next(m.buffers(), None) is None


def _traced(value: Any) -> bool:
    """Whether a traced value is among ``value``'s leaves (a call's arguments)."""
    return any(isinstance(v, torch.fx.Proxy) for v in pytree.tree_leaves(value))


#: shape ops whose arguments after the tensor are all dims or sizes (ints), which torch also
#: takes as 0-d integer tensors
_SIZES_ONLY = frozenset(
    ["permute", "view", "reshape", "expand", "repeat", "tile", "transpose", "swapaxes",
     "swapdims", "movedim", "moveaxis", "flip", "roll", "squeeze", "unsqueeze", "flatten",
     "unflatten", "narrow", "select", "new_zeros", "new_ones", "new_empty"]
)  # fmt: skip


def _target_name(target: Any) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", "")


def _as_int(value: Any) -> Any:
    """``value`` as a Python int where it is a 0-d integer tensor that is no traced value."""
    integer = isinstance(value, torch.Tensor) and not isinstance(value, torch.fx.Proxy)
    integer = integer and value.ndim == 0 and not value.is_floating_point()
    if integer and not value.is_complex() and value.dtype != torch.bool:
        return int(value)
    return value


def _one_count(value: Any) -> Any:
    """``value`` as a Python int where it is an integer tensor of one entry that is no traced
    value (a ``repeat_interleave`` count, which torch broadcasts to every entry)."""
    count = isinstance(value, torch.Tensor) and not isinstance(value, torch.fx.Proxy)
    if count and value.numel() == 1 and not (value.is_floating_point() or value.is_complex()):
        return int(value.reshape(()))
    return value


def _refused(m: torch.nn.Module, args: tuple, kwargs: dict) -> TypeError | None:
    """The error calling ``m``'s forward with ``args`` and ``kwargs`` raises before it runs
    (an argument it does not take), or ``None`` (also where its signature cannot be read)."""
    try:
        inspect.signature(m.forward, follow_wrapped=False).bind(*args, **kwargs)
    except TypeError as e:
        return TypeError(f"{type(m).__name__}.forward(): {e}")
    except ValueError:
        return None
    return None


def _forget_attributes(value: Any, gone: set) -> None:
    """Let the attributes of proxies in ``value`` (``x.T``, ``inter.values``), which fx records
    on first use, record their nodes again where that use was rolled back (``gone``): the call
    kept as one would otherwise read a node no longer in the graph."""
    for leaf in pytree.tree_leaves(value):
        while isinstance(leaf, torch.fx.proxy.Attribute):
            if leaf._node in gone:
                leaf._node = None
            leaf = leaf.root


@contextlib.contextmanager
def _distributions_unchecked() -> Iterator[None]:
    """torch.distributions' argument checks off by default (as ``python -O`` leaves them):
    each tests a traced value (``if not valid.all(): raise``), and none changes a value, so a
    policy's ``Categorical(logits=...)`` or ``Normal(mean, std)`` (stable-baselines3) traces."""
    Distribution = torch.distributions.Distribution
    checked = Distribution._validate_args
    Distribution.set_default_validate_args(False)
    try:
        yield
    finally:
        Distribution.set_default_validate_args(checked)


def _forward_globals(m: torch.nn.Module) -> dict:
    """The global names ``m``'s forward reads (none for a scripted module's)."""
    forward = None if isinstance(m, torch.jit.ScriptModule) else getattr(type(m), "forward", None)
    return forward.__globals__ if inspect.isfunction(forward) else {}


#: a node's value the shape-specialising trace could not compute (its shapes stay symbolic)
_UNKNOWN = object()


def _packed_as_tuples(value: Any) -> Any:
    """``value`` with every packed sequence in it (a recurrent layer's output) the plain tuple
    of its tensors: ``PackedSequence`` checks its tensors' devices when made, which tensor
    metadata (what shape propagation records) does not have."""
    if isinstance(value, PackedSequence):
        return tuple(value)
    if type(value) in (tuple, list):
        return type(value)(_packed_as_tuples(v) for v in value)
    return value


def _integral(value: Any) -> bool:
    """Whether ``value`` is a tensor of integers or booleans (ids, lengths, an edge list) of
    at most :data:`INTEGER_VALUES_UP_TO` entries, whose values the specialised trace reads."""
    return (
        isinstance(value, torch.Tensor)
        and not (value.is_floating_point() or value.is_complex())
        and value.numel() <= INTEGER_VALUES_UP_TO
    )


#: tensor factories a trace records as nodes once a constant they made was written by traced
#: values (:class:`LeafFallbackTracer`'s ``trace_factories``)
FACTORIES = ("zeros", "ones", "full", "empty", "arange", "tensor")
#: torch's checks of a condition, which transformers' ``torch_compilable_check`` calls
#: (its VLMs' ``n_image_tokens * d == image_features.numel()``): skipped where the condition
#: is a traced value, which only the data answers. An assertion leaves the graph's function
#: as it is, and the verification runs the model's own checks
CHECKS = ("_check", "_check_with", "_check_tensor_all", "_check_tensor_all_with")


def _unless_traced(check: Callable) -> Callable:
    """``check``, skipped where its condition (first argument, or second after an error
    type) is a traced value."""

    def call(*args: Any, **kwargs: Any) -> Any:
        cond = args[1:2] if check.__name__.endswith("_with") else args[:1]
        if _traced((cond, kwargs.get("cond"))):
            return None
        return check(*args, **kwargs)

    return call


#: torch's legacy tensor types, which TabNet calls as factories (``torch.FloatTensor([0.0])``),
#: recorded so too
TYPED_FACTORIES = ("FloatTensor", "DoubleTensor", "LongTensor", "IntTensor", "BoolTensor")
#: torch's random factories, recorded as nodes in every trace: with fixed arguments each would
#: otherwise be one draw made at trace time, a constant of the graph (Pointnet++'s
#: ``torch.randint(0, N, (B,))``), and the graph would not draw as the model does
RANDOM = ("rand", "randn", "randint", "randperm")


#: torch functions and methods that draw random numbers: a trace keeps each such call where
#: nothing reads it, so that the draws after it are the ones the model makes
_DRAWS = frozenset(
    {*RANDOM, "rand_like", "randn_like", "randint_like", "bernoulli", "multinomial", "normal"}
    | {"poisson", "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout"}
    | {"feature_alpha_dropout", "rrelu", "gumbel_softmax", "native_dropout"}
)
#: the in-place operators (``x += y`` on a view writes the tensor it views)
_IN_PLACE_OPERATORS = frozenset(
    getattr(operator, f"i{op}")
    for op in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and")
    + ("or", "xor", "lshift", "rshift", "concat")
) | {operator.delitem}
#: modules whose functions are pure where their name does not end in ``_`` and they take no
#: ``out=``/``inplace=True``
_PURE_MODULES = ("torch", "operator", "_operator", "math", "builtins", "einops")


def _effectful(node: torch.fx.Node) -> bool:
    """Whether ``node`` may matter where nothing reads its result: an in-place write (a method
    or function named with a trailing ``_``, ``out=``, ``inplace=True``, ``x[i] = v``, ``+=``),
    a random draw, a call into code outside torch (which may keep what it is given), a module
    that is not torch's own, a check of the forward the example must pass, or what fx itself
    keeps (assertions, the graph's inputs)."""
    if node.is_impure() or "out" in node.kwargs or writes(node):
        return True
    if "nfn_check" in node.meta:  # a check the example must pass (shape propagation asks)
        return True
    target = node.target
    if node.op == "call_method":
        # (a method no tensor has is an object's or a container's: ``mems.append(h)``)
        own = hasattr(torch.Tensor, target)
        return not own or target.startswith("__i") or target in _EFFECT_METHODS
    if node.op == "call_module":
        module = node.graph.owning_module.get_submodule(target)
        kind = type(module)
        random = module.training and ("Dropout" in kind.__name__ or "RReLU" in kind.__name__)
        return not kind.__module__.startswith("torch.nn") or random
    if node.op == "call_function":
        name = getattr(target, "__name__", "")
        where = (getattr(target, "__module__", None) or "").split(".")[0]
        pure = where in _PURE_MODULES or isinstance(target, torch._ops.OpOverload)
        return not pure or name in _DRAWS or target in _IN_PLACE_OPERATORS
    return False


#: methods that matter whatever reads their result (besides those named with a trailing ``_``)
_EFFECT_METHODS = frozenset(
    {*_DRAWS, "__setitem__", "__delitem__", "backward", "register_hook", "retain_grad"}
)


def _in_place_flag(node: torch.fx.Node) -> bool:
    """Whether ``node`` is asked to write its input: ``inplace=True`` given by keyword or by
    position (``F.relu(x, True)``), or a module made with it (``nn.ReLU(inplace=True)``)."""
    if node.kwargs.get("inplace") is True:
        return True
    if node.op == "call_module":
        root = node.graph.owning_module  # (none while the graph is being traced)
        return root is not None and getattr(root.get_submodule(node.target), "inplace", 0) is True
    at = _inplace_position(node.target) if node.op == "call_function" else None
    return at is not None and at < len(node.args) and node.args[at] is True


@functools.lru_cache(maxsize=512)
def _inplace_position(target: Callable) -> int | None:
    """The position of ``target``'s ``inplace`` parameter, if it has one."""
    try:
        names = list(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        return None
    return names.index("inplace") if "inplace" in names else None


def without_dead_code(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """``gm`` with the calls whose results reach no output removed (and none that may matter
    otherwise: :func:`_effectful`), in place: what a forward computes and drops cannot limit
    its symmetry (labml's LSTM stacks every layer's state, which its caller drops; an unused
    stack tied all the layers' units).

    >>> class M(torch.nn.Module):
    ...     def forward(self, x):
    ...         unused = torch.stack([x, x])
    ...         return x.relu()
    >>> gm = without_dead_code(torch.fx.symbolic_trace(M()))
    >>> [n.op for n in gm.graph.nodes]
    ['placeholder', 'call_method', 'output']
    """
    # (a node something reads stays whatever it is: only the unread ones are asked)
    changed = _drop_unread_writes(gm.graph)
    if gm.graph.eliminate_dead_code(is_impure_node=lambda n: bool(n.users) or _effectful(n)):
        changed = True
    if changed:
        gm.recompile()
    return gm


#: calls that make a tensor of their own, which nothing else holds
_FRESH = frozenset(
    {"empty", "empty_like", "zeros", "zeros_like", "ones", "ones_like", "full", "full_like"}
    | {"new_empty", "new_zeros", "new_ones", "new_full", "clone"}
)


def _drop_unread_writes(graph: torch.fx.Graph) -> bool:
    """Remove the writes into a tensor the forward makes (``torch.empty_like``, ``zeros``,
    ``new_zeros``, ``clone``) where nothing reads it or any view of it (its
    :func:`aliases`): spikingjelly's stacked recurrent layers write each layer's final state
    into one buffer, which their caller drops, and the writes tied every layer's units.
    Returns whether any was."""
    changed = False
    for fresh in list(graph.nodes):
        if fresh.op not in ("call_function", "call_method") or _name_of(fresh) not in _FRESH:
            continue
        family = aliases(fresh)
        if len(family) == 1 or any(u not in family for m in family for u in m.users):
            continue
        for node in reversed([n for n in graph.nodes if n in family and n is not fresh]):
            graph.erase_node(node)
            changed = True
    return changed


#: ops whose result may share memory with their first argument (a view, or the argument
#: itself): a write into one is a write into the others
_VIEW_METHODS = frozenset(
    ["view", "view_as", "reshape", "reshape_as", "permute", "transpose", "t", "narrow",
     "select", "unsqueeze", "squeeze", "flatten", "unflatten", "expand", "expand_as", "split",
     "chunk", "unbind", "tensor_split", "movedim", "moveaxis", "swapaxes", "swapdims",
     "diagonal", "as_strided", "detach", "contiguous", "to", "type", "type_as", "float",
     "double", "half", "bfloat16", "unfold", "real"]
)  # fmt: skip
_VIEW_FUNCTIONS = frozenset(
    [operator.getitem, torch.reshape, torch.flatten, torch.transpose, torch.permute,
     torch.squeeze, torch.unsqueeze, torch.narrow, torch.select, torch.split, torch.chunk,
     torch.unbind, torch.tensor_split, torch.movedim, torch.swapaxes, torch.diagonal, torch.t,
     torch.detach, F.dropout, F.alpha_dropout, F.feature_alpha_dropout, F.dropout1d,
     F.dropout2d, F.dropout3d]
)  # fmt: skip
_VIEW_MODULES = (
    torch.nn.Identity,
    torch.nn.Flatten,
    torch.nn.Unflatten,
    torch.nn.modules.dropout._DropoutNd,
)


def views(n: torch.fx.Node) -> bool:
    """Whether ``n``'s result may share its first argument's memory (an index that holds a
    sequence or a tensor copies what it reads)."""
    if n.op == "call_function" and n.target is operator.getitem and len(n.args) == 2:
        entries = n.args[1] if isinstance(n.args[1], tuple) else (n.args[1],)
        if any(_advanced_entry(i) for i in entries):
            return False
    if n.op == "call_method":
        return n.target in _VIEW_METHODS or writes(n)
    if n.op == "call_function":
        return n.target in _VIEW_FUNCTIONS or writes(n)
    if n.op == "call_module":
        mod = n.graph.owning_module.get_submodule(n.target)
        return isinstance(mod, _VIEW_MODULES) or getattr(mod, "inplace", False) is True
    return False


def _advanced_entry(i: Any) -> bool:
    """Whether index entry ``i`` (a graph argument) is an advanced index: a sequence or a
    tensor, not an integer, a slice, ``None`` or ``...``."""
    if isinstance(i, (list, tuple, torch.Tensor)):
        return True
    if isinstance(i, torch.fx.Node):
        value = i.meta.get("val", i.meta.get("tensor_meta"))
        return value is not None and hasattr(value, "shape") and hasattr(value, "dtype")
    return False


def aliases(node: torch.fx.Node) -> set:
    """``node`` and every node that may share its memory: up the chain of views it was made
    by, then down through every view made of those."""
    root = node
    while views(root) and root.args and isinstance(root.args[0], torch.fx.Node):
        root = root.args[0]
    family, todo = {root}, [root]
    while todo:
        for user in todo.pop().users:
            if user not in family and views(user) and user.args and user.args[0] in family:
                family.add(user)
                todo.append(user)
    return family


def _name_of(node: torch.fx.Node) -> str:
    """The name of the function or method ``node`` calls."""
    if node.op == "call_method":
        return node.target
    return getattr(node.target, "__name__", "") if node.op == "call_function" else ""


#: functions and property reads of a tensor that give no tensor (its shape, its dtype):
#: :class:`_StateReads` leaves them to the parameter itself
_SHAPE_READS = frozenset(
    {"__get__", "dim", "size", "numel", "nelement", "ndimension", "__len__", "stride"}
    | {"is_floating_point", "is_complex", "is_contiguous", "element_size", "get_device"}
    | {"__repr__", "__format__", "__hash__", "data_ptr", "storage_offset"}
)
#: tensor methods that turn a value into a Python one (a branch, an int)
_VALUE_READS = frozenset({"__bool__", "__int__", "__float__", "__index__", "item", "tolist"})


_magic = [m for m in magic_methods if hasattr(operator, m)]  # fx lists a `div` Python 3 lacks
_reflectable = [m for m in reflectable_magic_methods if hasattr(operator, m)]
#: a tensor's operator methods (``w[:, 1:]``, ``w - v``, ``2 * w``) as fx records them on a proxy:
#: ``__name__`` -> (the ``operator`` function, whether its operands come reversed)
_OPERATORS = {
    **{f"__{m.strip('_')}__": (getattr(operator, m), False) for m in _magic},
    **{f"__r{m.strip('_')}__": (getattr(operator, m), True) for m in _reflectable},
}


class _StateReads(TorchFunctionMode):
    """While a model is traced: an op on one of its parameters or buffers themselves reads
    them through ``get_attr`` nodes.

    fx makes a proxy of a parameter when the forward reads it as a module attribute
    (``self.weight``). A forward that takes its weights from ``named_parameters()`` (SIREN's and
    torchmeta's MetaModules, MAML-style code passing a ``params`` dict) holds the tensors
    themselves, and fx computed every op that only they feed (``weight.permute(...)``)
    eagerly: the graph held the results as constants, and no parameter was read at all.
    """

    def __init__(self, tracer: LeafFallbackTracer, root: torch.nn.Module) -> None:
        super().__init__()
        self.tracer = tracer
        self.names = {id(t): n for n, t in [*root.named_parameters(), *root.named_buffers()]}

    def _read(self, v: Any) -> Any:
        if not isinstance(v, torch.Tensor) or id(v) not in self.names:
            return v
        name, cache = self.names[id(v)], self.tracer._state_cache
        if name not in cache:
            cache[name] = self.tracer.create_proxy("get_attr", name, (), {})
        return cache[name]

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if self.tracer._eager or getattr(func, "__name__", "") in _SHAPE_READS:
            return func(*args, **kwargs)
        read = map_aggregate((args, kwargs), self._read)
        proxies = [v for v in pytree.tree_leaves(read) if isinstance(v, torch.fx.Proxy)]
        if not proxies:
            return func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name in _VALUE_READS:
            # a branch on a state tensor's value: a flag or a counter of one element
            # (vector-quantize's `if self.initted:`) no permutation moves, so it is read as
            # it is; on a larger tensor, fx's control-flow error (the submodule is kept whole)
            if all(t.numel() == 1 for t in args if isinstance(t, torch.Tensor)):
                return func(*args, **kwargs)
            raise torch.fx.proxy.TraceError(
                "symbolically traced variables cannot be used as inputs to control flow"
            )
        if name in _OPERATORS and not read[1]:
            # an operator, as fx records it on a proxy (the rules know ``operator.getitem``)
            target, reflected = _OPERATORS[name]
            operands = tuple(reversed(read[0])) if reflected else read[0]
            return proxies[0].tracer.create_proxy("call_function", target, operands, {})
        # recorded as fx records an op on a proxy (a tensor method as a call_method node)
        return type(proxies[0]).__torch_function__(func, types, *read)


def writes(n: torch.fx.Node) -> bool:
    """Whether node ``n`` writes into its first argument (``x[i] = v``, ``x.add_(y)``,
    ``torch.relu_(x)``, ``F.relu(x, inplace=True)``, ``nn.ReLU(inplace=True)(x)``)."""
    if n.op == "call_function" and n.target is operator.setitem:
        return True
    if n.op in ("call_function", "call_module"):
        name = getattr(n.target, "__name__", "") if n.op == "call_function" else ""
        in_place = (name.endswith("_") and not name.startswith("_")) or _in_place_flag(n)
        return in_place and bool(n.args) and isinstance(n.args[0], torch.fx.Node)
    if n.op != "call_method":
        return False
    return n.target == "__setitem__" or (n.target.endswith("_") and not n.target.startswith("_"))


class ConstantWritten(Exception):
    """A traced value was written into a tensor the forward made with fixed arguments
    (``buf = torch.zeros(2, 7); buf[:, 1:] = h``): fx made the buffer a constant of the graph,
    and every later read of it would be a constant too (values before the write)."""


#: attributes and methods of a traced tensor that :class:`ShapeSpecialisingTracer` answers from
#: the example input (its shapes, dtype, device and layout: ``nn.TransformerEncoder`` checks
#: ``src.is_nested`` and its weights' ``requires_grad`` to choose its fast path)
_SHAPE_ATTRS = frozenset(
    {"shape", "ndim", "size", "dim", "ndimension", "numel", "nelement", "dtype", "device"}
    | {"is_floating_point", "is_complex", "is_nested", "is_sparse", "is_cuda", "layout"}
    | {"requires_grad"}
)


def _device_flag(value: torch.Tensor, k: str) -> bool:
    """Whether ``k`` is one of a tensor's ``is_*`` flags (``is_cuda``, ``is_xpu``,
    ``is_mps``, ``is_quantized``, ...: DCGAN's ``if input.is_cuda or input.is_xpu``), which
    say where and how it is stored, not what it holds."""
    return k.startswith("is_") and not callable(getattr(value, k, None))


class _WritableProxy(torch.fx.Proxy):
    """A proxy that records ``x[index] = value`` (fx's own raises "does not support item
    assignment", and the module doing it was kept as one call)."""

    #: NumPy defers to the proxy's own reflected operators, as it does for a tensor:
    #: ``np.log(2 * np.pi) - x`` (normflows' Gaussian) asked the proxy for NumPy's array
    #: protocols, which fx answers with attribute proxies
    __array_ufunc__ = None

    def __setitem__(self, index: Any, value: Any) -> None:
        self.tracer.create_proxy("call_function", operator.setitem, (self, index, value), {})

    def __getattr__(self, k: str) -> Any:
        # a model's own tensor has the attributes it has: `hasattr(weight, "SCB")` (Hugging
        # Face's RWKV asks whether a weight is 8-bit quantized) is False, where fx recorded an
        # attribute read that no tensor answers
        if self.node.op == "get_attr" and not k.startswith("__"):
            value = _attribute(getattr(self.tracer, "root", None), str(self.node.target))
            if isinstance(value, torch.Tensor) and not hasattr(value, k):
                raise AttributeError(f"'{type(value).__name__}' object has no attribute '{k}'")
        return super().__getattr__(k)


def _owner(root: Any, target: str) -> tuple[Any, str]:
    """The module of ``root`` that holds the dotted ``target`` (``None`` where there is none)
    and the name it holds it by, walked through the modules' own dicts (fx's patched
    ``getattr`` would give a proxy)."""
    *path, name = target.split(".")
    for part in path:
        root = getattr(root, "_modules", {}).get(part)
    return (root if isinstance(root, torch.nn.Module) else None), name


def _attribute(root: Any, target: str) -> Any:
    """The parameter, buffer or constant (a tensor the trace kept) of module ``root`` at the
    dotted ``target``, or ``None``."""
    module, name = _owner(root, target)
    if module is None:
        return None
    return module._parameters.get(name, module._buffers.get(name, vars(module).get(name)))


def _constant(root: Any, target: str) -> bool:
    """Whether the tensor at the dotted ``target`` of ``root`` is a constant no state_dict
    holds (one the trace kept, a non-persistent buffer) of at most
    :data:`INTEGER_VALUES_UP_TO` entries: not a weight, so its values are the model's own."""
    module, name = _owner(root, target)
    if module is None or name in module._parameters:
        return False
    if name in module._buffers and name not in module._non_persistent_buffers_set:
        return False
    value = _attribute(module, name)
    return isinstance(value, torch.Tensor) and value.numel() <= INTEGER_VALUES_UP_TO


class _ShapeProxy(_WritableProxy):
    """A proxy whose shape, length and iteration come from its node's value on the example.

    Python's ``isinstance`` answers for it as for its value while the model is traced
    (:meth:`ShapeSpecialisingTracer._patches`): a proxy of a tensor is a ``torch.Tensor``
    (stable-baselines3's ``assert isinstance(obs, th.Tensor)`` on every policy's input), a
    proxy of a dict a ``dict``, whose keys, items, values, ``len``, ``in`` and ``get`` read the
    example's keys (each value a ``getitem`` of the input).
    """

    def _value(self) -> Any:
        return self.tracer.values.get(self.node, _UNKNOWN)  # type: ignore[attr-defined]

    def __getattr__(self, k: str) -> Any:
        value = self._value()
        if isinstance(value, torch.Tensor) and (k in _SHAPE_ATTRS or _device_flag(value, k)):
            return getattr(value, k)
        if k in ("_is_param", "_is_buffer") and isinstance(value, torch.Tensor):
            # read by isinstance(x, nn.Parameter) once isinstance(x, Tensor) is True: an input
            # is neither
            return False
        if isinstance(value, dict) and k in _DICT_READS:
            return _DICT_READS[k].__get__(self)
        if k == "data" and isinstance(value, torch.Tensor):
            return self  # the same values (pytorch-cifar100's shuffle reads x.data.size())
        return super().__getattr__(k)

    def __len__(self) -> int:
        value = self._value()
        if isinstance(value, (torch.Tensor, tuple, list, dict)):
            return len(value)
        return super().__len__()

    def __iter__(self) -> Iterator:
        value = self._value()
        if isinstance(value, (torch.Tensor, tuple, list)):
            return iter([self[i] for i in range(len(value))])
        if isinstance(value, dict):
            return iter(list(value))
        return super().__iter__()

    def keys(self) -> Any:  # fx's Proxy has its own, for ``**proxy``
        if isinstance(self._value(), dict):
            return _dict_keys(self)
        return super().keys()

    def __contains__(self, key: Any) -> bool:
        value = self._value()
        if isinstance(value, dict):
            return key in value
        return any(k is key or k == key for k in self)  # Python's own fallback

    def __bool__(self) -> bool:
        value = self._value()
        if isinstance(value, (bool, int)):  # a number computed from shapes, not from data
            return bool(value)
        if isinstance(value, (tuple, list, dict)):  # ``if mems:``, as ``len`` is answered
            return len(value) > 0
        real = self._real()
        if real is not _UNKNOWN:  # computed from the example's integer inputs
            return bool(real)
        return self._truth(sys._getframe(1))

    def _truth(self, frame: types.FrameType) -> bool:
        """The truth the forward's code in ``frame`` asks of this value: the one that does not
        raise, where one side of the branch raises (``assert (a == b).all()``, ``if
        torch.isnan(x).any(): raise``; :mod:`~nfncompile.frontend.checks`). Otherwise fx's
        own answer: a TraceError naming data-dependent control flow. (A plain trace keeps fx's
        answer: the model, or the submodule holding the check, is then traced with its shapes
        fixed, which answers a check of a shape from the shape.)"""
        passing = passing_truth(frame)
        if passing is None:
            return super().__bool__()
        # shape propagation checks that the example passes it (:func:`_check_passed`)
        self.node.meta["nfn_check"] = (passing, _frame_line(frame))
        return passing

    def _real(self) -> Any:
        """The example's value, where the trace reads it (:meth:`ShapeSpecialisingTracer.python_value`)."""
        return self.tracer.python_value(self.node)  # type: ignore[attr-defined]

    def __int__(self) -> int:
        real = self._real()
        if real is _UNKNOWN:  # as fx's Proxy, which has no __int__
            raise TypeError(f"int() argument must be a number, not '{type(self).__name__}'")
        return int(real)

    def __index__(self) -> int:
        real = self._real()
        if real is _UNKNOWN:
            raise TypeError(f"'{type(self).__name__}' object cannot be interpreted as an integer")
        return operator.index(real)

    def __format__(self, spec: str) -> str:
        # an expert's name made from the routing's row (Switch Transformers'
        # ``self[f"expert_{expert_idx[0]}"]``): the example's number where it is known
        real = self._real()
        return object.__format__(self, spec) if real is _UNKNOWN else format(real, spec)

    def __float__(self) -> float:
        real = self._real()
        if real is _UNKNOWN:
            raise TypeError(f"float() argument must be a number, not '{type(self).__name__}'")
        return float(real)


def _dict_items(self: _ShapeProxy) -> list:
    return [(k, self[k]) for k in self._value()]


def _dict_values(self: _ShapeProxy) -> list:
    return [self[k] for k in self._value()]


def _dict_keys(self: _ShapeProxy) -> list:
    return list(self._value())


def _dict_get(self: _ShapeProxy, key: Any, default: Any = None) -> Any:
    return self[key] if key in self._value() else default


#: a dict input's methods, read from the example's keys (``items()`` and ``values()`` give one
#: ``getitem`` per key; ``get`` of a key the example lacks its default, as the dict would)
_DICT_READS = {"items": _dict_items, "values": _dict_values, "get": _dict_get}


class ShapeSpecialisingTracer(LeafFallbackTracer):
    """A :class:`LeafFallbackTracer` whose proxies know the example input's shapes.

    Each node is also run on fake tensors as it is recorded, so ``x.shape``, ``x.size()``,
    ``x.dim()``, ``x.dtype``, ``len(x)`` and unpacking a proxy give the example's values instead
    of new nodes: a forward that branches on a shape (``if (h, w) != y.shape[-2:]``, padding to a
    multiple of a window) takes the branch the example input takes, and the graph holds the
    example's sizes as constants. The analysis reads the model at that input only, so nothing
    is lost for it. A branch on a tensor's values still fails, with fx's reason.
    :func:`trace_module` uses it where plain symbolic tracing of the model fails or keeps
    submodules as one call.

    Parameters
    ----------
    example_args : tuple
        The positional arguments the model is called with.

    Examples
    --------
    >>> class Fit(torch.nn.Module):
    ...     def forward(self, x):
    ...         if x.shape[-1] != 4:  # bool() of a proxy in plain fx
    ...             x = torch.nn.functional.pad(x, (0, 4 - x.shape[-1]))
    ...         return x.relu()
    >>> tracer = ShapeSpecialisingTracer((torch.randn(2, 3),))
    >>> gm = torch.fx.GraphModule(Fit(), tracer.trace(Fit()))
    >>> [n.target.__name__ for n in gm.graph.nodes if n.op == "call_function"]
    ['pad']
    >>> tuple(gm(torch.randn(2, 3)).shape)
    (2, 4)
    """

    def __init__(self, example_args: tuple) -> None:
        super().__init__()
        self.mode = FakeTensorMode(allow_non_fake_inputs=True)
        self._example = tuple(self._fake(a) for a in example_args)
        self._given = tuple(example_args)
        self._inputs: dict = {}
        self._real_inputs: dict = {}
        self.values: dict[torch.fx.Node, Any] = {}
        #: the example's values of the nodes computed from its integer inputs alone (ids,
        #: lengths, an edge list): a branch on them (``if mask.any()``, ``int(n.max())``)
        #: takes the example's way, and an op whose shape they decide has its shape
        self.real: dict[torch.fx.Node, Any] = {}
        self._stood_in: dict[torch.fx.Node, Any] = {}  # the real outputs of stand-in runs

    #: the kinds of nodes run for real on known values (:meth:`_run_on_integers`)
    _RUN = ("call_function", "call_method")
    #: whether the objects the graph keeps as constants (``_nfn_object``) are known values
    _OBJECTS = False

    def python_value(self, node: torch.fx.Node) -> Any:
        """The example's value of ``node`` where a branch, an ``int``, an index or a slice
        bound may read it: one computed from the example's integer inputs alone."""
        return self.real.get(node, _UNKNOWN)

    def _fake(self, value: Any) -> Any:
        return self.mode.from_tensor(value) if isinstance(value, torch.Tensor) else value

    def trace(self, root: Any, concrete_args: dict | None = None) -> torch.fx.Graph:
        given, real = list(self._example), list(self._given)
        for p in _forward_params(root):
            if p.kind == p.VAR_POSITIONAL:
                self._inputs["*" + p.name] = tuple(given)
                # the example's integer inputs among them, as for named ones (a float one
                # makes what reads it unknown: only integer results are kept)
                self._real_inputs["*" + p.name] = tuple(
                    v.clone() if self._known(v) else v for v in real
                )
                break
            if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) or not given:
                break
            self._inputs[p.name] = given.pop(0)
            value = real.pop(0)
            if self._known(value):  # a copy: an op in place must not change the caller's
                self._real_inputs[p.name] = value.clone()
            elif isinstance(value, Mapping):
                # a batch dict's integer entries (pytorch-forecasting's encoder lengths, read
                # as `int(lengths.max())`); reading any other entry gives no value (KeyError)
                ints = {k: v.clone() for k, v in value.items() if self._known(v)}
                if ints:
                    self._real_inputs[p.name] = ints
        return super().trace(root, concrete_args)

    def _known(self, value: Any) -> bool:
        """Whether the trace reads the example's values of ``value`` (an input, an attribute):
        small integer tensors (:func:`_integral`)."""
        return _integral(value)

    def _patches(self, root: torch.nn.Module) -> dict:
        is_tensor = torch.is_tensor

        def traced_is_tensor(obj: Any) -> bool:
            # a proxy of a tensor is one for the forward's checks (diffusers' UNets take
            # `torch.tensor([timestep])` of a proxy when `torch.is_tensor(timestep)` is False)
            if isinstance(obj, _ShapeProxy) and not self._eager:
                return isinstance(obj._value(), torch.Tensor)
            return is_tensor(obj)

        none_or_dtype = F._none_or_dtype
        is_causal_mask = transformer_module._detect_is_causal_mask

        def traced_none_or_dtype(obj: Any) -> Any:
            # nn.TransformerEncoder reads its padding mask's dtype through this function,
            # which refused anything but a tensor
            if isinstance(obj, _ShapeProxy) and isinstance(obj._value(), torch.Tensor):
                return obj._value().dtype
            return none_or_dtype(obj)

        def traced_is_causal_mask(mask: Any, is_causal: Any = None, size: Any = None) -> bool:
            # nn.TransformerDecoder compares its mask's values with a causal one to set a
            # hint the attention may use to skip the mask: without the hint the mask is
            # applied as given, which computes the same
            if isinstance(mask, _ShapeProxy) and not self._eager:
                return bool(is_causal)
            return is_causal_mask(mask, is_causal, size)

        is_instance = builtins.isinstance

        def traced_isinstance(obj: Any, cls: Any) -> bool:
            # Python code only: torch's C++ checks keep the proxy's own type (a proxy taken for
            # a tensor there would be read as one)
            if is_instance(obj, _ShapeProxy) and not self._eager and not is_instance(obj, cls):
                # what the value is: a tensor, a dict, a tuple or list (a kept submodule's
                # outputs), answered as for the value itself
                known = (torch.Tensor, dict, Mapping, tuple, list)
                value = obj._value()
                return any(c in known and is_instance(value, c) for c in _classes(cls))
            return is_instance(obj, cls)

        patches = super()._patches(root)
        patches[(id(builtins), "isinstance")] = (
            vars(builtins), "isinstance", is_instance, traced_isinstance
        )  # fmt: skip
        patches[(id(torch), "is_tensor")] = (vars(torch), "is_tensor", is_tensor, traced_is_tensor)
        patches[(id(F), "_none_or_dtype")] = (
            vars(F),
            "_none_or_dtype",
            none_or_dtype,
            traced_none_or_dtype,
        )
        patches[(id(transformer_module), "_detect_is_causal_mask")] = (
            vars(transformer_module), "_detect_is_causal_mask", is_causal_mask,
            traced_is_causal_mask,
        )  # fmt: skip
        return patches

    def proxy(self, node: torch.fx.Node) -> torch.fx.Proxy:
        return _ShapeProxy(node, self)

    def create_proxy(
        self, kind: str, target: Any, args: tuple, kwargs: dict, *rest: Any, **options: Any
    ) -> Any:
        """A proxy of the new node, or ``None`` where the node reads an entry the example holds
        as ``None`` (``batch["stat_exog"]``, ``obs.get("mask")``): the forward then takes its
        ``is None`` branch, as the model takes it on the example. A proxy would take the other
        (neuralforecast's TFT then called the static encoder that a model without static
        inputs does not have)."""
        proxy = super().create_proxy(kind, target, args, kwargs, *rest, **options)
        node = proxy.node
        if target is operator.getitem and self.values.get(node, _UNKNOWN) is None:
            del self.values[node]  # (a fresh node: nothing reads it yet)
            self.real.pop(node, None)
            self.graph.erase_node(node)
            return None
        return proxy

    def create_arg(self, a: Any) -> Any:
        if isinstance(a, slice):
            # a bound read off an integer input (torchtune's tile embedding sliced to each
            # image's aspect ratio): the example's number, as a shape is
            a = slice(*(self._number(v) for v in (a.start, a.stop, a.step)))
        return super().create_arg(a)

    def _number(self, v: Any) -> Any:
        """``v``, or the example's value of it where it is a proxy of one integer computed
        from the example's integer inputs."""
        if isinstance(v, _ShapeProxy) and v._real() is not _UNKNOWN:
            with contextlib.suppress(TypeError, ValueError, RuntimeError):
                return operator.index(v._real())
        return v

    def create_node(self, *args: Any, **kwargs: Any) -> torch.fx.Node:
        node = super().create_node(*args, **kwargs)
        real = self._run_on_integers(node)
        if real is not _UNKNOWN:
            self.real[node] = real
        value = self._run(node)
        if value is _UNKNOWN and real is not _UNKNOWN:
            value = pytree.tree_map(self._fake, real)  # a shape only the values decide
        if value is not _UNKNOWN:
            self.values[node] = value
        return node

    def _run_on_integers(self, node: torch.fx.Node) -> Any:
        """``node`` run for real where every tensor it reads is the example's integer input,
        an integer buffer or a constant, or computed from such tensors alone (no weight, no
        float input), else ``_UNKNOWN``. Which inputs, attributes and results count is
        :meth:`_known` 's (and :data:`_RUN` 's which nodes): the value trace runs all."""
        if node.op == "placeholder":
            return self._real_inputs.get(node.target, _UNKNOWN)
        if node.op == "get_attr":
            # an integer buffer or constant (an index table), or a tensor no state_dict holds
            # (a constant the forward made, a non-persistent buffer: an ODE solver's time
            # grid), copied: an op in place on it must not change the model's own
            value = _attribute(self.root, str(node.target))
            if self._OBJECTS and str(node.target).startswith(_OBJECT):
                return value  # an object fx cannot write into code (``dtype=bool``): as it is
            if not (self._known(value) or _constant(self.root, str(node.target))):
                return _UNKNOWN
            self._eager = True  # (a weight's copy is no read of it to record)
            try:
                return value.detach().clone()
            finally:
                self._eager = False
        if node.op not in self._RUN:
            return _UNKNOWN
        if getattr(node.target, "__name__", node.target) in RANDOM:
            return _UNKNOWN  # a draw: another run draws other values
        nodes: list = []
        torch.fx.node.map_arg((node.args, node.kwargs), nodes.append)
        if any(n not in self.real for n in nodes):
            return _UNKNOWN  # a factory (`torch.ones(n)`, no node among its arguments) is run
        args, kwargs = _plain((node.args, node.kwargs), self.real.__getitem__)
        self._eager = True
        try:
            with _maybe_revert_all_patches(), _not_fx_tracing(), torch.no_grad():
                out = self._call(node, args, kwargs)
        except Exception:
            return _UNKNOWN
        finally:
            self._eager = False
        tensors = [v for v in pytree.tree_leaves(out) if isinstance(v, torch.Tensor)]
        if not all(map(self._known, tensors)):
            return _UNKNOWN
        return out

    def _run(self, node: torch.fx.Node) -> Any:
        """``node``'s value on the example (fake tensors), or ``_UNKNOWN``."""
        if node.op == "placeholder":
            return self._inputs.get(node.target, _UNKNOWN)
        # fx patches nn.Module.__call__ and __getattr__ and the wrapped functions while it
        # traces; the node runs as the model would, with them reverted (else it would trace)
        self._eager = True
        try:
            with _maybe_revert_all_patches(), _not_fx_tracing():
                return self._run_eager(node)
        finally:
            self._eager = False

    def _run_eager(self, node: torch.fx.Node) -> Any:
        if node.op == "get_attr":
            value: Any = self.root
            for part in str(node.target).split("."):
                value = getattr(value, part, _UNKNOWN)
            return self._fake(value)
        try:
            args, kwargs = _plain((node.args, node.kwargs), self.values.__getitem__)
        except KeyError:  # an argument whose value is unknown
            return _UNKNOWN
        try:
            # values for their shapes only: no graph of them (flex attention refuses inputs
            # that require grad on a CPU)
            with self.mode, torch.no_grad():
                if node.op in ("call_function", "call_method", "call_module"):
                    return self._call(node, args, kwargs)
        except _DATA_DEPENDENT:  # not computable on fake tensors: left symbolic
            if node.op == "call_module" or node.target in _PACKING:
                # (packing's shapes are its lengths', which the stand-in reads for real)
                return self._stand_in(node, args, kwargs)
            return _UNKNOWN
        except Exception:
            # a kept submodule that branches on values (vector-quantize's codebook checks its
            # ``initted`` buffer), or a kernel whose fake version refuses what the real one
            # takes (grouped_mm in float32 on a CPU)
            return self._stand_in(node, args, kwargs)
        return _UNKNOWN

    def _stand_in(self, node: torch.fx.Node, args: Any, kwargs: Any) -> Any:
        """``node`` run on real zeros shaped like its fake inputs, for the shapes and the
        structure of its output (a tuple the forward unpacks), or ``_UNKNOWN``. An input
        computed from the example's integers alone is its value, and one an earlier stand-in
        made is what it made: sequences packed by their lengths keep those lengths, which the
        recurrent layer reading them needs (zeros are no lengths)."""

        def known(n: torch.fx.Node) -> Any:
            for values in (self.real, self._stood_in):
                if n in values:
                    return values[n]
            if n.op == "call_function" and n.target is operator.getitem:  # (out, state) = ...
                return known(n.args[0])[n.args[1]]
            return self.values[n]

        with contextlib.suppress(KeyError):
            args, kwargs = _plain((node.args, node.kwargs), known)
        module = node.op == "call_module"
        args, kwargs = _real_values((args, kwargs), random=False, clone=not module)
        try:
            with torch.no_grad():
                out = self._call(node, args, kwargs)
        except Exception:
            return _UNKNOWN
        self._stood_in[node] = out
        return pytree.tree_map(self._fake, out)

    def _call(self, node: torch.fx.Node, args: tuple, kwargs: dict) -> Any:
        """What the call ``node`` records, made on ``args`` and ``kwargs``."""
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        return _module_call(self.root.get_submodule(node.target), node, args, kwargs)


class ValueSpecialisingTracer(ShapeSpecialisingTracer):
    """A :class:`ShapeSpecialisingTracer` that also knows the example's values: each node is run
    for real as it is recorded, on the example input and the model's own weights.

    A forward that loops over what its data picked then takes the example's way, and the
    graph holds what the example picked as constants. A mixture of experts that runs only the
    experts its router chose is the case this is for: the loop over
    ``index.unique().tolist()``, or over ``expert_hit`` rows with ``if i == n: continue`` and
    ``w[i]``, is unrolled over the experts the example ran, each expert's weights read at its
    own index (a stacked weight's member marked ``meta["nfn_member"]``, read as that member's
    own slice). A Python value read off the data (``tolist``, ``item``, ``int``, a branch) is
    the example's where it is whole numbers the data picked (indices, counts: top-k's and a
    sort's outputs and what is made of them), and so is a one-integer tensor used as an index.
    A question of float data (``if h.sum() > 0``, ``x.long()``, a check that values are
    finite) is one on the input itself, which other inputs answer otherwise: refused, as fx
    refuses it.

    Such a graph is the model only at the example's values, where the analysis reads it. Each
    node whose values were read is marked with a :func:`read_at_example` call: the positions
    they index are fixed, as an index baked into the graph no longer says which neurons it
    picked. A loop unrolled past ``limit`` nodes (a neighbour graph's edges) keeps its module
    as one call. :func:`trace_graph` tries it last, where the other traces keep a submodule as
    one call or fail, and takes it only where the example picked every member of each stacked
    weight it picked one of (:attr:`unpicked`) and the graph reads every weight the trace it
    replaces reads. :func:`trace_module` keeps it only where it computes the model's output on
    random inputs too (:data:`VALUE_DRAWS`), and
    :func:`~nfncompile.frontend.tracing.trace_with_report` only where the verification holds.

    Examples
    --------
    >>> class Experts(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.w = torch.nn.Parameter(torch.randn(3, 4, 4))
    ...     def forward(self, x, idx):
    ...         out = torch.zeros_like(x)
    ...         for e in idx.unique().tolist():  # the experts the tokens picked
    ...             rows = torch.where(idx == e)[0]
    ...             out[rows] = x[rows] @ self.w[e]
    ...         return out
    >>> x, idx, experts = torch.randn(5, 4), torch.tensor([2, 0, 2, 2, 0]), Experts()
    >>> tracer = ValueSpecialisingTracer((x, idx))
    >>> gm = torch.fx.GraphModule(experts, tracer.trace(experts))
    >>> sorted(n.args[1] for n in gm.graph.nodes if n.op == "call_function"
    ...        and n.target is operator.getitem and n.args[0].op == "get_attr")
    [0, 2]
    """

    _RUN = ("call_function", "call_method", "call_module")
    _OBJECTS = True

    def __init__(self, example_args: tuple, limit: int = 0) -> None:
        super().__init__(example_args)
        #: the most nodes it records (:data:`VALUE_NODES` by default)
        self.limit = limit or VALUE_NODES
        #: where the other traces stopped at the data (the report's line)
        self.fixed_at = ""
        #: nodes whose values come from a question asked of float data (``h.sum() > 0``,
        #: ``isfinite(x)``, ``x.long()``): a branch on them is one on the data itself
        self._asked: set[torch.fx.Node] = set()
        #: stacked weight -> (its members, the members the example picked)
        self.picked: dict[str, tuple[int, set]] = {}
        #: the nodes whose values the forward read as Python values (in order, once each)
        self._read: dict[torch.fx.Node, None] = {}

    def trace(self, root: Any, concrete_args: dict | None = None) -> torch.fx.Graph:
        """The graph, with a :func:`read_at_example` call after each node whose values the
        forward read as Python values: the positions those values index are fixed, as any op
        reading positions as values fixes them (an index baked into the graph no longer says
        which neurons it picked)."""
        graph = super().trace(root, concrete_args)
        live = set(graph.nodes)
        for node in [n for n in self._read if n in live]:
            with graph.inserting_after(node):
                graph.call_function(read_at_example, (node,))
        return graph

    @property
    def unpicked(self) -> str:
        """What the example left unpicked of a stacked weight it picked members of (``""`` if
        nothing): a member it never ran (an expert no token of the example chose) would be read
        by nothing, its axes unlabelled, free to move apart."""
        for key, (count, got) in self.picked.items():
            if len(got) < count:
                return (
                    f"the example picked {len(got)} of the {count} members of {key} "
                    f"({', '.join(map(str, sorted(got)))}): an example whose tokens pick every "
                    "expert reads each one"
                )
        return ""

    def _known(self, value: Any) -> bool:
        return isinstance(value, torch.Tensor)

    def python_value(self, node: torch.fx.Node) -> Any:
        """The example's value of ``node`` where it is integers or booleans that no question
        of float data made: which experts the routing's indices pick, how many tokens each
        takes. A branch on float data (``if h.sum() > 0``, a value checked finite) is one on
        the input itself, which other inputs take the other way: refused, as fx refuses it."""
        value = self.real.get(node, _UNKNOWN)
        if node in self._asked or not all(map(_whole_numbers, pytree.tree_leaves(value))):
            return _UNKNOWN
        self._read[node] = None
        return value

    def create_node(self, *args: Any, **kwargs: Any) -> torch.fx.Node:
        if len(self.graph.nodes) >= self.limit:
            # a loop over many values unrolled (a neighbour graph's edges the data picked):
            # the module running it is kept as one call, as without values
            raise RuntimeError(f"unrolling the example's values made more than {self.limit} nodes")
        node = super().create_node(*args, **kwargs)
        inputs = node.all_input_nodes
        out = pytree.tree_leaves(self.real.get(node))
        # whole numbers made of float data by anything but an index op (an answer to a
        # question of the data: a comparison, a cast, a check), or made of such an answer;
        # floats made with them (scores masked by a group's choice) are data again, whose
        # top-k the routing reads
        whole = any(isinstance(v, (torch.Tensor, bool, int)) for v in out)
        made = any(n in self._asked for n in inputs) or (
            call_name(node, _INDEX_FUNCTIONS) not in _INDEX_OPS | _SHAPE_READS
            and any(_floating(self.real.get(n)) for n in inputs)
        )
        if whole and made and not any(map(_floating, out)):
            self._asked.add(node)
        return node

    def create_proxy(
        self, kind: str, target: Any, args: tuple, kwargs: dict, *rest: Any, **options: Any
    ) -> Any:
        if target is operator.getitem and len(args) == 2:
            index = args[1]
            picked = (
                tuple(map(self._picked, index)) if type(index) is tuple else self._picked(index)
            )
            args = (args[0], picked)
        proxy = super().create_proxy(kind, target, args, kwargs, *rest, **options)
        if target is operator.getitem and type(args[1]) is int and proxy is not None:
            source = args[0].node if isinstance(args[0], torch.fx.Proxy) else None
            value = self.values.get(source, _UNKNOWN) if source is not None else _UNKNOWN
            if isinstance(value, torch.Tensor) and source.op == "get_attr" and value.dim() > 1:
                # one member of a stacked weight (the expert the loop is at): read as that
                # member's own slice (:func:`~nfncompile.frontend.stacked.member_slice`), the
                # members where they stand. Weights of as many members are one loop's: they
                # share the members (held in place), and every weight reads the stream whole
                # (loops of their own would each claim it, and all fall back)
                count = len(value)
                proxy.node.meta["nfn_member"] = f"picked {count}"
                proxy.node.meta["nfn_picked"] = True
                self.picked.setdefault(str(source.target), (count, set()))[1].add(args[1] % count)
        if kind == "call_method" and target in ("tolist", "item", "numpy") and proxy is not None:
            real = proxy._real()
            if real is not _UNKNOWN:  # a Python value read off the data: the example's
                self.values.pop(proxy.node, None)
                self.real.pop(proxy.node)
                del self._read[proxy.node]
                self._read[proxy.node.args[0]] = None  # (what it read: the node it was called on)
                self.graph.erase_node(proxy.node)
                return real
        return proxy

    def _picked(self, index: Any) -> Any:
        """``index``, or the example's int where it is a proxy of a one-integer tensor (the
        expert a loop over the routing's rows is at)."""
        if isinstance(index, _ShapeProxy):
            real = index._real()
            if isinstance(real, torch.Tensor) and real.dim() == 0 and real.dtype != torch.bool:
                return int(real)  # (python_value: whole numbers only)
        return index


def read_at_example(x: Any) -> Any:
    """``x``: marks, in a graph traced with the example's values fixed
    (:class:`ValueSpecialisingTracer`), a value the forward read as Python values, whose
    positions the analysis then fixes."""
    return x


#: the most nodes a trace with the example's values fixed records besides
#: :data:`VALUE_NODES_PER_NODE` per node of the trace it would replace: a loop over what the
#: data picked is unrolled, over the experts, not over a neighbour graph's edges
VALUE_NODES = 20_000
VALUE_NODES_PER_NODE = 64


#: ops whose integer outputs are positions the data picked (the routing's top-k, a sort's
#: order), not answers to a question of its values: their values may be read
_INDEX_FUNCTIONS = frozenset(
    {torch.topk, torch.sort, torch.argsort, torch.argmax, torch.argmin, torch.max, torch.min}
    | {torch.kthvalue, torch.mode, torch.median}
)
_INDEX_OPS = frozenset(f.__name__ for f in _INDEX_FUNCTIONS)


def _floating(value: Any) -> bool:
    """Whether ``value`` is a float (or complex) tensor or Python float."""
    if isinstance(value, torch.Tensor):
        return value.is_floating_point() or value.is_complex()
    return isinstance(value, (float, complex))


def _whole_numbers(value: Any) -> bool:
    """Whether ``value`` is an integer or boolean tensor or NumPy array (``ids.numpy()``,
    RecBole's session graphs built in NumPy), or a Python int or bool."""
    if isinstance(value, torch.Tensor):
        return not _floating(value)
    if isinstance(value, np.ndarray):
        return value.dtype.kind in "biu"
    return isinstance(value, (bool, int))


def _module_call(module: torch.nn.Module, node: torch.fx.Node, args: tuple, kwargs: dict) -> Any:
    """``module`` called as ``node`` records: its base class's forward where the node is a
    subclass's ``super().forward`` (``meta["nfn_base"]``), else the module itself."""
    base = node.meta.get("nfn_base")
    return module(*args, **kwargs) if base is None else base.forward(module, *args, **kwargs)


def _plain(value: Any, load: Callable[[torch.fx.Node], Any]) -> Any:
    """A node's argument ``value`` with its nodes loaded and torch.fx's immutable lists and
    dicts made plain ones, at every depth of its literal containers; a value a node returned
    (a Hugging Face ``ModelOutput`` dict, a list the forward writes into next:
    ``view = [1] * x.dim(); view[0] = -1``) is the node's own object."""
    if isinstance(value, torch.fx.Node):
        return load(value)
    if isinstance(value, list):
        return [_plain(v, load) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v, load) for k, v in value.items()}
    if isinstance(value, tuple):  # (as torch.fx's map_arg rebuilds them: a namedtuple kept)
        return remade(value, [_plain(v, load) for v in value])
    if isinstance(value, slice):
        return slice(*(_plain(v, load) for v in (value.start, value.stop, value.step)))
    return value


class PlainArgsInterpreter(torch.fx.Interpreter):
    """A :class:`torch.fx.Interpreter` that calls each node with plain lists and dicts.

    The code torch.fx generates builds a fresh list for each list literal of a call, so a
    function kept as one call may change the list it is given (torchvision's video Swin
    Transformer writes into its ``window_size`` argument). The plain Interpreter hands over the
    node's own ``immutable_list``, and such a call fails while the model itself runs; every
    interpreter of the front end reads its arguments through this one.
    """

    def fetch_args_kwargs_from_env(self, n: torch.fx.Node) -> tuple:
        def load(node: torch.fx.Node) -> Any:
            return self.map_nodes_to_values(node, n)

        return _plain(n.args, load), _plain(n.kwargs, load)


class NodeShapeProp(ShapeProp, PlainArgsInterpreter):
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
        self.extra_traceback = False  # the errors raised here name their node already
        self._node: torch.fx.Node | None = None

    def call_module(self, target: Any, args: tuple, kwargs: dict) -> Any:
        if self._node is None:
            return super().call_module(target, args, kwargs)
        return _module_call(self.fetch_attr(target), self._node, args, kwargs)

    def run_node(self, n: torch.fx.Node) -> Any:
        self._node = n
        try:
            if self.fake is not None:
                try:
                    with self.fake:
                        result = torch.fx.Interpreter.run_node(self, n)
                except _DATA_DEPENDENT as e:  # a kept call that reads its input's values
                    result = self._run_real(n, e)
                except Exception as e:
                    # a kernel whose fake version refuses what the real one takes (grouped_mm
                    # in float32 on a CPU); where the real one fails too, the first error
                    try:
                        result = self._run_real(n, e)
                    except Exception:
                        raise e from None
            else:
                result = torch.fx.Interpreter.run_node(self, n)
        except TraceError:
            raise
        except Exception as e:
            leaf = n.meta.get("nfn_leaf")
            kept = (
                f" (kept as one call because torch.fx could not trace its forward: {leaf})"
                if leaf
                else ""
            )
            raise TraceError(
                f"shape propagation failed at node {n.format_node()}{kept}: "
                f"{type(e).__name__}: {e}. {_propagation_hint(e)}"
            ) from e
        _check_passed(n, result)
        found = False

        def meta(obj: Any) -> Any:
            nonlocal found
            if isinstance(obj, torch.Tensor):
                found = True
                return _extract_tensor_metadata(obj)
            return obj

        m = _mapped(_packed_as_tuples(result), meta)
        if found:
            n.meta["tensor_meta"] = m
        else:
            n.meta["nfn_value"] = result
        if self.fake is None and _small_integer(result):
            # the probe's values for an integer input (indices, a routing choice)
            n.meta["nfn_integer_value"] = result.detach().clone()
        elif self.fake is None and isinstance(result, tuple) and any(map(_small_integer, result)):
            # and those inside a tuple (a PackedSequence's batch sizes), in place
            n.meta["nfn_integer_value"] = tuple(
                v.detach().clone() if _small_integer(v) else None for v in result
            )
        n.meta["type"] = type(result)
        return result

    def _run_real(self, n: torch.fx.Node, error: Exception) -> Any:
        """``n`` run for real on random values of its fake inputs' shapes (zeros for integer
        ones), its result made fake again: a kept call that branches on its input's values,
        which fake tensors do not have, or an op whose fake kernel refuses its inputs. Only the
        shapes it returns are read."""
        if n.op not in ("call_module", "call_function", "call_method"):
            raise error
        args, kwargs = _real_values(self.fetch_args_kwargs_from_env(n), random=True, clone=True)
        result = getattr(self, n.op)(n.target, args, kwargs)
        return _mapped(
            result, lambda v: self.fake.from_tensor(v) if isinstance(v, torch.Tensor) else v
        )


def remade(container: tuple | list, items: Iterable) -> tuple | list:
    """A tuple or list of ``container``'s type holding ``items`` (a namedtuple, which the
    forward may return, made as the tuple it is, without the ``__new__`` a subclass may add:
    brevitas' ``IntQuantTensor`` converts its fields with ``torch.tensor``).

    >>> from collections import namedtuple
    >>> remade(namedtuple("Out", "y aux")(1, 2), [3, 4])
    Out(y=3, aux=4)
    """
    if isinstance(container, tuple) and hasattr(type(container), "_fields"):
        return namedtuple_of(type(container), tuple(items))
    return type(container)(items)


def namedtuple_of(cls: type, args: tuple, kwargs: dict | None = None) -> tuple:
    """Namedtuple class ``cls`` holding the values ``args`` and ``kwargs`` give its fields
    (its defaults for the rest), made as a tuple is: a subclass's own ``__new__`` is not run."""
    values = list(args) + [None] * (len(cls._fields) - len(args))
    defaults = getattr(cls, "_field_defaults", {})
    for k, name in enumerate(cls._fields[len(args) :], len(args)):
        values[k] = (kwargs or {}).get(name, defaults.get(name))
    return tuple.__new__(cls, values)


def _mapped(value: Any, fn: Callable[[Any], Any]) -> Any:
    """``fn`` applied to every leaf of ``value``'s tuples, lists and dicts, each remade as its
    type (as torch.fx's ``map_aggregate``, but a namedtuple without its class's ``__new__``:
    brevitas' quant tensors convert their fields in theirs)."""
    if isinstance(value, (tuple, list)):
        return remade(value, [_mapped(v, fn) for v in value])
    if isinstance(value, dict):
        return {k: _mapped(v, fn) for k, v in value.items()}
    return fn(value)


#: what a fake tensor raises where an op's result depends on the values
_DATA_DEPENDENT = (DataDependentOutputException, DynamicOutputShapeException)


def _real_values(value: Any, random: bool, clone: bool) -> Any:
    """``value`` (nested) with every fake tensor made a real one of its shape and dtype: zeros,
    or with ``random`` standard normal floats (integers stay zeros, valid indices and
    offsets); with ``clone``, every real tensor (a model's own) a copy, which an op in place
    must not change."""

    def real(v: Any) -> Any:
        if isinstance(v, FakeTensor):
            if random and v.is_floating_point():
                return torch.randn(v.shape, dtype=v.dtype)
            return torch.zeros(v.shape, dtype=v.dtype)
        return v.clone() if clone and isinstance(v, torch.Tensor) else v

    return pytree.tree_map(real, value)


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, t in flags:
            m.training = t


def graph_differs(model: torch.nn.Module, gm: torch.fx.GraphModule, example_input: Any) -> str:
    """Why the traced graph ``gm`` does not compute ``model``'s output on the example (both in
    eval mode, with the same random draws), or ``""`` where it does or cannot be run.

    A forward can branch on what a traced value cannot answer and still trace, to a graph of
    the other branch. The spec, verified on the model itself, then may hold but miss
    symmetries of the branch the model takes, or not hold (:func:`failure_message` prints
    this cause).
    """
    args = as_args(example_input)
    with torch.no_grad(), _eval_mode(model), attributes_kept(model), compiled_as_eager():
        try:
            with same_draws():
                want = leaves(model(*args), fields=True)
        except Exception:  # (the verification reports a model that does not run)
            return ""
        try:
            with same_draws():
                got = leaves(gm(*args), fields=True)
        except Exception as e:
            return f"the traced graph does not run on the example ({type(e).__name__}: {e})"
    pairs = [(w, g) for w, g in zip(want, got) if isinstance(w, torch.Tensor)]
    if len(want) != len(got) or any(
        not isinstance(g, torch.Tensor) or g.shape != w.shape for w, g in pairs
    ):
        return "the traced graph's outputs differ in number or shape from the model's"
    worst = max(
        (float((w.double() - g.double()).abs().max()) for w, g in pairs if w.numel()),
        default=0.0,
    )
    scale = max((float(w.double().abs().max()) for w, _ in pairs if w.numel()), default=0.0)
    if worst <= 1e-4 * (1.0 + scale):
        return ""
    return (
        f"the traced graph's output differs from the model's on the example by {worst:.3g}: "
        "the trace took a branch the model does not (one on a question a traced value cannot "
        "answer as the example does), and the spec is derived from the branch traced"
    )


def evaluating(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` put in eval mode, returned whatever its ``train`` returns (OpenMMLab's
    backbones override ``train(mode)`` and return ``None``, so ``model.eval()`` does too)."""
    model.eval()
    return model


def copy_model(model: torch.nn.Module, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """A deep copy of ``model``, its floating-point tensors cast to ``dtype`` if given and its
    complex ones to the complex dtype of that precision (``Module.to(float64)`` would drop the
    imaginary part of a Fourier layer's complex weights).

    A tensor a forward hook computes and stores on a module (pruning's and the old
    ``weight_norm``'s ``weight``, made by autograd from ``weight_orig``) cannot be deep copied;
    it is copied detached, and the hook computes it again at the copy's every call. A function
    a module holds that closes over the model's modules (minGPT's ``self.mlpf = lambda x:
    m.c_proj(m.act(m.c_fc(x)))``) is remade over the copies: ``deepcopy`` shares functions, and
    the copy would run the original's weights.
    """
    copied = _deep_copy(model)
    if dtype is None:
        return copied
    complex_dtype = (torch.ones((), dtype=dtype) * 1j).dtype

    def cast(t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point():
            return t.to(dtype)
        return t.to(complex_dtype) if t.is_complex() else t

    return copied._apply(cast)


#: The view types of a dict (``d.keys()``, ``d.values()``, ``d.items()``), which cannot be
#: deep copied.
DICT_VIEWS = (type({}.keys()), type({}.values()), type({}.items()))
#: a module's own registries of its parameters, buffers and submodules
REGISTRIES = ("_parameters", "_buffers", "_modules")


def _deep_copy(model: torch.nn.Module) -> torch.nn.Module:
    views = [
        (m, k, v) for m in model.modules() for k, v in vars(m).items() if isinstance(v, DICT_VIEWS)
    ]
    # a tensor autograd made, which deepcopy refuses, held by a module (a forward hook's
    # ``weight``) or in a container of its own (activations it appends to a list on each
    # call): its copy is a detached one
    detached: dict = {
        id(t): t.detach().clone()
        for m in model.modules()
        for k, v in vars(m).items()
        if k not in REGISTRIES
        for t in _non_leaves(v)
    }
    memo = dict(detached)
    try:
        for m, k, _ in views:
            vars(m)[k] = None
        copied = copy.deepcopy(model, memo)
    except (TypeError, RuntimeError, copy.Error, NotImplementedError, AttributeError) as e:
        raise _not_copyable(model, e, detached) from e
    finally:
        for m, k, v in views:
            vars(m)[k] = v
    for m, k, v in views:
        vars(memo[id(m)])[k] = _view_copied(v, memo)
    for m in copied.modules():
        for k, v in vars(m).items():
            if isinstance(v, types.FunctionType) and v.__closure__:
                vars(m)[k] = _closure_copied(v, memo)
    return copied


def _non_leaves(value: Any, depth: int = 3) -> Iterator[torch.Tensor]:
    """The tensors autograd made among the lists, tuples, sets and dicts of ``value``, down
    to ``depth`` levels."""
    if isinstance(value, torch.Tensor):
        if not value.is_leaf:
            yield value
    elif depth and isinstance(value, (list, tuple, set, frozenset)):
        for v in value:
            yield from _non_leaves(v, depth - 1)
    elif depth and isinstance(value, dict):
        for v in value.values():
            yield from _non_leaves(v, depth - 1)


def _view_copied(view: Any, memo: dict) -> Any:
    """``view`` (a dict's keys, values or items) over the copy ``memo`` made of its dict, as a
    module's ``self.scales = self.layers.keys()`` reads its own ``ModuleDict``; the view itself
    where its dict was not copied (it lies outside the model)."""
    seen = gc.get_referents(view)
    copied = memo.get(id(seen[0])) if len(seen) == 1 and isinstance(seen[0], dict) else None
    if copied is None:
        return view
    kind = {DICT_VIEWS[0]: dict.keys, DICT_VIEWS[1]: dict.values, DICT_VIEWS[2]: dict.items}
    return kind[type(view)](copied)


def _not_copyable(model: torch.nn.Module, error: BaseException, detached: dict) -> TraceError:
    """The error for a model that ``copy.deepcopy`` refuses, naming the attribute it fails on
    (the first module attribute whose own copy fails, with the tensors autograd made copied
    ``detached`` as the model's copy takes them), which the verification needs copied."""
    for name, m in model.named_modules():
        for k, v in vars(m).items():
            if isinstance(v, torch.nn.Module) or k in REGISTRIES:
                continue
            try:
                copy.deepcopy(v, dict(detached))
            except Exception as inner:  # the culprit's own error is the one reported
                where = f"{name}.{k}" if name else k
                return TraceError(
                    f"cannot copy the model to check its symmetry: its attribute `{where}` "
                    f"({type(v).__name__}) cannot be deep-copied ({type(inner).__name__}: "
                    f"{inner}). Make it copyable (keep a list or tuple instead of a view, "
                    "a generator or a handle), or trace with verify=False to skip the check"
                )
    return TraceError(
        f"cannot copy the model to check its symmetry: copy.deepcopy failed "
        f"({type(error).__name__}: {error}); trace with verify=False to skip the check"
    )


def _closure_copied(fn: types.FunctionType, memo: dict) -> types.FunctionType:
    """``fn`` closing over the copies ``memo`` (a ``deepcopy`` memo) made of what it reads."""
    cells = []
    for cell in fn.__closure__:
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            cells.append(cell)
            continue
        cells.append(types.CellType(memo[id(value)]) if id(value) in memo else cell)
    out = types.FunctionType(
        fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, tuple(cells)
    )
    out.__kwdefaults__, out.__dict__ = fn.__kwdefaults__, dict(fn.__dict__)
    return out


@contextlib.contextmanager
def same_draws(seed: int = 0) -> Iterator[None]:
    """Inside, random ops draw the same numbers on every entry (torch's, numpy's and Python's
    global generators seeded with ``seed``, restored after): a forward that samples in eval
    mode (a VAE's reparameterisation, injected noise, ``np.random.normal``) gives comparable
    outputs run after run."""
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed)
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


@contextlib.contextmanager
def attributes_kept(model: torch.nn.Module) -> Iterator[set]:
    """Undo every attribute that tracing binds on ``model``'s modules (plain attributes,
    parameters, buffers, submodules). A module that caches a tensor it computes on its first
    call (timm's ConViT attention builds its relative-position table for the input's size)
    would otherwise keep an fx ``Proxy`` from symbolic tracing or a ``FakeTensor`` from fake
    shape propagation, and every later real forward (the probes, the verification, the
    user's own) would read it. A plain dict or list attribute is restored to its entries too:
    Hugging Face's LeViT caches its attention biases per device in a dict, YOLOv5's detect
    head its grids in a list.

    The body may add names to the set it is given: new attributes of ``model`` itself by those
    names stay (the constants a graph's ``get_attr`` nodes read, which fx binds on the root).
    """
    saved = [
        (
            m,
            dict(m.__dict__),
            # every plain dict: the parameters', buffers' and submodules' own, and a cache's (a
            # ScriptModule's parameters are a wrapper, not a dict: left alone)
            {k: dict(d) for k, d in m.__dict__.items() if type(d) is dict},
            # and every plain list's items (YOLOv5's detect head writes its grids into one)
            {k: list(v) for k, v in m.__dict__.items() if type(v) is list},
        )
        for m in model.modules()
    ]
    # a plain object a module holds, and what its dicts and lists hold: timm's FeatureHooks
    # keeps the outputs its hooks catch in a defaultdict, keyed by a device that is a proxy
    # while traced, and a copy of the model then met the proxies
    held = {id(o): o for m in model.modules() for o in _held_objects(m)}.values()
    objects = [(o, dict(o.__dict__), _entries(list(o.__dict__.values()))) for o in held]
    keep: set = set()
    try:
        yield keep
    finally:
        for o, attrs, entries in objects:
            o.__dict__.clear()
            o.__dict__.update(attrs)
            for container, items in entries:
                _restored(container, items)
        for m, attrs, dicts, lists in saved:
            for k in [k for k in m.__dict__ if k not in attrs]:
                if m is not model or k not in keep:
                    del m.__dict__[k]
            m.__dict__.update(attrs)
            for k, entries in dicts.items():
                d = m.__dict__[k]
                # (a constant the graph reads that is a module, in the root's ``_modules``;
                # a name the module had is restored: CTRL rebinds its position table, a
                # buffer, to ``self.pos_encoding.to(dtype)``, a proxy while traced)
                kept = {n: d[n] for n in keep if n in d and n not in entries} if m is model else {}
                d.clear()
                d.update(entries)
                d.update(kept)
            for k, items in lists.items():
                m.__dict__[k][:] = items


def _held_objects(module: torch.nn.Module) -> list:
    """The plain objects ``module``'s own attributes hold: instances with a ``__dict__`` that
    are no module, tensor, container, enum member, class, function or Python module."""
    return [
        v
        for v in module.__dict__.values()
        if hasattr(v, "__dict__")
        and not isinstance(
            v,
            torch.nn.Module
            | torch.Tensor
            | dict
            | list
            | tuple
            | enum.Enum
            | type
            | types.ModuleType
            | types.FunctionType
            | types.MethodType
            | functools.partial,
        )
    ]


def _restored(container: dict | list, items: dict | list) -> None:
    """``container`` holding ``items`` again where its entries changed, through the methods
    of ``dict`` and ``list`` themselves: a read-only subclass (diffusers' ``FrozenDict``, a
    scheduler's config) refuses its own ``update`` and is never written where unchanged."""
    if isinstance(container, dict):
        now = dict.items(container)
        if len(now) != len(items) or any(k not in items or items[k] is not v for k, v in now):
            dict.clear(container)
            dict.update(container, items)
    elif len(container) != len(items) or any(a is not b for a, b in zip(container, items)):
        list.__setitem__(container, slice(None), items)


def _entries(values: list, depth: int = 3) -> list[tuple]:
    """``(container, its entries)`` for each dict and list among ``values`` and, down to
    ``depth`` levels, among theirs (FeatureHooks' outputs: a dict of dicts per device)."""
    out = []
    for v in values:
        if isinstance(v, dict | list) and depth:
            out.append((v, dict(v) if isinstance(v, dict) else list(v)))
            out += _entries(list(v.values() if isinstance(v, dict) else v), depth - 1)
    return out


def _forward_params(model: torch.nn.Module) -> list[inspect.Parameter]:
    """The parameters of ``model.forward`` (none where it has no signature to read)."""
    try:
        return list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):  # a builtin
        return []


def _positional(params: list) -> list:
    """The parameters of a forward that take positional arguments, in order."""
    return [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


#: the attributes torch.fx's GraphModule has beyond nn.Module's: a model's own submodule,
#: parameter or buffer of one of these names cannot be set on the traced module
_GRAPH_MODULE_NAMES = frozenset(
    n
    for n in dir(torch.fx.GraphModule)
    if not hasattr(torch.nn.Module, n) and not n.startswith("__")
) | {"meta", "_code", "_graph", "_tracer_cls", "_tracer_extras"}


def _check_names(model: torch.nn.Module) -> None:
    """Raise where a submodule, parameter or buffer of ``model`` itself has a name that
    torch.fx's GraphModule uses for its own (``code``, ``graph``, ``meta``): fx would shadow it
    with its own attribute or refuse to set it, and the trace would fail further in with an
    error that does not say why."""
    if isinstance(model, torch.jit.ScriptModule):
        return  # refused by name further in (TorchScript is no Python to trace)
    own = [*model._modules, *model._parameters, *model._buffers]
    clash = [n for n in own if n in _GRAPH_MODULE_NAMES]
    if clash:
        raise TraceError(
            f"{type(model).__name__} has a submodule, parameter or buffer named "
            f"{', '.join(repr(n) for n in clash)}, a name torch.fx's GraphModule uses for its "
            "own attribute, so torch.fx cannot trace the model: rename it (or hold it one "
            "level down, in a submodule of another name)"
        )


def _check_made_while_traced(model: torch.nn.Module, graph: torch.fx.Graph) -> None:
    """Raise where ``graph`` reads a submodule, parameter or buffer that ``model`` does not
    have: the forward made it while traced (a layer built on the first call, sbi's
    ``if self.final is None: self.final = nn.Sequential(...)``), and what tracing binds is
    undone (:func:`attributes_kept`), so the weights it read are no weights of the model."""
    for n in graph.nodes:
        if n.op not in ("get_attr", "call_module"):
            continue
        owner: Any = model
        path = n.target.split(".")
        for k, name in enumerate(path):
            owner = getattr(owner, name, None) if owner is not None else None
            if owner is None:
                made = ".".join(path[: k + 1])
                raise TraceError(
                    f"{type(model).__name__}.forward made {made!r} while traced (a layer built "
                    f"on its first call), and node {n.name} reads {n.target!r} from it: run "
                    "the model once on the example before tracing, so that its weights exist"
                )


def _check_arity(model: torch.nn.Module, args: tuple) -> None:
    """Raise where ``model.forward`` cannot take the example's ``args`` as positional
    arguments, before tracing: a tuple meant as one argument (DeepONet's
    ``forward(inputs)`` reading ``inputs[0]`` and ``inputs[1]``), given as the example
    itself, is spread over the forward's parameters, and the trace then fails further in
    with a message that names another cause."""
    params = _forward_params(model)
    if not params or any(p.kind is p.VAR_POSITIONAL for p in params):
        return  # no signature to read, or *args takes the rest
    named = _positional(params)
    if len(args) <= len(named):
        return
    names = ", ".join(p.name for p in named) or "none"
    hint = (
        f"; to pass the tuple as {named[0].name}, wrap it in a tuple of one: "
        "example_input=((a, b, ...),)"
        if len(named) == 1
        else ""
    )
    raise TraceError(
        f"{type(model).__name__}.forward takes {len(named)} positional inputs ({names}) but "
        f"{len(args)} example inputs were given (a tuple or list example is the forward's "
        f"positional arguments){hint}"
    )


def _constants(model: torch.nn.Module, args: tuple) -> dict | None:
    """The values ``model.forward``'s parameters are traced as: the defaults of those after
    the example's ``args`` (the example input is the call ``model(*args)``;
    ``forward(x, mask=None)`` traced with ``mask`` a proxy would take the masked branch), and
    the given arguments that hold no tensor (``(x, None)``, a ``start_pos`` of 0, a flag)."""
    params = _forward_params(model)
    named = _positional(params)
    given = len(args)
    rest = {
        p.name: value
        for p, value in zip(named, args)
        if not any(isinstance(v, torch.Tensor) for v in leaves(value))
    }
    rest.update({p.name: p.default for p in named[given:] if p.default is not p.empty})
    # keyword-only ones too (siren-pytorch's forward(self, img=None, *, latent=None))
    rest.update(
        {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.default is not p.empty}
    )
    return rest or None


def canonical_keys(state: Mapping[str, torch.Tensor]) -> dict:
    """Each key of ``state`` -> the first key naming the same tensor (the same storage,
    shape, strides and dtype): a module used in two places is in a state_dict under each of
    its names (timm's CoaT shares its position encodings between blocks).

    >>> w = torch.ones(2)
    >>> canonical_keys({"a.w": w, "b.w": w, "c.w": torch.ones(2)})
    {'a.w': 'a.w', 'b.w': 'a.w', 'c.w': 'c.w'}
    """
    seen: dict = {}
    canon = {}
    for k, t in state.items():
        ident = (t.data_ptr(), tuple(t.shape), t.stride(), t.dtype) if t.numel() else (k,)
        canon[k] = seen.setdefault(ident, k)
    return canon


def as_args(example_input: Any) -> tuple:
    """The positional arguments a model is called with: a tuple stays, anything else is wrapped.

    >>> as_args(1), as_args((1, 2))
    ((1,), (1, 2))
    """
    return tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)


def trace_module(
    model: torch.nn.Module,
    example_input: Any,
    *,
    fake: bool | None = None,
    values: bool = True,
    dead_code: bool = False,
) -> torch.fx.GraphModule:
    """Symbolically trace ``model`` and propagate the example input's shapes through it.

    Parameters
    ----------
    model : nn.Module
        Any module whose own forward torch.fx can trace (MLPs, CNNs, residual and concat
        patterns); a submodule whose forward it cannot trace is kept as one call.
    example_input : Tensor or tuple
        One example batch; only its shapes and dtypes are used. The model is left as it was:
        what its forward binds on its modules while traced (a cached table) is undone. An
        argument without tensors (``None``, a flag, a number) is traced as that constant.
    fake : bool, optional
        Propagate shapes with fake tensors (no arithmetic: the cost does not grow with width,
        but the first use imports torch's fake-tensor machinery, about 3 s) or with the real
        forward. Default: fake when the model holds more than ``FAKE_ABOVE`` parameter
        elements, where one real forward would cost more than that import. A call kept as
        one that reads its input's values runs for real on random values of those shapes.
    values : bool
        Where the model's own forward, or a submodule's, branches on its data (a mixture of
        experts running the experts its router chose), which the other traces keep as one
        call or refuse, trace it again with the example's values fixed
        (:class:`ValueSpecialisingTracer`); ``meta["nfn_values"]`` then says where. False
        keeps the traces that read no values.
    dead_code : bool
        Keep the calls whose results reach no output (by default they are removed,
        :func:`without_dead_code`; ``meta["nfn_dead"]`` counts them). fx records a write it
        cannot follow (``w.data *= mask``) as a value nothing reads, so where the graph
        without them does not verify, the trace with them is the one to derive from.

    Returns
    -------
    torch.fx.GraphModule
        Sharing the model's submodules and parameters; every node has ``meta["tensor_meta"]``
        (tensors) or ``meta["nfn_value"]`` (other values).

    Raises
    ------
    TraceError
        When torch.fx cannot trace the model's own forward (data-dependent control flow,
        unsupported Python), with fx's reason, the source line and what to do, or when the
        example input does not fit the model (or a submodule kept as one call cannot run).
    """
    if not isinstance(model, torch.nn.Module):
        raise TraceError(f"expected an nn.Module to trace, got {type(model).__name__}")
    lazy = [k for k, t in model.state_dict(keep_vars=True).items() if is_lazy(t)]
    if lazy:
        shown = ", ".join(lazy[:5]) + (f" and {len(lazy) - 5} more" if len(lazy) > 5 else "")
        raise TraceError(
            f"{type(model).__name__} holds lazy parameters that are not made yet ({shown}): "
            "run one forward with the example input first (model(example_input)), which "
            "gives them their shapes"
        )
    args = as_args(example_input)
    with attributes_kept(model), compiled_as_eager(), _quiet_meta_failures():
        return _trace_module(model, args, fake, values, dead_code)


@contextlib.contextmanager
def _quiet_meta_failures() -> Iterator[None]:
    """While it lasts, torch does not log a traceback where an op refuses fake inputs (a
    pool larger than the example's map): the trace raises its own error for it, naming the
    node and the example input, and otherwise tries another way."""
    log = logging.getLogger("torch._subclasses.fake_tensor")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


@contextlib.contextmanager
def compiled_as_eager() -> Iterator[None]:
    """While it lasts, what ``torch.compile`` wraps (a function, a submodule, the model) runs
    as the Python it compiles and is traced through as such: fx refused it ("using FX to
    symbolically trace a dynamo-optimized function"), and a verification would compile every
    permuted copy. A no-op where torch.compile was never imported. Also a decorator.

    >>> shifted_relu = torch.compile(lambda x: torch.relu(x) + 1)
    >>> class Net(torch.nn.Module):
    ...     def forward(self, x):
    ...         return shifted_relu(x)
    >>> with compiled_as_eager():
    ...     gm = torch.fx.symbolic_trace(Net())
    >>> [n.target.__name__ for n in gm.graph.nodes if n.op == "call_function"]
    ['relu', 'add']
    """
    dynamo = sys.modules.get("torch._dynamo")
    if dynamo is None:
        yield
        return
    with (
        dynamo.config.patch(error_on_nested_fx_trace=False),
        torch.compiler.set_stance("force_eager"),
    ):
        yield


def _compiled(model: torch.nn.Module) -> tuple[torch.nn.Module, str]:
    """The module ``torch.compile`` wraps in ``model`` (through nested wrappers), and the
    prefix of its names in ``model`` (``"_orig_mod."``); ``(model, "")`` for any other model."""
    inner, prefix = model, ""
    frames = sys.modules.get("torch._dynamo.eval_frame")  # never imported: nothing compiled
    while frames is not None and isinstance(inner, frames.OptimizedModule):
        inner, prefix = inner._orig_mod, prefix + "_orig_mod."
    return inner, prefix


def _returns_traced(graph: torch.fx.Graph) -> bool:
    """Whether any node of ``graph`` reaches its output (a forward whose outputs are all
    constants returns none)."""
    out = next(n for n in reversed(graph.nodes) if n.op == "output")
    return bool(out.all_input_nodes)


def _python_scalar(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _replace_uses(node: torch.fx.Node, value: Any) -> None:
    """Make every user of ``node`` read ``value`` in its place."""

    def swap(a: Any) -> Any:
        return value if a is node else a

    for user in list(node.users):
        user.args = map_aggregate(user.args, swap)
        user.kwargs = map_aggregate(user.kwargs, swap)


def _kept_modules(model: torch.nn.Module, tracer: LeafFallbackTracer) -> int:
    """How many modules the calls a trace kept whole hold (a backbone kept because one of
    its blocks branches on a shape holds more than that block alone)."""
    return sum(sum(1 for _ in model.get_submodule(leaf.module).modules()) for leaf in tracer.leaves)


#: why a model with a dict input is traced with its shapes fixed (what ``trace_graph`` returns)
DICT_INPUT = "a dict input, read with the example's keys"


def wrapped_targets(gm: torch.fx.GraphModule, nodes: Iterable[str]) -> set:
    """The functions registered with ``torch.fx.wrap`` (torchvision's
    ``shifted_window_attention``, a user's) that the nodes named ``nodes`` call."""
    wrapped = {
        id(names[name]) for (_, name), names in _WRAPPED.items() if callable(names.get(name))
    }
    named = set(nodes)
    return {
        n.target
        for n in gm.graph.nodes
        if n.name in named and n.op == "call_function" and id(n.target) in wrapped
    }


@contextlib.contextmanager
def unwrapped(fns: set) -> Iterator[None]:
    """While it lasts, ``fns`` are left out of fx's registry of wrapped functions: a trace
    goes through them."""
    gone = {k: v for k, v in _WRAPPED.items() if v.get(k[1]) in fns}
    for k in gone:
        del _WRAPPED[k]
    try:
        yield
    finally:
        _WRAPPED.update(gone)


def trace_graph(
    model: torch.nn.Module, args: tuple, *, record_stack_traces: bool = False, values: bool = True
) -> tuple[LeafFallbackTracer, torch.fx.Graph, str]:
    """Symbolically trace ``model`` called with ``args`` (in eval mode).

    Plain symbolic tracing first; where it fails (the forward branches on a shape, iterates
    over a tensor, takes ``len`` of one), again with :class:`ShapeSpecialisingTracer`, which
    fixes the example's shapes. Where it succeeds but keeps submodules as one call that no
    rule of their class reads, that trace is tried too and taken if what it keeps holds fewer
    modules (a submodule that checks its input's dtype or shape is then read op by op).

    Where both fail, or both keep a submodule as one call that no rule reads, and ``values``:
    again with :class:`ValueSpecialisingTracer`, which fixes what the example's data picked (a
    mixture of experts' loop over the experts its router chose). That trace is taken where it
    keeps fewer modules, the example picked every member of each stacked weight it read, and
    it reads every parameter the trace it replaces reads (every parameter, for the model's
    own forward); else the kept trace's ``values_refused`` says why.

    Returns
    -------
    tracer : LeafFallbackTracer
    graph : torch.fx.Graph
    specialised : str
        Empty for a plain trace; :data:`DICT_INPUT` for a dict input (traced with its keys);
        else where plain tracing failed (``file:line in fn: code``, and
        the submodule where one was kept as one call).

    Raises
    ------
    TraceError
        When neither trace succeeds: fx's reason, the source line and what to do; or when
        ``model`` itself is a TorchScript module, which has no Python forward to trace.
    """
    if isinstance(model, torch.jit.ScriptModule):
        raise TraceError(
            f"{type(model).__name__} is a TorchScript module: torch.fx traces Python code, and "
            "a scripted model's forward is TorchScript. Trace the model before "
            "torch.jit.script (a scripted submodule is fine: it is kept as one call and "
            "probed), or write a WeightSpaceSpec by hand (examples in specs/weight_spaces/)."
        )
    defaults = _constants(model, args)
    einops_backend.register()  # einops calls on traced values, where einops is imported

    def run(make: Callable[[], LeafFallbackTracer]) -> tuple[LeafFallbackTracer, torch.fx.Graph]:
        tracer = make()
        try:
            return tracer, run_once(tracer)
        except ConstantWritten:
            # a buffer the forward made and then wrote traced values into: traced again with
            # the factories recorded, the buffer is a node and the write reaches its readers
            tracer = make()
            tracer.trace_factories = True
            return tracer, run_once(tracer)

    def run_once(tracer: LeafFallbackTracer) -> torch.fx.Graph:
        tracer.record_stack_traces = record_stack_traces
        # each trace starts from the model as it was: what one binds or caches on a module
        # (a proxy, in a dict of LeViT's) is undone before the next trace or any real forward
        with _eval_mode(model), attributes_kept(model) as keep, warnings.catch_warnings():
            # fx warns for each default it cannot guard with an assertion (a tensor, an object)
            warnings.filterwarnings("ignore", "Was not able to add assertion")
            graph = tracer.trace(model, concrete_args=defaults)
            keep.update(n.target for n in graph.nodes if n.op == "get_attr")
        keyword_only = {p.name for p in _forward_params(model) if p.kind is p.KEYWORD_ONLY}
        for n in list(graph.nodes):
            # a numpy scalar argument (``/ np.sqrt(d_k)``) as the Python number it is: fx would
            # write ``np.float64(2.0)`` into code that has no ``np``
            n.args, n.kwargs = map_aggregate((n.args, n.kwargs), _python_scalar)
            # a tensor default is traced as a constant of the graph; as the placeholder's own
            # default (a get_attr node) fx would write a name the code never defines
            if n.op == "placeholder" and n.args and isinstance(n.args[0], torch.fx.Node):
                n.args = (None,)
            # a keyword-only parameter left at its default: fx lists it before ``*args``,
            # where the graph's first input would bind to it; its uses (fx's guard that it
            # keeps its value) read the default itself
            # (fx may have renamed it, ``is_training_1``)
            base, _, suffix = str(n.target).rpartition("_")
            name = base if suffix.isdigit() and n.target not in keyword_only else n.target
            if n.op == "placeholder" and name in keyword_only and name in (defaults or {}):
                _replace_uses(n, defaults[name])
                graph.erase_node(n)
        for n in reversed(graph.nodes):
            # a read nothing uses: a tensor default's constant (above), or a parameter whose
            # dtype or shape the shape-specialising trace answered (the analysis would take
            # it for a parameter read but never used, and fix its axes)
            if n.op == "get_attr" and not n.users:
                graph.erase_node(n)
        return graph

    def specialising() -> LeafFallbackTracer:
        return ShapeSpecialisingTracer(args)

    def with_values(wanted: set[str], limit: int) -> tuple | None:
        """``(tracer, graph, why not)`` traced with the example's values fixed (``why not``
        ``""`` where it may be taken: the example picked every member of each stacked weight
        it read, and the graph reads every parameter of ``wanted``), or ``None`` where that
        trace fails."""
        try:
            tracer, graph = run(lambda: ValueSpecialisingTracer(args, limit))
        except Exception:
            return None
        return tracer, graph, tracer.unpicked or _unread(model, graph, wanted)

    def by_values(
        kept: tuple[LeafFallbackTracer, torch.fx.Graph, str],
    ) -> tuple[LeafFallbackTracer, torch.fx.Graph, str]:
        """``kept`` (a trace that keeps submodules as one call no rule reads), or the trace
        with the example's values fixed where that keeps fewer modules and reads every weight
        ``kept`` reads (else ``kept``'s ``values_refused`` says why)."""
        limit = VALUE_NODES + VALUE_NODES_PER_NODE * len(kept[1].nodes)
        made = with_values(_weights_read(model, kept[1]), limit) if values else None
        if made is None or _kept_modules(model, made[0]) >= _kept_modules(model, kept[0]):
            return kept
        tracer, graph, why = made
        if why:
            kept[0].values_refused = why
            return kept
        leaf = next(x for x in kept[0].leaves if not _ruled(model, x))
        tracer.fixed_at = f"{leaf.where or leaf.error} (in {leaf.kind} {leaf.module})"
        return tracer, graph, kept[2]

    # a dict input is one proxy to plain fx: ``obs.get("mask")`` of a key the example lacks
    # is a node, not None; the specialising trace reads the example's keys
    dict_input = any(isinstance(a, Mapping) for a in args)
    first: Exception | None = None
    if not dict_input:
        try:
            plain, graph = run(LeafFallbackTracer)
        except Exception as e:
            first = e
        else:
            ruled = all(_ruled(model, leaf) for leaf in plain.leaves)
            if not _returns_traced(graph):
                # nothing traced reaches the output: what the forward returns it looked up by a
                # traced value (timm's FeatureHooks key the maps they catch by `out.device`,
                # a proxy to plain fx), which the shape-specialising trace answers
                plain.type_asked = plain.type_asked or "the traced graph returns no traced value"
            if ruled and not plain.type_asked:
                return plain, graph, ""  # every kept call read by its class's rule
            # a submodule whose forward checks its input's shape or dtype (Hugging Face's
            # ViTModel does) is a leaf of the plain trace; with the example's shapes fixed it
            # may not be. A forward that asks whether a traced value is a tensor (MONAI's
            # UpCat: `torch.jit.isinstance(x_e, torch.Tensor)`) took the branch for no tensor,
            # where the shape-specialising trace knows the answer
            best = (plain, graph, "")
            with contextlib.suppress(Exception):  # where it fails, the plain trace stands
                tracer, fixed = run(specialising)
                if _kept_modules(model, tracer) < _kept_modules(model, plain):
                    leaf = plain.leaves[0]
                    best = (
                        tracer,
                        fixed,
                        f"{leaf.where or leaf.error} (in {leaf.kind} {leaf.module})",
                    )
                elif plain.type_asked:
                    best = (tracer, fixed, f"{plain.type_asked} ({_TYPE_ASKED})")
            if all(_ruled(model, leaf) for leaf in best[0].leaves):
                return best
            # a submodule whose forward branches on its data (a mixture of experts running
            # the experts its router chose) is kept as one call by both: with the example's
            # values fixed it may not be
            return by_values(best)
    try:
        tracer, graph = run(specialising)
    except Exception as e:
        # the model's own forward loops over what its data picked: traced with the example's
        # values fixed where that reads every parameter
        every = {k for k, _ in model.named_parameters()}
        made = with_values(every, VALUE_NODES) if values else None
        if made is not None and not made[2]:
            made[0].fixed_at = raised_at(e) or _error(e)
            return (
                made[0],
                made[1],
                DICT_INPUT if first is None else raised_at(first) or _error(first),
            )
        if first is None:
            error, past = e, f" ({DICT_INPUT})"
        else:
            # where the specialised trace stopped, when it got further than the plain one
            later = raised_at(e) != raised_at(first)
            error = e if later else first
            passed = raised_at(first) or _error(first)
            past = f" (with the example input's shapes fixed, past {passed})" if later else ""
        where = raised_at(error)
        at = f" at {where}" if where else ""
        raise TraceError(
            f"torch.fx could not trace {type(model).__name__}.forward{at}{past}: "
            f"{type(error).__name__}: {error}. {_ADVICE}"
        ) from e
    if tracer.leaves and not all(_ruled(model, leaf) for leaf in tracer.leaves):
        tracer, graph, _ = by_values((tracer, graph, ""))
    return tracer, graph, DICT_INPUT if first is None else raised_at(first) or _error(first)


def _weights_read(model: torch.nn.Module, graph: torch.fx.Graph) -> set[str]:
    """The parameters ``graph`` reads, by their first names (a tied weight read by any of its
    names): its ``get_attr`` nodes' (the constants it made aside), and every parameter of a
    module it calls."""
    first = _first_names(model)
    read = set()
    for n in graph.nodes:
        if n.op == "get_attr":
            read.add(first.get(str(n.target)))
        elif n.op == "call_module":
            sub = model.get_submodule(str(n.target))
            read.update(first.get(f"{n.target}.{k}") for k, _ in sub.named_parameters())
    return read - {None}


def _first_names(model: torch.nn.Module) -> dict[str, str]:
    """Every name of each parameter -> its first name (``named_parameters``')."""
    by_id = {id(p): k for k, p in model.named_parameters()}
    return {k: by_id[id(p)] for k, p in model.named_parameters(remove_duplicate=False)}


def _unread(model: torch.nn.Module, graph: torch.fx.Graph, wanted: set[str]) -> str:
    """Why a graph traced with the example's values fixed leaves out parameters of ``wanted``
    (first names: those another trace reads, an expert no token of the example chose, which
    other inputs run), or ``""`` where it reads them all."""
    missing = sorted(wanted - _weights_read(model, graph))
    if not missing:
        return ""
    shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    return (
        f"the example's values ran nothing that reads {shown}: an example whose tokens pick "
        "every expert reads each one"
    )


def _ruled(model: torch.nn.Module, leaf: LeafCall) -> bool:
    """Whether a call kept whole is read by its class's rule."""
    return module_rule(model.get_submodule(leaf.module)) is not None


#: the names of the root's attributes that hold the objects a graph reads as constants
_OBJECT = "_nfn_object"

#: Integer tensors up to this many entries keep their example values in the graph's meta.
INTEGER_VALUES_UP_TO = 1 << 16


def _record_integers(gm: torch.fx.GraphModule, args: tuple) -> None:
    """After shape propagation on fake tensors, the values of the small integer tensors that
    depend on the input and that a kept submodule takes (a router's choice, a one-hot dispatch
    mask), which its probe needs and fake tensors do not have: the graph is run once for real
    where there are any. Where that run fails, they stay unrecorded (the probe then declines,
    as before): the same propagation as without fake tensors, which records them."""
    from_input: set = set()
    wanted = False
    for n in gm.graph.nodes:
        if n.op == "placeholder" or any(a in from_input for a in n.all_input_nodes):
            from_input.add(n)
            wanted |= (
                n.op != "placeholder"
                and _small_integer(n.meta.get("tensor_meta"))
                and any(u.op == "call_module" for u in n.users)  # a kept call, probed
            )
    if wanted:
        with contextlib.suppress(Exception):
            NodeShapeProp(gm).propagate(*args)


#: random inputs a graph traced with the example's values fixed must compute the model's
#: output on (:func:`_differs_elsewhere`)
VALUE_DRAWS = 4


def _differs_elsewhere(model: torch.nn.Module, gm: torch.fx.GraphModule, args: tuple) -> str:
    """Why ``gm``, traced with the example's values fixed, is not ``model`` on other inputs
    (:data:`VALUE_DRAWS` draws of standard normal values for the example's float inputs, its
    other inputs as they are), or ``""``: :func:`graph_differs` on each draw."""
    gen = torch.Generator().manual_seed(0)
    for _ in range(VALUE_DRAWS):
        if graph_differs(model, gm, draw_inputs(args, gen)):
            return (
                "the graph at the example's values does not compute the model's output on "
                "random inputs (they pick what the example did not)"
            )
    return ""


def draw_inputs(
    args: tuple, gen: torch.Generator, dtype: torch.dtype | None = None, within: bool = False
) -> tuple:
    """Random inputs shaped like the example's float ones (standard normal, in ``dtype`` or
    each one's own), at any depth of its tuples, lists and dicts (SIREN takes
    ``{"coords": x}``); the others reused.

    ``within``: each entry of a float input uniform between the smallest and the largest value
    the example holds at that position across its batch (dim 0), instead: inputs like its data,
    for a model that is finite only on those (the log of a positive series) or reads a column
    of category codes as indices (``x[:, 0].long()``); the example itself where its batch is
    one, entries that are not finite as they are.

    >>> x, ids = draw_inputs((torch.zeros(2), torch.arange(3)), torch.Generator().manual_seed(0))
    >>> x.shape, ids.tolist()
    (torch.Size([2]), [0, 1, 2])
    >>> codes = torch.tensor([[0.0, -1.5], [4.0, 0.5], [2.0, 1.0]])
    >>> y, = draw_inputs((codes,), torch.Generator().manual_seed(0), within=True)
    >>> bool(((y[:, 0] >= 0) & (y[:, 0] <= 4)).all() and ((y[:, 1] >= -1.5) & (y[:, 1] <= 1)).all())
    True
    """

    def draw(a: Any) -> Any:
        if not (isinstance(a, torch.Tensor) and a.is_floating_point()):
            return a
        if not within:
            return torch.randn(a.shape, generator=gen, dtype=dtype or a.dtype)
        v = a.detach().to(dtype or a.dtype)
        if v.ndim == 0 or v.shape[0] == 0:
            return v.clone()
        finite = v.isfinite()
        lo = torch.where(finite, v, math.inf).amin(0, keepdim=True)
        hi = torch.where(finite, v, -math.inf).amax(0, keepdim=True)
        u = torch.rand(v.shape, generator=gen, dtype=v.dtype)
        return torch.where(finite, lo + (hi - lo) * u, v)

    return tuple(pytree.tree_map(draw, a) for a in args)


def _small_integer(x: Any) -> bool:
    """Whether ``x`` is an integer or boolean tensor (or a node's metadata of one) of at most
    :data:`INTEGER_VALUES_UP_TO` entries."""
    if isinstance(x, torch.Tensor):
        dtype, entries = x.dtype, x.numel()
    elif isinstance(x, TensorMetadata):
        dtype, entries = x.dtype, math.prod(x.shape)
    else:
        return False
    return not (dtype.is_floating_point or dtype.is_complex) and entries <= INTEGER_VALUES_UP_TO


def _trace_module(
    model: torch.nn.Module, args: tuple, fake: bool | None, values: bool, dead_code: bool
) -> torch.fx.GraphModule:
    inner, prefix = _compiled(model)
    _check_names(model if prefix else inner)  # the module the GraphModule copies from
    _check_arity(inner, args)

    def module(values: bool) -> torch.fx.GraphModule:
        tracer, graph, specialised = trace_graph(inner, args, values=values)
        _check_made_while_traced(tracer.root, graph)
        if prefix:  # the module torch.compile wraps, named as the compiled model's state_dict
            for n in graph.nodes:
                if n.op in ("get_attr", "call_module"):
                    n.target = prefix + n.target
                leaf = n.meta.get("nfn_leaf")
                if leaf is not None:
                    n.meta["nfn_leaf"] = dataclasses.replace(leaf, module=prefix + leaf.module)
        gm = torch.fx.GraphModule(model if prefix else tracer.root, graph, type(inner).__name__)
        before = len(gm.graph.nodes)
        gm.meta["nfn_dead"] = 0 if dead_code else before - len(without_dead_code(gm).graph.nodes)
        gm.meta["nfn_specialised"] = specialised
        gm.meta["nfn_values"] = getattr(tracer, "fixed_at", "")
        gm.meta["nfn_values_refused"] = tracer.values_refused
        return gm

    gm = module(values)
    if gm.meta["nfn_values"] and (why := _differs_elsewhere(model, gm, args)):
        # what the example's values picked is not the model on other inputs (an expert only
        # they route to): the traces that read no values
        gm = module(False)
        gm.meta["nfn_values_refused"] = why
    if fake is None:
        entries = model.state_dict().values()
        fake = sum(t.numel() for t in entries if isinstance(t, torch.Tensor)) > FAKE_ABOVE
    # (a forward that differentiates inside, zuko's monotonic flows under `enable_grad`,
    # which fx does not record, is propagated with gradients on)
    grads = any(n.target is torch.autograd.grad for n in gm.graph.nodes)
    with _eval_mode(model), torch.enable_grad() if grads else torch.no_grad():
        if fake:
            mode = FakeTensorMode(allow_non_fake_inputs=True)
            fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
            try:
                NodeShapeProp(gm, fake=mode).propagate(*fake_args)
            except TraceError:
                # an op whose output's shape the input's values decide, which fake tensors do
                # not have (sequences packed by their lengths: zeros are no lengths): the real
                # forward decides, as for a model too small for fake tensors
                NodeShapeProp(gm).propagate(*args)
            else:
                _record_integers(gm, args)
        else:
            NodeShapeProp(gm).propagate(*args)
    return gm


def leaves(value: Any, fields: bool = False) -> list:
    """Flatten nested tuples, lists and dict values (a model's inputs or outputs) into a list;
    with ``fields``, dataclass instances too (a model's outputs, compared by verification: a
    dataclass returned whole was no tensor to compare).

    >>> leaves((1, [2, {"a": 3}]))
    [1, 2, 3]
    """
    if isinstance(value, (tuple, list)):
        return [x for v in value for x in leaves(v, fields)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in leaves(v, fields)]
    if fields and dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [x for f in dataclasses.fields(value) for x in leaves(getattr(value, f.name), True)]
    return [value]


def call_name(node: Any, functions: Collection) -> str | None:
    """What a call does by name: a method call's name, or the ``__name__`` of one of
    ``functions`` (``torch.permute`` -> ``"permute"``); ``None`` for any other node (a function
    not in ``functions`` may share a name and do something else).

    >>> g = torch.fx.symbolic_trace(lambda x: torch.cumsum(x.float(), 0))
    >>> [call_name(n, {torch.cumsum}) for n in g.graph.nodes]
    [None, 'float', 'cumsum', None]
    """
    if not isinstance(node, torch.fx.Node):
        return None
    if node.op == "call_method":
        return node.target
    if node.op == "call_function" and node.target in functions:
        return getattr(node.target, "__name__", None)
    return None
