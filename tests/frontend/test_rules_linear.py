"""nfncompile.frontend.rules.linear: dense layers, shared modules."""

from __future__ import annotations

import torch
from torch import nn

import nfncompile as nfc
from tests.frontend.helpers import model_, spaces_, x_


class Tied(nn.Module):
    """The same Linear applied twice: its input and output neurons are one space."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.shared, self.out = nn.Linear(3, 5), nn.Linear(5, 5), nn.Linear(5, 2)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        return self.out(self.shared(torch.tanh(self.shared(h))))


def test_module_called_twice_ties_its_spaces():
    spec = nfc.trace(model_(Tied), x_(4, 3))
    assert spec["shared.weight"].axes == ("inp", "inp")
    assert spaces_(spec) == [("in", 3, "input"), ("inp", 5, "hidden"), ("out", 2, "output")]


class Mixer(nn.Module):
    """An MLP-Mixer block: a token-mixing MLP over the 16 patch positions, then a channel MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 2, stride=2)
        self.token1, self.token2 = nn.Linear(16, 12), nn.Linear(12, 16)
        self.ch1, self.ch2 = nn.Linear(8, 16), nn.Linear(16, 8)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        x = self.stem(x).flatten(2).transpose(1, 2)  # (B, 16 positions, 8 channels)
        t = self.token2(torch.nn.functional.gelu(self.token1(x.transpose(1, 2))))
        x = x + t.transpose(1, 2)
        x = x + self.ch2(torch.nn.functional.gelu(self.ch1(x)))
        return self.fc(x.mean(1))


def test_a_token_mixing_mlp_reads_positions_which_stay_fixed():
    spec, report = nfc.trace_with_report(model_(Mixer), x_(2, 3, 8, 8))
    # the token MLP's hidden units permute; its 16 outputs are added onto positions: fixed
    assert spaces_(spec) == [("in", 3, "input"), ("stem", 8, "hidden"), ("token1", 12, "hidden"),
                             ("ch1", 16, "hidden"), ("out", 2, "output")]  # fmt: skip
    assert spec["token1.weight"].axes == ("token1", None)
    assert spec["token2.weight"].axes == (None, "token1")
    (b,) = report.broken
    assert b.reason == "combined elementwise with a tensor that depends on position"
    assert b.neurons == ["token2"] and b.count == 16
    assert report.verification.ok


class Conv1D(nn.Module):
    """Hugging Face's GPT-2 ``Conv1D``: a dense layer as ``torch.addmm(bias, x, weight)``, its
    weight stored ``(in, out)``."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out))
        self.bias = nn.Parameter(torch.randn(n_out))

    def forward(self, x):
        return torch.addmm(self.bias, x, self.weight)


class AddmmMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.proj = Conv1D(4, 6), Conv1D(5, 3)
        self.gw, self.gb = nn.Parameter(torch.randn(1, 6, 5)), nn.Parameter(torch.randn(5))

    def forward(self, x):
        h = torch.relu(self.fc(x))
        w = self.gw.expand(h.shape[0], 6, 5)
        g = torch.baddbmm(self.gb, h[:, None, :], w, beta=0.5, alpha=2.0)[:, 0, :]
        return self.proj.bias.addmm(torch.tanh(g), self.proj.weight)  # the method form


def test_addmm_and_baddbmm_are_a_matmul_added_to_their_input():
    # without a rule each was probed as one call, found not equivariant (its weight moves
    # with the neurons, which the probe does not move), and fixed every space; the output
    # neurons are the weight's axis, named after its module
    model = model_(AddmmMLP)
    spec, report = nfc.trace_with_report(model, x_(3, 4))
    assert spaces_(spec) == [
        ("in", 4, "input"), ("fc", 6, "hidden"), ("gw", 5, "hidden"), ("out", 3, "output"),
    ]  # fmt: skip
    assert spec["fc.weight"].axes == ("in", "fc") and spec["fc.bias"].axes == ("fc",)
    assert spec["gw"].axes == (None, "fc", "gw") and spec["gb"].axes == ("gw",)
    assert spec["proj.weight"].axes == ("gw", "out")
    assert not report.broken and not report.probes and report.verification.ok
