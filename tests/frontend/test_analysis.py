"""nfncompile.frontend.analysis: the label-propagation Interpreter and its constraint helpers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nfncompile.errors import TraceError
from nfncompile.frontend import register_function
from nfncompile.frontend.analysis import SymmetryAnalysis
from nfncompile.frontend.fx import trace_module
from nfncompile.frontend.labels import Seg, TensorLabels
from nfncompile.frontend.rules import FUNCTION_RULES, Unsupported
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
