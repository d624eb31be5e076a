"""nfncompile.frontend.rules.pooling: pooling, resampling and padding keep the channels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nfncompile as nfc
from nfncompile.frontend.tracing import trace_with_report
from nfncompile.testing import assert_equivariant
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


class OptionA(nn.Module):
    """A CIFAR ResNet's "option A" shortcut: the stream widened by zero channels on each side."""

    def __init__(self, pad_module: bool) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.pad = nn.ConstantPad3d((0, 0, 0, 0, 2, 2), 0.0) if pad_module else None
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        h = torch.relu(self.c1(x))
        short = h[:, :, ::2, ::2]
        short = self.pad(short) if self.pad else F.pad(short, (0, 0, 0, 0, 2, 2))
        return self.fc(torch.relu(self.c2(h) + short).mean((2, 3)))


@pytest.mark.parametrize("pad_module", [False, True])
def test_zero_channels_padded_on_are_free_neurons(pad_module):
    spec, report = trace_with_report(model_(lambda: OptionA(pad_module)), x_(2, 3, 6, 6))
    row = spec["c2.weight"].axes[0]
    # two spaces of two padded channels each, around the shortcut's c1 channels
    assert len(row) == 3 and row[1] == "c1"
    assert [spec.spaces[n].size for n in (row[0], row[2])] == [2, 2]
    assert spec["fc.weight"].axes == ("out", row)
    assert not report.broken and report.verification.ok
    layer = nfc.NFLinear(spec, 1, 1, basis="linear").double()
    assert_equivariant(layer, spec, in_channels=1, trials=2)


class _Spectral(nn.Module):
    """A Fourier neural operator's layer: the lowest ``modes`` frequencies of each input
    channel mixed into the output channels by complex weights."""

    def __init__(self, cin: int, cout: int, modes: int) -> None:
        super().__init__()
        self.modes = modes
        self.w = nn.Parameter(torch.randn(cin, cout, modes, modes, dtype=torch.cfloat) / cin)

    def forward(self, x):
        m = self.modes
        ft = torch.fft.rfft2(x)
        out = torch.zeros(
            x.shape[0], self.w.shape[1], x.size(-2), x.size(-1) // 2 + 1, dtype=ft.dtype
        )
        out[:, :, :m, :m] = torch.einsum("bixy,ioxy->boxy", ft[:, :, :m, :m], self.w)
        return torch.fft.irfft2(out, s=(x.size(-2), x.size(-1)))


class FNO(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lift, self.spec = nn.Conv2d(3, 8, 1), _Spectral(8, 8, 3)
        self.skip, self.proj = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 1, 1)

    def forward(self, x):
        h = self.lift(x)
        return self.proj(torch.relu(self.spec(h) + self.skip(h)))


def test_a_fourier_layer_keeps_its_channels_and_its_complex_weights_are_checked():
    # rfft2/irfft2 were probed and fixed every channel; the check's float64 copy made the
    # complex weight real (Module.to) and its perturbation compared complex numbers: it raised
    spec, report = trace_with_report(model_(FNO), x_(2, 3, 8, 8))
    assert spec["spec.w"].axes == ("lift", "skip", None, None)
    assert spec["skip.weight"].axes[:2] == ("skip", "lift")
    assert report.verification.ok and report.verification.dtype == "float64"
    assert not report.probes


_SEQUENCE_POOLS = {
    "avg": lambda h: F.avg_pool2d(h, (2, 1), stride=(2, 1), ceil_mode=True),
    "max": lambda h: F.max_pool2d(h, (2, 1)),
    "lp": lambda h: F.lp_pool2d(h, 2.0, (2, 1)),
    "module": nn.AvgPool2d((2, 1)),
    "adaptive": lambda h: F.adaptive_avg_pool2d(h, (2, 16)),
    "resample": lambda h: F.interpolate(h, scale_factor=(2.0, 1.0), mode="bilinear"),
    "window": lambda h: F.avg_pool2d(h, (2, 3), stride=(2, 1), padding=(0, 1)),
}


