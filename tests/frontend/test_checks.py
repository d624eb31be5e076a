"""A check a forward makes on a traced value (``assert (a == b).all()``, ``if
torch.isnan(x).any(): raise``) is taken as passing, as the model on the example takes it.

PYTEST_DONT_REWRITE: the asserts of this module's forwards and helpers are the checks under
test, compiled as Python compiles them (pytest would rewrite them into code that formats
its message with branches).
"""

import sys

import pytest
import torch
from torch import nn

import nfncompile as nfc
from nfncompile.frontend.checks import passing_truth
from nfncompile.frontend.tracing import trace_with_report

from .helpers import TwoLinear, model_, x_


class _Asked:
    """A value whose truth records what :func:`passing_truth` answers for the code asking it,
    then answers ``truth``."""

    def __init__(self, log: list, truth: bool = True) -> None:
        self.log, self.truth = log, truth

    def __bool__(self) -> bool:
        self.log.append(passing_truth(sys._getframe(1)))
        return self.truth


def _assert(c):
    assert c
    return 0


def _assert_message(c):
    assert c, f"c must hold, got {c!r}"
    return 0


def _raise_unless(c):
    if not c:
        raise ValueError("c must hold")
    return 0


def _raise_if(c):
    if c:
        raise RuntimeError(f"c must not hold ({c})")
    return 0


def _else_raise(c):
    if c:
        y = 1
    else:
        raise ValueError
    return y


def _branch(c):
    if c:
        return 1
    return 0


def _stored(c):
    b = bool(c)
    return b


def _both_raise(c):
    if c:
        raise ValueError("one")
    raise ValueError("other")


@pytest.mark.parametrize(
    ("fn", "truth", "want"),
    [
        (_assert, True, True),
        (_assert_message, True, True),
        (_raise_unless, True, True),
        (_raise_if, False, False),
        (_else_raise, True, True),
        (_branch, True, None),  # both sides go on
        (_stored, True, None),  # not asked by a jump
    ],
)
def test_the_truth_that_does_not_raise_is_read_from_the_bytecode(fn, truth, want):
    log: list = []
    fn(_Asked(log, truth))
    assert log == [want]


def test_a_check_of_two_conditions_needs_both():
    log: list = []

    def both(a, b):
        assert a and b, "both"
        return 0

    both(_Asked(log), _Asked(log))
    assert log == [True, True]
    with pytest.raises(ValueError):
        _both_raise(_Asked(log))
    assert log[-1] is None  # no side goes on


class _Checked(TwoLinear):
    """Checks on the hidden features that hold on any input, then on nothing else."""

    def forward(self, x):
        h = torch.relu(self.a(x))
        assert (h >= 0).all(), "relu is non-negative"
        if torch.isnan(h).any():
            raise ValueError("NaN features")
        return self.b(h)


class _Fails(TwoLinear):
    def forward(self, x):
        h = torch.relu(self.a(x))
        if not (h > 100).all():
            raise ValueError("features must exceed 100")
        return self.b(h)


class _Branches(TwoLinear):
    def forward(self, x):
        h = self.a(x)
        if h.sum() > 0:
            return self.b(h)
        return self.b(-h)


@pytest.mark.parametrize("fake", [False, True])
def test_a_check_on_traced_values_is_traced_as_passing(fake):
    spec, report = trace_with_report(model_(_Checked), x_(5, 4), fake=fake)
    # the same spaces as without the checks: nothing fixed, and verified on the real model
    plain = nfc.trace(model_(TwoLinear), x_(5, 4))
    assert spec.spaces == plain.spaces and report.verification.ok
    assert spec["a.weight"].axes == ("a", "in")


def test_an_example_that_fails_a_check_is_named():
    # before: "symbolically traced variables cannot be used as inputs to control flow"
    with pytest.raises(nfc.TraceError) as e:
        nfc.trace(model_(_Fails), x_(5, 4), verify=False)
    message = str(e.value)
    assert "the example input fails a check of the forward at" in message
    assert "test_checks.py" in message and "if not (h > 100).all():" in message
    assert "While executing" not in message


def test_a_branch_neither_side_of_which_raises_is_still_refused():
    with pytest.raises(nfc.TraceError, match="control flow"):
        nfc.trace(model_(_Branches), x_(5, 4), verify=False)


def test_a_check_inside_a_submodule_leaves_it_read_op_by_op():
    net = model_(lambda: nn.Sequential(_Checked(), nn.ReLU(), nn.Linear(3, 2)))
    spec, report = trace_with_report(net, x_(5, 4))
    assert report.verification.ok and not report.probes
    assert spec["0.a.weight"].axes[0] is not None and spec["2.weight"].axes[1] is not None
