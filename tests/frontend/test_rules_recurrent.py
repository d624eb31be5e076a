"""nfncompile.frontend.rules.recurrent: the hidden units of RNN, GRU and LSTM layers."""

from __future__ import annotations

import pytest
import torch
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
    # `isinstance(final, tuple)` of the layer's kept outputs: plain fx answered no and read
    # c_n for h_n (the graph differed from the model); traced at the example's shapes
    assert report.graph_differs == ""
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


class Stepped(nn.Module):
    """A cell stepped by the forward's own loop over ``(batch, features, time)`` inputs,
    from zero states (time_sequence_prediction's LSTMCell)."""

    def __init__(self, cell: type) -> None:
        super().__init__()
        self.cell, self.head = cell(4, 6), nn.Linear(6, 2)

    def forward(self, x):
        h = torch.zeros(x.shape[0], 6)
        state = (h, torch.zeros_like(h)) if isinstance(self.cell, nn.LSTMCell) else h
        for t in range(x.shape[2]):
            state = self.cell(x[:, :, t], state)
        return self.head(state[0] if isinstance(self.cell, nn.LSTMCell) else state)


@pytest.mark.parametrize("cell", [nn.RNNCell, nn.GRUCell, nn.LSTMCell])
def test_a_cell_stepped_by_the_forward_moves_its_units(cell):
    # torch.lstm_cell (and gru_cell, rnn_tanh_cell) had no rule: probed, each step fixed the
    # cell's units
    spec, report = trace_with_report(model_(lambda: Stepped(cell)), x_(3, 4, 5))
    gates = {nn.RNNCell: 1, nn.GRUCell: 3, nn.LSTMCell: 4}[cell]
    rows = ("cell",) * gates if gates > 1 else "cell"
    assert spec["cell.weight_hh"].axes == (rows, "cell")
    assert spec["cell.weight_ih"].axes == (rows, "in") and spec["head.weight"].axes[1] == "cell"
    assert report.verification.ok and not report.probes and not report.broken
    layer = nfc.NFLinear(spec, 1, 1, basis="linear").double()
    assert_equivariant(layer, spec, in_channels=1, trials=2)


class GivenState(nn.Module):
    """word_language_model's RNNModel: token ids and the initial state are the inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.rnn, self.head = nn.Embedding(9, 4), nn.GRU(4, 6), nn.Linear(6, 2)

    def forward(self, ids, h0):
        out, h = self.rnn(self.emb(ids), h0)
        return self.head(out), h


def test_an_initial_state_given_as_input_meets_its_sequence():
    # the state (layers, batch, hidden) was the first float input, so its dim 1 (the batch)
    # was labelled as input neurons, and nothing tied it to the sequence's batch: a spec
    # that did not hold (SymmetryError)
    ids = torch.randint(0, 9, (5, 2), generator=torch.Generator().manual_seed(0))
    spec, report = trace_with_report(model_(GivenState), (ids, x_(1, 2, 6)))
    assert report.verification.ok and "in" not in spec.spaces
    assert spec["rnn.weight_hh_l0"].axes[1] is None  # the given state is not permuted


class HandWrittenGRU(nn.Module):
    """A GRU written out with two layers per step, stepped from a zero state (torchaudio's
    RNN-T LSTM, ConvGRU video models): the first step applies ``h2h`` to zeros. ``conv``: the
    cell's layers are 3x3 convolutions over ``(batch, features, time, H, W)`` inputs."""

    def __init__(self, conv: bool, steps: int = 3) -> None:
        super().__init__()
        self.conv, self.steps = conv, steps
        layer = (lambda i, o: nn.Conv2d(i, o, 3, padding=1)) if conv else nn.Linear
        self.x2h, self.h2h, self.head = layer(4, 18), layer(6, 18), layer(6, 2)

    def forward(self, x):
        split = 1 if self.conv else -1
        n = x.shape[0]
        h = torch.zeros(n, 6, x.shape[3], x.shape[4]) if self.conv else torch.zeros(n, 6)
        for t in range(self.steps):
            rx, zx, nx = self.x2h(x[:, :, t]).chunk(3, split)
            rh, zh, nh = self.h2h(h).chunk(3, split)
            r, z = torch.sigmoid(rx + rh), torch.sigmoid(zx + zh)
            h = (1 - z) * torch.tanh(nx + r * nh) + z * h
        return self.head(h)


