"""nfncompile.frontend.analysis: the label-propagation Interpreter and its constraint helpers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nfncompile as nfc
from nfncompile.errors import TraceError
from nfncompile.frontend import register_function
from nfncompile.frontend.analysis import SymmetryAnalysis
from nfncompile.frontend.fx import trace_module
from nfncompile.frontend.labels import UNIFORM, Prod, Seg, TensorLabels
from nfncompile.frontend.rules import FUNCTION_RULES, Unsupported
from nfncompile.frontend.tracing import trace_with_report
from nfncompile.testing import assert_equivariant
from tests.frontend.helpers import model_, x_


def _analysis(model: nn.Module, x: torch.Tensor) -> tuple:
    gm = trace_module(model, x)
    a = SymmetryAnalysis(gm, model)
    a.run(*[None for n in gm.graph.nodes if n.op == "placeholder"], enable_io_processing=False)
    return gm, a


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def test_labels_are_stored_on_the_nodes():
    gm, a = _analysis(model_(_mlp), x_(5, 3))
    relu = next(n for n in gm.graph.nodes if n.target == "1")
    info = relu.meta["nfn_labels"]
    assert isinstance(info, TensorLabels) and info.shape == (5, 4)
    assert info.labels == (None, (Seg(1, 0, 4),))
    assert [r.origin for r in a.runs] == ["in", "0", "2"]
    assert a.params["0.weight"].axes == [(Seg(1, 0, 4),), (Seg(0, 0, 3),)]


def test_tie_splits_at_segment_boundaries_and_cut_records_positions():
    _, a = _analysis(model_(_mlp), x_(5, 3))
    a.ties.clear()
    a.tie((Seg(1, 0, 4),), (Seg(0, 0, 3), Seg(2, 0, 1)))
    assert [(t.a, t.a_off, t.b, t.b_off, t.length) for t in a.ties] == [
        (1, 0, 0, 0, 3),
        (1, 3, 2, 0, 1),
    ]
    a.cut((Seg(1, 0, 4),), 2)
    assert a.cuts[-1][:2] == (1, 2)
    assert a.slice_label((Seg(1, 0, 2, inner=3),), 3, 6) == (Seg(1, 1, 1, inner=3),)
    with pytest.raises(Unsupported, match="slices through a flattened neuron"):
        a.slice_label((Seg(1, 0, 2, inner=3),), 1, 6)


def scale_first(x):
    return x * 2.0


torch.fx.wrap("scale_first")


class CallsWrapped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4)

    def forward(self, x):
        return scale_first(self.a(x))


def test_a_rule_that_raises_is_reraised_with_the_node(monkeypatch):
    def broken_rule(a, args, kwargs):
        raise ValueError("boom")

    monkeypatch.setitem(FUNCTION_RULES, scale_first, broken_rule)
    with pytest.raises(TraceError, match=r"symmetry analysis failed at node .*scale_first.*boom"):
        _analysis(model_(CallsWrapped), x_(2, 3))


def test_unknown_calls_go_through_one_fallback(monkeypatch):
    seen = []

    def unknown(self, args, kwargs):
        seen.append(self.op)
        return self.fallback(args, kwargs, "probed nothing")

    monkeypatch.setattr(SymmetryAnalysis, "unknown", unknown)
    _, a = _analysis(model_(CallsWrapped), x_(2, 3))
    assert seen == ["scale_first (scale_first)"]
    assert [b.reason for b in a.broken] == ["probed nothing"]


def test_registering_a_rule_makes_an_unknown_call_known(monkeypatch):
    monkeypatch.setitem(FUNCTION_RULES, scale_first, None)
    register_function(scale_first)(lambda a, args, kwargs: a.broadcast([args[0]]))
    _, a = _analysis(model_(CallsWrapped), x_(2, 3))
    assert not a.broken


def test_uniform_and_product_labels_in_ties_and_plain_rules():
    _, a = _analysis(model_(_mlp), x_(5, 3))
    a.ties.clear()
    r = (Seg(1, 0, 4),)
    assert a.tie(UNIFORM, r) == r and a.tie(r, UNIFORM) == r and not a.ties
    p = Prod(((Seg(1, 0, 4),), (Seg(0, 0, 3),)), (4, 3))
    q = Prod(((Seg(2, 0, 2), Seg(2, 0, 2)), (Seg(0, 0, 3),)), (4, 3))
    assert a.tie(p, q) == p and [(t.a, t.b) for t in a.ties] == [(1, 2), (1, 2)]
    plain = a.plain(TensorLabels((5, 12, 7), (None, p, UNIFORM)), "a test rule")
    # the largest factor's neurons kept, each spanning the 3 positions of the one after it
    assert plain.labels == (None, (Seg(1, 0, 4, 3),), None)
    assert a.broken[-1].reason == "a test rule reads a flattened product of neuron axes"
    assert a.fixes[-1][0] == 0


def test_link_blocks_records_the_alternative_instead_of_applying_it():
    _, a = _analysis(model_(_mlp), x_(5, 3))
    n_ties, n_cuts = len(a.ties), len(a.cuts)
    r, inner = (Seg(1, 0, 4),), (Seg(0, 0, 2),)

    def alternative():
        a.tie(a.slice_label(r, 0, 2), inner)
        a.tie(a.slice_label(r, 2, 4), inner)
        a.cut(r, 2)
        a.fix(inner, "recorded")

    a.link_blocks(2, (r,), ((inner, 0, 0),), "test", alternative)
    (link,) = a.links
    assert (len(a.ties), len(a.cuts)) == (n_ties, n_cuts) and not a.broken
    assert len(link.ties) == 2 and [c[:2] for c in link.cuts] == [(1, 2)]
    assert link.fixes == [((Seg(0, 0, 2),), "recorded")] and link.count == 2


def test_constant_buffers_repeated_over_a_dim_are_uniform_along_it():
    class Const(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("rep", torch.ones(4, 1) * torch.arange(3.0), persistent=False)
            self.register_buffer("pos", torch.arange(12.0).reshape(4, 3), persistent=False)
            self.a = nn.Linear(3, 3)

        def forward(self, x):
            return self.a(x) * self.rep + self.pos

    gm, _ = _analysis(model_(Const), x_(4, 3))
    rep, pos = (n.meta["nfn_labels"] for n in gm.graph.nodes if n.op == "get_attr")
    assert rep.labels == (UNIFORM, None) and pos.labels == (None, None)


class _PlainMeetsBlocks(nn.Module):
    """PNASNet's reduction cell: a 1x1 conv's output added to a depthwise conv with two
    outputs per channel (each input neuron spans two output positions)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.dw = nn.Conv2d(4, 8, 3, padding=1, groups=4)
        self.pw = nn.Conv2d(4, 8, 1)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        return self.head((self.dw(h) + self.pw(h)).mean((2, 3)))


