"""nfncompile.frontend.tracing: trace() end to end, on the catalogue (against hand derivations),
with modes, unknown functions, wrong rules, and without side effects on the model."""

from __future__ import annotations

import itertools
from typing import NamedTuple

import pytest
import torch
from torch import nn

import nfncompile as nfc
from nfncompile.architectures.catalogue import CATALOGUE
from nfncompile.errors import SymmetryError
from nfncompile.frontend import FUNCTION_RULES
from nfncompile.frontend.tracing import trace_with_report
from tests.frontend.helpers import TwoLinear, float_keys, model_, spaces_, x_

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


def _imagenet_resnet_spaces(blocks: tuple, width: int, bottleneck: bool) -> list:
    # torchvision ResNet: the stem (conv1) output is stage 1's stream unless stage 1 opens with
    # a shortcut conv (Bottlenecks: 4x the channels); every stage that opens with one starts a
    # new stream named after the conv added into it (conv2, or conv3 for Bottlenecks), created
    # right after that block's inner convs. Every other block adds into the stream.
    out = [("in", 3, "input"), ("conv1", width, "hidden")]
    last = "conv3" if bottleneck else "conv2"
    for k, n in enumerate(blocks, start=1):
        planes = width * 2 ** (k - 1)
        for i in range(n):
            out.append((f"layer{k}.{i}.conv1", planes, "hidden"))
            if bottleneck:
                out.append((f"layer{k}.{i}.conv2", planes, "hidden"))
            if i == 0 and (bottleneck or k > 1):
                out.append((f"layer{k}.0.{last}", planes * (4 if bottleneck else 1), "hidden"))
    return [*out, ("out", 10, "output")]


def _mobilenetv2_spaces(width_mult: float) -> list:
    # the stem; per block an expand space (tied to its depthwise conv's output: same neurons)
    # unless t = 1 (the depthwise then acts on the block's input space), and a project space
    # unless the block adds its output back onto its input; the last 1x1 conv (1280)
    from nfncompile.architectures.torchvision_mobilenets import SETTINGS, _divisible

    inp = _divisible(32 * width_mult)
    out = [("in", 3, "input"), ("features.0.0", inp, "hidden")]
    b = 1
    for t, c, n, s in SETTINGS:
        oup = _divisible(c * width_mult)
        for i in range(n):
            stride = s if i == 0 else 1
            if t != 1:
                out.append((f"features.{b}.conv.0.0", inp * t, "hidden"))
            if not (stride == 1 and inp == oup):
                out.append((f"features.{b}.conv.{1 if t == 1 else 2}", oup, "hidden"))
            inp, b = oup, b + 1
    return [*out, (f"features.{b}.0", 1280, "hidden"), ("out", 10, "output")]


def _shufflenetv2_spaces(channels: tuple, repeats: tuple) -> list:
    # follows every channel through the splits and shuffles: the neurons a layer makes form
    # one space per stretch of them that one later layer reads (the next unit's branches, or
    # conv5); a shuffle only moves them, and a layer reads them wherever they are
    made: list = [("conv1.0", channels[0])]
    at = [("conv1.0", i) for i in range(channels[0])]  # the neuron at each channel position
    reader: dict = {}

    def read(positions: list, by: str) -> None:
        for origin, i in positions:
            reader[origin, i] = by

    for k, (n, width) in enumerate(zip(repeats, channels[1:4]), start=2):
        half = width // 2
        for u in range(n):
            unit = f"stage{k}.{u}"
            if u == 0:  # both branches read every channel
                read(at, unit)
                made += [(f"{unit}.branch1.2", half), (f"{unit}.branch2.0", half)]
                kept = [(f"{unit}.branch1.2", i) for i in range(half)]
            else:  # the first half passes through, the second goes through branch2
                read(at[half:], unit)
                made.append((f"{unit}.branch2.0", half))
                kept = at[:half]
            made.append((f"{unit}.branch2.5", half))
            out = kept + [(f"{unit}.branch2.5", i) for i in range(half)]
            at = [out[j * half + i] for i in range(half) for j in range(2)]
    read(at, "conv5")
    spaces = [("in", 3, "input")]
    for origin, size in made:
        by = [reader.get((origin, i), "") for i in range(size)]
        cuts = [0] + [i for i in range(1, size) if by[i] != by[i - 1]] + [size]
        pieces = [b - a for a, b in itertools.pairwise(cuts)]
        if len(pieces) == 1:
            spaces.append((origin, size, "hidden"))
        else:
            spaces += [(f"{origin}/{j}", n, "hidden") for j, n in enumerate(pieces)]
    return [*spaces, ("conv5.0", channels[4], "hidden"), ("out", 10, "output")]


