"""Tests of the MobileNetV2 block factory."""

from __future__ import annotations

import pytest
import torch

from nfncompile import architectures as A
from nfncompile.errors import ConfigError


def test_mobilenetv2_block_structure():
    model = A.mobilenetv2_block(in_channels=4, expand=3)
    assert model.block.depthwise.groups == 12 and model.block.use_residual
    x = torch.randn(2, 3, 8, 8)
    assert model(x).shape == (2, 10)
    strided = A.mobilenetv2_block(in_channels=4, stride=2)
    assert not strided.block.use_residual and strided(x).shape == (2, 10)
    assert not A.mobilenetv2_block(in_channels=4, out_channels=6).block.use_residual
    with pytest.raises(ConfigError, match="stride"):
        A.mobilenetv2_block(stride=3)
