"""nfncompile.frontend.probe: ops no rule knows are probed numerically, not fixed blindly.

Each model puts one unknown op between a conv ``a`` (3 -> 6 channels) and a 1x1 conv ``b``
(6 -> 4), then pools into ``fc``. Hand derivation: when the op is equivariant, ``a``'s
channels stay a space (``b`` reads them); when it is not, they are fixed, and ``b.weight``'s
input axis with them.
"""

from __future__ import annotations

import re
import warnings

import pytest
import torch
import torch.fx
from torch import nn

import nfncompile as nfc
from nfncompile.architectures.catalogue import CATALOGUE
from nfncompile.architectures.efficientnets import stochastic_depth
from nfncompile.frontend.probe import DRAWS
from nfncompile.frontend.tracing import trace_with_report
from tests.frontend.helpers import LoopedExperts, model_, spaces_, x_

C = 6


def _untraceable(x):
    """A check on the values: fx cannot trace through it, so the wrapped functions below stay
    one call even where their probe fails (a failing wrapped call is otherwise traced
    through, see ``trace_with_report``)."""
    if bool(torch.isnan(x).any()):
        raise ValueError("nan")


def gate(x):
    """A channel-wise gate: equivariant."""
    return x * torch.sigmoid(x.mean((2, 3), keepdim=True))


def position_scale(x):
    """Scales channel i by i: not equivariant."""
    _untraceable(x)
    return x * torch.arange(x.shape[1], dtype=x.dtype).view(1, -1, 1, 1)


def checked_sqrt(x):
    """Raises on the probe's random (signed) inputs, in float64 and in float32."""
    if bool((x < 0).any()):
        raise ValueError("expects a non-negative input")
    return x.sqrt()


def with_count(x):
    """Returns a tuple holding a non-tensor."""
    _untraceable(x)
    return x * 2, 3


def scale(x, w):
    """A (C,) parameter scaling the channels of an (N, C, H, W) input."""
    _untraceable(x)
    return x * w.view(1, -1, 1, 1)


def mix(x, y):
    """Combines two streams elementwise: their channels must move together."""
    return x * torch.sigmoid(y)


def split_pool(x):
    """A tuple of tensors: the activation and its per-channel mean."""
    return torch.relu(x), x.mean((2, 3))


def drop_rows(x):
    """Stochastic: zeroes whole samples at random (one mask for all channels)."""
    return x * (torch.rand(x.shape[0], 1, 1, 1) > 0.5)


for _f in (gate, position_scale, checked_sqrt, with_count, scale, mix, split_pool, drop_rows):
    torch.fx.wrap(_f.__name__)
torch.fx.wrap("stochastic_depth")  # torch.fx keeps a wrapped function whole per calling module


