"""The numerical equivariance probe: what the symmetry analysis does with an op no rule knows.

A leaf module whose type has no rule along its MRO, a function kept whole by
:func:`torch.fx.wrap`, an unknown tensor method: instead of fixing every neuron it touches, the
analysis (:meth:`~nfncompile.frontend.analysis.SymmetryAnalysis.unknown`) calls
:func:`probe_op`, which runs the op on seeded random float64 inputs of the recorded shapes,
with and without a random permutation of every labelled channel axis of its inputs, and checks
that the output is the same permutation of the original output, on several draws.

*Which* permutation: input dims are grouped as an elementwise op groups them (aligned from the
right, equal sizes), one permutation per group, so labels the op combines are tied, as the
elementwise rule ties them; when that fails, every labelled dim of one size is one group (a
``(C,)`` parameter scaling an ``(N, C, H, W)`` input inside the function). The permutation moves neurons only inside the pieces the labels are
made of (never across two segments of runs, and a flattened neuron's block of positions as one).
The output dims are matched to the groups by right-alignment (an elementwise op, a gate) or,
failing that, by size (a reduction over trailing dims); a group no output dim carries must
leave the output unchanged (a symmetric reduction). The test permutes more freely than the
group ever does (the group's action is a subgroup of what is tried), so passing is sound; the
whole-model verification still has the last word.

A leaf module's own weights move too (:func:`_with_own`): a dim of its state_dict entries as
long as one input group moves with that group, the others by one permutation per length (its
hidden units); fewer of them where that fails, and none last. The first that passes labels
the entries, so a module kept as one call (a mixture of experts' dispatch loop, a scripted
block) no longer fixes the neurons it shares with the rest of the model. An output the
permutations leave unchanged is unlabelled (its weight undid them). Where every grouping
fails, the groups of integer inputs alone are held still and their neurons fixed (a one-hot
dispatch mask that separate expert modules read by position). Outputs are compared at the
precision of the call's least precise output (a router that computes in float32 and casts
one result back to float64).

What it runs on: state_dict entries (parameters passed to a function, a leaf module's own
parameters and buffers) are replaced by random values (they differ in every network of a zoo),
model constants and the example's integer tensors (indices, a router's choices: recorded by
shape propagation up to :data:`~nfncompile.frontend.fx.INTEGER_VALUES_UP_TO` entries) keep
their values, and stochastic ops see the same random stream in both calls. A module runs as a
float64 deep copy in eval mode; an op that fails in float64 is retried in its recorded dtypes.
Where a model was traced on fake tensors, an integer tensor of neuron positions (a router's
top-k indices) takes random positions of those neurons. An op that raises, returns non-tensors
or non-finite values, or takes another integer tensor whose values were not recorded is not
probed: it is fixed as before, and the report says why.

Examples
--------
>>> import torch
>>> class Gate(torch.nn.Module):  # torch.fx cannot trace it (an `if` on values): one call
...     def forward(self, x):
...         if torch.isnan(x).any():
...             x = torch.nan_to_num(x)
...         return x * torch.sigmoid(x.mean((2, 3), keepdim=True))
>>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), Gate(), torch.nn.AdaptiveAvgPool2d(1),
...                           torch.nn.Flatten(), torch.nn.Linear(4, 2))
>>> from nfncompile.frontend.tracing import trace_with_report
>>> spec, report = trace_with_report(net, torch.randn(2, 1, 6, 6))
>>> spec["4.weight"].axes
('out', '0')
>>> print(report.probes[0].op, "|", report.probes[0].detail)
Gate 1 | probed: equivariant on 3 random draws (float64); labels passed through
"""

from __future__ import annotations

import dataclasses
import itertools
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.fx
from torch.fx.node import map_aggregate

from .fx import copy_model, evaluating, leaves, namedtuple_of
from .labels import UNIFORM, Seg, TensorLabels, label_width, remade

if TYPE_CHECKING:
    from .analysis import SymmetryAnalysis

__all__ = ["DRAWS", "ProbeRecord", "probe_op"]

