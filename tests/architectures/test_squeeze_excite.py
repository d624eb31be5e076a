"""Tests of the squeeze-and-excitation factory."""

from __future__ import annotations

import pytest
import torch

from nfncompile import architectures as A
from nfncompile.architectures.squeeze_excite import SqueezeExcite
from nfncompile.errors import ConfigError


def test_se_gate_scales_channels():
    torch.manual_seed(0)
    se = SqueezeExcite(8, 4)
    x = torch.randn(2, 8, 3, 3)
    gate = torch.sigmoid(se.up(torch.relu(se.down(x.mean((2, 3))))))
    torch.testing.assert_close(se(x), x * gate[:, :, None, None])
    with pytest.raises(ConfigError, match="must divide"):
        A.se_block(channels=6, reduction=4)
