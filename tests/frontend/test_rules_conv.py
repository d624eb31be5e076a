"""nfncompile.frontend.rules.conv: plain, grouped, depthwise and transposed convolutions.

Grouped convolutions give block spaces (one block permutation shared by their input and
output channels, an Inner label on the weight's input axis) when their input is one whole
space; otherwise they fall back to the conservative rule, and the report says why.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nfncompile as nfc
from nfncompile.errors import SpecError, SymmetryError
from nfncompile.frontend.tracing import trace_with_report
from nfncompile.spec import Inner, Permutation
from nfncompile.testing import assert_equivariant
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


def test_two_group_counts_on_one_space_fall_back_to_the_conservative_rule():
    # g (4 groups) and the GroupNorm (3 groups) both cut g's outputs: neither block
    # structure can hold, so both fall back, and the report says why
    spec, report = trace_with_report(model_(Grouped), x_(2, 3, 6, 6))
    # (the transposed conv t also cuts g's outputs in half, through dw and dw2)
    fell = {o.op: o.fell_back for o in report.ops if o.fell_back}
    assert "its output channels are not one whole space" in fell["Conv2d g"]
    assert "its channels are not one whole space" in fell["GroupNorm gn"]
    assert not spec.blocks
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


class Bottleneck(nn.Module):
    """1x1 conv, grouped 3x3 conv (``groups``), 1x1 conv, with ``before(x)`` feeding the
    grouped conv (a way to break its input's block structure)."""

    def __init__(self, width: int = 8, groups: int = 4, out: int | None = None) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, width, 1)
        self.g = nn.Conv2d(width, out or width, 3, padding=1, groups=groups)
        self.c3 = nn.Conv2d(out or width, 5, 1)

    def before(self, h: torch.Tensor) -> torch.Tensor:
        return h

    def forward(self, x):
        h = torch.relu(self.c1(x))
        return self.c3(torch.relu(self.g(self.before(h)))).mean((2, 3))


def test_a_grouped_conv_links_its_input_and_output_blocks():
    spec, report = trace_with_report(model_(Bottleneck), x_(2, 3, 5, 5))
    assert spaces_(spec) == [("in", 3, "input"), ("c1", 8, "hidden"), ("g", 8, "hidden"),
                             ("out", 5, "output")]  # fmt: skip
    assert [(b.name, b.count) for b in spec.blocks.values()] == [("g.groups", 4)]
    assert spec.spaces["c1"].blocks == spec.spaces["g"].blocks == "g.groups"
    assert spec.block_shape("c1") == (4, 2)
    assert spec["g.weight"].axes == ("g", Inner("c1", 0), None, None)
    assert spec["g.bias"].axes == ("g",)
    assert report.blocks["g.groups"].spaces == ["c1", "g"]
    assert "blocks g.groups: 4 x 2, shared with g" in str(report)
    assert report.verification.ok and not report.broken
    assert nfc.WeightSpaceSpec.from_yaml(spec.to_yaml()) == spec


