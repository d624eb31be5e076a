"""Space-to-depth: the moved channels are the input's channels repeated, not fixed."""

from __future__ import annotations

import pytest
import torch

import nfncompile as nfc
from nfncompile import architectures as A
from nfncompile.errors import ConfigError


def test_space_to_depth_moves_blocks_into_channels():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    y = A.space_to_depth.SpaceToDepth(2)(x)
    assert y.shape == (1, 4, 2, 2)
    torch.testing.assert_close(y[0, :, 0, 0], torch.tensor([0.0, 1.0, 4.0, 5.0]))


def test_s2d_stem_reads_the_input_space_repeated():
    torch.manual_seed(0)
    spec, report = nfc.trace_with_report(A.s2d_stem(8, 4), torch.randn(2, 3, 8, 8))
    # hand derivation: channel (i * 4 + j) * 3 + c of the moved tensor is input channel c:
    # conv1's input axis is the input space repeated 16 times
    assert [(s.name, s.size) for s in spec.spaces.values()] == [
        ("in", 3), ("conv1", 8), ("conv2", 8), ("out", 10),
    ]  # fmt: skip
    assert spec["conv1.weight"].axes == ("conv1", ("in",) * 16, None, None)
    assert report.verification.ok and not report.broken
    with pytest.raises(ConfigError, match="block_size must be at least 2"):
        A.s2d_stem(block_size=1)
