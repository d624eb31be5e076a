"""nfncompile.frontend.fx: symbolic tracing and shape propagation."""

from __future__ import annotations

import pytest
from torch import nn

import nfncompile as nfc
from nfncompile.architectures.catalogue import CATALOGUE
from nfncompile.errors import TraceError
from tests.frontend.helpers import model_, x_


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


def test_fake_and_real_shape_propagation_agree():
    model = model_(CATALOGUE["unet"].factory)
    real = nfc.trace(model, x_(2, 1, 8, 8), fake=False, verify=False)
    fake = nfc.trace(model, x_(2, 1, 8, 8), fake=True, verify=False)
    assert real == fake
