"""Test helpers: numerical equivariance and invariance checks for NF modules.

Like e3nn's ``assert_equivariant``, these ship with the library so that users can check their
own modules the way our test-suite checks ours: draw random features and random elements of a
spec's permutation group from a seeded generator, run the module in float64, and compare.

Examples
--------
>>> from nfncompile.spec import WeightSpaceSpec
>>> from nfncompile.nn import NFActivation
>>> spec = WeightSpaceSpec.from_dict({
...     "spaces": {"in": {"size": 2, "role": "input"}, "h": {"size": 3, "role": "hidden"},
...                "out": {"size": 1, "role": "output"}},
...     "params": {"l1.weight": {"shape": [3, 2], "axes": ["h", "in"]},
...                "l2.weight": {"shape": [1, 3], "axes": ["out", "h"]}}})
>>> assert_equivariant(NFActivation("tanh"), spec)
0.0
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .errors import FeatureMismatchError, SpecError, StateDictMismatchError
from .features import WeightSpaceFeatures, as_features
from .spec import ParamSpec, Permutation, Space, WeightSpaceSpec, check_mode

__all__ = [
    "mlp_spec",
    "random_features",
    "assert_equivariant",
    "assert_invariant",
    "default_mode",
]


def mlp_spec(widths: tuple[int, ...] | list[int], mode: str = "np") -> WeightSpaceSpec:
    """The weight-space spec of a plain MLP, without tracing one: handy for tests.

    Layers are named ``l1 .. lL`` (``l{i}.weight``, ``l{i}.bias``), spaces ``in``,
    ``h1 .. h{L-1}`` and ``out``.

    Parameters
    ----------
    widths : sequence of int
        Neurons per layer, input first (at least two).
    mode : {"np", "hnp"}

    Examples
    --------
    >>> mlp_spec([2, 3, 1])
    WeightSpaceSpec(mode='np', spaces=[in:2/input, h1:3/hidden, out:1/output], params=[l1.weight(3, 2)[h1, in], l1.bias(3,)[h1], l2.weight(1, 3)[out, h1], l2.bias(1,)[out]])
    """
    widths = list(widths)
    if len(widths) < 2:
        raise SpecError(f"an MLP needs at least an input and an output width, got {widths}")
    names = ["in", *(f"h{i}" for i in range(1, len(widths) - 1)), "out"]
    roles = ["input", *(["hidden"] * (len(widths) - 2)), "output"]
    spaces = [Space(n, w, r) for n, w, r in zip(names, widths, roles)]
    params = []
    for i in range(1, len(widths)):
        params.append(
            ParamSpec(f"l{i}.weight", (widths[i], widths[i - 1]), (names[i], names[i - 1]))
        )
        params.append(ParamSpec(f"l{i}.bias", (widths[i],), (names[i],)))
    return WeightSpaceSpec(spaces, params, mode)


def random_features(
    spec: WeightSpaceSpec,
    channels: int,
    batch: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> WeightSpaceFeatures:
    """Standard-normal features ``name -> (batch, channels, *shape)`` for every spec param.

    Parameters
    ----------
    spec : WeightSpaceSpec
    channels, batch : int
    generator : torch.Generator, optional
        Seeded generator for reproducible draws.
    dtype : torch.dtype, default float64

    Examples
    --------
    >>> from nfncompile.spec import ParamSpec, Space
    >>> spec = WeightSpaceSpec([Space("in", 3, "input")], [ParamSpec("b", (3,), ("in",))])
    >>> random_features(spec, channels=2, batch=4, generator=torch.Generator().manual_seed(0))
    WeightSpaceFeatures(B=4, C=2, b=(4, 2, 3))
    """
    return WeightSpaceFeatures(
        {
            p.name: torch.randn((batch, channels, *p.shape), generator=generator, dtype=dtype)
            for p in spec.params
        }
    )


def default_mode(module: nn.Module, spec: WeightSpaceSpec) -> str:
    """The group a module is checked against when no ``mode`` is given.

    The ``mode`` attributes (``"np"`` or ``"hnp"``) of the module and all its submodules are
    collected: ``"hnp"`` if any says ``"hnp"`` (a composite of ``np`` and ``hnp`` modules is
    only ``hnp``-equivariant), else ``"np"`` if any says ``"np"``, else the spec's mode.

    Examples
    --------
    >>> from nfncompile.spec import ParamSpec, Space
    >>> spec = WeightSpaceSpec([Space("in", 3, "input")], [ParamSpec("b", (3,), ("in",))])
    >>> default_mode(nn.Identity(), spec)
    'np'
    """
    modes = {getattr(m, "mode", None) for m in module.modules()}
    if "hnp" in modes:
        return "hnp"
    if "np" in modes:
        return "np"
    return spec.mode


def _moved(perm: Permutation) -> list[str]:
    return [k for k, v in perm.perms.items() if not torch.equal(v, torch.arange(len(v)))]


def _setup(
    module: nn.Module,
    spec: WeightSpaceSpec,
    mode: str | None,
    in_channels: int,
    batch: int,
    seed: int,
    features: Mapping[str, torch.Tensor] | None,
) -> tuple[nn.Module, str, torch.Generator, WeightSpaceFeatures]:
    mode = check_mode(mode) if mode is not None else default_mode(module, spec)
    model = copy.deepcopy(module).to(torch.float64).eval()
    generator = torch.Generator().manual_seed(seed)
    if features is None:
        x = random_features(spec, in_channels, batch, generator)
    else:
        x = WeightSpaceFeatures(features).to(torch.float64)
        spec.check_state_dict(x, leading=2)
    return model, mode, generator, x


def _draw(spec: WeightSpaceSpec, generator: torch.Generator, mode: str) -> Permutation:
    """A random group element; redrawn (up to 20 times) while it is the identity."""
    nontrivial = any(spec.spaces[s].size > 1 for s in spec.permutable_spaces(mode))
    perm = spec.sample_permutation(generator, mode=mode)
    for _ in range(20):
        if not nontrivial or _moved(perm):
            break
        perm = spec.sample_permutation(generator, mode=mode)
    return perm


def _as_output_features(y: Any) -> WeightSpaceFeatures:
    """A module's output as features (the coercion every NF module applies to its input); a
    module that returns anything else is the wrong kind of module for this check."""
    try:
        return as_features(y, "assert_equivariant")
    except FeatureMismatchError:
        raise TypeError(
            f"assert_equivariant needs a module returning weight-space features, got "
            f"{type(y).__name__}; use assert_invariant for modules returning tensors"
        ) from None


def _permute_output(perm: Permutation, y: WeightSpaceFeatures) -> WeightSpaceFeatures:
    try:
        return perm.apply(y)
    except StateDictMismatchError as e:
        raise AssertionError(
            f"the module's output features do not match the spec (an equivariant module must "
            f"keep every parameter's name and shape; only channels may change): {e}"
        ) from None


def _compare(
    actual: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    atol: float,
    rtol: float,
) -> tuple[float, str | None, float, str | None]:
    """Largest error overall, the worst failing param, its error and torch's message for it."""
    worst_err, worst, worst_msg, max_err = -1.0, None, None, 0.0
    for name, e in expected.items():
        a = actual[name]
        if a.shape != e.shape:
            raise AssertionError(
                f"param {name!r}: output shape {tuple(a.shape)} on permuted input, "
                f"{tuple(e.shape)} on the original"
            )
        diff = (a - e).abs()
        err = float(diff.nan_to_num(nan=float("inf")).max()) if diff.numel() else 0.0
        max_err = max(max_err, err)
        try:
            torch.testing.assert_close(a, e, atol=atol, rtol=rtol)
        except AssertionError as exc:
            if err > worst_err:
                worst_err, worst, worst_msg = err, name, str(exc)
    return max_err, worst, worst_err, worst_msg