#: Random draws (inputs, parameters and permutations) an op must pass.
DRAWS = 3
_SEED = 0
#: Up to this many lengths of a module's own neurons, every set of them is tried (and up to
#: twice as many ways of moving its square weights).
OWN_SETS = 3
_STREAM = 1234  # the global RNG seed every call of the op starts from


@dataclass(frozen=True)
class ProbeRecord:
    """What probing one op found.

    Attributes
    ----------
    op, node : str
        The op (as the report names it) and its fx node.
    passed : bool
        Whether the op was found equivariant (its labels were then passed through).
    detail : str
        What was found: how the labels went through, or why the op was fixed.
    seconds : float
        Time the probe took.
    """

    op: str
    node: str
    passed: bool
    detail: str
    seconds: float


class _Declined(Exception):
    """The op cannot be probed (or is not equivariant): fix it, with this reason."""


class _NotEquivariant(_Declined):
    """The op ran, and the permuted output is not the permutation of the output."""


@dataclass
class _Input:
    labels: TensorLabels
    dtype: torch.dtype
    constant: torch.Tensor | None  # a model constant's value; None: draw a random tensor
    node: torch.fx.Node | None = None  # the graph's node that gave it, where one did


@dataclass
class _Group:
    """Dims moved by one permutation: ``members`` ``(input, dim, label)`` input dims, all
    labelled, of ``size`` positions; ``pieces`` ``(start, neurons, inner)`` the blocks it
    permutes in; ``right`` the members' positions counted from the last dim; ``params``
    ``(key, dim)`` dims of the module's own state_dict entries that move with them (``key``
    local to the module). A group without members is the module's own: neurons inside it
    that its inputs do not carry."""

    size: int
    members: list
    pieces: list = field(default_factory=list)
    right: set = field(default_factory=set)
    params: list = field(default_factory=list)
    fixed: bool = False  # not moved: its members' neurons are fixed


def probe_op(a: SymmetryAnalysis, args: Any, kwargs: Any) -> tuple[ProbeRecord | None, Any]:
    """Probe the analysis's current node (a call no rule knows) for channel equivariance.

    Parameters
    ----------
    a : SymmetryAnalysis
        The running analysis; ``a.node`` is the call.
    args, kwargs
        The call's abstract arguments (:class:`~nfncompile.frontend.labels.TensorLabels` for
        tensors, recorded values for the rest).

    Returns
    -------
    record : ProbeRecord or None
        ``None`` when no input is labelled (nothing to probe).
    value
        The output's labels when the op passed (ties and cuts recorded on ``a``), ``None``
        when the caller must fix the op.
    """
    inputs: list[_Input] = []
    template = _abstract(a, (args, kwargs), a.sources, inputs)
    for x in inputs:  # labels other than plain runs of neurons are not probed: fixed
        for lab in x.labels.labels:
            if lab is not None and not _labelled(lab):
                a.fix(lab, f"no symmetry rule for {a.op}, which reads a structured label")
    if not any(_labelled(lab) for x in inputs for lab in x.labels.labels):
        return None, None
    t0 = time.perf_counter()
    try:
        outs_meta = _meta_leaves(a.node.meta.get("tensor_meta"))
        call = _caller(a)
        failed: _NotEquivariant | None = None
        options = _with_own(a, _groupings(inputs))
        for groups in options + _integers_fixed(options, inputs):
            try:
                assignment, detail = _check(call, template, inputs, groups, outs_meta)
                break
            except _NotEquivariant as e:
                failed = failed or e
        else:
            raise failed
    except _Declined as e:
        return ProbeRecord(a.op, a.node.name, False, f"probed: {e}", time.perf_counter() - t0), None
    value = _apply(a, groups, assignment)
    moved = sorted({name for g in groups.values() for name, _ in g.params})
    if moved:
        own = sorted(g.size for g in groups.values() if not g.members)
        inside = f"; {' + '.join(map(str, own))} hidden units of its own" if own else ""
        detail += f"; its own weights moved with them ({', '.join(moved)}){inside}"
    seconds = time.perf_counter() - t0
    return ProbeRecord(a.op, a.node.name, True, detail, seconds), value


# ---- abstract inputs -----------------------------------------------------------------------