class Wrapped(nn.Module):
    """``fc(mean(b(op(a(x)))))`` with ``op`` one of the wrapped functions above."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op
        self.a = nn.Conv2d(3, C, 3, padding=1)
        self.b = nn.Conv2d(C, 4, 1)
        self.fc = nn.Linear(4, 2)
        if op == "scale":
            self.w = nn.Parameter(torch.ones(C))  # ones at init: only random values tell
        if op == "mix":
            self.c = nn.Conv2d(3, C, 3, padding=1)

    def forward(self, x):
        h = self.a(x)
        if self.op == "gate":  # self.op is fixed at construction: no traced control flow
            h = gate(h)
        elif self.op == "position_scale":
            h = position_scale(h)
        elif self.op == "checked_sqrt":
            h = checked_sqrt(torch.relu(h))
        elif self.op == "with_count":
            out = with_count(h)
            h = out[0] * out[1]
        elif self.op == "scale":
            h = scale(h, self.w)
        elif self.op == "mix":
            h = mix(h, self.c(x))
        return self.fc(self.b(h).mean((2, 3)))


SPACES = [("in", 3, "input"), ("a", C, "hidden"), ("b", 4, "hidden"), ("out", 2, "output")]
FIXED_A = [("in", 3, "input"), ("b", 4, "hidden"), ("out", 2, "output")]


def _trace(model: nn.Module, *shape: int):
    spec, report = trace_with_report(model, x_(*shape))
    assert report.verification.ok
    return spec, report


@pytest.mark.parametrize("op", ["gate", "scale"])
def test_an_equivariant_function_passes_its_labels_through(op):
    spec, report = _trace(model_(lambda: Wrapped(op)), 2, 3, 5, 5)
    assert spaces_(spec) == SPACES
    assert spec["b.weight"].axes == ("b", "a", None, None)
    assert not report.broken
    [p] = report.probes
    assert (p.op, p.node, p.passed) == (f"{op} ({op})", op, True)
    assert p.detail == (
        f"probed: equivariant on {DRAWS} random draws (float64); labels passed through"
    )
    assert f"ops no rule knows, probed numerically:\n  {op} ({op}) [node {op}]: probed" in str(
        report
    )


def test_a_parameter_passed_to_a_function_is_labelled_by_the_channels_it_scales():
    # (C,) against (N, C, H, W): grouped by size after the elementwise alignment fails; the
    # parameter is ones at init, so only the probe's random values show it must move with a
    spec, _ = _trace(model_(lambda: Wrapped("scale")), 2, 3, 5, 5)
    assert spec["w"].axes == ("a",)


def test_labels_a_function_combines_are_tied():
    spec, report = _trace(model_(lambda: Wrapped("mix")), 2, 3, 5, 5)
    assert spaces_(spec) == SPACES
    assert spec["c.weight"].axes == ("a", "in", None, None)
    assert report.probes[0].passed


def test_a_function_that_returns_a_tuple_of_tensors_labels_each():
    class Pool(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.fc = nn.Conv2d(3, C, 3), nn.Conv2d(C, 4, 1), nn.Linear(C, 2)

        def forward(self, x):
            h, p = split_pool(self.a(x))
            return self.fc(p) + self.b(h).mean((2, 3)).sum(1, keepdim=True)

    spec, report = _trace(model_(Pool), 2, 3, 5, 5)
    assert spec["fc.weight"].axes == ("out", "a") and spec["b.weight"].axes[1] == "a"
    assert report.probes[0].passed


@pytest.mark.parametrize(
    "op, why",
    [
        ("position_scale", r"probed: not equivariant: permuting its labelled inputs does not "
         r"permute its output \(max error [0-9.e+-]+ on draw 1 of 3\)"),
        ("checked_sqrt", r"probed: it raises ValueError: expects a non-negative input"),
        ("with_count", r"probed: it returns a int, not only tensors"),
    ],
)  # fmt: skip
def test_an_op_the_probe_rejects_is_fixed_and_the_report_says_why(op, why):
    spec, report = _trace(model_(lambda: Wrapped(op)), 2, 3, 5, 5)
    assert spaces_(spec) == FIXED_A
    assert spec["b.weight"].axes == ("b", None, None, None)
    [p] = report.probes
    assert not p.passed and p.node == op
    [b] = [b for b in report.broken if b.node == op]
    assert b.reason.startswith(f"no symmetry rule for {op} ({op}); probed: ")
    assert b.neurons == ["a"] and b.count == C
    assert re.search(why, str(report))


class Constant(nn.Module):
    """``scale(a(x), k)`` with ``k`` a model constant (a non-persistent buffer, in no
    state_dict): the group does not act on it, and the probe uses its real values."""

    def __init__(self, k: torch.Tensor) -> None:
        super().__init__()
        self.a, self.b, self.fc = nn.Conv2d(3, C, 3), nn.Conv2d(C, 4, 1), nn.Linear(4, 2)
        self.register_buffer("k", k, persistent=False)

    def forward(self, x):
        return self.fc(self.b(scale(self.a(x), self.k)).mean((2, 3)))


def test_a_constant_keeps_its_values_in_the_probe():
    # the same channels scaled by a uniform constant (equivariant) or by their positions (not)
    spec, report = _trace(model_(lambda: Constant(torch.full((C,), 2.0))), 2, 3, 5, 5)
    assert spaces_(spec) == SPACES and report.probes[0].passed
    spec, report = _trace(
        model_(lambda: Constant(torch.arange(C, dtype=torch.float32))), 2, 3, 5, 5
    )
    assert spaces_(spec) == FIXED_A and not report.probes[0].passed


@torch.fx.wrap
def take(x, idx, dim=-1):
    """Pixels gathered along the width: the channels are untouched."""
    return x.index_select(dim, idx)


class Taken(nn.Module):
    def __init__(self, keyword: bool) -> None:
        super().__init__()
        self.keyword = keyword
        self.a, self.b = nn.Conv2d(3, C, 1), nn.Conv2d(C, 2, 1)
        self.idx = torch.tensor([1, 0, 3, 2])  # a constant of the graph

    def forward(self, x):
        h = self.a(x)
        return self.b(take(h, self.idx, dim=-1) if self.keyword else take(h, self.idx))


@pytest.mark.parametrize("keyword", [False, True])
def test_a_call_with_keyword_arguments_is_probed_with_its_constants(keyword):
    # the rules read keyword arguments moved into args, but the probe paired those with the
    # node's own args: every input became a float32 draw, the indices too, and the op raised
    spec, report = trace_with_report(model_(lambda: Taken(keyword)), x_(1, 3, 4, 4))
    assert spec["a.weight"].axes[0] == "a" and report.probes[0].passed
    assert report.verification.ok


@torch.fx.wrap
def add_rel_pos(scores, table, checked=False):
    """torchvision MViT's ``_add_rel_pos``: each query-key pair's relative-position row of a
    learned table, read at their distance, added into the scores given, which it returns
    (``checked``: fx cannot trace through it)."""
    if checked:
        _untraceable(scores)
    n = scores.shape[-1]
    dist = torch.arange(n)[:, None] - torch.arange(n)[None, :] + n - 1
    scores += table[dist].sum(-1)
    return scores


class RelPos(nn.Module):
    """Scores over 4 positions plus a learned ``(7, C)`` relative-position table's rows."""

    def __init__(self, checked: bool) -> None:
        super().__init__()
        self.checked = checked
        self.q, self.k, self.o = nn.Linear(3, C), nn.Linear(3, C), nn.Linear(3, 2)
        self.table = nn.Parameter(torch.randn(7, C))

    def forward(self, x):
        scores = self.q(x) @ self.k(x).transpose(-1, -2)
        return self.o(add_rel_pos(scores, self.table, self.checked).softmax(-1) @ x)


