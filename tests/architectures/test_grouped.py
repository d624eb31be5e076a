"""Grouped-convolution networks: structure, argument checks, and the traced block spaces
against a hand derivation."""

from __future__ import annotations

import pytest
import torch

import nfncompile as nfc
from nfncompile import architectures as A
from nfncompile.errors import ConfigError
from nfncompile.spec import Inner


def _trace(model, shape):
    torch.manual_seed(1)
    return nfc.trace_with_report(model, torch.randn(shape))


def test_resnext_block_is_one_block_permutation_over_conv1_and_conv2():
    torch.manual_seed(0)
    spec, report = _trace(A.resnext_block(channels=8, width=12, groups=3), (2, 3, 8, 8))
    # hand derivation: conv1's 12 outputs and the grouped conv2's 12 outputs are 3 blocks of
    # 4, moved by one block permutation (conv2's block j reads conv1's block j); conv3 is
    # added into the stem's stream (identity shortcut)
    assert [(s.name, s.size, s.blocks) for s in spec.spaces.values()] == [
        ("in", 3, None),
        ("stem", 8, None),
        ("block.conv1", 12, "block.conv2.groups"),
        ("block.conv2", 12, "block.conv2.groups"),
        ("out", 10, None),
    ]
    assert [(b.name, b.count) for b in spec.blocks.values()] == [("block.conv2.groups", 3)]
    assert spec["block.conv2.weight"].axes == ("block.conv2", Inner("block.conv1", 0), None, None)
    assert spec["block.conv3.weight"].axes == ("stem", "block.conv2", None, None)
    assert spec["block.bn1.running_mean"].axes == ("block.conv1",)
    assert report.verification.ok and not report.broken
    # in hnp mode the block permutation still moves (both spaces are hidden)
    assert spec.with_mode("hnp").blocks["block.conv2.groups"].permutable


def test_regnet_x_has_one_block_permutation_per_grouped_conv():
    torch.manual_seed(0)
    spec, report = _trace(A.regnet_x(), (2, 3, 16, 16))
    # hand derivation: 3 X blocks, each with its own block permutation over its conv1 and
    # conv2 (group width 4: 2, 4, 4 groups); the residual streams carry no blocks
    blocks = {b.name: b.count for b in spec.blocks.values()}
    assert blocks == {
        "stages.0.0.conv2.groups": 2,
        "stages.1.0.conv2.groups": 4,
        "stages.1.1.conv2.groups": 4,
    }
    for name in blocks:
        prefix = name.removesuffix("conv2.groups")
        assert report.blocks[name].spaces == [f"{prefix}conv1", f"{prefix}conv2"]
        w = spec[f"{prefix}conv2.weight"]
        assert w.axes[:2] == (f"{prefix}conv2", Inner(f"{prefix}conv1", 0))
        assert w.shape[1] == 4  # channels per group
    assert sum(s.role == "hidden" for s in spec.spaces.values()) == 9
    assert spec["stages.1.1.conv3.weight"].axes[0] == "stages.1.0.conv3"  # identity shortcut
    assert report.verification.ok and not report.broken


def test_regnet_x_at_400mf_widths_gives_one_space_per_coupled_channel_group():
    # RegNet-X-400MF's stage widths, depths and group width: 22 blocks, each with its conv1
    # and conv2 as block spaces; streams: stem, one per stage (4), plus the conv3 of every
    # strided block starting its stage's stream = 49 hidden spaces
    torch.manual_seed(0)
    model = A.regnet_x((32, 64, 160, 384), (1, 2, 7, 12), 16, stem=32)
    spec, report = _trace(model, (1, 3, 32, 32))
    hidden = [s for s in spec.spaces.values() if s.role == "hidden"]
    assert len(hidden) == 1 + 4 + 2 * 22 and len(spec.blocks) == 22
    assert sum(s.blocks is not None for s in hidden) == 44
    assert report.verification.ok


def test_grouped_arguments_are_checked():
    with pytest.raises(ConfigError, match="groups 3 must divide width 16"):
        A.resnext_block(groups=3)
    with pytest.raises(ConfigError, match="2 widths but 1 depths"):
        A.regnet_x((8, 16), (1,))
    with pytest.raises(ConfigError, match=r"must divide every width, not \[6\]"):
        A.regnet_x((8, 6), (1, 1), 4)