def test_the_wreath_group_is_bigger_than_the_old_cut_group():
    # a permutation that swaps two whole blocks of c1 and g together is a symmetry; the
    # hand-written spec that forgets to share the block permutation is caught
    model = model_(Bottleneck)
    spec = nfc.trace(model, x_(2, 3, 5, 5))
    perm = {
        "c1": torch.tensor([2, 3, 0, 1, 4, 5, 6, 7]),
        "g": torch.tensor([2, 3, 0, 1, 4, 5, 6, 7]),
    }
    sd = Permutation(spec, perm).apply_state_dict(model.state_dict())
    x = x_(2, 3, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(torch.func.functional_call(model, sd, (x,)), model(x))
    # a hand spec that gives g a block permutation of its own (and so cannot label the
    # weight's in-group axis): moving c1's blocks alone changes the function
    d = spec.to_dict()
    d["blocks"]["g2"] = {"count": 4}
    d["spaces"]["g"]["blocks"] = "g2"
    d["params"]["g.weight"]["axes"][1] = None
    report = nfc.verify(model, nfc.WeightSpaceSpec.from_dict(d), x_(2, 3, 5, 5))
    assert not report.ok and "g.groups (blocks)" in report.failed
    assert report.blocks["g.groups"].params == ["c1.weight", "c1.bias"]
    with pytest.raises(
        SymmetryError, match=r"block permutation 'g\.groups' \(4 blocks\).* by [0-9.]+"
    ):
        report.raise_for_failure()


def test_a_block_structure_that_does_not_divide_the_space_is_a_spec_error():
    d = nfc.trace(model_(Bottleneck), x_(2, 3, 5, 5)).to_dict()
    d["blocks"]["g.groups"]["count"] = 3
    with pytest.raises(SpecError, match=r"spaces\.c1: size 8 is not a multiple of the 3"):
        nfc.WeightSpaceSpec.from_dict(d)


class ConcatInput(Bottleneck):
    """The grouped conv reads a concat of two spaces: no block structure can hold."""

    def __init__(self) -> None:
        super().__init__(width=8, groups=2)
        self.c1 = nn.Conv2d(3, 4, 1)
        self.c2 = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        h = torch.cat([torch.relu(self.c1(x)), torch.relu(self.c2(x))], 1)
        return self.c3(torch.relu(self.g(h))).mean((2, 3))


class SlicedOutput(Bottleneck):
    """A slice through the middle of g's second block: the blocks are not whole."""

    def forward(self, x):
        h = self.g(torch.relu(self.c1(x)))
        return (self.c3(torch.relu(h)) * h[:, :3].sum(1, keepdim=True)).mean((2, 3))


class SharedGrouped(Bottleneck):
    """The grouped conv applied twice: its weight's in-group axis serves two inputs."""

    def forward(self, x):
        h = torch.relu(self.c1(x))
        return self.c3(torch.relu(self.g(torch.relu(self.g(h))))).mean((2, 3))


@pytest.mark.parametrize(
    "cls, reason",
    [
        (ConcatInput, "its input channels are not one whole space but 2 pieces (of c1, c2)"),
        (SlicedOutput, "its output channels are not one whole space"),
        (SharedGrouped, "its weight's in-group axis is tied to other neurons"),
    ],
)
def test_a_grouped_conv_whose_blocks_cannot_hold_falls_back(cls, reason):
    spec, report = trace_with_report(model_(cls), x_(2, 3, 5, 5))
    ops = [o for o in report.ops if o.fell_back]
    assert ops and all(o.op == "Conv2d g" and o.status == "fell back" for o in ops)
    assert reason in ops[0].fell_back and "fell back: Conv2d g" in str(report)
    assert not spec.blocks and report.verification.ok
    assert not any(isinstance(a, Inner) for p in spec.params for a in p.axes)


def test_fallback_ties_the_input_groups_and_cuts_the_output_groups():
    spec, _ = trace_with_report(model_(ConcatInput), x_(2, 3, 5, 5))
    # the two input groups (c1 and c2) move together, each output group on its own
    assert spec["g.weight"].axes[1] == "c1" and spec["c2.weight"].axes[0] == "c1"
    assert [spec.spaces[p].size for p in spec["g.weight"].axes[0]] == [4, 4]


class OneChannelGroups(Bottleneck):
    """8 -> 4 channels in 4 groups: one output channel per group."""

    def __init__(self) -> None:
        super().__init__(width=8, groups=4, out=4)


class OneChannelGroupsCat(ConcatInput):
    def __init__(self) -> None:
        super().__init__()
        self.g = nn.Conv2d(8, 2, 3, padding=1, groups=2)
        self.c3 = nn.Conv2d(2, 5, 1)


def test_one_channel_per_group_is_a_block_space_or_fixed_never_size_one_spaces():
    spec, report = trace_with_report(model_(OneChannelGroups), x_(2, 3, 5, 5))
    assert spec.block_shape("g") == (4, 1) and spec.block_shape("c1") == (4, 2)
    spec, report = trace_with_report(model_(OneChannelGroupsCat), x_(2, 3, 5, 5))
    assert spec["g.weight"].axes[0] is None  # each output channel alone in its group: fixed
    assert all(s.size > 1 for s in spec.spaces.values() if s.role == "hidden")
    assert "each output channel is alone in its group" in report.broken[0].reason


class FunctionalGrouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 1)
        self.w = nn.Parameter(torch.randn(4, 3, 3, 3) * 0.3)
        self.b = nn.Parameter(torch.randn(4))
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        h = F.conv2d(torch.relu(self.c1(x)), self.w, self.b, padding=1, groups=2)
        return self.fc(h.mean((2, 3)))


