"""Weight-standardised convs keep the plain ResNet's spaces."""

from __future__ import annotations

import torch

import nfncompile as nfc
from nfncompile import architectures as A


def test_standardised_convs_keep_their_input_and_output_spaces():
    torch.manual_seed(0)
    spec, report = nfc.trace_with_report(A.std_conv_block(6), torch.randn(2, 3, 8, 8))
    # hand derivation (the ResNet block's): stem's 6 channels are the stream (conv2 adds
    # back), conv1's output is a space; the standardisation statistics run over each
    # weight's (in, kh, kw) positions, which permute with the input channels
    assert [(s.name, s.size) for s in spec.spaces.values()] == [
        ("in", 3), ("stem", 6), ("conv1", 6), ("out", 10),
    ]  # fmt: skip
    assert spec["stem.weight"].axes == ("stem", "in", None, None)
    assert spec["conv1.weight"].axes == ("conv1", "stem", None, None)
    assert spec["conv2.weight"].axes == ("stem", "conv1", None, None)
    assert spec["conv2.gain"].axes == ("stem", None, None, None)
    assert report.verification.ok and not report.broken
