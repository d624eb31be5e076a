"""nfncompile.frontend.rules.recurrent: the hidden units of RNN, GRU and LSTM layers."""

from __future__ import annotations

import pytest
from torch import nn

import nfncompile as nfc
from nfncompile.frontend.rules.recurrent import GATES
from nfncompile.frontend.tracing import trace_with_report
from nfncompile.testing import assert_equivariant
from tests.frontend.helpers import model_, x_


class Sequence(nn.Module):
    """A recurrent layer over ``(batch, features, time)`` inputs, read at its last step or
    through its final hidden state."""

    def __init__(self, cell: type, layers: int, bidirectional: bool, states: bool) -> None:
        super().__init__()
        self.states = states
        self.rnn = cell(4, 6, num_layers=layers, bidirectional=bidirectional, batch_first=True)
        self.head = nn.Linear(6 if states else 6 * (1 + bidirectional), 2)

    def forward(self, x):
        out, final = self.rnn(x.transpose(1, 2))
        if self.states:  # h_n stacks every layer and direction
            h = final[0] if isinstance(final, tuple) else final
            return self.head(h[-1])
        return self.head(out[:, -1])


@pytest.mark.parametrize("cell", [nn.RNN, nn.GRU, nn.LSTM])
@pytest.mark.parametrize(
    ("layers", "bidirectional", "states"), [(1, False, False), (2, True, False), (2, True, True)]
)
def test_hidden_units_move_in_every_gate_alike(cell, layers, bidirectional, states):
    # no rule: the layer was probed, and every unit fixed
    spec, report = trace_with_report(
        model_(lambda: Sequence(cell, layers, bidirectional, states)), x_(3, 4, 5)
    )
    assert report.verification.ok and not report.probes
    gates = GATES[model_(lambda: cell(1, 1)).mode]
    h = spec["rnn.weight_hh_l0"].axes[1]
    assert spec.spaces[h].role == "hidden"
    rows = (h,) * gates if gates > 1 else h  # one gate: a plain axis
    assert spec["rnn.weight_hh_l0"].axes == (rows, h)
    assert spec["rnn.weight_ih_l0"].axes == (rows, "in")
    if layers == 2:
        last = spec["rnn.weight_hh_l1_reverse"].axes[1]
        # reading h_n ties every layer's units; else each layer and direction is its own
        assert (last == h) is states
    layer = nfc.NFLinear(spec, 1, 1, basis="linear").double()
    assert_equivariant(layer, spec, in_channels=1, trials=2)