def test_a_functional_grouped_conv_with_a_parameter_weight_links_blocks():
    spec, report = trace_with_report(model_(FunctionalGrouped), x_(2, 3, 5, 5))
    out = spec["w"].axes[0]
    assert spec["w"].axes == (out, Inner("c1", 0), None, None) and spec["b"].axes == (out,)
    assert spec.block_shape("c1") == (2, 3) and spec.block_shape(out) == (2, 2)
    assert report.verification.ok and not report.broken


class TransposedGrouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 1)
        self.t = nn.ConvTranspose2d(6, 4, 2, stride=2, groups=2)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.t(torch.relu(self.c1(x))).mean((2, 3)))


def test_a_grouped_transposed_conv_mirrors_the_inner_label():
    spec, report = trace_with_report(model_(TransposedGrouped), x_(2, 3, 4, 4))
    # weight (in, out / groups, kh, kw): the second axis is inside the output blocks
    assert spec["t.weight"].axes == ("c1", Inner("t", 0), None, None)
    assert spec.spaces["c1"].blocks == spec.spaces["t"].blocks
    assert spec.block_shape("c1") == (2, 3) and spec.block_shape("t") == (2, 2)
    assert report.verification.ok


class WithGroupNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.gn = nn.GroupNorm(4, 8)
        self.inorm = nn.GroupNorm(8, 8)  # one channel per group: no constraint
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.inorm(self.gn(self.c1(x))).mean((2, 3)))


def test_group_norm_gives_a_block_space():
    spec, report = trace_with_report(model_(WithGroupNorm), x_(2, 3, 5, 5))
    assert spaces_(spec) == [("in", 3, "input"), ("c1", 8, "hidden"), ("out", 2, "output")]
    assert [(b.name, b.count) for b in spec.blocks.values()] == [("gn.groups", 4)]
    assert spec["gn.weight"].axes == ("c1",) and spec.block_shape("c1") == (4, 2)
    assert report.verification.ok and not report.broken


def test_depthwise_conv_of_fixed_channels_fixes_its_outputs_instead_of_one_neuron_spaces():
    class Fixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.dw = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 6, 3, padding=1, groups=6)
            self.fc = nn.Linear(6, 2)

        def forward(self, x):
            h = torch.roll(self.c1(x), 1, dims=1)  # positional: c1 is fixed
            return self.fc(self.dw(h).mean((2, 3)))

    spec, report = trace_with_report(model_(Fixed), x_(2, 3, 5, 5))
    assert spaces_(spec) == [("in", 3, "input"), ("out", 2, "output")]
    assert spec["dw.weight"].axes == (None, None, None, None)
    assert [b.reason for b in report.broken][-1].startswith("depthwise conv of fixed channels")