@pytest.mark.parametrize("mode", ["np", "hnp"])
@pytest.mark.parametrize(
    ("factory", "key", "axes", "view"),
    [
        (_PlainMeetsBlocks, "pw.weight", ("stem", None, "stem", None, None), (4, 2, 4, 1, 1)),
    ],
)
def test_a_plain_run_tied_to_neurons_spanning_two_positions_is_made_in_blocks(
    factory, key, axes, view, mode
):
    # the tie fixed both sides (PNASNet-A: 2 spaces, in and out); the plain run is now made of
    # neurons spanning two positions, each moving with one neuron of the other side
    spec, report = trace_with_report(model_(factory), x_(2, 3, 5, 5), mode=mode)
    assert (spec[key].axes, spec[key].view) == (axes, view)
    assert not report.broken and report.verification.ok
    layer = nfc.NFLinear(spec, 1, 1, mode=mode, basis="linear").double()
    assert_equivariant(layer, spec, in_channels=1, trials=2)


class _Positions(nn.Module):
    """A positional table longer than the example (``pe[:T]``, the PyTorch tutorial's
    PositionalEncoding) and a weight read in two halves."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)
        self.pe = nn.Parameter(torch.randn(10, 4))
        self.w = nn.Parameter(torch.randn(6, 4))

    def forward(self, x):  # x: (T, 3)
        h = torch.relu(self.a(x)) + self.pe[: x.shape[0]]
        return self.b(h) + (h @ self.w[:3].t()).sum(-1, keepdim=True) + h @ self.w[3:5].t()


def test_rows_the_example_does_not_read_are_positions():
    # rows T..9 of the table were a free hidden space: permuting them left the traced output
    # alone, but changes it for a longer input
    spec, report = trace_with_report(model_(_Positions), x_(5, 3))
    assert spec["pe"].axes == (None, "a") and "pe.d0" not in spec.spaces
    # the halves of w are both read; the row nothing reads (5) is fixed with the others
    assert spec["w"].axes[1] == "a" and report.verification.ok
    unread = [b for b in report.broken if "not read at the example's shapes" in b.reason]
    assert unread and unread[0].count == 5 + 1


class _CombinedFeatures(nn.Module):
    """A policy's feature extractor (stable-baselines3's CombinedExtractor): a CNN's flattened
    features concatenated with a vector observation, then an MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.cnn = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.Flatten())
        self.mlp = nn.Sequential(nn.Linear(4 * 3 * 3 + 5, 8), nn.Tanh(), nn.Linear(8, 2))

    def forward(self, obs):
        return self.mlp(torch.cat([self.cnn(obs["image"]), obs["vector"]], dim=1))


