"""Tests of the fully connected factories: mlp and siren."""

from __future__ import annotations

import math

import pytest
import torch
import torch.fx

from nfncompile import architectures as A
from nfncompile.errors import ConfigError
from nfncompile.nn.activations import ACTIVATIONS


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_mlp_activations(name):
    torch.manual_seed(0)
    model = A.mlp(3, (4,), 2, activation=name)
    assert model(torch.randn(5, 3)).shape == (5, 2)
    torch.fx.symbolic_trace(model)


def test_siren_init_and_forward():
    torch.manual_seed(0)
    w0 = 30.0
    model = A.siren(2, (64, 64), 1, w0=w0)
    first, second = model.hidden
    assert first.weight.abs().max() <= 1 / 2
    bound = math.sqrt(6 / 64) / w0
    assert second.weight.abs().max() <= bound
    assert model.out.weight.abs().max() <= bound
    # the spread is close to uniform on the bound (not, e.g., PyTorch's default init)
    assert second.weight.abs().max() > 0.9 * bound
    x = torch.randn(7, 2)
    expected = model.out(torch.sin(w0 * second(torch.sin(w0 * first(x)))))
    torch.testing.assert_close(model(x), expected)


def test_siren_needs_hidden_layer():
    with pytest.raises(ConfigError, match="at least one hidden"):
        A.siren(hidden=())