class ECA(nn.Module):
    """Efficient channel attention: a Conv1d slides along the channel axis."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv = nn.Conv1d(1, 1, 3, padding=1, bias=False)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        h = self.c1(x)
        y = self.conv(h.mean((2, 3)).view(h.shape[0], 1, -1))
        y = torch.sigmoid(y).view(h.shape[0], -1, 1, 1)
        return self.fc((h * y).mean((2, 3)))


def test_a_conv_along_the_channel_axis_stays_fixed_and_reported():
    spec, report = trace_with_report(model_(ECA), x_(2, 3, 5, 5))
    assert spaces_(spec) == [("in", 3, "input"), ("out", 2, "output")]
    assert spec["c1.weight"].axes == (None, "in", None, None)
    (b,) = [b for b in report.broken if b.op == "Conv1d conv"]
    assert b.reason == "convolution mixes spatial positions" and b.neurons == ["c1"]
    assert report.verification.ok


class TokenMixer(nn.Module):
    """An MLP-Mixer's token mixing written as a kernel-1 Conv1d whose channels are the tokens
    and whose length is the features (Swin-MLP's spatial MLP does this per head)."""

    def __init__(self, functional: bool) -> None:
        super().__init__()
        self.functional = functional
        self.a, self.mix, self.b = nn.Linear(4, 6), nn.Conv1d(5, 5, 1), nn.Linear(6, 2)

    def forward(self, x):  # (batch, features, tokens)
        h = torch.relu(self.a(x.transpose(1, 2)))  # (batch, tokens, 6)
        if self.functional:
            h = torch.nn.functional.conv1d(h, self.mix.weight, self.mix.bias, 1, 0)
        else:
            h = self.mix(h)
        return self.b(torch.relu(h)).mean(1)


@pytest.mark.parametrize("functional", [False, True])
def test_a_kernel_one_conv_acts_position_by_position_along_its_length(functional):
    # the length (a's six features) was fixed: "convolution mixes spatial positions"
    spec, report = trace_with_report(model_(lambda: TokenMixer(functional)), x_(2, 4, 5))
    assert spec["a.weight"].axes == ("a", "in") and spec["b.weight"].axes == ("out", "a")
    assert spec["mix.weight"].axes == ("mix", None, None)  # the input tokens are positions
    assert all(n.startswith("mix.") for b in report.broken for n in b.neurons)
    assert report.verification.ok


class _SoftSplit(nn.Module):
    """TNT's and T2T-ViT's soft split: hidden feature maps unfolded into patches of
    ``2 x 2`` (``C * 4`` features each) read by a Linear; or unfolded and folded back."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.c1, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 1)
        self.fc, self.out = nn.Linear(16, 5), nn.Linear(5, 2)

    def forward(self, x):
        h = self.c1(x).relu()
        if self.how == "fold":
            patches = F.unfold(h, 2, stride=2)
            return self.c2(nn.Fold((8, 8), 2, stride=2)(patches)).mean((2, 3))
        t = nn.Unfold(2, stride=2)(h) if self.how == "module" else F.unfold(h, 2, stride=2)
        return self.out(self.fc(t.transpose(1, 2)).relu().mean(1))


@pytest.mark.parametrize("how", ["module", "function", "fold"])
def test_unfold_makes_each_channel_a_block_of_kernel_positions(how):
    # no rule: probed, not equivariant, every channel reaching it was fixed
    spec, report = trace_with_report(model_(lambda: _SoftSplit(how)), x_(1, 3, 8, 8))
    assert spec["c1.weight"].axes[0] == "c1" and report.verification.ok
    assert not report.probes and not report.broken
    if how != "fold":  # the Linear's 16 inputs: 4 channels of 4 kernel positions each
        assert spec["fc.weight"].axes[1:] == ("c1", None)


class _Upsampler1d(nn.Module):
    """HiFi-GAN's upsampler: a weight-normed ConvTranspose1d (traced through, so a functional
    ``conv_transpose1d`` with every argument given), and a grouped functional one."""

    def __init__(self, grouped: bool) -> None:
        super().__init__()
        self.grouped = grouped
        self.a = nn.Conv1d(3, 4, 3, padding=1)
        self.up = torch.nn.utils.parametrizations.weight_norm(nn.ConvTranspose1d(4, 4, 4, 2, 1))
        self.w = nn.Parameter(torch.randn(4, 2, 3))  # groups 2: (in, out / groups, taps)
        self.b = nn.Conv1d(4, 2, 1)

    def forward(self, x):
        h = torch.relu(self.up(torch.relu(self.a(x))))
        if self.grouped:  # (input, weight, bias, stride, padding, output_padding, groups, dilation)
            h = F.conv_transpose1d(h, self.w, None, 1, 1, 0, 2, 1)
        return self.b(h)


@pytest.mark.parametrize("grouped", [False, True])
def test_a_functional_transposed_conv_reads_its_groups(grouped):
    # its groups were read from the dilation's place: a tuple (TypeError), or 1 for a grouped
    # call given its dilation
    spec, report = trace_with_report(model_(lambda: _Upsampler1d(grouped)), x_(1, 3, 8))
    assert report.verification.ok and spec["a.weight"].axes[0] == "a"
    layer = nfc.NFLinear(spec, 1, 1, basis="linear").double()
    assert_equivariant(layer, spec, in_channels=1, trials=2)


class _SpectralNormed(nn.Module):
    """HiFi-GAN's DiscriminatorS with spectral norm: sigma = u . (W v), W flattened."""

    def __init__(self, new: bool) -> None:
        super().__init__()
        norm = (
            torch.nn.utils.parametrizations.spectral_norm if new else torch.nn.utils.spectral_norm
        )
        self.a, self.b = norm(nn.Conv1d(2, 6, 3)), norm(nn.Conv1d(6, 6, 3))
        self.c = nn.Conv1d(6, 1, 3)

    def forward(self, x):
        return self.c(F.leaky_relu(self.b(F.leaky_relu(self.a(x), 0.1)), 0.1))