def _densenet121_spaces(growth: int, init: int) -> list:
    # the stem flows through each dense block's concatenations; every dense layer adds its
    # bottleneck (conv1, 4 x growth) and its growth (conv2) spaces; each transition conv has
    # its own (half the channels), which flows into the next block
    out = [("in", 3, "input"), ("features.conv0", init, "hidden")]
    c = init
    for k, n in enumerate((6, 12, 24, 16), start=1):
        for j in range(1, n + 1):
            out.append((f"features.denseblock{k}.denselayer{j}.conv1", 4 * growth, "hidden"))
            out.append((f"features.denseblock{k}.denselayer{j}.conv2", growth, "hidden"))
        c += n * growth
        if k < 4:
            c //= 2
            out.append((f"features.transition{k}.conv", c, "hidden"))
    return [*out, ("out", 10, "output")]


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
    # both blocks add back into the stem's stream (8) through the wrapped stochastic depth,
    # which the probe passes; each block's expand (32) is tied to its depthwise conv and to
    # the SE gate's se_up outputs (x * gate); se_down (8 // 4 = 2) is the SE bottleneck
    "efficientnet_block": [("in", 3, "input"), ("stem", 8, "hidden"),
                           ("blocks.0.expand", 32, "hidden"), ("blocks.0.se_down", 2, "hidden"),
                           ("blocks.1.expand", 32, "hidden"), ("blocks.1.se_down", 2, "hidden"),
                           ("head", 16, "hidden"), ("out", 10, "output")],
    # every conv a Conv2dSame (read op by op, with the input's shapes fixed): block 0 (stride 2,
    # 8 -> 12) has no residual, so its project output (12) starts the stream block 1 adds to
    "tf_efficientnet": [("in", 3, "input"), ("stem", 8, "hidden"),
                        ("blocks.0.expand", 32, "hidden"), ("blocks.0.se_down", 2, "hidden"),
                        ("blocks.0.project", 12, "hidden"), ("blocks.1.expand", 48, "hidden"),
                        ("blocks.1.se_down", 3, "hidden"), ("head", 16, "hidden"),
                        ("out", 10, "output")],
    # the identity shortcut adds conv3 into the stem's stream; conv1 and the grouped conv2
    # are one space each, moved block-wise by one shared block permutation (see
    # tests/architectures/test_grouped.py for the blocks and Inner labels)
    "resnext_block": [("in", 3, "input"), ("stem", 8, "hidden"), ("block.conv1", 16, "hidden"),
                      ("block.conv2", 16, "hidden"), ("out", 10, "output")],
    # every stage opens with a strided block (1x1-conv shortcut: conv3 starts a new stream);
    # stage 2's second block adds into stages.1.0.conv3's stream
    "regnet_x": [("in", 3, "input"), ("stem", 8, "hidden"), ("stages.0.0.conv1", 8, "hidden"),
                 ("stages.0.0.conv2", 8, "hidden"), ("stages.0.0.conv3", 8, "hidden"),
                 ("stages.1.0.conv1", 16, "hidden"), ("stages.1.0.conv2", 16, "hidden"),
                 ("stages.1.0.conv3", 16, "hidden"), ("stages.1.1.conv1", 16, "hidden"),
                 ("stages.1.1.conv2", 16, "hidden"), ("out", 10, "output")],
    # the depthwise conv keeps the stem's channels, the MLP's hidden layer is the only new
    # space, pwconv2 adds back into the stream
    "convnext_block": [("in", 3, "input"), ("stem", 8, "hidden"), ("blocks.0.pwconv1", 32, "hidden"),
                       ("out", 10, "output")],
    # both paths and both halves of fc_select's output move together (stack, x * attention)
    "sk_block": [("in", 3, "input"), ("stem", 8, "hidden"), ("sk.paths.0.0", 8, "hidden"),
                 ("sk.fc_reduce", 4, "hidden"), ("out", 10, "output")],
    # the convs are functional (F.conv2d on the standardised weight): their output channels
    # are the weights' dim 0, named after their modules; conv2 adds back into the stem's stream
    "std_conv_block": [("in", 3, "input"), ("stem", 8, "hidden"),
                       ("conv1", 8, "hidden"), ("out", 10, "output")],
    # the blur pools keep their channels
    "blurpool_cnn": [("in", 3, "input"), ("conv1", 8, "hidden"), ("conv2", 8, "hidden"),
                     ("out", 10, "output")],
    # conv1 reads the input channels repeated 4 times (2x2 offsets)
    "s2d_stem": [("in", 3, "input"), ("conv1", 8, "hidden"), ("conv2", 8, "hidden"),
                 ("out", 10, "output")],
    # the patch embedding's 16 channels are the residual stream (the class token is
    # concatenated along tokens, the position table and every block's proj and fc2 are added
    # into it, every norm reads it); qkv's 48 outputs viewed as (3, 2 heads, 8) and unbound
    # into q, k, v: each head's q and k features one 8-space (q @ k^T contracts them head by
    # head), its v features another (proj reads them), each head permuted on its own (the
    # heads themselves fixed: a subgroup of attention's symmetry); the MLP's 32 hidden units
    "vit": [("in", 3, "input"), ("patch_embed", 16, "hidden"),
            # each block's q and k, and its v: 2 heads of 8, moved as blocks
            ("blocks.0.attn.qkv/0", 16, "hidden"), ("blocks.0.attn.qkv/1", 16, "hidden"),
            ("blocks.0.fc1", 32, "hidden"),
            ("blocks.1.attn.qkv/0", 16, "hidden"), ("blocks.1.attn.qkv/1", 16, "hidden"),
            ("blocks.1.fc1", 32, "hidden"),
            ("out", 10, "output")],
    "resnet18": _imagenet_resnet_spaces((2, 2, 2, 2), 8, bottleneck=False),
    "resnet50": _imagenet_resnet_spaces((3, 4, 6, 3), 8, bottleneck=True),
    "mobilenetv2": _mobilenetv2_spaces(0.5),
    "densenet121": _densenet121_spaces(4, 8),
    "shufflenetv2": _shufflenetv2_spaces((8, 16, 32, 64, 64), (4, 8, 4)),
}  # fmt: skip