@pytest.mark.parametrize("checked", [False, True])
def test_a_call_that_writes_into_its_input_is_probed_on_copies(checked):
    # before: both calls of the probe wrote into the one drawn score tensor and returned it,
    # so they agreed whatever the table's rows were: its rows were a free space (torchvision's
    # MViT v2 failed its verification)
    model = model_(lambda: RelPos(checked))
    spec, report = trace_with_report(model, x_(2, 4, 3), channel_dim=-1)
    assert report.verification.ok and spec["table"].axes[0] is None
    if checked:  # one call, whose probe now fails: the table fixed
        (probe,) = report.probes
        assert not probe.passed and "not equivariant" in probe.detail
    else:  # the probe fails, so the call is traced through, as a failing wrapped call is
        assert not report.probes and spec["q.weight"].axes[0] == "q"


class Leaf(nn.Module):
    """``a`` conv, one torch.nn module with no rule, ``b`` conv, pool, fc."""

    def __init__(self, leaf: nn.Module) -> None:
        super().__init__()
        self.a, self.leaf, self.b, self.fc = (
            nn.Conv2d(3, C, 3),
            leaf,
            nn.Conv2d(C, 4, 1),
            nn.Linear(4, 2),
        )

    def forward(self, x):
        return self.fc(self.b(self.leaf(self.a(x))).mean((2, 3)))


