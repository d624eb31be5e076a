"""Stage 2 of the front end: the neuron-symmetry graph of a traced model.

:class:`SymmetryAnalysis` walks a shape-propagated :class:`torch.fx.GraphModule` like a
:class:`torch.fx.Interpreter`, but instead of tensors it computes, for every node, *which
neurons index which dims* of the value: a :class:`TensorLabels` with one :data:`Label` (or
``None``) per dim. A label is a tuple of :class:`Seg` s, each a slice of a *run* of neurons (the
outputs of one layer, the model input's channels, one axis of a parameter used directly); a
2048-channel conv output is one run, not 2048 nodes. The result is stored on each node as
``node.meta["nfn_labels"]``.

Op rules (registered per module type, function and method name) record constraints:

* ``tie``: two slices of runs must move together (elementwise ops, residual add, concat and
  split index maps, norms, depthwise and grouped convs);
* ``cut``: a run may only permute within pieces (GroupNorm groups, conv groups);
* ``fix``: neurons whose symmetry is broken (unknown functions, channel-position-dependent
  indexing, reshapes that mix channels with other axes), with the op and the reason;
* parameter axis labels: which runs index each axis of each state_dict entry.

:func:`build_symmetry_graph` returns them as a :class:`networkx.MultiGraph`: one node per run
and per parameter axis, one edge per tie and per parameter-axis reference.
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
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from ..errors import TraceError
from .fx import leaves

__all__ = [
    "Seg",
    "TensorLabels",
    "SymmetryAnalysis",
    "build_symmetry_graph",
    "register_module",
    "register_function",
    "register_method",
    "MODULE_RULES",
    "FUNCTION_RULES",
    "METHOD_RULES",
]


# --------------------------------------------------------------------------------------------
# labels
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seg:
    """``length`` consecutive neurons of run ``run`` from ``offset``, each spanning ``inner``
    consecutive positions of the labelled dim (``inner > 1`` after flattening C x P).

    >>> Seg(0, 2, 3).width, Seg(0, 0, 4, inner=9).width
    (3, 36)
    """

    run: int
    offset: int
    length: int
    inner: int = 1

    @property
    def width(self) -> int:
        """Positions covered in the labelled dim."""
        return self.length * self.inner


#: The neurons along one dim: a tuple of segments, in order.
Label = tuple


def label_width(label: Label) -> int:
    """Number of positions a label covers."""
    return sum(s.width for s in label)


@dataclass(frozen=True)
class TensorLabels:
    """The abstract value of one tensor: its shape and a label (or ``None``) per dim.

    ``None`` means the group does not act along that dim (batch, spatial, fixed neurons).
    """

    shape: tuple
    labels: tuple

    @staticmethod
    def plain(shape: Any) -> TensorLabels:
        """A tensor the group does not act on."""
        shape = tuple(shape)
        return TensorLabels(shape, (None,) * len(shape))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def with_label(self, dim: int, label: Label | None) -> TensorLabels:
        labels = list(self.labels)
        labels[dim] = label
        return TensorLabels(self.shape, tuple(labels))

    @property
    def labelled(self) -> bool:
        return any(lab is not None for lab in self.labels)


@dataclass
class Run:
    """A run of neurons: created by one op (or the model input, or a parameter axis)."""

    id: int
    size: int
    kind: str  # "input" | "neuron" | "param" | "fixed"
    origin: str  # readable creator: module target, "in", param key + axis
    node: str  # fx node name
    op: str


@dataclass
class Tie:
    a: int
    a_off: int
    b: int
    b_off: int
    length: int
    op: str
    node: str


@dataclass
class Broken:
    """One op that broke symmetry."""

    op: str
    node: str
    reason: str
    neurons: list = field(default_factory=list)  # (run, offset, length)


@dataclass
class ParamLabel:
    """The labels of one state_dict entry: its (view) shape and a label per view axis."""

    shape: tuple
    view: tuple | None
    axes: list
    ops: list = field(default_factory=list)


class _Unsupported(Exception):
    """Raised inside a rule: fall back to the conservative rule with this reason."""


# --------------------------------------------------------------------------------------------
# registries
# --------------------------------------------------------------------------------------------

Rule = Callable[..., Any]
MODULE_RULES: dict = {}
FUNCTION_RULES: dict = {}
METHOD_RULES: dict = {}


def register_module(*types: type) -> Callable[[Rule], Rule]:
    """Register a rule ``rule(analysis, module, args, kwargs) -> value`` for module types
    (looked up along the MRO, so base classes cover their subclasses)."""

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


def _is_float_entry(t: torch.Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()


# --------------------------------------------------------------------------------------------
# the analysis pass
# --------------------------------------------------------------------------------------------


class SymmetryAnalysis(torch.fx.Interpreter):
    """An Interpreter over labels: computes ``node.meta["nfn_labels"]`` for every node and
    collects the constraints that define the neuron spaces.

    Parameters
    ----------
    gm : torch.fx.GraphModule
        Output of :func:`nfncompile.frontend.fx.trace_module` (every node has shape meta).
    model : nn.Module, optional
        The traced model (for its state_dict keys; defaults to ``gm``).
    """

    def __init__(self, gm: torch.fx.GraphModule, model: nn.Module | None = None) -> None:
        super().__init__(gm, garbage_collect_values=False)
        self.model = model if model is not None else gm
        self.runs: list[Run] = []
        self.ties: list[Tie] = []
        self.cuts: list[tuple] = []  # (run, pos, op, node)
        self.fixes: list[tuple] = []  # (run, offset, length, broken index)
        self.broken: list[Broken] = []
        self.inputs: list = []  # (name, TensorLabels)
        self.outputs: list = []  # TensorLabels per output leaf (None for non-tensors)
        self.state = {k: v for k, v in self.model.state_dict(keep_vars=True).items()}
        self.state_keys = [k for k, v in self.state.items() if _is_float_entry(v)]
        self._canonical = self._find_aliases()
        self.params: dict[str, ParamLabel] = {}
        self.unused_param_runs: list[int] = []
        self.node: torch.fx.Node | None = None
        self.op = ""
        self.touched: dict = {}  # run id -> ops that read a label holding it

    # ---- bookkeeping ------------------------------------------------------------------------

    def _find_aliases(self) -> dict:
        seen: dict = {}
        canon = {}
        for k in self.state_keys:
            t = self.state[k]
            ident = (t.data_ptr(), tuple(t.shape), t.stride(), t.dtype) if t.numel() else (k,)
            canon[k] = seen.setdefault(ident, k)
        return canon

    def new_run(self, size: int, kind: str, origin: str) -> Label:
        """A fresh run of ``size`` neurons; returns its full label."""
        run = Run(len(self.runs), size, kind, origin, self.node.name if self.node else "", self.op)
        self.runs.append(run)
        if kind == "fixed":
            self._fix_run(run.id, 0, size, self._broken("fixed positions (not neurons)"))
        return (Seg(run.id, 0, size),)

    def _broken(self, reason: str) -> int:
        name = self.node.name if self.node else ""
        for i, b in enumerate(self.broken):
            if b.node == name and b.reason == reason:
                return i
        self.broken.append(Broken(self.op, name, reason))
        return len(self.broken) - 1

    def _fix_run(self, run: int, offset: int, length: int, bi: int) -> None:
        self.fixes.append((run, offset, length, bi))
        self.broken[bi].neurons.append((run, offset, length))

    def fix(self, label: Label | None, reason: str) -> None:
        """Mark every neuron of ``label`` fixed, recording the current op and ``reason``."""
        if not label:
            return
        bi = self._broken(reason)
        for s in label:
            self._fix_run(s.run, s.offset, s.length, bi)

    def fix_all(self, value: Any, reason: str) -> None:
        """Fix every label in a (nested) value."""
        for info in _tensors(value):
            for lab in info.labels:
                self.fix(lab, reason)

    def tie(self, a: Label | None, b: Label | None, reason: str = "") -> Label | None:
        """Tie two labels position by position (of equal width); returns ``a``.

        A labelled side meeting an unlabelled one is fixed (a position-dependent partner).
        """
        if a is None and b is None:
            return None
        if a is None or b is None:
            self.fix(a or b, reason or "meets a tensor the group does not act on")
            return None
        if label_width(a) != label_width(b):
            raise TraceError(
                f"internal: tying labels of widths {label_width(a)} and {label_width(b)}"
            )
        ia = ib = 0
        pa = pb = 0  # start positions of segs a[ia], b[ib]
        pos = 0
        total = label_width(a)
        while pos < total:
            sa, sb = a[ia], b[ib]
            end = min(pa + sa.width, pb + sb.width)
            ok = (
                sa.inner == sb.inner
                and (pos - pa) % sa.inner == 0
                and (pos - pb) % sb.inner == 0
                and (end - pos) % sa.inner == 0
            )
            if ok:
                na = sa.offset + (pos - pa) // sa.inner
                nb = sb.offset + (pos - pb) // sb.inner
                n = (end - pos) // sa.inner
                if not (sa.run == sb.run and na == nb):
                    self.ties.append(Tie(sa.run, na, sb.run, nb, n, self.op, self._name()))
            else:
                self.fix((sa, sb), "ties neurons to positions inside other neurons' blocks")
            pos = end
            if pos == pa + sa.width:
                pa += sa.width
                ia += 1
            if pos == pb + sb.width:
                pb += sb.width
                ib += 1
        return a

    def cut(self, label: Label | None, pos: int) -> None:
        """Allow permutations only within ``[0, pos)`` and ``[pos, width)`` of ``label``."""
        if label is None:
            return
        start = 0
        for s in label:
            if start < pos < start + s.width:
                local = pos - start
                if local % s.inner:
                    self.fix((s,), "splits a neuron's block of positions")
                else:
                    self.cuts.append((s.run, s.offset + local // s.inner, self.op, self._name()))
                return
            start += s.width

    def consume(self, label: Label | None) -> None:
        """A label the op reduces over symmetrically (sum, mean, max): its segments may only
        permute within themselves, so their boundaries become cuts."""
        for s in label or ():
            self.cuts.append((s.run, s.offset, self.op, self._name()))
            self.cuts.append((s.run, s.offset + s.length, self.op, self._name()))

    def slice_label(self, label: Label | None, start: int, stop: int) -> Label | None:
        """The sub-label of positions ``[start, stop)``; raises :class:`_Unsupported` when the
        bounds split a neuron's block of positions."""
        if label is None:
            return None
        out = []
        p = 0
        for s in label:
            lo, hi = max(start, p), min(stop, p + s.width)
            if lo < hi:
                a, b = lo - p, hi - p
                if a % s.inner or b % s.inner:
                    raise _Unsupported("slices through a flattened neuron's block of positions")
                out.append(Seg(s.run, s.offset + a // s.inner, (b - a) // s.inner, s.inner))
            p += s.width
        return tuple(out) if out else None

    def _name(self) -> str:
        return self.node.name if self.node else ""

    # ---- parameters ---------------------------------------------------------------------------

    def key(self, prefix: str, attr: str) -> str | None:
        """The state_dict key of ``prefix.attr`` if it is a float entry, else ``None``."""
        k = f"{prefix}.{attr}" if prefix else attr
        return k if k in self._canonical else None

    def label_param(self, key: str | None, labels: list) -> None:
        """Label state_dict entry ``key`` (one label or ``None`` per dim of its shape).

        Labels with ``inner > 1`` split the axis into ``(neurons, inner)`` in the param's
        ``view``. A second labelling of the same entry is tied to the first.
        """
        if key is None:
            return
        key = self._canonical[key]
        shape = tuple(self.state[key].shape)
        if len(labels) != len(shape):
            raise TraceError(
                f"internal: {len(labels)} labels for {key} of shape {list(shape)} "
                f"at {self.node.format_node() if self.node else '?'}"
            )
        view, axes, split = [], [], False
        for lab, n in zip(labels, shape):
            inner = {s.inner for s in lab} if lab else {1}
            if len(inner) > 1:
                self.fix(lab, f"{key}: flattened blocks of different sizes on one axis")
                lab, inner = None, {1}
            q = inner.pop()
            if q > 1:
                split = True
                view += [n // q, q]
                axes += [tuple(Seg(s.run, s.offset, s.length) for s in lab), None]
            else:
                view.append(n)
                axes.append(lab)
        new = ParamLabel(shape, tuple(view) if split else None, axes, [self.op])
        old = self.params.get(key)
        if old is None:
            self.params[key] = new
            return
        old.ops.append(self.op)
        if old.view != new.view:
            for lab in old.axes + new.axes:
                self.fix(lab, f"{key} is used with two different flattenings")
            old.view, old.axes = None, [None] * len(shape)
            return
        for i, (x, y) in enumerate(zip(old.axes, new.axes)):
            if x is None or y is None:
                self.tie(x, y, f"{key} axis {i} is indexed by neurons in one use, fixed in another")
                old.axes[i] = None
            else:
                self.tie(x, y)

    # ---- Interpreter overrides ------------------------------------------------------------------

    def run_node(self, n: torch.fx.Node) -> Any:
        self.node = n
        self.op = _describe(self, n)
        if n.op not in ("placeholder", "get_attr", "output"):
            for info in _tensors(self.fetch_args_kwargs_from_env(n)):
                for lab in info.labels:
                    for s in lab or ():
                        ops = self.touched.setdefault(s.run, [])
                        if not ops or ops[-1] != self.op:
                            ops.append(self.op)
        try:
            value = super().run_node(n)
        except TraceError:
            raise
        except Exception as e:
            raise TraceError(
                f"symmetry analysis failed at node {n.format_node()} ({self.op}): "
                f"{type(e).__name__}: {e}"
            ) from e
        n.meta["nfn_labels"] = value
        return value

    def placeholder(self, target: Any, args: Any, kwargs: Any) -> Any:
        info = _meta_value(self.node)
        if not isinstance(info, TensorLabels):
            return info
        if not self.node.meta["tensor_meta"].dtype.is_floating_point or info.ndim == 0:
            self.inputs.append((self.node.name, info))
            return info
        dim = 1 if info.ndim >= 2 else 0
        origin = "in" if not self.inputs else f"in{len(self.inputs) + 1}"
        info = info.with_label(dim, self.new_run(info.shape[dim], "input", origin))
        self.inputs.append((self.node.name, info))
        return info

    def get_attr(self, target: str, args: Any, kwargs: Any) -> Any:
        info = _meta_value(self.node)
        if not isinstance(info, TensorLabels):
            return info
        if target not in self._canonical:
            return info  # a tensor constant: the group does not act on it
        labels = []
        for d, n in enumerate(info.shape):
            labels.append(self.new_run(n, "param", f"{target}.d{d}") if n > 1 else None)
        if not self.node.users:
            for lab in labels:
                if lab:
                    self.unused_param_runs.append(lab[0].run)
        self.label_param(target, labels)
        return TensorLabels(info.shape, tuple(labels))

    def call_module(self, target: str, args: Any, kwargs: Any) -> Any:
        mod = self.fetch_attr(target)
        rule = None
        for t in type(mod).__mro__:
            rule = MODULE_RULES.get(t)
            if rule is not None:
                break
        return self._apply(rule, (self, mod, target, args, kwargs), args, kwargs)

    def call_function(self, target: Any, args: Any, kwargs: Any) -> Any:
        if "tensor_meta" not in self.node.meta:
            return self.node.meta.get("nfn_value")
        return self._apply(FUNCTION_RULES.get(target), (self, args, kwargs), args, kwargs)

    def call_method(self, target: str, args: Any, kwargs: Any) -> Any:
        if "tensor_meta" not in self.node.meta:
            return self.node.meta.get("nfn_value")
        return self._apply(METHOD_RULES.get(target), (self, args, kwargs), args, kwargs)

    def output(self, target: Any, args: Any, kwargs: Any) -> Any:
        self.outputs = [v if isinstance(v, TensorLabels) else None for v in leaves(args[0])]
        return args[0]

    def _apply(self, rule: Rule | None, call: tuple, args: Any, kwargs: Any) -> Any:
        if rule is None:
            return self.fallback(args, kwargs, f"no symmetry rule for {self.op}")
        try:
            return rule(*call)
        except _Unsupported as e:
            return self.fallback(args, kwargs, str(e))

    def fallback(self, args: Any, kwargs: Any, reason: str) -> Any:
        """The conservative rule: fix every labelled input, the output is unlabelled."""
        self.fix_all((args, kwargs), reason)
        return _meta_value(self.node)

    def out(self) -> Any:
        """The unlabelled abstract value of the current node (shapes from its meta)."""
        return _meta_value(self.node)

    def out_shape(self) -> tuple:
        return tuple(self.node.meta["tensor_meta"].shape)

    # ---- generic helpers used by rules ------------------------------------------------------

    def broadcast(self, values: list, shape: tuple | None = None) -> TensorLabels:
        """Elementwise op: align dims from the right, tie labels along each output dim.

        A labelled dim (size > 1) meeting an unlabelled dim of size > 1 is fixed: the op
        treats channel positions differently.
        """
        shape = self.out_shape() if shape is None else shape
        infos = [v for v in values if isinstance(v, TensorLabels)]
        labels = []
        for d in range(len(shape)):
            found, plain = [], False
            for info in infos:
                k = d - (len(shape) - info.ndim)
                if k < 0:
                    continue
                lab = info.labels[k]
                if info.shape[k] == 1 and shape[d] > 1:
                    # one neuron's value broadcast to every position
                    self.fix(lab, "broadcasts one neuron's value to all positions")
                elif lab is None:
                    plain = plain or info.shape[k] > 1
                else:
                    found.append(lab)
            if found and plain:
                for lab in found:
                    self.fix(lab, "combined elementwise with a tensor that depends on position")
                labels.append(None)
            elif found:
                for lab in found[1:]:
                    self.tie(found[0], lab)
                labels.append(found[0])
            else:
                labels.append(None)
        return TensorLabels(tuple(shape), tuple(labels))

    def keep(self, info: TensorLabels, mixed: tuple, reason: str) -> TensorLabels:
        """Fix labels on ``mixed`` dims (which the op mixes across positions)."""
        labels = list(info.labels)
        for d in mixed:
            if labels[d] is not None:
                self.fix(labels[d], reason)
                labels[d] = None
        return TensorLabels(info.shape, tuple(labels))

    def reshape(self, info: TensorLabels, shape: tuple) -> TensorLabels:
        """Labels after reshaping ``info`` to ``shape`` (view, flatten, squeeze, ...).

        A labelled dim may merge with the dims after it (its neurons then span blocks of
        positions) or be split back; a reshape that interleaves neurons with other axes fixes
        them.
        """
        shape = tuple(shape)
        for d, n in enumerate(info.shape):
            if n == 1 and info.labels[d] is not None:
                self.fix(info.labels[d], "reshape drops a one-neuron axis")
        src = [(d, n) for d, n in enumerate(info.shape) if n != 1]
        dst = [(d, n) for d, n in enumerate(shape) if n != 1]
        labels: list = [None] * len(shape)
        i = j = 0
        while i < len(src) or j < len(dst):
            gi, gj = [src[i]] if i < len(src) else [], [dst[j]] if j < len(dst) else []
            i, j = i + len(gi), j + len(gj)
            pi = math.prod(n for _, n in gi)
            pj = math.prod(n for _, n in gj)
            while pi != pj:
                if pi < pj and i < len(src):
                    gi.append(src[i])
                    pi *= src[i][1]
                    i += 1
                elif pj < pi and j < len(dst):
                    gj.append(dst[j])
                    pj *= dst[j][1]
                    j += 1
                else:
                    raise TraceError(f"internal: reshape {info.shape} -> {shape} does not match")
            lab_dims = [t for t, (d, _) in enumerate(gi) if info.labels[d] is not None]
            if not lab_dims:
                continue
            if len(lab_dims) > 1 or lab_dims[0] != 0:
                for t in lab_dims:
                    self.fix(info.labels[gi[t][0]], "reshape interleaves neurons with other axes")
                continue
            lab = info.labels[gi[0][0]]
            merged = math.prod(n for _, n in gi[1:])
            rest = math.prod(n for _, n in gj[1:])
            new = []
            for s in lab:
                q = s.inner * merged
                if q % rest:
                    new = None
                    break
                new.append(Seg(s.run, s.offset, s.length, q // rest))
            if new is None:
                self.fix(lab, "reshape splits neurons across several axes")
                continue
            labels[gj[0][0]] = tuple(new)
        return TensorLabels(shape, tuple(labels))


def _describe(a: SymmetryAnalysis, n: torch.fx.Node) -> str:
    if n.op == "call_module":
        return f"{type(a.fetch_attr(n.target)).__name__} {n.target}"
    if n.op == "call_function":
        mod = getattr(n.target, "__module__", "") or ""
        name = getattr(n.target, "__name__", str(n.target))
        prefix = {"torch.nn.functional": "F.", "_operator": "operator."}.get(mod, "torch.")
        if getattr(F, name, None) is n.target:
            prefix = "F."
        return f"{prefix}{name} ({n.name})"
    if n.op == "call_method":
        return f".{n.target}() ({n.name})"
    return f"{n.op} {n.target}"


def _meta_value(n: torch.fx.Node) -> Any:
    if "tensor_meta" not in n.meta:
        return n.meta.get("nfn_value")

    def conv(m: Any) -> Any:
        if hasattr(m, "shape") and hasattr(m, "dtype") and hasattr(m, "stride"):
            return TensorLabels.plain(tuple(m.shape))
        if isinstance(m, (tuple, list)):
            return type(m)(conv(x) for x in m)
        if isinstance(m, dict):
            return {k: conv(v) for k, v in m.items()}
        return m

    return conv(n.meta["tensor_meta"])


def _tensors(value: Any) -> list:
    return [v for v in leaves(value) if isinstance(v, TensorLabels)]


def _arg(args: tuple, kwargs: dict, i: int, name: str, default: Any = None) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[i] if len(args) > i else default


def _dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def _nd(mod: nn.Module, default: int = 2) -> int:
    name = type(mod).__name__
    for k in ("1d", "2d", "3d"):
        if name.endswith(k):
            return int(k[0])
    return default


# --------------------------------------------------------------------------------------------
# elementwise
# --------------------------------------------------------------------------------------------

_ACTIVATION_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.SELU,
    nn.CELU, nn.Softplus, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Mish, nn.LogSigmoid,
    nn.Softsign, nn.Tanhshrink, nn.Softshrink, nn.Hardshrink, nn.Threshold, nn.Identity,
    nn.modules.dropout._DropoutNd, nn.Softmin, nn.Softmax, nn.LogSoftmax, nn.Softmax2d,
)  # fmt: skip

_ELEMENTWISE_FUNCTIONS = [
    F.relu, F.relu_, F.relu6, F.gelu, F.silu, F.elu, F.selu, F.celu, F.leaky_relu, F.softplus,
    F.hardswish, F.hardsigmoid, F.hardtanh, F.mish, F.logsigmoid, F.softsign, F.tanhshrink,
    F.softshrink, F.hardshrink, F.threshold, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d,
    F.alpha_dropout, F.feature_alpha_dropout, F.sigmoid, F.tanh, F.softmax, F.log_softmax,
    F.softmin, F.normalize,
    torch.relu, torch.relu_, torch.sigmoid, torch.tanh, torch.sin, torch.cos, torch.tan,
    torch.exp, torch.exp2, torch.expm1, torch.log, torch.log1p, torch.log2, torch.log10,
    torch.abs, torch.neg, torch.sqrt, torch.rsqrt, torch.square, torch.pow, torch.clamp,
    torch.clip, torch.clamp_min, torch.clamp_max, torch.erf, torch.erfc, torch.sign,
    torch.floor, torch.ceil, torch.round, torch.trunc, torch.frac, torch.reciprocal,
    torch.sinh, torch.cosh, torch.asin, torch.acos, torch.atan, torch.atan2, torch.asinh,
    torch.acosh, torch.atanh, torch.add, torch.sub, torch.subtract, torch.mul, torch.multiply,
    torch.div, torch.divide, torch.true_divide, torch.floor_divide, torch.remainder, torch.fmod,
    torch.maximum, torch.minimum, torch.fmax, torch.fmin, torch.lerp, torch.addcmul,
    torch.addcdiv, torch.nan_to_num, torch.softmax, torch.log_softmax, torch.sigmoid,
    torch.logit, torch.heaviside, torch.hypot, torch.eq, torch.ne, torch.gt, torch.ge, torch.lt,
    torch.le, torch.logical_and, torch.logical_or, torch.logical_not, torch.logical_xor,
    torch.isnan, torch.isfinite, torch.masked_fill, torch.special.expit, torch.special.erf,
    torch.dropout, torch.selu, torch.celu, torch.rrelu, torch.hardshrink, torch.square,
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv,
    operator.pow, operator.neg, operator.pos, operator.abs, operator.mod, operator.iadd,
    operator.isub, operator.imul, operator.itruediv, operator.eq, operator.ne, operator.gt,
    operator.ge, operator.lt, operator.le, operator.and_, operator.or_, operator.invert,
]  # fmt: skip

_ELEMENTWISE_METHODS = [
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "sin", "sin_", "cos", "exp",
    "exp_", "log", "log1p", "abs", "abs_", "neg", "neg_", "sqrt", "rsqrt", "square", "pow",
    "pow_", "clamp", "clamp_", "clip", "clamp_min", "clamp_max", "erf", "sign", "floor",
    "ceil", "round", "reciprocal", "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_",
    "true_divide", "maximum", "minimum", "lerp", "addcmul", "addcdiv", "nan_to_num",
    "softmax", "log_softmax", "eq", "ne", "gt", "ge", "lt", "le", "masked_fill",
    "masked_fill_", "logical_not", "float", "double", "half", "bfloat16", "contiguous",
    "clone", "detach", "requires_grad_", "cpu", "cuda", "zero_", "fill_",
]  # fmt: skip


@register_module(*_ACTIVATION_MODULES)
def _module_elementwise(a: SymmetryAnalysis, mod: nn.Module, target: str, args: Any, kw: Any):
    return a.broadcast([*args, *kw.values()])


@register_function(*_ELEMENTWISE_FUNCTIONS, torch.where)
def _function_elementwise(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    if a.node.target is torch.where and len(args) + len(kwargs) == 1:
        raise _Unsupported("torch.where(cond) returns positions")
    return a.broadcast([*leaves(list(args)), *leaves(list(kwargs.values()))])


@register_method(*_ELEMENTWISE_METHODS)
def _method_elementwise(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    return a.broadcast([*leaves(list(args)), *leaves(list(kwargs.values()))])


@register_method("to", "type", "type_as")
def _method_cast(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    return TensorLabels(a.out_shape(), args[0].labels)


@register_function(torch.zeros_like, torch.ones_like, torch.full_like, torch.empty_like)
def _constant_like(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    # a constant-valued tensor is unchanged by any permutation: it may carry x's labels
    return TensorLabels(a.out_shape(), args[0].labels)


@register_module(nn.PReLU)
def _prelu(a: SymmetryAnalysis, mod: nn.PReLU, target: str, args: Any, kw: Any) -> Any:
    x = args[0]
    lab = None
    if mod.num_parameters > 1:
        lab = x.labels[1 if x.ndim >= 2 else 0]
        if lab is None:
            raise _Unsupported("PReLU with per-channel weights on an unlabelled channel dim")
    a.label_param(a.key(target, "weight"), [lab])
    return x


# --------------------------------------------------------------------------------------------
# linear and convolutional layers
# --------------------------------------------------------------------------------------------


def _linear(a: SymmetryAnalysis, x: TensorLabels, out: Label) -> tuple:
    labels = x.labels[:-1] + (out,)
    return TensorLabels(a.out_shape(), labels)


@register_module(nn.Linear)
def _module_linear(a: SymmetryAnalysis, mod: nn.Linear, target: str, args: Any, kw: Any):
    x = args[0]
    out = a.new_run(mod.out_features, "neuron", target)
    a.label_param(a.key(target, "weight"), [out, x.labels[-1]])
    a.label_param(a.key(target, "bias"), [out])
    return _linear(a, x, out)


@register_module(nn.Embedding)
def _module_embedding(a: SymmetryAnalysis, mod: nn.Embedding, target: str, args: Any, kw: Any):
    out = a.new_run(mod.embedding_dim, "neuron", target)
    a.label_param(a.key(target, "weight"), [None, out])
    return TensorLabels(a.out_shape(), (None,) * (len(a.out_shape()) - 1) + (out,))


@register_function(F.linear)
def _function_linear(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    x, w, b = args[0], _arg(args, kwargs, 1, "weight"), _arg(args, kwargs, 2, "bias")
    if not isinstance(w, TensorLabels) or w.ndim != 2:
        raise _Unsupported("F.linear with a weight that is not a 2-D tensor")
    a.tie(x.labels[-1], w.labels[1], "F.linear input meets an unlabelled weight axis")
    if isinstance(b, TensorLabels):
        a.tie(w.labels[0], b.labels[0] if b.ndim else None)
    return _linear(a, x, w.labels[0])


@register_function(torch.matmul, operator.matmul, torch.mm, torch.bmm)
@register_method("matmul", "mm", "bmm")
def _matmul(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    x, y = args[0], args[1]
    if not (isinstance(x, TensorLabels) and isinstance(y, TensorLabels)):
        raise _Unsupported("matmul with a non-tensor operand")
    if x.ndim < 2 or y.ndim < 2:
        raise _Unsupported("matmul with a 1-D operand")
    a.tie(x.labels[-1], y.labels[-2], "matmul contracts neurons with positions")
    bx = TensorLabels(x.shape[:-2], x.labels[:-2])
    by = TensorLabels(y.shape[:-2], y.labels[:-2])
    shape = a.out_shape()
    batch = a.broadcast([bx, by], shape[:-2])
    return TensorLabels(shape, batch.labels + (x.labels[-2], y.labels[-1]))


def _conv(a: SymmetryAnalysis, mod: nn.Module, target: str, x: TensorLabels) -> TensorLabels:
    nd = len(mod.kernel_size)
    cd = x.ndim - nd - 1
    x = a.keep(x, tuple(range(cd + 1, x.ndim)), "convolution mixes spatial positions")
    lab = x.labels[cd]
    g = mod.groups
    cin, cout = mod.in_channels, mod.out_channels
    transposed = isinstance(mod, nn.modules.conv._ConvTransposeNd)
    kernel = [None] * nd
    wkey, bkey = a.key(target, "weight"), a.key(target, "bias")
    if g == 1:
        out = a.new_run(cout, "neuron", target)
        a.label_param(wkey, [lab, out, *kernel] if transposed else [out, lab, *kernel])
        a.label_param(bkey, [out])
    elif cin == g:
        # depthwise: output group i is made from input neuron i alone
        m = cout // g
        if lab is None:
            out = a.new_run(cout, "neuron", target)
            for k in range(1, g):
                a.cut(out, k * m)
            w_axes = [None, out, *kernel] if transposed else [out, None, *kernel]
            a.label_param(wkey, w_axes)
            a.label_param(bkey, [out])
        else:
            out = tuple(Seg(s.run, s.offset, s.length, s.inner * m) for s in lab)
            if transposed:
                a.label_param(wkey, [lab, None, *kernel])
            else:
                a.label_param(wkey, [out, None, *kernel])
            a.label_param(bkey, [out])
    else:
        k_in, m = cin // g, cout // g
        if not transposed:
            # the input channels of every group move together (one space of size cin/g);
            # each output group permutes on its own
            pieces = [a.slice_label(lab, i * k_in, (i + 1) * k_in) for i in range(g)]
            for p in pieces[1:]:
                a.tie(pieces[0], p)
            out = a.new_run(cout, "neuron", target)
            for i in range(1, g):
                a.cut(out, i * m)
            a.label_param(wkey, [out, pieces[0], *kernel])
        else:
            for i in range(1, g):
                a.cut(lab, i * k_in)
            out = a.new_run(cout, "neuron", target)
            first = a.slice_label(out, 0, m)
            for i in range(1, g):
                a.tie(first, a.slice_label(out, i * m, (i + 1) * m))
            a.label_param(wkey, [lab, first, *kernel])
        a.label_param(bkey, [out])
    return TensorLabels(a.out_shape(), x.with_label(cd, out).labels)


@register_module(nn.modules.conv._ConvNd)
def _module_conv(a: SymmetryAnalysis, mod: nn.Module, target: str, args: Any, kw: Any) -> Any:
    return _conv(a, mod, target, args[0])


def _function_conv(transposed: bool) -> Rule:
    def rule(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
        x, w = args[0], _arg(args, kwargs, 1, "weight")
        b = _arg(args, kwargs, 2, "bias")
        groups = _arg(args, kwargs, 7 if transposed else 6, "groups", 1)
        if not isinstance(w, TensorLabels) or groups != 1:
            raise _Unsupported("functional convolution with groups > 1 or a computed weight")
        nd = w.ndim - 2
        cd = x.ndim - nd - 1
        x = a.keep(x, tuple(range(cd + 1, x.ndim)), "convolution mixes spatial positions")
        a.keep(w, tuple(range(2, w.ndim)), "convolution kernel positions are not neurons")
        cin_axis, out_axis = (0, 1) if transposed else (1, 0)
        a.tie(x.labels[cd], w.labels[cin_axis], "convolution input meets unlabelled weight")
        if isinstance(b, TensorLabels):
            a.tie(w.labels[out_axis], b.labels[0])
        return TensorLabels(a.out_shape(), x.with_label(cd, w.labels[out_axis]).labels)

    return rule


register_function(F.conv1d, F.conv2d, F.conv3d)(_function_conv(False))
register_function(F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)(_function_conv(True))


# --------------------------------------------------------------------------------------------
# normalisation
# --------------------------------------------------------------------------------------------


def _channel_label(a: SymmetryAnalysis, x: TensorLabels, cd: int, what: str) -> Label | None:
    return x.labels[cd] if x.ndim > cd else None


@register_module(nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
def _module_batchnorm(a: SymmetryAnalysis, mod: nn.Module, target: str, args: Any, kw: Any):
    x = args[0]
    cd = 1
    if isinstance(mod, nn.modules.instancenorm._InstanceNorm) and x.ndim == _nd(mod) + 1:
        cd = 0
    lab = _channel_label(a, x, cd, type(mod).__name__)
    for attr in ("weight", "bias", "running_mean", "running_var"):
        a.label_param(a.key(target, attr), [lab])
    return TensorLabels(a.out_shape(), x.with_label(cd, lab).labels)


@register_function(F.batch_norm, F.instance_norm)
def _function_batchnorm(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    x = args[0]
    lab = _channel_label(a, x, 1, "batch norm")
    names = ("running_mean", "running_var", "weight", "bias")
    for i, name in enumerate(names, 1):
        t = _arg(args, kwargs, i, name)
        if isinstance(t, TensorLabels):
            a.tie(lab, t.labels[0], f"{name} indexes channels the group does not act on")
    return TensorLabels(a.out_shape(), x.with_label(1, lab).labels)


@register_module(nn.GroupNorm)
def _module_groupnorm(a: SymmetryAnalysis, mod: nn.GroupNorm, target: str, args: Any, kw: Any):
    x = args[0]
    lab = _channel_label(a, x, 1, "GroupNorm")
    size = mod.num_channels // mod.num_groups
    for i in range(1, mod.num_groups):
        a.cut(lab, i * size)
    a.label_param(a.key(target, "weight"), [lab])
    a.label_param(a.key(target, "bias"), [lab])
    return TensorLabels(a.out_shape(), x.with_label(1, lab).labels)


@register_function(F.group_norm)
def _function_groupnorm(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    x, groups = args[0], _arg(args, kwargs, 1, "num_groups")
    lab = _channel_label(a, x, 1, "group norm")
    for i in range(1, groups):
        a.cut(lab, i * (x.shape[1] // groups))
    for i, name in ((2, "weight"), (3, "bias")):
        t = _arg(args, kwargs, i, name)
        if isinstance(t, TensorLabels):
            a.tie(lab, t.labels[0])
    return TensorLabels(a.out_shape(), x.with_label(1, lab).labels)


@register_module(nn.LayerNorm, *([nn.RMSNorm] if hasattr(nn, "RMSNorm") else []))
def _module_layernorm(a: SymmetryAnalysis, mod: nn.Module, target: str, args: Any, kw: Any):
    x = args[0]
    k = len(mod.normalized_shape)
    labels = list(x.labels[x.ndim - k :])
    a.label_param(a.key(target, "weight"), labels)
    if isinstance(mod, nn.LayerNorm):
        a.label_param(a.key(target, "bias"), labels)
    return x


@register_function(F.layer_norm, *([F.rms_norm] if hasattr(F, "rms_norm") else []))
def _function_layernorm(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    x, shape = args[0], _arg(args, kwargs, 1, "normalized_shape")
    k = len(shape)
    for i, name in ((2, "weight"), (3, "bias")):
        t = _arg(args, kwargs, i, name)
        if isinstance(t, TensorLabels):
            for d in range(k):
                a.tie(x.labels[x.ndim - k + d], t.labels[d])
    return x


# --------------------------------------------------------------------------------------------
# pooling, resampling, padding
# --------------------------------------------------------------------------------------------

_SPATIAL_MODULES = (
    nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.pooling._LPPoolNd, nn.Upsample, nn.modules.padding._ConstantPadNd,
    nn.modules.padding._ReflectionPadNd, nn.modules.padding._ReplicationPadNd,
    nn.modules.padding.CircularPad1d, nn.modules.padding.CircularPad2d,
    nn.modules.padding.CircularPad3d,
)  # fmt: skip


@register_module(*_SPATIAL_MODULES)
def _module_spatial(a: SymmetryAnalysis, mod: nn.Module, target: str, args: Any, kw: Any):
    if isinstance(mod, nn.Upsample):
        nd = args[0].ndim - 2
    else:
        nd = _nd(mod)
    return _spatial(a, args[0], nd)


def _spatial(a: SymmetryAnalysis, x: TensorLabels, nd: int) -> TensorLabels:
    if not isinstance(a.out(), TensorLabels):
        raise _Unsupported("pooling that also returns indices")
    cd = x.ndim - nd - 1
    x = a.keep(x, tuple(range(cd + 1, x.ndim)), "pooling/resampling mixes spatial positions")
    return TensorLabels(a.out_shape(), x.labels[: cd + 1] + (None,) * nd)


def _function_spatial(nd: int | None) -> Rule:
    def rule(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
        x = args[0]
        return _spatial(a, x, nd if nd is not None else x.ndim - 2)

    return rule


for _nd_, _fns in (
    (1, (F.max_pool1d, F.avg_pool1d, F.adaptive_avg_pool1d, F.adaptive_max_pool1d, F.lp_pool1d)),
    (2, (F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.lp_pool2d)),
    (3, (F.max_pool3d, F.avg_pool3d, F.adaptive_avg_pool3d, F.adaptive_max_pool3d)),
):
    register_function(*_fns)(_function_spatial(_nd_))
register_function(F.interpolate, F.upsample)(_function_spatial(None))


@register_function(F.pad)
def _function_pad(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    x, pad = args[0], list(_arg(args, kwargs, 1, "pad"))
    mode = _arg(args, kwargs, 2, "mode", "constant")
    labels = list(x.labels)
    for k in range(len(pad) // 2):
        d = x.ndim - 1 - k
        lo, hi = pad[2 * k], pad[2 * k + 1]
        if labels[d] is None or (lo == 0 and hi == 0):
            continue
        if mode != "constant" or lo < 0 or hi < 0:
            a.fix(labels[d], f"F.pad(mode={mode!r}) along a neuron axis")
            labels[d] = None
            continue
        new = labels[d]
        if lo:
            new = a.new_run(lo, "fixed", f"{a.node.name}.pad") + new
        if hi:
            new = new + a.new_run(hi, "fixed", f"{a.node.name}.pad")
        labels[d] = new
    return TensorLabels(a.out_shape(), tuple(labels))


# --------------------------------------------------------------------------------------------
# reshaping, permuting, indexing
# --------------------------------------------------------------------------------------------


@register_module(nn.Flatten, nn.Unflatten)
def _module_reshape(a: SymmetryAnalysis, mod: nn.Module, target: str, args: Any, kw: Any):
    return a.reshape(args[0], a.out_shape())


@register_function(torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.ravel)
@register_method(
    "view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as",
    "ravel", "squeeze_", "unsqueeze_",
)  # fmt: skip
def _reshape(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    if a.node.target == "view" and len(args) == 2 and isinstance(args[1], torch.dtype):
        raise _Unsupported("view as another dtype")
    return a.reshape(args[0], a.out_shape())


@register_method("permute")
@register_function(torch.permute)
def _permute(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    x = args[0]
    dims = _arg(args, kwargs, 1, "dims")
    if isinstance(dims, int) or len(args) > 2:
        dims = list(args[1:])
    dims = [_dim(d, x.ndim) for d in dims]
    return TensorLabels(a.out_shape(), tuple(x.labels[d] for d in dims))


@register_method("transpose", "swapaxes", "swapdims", "transpose_")
@register_function(torch.transpose, torch.swapaxes, torch.swapdims)
def _transpose(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    x = args[0]
    d0 = _dim(_arg(args, kwargs, 1, "dim0"), x.ndim)
    d1 = _dim(_arg(args, kwargs, 2, "dim1"), x.ndim)
    labels = list(x.labels)
    labels[d0], labels[d1] = labels[d1], labels[d0]
    return TensorLabels(a.out_shape(), tuple(labels))


@register_method("t")
@register_function(torch.t)
def _t(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    return TensorLabels(a.out_shape(), tuple(reversed(args[0].labels)))


@register_method("movedim", "moveaxis")
@register_function(torch.movedim, torch.moveaxis)
def _movedim(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    x = args[0]
    src, dst = _arg(args, kwargs, 1, "source"), _arg(args, kwargs, 2, "destination")
    src = [src] if isinstance(src, int) else list(src)
    dst = [dst] if isinstance(dst, int) else list(dst)
    src = [_dim(d, x.ndim) for d in src]
    dst = [_dim(d, x.ndim) for d in dst]
    order: list = [None] * x.ndim
    for s, d in zip(src, dst):
        order[d] = s
    rest = iter(d for d in range(x.ndim) if d not in src)
    order = [o if o is not None else next(rest) for o in order]
    return TensorLabels(a.out_shape(), tuple(x.labels[d] for d in order))


@register_method("expand", "expand_as", "broadcast_to")
@register_function(torch.broadcast_to)
def _expand(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    x = args[0]
    shape = a.out_shape()
    labels = [None] * (len(shape) - x.ndim)
    for d, (lab, n) in enumerate(zip(x.labels, x.shape)):
        if n == shape[len(shape) - x.ndim + d]:
            labels.append(lab)
        else:
            a.fix(lab, "broadcasts one neuron's value to all positions")
            labels.append(None)
    return TensorLabels(shape, tuple(labels))


@register_method("repeat")
def _repeat(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    x = args[0]
    reps = list(args[1]) if len(args) == 2 and not isinstance(args[1], int) else list(args[1:])
    shape = a.out_shape()
    labels = [None] * (len(shape) - x.ndim)
    for lab, r in zip(x.labels, reps[len(shape) - x.ndim :]):
        labels.append(lab * r if lab is not None else None)
    return TensorLabels(shape, tuple(labels))


@register_function(operator.getitem)
def _getitem(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    x, idx = args
    if not isinstance(x, TensorLabels):
        return x[idx]
    idx = idx if isinstance(idx, tuple) else (idx,)
    if any(isinstance(i, (TensorLabels, list, torch.Tensor)) for i in idx):
        raise _Unsupported("advanced (tensor) indexing")
    if any(i is Ellipsis for i in idx):
        k = idx.index(Ellipsis)
        used = sum(1 for i in idx if i is not None and i is not Ellipsis)
        idx = idx[:k] + (slice(None),) * (x.ndim - used) + idx[k + 1 :]
    labels = []
    d = 0
    for i in idx:
        if i is None:
            labels.append(None)
            continue
        lab, n = x.labels[d], x.shape[d]
        if isinstance(i, int):
            if lab is not None:
                a.fix((_neuron_at(lab, i % n),), "indexes one neuron by its position")
        elif isinstance(i, slice):
            start, stop, step = i.indices(n)
            if lab is None or (start, stop, step) == (0, n, 1):
                labels.append(lab)
            elif step == 1:
                labels.append(a.slice_label(lab, start, stop) if stop > start else None)
            else:
                pos = list(range(start, stop, step))
                if len(pos) > 64 or any(s.inner != 1 for s in lab):
                    a.fix(lab, "strided slicing of neurons")
                    labels.append(None)
                else:
                    labels.append(tuple(s for p in pos for s in a.slice_label(lab, p, p + 1)))
        else:
            raise _Unsupported(f"indexing with {type(i).__name__}")
        d += 1
    labels.extend(x.labels[d:])
    return TensorLabels(a.out_shape(), tuple(labels))


def _neuron_at(label: Label, pos: int) -> Seg:
    p = 0
    for s in label:
        if p <= pos < p + s.width:
            return Seg(s.run, s.offset + (pos - p) // s.inner, 1)
        p += s.width
    raise TraceError(f"internal: position {pos} outside a label of width {p}")


@register_function(torch.cat, torch.concat, torch.concatenate)
def _cat(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    xs = list(_arg(args, kwargs, 0, "tensors"))
    dim = _arg(args, kwargs, 1, "dim", 0)
    shape = a.out_shape()
    d = _dim(dim, len(shape))
    others = [
        TensorLabels(x.shape[:d] + x.shape[d + 1 :], x.labels[:d] + x.labels[d + 1 :]) for x in xs
    ]
    rest = a.broadcast(others, shape[:d] + shape[d + 1 :])
    if all(x.labels[d] is None for x in xs):
        cat = None
    else:
        cat = ()
        for x in xs:
            lab = x.labels[d]
            if lab is None:
                lab = a.new_run(x.shape[d], "fixed", f"{a.node.name}.const")
            cat = cat + lab
    labels = rest.labels[:d] + (cat,) + rest.labels[d:]
    return TensorLabels(shape, labels)


@register_function(torch.stack)
def _stack(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    xs = list(_arg(args, kwargs, 0, "tensors"))
    shape = a.out_shape()
    d = _dim(_arg(args, kwargs, 1, "dim", 0), len(shape))
    rest = a.broadcast(xs, shape[:d] + shape[d + 1 :])
    return TensorLabels(shape, rest.labels[:d] + (None,) + rest.labels[d:])


@register_function(torch.split, torch.chunk, torch.tensor_split)
@register_method("split", "chunk", "tensor_split")
def _split(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    x = args[0]
    outs = a.out()
    dim = _arg(args, kwargs, 2, "dim", 0)
    d = _dim(dim, x.ndim)
    pieces, start = [], 0
    for o in outs:
        n = o.shape[d]
        lab = a.slice_label(x.labels[d], start, start + n) if n else None
        pieces.append(TensorLabels(o.shape, x.labels[:d] + (lab,) + x.labels[d + 1 :]))
        start += n
    return tuple(pieces)


@register_function(torch.unbind)
@register_method("unbind")
def _unbind(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    x = args[0]
    d = _dim(_arg(args, kwargs, 1, "dim", 0), x.ndim)
    a.fix(x.labels[d], "unbind gives each neuron its own tensor")
    return tuple(TensorLabels(o.shape, x.labels[:d] + x.labels[d + 1 :]) for o in a.out())


# --------------------------------------------------------------------------------------------
# reductions
# --------------------------------------------------------------------------------------------

_REDUCE_FUNCTIONS = (
    torch.sum, torch.mean, torch.amax, torch.amin, torch.prod, torch.std, torch.var,
    torch.logsumexp, torch.norm, torch.all, torch.any, torch.nansum, torch.nanmean,
    torch.linalg.vector_norm,
)  # fmt: skip
_REDUCE_METHODS = (
    "sum", "mean", "amax", "amin", "prod", "std", "var", "logsumexp", "norm", "all", "any",
    "nansum", "nanmean",
)  # fmt: skip


@register_function(*_REDUCE_FUNCTIONS, torch.max, torch.min, torch.argmax, torch.argmin)
@register_method(*_REDUCE_METHODS, "max", "min", "argmax", "argmin")
def _reduce(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    """Symmetric reductions: reducing over a neuron axis is invariant (sum, mean, max, ...)."""
    x = args[0]
    name = getattr(a.node.target, "__name__", a.node.target)
    if name in ("max", "min") and len(args) > 1 and isinstance(args[1], TensorLabels):
        return a.broadcast([args[0], args[1]])  # torch.max(a, b) is elementwise
    dim = _arg(args, kwargs, 2 if name in ("norm", "vector_norm") else 1, "dim", None)
    if dim is None:
        dims = set(range(x.ndim))
    else:
        dims = {_dim(d, x.ndim) for d in ([dim] if isinstance(dim, int) else dim)}
    if name in ("argmax", "argmin") or (name in ("max", "min") and dim is not None):
        for d in dims:
            a.fix(x.labels[d], f"{name} returns neuron positions")
    out = a.out()
    keepdim = (out[0] if isinstance(out, tuple) else out).ndim == x.ndim and dim is not None
    labels = []
    for d, lab in enumerate(x.labels):
        if d in dims:
            a.consume(lab)
        if d not in dims:
            labels.append(lab)
        elif keepdim:
            labels.append(None)
    if isinstance(out, tuple):
        return tuple(TensorLabels(o.shape, tuple(labels)) for o in out)
    return TensorLabels(out.shape, tuple(labels))


@register_function(torch.cumsum, torch.cumprod, torch.cummax, torch.cummin, torch.flip,
                   torch.roll, torch.sort, torch.argsort, torch.topk)  # fmt: skip
@register_method("cumsum", "cumprod", "flip", "roll", "sort", "argsort", "topk")
def _positional(a: SymmetryAnalysis, args: tuple, kwargs: dict) -> Any:
    """Ops that depend on positions along the dims they act on."""
    x = args[0]
    name = getattr(a.node.target, "__name__", a.node.target)
    dims = _arg(
        args, kwargs, 2 if name == "roll" else 1, "dims" if name in ("roll", "flip") else "dim"
    )
    if name == "topk":
        dims = _arg(args, kwargs, 2, "dim", -1)
    if name in ("sort", "argsort") and dims is None:
        dims = -1
    if dims is None:
        dims = list(range(x.ndim))
    dims = [dims] if isinstance(dims, int) else list(dims)
    dims = {_dim(d, x.ndim) for d in dims}
    x = a.keep(x, tuple(dims), f"{name} depends on neuron positions")
    out = a.out()
    if isinstance(out, tuple):
        return tuple(TensorLabels(o.shape, x.labels) if o.shape == x.shape else o for o in out)
    return TensorLabels(out.shape, x.labels) if out.shape == x.shape else out


# --------------------------------------------------------------------------------------------
# the graph
# --------------------------------------------------------------------------------------------


def build_symmetry_graph(gm: torch.fx.GraphModule, model: nn.Module | None = None) -> nx.MultiGraph:
    """Run :class:`SymmetryAnalysis` on a traced model and return its symmetry graph.

    Parameters
    ----------
    gm : torch.fx.GraphModule
        From :func:`nfncompile.frontend.fx.trace_module`.
    model : nn.Module, optional
        The traced model (its state_dict keys name the parameters); defaults to ``gm``.

    Returns
    -------
    networkx.MultiGraph
        Nodes ``("run", i)`` (attributes ``size``, ``kind``, ``origin``, ``node``, ``op``,
        ``cuts``, ``fixed``, ``touched``: the ops that create or read it) and ``("param", key, axis)`` (``size``); edges ``kind="tie"``
        (``src``, ``src_off``, ``dst``, ``dst_off``, ``length``, ``op``, ``node``) and
        ``kind="index"`` (a param axis read by a run slice). ``graph.graph`` holds ``params``
        (:class:`ParamLabel` per float state_dict key, aliases resolved), ``inputs``,
        ``outputs``, ``broken`` and ``state_keys``.
    """
    a = SymmetryAnalysis(gm, model)
    a.run(*[None for n in gm.graph.nodes if n.op == "placeholder"], enable_io_processing=False)
    for run in a.unused_param_runs:
        a.op = "unused parameter"
        a.node = None
        a.fix((Seg(run, 0, a.runs[run].size),), "parameter read but never used")
    g = nx.MultiGraph()
    for r in a.runs:
        g.add_node(
            ("run", r.id),
            size=r.size, kind=r.kind, origin=r.origin, node=r.node, op=r.op, cuts=set(), fixed=[],
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
    g.graph.update(
        params=params,
        inputs=a.inputs,
        outputs=a.outputs,
        broken=a.broken,
        state_keys=a.state_keys,
        model=type(a.model).__name__,
    )
    return g