def test_every_catalogue_entry_has_a_hand_derivation():
    assert sorted(EXPECTED) == sorted(CATALOGUE)


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_catalogue_traces_and_verifies(name):
    arch = CATALOGUE[name]
    model = model_(arch.factory)
    spec, report = trace_with_report(model, x_(*arch.input_shape))
    assert spaces_(spec) == EXPECTED[name]
    assert report.verification.ok and report.graph_differs == ""
    assert not report.broken
    assert list(spec.names) == float_keys(model)
    assert nfc.WeightSpaceSpec.from_yaml(spec.to_yaml()) == spec


def test_catalogue_axes_details():
    # lenet: fc1 reads 16 channels x 4 positions
    spec = nfc.trace(model_(CATALOGUE["lenet"].factory), x_(2, 1, 8, 8))
    fc1 = spec["fc1.weight"]
    assert (fc1.shape, fc1.view, fc1.axes) == ((32, 64), (32, 16, 4), ("fc1", "conv2", None))
    # resnet: BatchNorm statistics are labelled by their channels; counters are skipped
    spec = nfc.trace(model_(CATALOGUE["resnet8"].factory), x_(2, 3, 8, 8))
    assert spec["layer2.0.bn1.running_var"].axes == ("layer2.0.conv1",)
    assert spec["layer2.0.downsample.1.running_mean"].axes == ("layer2.0.conv2",)
    assert spec["layer2.0.downsample.0.weight"].axes == ("layer2.0.conv2", "conv1", None, None)
    assert not any(n.endswith("num_batches_tracked") for n in spec.names)
    # densenet: the transition reads the concatenation of the stem and the three layers
    spec = nfc.trace(model_(CATALOGUE["densenet_block"].factory), x_(2, 3, 8, 8))
    cat = ("stem", "block.0.conv", "block.1.conv", "block.2.conv")
    assert spec["transition.weight"].axes == ("transition", cat, None, None)
    assert spec["bn.running_mean"].axes == (cat,)
    # mobilenet: the depthwise conv's output neurons are its input neurons
    spec = nfc.trace(model_(CATALOGUE["mobilenetv2_block"].factory), x_(2, 3, 8, 8))
    assert spec["block.depthwise.weight"].axes == ("block.expand", None, None, None)
    assert spec["block.project.weight"].axes == ("stem", "block.expand", None, None)
    # unet: the decoder reads [up2, down2.conv2] after the concat skip
    spec = nfc.trace(model_(CATALOGUE["unet"].factory), x_(2, 1, 8, 8))
    assert spec["dec2.conv1.weight"].axes == ("dec2.conv1", ("up2", "down2.conv2"), None, None)
    assert spec["up2.weight"].axes == ("bottleneck.conv2", "up2", None, None)
    # shufflenetv2: stage2.1 reads the second half of stage2.0's shuffled output, the last
    # quarter of each of its branches interleaved; stage3.0's depthwise conv keeps the order
    # of stage 2's output (its neurons are its input's)
    spec = nfc.trace(model_(CATALOGUE["shufflenetv2"].factory), x_(2, 3, 16, 16))
    conv = spec["stage2.1.branch2.0.weight"]
    assert conv.axes[1] == ("stage2.0.branch1.2/3", "stage2.0.branch2.5/3")
    assert conv.order == ((1, (0, 4, 1, 5, 2, 6, 3, 7)),)
    depthwise = spec["stage3.0.branch1.0.weight"]
    assert depthwise.axes[0] == spec["stage3.0.branch2.0.weight"].axes[1]
    assert depthwise.order[0][0] == 0 and spec["stage3.0.branch2.0.weight"].order[0][0] == 1
    assert depthwise.order[0][1] == spec["stage3.0.branch2.0.weight"].order[0][1]
    # vit: each block's 2 heads move as blocks of its q/k space and of its v space together
    spec = nfc.trace(model_(CATALOGUE["vit"].factory), x_(*CATALOGUE["vit"].input_shape))
    qk, v = "blocks.0.attn.qkv/0", "blocks.0.attn.qkv/1"
    assert spec["blocks.0.attn.qkv.weight"].axes == ((qk, qk, v), "patch_embed")
    assert spec.spaces[qk].blocks == spec.spaces[v].blocks == "blocks.0.attn.qkv.heads"
    assert spec.blocks["blocks.0.attn.qkv.heads"].count == 2


