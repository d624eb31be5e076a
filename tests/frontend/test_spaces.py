"""nfncompile.frontend.spaces: solving the graph's constraints into one Derivation record."""

from __future__ import annotations

import torch
from torch import nn

from nfncompile.frontend.derivation import Derivation, TensorAxes
from nfncompile.frontend.fx import trace_module
from nfncompile.frontend.graph import build_symmetry_graph
from nfncompile.frontend.spaces import derive_spaces
from nfncompile.frontend.tracing import trace_with_report
from tests.frontend.helpers import CatSplit, TwoLinear, model_, x_


def _derive(model: nn.Module, x) -> Derivation:
    return derive_spaces(build_symmetry_graph(trace_module(model, x), model))


def test_cuts_propagate_through_ties_and_names_are_unique():
    d = _derive(model_(CatSplit), x_(3, 4))
    # c's 7 outputs: [0:3] feed d, [3:5] are tied to d's output, [5:7] are summed
    assert list(d.spaces) == ["in", "a", "b", "c/0", "c/1", "out"]
    assert d.space("out").atoms == [(3, 3, 5), (4, 0, 2)]  # c[3:5] and d's output
    assert d.space("out").origins == ["c", "d"]
    assert d.spec["c.weight"].axes == (("c/0", "out", "c/1"), ("a", "b"))
    assert d.space("c/0").params == ["c.weight[0]", "c.bias[0]", "d.weight[1]"]


def test_the_record_holds_spec_io_provenance_and_run_spaces():
    model = model_(TwoLinear)
    d = _derive(model, x_(5, 4))
    assert [p.name for p in d.spec.params] == list(model.state_dict())
    assert d.io.inputs == (TensorAxes((5, 4), None, (None, "in")),)
    assert d.io.outputs == (TensorAxes((5, 3), None, (None, "out")),)
    assert d.space("a").origins == ["a"] and "Linear a" in d.space("a").touched
    assert sorted(set(d.run_space.values())) == ["a", "in", "out"]
    assert d.broken == []


class Flattened(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 3, 1), nn.Linear(12, 2)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))


def test_flattened_channels_give_views_on_params():
    d = _derive(model_(Flattened), x_(2, 1, 2, 2))
    fc = d.spec["fc.weight"]
    assert (fc.view, fc.axes) == ((2, 3, 4), ("out", "conv", None))


class _Tables(nn.Module):
    """A position table added to tokens (its rows meet positions: not a symmetry broken), and
    a per-channel scale whose channels an unknown op fixed (reported, at that op)."""

    def __init__(self) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(5, 4))
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)
        self.scale = nn.Parameter(torch.ones(6))

    def forward(self, x):  # (batch, 5 tokens, 4 features)
        h = self.a(x + self.pos)
        return self.b(torch.fft.fft(h).real * self.scale)


def test_a_parameter_axis_met_only_by_positions_is_not_reported_broken():
    spec, report = trace_with_report(model_(_Tables), x_(2, 5, 4), channel_dim=-1)
    assert spec["pos"].axes == (None, "in") and report.verification.ok
    # the fft fixed a's neurons (reported); the table's rows and the scale's channels,
    # which then meet only positions, are not listed as symmetry the model broke
    assert [(b.neurons, b.count) for b in report.broken] == [(["a"], 6)]
    assert all(
        "pos" not in name and "scale" not in name for b in report.broken for name in b.neurons
    )


@torch.fx.wrap
def _lookup(ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    if bool(table.isnan().any()):  # a check on a weight's values: fx cannot trace it
        raise ValueError("NaN in the table")
    return table[ids].sum(1)


class _Unprobed(nn.Module):
    """A table read by a function no rule knows, whose probe fails (it reads rows at the ids)
    and which no trace can go through (it checks the table's values): its axes are fixed by
    that op, and the report says so."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(10, 4))
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x, ids):
        return self.b(torch.relu(self.a(x)) * _lookup(ids, self.table))


def test_a_parameter_fixed_by_an_op_no_rule_knows_is_reported():
    ids = torch.randint(0, 10, (2, 3), generator=torch.Generator().manual_seed(0))
    spec, report = trace_with_report(model_(_Unprobed), (x_(2, 3), ids))
    assert report.verification.ok and spec["table"].axes == (None, None)
    assert any("table.d1" in b.neurons for b in report.broken if "_lookup" in b.op)
