"""Tests of the EfficientNet-style factories: MBConv blocks, same padding, stochastic depth."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nfncompile import architectures as A
from nfncompile.architectures.efficientnets import Conv2dSame, stochastic_depth
from nfncompile.errors import ConfigError


@pytest.mark.parametrize("size", [7, 8, 9])
@pytest.mark.parametrize("stride", [1, 2])
def test_same_padding_matches_tensorflow_same(size, stride):
    conv = Conv2dSame(2, 3, 3, stride=stride)
    x = torch.randn(1, 2, size, size, generator=torch.Generator().manual_seed(0))
    y = conv(x)
    assert y.shape[-1] == -(-size // stride)  # ceil(size / stride), as TensorFlow's "SAME"
    if stride == 1:  # torch's own "same" padding agrees where it exists
        want = F.conv2d(x, conv.weight, conv.bias, padding="same")
        torch.testing.assert_close(y, want)


def test_stochastic_depth_drops_whole_samples_in_training_only():
    x = torch.ones(64, 3, 2, 2)
    assert torch.equal(stochastic_depth(x, 0.5, training=False), x)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        y = stochastic_depth(x, 0.5, training=True)
    per_sample = y.flatten(1)
    assert ((per_sample == 0).all(1) | (per_sample == 2).all(1)).all()
    assert 0 < int((per_sample[:, 0] == 0).sum()) < 64


def test_efficientnet_block_structure():
    net = A.efficientnet_block(channels=4, depth=3, expand=2, head=6)
    assert len(net.blocks) == 3 and all(b.use_residual for b in net.blocks)
    assert net.blocks[0].depthwise.groups == 8 and net.blocks[0].se_down.out_channels == 1
    assert net(torch.zeros(2, 3, 8, 8)).shape == (2, 10)


def test_tf_efficientnet_structure_and_checks():
    net = A.tf_efficientnet(widths=(4, 6, 6, 8), strides=(2, 1, 1, 2))
    assert [b.use_residual for b in net.blocks] == [False, True, False]
    assert all(isinstance(m, Conv2dSame) for m in (net.stem, net.head, net.blocks[2].depthwise))
    assert net(torch.zeros(1, 3, 11, 11)).shape == (1, 10)
    with pytest.raises(ConfigError, match=r"strides must give 1 or 2 .* \(3 values\)"):
        A.tf_efficientnet(strides=(2, 3, 1))
    with pytest.raises(ConfigError, match=r"widths\[1\] must be a positive int"):
        A.tf_efficientnet(widths=(4, 0, 4))
    with pytest.raises(ConfigError, match=r"drop_path must be in \[0, 1\)"):
        A.efficientnet_block(drop_path=1.0)
