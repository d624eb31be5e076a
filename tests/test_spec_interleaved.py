"""Composite axes with positions inside blocks: block spaces interleaved along one axis, as a
projection laid out per attention head holds them (GPT-NeoX's fused ``(heads, 3 * d)`` rows)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nfncompile as nfc
from nfncompile.errors import SpecError
from nfncompile.spec import Inner, Span
from nfncompile.testing import assert_equivariant

H, D, C = 3, 2, 4


def _header(*blocks: str) -> str:
    """The spec's blocks and spaces: ``in``, the heads ``h``, ``blocks`` (each ``H`` blocks of
    ``D``), ``out``."""
    spaces = "".join(
        f"  {b}:{' ' * (3 - len(b))} {{size: {H * D}, role: hidden, blocks: heads}}\n"
        for b in blocks
    )
    return (
        f"blocks:\n  heads: {{count: {H}}}\nspaces:\n  in:  {{size: {C}, role: input}}\n"
        f"  h:   {{size: {H}, role: hidden, blocks: heads}}\n{spaces}"
        f"  out: {{size: {C}, role: output}}\n"
    )


NEOX_YAML = (
    _header("qk", "v")
    + f"""\
params:
  qkv.weight:   {{shape: [{3 * H * D}, {C}], view: [{H}, {3 * D}, {C}], axes: [h, [{{space: qk, block_of: 0}}, {{space: qk, block_of: 0}}, {{space: v, block_of: 0}}], in]}}
  qkv.bias:     {{shape: [{3 * H * D}], view: [{H}, {3 * D}], axes: [h, [{{space: qk, block_of: 0}}, {{space: qk, block_of: 0}}, {{space: v, block_of: 0}}]]}}
  dense.weight: {{shape: [{C}, {H * D}], axes: [out, v]}}
  dense.bias:   {{shape: [{C}], axes: [out]}}
"""
)


class PerHead(nn.Module):
    """Attention whose fused projection is laid out per head: ``(heads, [q, k, v], d)``."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(C, 3 * H * D)
        self.dense = nn.Linear(H * D, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q, k, v = self.qkv(x).view(b, s, H, 3, D).unbind(3)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        y = (q @ k.transpose(-1, -2)).softmax(-1) @ v
        return self.dense(y.transpose(1, 2).reshape(b, s, H * D))


def test_an_interleaved_spec_round_trips_through_yaml():
    spec = nfc.WeightSpaceSpec.from_yaml(NEOX_YAML)
    assert spec.to_yaml() == NEOX_YAML
    assert spec["qkv.weight"].axes[1] == (Inner("qk", 0), Inner("qk", 0), Inner("v", 0))
    assert "(qk@0|qk@0|v@0)" in repr(spec)
    assert spec["qkv.weight"].spaces_used() == {"h", "qk", "v", "in"}


@pytest.mark.parametrize("mode", ["np", "hnp"])
def test_group_elements_leave_a_per_head_network_unchanged(mode):
    """Heads move as blocks (row ``i`` of the view goes with head ``i`` of the values) and each
    head's query/key and value features permute on their own, read inside the row's block."""
    torch.manual_seed(0)
    net = PerHead().double()
    spec = nfc.WeightSpaceSpec.from_yaml(NEOX_YAML).with_mode(mode)
    x = torch.randn(2, 5, C, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    moved_heads = 0
    for _ in range(8):
        perm = spec.sample_permutation(gen)
        moved_heads += not torch.equal(perm["h"], torch.arange(H))
        moved = PerHead().double()
        moved.load_state_dict(perm.apply_state_dict(net.state_dict()))
        torch.testing.assert_close(moved(x[..., perm["in"]]), net(x)[..., perm["out"]])
    assert moved_heads
    assert nfc.verify(net, spec, x, channel_dim=-1).ok


@pytest.mark.parametrize(
    ("edit", "failed"),
    [
        # the values' features read as the keys' (pieces swapped): not the network's layout
        ("[{space: qk, block_of: 0}, {space: v, block_of: 0}, {space: qk, block_of: 0}]", "qk"),
        # every head's queries and keys permuted alike, as one space: too large a claim
        ("[{space: qk, block_of: 0}, {space: v, block_of: 0}, 2]", "v"),
    ],
)
def test_a_wrong_interleaving_is_caught(edit, failed):
    torch.manual_seed(0)
    net = PerHead().double()
    text = NEOX_YAML.replace(
        "[{space: qk, block_of: 0}, {space: qk, block_of: 0}, {space: v, block_of: 0}]", edit
    )
    assert text != NEOX_YAML
    spec = nfc.WeightSpaceSpec.from_yaml(text).with_mode("hnp")
    report = nfc.verify(net, spec, torch.randn(2, 5, C).double())
    assert not report.ok and failed in report.failed


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "{space: v, block_of: 0}], in]",
            "{space: v, block_of: 5}], in]",
            r"qkv.weight.axes\[1\]\[2\]: block_of=5 must point at another axis",
        ),
        (
            "{space: v, block_of: 0}], in]",
            "{space: in, block_of: 0}], in]",
            r"qkv.weight.axes\[1\]\[2\]: Inner\('in', 0\) needs a block space",
        ),
        (
            "{space: v, block_of: 0}], in]",
            "{space: v, block_of: 0}, 1], in]",
            r"qkv.weight.axes\[1\]: composite .* adds up to 7 but the axis has length 6",
        ),
        (
            "{space: v, block_of: 0}], in]",
            "{space: v, at: 0}], in]",
            r"qkv.weight.axes\[1\]: expected a space name",
        ),
    ],
)
def test_malformed_interleaved_axes_name_the_key(old, new, message):
    text = NEOX_YAML.replace(old, new)
    assert text != NEOX_YAML
    with pytest.raises(SpecError, match=message):
        nfc.WeightSpaceSpec.from_yaml(text)