@pytest.mark.parametrize("new", [False, True])
def test_spectral_norm_keeps_the_channels(new):
    # torch.mv / torch.dot had no rule: probed, not equivariant, every channel fixed
    spec, report = trace_with_report(model_(lambda: _SpectralNormed(new)), x_(1, 2, 16))
    hidden = [s.name for s in spec.spaces.values() if s.role == "hidden"]
    assert len(hidden) == 2 and report.verification.ok and not report.probes


def test_layer_widths_given_as_numpy_integers():
    # MONAI's SPADE decoder builds nn.Linear(z, np.prod(shape) * c), which torch takes; the
    # width read off the module reached the spec as np.int64 and was refused ("size must be
    # a positive int, got np.int64(16)"), as a group count read so would be
    import numpy as np

    model = nn.Sequential(
        nn.Conv2d(3, np.int64(8), 3),
        nn.ReLU(),
        nn.Conv2d(np.int64(8), np.int64(8), 3, groups=np.int64(2)),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32, np.int64(6)),
        nn.ReLU(),
        nn.Linear(6, 2),
    )
    spec, report = trace_with_report(model, torch.randn(2, 3, 6, 6))
    assert report.verification.ok
    assert [s.size for s in spec.spaces.values()] == [3, 8, 8, 6, 2]
    assert all(type(s.size) is int for s in spec.spaces.values())
    assert [type(b.count) for b in spec.blocks.values()] == [int]
    assert spec == nfc.WeightSpaceSpec.from_yaml(spec.to_yaml())


class CIN(nn.Module):
    """xDeepFM's compressed interaction: the outer product of hidden channels with the fields,
    flattened and read by a Conv1d."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0, self.conv1 = nn.Conv1d(9, 4, 1), nn.Conv1d(12, 2, 1)

    def forward(self, x0):  # (B, 3 fields, D)
        z = torch.einsum("bhd,bmd->bhmd", x0, x0).reshape(x0.shape[0], 9, -1)
        h = torch.relu(self.conv0(z))  # (B, 4, D)
        z = torch.einsum("bhd,bmd->bhmd", h, x0).reshape(x0.shape[0], 12, -1)
        return self.conv1(z).sum(-1)


def test_a_conv_over_a_flattened_product_keeps_its_largest_factor():
    # before: conv0's channels were fixed with the fields they were flattened with
    spec, report = trace_with_report(model_(CIN), x_(2, 3, 5), channel_dim=1)
    assert spec.spaces["conv0"].size == 4 and spec.spaces["conv0"].role == "hidden"
    assert report.verification.ok
    assert_equivariant(nfc.NFLinear(spec, 1, 2).double(), spec, trials=2)
