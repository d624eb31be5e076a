"""nfncompile.frontend.rules.reduce: symmetric reductions consume labels, positional ops fix."""

from __future__ import annotations

import pytest
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


class NumpyNames(TwoLinear):
    """A mean over the features and one over the batch, by torch's (``dim``, ``keepdim``) or
    numpy's (``axis``, ``keepdims``) keywords, as I-BERT writes them."""

    def __init__(self, numpy: bool) -> None:
        super().__init__()
        self.dim, self.keep = ("axis", "keepdims") if numpy else ("dim", "keepdim")
        self.w = torch.nn.Parameter(torch.randn(6, 3))

    def forward(self, x):
        h = torch.relu(self.a(x))
        h = h - h.mean(**{self.dim: -1, self.keep: True})
        return self.b(h) + h.mean(**{self.dim: 0}) @ self.w  # the batch mean meets w's rows


@pytest.mark.parametrize("numpy", [False, True])
def test_numpy_keyword_names_read_as_torchs(numpy):
    # before: axis= was not read as the dim: a crash in a broadcast, or (the batch mean) a
    # group that failed verification
    spec, report = trace_with_report(model_(lambda: NumpyNames(numpy)), x_(5, 4))
    assert report.verification.ok
    assert spec["a.weight"].axes[0] == spec["w"].axes[0] == spec["b.weight"].axes[1] == "a"