def test_a_leaf_module_without_a_rule_is_probed():
    # RReLU is elementwise (in eval, a fixed slope); LocalResponseNorm mixes neighbouring
    # channels: the probe tells them apart
    spec, report = _trace(model_(lambda: Leaf(nn.RReLU())), 2, 3, 5, 5)
    assert spaces_(spec) == SPACES and report.probes[0].op == "RReLU leaf"
    spec, report = _trace(model_(lambda: Leaf(nn.LocalResponseNorm(3))), 2, 3, 5, 5)
    assert spaces_(spec) == FIXED_A and "not equivariant" in report.probes[0].detail


def _values_checked(x: torch.Tensor) -> None:
    """An ``if`` on data, which no trace can fix as it fixes a shape, and whose sides both go
    on (one that raised would be traced as passing): torch.fx keeps the module calling it as
    one call."""
    if not torch.isfinite(x).all():
        warnings.warn("non-finite values", stacklevel=2)


class Untraceable(nn.Module):
    """``x * scale`` per channel, kept as one call: equivariant only if ``scale`` moves with
    the channels."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(C))

    def forward(self, x):
        _values_checked(x)
        return x * self.scale.view(1, -1, 1, 1)


class PrefixScale(Untraceable):
    """Channel ``i`` scaled by ``scale[: i + 1].sum()``. Its initial ``scale`` (1, 0, 0, ...)
    makes it the identity; with other values it reads positions, ``scale`` moved or not."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.eye(C)[0])

    def forward(self, x):
        _values_checked(x)
        return x * self.scale.cumsum(0).view(1, -1, 1, 1)


class UntraceableMLP(nn.Module):
    """A residual 1x1-conv MLP kept as one call: its input's channels flow through, and its
    ``2C`` hidden units are neurons the model around it never sees."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(C, 2 * C, 1), nn.Conv2d(2 * C, C, 1)

    def forward(self, x):
        _values_checked(x)
        return x + self.fc2(torch.relu(self.fc1(x)))


def test_a_leaf_s_own_weights_move_with_the_channels_it_shares():
    model = model_(lambda: Leaf(Untraceable()))
    spec, report = _trace(model, 2, 3, 5, 5)
    assert spaces_(spec) == SPACES and not report.broken
    assert spec["leaf.scale"].axes == ("a",)
    assert report.probes[0].passed and report.leaf_calls[0].kind == "Untraceable"
    # the probe's verdict is checked again on the whole model, with other random draws
    assert nfc.verify(model, spec, x_(2, 3, 5, 5), seed=7).ok


def test_a_leaf_with_parameters_is_probed_with_random_values_not_its_initial_ones():
    # with its initial values the module is the identity; its parameters differ in every
    # network of a zoo, so the probe redraws them and finds it position-dependent
    spec, report = _trace(model_(lambda: Leaf(PrefixScale())), 2, 3, 5, 5)
    assert spaces_(spec) == FIXED_A
    assert spec["leaf.scale"].axes == (None,)
    assert not report.probes[0].passed and "not equivariant" in report.probes[0].detail


def test_a_leaf_s_hidden_units_are_a_space_of_their_own():
    model = model_(lambda: Leaf(UntraceableMLP()))
    spec, report = _trace(model, 2, 3, 5, 5)
    assert report.probes[0].passed and not report.broken
    assert report.probes[0].detail.endswith(
        "; its own weights moved with them (fc1.bias, fc1.weight, fc2.bias, fc2.weight); "
        "12 hidden units of its own"
    )
    assert spaces_(spec) == [*SPACES[:2], ("leaf.fc1", 2 * C, "hidden"), *SPACES[2:]]
    assert spec["leaf.fc1.weight"].axes == ("leaf.fc1", "a", None, None)
    assert spec["leaf.fc1.bias"].axes == ("leaf.fc1",)
    assert spec["leaf.fc2.weight"].axes == ("a", "leaf.fc1", None, None)
    assert spec["leaf.fc2.bias"].axes == ("a",)
    assert nfc.verify(model, spec, x_(2, 3, 5, 5), seed=7).ok


class MixThenPrefix(nn.Module):
    """``cumsum`` over the channels of ``w``'s mix: its output channels are positions, so only
    ``w``'s input axis may move with the input's channels, not both of its axes of that
    length."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(C, C))

    def forward(self, x):
        _values_checked(x)
        return torch.einsum("nchw,cd->ndhw", x, self.w).cumsum(1)


