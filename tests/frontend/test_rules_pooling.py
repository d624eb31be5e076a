"""nfncompile.frontend.rules.pooling: pooling, resampling and padding keep the channels."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

import nfncompile as nfc
from nfncompile.frontend.tracing import trace_with_report
from tests.frontend.helpers import model_, spaces_, x_


class PoolPad(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(2, 4, 3), nn.Conv2d(6, 3, 1)

    def forward(self, x):
        h = F.max_pool2d(self.c1(F.pad(x, (1, 1, 1, 1), mode="reflect")), 2)
        h = nn.functional.interpolate(h, scale_factor=2.0)
        h = F.pad(h, (0, 0, 0, 0, 1, 1))  # one constant channel on each side
        return self.c2(h).mean((2, 3))


def test_spatial_ops_keep_channels_and_channel_padding_is_fixed_positions():
    spec, report = trace_with_report(model_(PoolPad), x_(2, 2, 6, 6))
    assert spaces_(spec) == [("in", 2, "input"), ("c1", 4, "hidden"), ("out", 3, "output")]
    assert spec["c2.weight"].axes == ("out", (1, "c1", 1), None, None)
    assert not report.broken and report.verification.ok


def test_reflect_padding_of_channels_fixes_them():
    model = nn.Sequential(nn.Conv2d(2, 4, 1), nn.ReflectionPad3d((0, 0, 0, 0, 1, 1)))
    spec = nfc.trace(model_(lambda: model), x_(1, 2, 3, 3), verify=False)
    assert spec["0.weight"].axes == (None, "in", None, None)
