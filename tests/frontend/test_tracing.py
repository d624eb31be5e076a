"""The compiler front end: trace -> symmetry graph -> spaces -> verified spec."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nfncompile as nfc
from nfncompile.architectures.catalogue import CATALOGUE
from nfncompile.errors import SymmetryError, TraceError
from nfncompile.frontend import FUNCTION_RULES, build_symmetry_graph
from nfncompile.frontend.drawing import draw_symmetry_graph
from nfncompile.frontend.fx import trace_module
from nfncompile.frontend.tracing import trace_with_report
from nfncompile.spec import is_counter


def _x(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _model(factory, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return factory()


def _spaces(spec) -> list:
    return [(s.name, s.size, s.role) for s in spec.spaces.values()]


def _float_keys(model: nn.Module) -> list:
    return [k for k, v in model.state_dict().items() if not is_counter(v)]


# --------------------------------------------------------------------------------------------
# the catalogue, against hand derivations
# --------------------------------------------------------------------------------------------


def _resnet_spaces(n: int, width: int, in_ch: int = 3, classes: int = 10) -> list:
    # CIFAR ResNet, 3 stages of n BasicBlocks. Every block's conv1 output is its own hidden
    # space. Stage 1 keeps its width and stride, so its residual stream is the stem's output
    # (conv1); stages 2 and 3 open with a 1x1-conv shortcut whose output is added to the first
    # block's conv2 output: that add starts a new stream, named after layerK.0.conv2 (created
    # first). Every later block's conv2 is added into the stream (no new space).
    out = [("in", in_ch, "input"), ("conv1", width, "hidden")]
    for stage, mult in ((1, 1), (2, 2), (3, 4)):
        for i in range(n):
            out.append((f"layer{stage}.{i}.conv1", width * mult, "hidden"))
            if stage > 1 and i == 0:
                out.append((f"layer{stage}.0.conv2", width * mult, "hidden"))
    return [*out, ("out", classes, "output")]


EXPECTED = {
    # fc1..fc3 of a 16-32-32-10 MLP: one hidden space per hidden layer
    "mlp": [("in", 16, "input"), ("fc1", 32, "hidden"), ("fc2", 32, "hidden"),
            ("out", 10, "output")],
    # 2-32-32-32-1 SIREN: sin(w0 * x) is elementwise, so the three sine layers give 3 spaces
    "siren": [("in", 2, "input"), ("hidden.0", 32, "hidden"), ("hidden.1", 32, "hidden"),
              ("hidden.2", 32, "hidden"), ("out", 1, "output")],
    # conv1 (6) and conv2 (16) outputs; max-pools keep channels; the flatten over 2x2
    # positions keeps conv2's space (fc1 reads it through a view); fc1 (32); fc2 is the output
    "lenet": [("in", 1, "input"), ("conv1", 6, "hidden"), ("conv2", 16, "hidden"),
              ("fc1", 32, "hidden"), ("out", 10, "output")],
    # three 16-channel convs, global mean keeps conv3's space for fc
    "small_cnn": [("in", 1, "input"), ("conv1", 16, "hidden"), ("conv2", 16, "hidden"),
                  ("conv3", 16, "hidden"), ("out", 10, "output")],
    "resnet8": _resnet_spaces(1, 8),
    "resnet20": _resnet_spaces(3, 16),
    # stem (8) flows through the three concats unchanged; each dense layer's conv adds a
    # 4-channel space; the 1x1 transition has its own 8; fc is the output
    "densenet_block": [("in", 3, "input"), ("stem", 8, "hidden"), ("block.0.conv", 4, "hidden"),
                       ("block.1.conv", 4, "hidden"), ("block.2.conv", 4, "hidden"),
                       ("transition", 8, "hidden"), ("out", 10, "output")],
    # the project conv is added back onto the stem's output (one space, 8); expand (32) is
    # tied to the depthwise conv's output (same neurons); fc is the output
    "mobilenetv2_block": [("in", 3, "input"), ("stem", 8, "hidden"),
                          ("block.expand", 32, "hidden"), ("out", 10, "output")],
    # the gate x * sigmoid(up(...)) ties se.up's outputs to the stem's channels; se.down (2)
    # is the bottleneck
    "se_block": [("in", 3, "input"), ("stem", 8, "hidden"), ("se.down", 2, "hidden"),
                 ("out", 10, "output")],
    # every conv and transposed conv creates a space; the concat skips only compose them
    "unet": [("in", 1, "input"), ("down1.conv1", 8, "hidden"), ("down1.conv2", 8, "hidden"),
             ("down2.conv1", 16, "hidden"), ("down2.conv2", 16, "hidden"),
             ("bottleneck.conv1", 32, "hidden"), ("bottleneck.conv2", 32, "hidden"),
             ("up2", 16, "hidden"), ("dec2.conv1", 16, "hidden"), ("dec2.conv2", 16, "hidden"),
             ("up1", 8, "hidden"), ("dec1.conv1", 8, "hidden"), ("dec1.conv2", 8, "hidden"),
             ("out", 1, "output")],
    # two convs, flatten over 2x2 positions into fc1 (view), fc2 output
    "vgg": [("in", 3, "input"), ("features.conv1", 8, "hidden"), ("features.conv2", 16, "hidden"),
            ("classifier.fc1", 32, "hidden"), ("out", 10, "output")],
}  # fmt: skip


def test_every_catalogue_entry_has_a_hand_derivation():
    assert sorted(EXPECTED) == sorted(CATALOGUE)


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_catalogue_traces_and_verifies(name):
    arch = CATALOGUE[name]
    model = _model(arch.factory)
    spec, report = trace_with_report(model, _x(*arch.input_shape))
    assert _spaces(spec) == EXPECTED[name]
    assert report.verification.ok
    assert not report.broken
    assert list(spec.names) == _float_keys(model)
    assert nfc.WeightSpaceSpec.from_yaml(spec.to_yaml()) == spec


def test_catalogue_axes_details():
    # lenet: fc1 reads 16 channels x 4 positions
    spec = nfc.trace(_model(CATALOGUE["lenet"].factory), _x(2, 1, 8, 8))
    fc1 = spec["fc1.weight"]
    assert (fc1.shape, fc1.view, fc1.axes) == ((32, 64), (32, 16, 4), ("fc1", "conv2", None))
    # resnet: BatchNorm statistics are labelled by their channels; counters are skipped
    spec = nfc.trace(_model(CATALOGUE["resnet8"].factory), _x(2, 3, 8, 8))
    assert spec["layer2.0.bn1.running_var"].axes == ("layer2.0.conv1",)
    assert spec["layer2.0.downsample.1.running_mean"].axes == ("layer2.0.conv2",)
    assert spec["layer2.0.downsample.0.weight"].axes == ("layer2.0.conv2", "conv1", None, None)
    assert not any(n.endswith("num_batches_tracked") for n in spec.names)
    # densenet: the transition reads the concatenation of the stem and the three layers
    spec = nfc.trace(_model(CATALOGUE["densenet_block"].factory), _x(2, 3, 8, 8))
    cat = ("stem", "block.0.conv", "block.1.conv", "block.2.conv")
    assert spec["transition.weight"].axes == ("transition", cat, None, None)
    assert spec["bn.running_mean"].axes == (cat,)
    # mobilenet: the depthwise conv's output neurons are its input neurons
    spec = nfc.trace(_model(CATALOGUE["mobilenetv2_block"].factory), _x(2, 3, 8, 8))
    assert spec["block.depthwise.weight"].axes == ("block.expand", None, None, None)
    assert spec["block.project.weight"].axes == ("stem", "block.expand", None, None)
    # unet: the decoder reads [up2, down2.conv2] after the concat skip
    spec = nfc.trace(_model(CATALOGUE["unet"].factory), _x(2, 1, 8, 8))
    assert spec["dec2.conv1.weight"].axes == ("dec2.conv1", ("up2", "down2.conv2"), None, None)
    assert spec["up2.weight"].axes == ("bottleneck.conv2", "up2", None, None)


# --------------------------------------------------------------------------------------------
# local models: each op family
# --------------------------------------------------------------------------------------------


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
    spec, report = trace_with_report(_model(Grouped), _x(2, 3, 6, 6))
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
    spec, report = trace_with_report(_model(lambda: model), _x(2, 2, 5, 5))
    assert _spaces(spec) == [("in", 2, "input"), ("0", 3, "hidden"), ("out", 4, "output")]
    assert spec["2.weight"].view == (3, 4, 1, 3, 3) and spec["2.weight"].axes[:2] == ("0", None)
    assert spec["2.bias"].view == (3, 4) and spec["2.bias"].axes == ("0", None)
    assert spec["4.weight"].view == (4, 3, 4, 1, 1)
    assert spec["4.weight"].axes == ("out", "0", None, None, None)
    assert report.verification.ok


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
    spec, report = trace_with_report(_model(LayerScale), _x(2, 3, 8, 8))
    assert _spaces(spec) == [("in", 3, "input"), ("stem", 8, "hidden"), ("pw1", 32, "hidden"),
                             ("out", 4, "output")]  # fmt: skip
    assert spec["gamma"].axes == ("stem",)
    assert spec["beta"].axes == ("stem", None, None)
    assert spec["ln.weight"].axes == ("stem",)
    assert spec["dw.weight"].axes == ("stem", None, None, None)
    assert report.verification.ok


class CatSplit(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(4, 5)
        self.c, self.d = nn.Linear(11, 7), nn.Linear(3, 2)

    def forward(self, x):
        h = torch.cat([torch.relu(self.a(x)), torch.tanh(self.b(x))], dim=1)
        p, q = self.c(h).split([3, 4], dim=1)
        r, t = torch.chunk(q, 2, dim=1)
        return self.d(p) + r * t.sum(1, keepdim=True)


def test_cat_split_chunk_give_composite_axes():
    spec, report = trace_with_report(_model(CatSplit), _x(3, 4))
    # c's 7 outputs: [0:3] feed d, [3:5] are added to d's output, [5:7] are summed
    assert spec["c.weight"].axes == (("c/0", "out", "c/1"), ("a", "b"))
    assert [spec.spaces[n].size for n in ("a", "b", "c/0", "c/1", "out")] == [6, 5, 3, 2, 2]
    assert spec["d.weight"].axes == ("out", "c/0")
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
    spec, report = trace_with_report(_model(Functional), _x(2, 3, 5, 5))
    assert len(spec.spaces) == 3  # in, the conv's 6 channels, out
    hidden = next(s.name for s in spec.spaces.values() if s.role == "hidden")
    assert spec["w1"].axes == (hidden, "in", None, None)
    for k in ("b1", "g", "mean", "var", "ln_w"):
        assert spec[k].axes == (hidden,)
    assert spec["fc"].axes == ("out", hidden)
    assert report.verification.ok


class Tied(nn.Module):
    """The same Linear applied twice: its input and output neurons are one space."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.shared, self.out = nn.Linear(3, 5), nn.Linear(5, 5), nn.Linear(5, 2)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        return self.out(self.shared(torch.tanh(self.shared(h))))