def test_pieces_reading_the_blocks_of_two_axes_are_refused():
    two = NEOX_YAML + (
        "  rel:          {shape: [3, 3, 4], axes: [h, h, [{space: qk, block_of: 0}, "
        "{space: qk, block_of: 1}]]}\n"
    )
    with pytest.raises(SpecError, match=r"rel.axes\[2\]: .*read the blocks of axes \[0, 1\]"):
        nfc.WeightSpaceSpec.from_yaml(two)


SPAN_YAML = (
    _header("v")
    + f"""\
params:
  qkv.weight:   {{shape: [{3 * H * D}, {C}], axes: [[{{space: h, span: {D}}}, {{space: h, span: {D}}}, v], in]}}
  qkv.bias:     {{shape: [{3 * H * D}], axes: [[{{space: h, span: {D}}}, {{space: h, span: {D}}}, v]]}}
  dense.weight: {{shape: [{C}, {H * D}], axes: [out, v]}}
  dense.bias:   {{shape: [{C}], axes: [out]}}
"""
)


class Sliced(PerHead):
    """One projection sliced into ``[q | k | v]`` (Phi-3), RoPE-like: each position's q and k
    mixed with a table of the positions, fixing their features."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q, k, v = (t.view(b, s, H, D).transpose(1, 2) for t in self.qkv(x).split(H * D, dim=-1))
        angles = torch.arange(s, dtype=x.dtype)[:, None] * torch.arange(1, D + 1, dtype=x.dtype)
        q, k = (t * angles.cos() + t.flip(-1) * angles.sin() for t in (q, k))
        y = (q @ k.transpose(-1, -2)).softmax(-1) @ v
        return self.dense(y.transpose(1, 2).reshape(b, s, H * D))


def test_a_span_spec_round_trips_and_moves_each_neurons_positions():
    spec = nfc.WeightSpaceSpec.from_yaml(SPAN_YAML)
    assert spec.to_yaml() == SPAN_YAML
    assert spec["qkv.weight"].axes[0] == (Span("h", D), Span("h", D), "v")
    assert "(h*2|h*2|v)" in repr(spec)
    blocks = torch.tensor([4, 5, 0, 1, 2, 3])  # v's blocks as h moves its heads
    perm = nfc.spec.Permutation(spec, {"h": torch.tensor([2, 0, 1]), "v": blocks})
    rows = perm.axis_index(spec["qkv.weight"].axes[0], 18)
    assert rows[:6].tolist() == [4, 5, 0, 1, 2, 3]  # head 2's two rows first


@pytest.mark.parametrize("mode", ["np", "hnp"])
def test_group_elements_leave_a_sliced_network_unchanged(mode):
    # the queries' heads read as the values' (a span of the wrong size): caught
    edit = (
        f"span: {D}}}, {{space: h, span: {D}}}, v]",
        f"span: {D}}}, v, {{space: h, span: {D}}}]",
    )
    _holds_and_edit_is_caught(Sliced, SPAN_YAML, edit, mode)


def _holds_and_edit_is_caught(net: type, text: str, edit: tuple, mode: str) -> None:
    """The spec of ``text`` holds on ``net()`` in ``mode``; with ``edit`` made it does not."""
    torch.manual_seed(0)
    model = net().double()
    x = torch.randn(2, 5, C, dtype=torch.float64)
    spec = nfc.WeightSpaceSpec.from_yaml(text).with_mode(mode)
    assert nfc.verify(model, spec, x, channel_dim=-1).ok
    assert edit[0] in text
    wrong = nfc.WeightSpaceSpec.from_yaml(text.replace(*edit)).with_mode(mode)
    assert not nfc.verify(model, wrong, x, channel_dim=-1).ok


@pytest.mark.parametrize(
    ("new", "message"),
    [
        ("{space: h, span: 3}", r"qkv.weight.axes\[0\]: composite .* adds up to 21"),
        ("{space: x, span: 2}", r"qkv.weight.axes\[0\]\[1\]: unknown space 'x'"),
        ("{space: h, span: 0}", r"span must be a positive int"),
        ("{space: h, spam: 2}", r"qkv.weight.axes\[0\]: expected a space name"),
    ],
)
def test_malformed_spans_name_the_key(new, message):
    old = "{space: h, span: 2}, v], in]"
    text = SPAN_YAML.replace(old, new + ", v], in]", 1)
    assert text != SPAN_YAML
    with pytest.raises(SpecError, match=message):
        nfc.WeightSpaceSpec.from_yaml(text)


MQA_YAML = f"""\
spaces:
  in:  {{size: {C}, role: input}}
  h:   {{size: {H}, role: hidden}}
  qk:  {{size: {D}, role: hidden}}
  v:   {{size: {D}, role: hidden}}
  out: {{size: {C}, role: output}}
