"""nfncompile.frontend.rules.norm: batch, group, layer norms (modules and functional)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nfncompile as nfc
from nfncompile.frontend.tracing import trace_with_report
from nfncompile.testing import assert_equivariant
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


class MeanVarStd(nn.Module):
    """BiT-style weight standardisation: mean and variance over (in, kh, kw), kept dims."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 1)
        self.w = nn.Parameter(torch.randn(4, 6, 3, 3))
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        w = self.w
        m = w.mean(dim=[1, 2, 3], keepdim=True)
        v = torch.var(w, dim=[1, 2, 3], keepdim=True, unbiased=False)
        h = F.conv2d(torch.relu(self.c1(x)), (w - m) / torch.sqrt(v + 1e-10), padding=1)
        return self.fc(h.mean((2, 3)))


class LayerNormStd(MeanVarStd):
    """Standardisation by a layer norm over the flattened (in * kh * kw) axis."""

    def forward(self, x):
        w = F.layer_norm(self.w.reshape(4, -1), (54,)).reshape(4, 6, 3, 3)
        return self.fc(F.conv2d(torch.relu(self.c1(x)), w, padding=1).mean((2, 3)))


@pytest.mark.parametrize("cls", [MeanVarStd, LayerNormStd])
def test_weight_standardisation_keeps_the_input_channels(cls):
    spec, report = trace_with_report(model_(cls), x_(2, 3, 5, 5))
    # w is read first, so its output rows come first; its input axis is c1's space
    assert spaces_(spec) == [("in", 3, "input"), ("w", 4, "hidden"), ("c1", 6, "hidden"),
                             ("out", 2, "output")]  # fmt: skip
    assert spec["w"].axes == ("w", "c1", None, None)
    assert report.verification.ok and not report.broken


class StatsOverChannels(nn.Module):
    """A weight normalised over its *output* rows too (mean over every dim): still symmetric."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 5)
        self.b = nn.Linear(5, 2)

    def forward(self, x):
        w = F.batch_norm(self.b.weight.reshape(1, 1, -1), None, None, training=True)
        return F.linear(torch.relu(self.a(x)), w.reshape(2, 5), self.b.bias)


def test_batch_statistics_over_a_flattened_product_consume_it():
    spec, report = trace_with_report(model_(StatsOverChannels), x_(4, 3))
    assert spec["b.weight"].axes == ("out", "a")
    assert report.verification.ok and not report.broken


class WeightNormed(nn.Module):
    """Weight-normalised layers (``parametrizations.weight_norm``: a DINO head's last layer, a
    TCN's convs), along the output dim and over the whole weight (``dim=None``)."""

    def __init__(self) -> None:
        super().__init__()
        weight_norm = nn.utils.parametrizations.weight_norm
        self.conv = weight_norm(nn.Conv1d(3, 5, 3))
        self.a = weight_norm(nn.Linear(5, 4))
        self.b = weight_norm(nn.Linear(4, 2), dim=None)
        self.g, self.v = nn.Parameter(torch.ones(3, 1)), nn.Parameter(torch.randn(3, 5))

    def forward(self, x):
        h = torch.relu(self.conv(x)).mean(-1)
        h = h + nn.functional.linear(h, torch._weight_norm(self.v, self.g, 0)).sum(-1, True)
        return self.b(torch.relu(self.a(h)))


def test_weight_norm_keeps_the_neurons_of_the_weight_it_normalises():
    # torch._weight_norm had no rule: probed, and kept as one call
    spec, report = trace_with_report(model_(WeightNormed), x_(2, 3, 6))
    assert report.verification.ok and not report.probes
    g, v = "parametrizations.weight.original0", "parametrizations.weight.original1"
    assert spec[f"conv.{g}"].axes[0] == spec[f"conv.{v}"].axes[0] == spec[f"a.{v}"].axes[1]
    assert spec[f"a.{g}"].axes[0] == spec[f"a.{v}"].axes[0] == spec[f"b.{v}"].axes[1]
    assert spec[f"a.{v}"].axes[0] is not None and spec[f"b.{g}"].axes == ()
    assert spec["g"].axes[0] == spec["v"].axes[0] is not None
    layer = nfc.NFLinear(spec, 1, 1, basis="linear").double()
    assert_equivariant(layer, spec, in_channels=1, trials=2)


class WrittenOutNorm(nn.Module):
    """A conv, a group norm written out with reshapes (``how``), another conv."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.c1, self.c2 = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 3)
        self.w = nn.Parameter(torch.rand(1, 8, 1, 1) + 0.5)
        self.v = nn.Parameter(torch.rand(1, 8, 1, 1))
        self.per_group = nn.Parameter(torch.rand(1, 2, 1) + 0.5)
        self.shared = nn.Parameter(torch.randn(4 * 7 * 7))

    def forward(self, x):
        x = self.c1(x)
        b, c, h, w = x.shape
        if self.how == "flat":  # the GroupNorm paper's code: (N, G, -1)
            g = x.view(b, 2, -1)
            g = (g - g.mean(-1, keepdim=True)) / (g.var(-1, keepdim=True) + 1e-5).sqrt()
            y = g.view(b, c, h, w) * self.w
        elif self.how in ("evonorm_flat", "evonorm_5d"):  # timm's EvoNorm-S0 group_std
            g = x.reshape(b, 2, -1) if self.how == "evonorm_flat" else x.reshape(b, 2, 4, h, w)
            dims = -1 if self.how == "evonorm_flat" else (2, 3, 4)
            std = g.var(dims, unbiased=False, keepdim=True).add(1e-5).sqrt()
            y = x * (x * self.v).sigmoid() / std.expand(g.shape).reshape(b, c, h, w) * self.w
        elif self.how == "per_group":  # a scale per group moves with its group
            g = x.reshape(b, 2, -1)
            y = ((g - g.mean(-1, keepdim=True)) * self.per_group).reshape(b, c, h, w)
        else:  # one weight for every group's positions: one permutation inside all groups
            y = (x.view(b, 2, -1) * self.shared).view(b, c, h, w)
        return self.c2(torch.relu(y))


@pytest.mark.parametrize("how", ["flat", "evonorm_flat", "evonorm_5d", "per_group", "shared"])
def test_a_group_norm_written_out_permutes_inside_each_group(how):
    # (N, C, H, W) viewed as (N, G, C / G * H * W): each channel a neuron of H * W positions
    # in its group's chunk, each group's permuting on its own and the groups moving as blocks
    # (as nn.GroupNorm's); before, the two chunks were tied: one permutation for both groups
    spec, report = trace_with_report(model_(lambda: WrittenOutNorm(how)), x_(2, 3, 9, 9))
    assert report.verification.ok and not report.broken
    if how == "shared":  # the groups still swap whole
        assert spec.spaces["c1"].size == 4 and spec["shared"].axes == ("c1", None)
        assert [b.count for b in spec.blocks.values()] == [2]
    else:
        assert spec.spaces["c1"].size == 8 and spec.block_shape("c1") == (2, 4)
    if how == "per_group":
        assert spec["per_group"].axes == (None, "c1.head", None)
    assert_equivariant(nfc.NFLinear(spec, 1, 2).double(), spec, trials=2)
