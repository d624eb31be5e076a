"""nfncompile.frontend.rules.reorder: channel shuffles read as one reordering of positions.

ShuffleNet's units split their channels, pass one half through, and shuffle the concatenation:
each layer then reads several runs interleaved position by position. Every test traces with
verification on (the derived group checked against the model's function) and checks the
spaces the shuffle leaves free, which the op-by-op reading fixed or tied.
"""

from __future__ import annotations

import einops
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nfncompile as nfc
from nfncompile.frontend.analysis import SymmetryAnalysis
from nfncompile.frontend.fx import trace_module
from nfncompile.frontend.graph import _analysed, _order, build_symmetry_graph
from nfncompile.frontend.tracing import trace_with_report
from nfncompile.testing import assert_equivariant
from tests.frontend.helpers import model_, x_


def _torchvision(x: torch.Tensor, g: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, g, c // g, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


def _permute(x: torch.Tensor, g: int) -> torch.Tensor:  # kuangliu's pytorch-cifar
    n, c, h, w = x.shape
    return x.view(n, g, c // g, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


def _flatten(x: torch.Tensor, g: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return torch.flatten(torch.transpose(x.reshape(n, g, c // g, h, w), 1, 2), 1, 2)


SHUFFLES = {
    "torchvision": _torchvision,
    "permute": _permute,
    "flatten": _flatten,
    "function": lambda x, g: F.channel_shuffle(x, g),
    "module": lambda x, g: nn.ChannelShuffle(g)(x),
    "einops": lambda x, g: einops.rearrange(x, "b (g c) h w -> b (c g) h w", g=g),
}


class _Units(nn.Module):
    """A stem and two ShuffleNetV2 units (split, one half through a conv, concatenate,
    shuffle), then a head reading every channel."""

    def __init__(self, how: str = "torchvision") -> None:
        super().__init__()
        self.shuffle = SHUFFLES[how]
        self.stem = nn.Conv2d(3, 8, 1)
        self.b1, self.b2 = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)
        self.head = nn.Linear(8, 2)

    def unit(self, x: torch.Tensor, conv: nn.Module) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        return self.shuffle(torch.cat([x1, torch.relu(conv(x2))], 1), 2)

    def forward(self, x):
        h = self.unit(self.unit(torch.relu(self.stem(x)), self.b1), self.b2)
        return self.head(h.mean((2, 3)))


@pytest.mark.parametrize("how", list(SHUFFLES))
def test_a_shuffle_keeps_every_run_and_reads_it_in_order(how):
    # stem S, unit 1 S[0:4] | B1; shuffled [S0 B1_0 S1 B1_1 | S2 B1_2 S3 B1_3]. b2 reads the
    # second half: S[2:4] and B1[2:4] interleaved, each a space of its own; the head reads
    # [S0 B2_0 B1_0 B2_1 S1 B2_2 B1_1 B2_3]. Before, the shuffle tied S's halves to B1's
    # blocks, fixed b2's bias and left 3 spaces of the 8 stem channels
    spec, report = trace_with_report(model_(lambda: _Units(how)), x_(2, 3, 5, 5))
    assert report.verification.ok and not report.broken
    assert spec["b2.weight"].axes[1] == ("stem/1", "b1/1")
    assert spec["b2.weight"].order == ((1, (0, 2, 1, 3)),)
    assert spec["head.weight"].axes[1] == ("stem/0", "b2", "b1/0")
    assert spec["head.weight"].order == ((1, (0, 2, 6, 3, 1, 4, 7, 5)),)
    sizes = {s.name: s.size for s in spec.spaces.values() if s.role == "hidden"}
    assert sizes == {"stem/0": 2, "stem/1": 2, "stem/2": 4, "b1/0": 2, "b1/1": 2, "b2": 4}


@pytest.mark.parametrize("mode", ["np", "hnp"])
@pytest.mark.parametrize("basis", ["complete", "linear"])
def test_layers_on_a_shuffled_spec_are_equivariant(mode, basis):
    spec, _ = trace_with_report(model_(_Units), x_(2, 3, 5, 5), mode=mode)
    layer = nfc.NFLinear(spec, 2, 2, mode=mode, basis=basis).double()
    assert_equivariant(layer, spec, in_channels=2, trials=2)
    pool = nfc.NFPool(spec, mode, in_channels=2).double()
    x = nfc.testing.random_features(spec, 2, 3, torch.Generator().manual_seed(1))
    perm = spec.sample_permutation(torch.Generator().manual_seed(2), mode=mode)
    torch.testing.assert_close(pool(perm.apply(x)), pool(x))


class _Added(nn.Module):
    """Two shuffled concatenations added: ``a`` meets ``c`` and ``b`` meets ``d`` neuron by
    neuron, interleaved."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c, self.d = (nn.Conv2d(3, 4, 1) for _ in range(4))
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        one = F.channel_shuffle(torch.cat([self.a(x), self.b(x)], 1), 2)
        two = F.channel_shuffle(torch.cat([self.c(x), self.d(x)], 1), 2)
        return self.head(torch.relu(one + two)).mean((2, 3))


def test_interleaved_runs_added_neuron_by_neuron_are_tied_whole():
    # the add ties a_i to c_i one neuron at a time: 8 ties of one neuron, joined into two
    # ties of 4 (before, each tie cut its runs: every channel a space of its own, fixed)
    spec, report = trace_with_report(model_(_Added), x_(2, 3, 4, 4))
    assert report.verification.ok and not report.broken
    assert spec["a.weight"].axes[0] == spec["c.weight"].axes[0] == "a"
    assert spec["b.weight"].axes[0] == spec["d.weight"].axes[0] == "b"
    assert spec["head.weight"].axes[1] == ("a", "b")
    assert spec.spaces["a"].size == spec.spaces["b"].size == 4


class _Spanning(nn.Module):
    """A depthwise conv with two outputs per channel (each neuron spans two channels), then a
    shuffle that puts the two channels of a neuron apart."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.dw = nn.Conv2d(4, 8, 3, padding=1, groups=4)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        h = F.channel_shuffle(self.dw(torch.relu(self.stem(x))), 2)
        return self.head(h).mean((2, 3))


def test_a_shuffle_that_splits_a_neurons_positions_keeps_the_larger_group():
    # read as one reordering, the shuffle puts each neuron's two channels apart, which no
    # label holds: the stem is fixed. Read op by op, the view ties the stem's halves: a space
    # of 2, the larger group, which stands
    gm = trace_module(model_(_Spanning), x_(2, 3, 5, 5))
    a = SymmetryAnalysis(gm, gm, reorder_chains=True)
    a.run(None, enable_io_processing=False)
    assert a.reordered
    assert any("inside a neuron's block of positions" in b.reason for b in a.broken)
    spec, report = trace_with_report(model_(_Spanning), x_(2, 3, 5, 5))
    assert report.verification.ok and not report.broken
    assert spec["stem.weight"].axes[0] == ("stem", "stem") and spec.spaces["stem"].size == 2


class _GroupedAfterShuffle(nn.Module):
    """A ShuffleNet (v1) unit: grouped 1x1 conv, shuffle, depthwise conv, grouped 1x1 conv,
    residual."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.conv1 = nn.Conv2d(8, 8, 1, groups=2)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.conv3 = nn.Conv2d(8, 8, 1, groups=2)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        out = _permute(torch.relu(self.conv1(h)), 2)
        out = self.conv3(torch.relu(self.conv2(out)))
        return self.head(torch.relu(out + h)).mean((2, 3))


def test_a_grouped_conv_after_a_shuffle_keeps_the_op_by_op_reading():
    # conv3's groups each read half of every conv1 group, interleaved: no block of it is one
    # space in the reordered reading, which then fixes more than reading the ops one by one
    model, x = model_(_GroupedAfterShuffle), x_(2, 3, 5, 5)
    gm = trace_module(model, x)
    chains, _, read = _analysed(gm, model, 1, stride_blocks=False, chains=True)
    ops, _, _ = _analysed(gm, model, 1, stride_blocks=False, chains=False)
    assert read and _order(ops) > _order(chains)
    assert _order(build_symmetry_graph(gm, model)) == _order(ops)
    spec, report = trace_with_report(model, x)
    assert report.verification.ok and not any(p.order for p in spec.params)


class _Rotated(nn.Module):
    """rotary's ``cat([-x2, x1])`` added to ``h`` and read by a layer: the halves are tied to
    each other, so the layer's columns read one space twice, in either order."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = self.a(x)
        r = torch.cat([-h[:, 2:], h[:, :2]], 1)
        return self.b(torch.tanh(h * 0.5 + r * 0.3)) + self.b(r)


def test_an_axis_whose_stored_label_cuts_no_finer_keeps_its_stored_order():
    # read in label order, b's columns would be [a, a] with order [2, 3, 0, 1]: the same
    # group and layer, at the cost of a reordering in every step
    spec, report = trace_with_report(model_(_Rotated), x_(5, 3))
    assert report.verification.ok
    assert spec["b.weight"].axes[1] == ("a", "a") and spec["b.weight"].order == ()