def channel_mixer(x):  # traced as one call: no rule knows it
    if bool(torch.isnan(x).any()):  # a check on the values: fx cannot trace through it
        raise ValueError("nan")
    return x.flip(1) + x


torch.fx.wrap("channel_mixer")


class Unknown(TwoLinear):
    def forward(self, x):
        return self.b(channel_mixer(torch.relu(self.a(x))))


def test_unknown_function_fixes_its_inputs_and_is_reported():
    spec, report = trace_with_report(model_(Unknown), x_(5, 4))
    assert spec["a.weight"].axes == (None, "in")
    (b,) = report.broken
    assert "channel_mixer" in b.op and "no symmetry rule" in b.reason and b.neurons == ["a"]


def test_a_wrong_rule_is_caught_by_verification(monkeypatch):
    # pretend channel_mixer were elementwise: the derived space is wrong and trace refuses
    monkeypatch.setitem(FUNCTION_RULES, channel_mixer, FUNCTION_RULES[torch.relu])
    with pytest.raises(SymmetryError, match=r"space 'a' \(6 neurons, hidden\)") as e:
        nfc.trace(model_(Unknown), x_(5, 4))
    assert "channel_mixer" in str(e.value)
    spec = nfc.trace(model_(Unknown), x_(5, 4), verify=False)
    assert not nfc.verify(model_(Unknown), spec, x_(5, 4)).ok


def test_trace_leaves_the_model_alone():
    model = model_(CATALOGUE["resnet8"].factory).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    nfc.trace(model, x_(2, 3, 8, 8))
    assert all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
        assert v.dtype == before[k].dtype


def test_hnp_mode():
    spec = nfc.trace(model_(CATALOGUE["mlp"].factory), x_(2, 16), mode="hnp")
    assert spec.mode == "hnp"
    assert spec.permutable_spaces() == ["fc1", "fc2"]


class _EmptyTokens(TwoLinear):
    """vit-pytorch's ViT pooling by the mean: its class tokens a parameter of shape (0, dim)."""

    def __init__(self) -> None:
        super().__init__()
        self.cls = torch.nn.Parameter(torch.randn(0, 6))

    def forward(self, x):
        h = torch.relu(self.a(x))
        h = torch.cat((self.cls.expand(h.shape[0], -1, -1), h), dim=1)
        return self.b(h.mean(1))


