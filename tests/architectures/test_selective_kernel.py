"""Selective-kernel attention: the (paths, C) view of the attention keeps the C-space."""

from __future__ import annotations

import torch

import nfncompile as nfc
from nfncompile import architectures as A


def test_sk_block_views_the_attention_as_paths_times_the_channel_space():
    torch.manual_seed(0)
    model = A.sk_block(channels=6, paths=3, attn_channels=4)
    spec, report = nfc.trace_with_report(model, torch.randn(2, 3, 8, 8))
    # hand derivation: the paths are stacked and multiplied by the attention (one value per
    # path and channel), so every path's channels and every third of fc_select's outputs
    # move together: one space of 6; fc_reduce is the attention's bottleneck
    assert [(s.name, s.size) for s in spec.spaces.values()] == [
        ("in", 3), ("stem", 6), ("sk.paths.0.0", 6), ("sk.fc_reduce", 4), ("out", 10),
    ]  # fmt: skip
    assert spec["sk.fc_select.weight"].axes == (("sk.paths.0.0",) * 3, "sk.fc_reduce", None, None)
    assert spec["sk.paths.2.1.running_var"].axes == ("sk.paths.0.0",)
    assert report.verification.ok and not report.broken