def test_plain_neurons_next_to_flattened_ones_keep_their_space():
    # before: one weight axis reading 4 channels x 9 positions and 5 plain features could not
    # be one view of it, and all 9 neurons were fixed; the plain ones are now kept
    obs = {"image": x_(2, 3, 7, 7), "vector": x_(2, 5, seed=1)}
    spec, report = trace_with_report(model_(_CombinedFeatures), (obs,))
    assert report.verification.ok
    vector = spec["mlp.0.weight"].axes[1][1]
    assert spec["mlp.0.weight"].axes[1] == (36, vector) and spec.spaces[vector].size == 5
    assert [(b.neurons, b.count) for b in report.broken] == [(["cnn.0"], 4)]
    assert_equivariant(nfc.NFLinear(spec, 1, 2), spec, trials=2)


class _ConstantColumn(nn.Module):
    """A constant column concatenated to a layer's output, then read back on its own."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x):
        z = torch.cat([self.a(x), torch.ones(x.shape[0], 1)], 1)
        gate = z[:, 8:].reshape(x.shape[0])  # drops the constant's one-position axis
        return self.b(torch.relu(z[:, :8])) * gate[:, None]


def test_fixing_only_a_constants_positions_is_not_reported_as_broken():
    # before: "reshape drops a one-neuron axis; fixed 0 ()" and "1 broke symmetry"
    spec, report = trace_with_report(model_(_ConstantColumn), x_(3, 4))
    assert report.verification.ok and not report.broken
    assert "0 broke symmetry" in str(report)
    assert [(s.name, s.size) for s in spec.spaces.values()] == [("in", 4), ("a", 8), ("out", 2)]


class Masked(nn.Module):
    """A linear layer whose weight is masked by a constant (a non-persistent bool buffer, as
    zuko's ``MaskedLinear`` and a sparse or grouped layer keep it)."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.pre, self.a, self.post = nn.Linear(3, 6), nn.Linear(6, 6), nn.Linear(6, 2)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x):
        h = torch.relu(self.pre(x))
        h = torch.relu(nn.functional.linear(h, self.a.weight * self.mask, self.a.bias))
        return self.post(h)


MASKS = {
    # two blocks of three units, each reading its own block: each block's units exchangeable
    "blocks": (torch.block_diag(torch.ones(3, 3), torch.ones(3, 3)).bool(), [3, 3]),
    # every unit reads the same inputs: one space
    "dense": (torch.ones(6, 6, dtype=torch.bool), [6]),
    # units of one degree taken in turn (MADE): equal rows apart, which no space can hold
    "made": (torch.tensor([0, 1] * 3)[:, None] >= torch.tensor([0, 1] * 3)[None], None),
}


@pytest.mark.parametrize("case", sorted(MASKS))
def test_a_constant_mask_leaves_the_units_of_its_equal_rows_free(case):
    # a mask the group does not act on fixed both axes of the weight it multiplies, and with
    # them the layers around it
    mask, sizes = MASKS[case]
    spec, report = trace_with_report(model_(lambda: Masked(mask)), x_(5, 3))
    assert report.verification.ok and not report.probes
    rows, cols = spec["a.weight"].axes
    if sizes is None:
        assert rows is None and cols is None
        return
    names = rows if isinstance(rows, tuple) else (rows,)
    assert [spec.spaces[n].size for n in names] == sizes
    assert cols == spec["pre.weight"].axes[0] and spec["post.weight"].axes[1] == rows
    layer = nfc.NFLinear(spec, 1, 1, basis="linear").double()
    assert_equivariant(layer, spec, in_channels=1, trials=2)


class SegmentMasked(nn.Module):
    """Attention over time with a constant mask whose rows repeat within segments (Emformer's
    segment mask): where it meets positions, its equal slices are positions too."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.out = nn.Linear(3, 4), nn.Linear(3, 4), nn.Linear(3, 2)
        mask = torch.block_diag(*[torch.ones(2, 2)] * 3) == 0
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x):  # (batch, 6 steps, 3 features)
        scores = (self.q(x) @ self.k(x).transpose(1, 2)).masked_fill(self.mask, -1e9)
        return self.out(torch.softmax(scores, -1) @ x)


def test_a_constant_meeting_positions_breaks_no_symmetry():
    spec, report = trace_with_report(model_(SegmentMasked), x_(2, 6, 3), channel_dim=-1)
    assert report.verification.ok and not report.probes and not report.broken
    assert spec["q.weight"].axes == spec["k.weight"].axes == ("q", "in")


class _KeywordCalls(nn.Module):
    """Every layer called with keyword arguments (darts' TFT calls its LSTMs
    ``self.lstm_encoder(input=x, hx=(h, c))``), one of them a subclass's ``super().forward``."""

    class _Norm(nn.LayerNorm):
        def forward(self, input):
            return super().forward(input=input)

    def __init__(self) -> None:
        super().__init__()
        self.lin, self.conv = nn.Linear(3, 4), nn.Conv1d(4, 5, 3, padding=1)
        self.norm, self.lstm = self._Norm(5), nn.LSTM(5, 6, batch_first=True)
        self.cell, self.out = nn.GRUCell(6, 6), nn.Linear(6, 2)

    def forward(self, x):  # (batch, time, 3)
        h = self.conv(input=self.lin(input=x).transpose(1, 2)).transpose(1, 2)
        zero = torch.zeros(1, x.shape[0], 6, dtype=x.dtype)
        o, (hn, _) = self.lstm(input=self.norm(input=h), hx=(zero, zero))
        return self.out(input=self.cell(input=o[:, -1], hx=hn[0]))


def test_layers_called_with_keyword_arguments_are_read_as_called_by_position():
    # before: "symmetry analysis failed at node %lin ...: IndexError: tuple index out of
    # range" (module rules read their input by position)
    model = model_(_KeywordCalls).double()
    spec, report = trace_with_report(model, x_(2, 4, 3).double(), channel_dim=-1)
    assert report.verification.ok and not report.probes
    assert spec["lin.weight"].axes[0] == spec["conv.weight"].axes[1] is not None
    assert spec["cell.weight_hh"].axes[1] == spec["out.weight"].axes[1] is not None
    assert_equivariant(nfc.NFLinear(spec, 1, 2).double(), spec, trials=2)