def test_a_leaf_s_square_weight_moves_on_the_one_axis_that_holds():
    model = model_(lambda: Leaf(MixThenPrefix()))
    spec, report = _trace(model, 2, 3, 5, 5)
    assert report.probes[0].passed and "invariant" in report.probes[0].detail
    assert spec["leaf.w"].axes == ("a", None)
    assert spec["a.weight"].axes[0] == "a" and spec["b.weight"].axes[1] is None
    assert nfc.verify(model, spec, x_(2, 3, 5, 5), seed=7).ok


class Float32Router(nn.Module):
    """A router that computes in float32 whatever its input's dtype (Switch Transformers'
    does): float32 logits, and the gap of the first two cast back to the input's dtype."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 256))

    def forward(self, x):
        _values_checked(x)
        logits = x.float() @ self.w.float().T
        return logits, (logits[..., 0] - logits[..., 1]).to(x.dtype)


class Routed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.router, self.b = nn.Linear(5, 256), Float32Router(), nn.Linear(256, 2)

    def forward(self, x):
        h = self.a(x)
        logits, gap = self.router(h)
        return self.b(h) * gap[:, None] + logits.sum(-1, keepdim=True)


def test_a_call_is_compared_at_the_precision_of_its_least_precise_output():
    # its float64 output holds float32 rounding (sums of 256 terms in another order): before,
    # compared at float64's tolerance, the probe failed and fixed the 256 channels
    model = model_(Routed)
    spec, report = _trace(model, 6, 5)
    assert report.probes[0].passed and spec["router.w"].axes == (None, "a")
    assert spec["b.weight"].axes == ("out", "a")


class SeparateExperts(nn.Module):
    """Experts as separate modules, each weighted by its column of a one-hot dispatch mask:
    the mask's experts are positions (no permutation of the channels moves the modules)."""

    def __init__(self) -> None:
        super().__init__()
        self.experts = nn.ModuleList(nn.Linear(C, C) for _ in range(3))

    def forward(self, x, mask):
        _values_checked(x)
        return sum(expert(x) * mask[:, e : e + 1] for e, expert in enumerate(self.experts))


class WithExperts(nn.Module):
    """``inp``, a router over 3 experts, ``experts`` added to the stream, ``out``. The routing
    is a one-hot mask (``one_hot``) or the top-2 experts' indices and weights."""

    def __init__(self, experts: nn.Module, one_hot: bool) -> None:
        super().__init__()
        self.one_hot = one_hot
        self.inp, self.router = nn.Linear(5, C), nn.Linear(C, 3)
        self.experts, self.out = experts, nn.Linear(C, 2)

    def forward(self, x):
        h = self.inp(x)
        scores = self.router(h)
        if self.one_hot:
            return self.out(h + self.experts(h, nn.functional.one_hot(scores.argmax(-1), 3)))
        weight, index = scores.softmax(-1).topk(2, dim=-1)
        return self.out(h + self.experts(h, index, weight))


