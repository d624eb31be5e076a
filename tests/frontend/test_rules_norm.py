"""nfncompile.frontend.rules.norm: batch, group, layer norms (modules and functional)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nfncompile.frontend.tracing import trace_with_report
from tests.frontend.helpers import model_, spaces_, x_


class LayerScale(nn.Module):
    """ConvNeXt-style: depthwise conv, channels-last LayerNorm and MLP, layer scale."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 2, stride=2)
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.ln = nn.LayerNorm(c)
        self.pw1 = nn.Linear(c, 4 * c)
        self.pw2 = nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.1))
        self.beta = nn.Parameter(torch.full((c, 1, 1), 0.5))
        self.head = nn.Linear(c, 4)

    def forward(self, x):
        x = self.stem(x)
        y = self.ln(self.dw(x).permute(0, 2, 3, 1))
        y = self.gamma * self.pw2(F.gelu(self.pw1(y)))
        x = x + y.permute(0, 3, 1, 2) * self.beta
        return self.head(x.mean([-2, -1]))


def test_channels_last_layernorm_and_layer_scale():
    spec, report = trace_with_report(model_(LayerScale), x_(2, 3, 8, 8))
    assert spaces_(spec) == [("in", 3, "input"), ("stem", 8, "hidden"), ("pw1", 32, "hidden"),
                             ("out", 4, "output")]  # fmt: skip
    assert spec["gamma"].axes == ("stem",)
    assert spec["beta"].axes == ("stem", None, None)
    assert spec["ln.weight"].axes == ("stem",)
    assert spec["dw.weight"].axes == ("stem", None, None, None)
    assert report.verification.ok


class Functional(nn.Module):
    """Functional forms with parameters used directly."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(6, 3, 3, 3) * 0.3)
        self.b1 = nn.Parameter(torch.randn(6))
        self.g = nn.Parameter(torch.rand(6) + 0.5)
        self.register_buffer("mean", torch.randn(6))
        self.register_buffer("var", torch.rand(6) + 0.5)
        self.ln_w = nn.Parameter(torch.randn(6))
        self.fc = nn.Parameter(torch.randn(4, 6))

    def forward(self, x):
        x = F.conv2d(x, self.w1, self.b1, padding=1)
        x = F.batch_norm(x, self.mean, self.var, self.g, None, False)
        x = F.silu(x).mean((2, 3), keepdim=True).view(x.shape[0], -1)  # SE-style view
        x = F.layer_norm(x, (6,), self.ln_w)
        return F.linear(x, self.fc)


def test_functional_forms_and_direct_parameters():
    spec, report = trace_with_report(model_(Functional), x_(2, 3, 5, 5))
    assert len(spec.spaces) == 3  # in, the conv's 6 channels, out
    hidden = next(s.name for s in spec.spaces.values() if s.role == "hidden")
    assert spec["w1"].axes == (hidden, "in", None, None)
    for k in ("b1", "g", "mean", "var", "ln_w"):
        assert spec[k].axes == (hidden,)
    assert spec["fc"].axes == ("out", hidden)
    assert report.verification.ok