@pytest.mark.parametrize("conv", [False, True])
def test_a_layer_applied_to_a_zero_state_leaves_its_units_free(conv):
    # the first step's h2h(zeros) labelled h2h's input axis as fixed, and the next step's
    # h2h(h) then fixed the hidden units ('indexed by neurons in one use, fixed in another')
    x = x_(2, 4, 3, 5, 5) if conv else x_(2, 4, 3)
    spec, report = trace_with_report(model_(lambda: HandWrittenGRU(conv)), x)
    assert report.verification.ok and not report.probes
    assert not [b for b in report.broken if "h2h" in b.op], report.broken
    hidden = spec["h2h.weight"].axes[1]
    assert hidden is not None and spec.spaces[hidden].role == "hidden"
    assert spec["head.weight"].axes[1] == hidden
    assert spec["x2h.weight"].axes[0] == spec["h2h.weight"].axes[0] == (hidden,) * 3
    layer = nfc.NFLinear(spec, 1, 1, basis="linear").double()
    assert_equivariant(layer, spec, in_channels=1, trials=2)


def test_a_layer_only_ever_applied_to_a_constant_keeps_its_input_axis_fixed():
    # one step: h2h only ever meets zeros, so nothing gives its input axis a space
    spec, report = trace_with_report(model_(lambda: HandWrittenGRU(False, steps=1)), x_(2, 4, 3))
    assert report.verification.ok
    assert spec["h2h.weight"].axes[1] is None


class Packed(nn.Module):
    """Sequences of several lengths packed for the recurrent layer and padded back after it,
    the final state read too (the usual variable-length tagger)."""

    def __init__(self, cell: type, layers: int, bidirectional: bool) -> None:
        super().__init__()
        self.emb = nn.Linear(4, 6)
        self.rnn = cell(6, 5, num_layers=layers, bidirectional=bidirectional, batch_first=True)
        self.head = nn.Linear(5 * (1 + bidirectional), 2)
        self.state = nn.Linear(5, 2)

    def forward(self, x, lengths):
        packed = nn.utils.rnn.pack_padded_sequence(
            self.emb(x), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        out, final = self.rnn(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True)
        h = final[0] if isinstance(final, tuple) else final
        return self.head(out).mean(1) + self.state(h[-1])


@pytest.mark.parametrize("cell", [nn.GRU, nn.LSTM])
@pytest.mark.parametrize(("layers", "bidirectional"), [(1, False), (2, True)])
@pytest.mark.parametrize("fake", [False, True])
def test_a_packed_sequence_moves_the_layers_units(cell, layers, bidirectional, fake):
    # before: fx refused packing's checks of the lengths (a TraceError), and with packing
    # recorded the layer's rule refused a packed input, fixing every unit
    x, lengths = x_(3, 7, 4), torch.tensor([7, 2, 5])
    spec, report = trace_with_report(
        model_(lambda: Packed(cell, layers, bidirectional)), (x, lengths), channel_dim=-1, fake=fake
    )
    assert report.verification.ok and not report.probes and not report.broken
    h = spec["rnn.weight_hh_l0"].axes[1]
    assert spec.spaces[h].role == "hidden"
    assert spec["rnn.weight_ih_l0"].axes[1] == spec["emb.weight"].axes[0] == "emb"
    assert spec["state.weight"].axes[1] == h  # h_n read: every layer's units are one run
    if layers == 1:
        assert spec["head.weight"].axes[1] == h
    layer = nfc.NFLinear(spec, 1, 1, basis="linear").double()
    assert_equivariant(layer, spec, in_channels=1, trials=2)


class LengthsLSTM(nn.LSTM):
    """pytorch-forecasting's LSTM: a subclass whose forward packs its input by the lengths
    it is given and calls the base class's forward (which fx cannot trace)."""

    def forward(self, x, hx=None, lengths=None):
        if lengths is None:
            return super().forward(x, hx)
        packed = nn.utils.rnn.pack_padded_sequence(
            x, lengths.cpu(), batch_first=self.batch_first, enforce_sorted=False
        )
        out, state = super().forward(packed, hx)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=self.batch_first)
        return out, state


