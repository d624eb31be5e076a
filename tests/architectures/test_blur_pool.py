"""Blur pools (one filter for every channel) keep the channels' spaces."""

from __future__ import annotations

import pytest
import torch

import nfncompile as nfc
from nfncompile import architectures as A


@pytest.mark.parametrize("expand", [False, True])
def test_blur_pool_is_depthwise_equivariant(expand):
    torch.manual_seed(0)
    model = A.blurpool_cnn(6, expand_filter=expand)
    spec, report = nfc.trace_with_report(model, torch.randn(2, 3, 8, 8))
    # hand derivation: the blur is the same filter for every channel, so each pool's output
    # channels are its input channels: conv1 and conv2 keep their spaces
    assert [(s.name, s.size) for s in spec.spaces.values()] == [
        ("in", 3), ("conv1", 6), ("conv2", 6), ("out", 10),
    ]  # fmt: skip
    assert spec["conv2.weight"].axes == ("conv2", "conv1", None, None)
    assert ("pool1.filt" in spec) == expand  # a frozen parameter, or a non-persistent buffer
    if expand:
        assert spec["pool1.filt"].axes == (None, None, None, None)
    assert report.verification.ok and not report.broken


def test_blur_filter_sums_to_one():
    pool = A.blur_pool.BlurPool2d(2)
    assert pool.filt.shape == (2, 1, 3, 3)
    torch.testing.assert_close(pool.filt.sum((1, 2, 3)), torch.ones(2))