def test_a_kept_call_s_integer_input_is_held_still_where_moving_it_fails():
    # the one-hot mask's last dim carries the router's neurons; the experts read it by
    # position. Before: that failed the probe, which fixed the residual stream too
    model = model_(lambda: WithExperts(SeparateExperts(), one_hot=True))
    spec, report = _trace(model, 7, 5)
    assert report.probes[0].passed
    assert spec["experts.experts.0.weight"].axes == ("inp", "inp")
    assert spec["router.weight"].axes == (None, "inp")
    [broken] = report.broken
    assert broken.reason.endswith("reads its integer input's neurons by position")


def test_a_kept_call_s_integer_input_has_its_values_on_fake_tensors():
    # shape propagation on fake tensors (a model over FAKE_ABOVE weights) records no values:
    # the one-hot mask's were not there, the probe declined and fixed the experts and the
    # stream (Switch Transformers 19 -> 16 spaces); the graph now runs once for real to
    # record them
    model = model_(lambda: WithExperts(SeparateExperts(), one_hot=True))
    x = x_(7, 5)
    fake, report = trace_with_report(model, x, fake=True)
    assert report.probes[0].passed and fake == nfc.trace(model, x, fake=False)


class ScriptedMLP(nn.Module):
    """``x + fc2(relu(fc1(norm(x))))`` over channels-last features, to be scripted."""

    def __init__(self) -> None:
        super().__init__()
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(C), nn.Linear(C, 3 * C), nn.Linear(3 * C, C)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(self.norm(x))))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning")
def test_a_scripted_block_is_one_call_probed_with_its_own_weights():  # (a warning converting it)
    # torch.fx recorded a scripted submodule as its C++ object's ``forward`` method, whose
    # probe held the block's weights still and fixed the channels around it
    def make():
        return nn.Sequential(nn.Linear(5, C), torch.jit.script(ScriptedMLP()), nn.Linear(C, 2))

    model = model_(make)
    spec, report = _trace(model, 4, 5)
    assert report.probes[0].op == "RecursiveScriptModule 1" and report.probes[0].passed
    assert spec["1.fc1.weight"].axes == ("1.fc1", "0")
    assert spec["1.fc2.weight"].axes == ("0", "1.fc1")
    assert spec["1.norm.weight"].axes == ("0",) and spec["2.weight"].axes == ("out", "0")
    assert nfc.verify(model, spec, x_(4, 5), seed=7).ok


class Experts(LoopedExperts):
    """Three experts run by a loop over those the routing picked, as Mixtral's are."""

    def __init__(self) -> None:
        super().__init__(3, C, 2 * C)


@pytest.mark.parametrize("fake", [False, True])
def test_a_mixture_of_experts_kept_as_one_call(fake):
    # the routing's indices are the example's own (recorded by shape propagation), or, where
    # the model is traced on fake tensors, random positions of the experts; the experts'
    # weights move with the residual stream and their hidden units (one permutation for all
    # experts), the experts stay where the routing's indices point
    # (with the example's values fixed, the loop is traced expert by expert:
    # test_value_specialised.py; here the call kept whole is what is read)
    model = model_(lambda: WithExperts(Experts(), one_hot=False))
    spec, report = trace_with_report(model, x_(7, 5), fake=fake, fix_values=False)
    assert report.verification.ok
    assert report.probes[0].passed and report.leaf_calls[0].kind == "Experts"
    assert spec["experts.w1"].axes == (None, "experts.w1.d1", "inp")
    assert spec["experts.w2"].axes == (None, "inp", "experts.w1.d1")
    assert spec["router.weight"].axes == (None, "inp")
    [broken] = report.broken
    assert "reads neuron positions as values" in broken.reason
    assert nfc.verify(model, spec, x_(7, 5), seed=7).ok


