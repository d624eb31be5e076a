"""Tests of the U-Net factory."""

from __future__ import annotations

import torch
from torch import nn

from nfncompile import architectures as A
from tests.architectures.helpers import count_modules as _count


def test_unet_16x16_and_skips():
    model = A.unet(in_channels=2, base=4, out_channels=3)
    assert model(torch.zeros(1, 2, 16, 16)).shape == (1, 3, 16, 16)
    assert _count(model, nn.ConvTranspose2d) == 2
    assert model.dec2.conv1.in_channels == 16 and model.dec1.conv1.in_channels == 8
