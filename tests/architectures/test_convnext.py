"""The ConvNeXt block: structure, and the traced spaces against a hand derivation (with an
identity drop path, and with the opaque stochastic depth that fixes the residual streams)."""

from __future__ import annotations

import torch

import nfncompile as nfc
from nfncompile import architectures as A


def _trace(model, shape=(2, 3, 8, 8)):
    torch.manual_seed(1)
    return nfc.trace_with_report(model, torch.randn(shape))


def test_convnext_block_keeps_the_stream_through_the_depthwise_conv():
    torch.manual_seed(0)
    spec, report = _trace(A.convnext_block(channels=8, depth=2))
    # hand derivation: the stem's 8 channels are the stream (dwconv keeps them, pwconv2 and
    # layer scale add back into them); each block's MLP hidden layer is a space of 32
    assert [(s.name, s.size) for s in spec.spaces.values()] == [
        ("in", 3), ("stem", 8), ("blocks.0.pwconv1", 32), ("blocks.1.pwconv1", 32), ("out", 10),
    ]  # fmt: skip
    assert spec["blocks.1.dwconv.weight"].axes == ("stem", None, None, None)
    assert spec["blocks.1.gamma"].axes == ("stem",)
    assert report.verification.ok and not report.broken


def test_opaque_stochastic_depth_is_probed_and_keeps_the_stream():
    torch.manual_seed(0)
    plain, _ = _trace(A.convnext_block(8, 2))
    torch.manual_seed(0)
    spec, report = _trace(A.convnext_block(8, 2, wrapped_drop_path=True))
    assert spec == plain and not report.broken
    assert [p.passed for p in report.probes] == [True, True]


class Roll(torch.nn.Module):
    """Rolls the channels: the stream it feeds is fixed (position-dependent)."""

    def forward(self, x):
        return torch.roll(x, 1, dims=1)


def test_a_fixed_stream_gives_fixed_depthwise_outputs_not_one_neuron_spaces():
    # every depthwise conv reads the fixed stream: its outputs are fixed positions, not 96
    # spaces of size 1 each (what ConvNeXt-T with fixed streams got: 5,184 of them)
    torch.manual_seed(0)
    model = A.convnext_block(96, 3)
    model.stem = torch.nn.Sequential(model.stem, Roll())
    spec, report = _trace(model, (1, 3, 8, 8))
    assert [(s.name, s.size) for s in spec.spaces.values()] == [
        ("in", 3), ("blocks.0.pwconv1", 384), ("blocks.1.pwconv1", 384),
        ("blocks.2.pwconv1", 384), ("out", 10),
    ]  # fmt: skip
    assert spec["blocks.2.dwconv.weight"].axes == (None, None, None, None)
    reasons = [b.reason for b in report.broken]
    assert sum(r.startswith("depthwise conv of fixed channels") for r in reasons) == 3
    assert report.verification.ok