def test_wrapped_stochastic_depth_in_an_efficientnet_block():
    # EfficientNet-B0's MBConv: the residual add goes through the wrapped stochastic_depth;
    # before probing it fixed the stem's stream (8 channels) and both blocks' projections
    arch = CATALOGUE["efficientnet_block"]
    model = model_(arch.factory)
    spec, report = _trace(model, *arch.input_shape)
    assert [p.node for p in report.probes] == ["stochastic_depth", "stochastic_depth_1"]
    assert all(p.passed for p in report.probes) and not report.broken
    for i in (0, 1):
        assert spec[f"blocks.{i}.project.weight"].axes == ("stem", f"blocks.{i}.expand", None, None)
        assert spec[f"blocks.{i}.bn3.weight"].axes == ("stem",)
    assert spec["head.weight"].axes == ("head", "stem", None, None)
    # the probe's verdict is checked again on the whole model, with other random draws
    assert nfc.verify(model, spec, arch.example_input(), seed=7).ok


class ConvNeXtBlock(nn.Module):
    """``x + stochastic_depth(gamma * pw2(gelu(pw1(ln(dwconv(x))))))``, the MLP channels-last,
    stochastic depth opaque (torchvision's ConvNeXt)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.pwconv1, self.pwconv2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.1))

    def forward(self, x):
        y = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        y = self.gamma * self.pwconv2(nn.functional.gelu(self.pwconv1(y)))
        return x + stochastic_depth(y.permute(0, 3, 1, 2), 0.1, self.training)


class ConvNeXt(nn.Module):
    def __init__(self, c: int = 96, depth: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 2, stride=2)
        self.blocks = nn.Sequential(*[ConvNeXtBlock(c) for _ in range(depth)])
        self.norm, self.fc = nn.LayerNorm(c), nn.Linear(c, 10)

    def forward(self, x):
        return self.fc(self.norm(self.blocks(self.stem(x)).mean((2, 3))))


def test_wrapped_stochastic_depth_in_convnext_blocks():
    # hand derivation: the stem's 96 channels are the residual stream (the depthwise conv
    # keeps them, LayerNorm and gamma are indexed by them, pwconv2 adds back into them through
    # the probed stochastic depth); each block's MLP hidden layer is a space of 384. Before
    # probing, the opaque call fixed the stream: 197 spaces, 192 of them one neuron each.
    spec, report = _trace(model_(ConvNeXt), 1, 3, 8, 8)
    assert spaces_(spec) == [
        ("in", 3, "input"), ("stem", 96, "hidden"), ("blocks.0.pwconv1", 384, "hidden"),
        ("blocks.1.pwconv1", 384, "hidden"), ("blocks.2.pwconv1", 384, "hidden"),
        ("out", 10, "output"),
    ]  # fmt: skip
    assert spec["blocks.2.dwconv.weight"].axes == ("stem", None, None, None)
    assert spec["blocks.2.gamma"].axes == ("stem",)
    assert spec["blocks.2.pwconv2.weight"].axes == ("stem", "blocks.2.pwconv1")
    assert [p.passed for p in report.probes] == [True] * 3 and not report.broken


def test_a_stochastic_op_sees_the_same_random_stream_in_both_calls():
    # one random mask per sample, the same for every channel: equivariant, provided the
    # permuted input is dropped like the original (the model's output is random: no verify)
    class Drop(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.fc = nn.Conv2d(3, C, 3), nn.Linear(C, 2)

        def forward(self, x):
            return self.fc(drop_rows(self.a(x)).mean((2, 3)))

    spec, report = trace_with_report(model_(Drop), x_(8, 3, 5, 5), verify=False)
    assert report.probes[0].passed and spec["fc.weight"].axes == ("out", "a")


def test_every_draw_moves_a_two_neuron_group():
    # a random permutation of two neurons is the identity half the time: three such draws
    # test nothing one time in eight (GQA's two key/value heads passed a repeat_interleave
    # probe that does not commute with their swap)
    from nfncompile.frontend.probe import _Group, _permutation

    gen = torch.Generator().manual_seed(0)
    group = _Group(4, [], pieces=[(0, 2, 1), (2, 1, 2)])
    draws = {tuple(_permutation(group, gen).tolist()) for _ in range(20)}
    assert draws == {(1, 0, 2, 3)}


class _PackedAttention(nn.Module):
    """brevitas' packed ``in_proj``: self-attention only, the same tensor three times."""

    def __init__(self) -> None:
        super().__init__()
        self.in_proj, self.out_proj = nn.Linear(8, 24), nn.Linear(8, 8)

    def forward(self, query, key, value):
        if not (query is key and key is value):
            raise RuntimeError("packed in_proj is supported only for self-attention")
        if query.sum() > 0:  # control flow on data: kept as one call, probed
            query = query * 1.0
        q, k, v = self.in_proj(query).chunk(3, dim=-1)
        return self.out_proj(torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v)


