"""Tests of the CIFAR ResNet factory."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nfncompile import architectures as A
from nfncompile.architectures.resnets import BasicBlock
from nfncompile.errors import ConfigError
from tests.architectures.helpers import count_modules as _count


@pytest.mark.parametrize("depth", [8, 20, 56])
def test_resnet_conv_count(depth):
    n = (depth - 2) // 6
    model = A.resnet_cifar(depth, width=4)
    # stem + 2 per block + 2 downsample shortcuts (stage 2 and 3 change shape)
    assert _count(model, nn.Conv2d) == 1 + 6 * n + 2
    assert _count(model, nn.Linear) == 1
    # depth counts the stem conv, 2 convs per block and the linear layer
    assert _count(model, nn.Conv2d) - 2 + _count(model, nn.Linear) == depth
    assert _count(model, BasicBlock) == 3 * n


def test_resnet56_runs():
    torch.manual_seed(0)
    model = A.resnet_cifar(56, width=4)
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize("depth", [0, 7, 21, 22, 19.0, "20"])
def test_resnet_bad_depth(depth):
    with pytest.raises(ConfigError, match=r"depth must be 6n \+ 2"):
        A.resnet_cifar(depth)


def test_resnet_downsample_only_when_shape_changes():
    model = A.resnet_cifar(14, width=4)
    with_ds = [n for n, m in model.named_modules() if isinstance(m, BasicBlock) and m.downsample]
    assert with_ds == ["layer2.0", "layer3.0"]