class SequencePool(nn.Module):
    """Funnel's pooling of a ``(B, T, D)`` stream viewed ``(B, 1, T, D)`` over ``T`` only: the
    features' dim is the identity (a window of 1, or a size kept) but for ``window``."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.a, self.b, self.pool = nn.Linear(4, 16), nn.Linear(16, 3), _SEQUENCE_POOLS[how]

    def forward(self, x):
        return self.b(self.pool(torch.relu(self.a(x))[:, None])[:, 0])


@pytest.mark.parametrize("how", list(_SEQUENCE_POOLS))
def test_pooling_keeps_a_dim_it_is_the_identity_along(how):
    # before: every pooled dim was mixed, so the 16 features were fixed
    spec, report = trace_with_report(model_(lambda: SequencePool(how)), x_(2, 6, 4), channel_dim=-1)
    assert report.verification.ok
    pointwise = how != "window"
    assert (spec["a.weight"].axes[0] == spec["b.weight"].axes[1] == "a") is pointwise
    assert (spec["a.weight"].axes[0] is None) is not pointwise


class SegNet(nn.Module):
    """SegNet's decoder (Quicknat's too): a max pool's indices unpool a tensor of its
    channels; with ``how="other"`` another conv's output, which must then share its space."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.enc, self.other = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(3, 6, 1)
        self.pool, self.unpool = nn.MaxPool2d(2, return_indices=True), nn.MaxUnpool2d(2)
        self.dec = nn.Conv2d(6, 4, 3, padding=1)

    def forward(self, x):
        h = torch.relu(self.enc(x))
        if self.how == "functional":
            p, i = F.max_pool2d(h, 2, return_indices=True)
            u = F.max_unpool2d(p * 2, i, 2, output_size=h.shape[-2:])
        elif self.how == "by_name":
            p, i = F.max_pool2d_with_indices(h, 2)
            u = F.max_unpool2d(p, i, 2)
        else:
            p, i = self.pool(h)
            if self.how == "other":
                p = F.avg_pool2d(self.other(x), 2)
            u = self.unpool(p, i, output_size=h.shape)
        return self.dec(u)


@pytest.mark.parametrize("how", ["module", "functional", "by_name", "other"])
def test_max_unpool_moves_each_channel_with_its_indices(how):
    # before: pooling that returned indices was unsupported and the unpool probed (declined:
    # a long tensor), so every channel they touched was fixed
    spec, report = trace_with_report(model_(lambda: SegNet(how)), x_(2, 3, 8, 8))
    assert report.verification.ok and not report.broken and not report.probes
    assert spec["dec.weight"].axes[1] == spec["enc.weight"].axes[0] == "enc"
    if how == "other":  # the values unpooled at enc's indices: one space with enc's
        assert spec["other.weight"].axes[0] == "enc"


class SpatialTransformer(nn.Module):
    """A spatial transformer network (Jaderberg et al.; PyTorch's tutorial): a localisation
    net predicts each sample's affine matrix, and the feature maps are resampled at the grid
    it gives."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.loc = nn.Sequential(nn.Flatten(), nn.Linear(4 * 8 * 8, 8), nn.ReLU(), nn.Linear(8, 6))
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        theta = self.loc(h).view(-1, 2, 3)
        grid = F.affine_grid(theta, list(h.size()), align_corners=False)
        return self.head(F.grid_sample(h, grid, align_corners=False).mean((2, 3)))


def test_a_spatial_transformer_resamples_each_channel():
    # affine_grid and grid_sample had no rule: probed; the channels pass through the
    # resampling, the matrix's six entries are read by position
    spec, report = trace_with_report(model_(SpatialTransformer), x_(2, 1, 8, 8))
    assert report.verification.ok and not report.probes
    assert spec["head.weight"].axes == ("out", "conv") and spec["loc.1.weight"].axes[0] == "loc.1"
    assert spec["loc.3.weight"].axes[0] is None
    layer = nfc.NFLinear(spec, 1, 1, basis="linear").double()
    assert_equivariant(layer, spec, in_channels=1, trials=2)


class PoolOverChannels(nn.Module):
    """spikingjelly's MA-SNN attention: a 3-D pool to one position over (C, H, W), the
    channels too; and a 1-D pool over a Linear's features, functional and with a window."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)
        self.avg, self.max = nn.AdaptiveAvgPool3d(1), nn.AdaptiveMaxPool3d(1)

    def forward(self, x):
        h = torch.relu(self.conv1(x))  # (N, 8, H, W)
        if self.how == "modules":
            h5 = h.unsqueeze(1)  # (N, 1, 8, H, W): the pool's channel dim is the 1
            s = torch.sigmoid(self.avg(h5) + self.max(h5)).view(-1, 1, 1, 1)
        else:
            f = h.mean((2, 3)).unsqueeze(1)  # (N, 1, 8)
            s = torch.sigmoid(F.avg_pool1d(f, 8) + F.adaptive_max_pool1d(f, 1)).view(-1, 1, 1, 1)
        return self.conv2(h * s)


@pytest.mark.parametrize("how", ["modules", "functions"])
def test_a_pool_to_one_position_over_a_neuron_axis_leaves_it_free(how):
    # before: "pooling/resampling mixes spatial positions" fixed conv1's 8 channels
    spec, report = trace_with_report(model_(lambda: PoolOverChannels(how)), x_(2, 3, 5, 5))
    assert spec.spaces["conv1"].size == 8 and not report.broken
    assert report.verification.ok


def test_a_pool_over_part_of_a_neuron_axis_still_fixes_it():
    class Partial(PoolOverChannels):
        def forward(self, x):
            h = torch.relu(self.conv1(x)).mean((2, 3)).unsqueeze(1)  # (N, 1, 8)
            return F.avg_pool1d(h, 2).squeeze(1)  # pairs of channels

    spec, report = trace_with_report(model_(lambda: Partial("")), x_(2, 3, 5, 5))
    assert "conv1" not in spec.spaces and report.verification.ok