def assert_equivariant(
    module: nn.Module,
    spec: WeightSpaceSpec,
    *,
    mode: str | None = None,
    in_channels: int = 1,
    batch: int = 2,
    trials: int = 3,
    seed: int = 0,
    atol: float = 1e-8,
    rtol: float = 1e-6,
    features: Mapping[str, torch.Tensor] | None = None,
) -> float:
    """Check ``module(perm.apply(x)) == perm.apply(module(x))`` for random group elements.

    The module is deep-copied, cast to float64 and put in eval mode (so dropout is off); the
    original is untouched. Features are drawn with :func:`random_features` from a
    ``torch.Generator`` seeded with ``seed`` (or ``features`` is used, cast to float64), and
    ``trials`` permutations are drawn from the same generator (an identity draw is redrawn when
    the group is not trivial). Each output parameter is compared with
    :func:`torch.testing.assert_close`. The output may differ from the input in channel count
    only: it must keep every parameter's name and shape.

    Parameters
    ----------
    module : nn.Module
        Maps :class:`WeightSpaceFeatures` to :class:`WeightSpaceFeatures`.
    spec : WeightSpaceSpec
    mode : {"np", "hnp"}, optional
        The group; default :func:`default_mode` (the module's own ``mode`` attributes, else
        the spec's mode).
    in_channels, batch : int
        Shape of the random features.
    trials : int
        Number of permutations tried.
    seed : int
    atol, rtol : float
        Tolerances for :func:`torch.testing.assert_close`.
    features : mapping, optional
        Use these input features instead of random ones.

    Returns
    -------
    float
        The largest absolute error seen over all trials and parameters.

    Raises
    ------
    AssertionError
        On the first trial that fails: names the worst parameter (largest absolute error),
        the error, the tolerances and the spaces the permutation moved.
    TypeError
        When the module does not return weight-space features.
    StateDictMismatchError
        When the given ``features`` do not match the spec.

    Examples
    --------
    >>> from nfncompile.spec import ParamSpec, Space
    >>> from nfncompile.nn import NFNorm
    >>> spec = WeightSpaceSpec([Space("in", 3, "input")], [ParamSpec("b", (3,), ("in",))])
    >>> assert_equivariant(NFNorm(4), spec, in_channels=4) < 1e-12
    True
    """
    model, mode, generator, x = _setup(module, spec, mode, in_channels, batch, seed, features)
    with torch.no_grad():
        y = _as_output_features(model(x))
        _permute_output(spec.identity(), y)  # names and shapes match the spec
        max_err = 0.0
        for trial in range(trials):
            perm = _draw(spec, generator, mode)
            actual = _as_output_features(model(perm.apply(x)))
            expected = _permute_output(perm, y)
            if set(actual) != set(expected):
                raise AssertionError(
                    f"output params differ between the permuted and original input: "
                    f"{sorted(actual)} vs {sorted(expected)}"
                )
            err, worst, worst_err, msg = _compare(actual, expected, atol, rtol)
            max_err = max(max_err, err)
            if worst is not None:
                raise AssertionError(
                    f"{type(module).__name__} is not {mode}-equivariant (trial {trial + 1} of "
                    f"{trials}, permuted spaces: {_moved(perm)}): worst param {worst!r} with "
                    f"max abs error {worst_err:.3e} "
                    f"(atol={atol:g}, rtol={rtol:g})\n{msg}"
                )
    return max_err