class _SelfAttends(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp, self.mha, self.out = nn.Linear(6, 8), _PackedAttention(), nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        return self.out(self.mha(h, h, h))


def test_one_tensor_given_a_kept_call_several_times_is_one_tensor_in_its_probe():
    # before: the probe passed three copies, the call raised, and inp's features were fixed
    spec, report = trace_with_report(model_(_SelfAttends), x_(2, 5, 6))
    [probe] = report.probes
    assert probe.passed and spec.spaces["inp"].size == 8 and report.verification.ok


class _DynamicGRU(nn.Module):
    """DeepCTR's DynamicGRU: a cell run over a PackedSequence's batch sizes, kept as one call
    (fx cannot iterate the batch sizes)."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRUCell(5, 6)

    def forward(self, packed):
        if not isinstance(packed, nn.utils.rnn.PackedSequence):
            raise NotImplementedError("packed input only")
        data, batch_sizes, sorted_indices, unsorted_indices = packed
        hx = torch.zeros(int(batch_sizes[0]), 6, dtype=data.dtype)
        out, begin = torch.zeros(data.size(0), 6, dtype=data.dtype), 0
        for batch in batch_sizes:
            hx = self.rnn(data[begin : begin + batch], hx[:batch])
            out[begin : begin + batch] = hx
            begin += batch
        return nn.utils.rnn.PackedSequence(out, batch_sizes, sorted_indices, unsorted_indices)


class _Packs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin0, self.gru, self.out = nn.Linear(3, 5), _DynamicGRU(), nn.Linear(6, 1)

    def forward(self, x, lengths):
        h = torch.relu(self.lin0(x))
        p = nn.utils.rnn.pack_padded_sequence(h, lengths, batch_first=True, enforce_sorted=False)
        o, _ = nn.utils.rnn.pad_packed_sequence(self.gru(p), batch_first=True, total_length=4)
        return self.out(o).sum(1)


def test_a_kept_call_is_probed_with_the_packed_sequence_the_example_made():
    # before: the probe drew no batch sizes ("a torch.int64 tensor whose values are not
    # recorded") and passed a plain tuple, not a PackedSequence: lin0 was fixed
    x, lengths = x_(3, 4, 3), torch.tensor([2, 4, 3])
    spec, report = trace_with_report(model_(_Packs), (x, lengths), channel_dim=(-1, None))
    assert [p.passed for p in report.probes] == [True] and spec.spaces["lin0"].size == 5
    assert report.verification.ok


def integrate_and_fire(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """spikingjelly's neuron kernel, kept as one call: its state starts at ``full_like``."""
    v = v + x
    return (v > 0.5).to(x.dtype) + 0.1 * v


torch.fx.wrap("integrate_and_fire")


class _Fires(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x):
        h = self.a(x)
        return self.b(integrate_and_fire(h, torch.full_like(h, 0.25)))


def test_a_uniform_input_of_a_probed_call_is_drawn_uniform():
    # full_like is uniform: drawn at random position by position, the probe found the call
    # not equivariant and fixed a's units
    spec, report = trace_with_report(model_(_Fires), x_(3, 4))
    assert [p.passed for p in report.probes] == [True] and spec.spaces["a"].size == 6
    assert report.verification.ok
