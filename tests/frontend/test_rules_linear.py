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
