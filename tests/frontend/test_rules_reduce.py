"""nfncompile.frontend.rules.reduce: symmetric reductions consume labels, positional ops fix."""

from __future__ import annotations

import torch

from nfncompile.frontend.tracing import trace_with_report
from tests.frontend.helpers import TwoLinear, model_, x_


class SumOfSlice(TwoLinear):
    """Sums a's first 4 outputs: they may permute among themselves, not with the other 2."""

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h) * h[:, :4].sum(1, keepdim=True)


def test_a_reduction_over_a_slice_cuts_the_run():
    spec, report = trace_with_report(model_(SumOfSlice), x_(5, 4))
    assert spec["a.weight"].axes == (("a/0", "a/1"), "in")
    assert [spec.spaces[n].size for n in ("a/0", "a/1")] == [4, 2]
    assert not report.broken and report.verification.ok


class ArgmaxGate(TwoLinear):
    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h) + h.argmax(1, keepdim=True).to(h.dtype)


def test_argmax_returns_positions_and_fixes_the_neurons():
    spec, report = trace_with_report(model_(ArgmaxGate), x_(5, 4))
    assert spec["a.weight"].axes == (None, "in")
    assert "argmax returns neuron positions" in report.broken[0].reason