def test_an_empty_parameter_holds_no_weight_and_is_left_out():
    # before: SpecError "param 'cls': shape must be a list of positive ints, got [0, 6]"
    model = model_(_EmptyTokens)
    spec, report = trace_with_report(model, x_(2, 3, 4), channel_dim=-1)
    assert report.verification.ok and "cls" not in spec
    assert ("a", 6, "hidden") in spaces_(spec)
    state = model.state_dict()
    spec.check_state_dict(state)  # the empty entry is not reported as unexpected
    features = nfc.WeightSpaceFeatures.from_state_dicts(spec, [state, state])
    assert set(features) == set(spec.names)
    assert set(nfc.WeightSpaceFeatures.from_state_dicts(None, [state])) == set(spec.names)
    with pytest.raises(nfc.StateDictMismatchError, match="unexpected keys: extra"):
        spec.check_state_dict({**state, "extra": torch.zeros(2)})


class _Shifted(TwoLinear):
    """``a``'s outputs rolled by one before ``b``: its neurons are positions."""

    def forward(self, x):
        return self.b(torch.relu(self.a(x)).roll(1, -1))


def test_a_graph_whose_derivation_fails_verification_falls_back_to_its_alternative(monkeypatch):
    # build_symmetry_graph keeps, beside a graph with a strided slice's runs in blocks, the
    # graph without them; where the first's group does not hold on the model, the second is
    # derived and verified. Here the first is another model's graph (a's neurons free)
    import nfncompile.frontend.tracing as tracing
    from nfncompile.frontend.fx import trace_module

    shifted, plain = model_(lambda: _Shifted()), model_(TwoLinear)
    x = x_(3, 4)
    own = tracing.build_symmetry_graph(trace_module(shifted, x), shifted)
    wrong = tracing.build_symmetry_graph(trace_module(plain, x), plain)
    wrong.graph["fallback"] = own
    monkeypatch.setattr(tracing, "build_symmetry_graph", lambda *args: wrong)
    spec, report = trace_with_report(shifted, x)
    assert report.verification.ok
    assert spec["a.weight"].axes[0] is None
    assert spaces_(spec) == [("in", 4, "input"), ("out", 3, "output")]


class WithExtraState(TwoLinear):
    """A module that keeps metadata in its state_dict through ``get_extra_state``, as
    neuraloperator's models do (a dict, not a tensor)."""

    def get_extra_state(self) -> dict:
        return {"version": 2, "modes": [4, 4]}

    def set_extra_state(self, state: dict) -> None:
        self.extra = state


def test_a_state_dict_entry_that_is_no_tensor_is_no_weight():
    # the trace raised AttributeError: 'dict' object has no attribute 'numel'
    model = model_(WithExtraState)
    assert "_extra_state" in model.state_dict()
    spec, report = trace_with_report(model, x_(5, 4))
    assert report.verification.ok
    assert spec.names == ("a.weight", "a.bias", "b.weight", "b.bias")
    spec.check_state_dict(model.state_dict())
    feats = nfc.WeightSpaceFeatures.from_state_dicts(spec, [model.state_dict()])
    assert feats.batch_size == 1


class _QuantBase(NamedTuple):
    value: torch.Tensor
    scale: torch.Tensor


class _Quant(_QuantBase):
    """brevitas' ``IntQuantTensor``: a namedtuple whose ``__new__`` converts its fields."""

    def __new__(cls, value, scale):
        if not isinstance(scale, torch.Tensor):
            scale = torch.tensor(scale, dtype=torch.float)
        return super().__new__(cls, value, scale)


class _Quantised(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(5, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        s = h.abs().amax() / 127.0
        t = _Quant(torch.round(h / s) * s, s)
        return self.fc2(t.value), t  # fx records the returned namedtuple as a call of its class


def test_a_namedtuple_with_its_own_new_is_made_as_a_tuple():
    # before: its __new__ ran on labels ("must be real number, not TensorLabels")
    spec, report = trace_with_report(model_(_Quantised), x_(2, 5))
    assert [(s.size, s.role) for s in spec.spaces.values()] == [
        (5, "input"), (8, "output"), (3, "output")
    ]  # fmt: skip
    assert report.verification.ok
