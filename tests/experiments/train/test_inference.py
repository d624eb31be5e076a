"""Tests of :mod:`nfncompile.experiments.train.inference`: predict."""

from __future__ import annotations

import pytest
import torch

from nfncompile.errors import ConfigError
from nfncompile.experiments.train import predict
from tests.experiments.train.helpers import VAL, Net


def test_predict_keeps_order_and_accepts_bare_inputs():
    model = Net()
    model.train()
    x = torch.stack([xi for xi, _ in VAL])
    out = predict(model, VAL, batch_size=5)
    assert model.training  # mode restored
    model.eval()
    torch.testing.assert_close(out, model(x))
    torch.testing.assert_close(predict(model, list(x), batch_size=3), out)
    with pytest.raises(ConfigError, match="batch_size must be a positive int"):
        predict(model, VAL, batch_size=0)