def test_module_called_twice_ties_its_spaces():
    spec = nfc.trace(_model(Tied), _x(4, 3))
    assert spec["shared.weight"].axes == ("inp", "inp")
    assert _spaces(spec) == [("in", 3, "input"), ("inp", 5, "hidden"), ("out", 2, "output")]


# --------------------------------------------------------------------------------------------
# broken symmetry
# --------------------------------------------------------------------------------------------


class FirstChannelSpecial(nn.Module):
    """Uses h[:, 0] specially: that neuron is fixed, the other 5 still permute."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h) + h[:, 0].unsqueeze(1)


class BroadcastFirst(FirstChannelSpecial):
    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h + h[:, :1] * 2)


class Arange(FirstChannelSpecial):
    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h * torch.arange(6, dtype=h.dtype))


class Roll(FirstChannelSpecial):
    def forward(self, x):
        return self.b(torch.roll(torch.relu(self.a(x)), 1, dims=1))


@pytest.mark.parametrize("cls", [FirstChannelSpecial, BroadcastFirst])
def test_position_dependent_indexing_fixes_one_neuron(cls):
    spec, report = trace_with_report(_model(cls), _x(5, 4))
    # neuron 0 of a's output is fixed (an int piece), the other 5 form a space
    assert spec["a.weight"].axes == ((1, "a"), "in")
    assert spec.spaces["a"].size == 5
    assert [b.neurons for b in report.broken] == [["a[0:1]"]]
    assert report.verification.ok
    # the hand-written spec that ignores the special neuron is caught by verify
    wrong = nfc.WeightSpaceSpec.from_dict(_relabel(spec.to_dict(), (1, "a"), "a6", 6))
    bad = nfc.verify(_model(cls), wrong, _x(5, 4))
    assert not bad.ok and "a6" in bad.failed


def _relabel(d: dict, old, new: str, size: int) -> dict:
    d["spaces"] = {k: v for k, v in d["spaces"].items() if k != "a"}
    d["spaces"][new] = {"size": size, "role": "hidden"}
    old = list(old) if isinstance(old, tuple) else old
    for p in d["params"].values():
        p["axes"] = [new if a == old else a for a in p["axes"]]
    return d


@pytest.mark.parametrize("cls, op", [(Arange, "operator.mul"), (Roll, "torch.roll")])
def test_channel_position_dependent_ops_fix_the_channels(cls, op):
    spec, report = trace_with_report(_model(cls), _x(5, 4))
    assert spec["a.weight"].axes == (None, "in")
    assert spec["b.weight"].axes == ("out", None)
    assert [s.name for s in spec.spaces.values()] == ["in", "out"]
    assert len(report.broken) == 1 and report.broken[0].op.startswith(op)
    assert report.broken[0].count == 6
    assert report.verification.ok
    assert op in str(report)


def channel_mixer(x):  # traced as one call: no rule knows it
    return x.flip(1) + x


torch.fx.wrap("channel_mixer")


class Unknown(FirstChannelSpecial):
    def forward(self, x):
        return self.b(channel_mixer(torch.relu(self.a(x))))


def test_unknown_function_fixes_its_inputs_and_is_reported():
    spec, report = trace_with_report(_model(Unknown), _x(5, 4))
    assert spec["a.weight"].axes == (None, "in")
    (b,) = report.broken
    assert "channel_mixer" in b.op and "no symmetry rule" in b.reason and b.neurons == ["a"]


def test_a_wrong_rule_is_caught_by_verification(monkeypatch):
    # pretend channel_mixer were elementwise: the derived space is wrong and trace refuses
    monkeypatch.setitem(FUNCTION_RULES, channel_mixer, FUNCTION_RULES[torch.relu])
    with pytest.raises(SymmetryError, match=r"space 'a' \(6 neurons, hidden\)") as e:
        nfc.trace(_model(Unknown), _x(5, 4))
    assert "channel_mixer" in str(e.value)
    spec = nfc.trace(_model(Unknown), _x(5, 4), verify=False)
    assert not nfc.verify(_model(Unknown), spec, _x(5, 4)).ok


# --------------------------------------------------------------------------------------------
# errors, modes, side effects, scaling, drawing
# --------------------------------------------------------------------------------------------


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 3)

    def forward(self, x):
        if x.sum() > 0:
            return self.a(x)
        return x


def test_data_dependent_control_flow_raises_trace_error_with_fx_reason():
    with pytest.raises(TraceError) as e:
        nfc.trace(DataDependent(), _x(2, 3))
    msg = str(e.value)
    assert "control flow" in msg and "torch.fx.wrap" in msg and "by hand" in msg


def test_wrong_input_shape_names_the_node():
    with pytest.raises(TraceError, match=r"shape propagation failed at node .*fc1"):
        nfc.trace(_model(CATALOGUE["mlp"].factory), _x(2, 7))


def test_trace_leaves_the_model_alone():
    model = _model(CATALOGUE["resnet8"].factory).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    nfc.trace(model, _x(2, 3, 8, 8))
    assert all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
        assert v.dtype == before[k].dtype


def test_hnp_mode():
    spec = nfc.trace(_model(CATALOGUE["mlp"].factory), _x(2, 16), mode="hnp")
    assert spec.mode == "hnp"
    assert spec.permutable_spaces() == ["fc1", "fc2"]


def test_fake_and_real_shape_propagation_agree():
    model = _model(CATALOGUE["unet"].factory)
    real = nfc.trace(model, _x(2, 1, 8, 8), fake=False, verify=False)
    fake = nfc.trace(model, _x(2, 1, 8, 8), fake=True, verify=False)
    assert real == fake


def _wide(c: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, c, 1), nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c, 1, groups=c),
        nn.Conv2d(c, c, 1), nn.Dropout(0.1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Identity(), nn.Linear(c, 5),
    )  # fmt: skip


def test_graph_size_does_not_grow_with_width():
    sizes = []
    for c in (16, 2048):
        model = _model(lambda c=c: _wide(c))
        gm = trace_module(model, _x(1, 3, 2, 2), fake=False)
        g = build_symmetry_graph(gm, model)
        runs = [n for n in g.nodes if n[0] == "run"]
        sizes.append((len(runs), g.number_of_nodes(), g.number_of_edges()))
        spec = nfc.trace(model, _x(1, 3, 2, 2), fake=False, trials=1)
        assert [s.size for s in spec.spaces.values()] == [3, c, c, 5]
    assert sizes[0] == sizes[1]
    assert sizes[0][0] == 4  # in, conv 0, conv 4, linear 10: a handful of runs


def test_report_and_drawing(tmp_path):
    pytest.importorskip("matplotlib")
    spec, report = trace_with_report(_model(CatSplit), _x(3, 4))
    text = str(report)
    for name in spec.spaces:
        assert f"  {name}: size" in text
    assert "c.weight[0]" in text and "symmetry broken by: nothing" in text
    path = tmp_path / "graph.png"
    draw_symmetry_graph(report, path)
    assert path.stat().st_size > 1000
    draw_symmetry_graph(report.graph)  # from a bare graph too
    import matplotlib.pyplot as plt

    plt.close("all")
