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