class Forecaster(nn.Module):
    def __init__(self, lengths: bool) -> None:
        super().__init__()
        self.lengths = lengths
        self.emb = nn.Linear(4, 6)
        self.rnn = LengthsLSTM(6, 5, batch_first=True)
        self.head = nn.Linear(5, 2)

    def forward(self, x, lengths):
        out, _ = self.rnn(self.emb(x), lengths=lengths if self.lengths else None)
        return self.head(out).mean(1)


@pytest.mark.parametrize("lengths", [False, True])
def test_a_subclass_calling_its_base_forward_is_read_by_the_base_rule(lengths):
    # before: fx went into nn.LSTM.forward, refused its checks, kept the subclass as one call
    # and fixed its units (nothing verified them free)
    x, n = x_(3, 7, 4), torch.tensor([7, 2, 5])
    spec, report = trace_with_report(model_(lambda: Forecaster(lengths)), (x, n), channel_dim=-1)
    assert report.verification.ok and not report.probes and not report.leaf_calls
    h = spec["rnn.weight_hh_l0"].axes[1]
    assert spec.spaces[h].role == "hidden" and spec["head.weight"].axes[1] == h
    assert spec["rnn.weight_ih_l0"].axes[1] == spec["emb.weight"].axes[0]
    layer = nfc.NFLinear(spec, 1, 1, basis="linear").double()
    assert_equivariant(layer, spec, in_channels=1, trials=2)


class PaddedConv(nn.Conv1d):
    """pytorch-tcn's TemporalConv1d: pads causally, then the base class's forward."""

    def forward(self, x):
        return super().forward(nn.functional.pad(x, (2, 0)))


@pytest.mark.parametrize("weight_norm", [False, True])
def test_a_base_forward_fx_traces_is_still_traced(weight_norm):
    # only a base class whose forward fx refuses (a recurrent layer's) is recorded as one
    # call: recorded, a conv's (a) was read by its rule against a weight norm's computed weight
    # (a SymmetryError) and (b) ran the subclass's padding twice in the traced graph
    def make():
        conv = PaddedConv(3, 6, 3)
        if weight_norm:
            conv = nn.utils.parametrizations.weight_norm(conv)
        return nn.Sequential(conv, nn.ReLU(), nn.Conv1d(6, 2, 1))

    spec, report = trace_with_report(model_(make), x_(2, 3, 8))
    assert report.verification.ok and report.graph_differs == ""
    assert [s.size for s in spec.spaces.values() if s.role == "hidden"] == [6]


class PaddedList(nn.Module):
    """Sequences of several lengths given one by one, padded into a batch
    (``pad_sequence``) or packed (``pack_sequence``, which pads and packs)."""

    def __init__(self, packed: bool) -> None:
        super().__init__()
        self.packed = packed
        self.emb = nn.Linear(4, 6)
        self.rnn = nn.GRU(6, 5, batch_first=True)
        self.head = nn.Linear(5, 2)

    def forward(self, a, b):
        xs = [self.emb(a), self.emb(b)]
        if self.packed:
            x = nn.utils.rnn.pack_sequence(xs, enforce_sorted=False)
        else:
            x = nn.utils.rnn.pad_sequence(xs, batch_first=True)
        _, h = self.rnn(x)
        return self.head(h[-1])


@pytest.mark.parametrize("packed", [False, True])
def test_sequences_padded_into_a_batch_keep_their_features(packed):
    # pad_sequence had no rule: it was probed (and passed) at every trace
    spec, report = trace_with_report(
        model_(lambda: PaddedList(packed)), (x_(5, 4), x_(3, 4, seed=1)), channel_dim=-1
    )
    assert report.verification.ok and not report.probes and not report.broken
    assert spec["rnn.weight_ih_l0"].axes[1] == spec["emb.weight"].axes[0] == "emb"
    assert spec["head.weight"].axes[1] == spec["rnn.weight_hh_l0"].axes[1]
