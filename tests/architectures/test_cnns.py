"""Tests of the plain CNN factories: lenet, small_cnn and vgg."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nfncompile import architectures as A
from nfncompile.errors import ConfigError
from tests.architectures.helpers import count_modules as _count


def test_lenet_flattens_spatial_positions():
    model = A.lenet(in_channels=3, image_size=16, channels=(4, 8))
    assert model.fc1.in_features == 8 * 4 * 4
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 10)
    with pytest.raises(ConfigError, match="divisible"):
        A.lenet(image_size=10)


def test_small_cnn_structure():
    model = A.small_cnn(channels=5)
    for conv in (model.conv1, model.conv2, model.conv3):
        assert conv.kernel_size == (3, 3) and conv.stride == (2, 2) and conv.out_channels == 5
    assert model.fc.in_features == 5


def test_vgg_cfg():
    model = A.vgg(in_channels=1, cfg=(4, 4, "M", 8, "M", 8), image_size=8)
    assert _count(model, nn.Conv2d) == 4 and _count(model, nn.MaxPool2d) == 2
    assert model.classifier.fc1.in_features == 8 * 2 * 2
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ConfigError, match="cfg\\[1\\]"):
        A.vgg(cfg=(4, "X"))
    with pytest.raises(ConfigError, match="cannot max-pool"):
        A.vgg(cfg=(4, "M", "M", "M", "M"), image_size=8)
