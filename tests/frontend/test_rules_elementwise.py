"""nfncompile.frontend.rules.elementwise and reduce: position-dependent ops fix the channels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

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


class _Gated(nn.Module):
    """S4's output projection: a 1x1 conv to ``2H`` channels, then ``nn.GLU(dim=-2)``."""

    def __init__(self, functional: bool) -> None:
        super().__init__()
        self.functional = functional
        self.a, self.proj, self.b = nn.Conv1d(3, 4, 1), nn.Conv1d(4, 8, 1), nn.Conv1d(4, 2, 1)

    def forward(self, x):
        h = torch.relu(self.a(x))
        g = F.glu(self.proj(h), dim=1) if self.functional else nn.GLU(dim=-2)(self.proj(h))
        return self.b(h + g)


@pytest.mark.parametrize("functional", [False, True])
def test_glu_ties_each_unit_to_its_gate(functional):
    # no rule: probed, every channel permuted freely failed, and the projection and the
    # residual stream were fixed
    spec, report = trace_with_report(model_(lambda: _Gated(functional)), x_(2, 3, 5))
    assert spec["proj.weight"].axes[:2] == (("a", "a"), "a") and spec["b.weight"].axes[1] == "a"
    assert report.verification.ok and not report.probes


class _Branchy(nn.Module):
    """Returns a tuple and branches on its input's values: kept as one call."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x):
        return (self.fc(x), x) if x.sum() > 0 else (self.fc(x), -x)


class JoinedTuples(TwoLinear):
    """LED's ``outputs = (attn_output,) + self_outputs[1:]`` on a kept call's tuple."""

    def __init__(self, joined: bool) -> None:
        super().__init__()
        self.joined, self.kept = joined, _Branchy()

    def forward(self, x):
        outs = self.kept(self.a(x))
        outs = (self.b(outs[0]),) + outs[1:] if self.joined else (self.b(outs[0]), outs[1])
        return outs[0] + outs[1].sum(-1, keepdim=True)


def test_tuples_joined_by_plus_join_their_labels():
    # before: operator.add was read as a tensor add: "'tuple' object has no attribute 'shape'"
    joined, report = trace_with_report(model_(lambda: JoinedTuples(True)), x_(5, 4))
    plain, _ = trace_with_report(model_(lambda: JoinedTuples(False)), x_(5, 4))
    assert report.verification.ok and joined.to_dict() == plain.to_dict()
