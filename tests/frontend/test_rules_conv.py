"""nfncompile.frontend.rules.conv: plain, grouped, depthwise and transposed convolutions."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from nfncompile.frontend.tracing import trace_with_report
from tests.frontend.helpers import model_, spaces_, x_


class Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.g = nn.Conv2d(8, 12, 3, padding=1, groups=4)
        self.gn = nn.GroupNorm(3, 12)
        self.dw = nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.dw2 = nn.Conv2d(12, 24, 3, padding=1, groups=12)
        self.t = nn.ConvTranspose2d(24, 8, 2, stride=2, groups=2)
        self.inorm = nn.InstanceNorm2d(8, affine=True)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = F.relu(self.c1(x))
        x = self.gn(self.g(x))
        x = self.dw2(F.gelu(self.dw(x)))
        x = self.inorm(self.t(x))
        return self.fc(x.mean((2, 3)))


def test_grouped_depthwise_groupnorm_transposed():
    spec, report = trace_with_report(model_(Grouped), x_(2, 3, 6, 6))
    # g: 4 groups of 2 input channels, all tied to one space of size 2 (c1 appears 4 times)
    assert spec.spaces["c1"].size == 2
    assert spec["c1.weight"].axes == (("c1",) * 4, "in", None, None)
    assert spec["g.weight"].axes[1] == "c1"
    # g's outputs permute within its 4 groups of 3, GroupNorm within its 3 groups of 4: the
    # common refinement of [0,3,6,9,12] and [0,4,8,12] gives pieces 3,1,2,2,1,3
    g_axis = spec["g.weight"].axes[0]
    assert [spec.spaces[p].size for p in g_axis] == [3, 1, 2, 2, 1, 3]
    # depthwise: same neurons in and out; the x2 multiplier views the weight as (12, 2, ...)
    assert spec["dw.weight"].axes == (g_axis, None, None, None)
    assert spec["dw2.weight"].view == (12, 2, 1, 3, 3)
    # grouped transposed conv: output channels of the 2 groups tied (one space of 4)
    assert spec["t.weight"].axes[2] == "t" and spec.spaces["t"].size == 4
    assert spec["fc.weight"].axes == ("out", ("t", "t"))
    assert report.verification.ok and not report.broken


def test_stacked_depthwise_multipliers_give_views():
    # each depthwise conv with multiplier 2 makes every neuron of conv 0 span 2, then 4
    # consecutive channels; the weights that read them are viewed as (neurons, positions)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 1), nn.Conv2d(3, 6, 3, padding=1, groups=3),
        nn.Conv2d(6, 12, 3, padding=1, groups=6), nn.ReLU(), nn.Conv2d(12, 4, 1),
    )  # fmt: skip
    spec, report = trace_with_report(model_(lambda: model), x_(2, 2, 5, 5))
    assert spaces_(spec) == [("in", 2, "input"), ("0", 3, "hidden"), ("out", 4, "output")]
    assert spec["2.weight"].view == (3, 4, 1, 3, 3) and spec["2.weight"].axes[:2] == ("0", None)
    assert spec["2.bias"].view == (3, 4) and spec["2.bias"].axes == ("0", None)
    assert spec["4.weight"].view == (4, 3, 4, 1, 1)
    assert spec["4.weight"].axes == ("out", "0", None, None, None)
    assert report.verification.ok