params:
  qkv.weight:   {{shape: [{(H + 2) * D}, {C}], axes: [[{{space: h, span: qk}}, qk, v], in]}}
  qkv.bias:     {{shape: [{(H + 2) * D}], axes: [[{{space: h, span: qk}}, qk, v]]}}
  dense.weight: {{shape: [{C}, {H * D}], view: [{C}, {H}, {D}], axes: [out, h, v]}}
  dense.bias:   {{shape: [{C}], axes: [out]}}
"""


class MultiQuery(nn.Module):
    """Multi-query attention fused as ``[q | k | v]`` (GPTBigCode's): ``H`` query heads and
    one key and value head, which every query head reads."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(C, (H + 2) * D)
        self.dense = nn.Linear(H * D, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q, k, v = self.qkv(x).split([H * D, D, D], dim=-1)
        q = q.view(b, s, H, D).transpose(1, 2)
        y = (q @ k[:, None].transpose(-1, -2)).softmax(-1) @ v[:, None]
        return self.dense(y.transpose(1, 2).reshape(b, s, H * D))


def test_a_span_of_a_space_round_trips_and_copies_its_permutation():
    spec = nfc.WeightSpaceSpec.from_yaml(MQA_YAML)
    assert spec.to_yaml() == MQA_YAML
    assert spec["qkv.weight"].axes[0] == (Span("h", "qk"), "qk", "v")
    assert "(h*qk|qk|v)" in repr(spec) and spec["qkv.weight"].spaces_used() >= {"h", "qk"}
    perm = nfc.spec.Permutation(
        spec, {"h": torch.tensor([2, 0, 1]), "qk": torch.tensor([1, 0]), "v": torch.arange(D)}
    )
    rows = perm.axis_index(spec["qkv.weight"].axes[0], (H + 2) * D)
    # head 2's copy of qk first, each copy in qk's order (1, 0); then qk itself, then v
    assert rows.tolist() == [5, 4, 1, 0, 3, 2, 7, 6, 8, 9]


@pytest.mark.parametrize("mode", ["np", "hnp"])
def test_group_elements_leave_a_multi_query_network_unchanged(mode):
    # each query head's rows read as fixed positions beside the keys' own permutation: caught
    edit = ("{space: h, span: qk}, qk, v]", "{space: h, span: 2}, qk, v]")
    _holds_and_edit_is_caught(MultiQuery, MQA_YAML, edit, mode)
    spec = nfc.WeightSpaceSpec.from_yaml(MQA_YAML).with_mode(mode)
    for basis in ("complete", "linear"):
        layer = nfc.NFLinear(spec, 1, 2, mode=mode, basis=basis).double()
        assert_equivariant(layer, spec, trials=2)


def test_io_encoding_encodes_both_spaces_of_a_span_of_a_space():
    # the input space's neurons, each a copy of the output's: both encoded, in place
    spec = nfc.WeightSpaceSpec.from_yaml(
        "spaces:\n  in: {size: 2, role: input}\n  out: {size: 3, role: output}\n"
        "params:\n  w: {shape: [6], axes: [[{space: in, span: out}]]}\n"
    )
    enc = nfc.nn.IOEncoding(spec, 1, num_freqs=1)
    pe = nfc.nn.encoding.sinusoidal_encoding
    code = enc.encoding("w").reshape(2, 3, 6)  # (role, enc_dim, position)
    assert torch.equal(code[0], pe(2, enc.max_freq, 1).T.repeat_interleave(3, dim=1))
    assert torch.equal(code[1], pe(3, enc.max_freq, 1).T.repeat(1, 2))


@pytest.mark.parametrize(
    ("new", "message"),
    [
        ("{space: h, span: x}", r"qkv.weight.axes\[0\]\[0\]: unknown space 'x' spanned"),
        ("{space: h, span: h}", r"cannot span its own neurons"),
        ("{space: h, span: ''}", r"span must name a space"),
    ],
)
def test_malformed_spans_of_a_space_name_the_key(new, message):
    text = MQA_YAML.replace("{space: h, span: qk}, qk, v], in]", new + ", qk, v], in]", 1)
    assert text != MQA_YAML
    with pytest.raises(SpecError, match=message):
        nfc.WeightSpaceSpec.from_yaml(text)
