"""nfncompile.frontend.rules.elementwise and reduce: position-dependent ops fix the channels."""

from __future__ import annotations

import pytest
import torch

from nfncompile.frontend.tracing import trace_with_report
from tests.frontend.helpers import TwoLinear, model_, x_


class Arange(TwoLinear):
    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h * torch.arange(6, dtype=h.dtype))


class Roll(TwoLinear):
    def forward(self, x):
        return self.b(torch.roll(torch.relu(self.a(x)), 1, dims=1))


@pytest.mark.parametrize("cls, op", [(Arange, "operator.mul"), (Roll, "torch.roll")])
def test_channel_position_dependent_ops_fix_the_channels(cls, op):
    spec, report = trace_with_report(model_(cls), x_(5, 4))
    assert spec["a.weight"].axes == (None, "in")
    assert spec["b.weight"].axes == ("out", None)
    assert [s.name for s in spec.spaces.values()] == ["in", "out"]
    assert len(report.broken) == 1 and report.broken[0].op.startswith(op)
    assert report.broken[0].count == 6
    assert report.verification.ok
    assert op in str(report)