def _abstract(a: SymmetryAnalysis, value: Any, src: Any, inputs: list, ints: Any = None) -> Any:
    """``value`` with every TensorLabels replaced by an index into ``inputs`` (filled here);
    ``src`` is the parallel fx argument (a Node, a tensor meta, a container or a constant).
    One node given several times is one input, so the call gets one tensor there (brevitas'
    packed attention requires ``query is key is value``). ``ints``: the example's values of
    the integer tensors in a tuple a node gave (a PackedSequence's batch sizes), in place."""
    if isinstance(value, TensorLabels):
        node = src if isinstance(src, torch.fx.Node) else None
        same = [k for k, x in enumerate(inputs) if node is not None and x.node is node]
        if same:
            return _Leaf(same[0])
        meta = node.meta.get("tensor_meta") if node is not None else src
        dtype = getattr(meta, "dtype", torch.float32)
        constant = None
        if node is not None and node.op == "get_attr" and a.key("", node.target) is None:
            t = a.fetch_attr(node.target)
            if isinstance(t, torch.Tensor) and not t.is_meta:
                constant = t.detach()
        elif node is not None and "nfn_integer_value" in node.meta:
            constant = node.meta["nfn_integer_value"]  # indices: the example's own
        elif isinstance(ints, torch.Tensor):
            constant = ints
        inputs.append(_Input(value, dtype, constant, node))
        return _Leaf(len(inputs) - 1)
    kind = None
    if isinstance(src, torch.fx.Node):
        kind = src.meta.get("type")
        src, ints = src.meta.get("tensor_meta"), src.meta.get("nfn_integer_value")
    if isinstance(value, (tuple, list)):
        fits = isinstance(src, (tuple, list)) and not _is_meta(src) and len(src) == len(value)
        subs = src if fits else [None] * len(value)
        own = ints if isinstance(ints, tuple) and len(ints) == len(value) else [None] * len(value)
        items = [_abstract(a, v, s, inputs, i) for v, s, i in zip(value, subs, own)]
        named = isinstance(kind, type) and issubclass(kind, tuple) and hasattr(kind, "_fields")
        if named and len(kind._fields) == len(items):  # the node's namedtuple (PackedSequence)
            return namedtuple_of(kind, tuple(items))
        return remade(value, items)
    if isinstance(value, dict):
        subs = src if isinstance(src, dict) else {}
        return {k: _abstract(a, v, subs.get(k), inputs) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class _Leaf:
    index: int


def _labelled(lab: Any) -> bool:
    return isinstance(lab, tuple) and bool(lab) and all(isinstance(s, Seg) for s in lab)


def _groupings(inputs: list[_Input]) -> list[dict]:
    """How the labelled input dims may be grouped (one permutation per group), in the order
    tried: as an elementwise op aligns them (from the right, equal sizes), then, when that
    differs, every labelled dim of one size together (a ``(C,)`` parameter scaling the channels
    of an ``(N, C, H, W)`` input inside a function), when no input has two such dims."""
    dims = [
        (i, d, lab)
        for i, x in enumerate(inputs)
        for d, lab in enumerate(x.labels.labels)
        if _labelled(lab)
    ]
    right: dict = {}
    for i, d, lab in dims:
        right.setdefault((inputs[i].labels.ndim - 1 - d, inputs[i].labels.shape[d]), []).append(
            (i, d, lab)
        )
    by_size: dict = {}
    for i, d, lab in dims:
        by_size.setdefault(inputs[i].labels.shape[d], []).append((i, d, lab))
    options = [right]
    ambiguous = any(len({i for i, _, _ in m}) < len(m) for m in by_size.values())
    if not ambiguous and len(by_size) < len(right):
        options.append(by_size)
    out = []
    for option in options:
        groups = {}
        for key, members in option.items():
            g = _Group(inputs[members[0][0]].labels.shape[members[0][1]], members)
            g.pieces = _pieces(g)
            g.right = {inputs[i].labels.ndim - 1 - d for i, d, _ in members}
            groups[key] = g
        if all(g.pieces is not None for g in groups.values()):
            out.append(groups)
    if not out:
        raise _Declined("its inputs flatten neurons differently at the same positions")
    return out


def _with_own(a: SymmetryAnalysis, options: list[dict]) -> list[dict]:
    """The groupings to try for a module with float state_dict entries of its own, before
    ``options`` (its entries held still, and so fixed).

    A dim of an entry as long as one input group moves with that group (where one entry has
    several such dims, a square weight, all of them first, then each alone); the other dims
    move by one permutation per length, as neurons inside the module (its hidden units):
    every set of those lengths is tried, largest first, so that a mixture's experts, which
    only its routing moves, do not spoil its hidden units. A module kept as one call (a
    mixture of experts' dispatch loop, a scripted block) then keeps the symmetry of the
    neurons it shares with the model around it: its weights move with them, as a rule's would.
    """
    node = a.node
    if node.op != "call_module":
        return options
    own = [
        (name, tuple(t.shape))
        for name, t in a.fetch_attr(node.target).state_dict(keep_vars=True).items()
        if a.key(node.target, name) is not None and t.is_floating_point()
    ]
    if not any(n > 1 for _, shape in own for n in shape):
        return options
    out = []
    for groups in options:
        sizes: dict = {}
        for key, g in groups.items():
            sizes.setdefault(g.size, []).append(key)
        per_entry: dict = {}  # (group key, entry) -> its dims as long as the group
        inside: dict = {}
        for name, shape in own:
            for d, n in enumerate(shape):
                keys = sizes.get(n, [])
                if n > 1 and len(keys) == 1:
                    per_entry.setdefault((keys[0], name), []).append(d)
                elif n > 1 and not keys:
                    inside.setdefault(n, []).append((name, d))
        choices = [
            [dims] + ([[d] for d in dims] if len(dims) > 1 else []) for dims in per_entry.values()
        ]
        variants = []
        for picked in itertools.islice(itertools.product(*choices), OWN_SETS * 2):
            matched: dict = {}
            for (key, name), dims in zip(per_entry, picked):
                matched.setdefault(key, []).extend((name, d) for d in dims)
            variants.append(matched)
        lengths = sorted(inside)
        sets = [c for r in range(len(lengths), 0, -1) for c in itertools.combinations(lengths, r)]
        if len(lengths) > OWN_SETS:
            sets = [tuple(lengths)]
        for matched in variants:
            out += [_moved(groups, matched, inside, c) for c in sets]
            if matched:
                out.append(_moved(groups, matched, inside, ()))
    return out + options


def _integers_fixed(options: list[dict], inputs: list[_Input]) -> list[dict]:
    """The groupings to try last: each of ``options`` with its groups of integer inputs alone
    held still (a one-hot dispatch mask over the experts, which a mixture's separate expert
    modules read by position), where it has such groups."""
    out = []
    for groups in options:
        integer = {
            k
            for k, g in groups.items()
            if g.members and not any(inputs[i].dtype.is_floating_point for i, _, _ in g.members)
        }
        if integer and len(integer) < len(groups):
            out.append(
                {
                    k: dataclasses.replace(g, fixed=True) if k in integer else g
                    for k, g in groups.items()
                }
            )
    return out


def _moved(groups: dict, matched: dict, inside: dict, lengths: tuple) -> dict:
    """``groups`` with the own entries' dims ``matched`` to them, and one group of the module's
    own neurons for each of ``lengths`` (``inside``: length -> ``(entry, dim)`` pairs)."""
    new = {k: dataclasses.replace(g, params=matched.get(k, [])) for k, g in groups.items()}
    for n in lengths:
        new[("own", n)] = _Group(n, [], [(0, n, 1)], set(), inside[n])
    return new


def _pieces(g: _Group) -> list | None:
    """The blocks a group's permutation may shuffle: positions cut at every segment boundary
    of every member, each piece made of whole neurons (``inner`` positions each) in all."""
    cuts = {0, g.size}
    for _, _, lab in g.members:
        p = 0
        for s in lab:
            cuts.add(p)
            p += s.width
    bounds = sorted(cuts)
    pieces = []
    for lo, hi in itertools.pairwise(bounds):
        inner = set()
        for _, _, lab in g.members:
            p = 0
            for s in lab:
                if p <= lo < p + s.width:
                    if (lo - p) % s.inner or (hi - lo) % s.inner:
                        return None
                    inner.add(s.inner)
                p += s.width
        if len(inner) != 1:
            return None
        q = inner.pop()
        pieces.append((lo, (hi - lo) // q, q))
    return pieces


# ---- running the op ------------------------------------------------------------------------


#: ``call(args, kwargs, float64, generator, moves)``
_Call = Callable[[tuple, dict, bool, torch.Generator, dict], Any]


def _caller(a: SymmetryAnalysis) -> _Call:
    """``call(args, kwargs, float64, generator, moves)``: the op on concrete arguments; a module
    runs as a deep copy whose state_dict entries are redrawn from ``generator``, then permuted
    as ``moves`` says (entry name -> ``(dim, permutation)`` pairs)."""
    node = a.node
    if node.op == "call_function":
        fn = node.target
        return lambda args, kwargs, wide, gen, moves: fn(*args, **kwargs)
    if node.op == "call_method":
        name = node.target
        return lambda args, kwargs, wide, gen, moves: getattr(args[0], name)(*args[1:], **kwargs)
    original = a.fetch_attr(node.target)
    copies: dict = {}

    def call(args: tuple, kwargs: dict, wide: bool, gen: torch.Generator, moves: dict) -> Any:
        if wide not in copies:
            try:
                mod = evaluating(copy_model(original))
            except Exception as e:
                raise _Declined(f"the module cannot be copied ({type(e).__name__}: {e})") from e
            copies[wide] = mod.double() if wide else mod
        mod = copies[wide]
        with torch.no_grad():
            params = {id(p) for p in mod.parameters()}
            for name, t in mod.state_dict(keep_vars=True).items():
                if t.is_floating_point():
                    r = _randn(t.shape, gen, t.dtype)
                    # buffers are statistics (variances): keep them positive
                    r = r if id(t) in params else r.abs() + 0.5
                    for d, perm in moves.get(name, ()):
                        r = r.index_select(d, perm)
                    t.copy_(r)
        return mod(*args, **kwargs)

    return call


def _draw(inputs: list[_Input], wide: bool, positive: bool, gen: torch.Generator) -> list:
    out = []
    for x in inputs:
        if x.constant is not None:
            t = x.constant.clone()
            out.append(t.double() if wide and t.is_floating_point() else t)
            continue
        if not (x.dtype.is_floating_point or x.dtype.is_complex):
            if x.labels.values is None or x.dtype == torch.bool:
                raise _Declined(f"it takes a {x.dtype} tensor whose values are not recorded")
            # positions of neurons (a router's top-k): any positions of those neurons
            high = label_width(x.labels.values)
            out.append(torch.randint(high, x.labels.shape, generator=gen, dtype=x.dtype))
            continue
        dtype = x.dtype
        if wide:
            dtype = torch.complex128 if x.dtype.is_complex else torch.float64
        # one value along each uniform dim (``torch.full_like(x, v)``: a neuron's reset state)
        shape = tuple(1 if lab is UNIFORM else n for lab, n in zip(x.labels.labels, x.labels.shape))
        t = _randn(shape, gen, dtype).expand(x.labels.shape).clone()
        out.append(t.abs() + 0.5 if positive and not dtype.is_complex else t)
    return out


def _randn(shape: tuple, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """Standard normal values of ``dtype``, drawn in single precision (6x faster than drawing
    doubles; test inputs need no more)."""
    draw = torch.complex64 if dtype.is_complex else torch.float32
    return torch.randn(shape, generator=gen, dtype=draw).to(dtype)


def _fill(template: Any, values: list) -> Any:
    return map_aggregate(template, lambda v: values[v.index] if isinstance(v, _Leaf) else v)


def _permutation(g: _Group, gen: torch.Generator) -> torch.Tensor:
    idx = torch.arange(g.size)
    for lo, n, q in g.pieces:
        blocks = torch.randperm(n, generator=gen)
        if n > 1 and bool((blocks == torch.arange(n)).all()):
            blocks = blocks.roll(1)  # the identity tests nothing (a 2-neuron group: half the draws)
        idx[lo : lo + n * q] = lo + (blocks[:, None] * q + torch.arange(q)).reshape(-1)
    return idx


def _run(call: _Call, template: Any, values: list, wide: bool, seed: int, moves: dict) -> Any:
    # each call on copies: one that writes into its inputs (torchvision's MViT adds its
    # relative positions into the scores it is given, and returns them) would otherwise
    # change the other call's inputs and outputs too, which then agree whatever it computes
    copies = [v.clone() if isinstance(v, torch.Tensor) else v for v in values]
    args, kwargs = _fill(template, copies)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.default_generator.manual_seed(_STREAM)
        return call(tuple(args), dict(kwargs), wide, gen, moves)


def _outputs(result: Any, outs_meta: list) -> list:
    outs = leaves(result)
    for o in outs:
        if not isinstance(o, torch.Tensor):
            raise _Declined(f"it returns a {type(o).__name__}, not only tensors")
    shapes = [tuple(o.shape) for o in outs]
    expected = [tuple(getattr(m, "shape", ())) for m in outs_meta]
    if shapes != expected:
        raise _Declined(f"its outputs have shapes {shapes}, not the traced {expected}")
    return outs


def _hypotheses(groups: dict, outs: list) -> list:
    """Candidate output labellings: per output, a group key (or ``None``) per dim; first by
    right-alignment, then by size when that differs and is unambiguous, then none."""
    groups = {k: g for k, g in groups.items() if not g.fixed}

    def aligned(o: torch.Tensor, e: int) -> Any:
        keys = [k for k, g in groups.items() if g.size == o.shape[e] and o.ndim - 1 - e in g.right]
        return keys[0] if len(keys) == 1 else None

    right = [tuple(aligned(o, e) for e in range(o.ndim)) for o in outs]
    by_size = []
    for o in outs:
        dims = []
        for n in o.shape:
            keys = [k for k, g in groups.items() if g.size == n]
            same = sum(1 for m in o.shape if m == n)
            dims.append(keys[0] if len(keys) == 1 and same == 1 else None)
        by_size.append(tuple(dims))
    # last, none: the output does not move at all (a module's own weight undoes the
    # permutation of its input, as a square weight moved on its input axis alone does)
    unmoved = [tuple(None for _ in o.shape) for o in outs]
    return list(dict.fromkeys(tuple(h) for h in (right, by_size, unmoved)))


def _close(got: torch.Tensor, want: torch.Tensor, scale: float, eps: float) -> float | None:
    """The error of ``got`` against ``want`` when over tolerance (relative ``eps ** 0.5 * 10``),
    else ``None``."""
    if got.dtype != want.dtype or got.shape != want.shape:
        return float("inf")
    if not (got.is_floating_point() or got.is_complex()):
        return None if torch.equal(got, want) else float("inf")
    tol = max(eps, torch.finfo(got.dtype).eps) ** 0.5 * 10
    err = (got - want).abs()
    if bool((err <= tol * (scale + want.abs())).all()):
        return None
    return float(err.max())


def _check(call: _Call, template: Any, inputs: list, groups: dict, outs_meta: list):
    """Run the draws; returns the surviving output labelling and a description."""
    gen = torch.Generator().manual_seed(_SEED)
    wide, positive = True, False
    hyps: list | None = None
    errors: list = []
    draw = 0
    while draw < DRAWS:
        values = _draw(inputs, wide, positive, gen)
        perms = {
            k: torch.arange(g.size) if g.fixed else _permutation(g, gen) for k, g in groups.items()
        }
        moved = list(values)
        moves: dict = {}
        for k, g in groups.items():
            for i, d, _ in g.members:
                moved[i] = moved[i].index_select(d, perms[k])
            for name, d in g.params:
                moves.setdefault(name, []).append((d, perms[k]))
        try:  # a module's state is redrawn from the same seed for both calls
            plain = _run(call, template, values, wide, _SEED + 1 + draw, {})
            permuted = _run(call, template, moved, wide, _SEED + 1 + draw, moves)
        except _Declined:
            raise
        except Exception as e:
            if wide:  # an op that insists on its own dtypes
                wide, draw = False, 0
                continue
            raise _Declined(f"it raises {type(e).__name__}: {_short(e)}") from e
        outs, outs_p = _outputs(plain, outs_meta), _outputs(permuted, outs_meta)
        if not all(bool(o.isfinite().all()) for o in outs if o.is_floating_point()):
            if positive:
                raise _Declined("its outputs on random inputs are not finite")
            positive, draw = True, 0
            continue
        if hyps is None:
            hyps = _hypotheses(groups, outs)
            # the precision of the call is its least precise output's: a router that computes
            # in float32 and returns its probabilities cast to float64 (Switch Transformers)
            eps = max(
                (torch.finfo(o.dtype).eps for o in outs if o.is_floating_point()), default=0.0
            )
        alive = []
        for h in hyps:
            err = None
            for o, op, dims in zip(outs, outs_p, h):
                want = o
                for e, key in enumerate(dims):
                    if key is not None:
                        want = want.index_select(e, perms[key])
                scale = float(o.abs().max()) if o.numel() and o.is_floating_point() else 0.0
                e_ = _close(op, want, max(scale, 1.0), eps)
                if e_ is not None:
                    err = e_ if err is None else max(err, e_)
            if err is None:
                alive.append(h)
            else:
                errors.append(err)
        hyps = alive
        if not hyps:
            worst = max(errors)
            raise _NotEquivariant(
                "not equivariant: permuting its labelled inputs does not permute its output "
                f"(max error {worst:.3g} on draw {draw + 1} of {DRAWS})"
            )
        draw += 1
    passed = hyps[0]
    carried = {k for dims in passed for k in dims if k is not None}
    how = "labels passed through" if carried else "invariant: its labelled inputs are reduced"
    dtype = "float64" if wide else "its recorded dtypes"
    return passed, f"probed: equivariant on {DRAWS} random draws ({dtype}); {how}"


def _short(e: Exception, limit: int = 160) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- applying the result -------------------------------------------------------------------


def _apply(a: SymmetryAnalysis, groups: dict, assignment: list) -> Any:
    """Tie each group's labels, fix or consume those no output carries, label the outputs."""
    carried = {k for dims in assignment for k in dims if k is not None}
    first = {}
    own: dict = {}  # entry name -> its labels, one per dim
    target = a.node.target
    for key, g in groups.items():
        if g.fixed:
            for _, _, lab in g.members:
                a.fix(lab, f"{a.op} reads its integer input's neurons by position")
            continue
        if g.members:
            lab0 = g.members[0][2]
        else:  # neurons inside the module, first seen on one of its entries
            name, d = g.params[0]
            owner, _, attr = name.rpartition(".")  # named after its submodule, as a rule's are
            origin = f"{target}.{owner}" if owner else f"{target}.{attr}.d{d}"
            lab0 = a.new_run(g.size, "neuron", origin)
        first[key] = lab0
        for _, _, lab in g.members[1:]:
            a.tie(lab0, lab)
        for name, d in g.params:
            shape = a.fetch_attr(f"{target}.{name}").shape
            own.setdefault(name, [None] * len(shape))[d] = lab0
        if key not in carried and g.members:
            if g.size == 1:
                a.fix(lab0, "reduces one neuron's value over all positions")
            else:
                a.consume(lab0)
    for name, labels in own.items():
        a.label_param(a.key(target, name), labels)
    it = iter(assignment)

    def label(meta: Any) -> Any:
        if _is_meta(meta):
            dims = next(it)
            return TensorLabels(
                tuple(meta.shape), tuple(None if k is None else first[k] for k in dims)
            )
        if isinstance(meta, (tuple, list)):
            return remade(meta, (label(m) for m in meta))
        if isinstance(meta, dict):
            return {k: label(m) for k, m in meta.items()}
        return meta

    return label(a.node.meta["tensor_meta"])


def _is_meta(m: Any) -> bool:
    """Whether ``m`` is a tensor's shape meta (a ``TensorMetadata``, itself a tuple)."""
    return hasattr(m, "shape") and hasattr(m, "dtype") and hasattr(m, "stride")


def _meta_leaves(meta: Any) -> list:
    """The output leaves of a node's shape meta: tensor metas and non-tensor values."""
    if _is_meta(meta):
        return [meta]
    if isinstance(meta, (tuple, list)):
        return [x for m in meta for x in _meta_leaves(m)]
    if isinstance(meta, dict):
        return [x for m in meta.values() for x in _meta_leaves(m)]
    return [meta]