def assert_invariant(
    module: nn.Module,
    spec: WeightSpaceSpec,
    *,
    mode: str | None = None,
    in_channels: int = 1,
    batch: int = 2,
    trials: int = 3,
    seed: int = 0,
    atol: float = 1e-8,
    rtol: float = 1e-6,
    features: Mapping[str, torch.Tensor] | None = None,
) -> float:
    """Check ``module(perm.apply(x)) == module(x)`` for random group elements.

    Same set-up as :func:`assert_equivariant` (deep copy in float64 and eval mode, seeded
    features and permutations), for a module that returns a tensor.

    Returns
    -------
    float
        The largest absolute error seen.

    Raises
    ------
    AssertionError
        On the first failing trial: the error, the tolerances, the spaces the permutation
        moved and :func:`torch.testing.assert_close`'s report.
    TypeError
        When the module does not return a tensor.
    StateDictMismatchError
        When the given ``features`` do not match the spec.

    Examples
    --------
    >>> from nfncompile.spec import ParamSpec, Space
    >>> from nfncompile.nn.stats import StatFeatures
    >>> spec = WeightSpaceSpec([Space("in", 3, "input")], [ParamSpec("b", (3,), ("in",))])
    >>> assert_invariant(StatFeatures(spec), spec) < 1e-12
    True
    """
    model, mode, generator, x = _setup(module, spec, mode, in_channels, batch, seed, features)
    with torch.no_grad():
        y = model(x)
        if not isinstance(y, torch.Tensor):
            raise TypeError(
                f"assert_invariant needs a module returning a tensor, got {type(y).__name__}; "
                "use assert_equivariant for modules returning weight-space features"
            )
        max_err = 0.0
        for trial in range(trials):
            perm = _draw(spec, generator, mode)
            actual = model(perm.apply(x))
            err, worst, worst_err, msg = _compare({"output": actual}, {"output": y}, atol, rtol)
            max_err = max(max_err, err)
            if worst is not None:
                raise AssertionError(
                    f"{type(module).__name__} is not {mode}-invariant (trial {trial + 1} of "
                    f"{trials}, permuted spaces: {_moved(perm)}): max abs error {worst_err:.3e} "
                    f"(atol={atol:g}, rtol={rtol:g})\n{msg}"
                )
    return max_err
