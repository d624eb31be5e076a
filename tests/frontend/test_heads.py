"""nfncompile.frontend.heads: attention heads split by a reshape permute on their own.

Every case is checked against the real network (the report's verification draws random
elements of the derived group, float64): a head split that held where it must not would fail
it. The adversarial models each read across heads in one way; their heads must then share one
permutation (the conservative reading), as before.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import nfncompile as nfc
from nfncompile.frontend import verification
from nfncompile.frontend.tracing import trace_with_report
from nfncompile.spec import Inner, Span
from nfncompile.testing import assert_equivariant
from tests.frontend.helpers import head_size, model_, per_head, x_


class _Heads(nn.Module):
    """nanoGPT-style attention: separate q, k, v projections viewed as ``(heads, dim)``; ``how``
    adds one way of reading across heads."""

    def __init__(self, how: str = "plain", dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.how, self.h = how, heads
        self.q, self.k, self.v = (nn.Linear(dim, dim) for _ in range(3))
        self.o = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim // heads)  # one norm for every head (timm's q_norm)
        self.talk = nn.Linear(heads, heads)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = (
            f(x).view(b, n, self.h, c // self.h).transpose(1, 2) for f in (self.q, self.k, self.v)
        )
        if self.how == "norm":
            q = self.norm(q)
        elif self.how == "flip":  # the heads of q reversed: head i meets k's head h - 1 - i
            q = q.flip(1)
        elif self.how == "one_query_head":  # q's first head meets every head of k
            q = q[:, :1]
        elif self.how.startswith("scaled_by_data"):  # q scaled per head by the input
            per_head = torch.arange(1, self.h + 1, dtype=x.dtype)[:, None, None]
            q = q * (per_head * x.norm(dim=-1)[:, None, :, None])
            if self.how.endswith("einsum"):  # k too: the scores keep no heads labels
                k = k * (per_head * x.norm(dim=-1)[:, None, :, None])
        if self.how == "outer":  # every head of q meets every head of k
            scores = torch.einsum("bhnd,bgmd->bhgnm", q, k).mean(2)
        else:
            scores = q @ k.transpose(-1, -2)
        if self.how == "alibi":  # a bias per head and key position (ALiBi: MPT, Bloom)
            slopes = torch.arange(1, self.h + 1, dtype=x.dtype)[:, None, None]
            scores = scores + slopes * torch.arange(n, dtype=x.dtype)
        if self.how == "talking":  # the scores mixed across heads by a layer
            scores = self.talk(scores.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        if self.how == "scaled_by_data_einsum":  # x-transformers' attention
            y = torch.einsum("bhij,bhjd->bhid", scores.softmax(-1), v)
        else:
            y = scores.softmax(-1) @ v
        if self.how == "max_over_heads":  # heads averaged, then a max over the features
            return y.mean(1).amax(-1)
        return self.o(y.transpose(1, 2).reshape(b, n, c))


def _per_head(spec, key: str) -> tuple:
    return per_head(spec, spec[key].axes[0])


@pytest.mark.parametrize("how", ["plain", "alibi"])
def test_each_heads_queries_keys_and_values_permute_on_their_own(how):
    # a value per head meets each head in place (before: ALiBi gave every head one permutation)
    spec, report = trace_with_report(model_(lambda: _Heads(how)), x_(2, 5, 8), channel_dim=-1)
    assert report.verification.ok and not report.broken
    q, k, v = (_per_head(spec, f"{p}.weight") for p in "qkv")
    assert q == k and len(set(q)) == 2 and len(set(v)) == 2 and not set(q) & set(v)
    assert per_head(spec, spec["o.weight"].axes[1]) == v
    assert {head_size(spec, s) for s in q + v} == {4}
    # the heads themselves move too, q's, k's and v's together (one block permutation),
    # unless a value per head meets each head where it is
    assert [b.count for b in spec.blocks.values()] == ([] if how == "alibi" else [2])
    assert_equivariant(nfc.NFLinear(spec, 1, 2).double(), spec, trials=2)


@pytest.mark.parametrize("how", ["flip", "one_query_head", "outer"])
def test_reading_queries_across_heads_gives_them_one_permutation(how):
    spec, report = trace_with_report(model_(lambda: _Heads(how)), x_(2, 5, 8), channel_dim=-1)
    assert report.verification.ok
    q, k, _ = (_per_head(spec, f"{p}.weight") for p in "qkv")
    # reversed or broadcast heads, an outer product: every head of q meets the same
    # features of every head of k
    if how == "one_query_head":  # q's first head, taken apart, meets both of k's; the other
        assert k == (q[0], q[0]) and q[1] != q[0]  # is unused: a space of its own
    else:
        assert q == k and len(set(q)) == 1


def test_heads_whose_dims_one_norm_shares_still_move_as_blocks():
    # a norm over each head's dims (timm's q_norm) gives every head's queries and keys one
    # permutation; before, their heads then stayed in place, and the values' with them. The
    # heads move as blocks now, the shared dims one space read through a (heads, dims) view
    model = model_(lambda: _Heads("norm")).double()
    x = x_(2, 5, 8).double()
    spec, report = trace_with_report(model, x, channel_dim=-1)
    assert report.verification.ok
    for key in ("q.weight", "k.weight"):
        assert (spec[key].view, spec[key].axes) == ((2, 4, 8), ("q.head", "q", "in"))
    assert spec["norm.weight"].axes == ("q",) and spec.spaces["q"].blocks is None
    assert spec.spaces["q.head"].blocks == spec.spaces["v"].blocks == "q.heads"
    assert spec.block_shape("v") == (2, 4)  # the values' heads: each its own permutation
    perm = _moving(spec, "q.heads", torch.Generator().manual_seed(0))
    moved = copy.deepcopy(model)
    moved.load_state_dict(perm.apply_state_dict(model.state_dict()))
    torch.testing.assert_close(moved(x), model(x))
    moved.v.load_state_dict(model.v.state_dict())  # the values' heads put back alone
    moved.o.load_state_dict(model.o.state_dict())
    assert (moved(x) - model(x)).abs().max() > 1e-3
    for basis in ("complete", "linear"):
        assert_equivariant(nfc.NFLinear(spec, 1, 2, basis=basis).double(), spec, trials=2)


def test_scores_mixed_across_heads_keep_the_values_per_head():
    # talking heads: the scores mixed across heads by a layer whose outputs are the heads
    # that read the values. Each head's values still permute on their own, and the values'
    # heads move as blocks with that layer's output rows, q's and k's with its input columns.
    # Before: the values' heads one permutation for both (the mixed scores held them); then
    # q's and k's heads in place (a layer reading their heads held them)
    model = model_(lambda: _Heads("talking")).double()
    x = x_(2, 5, 8).double()
    spec, report = trace_with_report(model, x, channel_dim=-1)
    assert report.verification.ok
    assert len(set(_per_head(spec, "v.weight"))) == 2
    assert spec["o.weight"].axes == ("out", "v") and spec.block_shape("v") == (2, 4)
    assert spec["talk.weight"].axes == ("v.head", "q.head")
    assert spec.spaces["v.head"].blocks == spec.spaces["v"].blocks
    assert spec.spaces["q.head"].blocks == spec.spaces["q"].blocks != spec.spaces["v"].blocks
    assert spec.block_shape("q") == (2, 4)  # each head's queries and keys on their own
    for blocks in ("v.heads", "q.heads"):
        perm = _moving(spec, blocks, torch.Generator().manual_seed(0))
        moved = copy.deepcopy(model)
        moved.load_state_dict(perm.apply_state_dict(model.state_dict()))
        torch.testing.assert_close(moved(x), model(x))
    moved.talk.load_state_dict(model.talk.state_dict())  # its columns left where they were
    assert (moved(x) - model(x)).abs().max() > 1e-3


def test_heads_summed_then_read_position_by_position_share_one_permutation():
    # the per-head dims survive the mean over heads: mirrored per head they would let each
    # head's values permute on their own, which the max over features does not allow
    spec, report = trace_with_report(
        model_(lambda: _Heads("max_over_heads")), x_(2, 5, 8), channel_dim=-1
    )
    assert report.verification.ok
    assert len(set(_per_head(spec, "v.weight"))) <= 1


class _GroupedHeads(nn.Module):
    """Grouped-query attention: 4 query heads, 2 key/value heads each read by 2 query heads in
    a row, repeated by ``expand`` and a reshape (Hugging Face's ``repeat_kv``), by
    ``repeat_interleave``, or by attention itself (``enable_gqa``). The adversarial ways read
    them otherwise: tiled (``repeat``: head ``i`` meets head ``i % 2``), keys in a row but
    values tiled, or the query heads averaged in pairs."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.q, self.o = nn.Linear(8, 8), nn.Linear(8, 8)
        self.k, self.v = nn.Linear(8, 4), nn.Linear(8, 4)

    def forward(self, x):
        b, n, _ = x.shape
        q = self.q(x).view(b, n, 4, 2).transpose(1, 2)
        k, v = (f(x).view(b, n, 2, 2).transpose(1, 2) for f in (self.k, self.v))
        if self.how == "expand":
            k, v = (t[:, :, None].expand(b, 2, 2, n, 2).reshape(b, 4, n, 2) for t in (k, v))
        elif self.how == "repeat_interleave":
            k, v = (t.repeat_interleave(2, dim=1) for t in (k, v))
        elif self.how == "tiled":
            k, v = (t.repeat(1, 2, 1, 1) for t in (k, v))
        elif self.how == "values_tiled":
            k, v = k.repeat_interleave(2, dim=1), v.repeat(1, 2, 1, 1)
        elif self.how == "query_pairs":
            q = q.reshape(b, 2, 2, n, 2).mean(2).repeat_interleave(2, dim=1)
            k, v = (t.repeat_interleave(2, dim=1) for t in (k, v))
        if self.how == "rotated":  # Llama's: RoPE on q and k, then enable_gqa
            q, k = (_partial_rotary(t, 2) for t in (q, k))
        grouped = self.how in ("enable_gqa", "rotated")
        y = nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=grouped)
        return self.o(y.transpose(1, 2).reshape(b, n, 8))


@pytest.mark.parametrize("how", ["expand", "repeat_interleave", "enable_gqa", "rotated"])
def test_grouped_key_value_heads_permute_with_their_query_heads(how):
    # before: repeat_interleave passed a probe that drew the identity for the two key/value
    # heads (the derived group failed verification); enable_gqa fixed every head's features;
    # expand and reshape gave every head one permutation
    # Then the heads stayed in place; now each key/value head is a block, moved with the two
    # query heads that read it, and inside each block those query heads permute on their own
    # (their rows a view (key/value heads, query heads, one query head's dims))
    model = model_(lambda: _GroupedHeads(how)).double()
    x = x_(2, 5, 8).double()
    spec, report = trace_with_report(model, x, channel_dim=-1)
    assert report.verification.ok and not report.probes
    assert list(spec.blocks) == ["q.heads"] and spec.blocks["q.heads"].count == 2
    # a key head and the two query heads that read it: one block; each value head another
    qk, v, query = Inner("q", 0), Inner("v", 1), Inner("q.query", 0)
    q_axes = ("q.head", query, None if how == "rotated" else qk, "in")
    assert (spec["q.weight"].view, spec["q.weight"].axes) == ((2, 2, 2, 8), q_axes)
    if how == "rotated":  # RoPE fixes the queries' and keys' dims: each head's rows in place
        # (and before, the query heads met their key heads only head by head: the split fell)
        assert (spec["k.weight"].view, spec["k.weight"].axes) == ((2, 2, 8), ("q.head", None, "in"))
    else:
        assert spec["k.weight"].axes == ("q", "in")
    assert spec["v.weight"].axes == ("v", "in")
    o_axes = ("out", "q.head", Inner("q.query", 1), v)
    assert (spec["o.weight"].view, spec["o.weight"].axes) == ((8, 2, 2, 2), o_axes)
    assert spec.block_shape("v") == spec.block_shape("q.query") == (2, 2)
    _heads_move_on_the_network(model, spec, x, "q.heads", ("v",))
    # the query heads alone, inside their blocks: q's rows and o's columns move, k and v stay
    _heads_move_on_the_network(model, spec, x, "q.query", ("o",))
    for basis in ("complete", "linear"):
        assert_equivariant(nfc.NFLinear(spec, 1, 2, basis=basis).double(), spec, trials=2)


def test_tiled_key_value_heads_move_as_blocks_with_their_query_heads():
    # ``repeat`` tiles the key/value heads (query head i reads key/value head i % 2, as
    # einops' "b h n d -> b (r h) n d" does in x-transformers). Before, every head shared one
    # permutation; the output's heads are now merged tiled too, and the query heads of each
    # block (0 and 2, 1 and 3) permute inside it: q's rows viewed as (query heads, key/value
    # heads, one head's dims)
    model = model_(lambda: _GroupedHeads("tiled")).double()
    x = x_(2, 5, 8).double()
    spec, report = trace_with_report(model, x, channel_dim=-1)
    assert report.verification.ok
    assert list(spec.blocks) == ["q.heads"] and spec.blocks["q.heads"].count == 2
    q = spec["q.weight"]
    assert q.view == (2, 2, 2, 8) and q.axes == (Inner("q.query", 1), "q.head", Inner("q", 1), "in")
    o = spec["o.weight"]
    assert o.view == (8, 2, 2, 2)
    assert o.axes == ("out", Inner("q.query", 2), "q.head", Inner("v", 2))
    assert spec["k.weight"].axes == ("q", "in") and spec["v.weight"].axes == ("v", "in")
    _heads_move_on_the_network(model, spec, x, "q.heads", ("v",))
    _heads_move_on_the_network(model, spec, x, "q.query", ("o",))
    assert_equivariant(nfc.NFLinear(spec, 1, 2).double(), spec, trials=2)


class _MultiQuery(nn.Module):
    """Multi-query attention: 4 query heads of 2 features and one key/value head, read by
    every query head through a broadcast (``k`` of one head in the matmul), ``expand`` and a
    reshape, ``repeat_interleave``, ``repeat`` or ``enable_gqa``; ``rotated`` adds RoPE on q
    and k; ``alibi`` a slope per query head times the key positions."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.q, self.o = nn.Linear(8, 8), nn.Linear(8, 8)
        self.k, self.v = nn.Linear(8, 2), nn.Linear(8, 2)

    def forward(self, x):
        b, n, _ = x.shape
        q = self.q(x).view(b, n, 4, 2).transpose(1, 2)
        k, v = (f(x).view(b, n, 1, 2).transpose(1, 2) for f in (self.k, self.v))
        if self.how == "rotated":
            q, k = (_partial_rotary(t, 2) for t in (q, k))
        if self.how == "expand":
            k, v = (t[:, :, None].expand(b, 1, 4, n, 2).reshape(b, 4, n, 2) for t in (k, v))
        elif self.how == "repeat_interleave":
            k, v = (t.repeat_interleave(4, dim=1) for t in (k, v))
        elif self.how == "repeat":
            k, v = (t.repeat(1, 4, 1, 1) for t in (k, v))
        if self.how in ("broadcast", "alibi"):
            scores = q @ k.transpose(-1, -2)
            if self.how == "alibi":
                slopes = torch.arange(1, 5, dtype=x.dtype)[:, None, None]
                scores = scores + slopes * torch.arange(n, dtype=x.dtype)
            y = scores.softmax(-1) @ v
        else:
            grouped = self.how in ("enable_gqa", "rotated")
            y = nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=grouped)
        return self.o(y.transpose(1, 2).reshape(b, n, 8))


@pytest.mark.parametrize(
    "how", ["broadcast", "expand", "repeat_interleave", "repeat", "enable_gqa", "rotated"]
)
def test_multi_query_heads_permute(how):
    # before: the one key/value head, expanded for the query heads, met them as positions
    # (its heads dim unlabelled), and the output flattened the query heads with the values'
    # neurons, which held them: every query head stayed in place. Now the query heads are a
    # space (each a block of its rows in q and of its columns in o), the key's and value's
    # neurons one permutation for every head
    model = model_(lambda: _MultiQuery(how)).double()
    x = x_(2, 5, 8).double()
    spec, report = trace_with_report(model, x, channel_dim=-1)
    assert report.verification.ok and not report.heads_in_place
    assert list(spec.blocks) == ["q.heads"] and spec.blocks["q.heads"].count == 4
    qk = None if how == "rotated" else "q"  # RoPE fixes the queries' and keys' features
    assert (spec["q.weight"].view, spec["q.weight"].axes) == ((4, 2, 8), ("q.head", qk, "in"))
    assert spec["k.weight"].axes == (qk, "in") and spec["v.weight"].axes == ("v", "in")
    assert (spec["o.weight"].view, spec["o.weight"].axes) == ((8, 4, 2), ("out", "q.head", "v"))
    _heads_move_on_the_network(model, spec, x, "q.heads", ("o",))
    for basis in ("complete", "linear"):
        assert_equivariant(nfc.NFLinear(spec, 1, 2, basis=basis).double(), spec, trials=2)


def test_multi_query_heads_stay_where_a_slope_per_head_meets_them():
    spec, report = trace_with_report(
        model_(lambda: _MultiQuery("alibi")), x_(2, 5, 8), channel_dim=-1
    )
    assert report.verification.ok and not spec.blocks
    assert spec["o.weight"].axes == ("out", ("v", "v", "v", "v"))


class _FusedGroups(nn.Module):
    """Falcon's new decoder layout: one projection holding, per key/value head, its two query
    heads, then its key head and its value head (``(B, N, 2, 4, D)``); ``rotated`` adds RoPE.
    ``chained`` views it as Hugging Face's Falcon does: ``(B, N, 8, D)``, then that viewed
    again as ``(B, N, 2, 4, D)``."""

    def __init__(self, rotated: bool, chained: bool = False) -> None:
        super().__init__()
        self.rotated, self.chained = rotated, chained
        self.qkv, self.o = nn.Linear(8, 16), nn.Linear(8, 8)

    def forward(self, x):
        b, n, _ = x.shape
        if self.chained:
            y = self.qkv(x).view(b, n, -1, 2).view(b, n, 2, -1, 2)
            q = y[..., :-2, :].flatten(-3, -2).transpose(1, 2)
        else:
            y = self.qkv(x).view(b, n, 2, 4, 2)
            q = y[..., :2, :].reshape(b, n, 4, 2).transpose(1, 2)
        k, v = (y[..., i, :].transpose(1, 2).repeat_interleave(2, dim=1) for i in (2, 3))
        if self.rotated:
            q, k = (_partial_rotary(t, 2) for t in (q, k))
        y = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.o(y.transpose(1, 2).reshape(b, n, 8))


@pytest.mark.parametrize("rotated", [False, True])
def test_heads_a_chained_reshape_skips_are_no_family(rotated):
    # before: the first view's split of 8 "heads", read by nothing (the second view reads
    # the projection as one reshape), moved as 8 free blocks of rows; verification caught it
    # and held every head. Now it is no family: the key/value groups move (a space of 2)
    model = model_(lambda: _FusedGroups(rotated, chained=True)).double()
    x = x_(2, 5, 8).double()
    spec, report = trace_with_report(model, x, channel_dim=-1)
    assert report.verification.ok and not report.heads_in_place
    assert [s.size for s in spec.spaces.values() if s.role == "hidden"] == [2]
    assert_equivariant(nfc.NFLinear(spec, 1, 2).double(), spec, trials=2)


@pytest.mark.parametrize("rotated", [False, True])
def test_query_heads_laid_out_with_their_key_head_stay_in_their_block(rotated):
    # the fused rows read a block's query heads and its key head with one column (or, under
    # RoPE, one query head's dims beside the others'): o's columns alone would read the query
    # heads one after another, and moving them there only would change the function. No
    # query heads move: each key/value group is one neuron of a space (its dims one
    # permutation for every group, fixed under RoPE), as before
    model = model_(lambda: _FusedGroups(rotated)).double()
    x = x_(2, 5, 8).double()
    spec, report = trace_with_report(model, x, channel_dim=-1)
    assert report.verification.ok and not report.heads_in_place
    assert not any(name.endswith((".query", ".head")) for name in spec.spaces)
    assert [s.size for s in spec.spaces.values() if s.role == "hidden"] == [2]


@pytest.mark.parametrize("how", ["values_tiled", "query_pairs"])
def test_key_value_heads_read_otherwise_share_one_permutation(how):
    spec, report = trace_with_report(
        model_(lambda: _GroupedHeads(how)), x_(2, 5, 8), channel_dim=-1
    )
    assert report.verification.ok
    q, k, v = (_per_head(spec, f"{p}.weight") for p in "qkv")
    assert len(set(q + k)) == 1 and len(set(v)) == 1


class _FusedPerHead(nn.Module):
    """One projection for q, k and v laid out per head: GPT-NeoX's ``(B, N, H, 3 * D)`` taken
    apart by ``chunk``, Bloom's ``(B, N, H, 3, D)`` by ``[..., i, :]``, Falcon's legacy layout
    by two reshapes, ``(B, N, 3 * H, D)`` then ``(H, 3)``, and ``unbind``; or Phi-3's
    ``[q | k | v]`` slices, with q and k rotated (RoPE fixes their dims)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how, self.qkv, self.o = how, nn.Linear(8, 24), nn.Linear(8, 8)

    def forward(self, x):
        b, n, _ = x.shape
        y = self.qkv(x)
        if self.how.startswith("neox"):
            q, k, v = y.view(b, n, 2, 12).transpose(1, 2).chunk(3, dim=-1)
            if self.how == "neox_rotary":  # GPT-NeoX's own: partial rotary
                q, k = (_partial_rotary(t, 2) for t in (q, k))
        elif self.how == "bloom":
            y = y.view(b, n, 2, 3, 4)
            q, k, v = (y[..., i, :].transpose(1, 2) for i in range(3))
        elif self.how == "falcon":
            y = y.view(b, n, 6, 4).unflatten(-2, (2, 3))
            q, k, v = (t.transpose(1, 2) for t in y.unbind(-2))
        else:
            q, k, v = (y[..., i : i + 8].view(b, n, 2, 4).transpose(1, 2) for i in (0, 8, 16))
            angles = torch.arange(n, dtype=x.dtype)[:, None] * torch.arange(1, 5, dtype=x.dtype)
            q, k = (t * angles.cos() + torch.cat((-t[..., 2:], t[..., :2]), -1) * angles.sin()
                    for t in (q, k))  # fmt: skip
        y = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.o(y.transpose(1, 2).reshape(b, n, 8))


@pytest.mark.parametrize("how", ["neox", "neox_rotary", "bloom", "falcon", "rope"])
def test_a_projection_fused_per_head_gives_each_heads_values_a_space(how):
    # before: the values' slice of the per-head dims (neox, bloom) was not flattened back into
    # per-head chunks, and every head shared one permutation; with q and k fixed by RoPE, the
    # fused projection was read in blocks of a head, its 8 values fixed in them; falcon's two
    # reshapes made 6 heads of 4 first, whose (2, 3) split unbind then fixed: 2 spaces in all.
    # Then the heads of a projection laid out per head stayed in place (their block spaces
    # are interleaved along its rows); its rows are now viewed as (heads, one head's layout)
    model = model_(lambda: _FusedPerHead(how)).double()
    x = x_(2, 5, 8).double()
    spec, report = trace_with_report(model, x, channel_dim=-1)
    assert report.verification.ok
    assert list(spec.blocks) == ["qkv.heads"] and spec.blocks["qkv.heads"].count == 2
    v = spec["o.weight"].axes[1]
    assert spec.block_shape(v) == (2, 4) and spec.block_shape("qkv.head") == (2, 1)
    if how == "rope":  # [q | k | v], q's and k's heads one neuron each of 4 fixed positions
        # (Phi-3; before, the heads stayed in place there)
        rows = (Span("qkv.head", 4), Span("qkv.head", 4), v)
        assert spec["qkv.weight"].view is None
        assert spec["qkv.weight"].axes == (rows, "in") and spec["qkv.bias"].axes == (rows,)
    else:
        qk, vv = Inner("qkv/0", 0), Inner(v, 0)
        rows = (2, qk, 2, qk, vv) if how == "neox_rotary" else (qk, qk, vv)
        assert spec["qkv.weight"].view == (2, 12, 8)
        assert spec["qkv.weight"].axes == ("qkv.head", rows, "in")
        assert spec["qkv.bias"].axes == ("qkv.head", rows)
        assert spec.block_shape("qkv/0") == (2, 2 if how == "neox_rotary" else 4)
    # the heads moved on the real network: its function is unchanged; the values' heads put
    # back in place (their rows of the projection, the output's columns), it changes
    perm = _moving(spec, "qkv.heads", torch.Generator().manual_seed(1))
    moved = copy.deepcopy(model)
    moved.load_state_dict(perm.apply_state_dict(model.state_dict()))
    torch.testing.assert_close(moved(x), model(x))
    moved.o.load_state_dict(model.o.state_dict())
    assert (moved(x) - model(x)).abs().max() > 1e-3
    assert nfc.WeightSpaceSpec.from_yaml(spec.to_yaml()) == spec
    for basis in ("complete", "linear"):
        layer = nfc.NFLinear(spec, 1, 2, basis=basis).double()
        assert_equivariant(layer, spec, trials=2)


class _BatchMerged(nn.Module):
    """Segment Anything's attention: a fused qkv viewed ``(3, B * heads, N, d)``, the heads
    merged with the batch, and viewed apart again; ``flip`` reverses v along that dim (head
    ``i`` of one image then meets head ``1 - i`` of the other's scores)."""

    def __init__(self, flip: bool = False) -> None:
        super().__init__()
        self.flip, self.qkv, self.proj = flip, nn.Linear(8, 24), nn.Linear(8, 8)

    def forward(self, x):
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, 2, 4).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, b * 2, n, 4).unbind(0)
        if self.flip:
            v = v.flip(0)
        y = ((q @ k.transpose(-2, -1)).softmax(-1) @ v).view(b, 2, n, 4)
        return self.proj(y.transpose(1, 2).reshape(b, n, 8))


@pytest.mark.parametrize("flip", [False, True])
def test_heads_merged_with_the_batch_permute_on_their_own(flip):
    # before: a batch of 2 turned the heads into positions, and every head shared one
    # permutation (a batch of 1 has no batch dim to merge with)
    spec, report = trace_with_report(
        model_(lambda: _BatchMerged(flip)), x_(2, 5, 8), channel_dim=-1
    )
    assert report.verification.ok
    v = per_head(spec, spec["proj.weight"].axes[1])
    assert len(set(v)) == (1 if flip else 2) and len(spec.blocks) == (0 if flip else 1)
    assert_equivariant(nfc.NFLinear(spec, 1, 2).double(), spec, trials=2)


@pytest.mark.parametrize("how", ["scaled_by_data", "scaled_by_data_einsum"])
def test_values_keep_their_heads_against_scores_whose_heads_were_lost(how):
    # a data-dependent scale per head fixes q's heads (and, in RoFormer, its rotation loses
    # their labels); the scores' heads still meet each value head in place in the matmul, or
    # in an einsum's batch letter (before: one permutation for every value head)
    spec, report = trace_with_report(model_(lambda: _Heads(how)), x_(2, 5, 8), channel_dim=-1)
    assert report.verification.ok
    v = _per_head(spec, "v.weight")
    assert len(set(v)) == 2 and spec["o.weight"].axes[1] == v
    assert_equivariant(nfc.NFLinear(spec, 1, 2).double(), spec, trials=2)


class _PartialRotary(nn.Module):
    """Attention with a rotary embedding on the first ``r`` dims of each head, its pairs
    interleaved (GPT-J, x-transformers), its frequencies a float buffer of the state_dict."""

    def __init__(self, dim: int = 8, heads: int = 2, head_dim: int = 8, r: int = 4) -> None:
        super().__init__()
        self.h, self.d, self.r = heads, head_dim, r
        self.q, self.k, self.v = (nn.Linear(dim, heads * head_dim) for _ in range(3))
        self.o = nn.Linear(heads * head_dim, dim)
        self.register_buffer("inv_freq", 1.0 / 10000 ** (torch.arange(0, r, 2) / r))

    def rotate(self, t, freqs):
        t, rest = t[..., : self.r], t[..., self.r :]
        x1, x2 = t.reshape(*t.shape[:-1], self.r // 2, 2).unbind(-1)
        half = torch.stack((-x2, x1), -1).reshape(t.shape)
        return torch.cat((t * freqs.cos() + half * freqs.sin(), rest), -1)

    def forward(self, x):
        b, n, _ = x.shape
        freqs = torch.einsum("i,j->ij", torch.arange(n, dtype=x.dtype), self.inv_freq)
        freqs = torch.stack((freqs, freqs), -1).reshape(n, self.r)
        q, k, v = (
            f(x).view(b, n, self.h, self.d).transpose(1, 2) for f in (self.q, self.k, self.v)
        )
        q, k = self.rotate(q, freqs), self.rotate(k, freqs)
        y = (q @ k.transpose(-1, -2)).softmax(-1) @ v
        return self.o(y.transpose(1, 2).reshape(b, n, self.h * self.d))


def test_an_interleaved_partial_rotary_keeps_each_heads_other_dims():
    # the rotary pairs asked for q's run in blocks of two, which tied every head's unrotated
    # dims into one space of pairs; that reading's group is smaller, so the first is kept.
    # Each head's rotated dims stay in place, its other 4 dims permute inside its block, and
    # the heads move as blocks with the values' (before, they stayed in place)
    spec, report = trace_with_report(model_(_PartialRotary), x_(2, 5, 8), channel_dim=-1)
    assert report.verification.ok
    for key in ("q.weight", "k.weight"):
        assert spec[key].view == (2, 8, 8)
        assert spec[key].axes == ("q.head", (4, Inner("q", 0)), "in")
    assert spec.block_shape("q") == (2, 4) and spec.block_shape("v") == (2, 8)
    assert spec.spaces["v"].blocks == "q.heads"
    assert_equivariant(nfc.NFLinear(spec, 1, 2).double(), spec, trials=2)


class _FusedHeadsTakenApart(nn.Module):
    """Falcon's fused multi-query projection: ``4 + 2 * kv`` heads of 4 features from one
    layer, taken apart on the heads dim (``split([4, kv, kv], dim=-2)``), each key/value head
    read by ``4 // kv`` query heads in a row; ``rotary`` rotates q and k as RoPE does."""

    def __init__(self, kv: int, rotary: bool) -> None:
        super().__init__()
        self.kv, self.rotary = kv, rotary
        self.qkv, self.o = nn.Linear(8, (4 + 2 * kv) * 4), nn.Linear(16, 8)

    def forward(self, x):
        b, n, _ = x.shape
        fused = self.qkv(x).view(b, n, -1, 4)
        q, k, v = (t.transpose(1, 2) for t in fused.split([4, self.kv, self.kv], dim=-2))
        if self.rotary:
            angle = torch.arange(n, dtype=x.dtype)[:, None] * torch.arange(1, 5, dtype=x.dtype)
            q, k = (t * angle.cos() + t.flip(-1) * angle.sin() for t in (q, k))
        y = nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        return self.o(y.transpose(1, 2).reshape(b, n, 16))


@pytest.mark.parametrize("kv", [1, 2])
@pytest.mark.parametrize("rotary", [False, True])
def test_heads_taken_apart_on_the_heads_dim_keep_their_spaces(kv, rotary):
    # before: the queries, keys and values held some heads of the fused split beside its
    # per-head dims, so the split fell: one permutation for all of them, which RoPE fixed
    spec, report = trace_with_report(
        model_(lambda: _FusedHeadsTakenApart(kv, rotary)), x_(2, 5, 8), channel_dim=-1
    )
    assert report.verification.ok and not report.probes
    if rotary and kv == 2:  # the two key/value heads move as blocks, each with its 2 query
        # heads, which permute inside it: q's rows a span of 4 per query head (RoPE fixes
        # them), k's a span of 4 per block, v's a block space
        rows = (Span("qkv.query", 4), Span("qkv.head", 4), "qkv")
        assert spec["qkv.weight"].axes == (rows, "in") and spec.block_shape("qkv") == (2, 4)
        assert spec.block_shape("qkv.query") == (2, 2)
        o = spec["o.weight"]
        assert o.view == (8, 2, 2, 4)
        assert o.axes == ("out", "qkv.head", Inner("qkv.query", 1), Inner("qkv", 1))
        model = model_(lambda: _FusedHeadsTakenApart(kv, rotary)).double()
        _heads_move_on_the_network(model, spec, x_(2, 5, 8).double(), "qkv.query", ("o",))
        assert_equivariant(nfc.NFLinear(spec, 1, 2).double(), spec, trials=2)
        return
    if kv == 1:  # multi-query (Falcon-7B's): the 4 query heads move, each a span of 4 rows,
        # fixed under RoPE or else a copy of the key head's features; before, the one key and
        # value head were splits of one head, which held them
        qk, v = (None, "qkv") if rotary else ("qkv/0", "qkv/1")
        rows = (Span("qkv.head", 4), 4, v) if rotary else (Span("qkv.head", qk), qk, v)
        assert spec["qkv.weight"].axes == (rows, "in") and spec.blocks["qkv.heads"].count == 4
        o = spec["o.weight"]
        assert o.view == (8, 4, 4) and o.axes == ("out", "qkv.head", v)
        model = model_(lambda: _FusedHeadsTakenApart(kv, rotary)).double()
        _heads_move_on_the_network(model, spec, x_(2, 5, 8).double(), "qkv.heads", ("o",))
        assert_equivariant(nfc.NFLinear(spec, 1, 2).double(), spec, trials=2)
        return
    # the rows, one entry per head of 4 features: a space, or None (fixed, an int of rows)
    parts = spec["qkv.weight"].axes[0]
    rows = tuple(h for p in parts for h in ([None] * (p // 4) if isinstance(p, int) else [p]))
    q, k, v = rows[:4], rows[4 : 4 + kv], rows[4 + kv :]
    group = 4 // kv
    assert spec["o.weight"].axes[1] == tuple(h for h in v for _ in range(group))
    assert len(set(v)) == kv and None not in v and not set(v) & set(q + k)
    if rotary:  # RoPE fixes the queries' and keys' features
        assert set(q + k) == {None}
    else:  # a key head and the query heads that read it: one space
        assert q == tuple(h for h in k for _ in range(group)) and len(set(k)) == kv
    assert_equivariant(nfc.NFLinear(spec, 1, 2).double(), spec, trials=2)


class _Gpt(nn.Module):
    """Two GPT-2 blocks: a fused qkv projection viewed as ``(3, heads, dim)``, causal
    attention, a residual stream and an MLP."""

    def __init__(self, heads: int, dim: int = 8) -> None:
        super().__init__()
        self.h = heads
        self.layers = nn.ModuleList(
            nn.ModuleDict(
                {
                    "ln": nn.LayerNorm(dim),
                    "qkv": nn.Linear(dim, 3 * dim),
                    "proj": nn.Linear(dim, dim),
                    "fc": nn.Linear(dim, 2 * dim),
                    "out": nn.Linear(2 * dim, dim),
                }
            )
            for _ in range(2)
        )

    def forward(self, x):
        b, n, c = x.shape
        for layer in self.layers:
            qkv = layer["qkv"](layer["ln"](x)).view(b, n, 3, self.h, c // self.h)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + layer["proj"](y.transpose(1, 2).reshape(b, n, c))
            x = x + layer["out"](torch.relu(layer["fc"](x)))
        return x


def _heads_move_on_the_network(model, spec, x, blocks: str, put_back: tuple) -> None:
    """Moving the heads of ``blocks`` leaves ``model``'s function unchanged, and the modules
    or parameters ``put_back`` restored alone (their heads back in place) change it."""
    perm = _moving(spec, blocks, torch.Generator().manual_seed(0))
    moved = copy.deepcopy(model)
    moved.load_state_dict(perm.apply_state_dict(model.state_dict()))
    torch.testing.assert_close(moved(x), model(x))
    state = moved.state_dict()
    for key, value in model.state_dict().items():
        if any(key == name or key.startswith(f"{name}.") for name in put_back):
            state[key] = value
    moved.load_state_dict(state)
    assert (moved(x) - model(x)).abs().max() > 1e-3


def _moving(spec, blocks: str, generator: torch.Generator):
    """A draw that moves only the blocks (heads) of ``blocks`` (or, where it names a space, only
    that space inside its blocks), and moves them."""
    space = spec.spaces.get(blocks) or next(s for s in spec.spaces.values() if s.blocks == blocks)
    while True:
        perm = spec.sample_permutation(generator, move={blocks})
        if not torch.equal(perm[space.name], torch.arange(space.size)):
            return perm


@pytest.mark.parametrize("heads", [2, 4])
def test_heads_move_as_blocks_on_the_real_network(heads):
    # before: each head's neurons permuted on their own but the heads stayed in place
    model = model_(lambda: _Gpt(heads)).double()
    x = x_(2, 5, 8).double()
    spec, report = trace_with_report(model, x, channel_dim=-1)
    assert report.verification.ok and not report.broken
    assert sorted(spec.blocks) == ["layers.0.qkv.heads", "layers.1.qkv.heads"]
    for name, blocks in spec.blocks.items():
        layer = name.split(".")[1]
        qk, v = (f"layers.{layer}.qkv/{i}" for i in range(2))
        assert blocks.count == heads and spec[f"layers.{layer}.qkv.weight"].axes[0] == (qk, qk, v)
        assert spec.spaces[qk].blocks == spec.spaces[v].blocks == name
        # the heads moved on the real network: its function is unchanged
        perm = _moving(spec, name, torch.Generator().manual_seed(heads))
        moved = copy.deepcopy(model)
        moved.load_state_dict(perm.apply_state_dict(model.state_dict()))
        torch.testing.assert_close(moved(x), model(x))
        # v's heads put back in place, the rest moved, change it: one permutation for all
        with torch.no_grad():
            for key in ("weight", "bias"):
                getattr(moved.layers[int(layer)].qkv, key)[16:] = getattr(
                    model.layers[int(layer)].qkv, key
                )[16:]
        assert (moved(x) - model(x)).abs().max() > 1e-3
    assert_equivariant(nfc.NFLinear(spec, 1, 2).double(), spec, trials=2)


def _partial_rotary(t: torch.Tensor, rot: int, interleaved: bool = False) -> torch.Tensor:
    """RoPE on the first ``rot`` dims of each head, the rest passed through: ``rotate_half``
    (Phi, GPT-NeoX), or with ``interleaved`` pairs taken by strided slices, stacked and
    flattened (GPT-J's ``rotate_every_two``, Cohere, Helium)."""
    n = t.shape[-2]
    t_rot, t_pass = t[..., :rot], t[..., rot:]
    inv = 1.0 / 10000 ** (torch.arange(0, rot, 2, dtype=t.dtype) / rot)
    angles = torch.arange(n, dtype=t.dtype)[:, None] * inv
    if interleaved:
        cos, sin = (f(angles).repeat_interleave(2, -1) for f in (torch.cos, torch.sin))
        turned = torch.stack((-t_rot[..., 1::2], t_rot[..., ::2]), -1).flatten(-2)
    else:
        cos, sin = torch.cat((angles, angles), -1).cos(), torch.cat((angles, angles), -1).sin()
        half = rot // 2
        turned = torch.cat((-t_rot[..., half:], t_rot[..., :half]), -1)
    return torch.cat((t_rot * cos + turned * sin, t_pass), -1)


class _Llama(nn.Module):
    """Llama's attention: separate q, k, v and o projections without biases, 4 heads of 4,
    RoPE (``rotate_half``) on the queries and keys; ``how="per_head"`` gives each head its own
    rotation frequencies (a table with a heads dim), ``how="norm"`` norms the queries and keys
    over every head's features before the heads are split (Olmo-2), ``how="partial"`` rotates
    the first half of each head's dims and passes the rest (Phi, StableLM, GPT-NeoX),
    ``how="interleaved"`` rotates all of them in interleaved pairs (GPT-J's
    ``rotate_every_two``, Cohere)."""

    def __init__(self, how: str = "") -> None:
        super().__init__()
        self.per_head, self.partial = how == "per_head", how in ("partial", "interleaved")
        self.interleaved = how == "interleaved"
        self.q, self.k, self.v, self.o = (nn.Linear(16, 16, bias=False) for _ in range(4))
        self.q_norm, self.k_norm = (
            nn.RMSNorm(16) if how == "norm" else nn.Identity() for _ in "qk"
        )

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.q_norm(self.q(x)), self.k_norm(self.k(x)), self.v(x)
        q, k, v = (t.view(b, n, 4, 4).transpose(1, 2) for t in (q, k, v))
        if self.partial:
            rot = 4 if self.interleaved else 2
            q, k = (_partial_rotary(t, rot, self.interleaved) for t in (q, k))
            y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.o(y.transpose(1, 2).reshape(b, n, c))
        inv = 1.0 / 10000 ** (torch.arange(0, 4, 2, dtype=x.dtype) / 4)
        if self.per_head:
            inv = inv * torch.arange(1, 5, dtype=x.dtype)[:, None, None]  # (heads, 1, 2)
        angles = torch.arange(n, dtype=x.dtype)[:, None] * inv
        cos, sin = torch.cat((angles, angles), -1).cos(), torch.cat((angles, angles), -1).sin()

        def rotate_half(t):
            return torch.cat((-t[..., 2:], t[..., :2]), -1)

        q, k = (t * cos + rotate_half(t) * sin for t in (q, k))
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(b, n, c))


@pytest.mark.parametrize("how", ["", "per_head", "norm", "partial", "interleaved"])
def test_rotated_heads_move_as_blocks_with_their_features_in_place(how):
    # before: RoPE fixed the queries' and keys' features, so their projections' rows were
    # fixed and the heads stayed in place; each head is now a neuron of 4 fixed positions,
    # moved with the values' heads (unless each head has its own rotation). A norm over every
    # head's features: its weight, and the projection that the norm's output ties to the
    # heads, are read head by head too (a first version moved the norm's weight alone)
    model = model_(lambda: _Llama(how)).double()
    x = x_(2, 5, 16).double()
    spec, report = trace_with_report(model, x, channel_dim=-1)
    assert report.verification.ok
    if how == "per_head":
        assert not spec.blocks and spec["q.weight"].axes == (None, "in")
        return
    assert list(spec.blocks) == ["q.heads"] and spec.blocks["q.heads"].count == 4
    # partial rotary: each head's last 2 dims (not rotated) permute inside its block
    # (interleaved pairs, flattened from (pairs, 2), each pair's dims spanning two positions,
    # made the split fall before: every head's dims one permutation, the heads in place)
    rows = (2, Inner("q", 0)) if how == "partial" else None
    for key in ("q.weight", "k.weight"):
        assert (spec[key].view, spec[key].axes) == ((4, 4, 16), ("q.head", rows, "in"))
    if how == "norm":
        for key in ("q_norm.weight", "k_norm.weight"):
            assert (spec[key].view, spec[key].axes) == ((4, 4), ("q.head", None))
    assert nfc.WeightSpaceSpec.from_yaml(spec.to_yaml()) == spec  # views and blocks kept
    assert spec.spaces["q.head"].blocks == spec.spaces["v"].blocks == "q.heads"
    assert spec.block_shape("q.head") == (4, 1) and spec.block_shape("v") == (4, 4)
    perm = _moving(spec, "q.heads", torch.Generator().manual_seed(0))
    moved = copy.deepcopy(model)
    moved.load_state_dict(perm.apply_state_dict(model.state_dict()))
    torch.testing.assert_close(moved(x), model(x))
    # the queries' and keys' heads moved alone (the values' in place) change it
    moved.v.load_state_dict(model.v.state_dict())
    moved.o.load_state_dict(model.o.state_dict())
    assert (moved(x) - model(x)).abs().max() > 1e-3
    assert_equivariant(nfc.NFLinear(spec, 1, 2).double(), spec, trials=2)


class _Shared(nn.Module):
    """One attention applied twice (ALBERT shares its layers' weights), or its queries, keys
    and values made by 1x1 convs grouped by head (SqueezeBERT's ``q_groups``), whose groups
    read the stream's groups where they stand."""

    def __init__(self, grouped: bool = False) -> None:
        super().__init__()
        self.grouped = grouped
        groups = 2 if grouped else 1
        self.q, self.k, self.v = (nn.Conv1d(8, 8, 1, groups=groups) for _ in range(3))
        self.o = nn.Linear(8, 8)

    def attend(self, x):
        b, n, c = x.shape
        q, k, v = (
            f(x.transpose(1, 2)).view(b, 2, 4, n).transpose(2, 3) for f in (self.q, self.k, self.v)
        )
        y = nn.functional.scaled_dot_product_attention(q, k, v)
        return x + self.o(y.transpose(1, 2).reshape(b, n, c))

    def forward(self, x):
        return self.attend(x) if self.grouped else self.attend(self.attend(x))


@pytest.mark.parametrize("grouped", [False, True])
def test_heads_of_shared_or_grouped_projections_stay_in_place(grouped):
    # before: ALBERT's second call of the shared weights merged spaces the first had merged
    # (a KeyError), and SqueezeBERT's grouped queries moved their heads without the stream's
    # groups they read (a group that failed verification)
    spec, report = trace_with_report(model_(lambda: _Shared(grouped)), x_(2, 5, 8), channel_dim=-1)
    assert report.verification.ok and not spec.blocks
    assert len(set(_per_head(spec, "v.weight"))) == 2  # each head's values still a space
    assert_equivariant(nfc.NFLinear(spec, 1, 2).double(), spec, trials=2)


def test_heads_that_fail_to_move_as_blocks_are_kept_in_place(monkeypatch):
    # a safety net for a constraint no rule sees: with the hold that ALiBi's slopes put on the
    # heads forgotten, moving them as blocks changes the output; the trace then keeps every
    # head in place (verified), and the report says why, where it raised SymmetryError before
    from nfncompile.frontend.analysis import SymmetryAnalysis

    monkeypatch.setattr(SymmetryAnalysis, "hold_heads", lambda self, *labels: None)
    explained = []  # the first, failing joint check is not explained: another reading follows
    monkeypatch.setattr(
        verification, "explain_failure", lambda *a, **k: explained.append(a) or None
    )
    spec, report = trace_with_report(model_(lambda: _Heads("alibi")), x_(2, 5, 8), channel_dim=-1)
    assert report.verification.ok and not spec.blocks and not explained
    assert "moving the heads of q.heads as blocks changed the output" in report.heads_in_place
    assert "attention heads kept in place" in str(report)
    q, _, v = (_per_head(spec, f"{p}.weight") for p in "qkv")
    assert len(set(q)) == len(set(v)) == 2  # each head's features still its own
    # the same model as it is: ALiBi's hold is seen, nothing to fall back from
    monkeypatch.undo()
    spec, report = trace_with_report(model_(lambda: _Heads("alibi")), x_(2, 5, 8), channel_dim=-1)
    assert report.verification.ok and not spec.blocks and report.heads_in_place == ""


class _TwoAttentions(nn.Module):
    """ALiBi attention, then plain attention (or ALiBi again), each with its residual."""

    def __init__(self, second: str = "plain") -> None:
        super().__init__()
        self.a, self.b = _Heads("alibi"), _Heads(second)

    def forward(self, x):
        x = x + self.a(x)
        return x + self.b(x)


def test_only_the_heads_that_fail_to_move_are_kept_in_place(monkeypatch):
    # with ALiBi's hold forgotten, its heads fail the verification; the plain attention's
    # heads beside them still move as blocks (before, every family was held in place)
    from nfncompile.frontend.analysis import SymmetryAnalysis

    monkeypatch.setattr(SymmetryAnalysis, "hold_heads", lambda self, *labels: None)
    spec, report = trace_with_report(model_(_TwoAttentions), x_(2, 5, 8), channel_dim=-1)
    assert report.verification.ok
    assert list(spec.blocks) == ["b.q.heads"] and spec.blocks["b.q.heads"].count == 2
    assert "moving the heads of a.q.heads as blocks changed the output" in report.heads_in_place
    assert "b.q.heads" not in report.heads_in_place
    a_q, a_v = (_per_head(spec, f"a.{p}.weight") for p in "qv")
    assert len(set(a_q)) == len(set(a_v)) == 2  # ALiBi's heads in place, each its own features
    assert_equivariant(nfc.NFLinear(spec, 1, 2).double(), spec, trials=2)
    # both ALiBi: neither moves on its own, both held, named
    spec, report = trace_with_report(
        model_(lambda: _TwoAttentions("alibi")), x_(2, 5, 8), channel_dim=-1
    )
    assert report.verification.ok and not spec.blocks
    assert "a.q.heads, b.q.heads as blocks changed the output" in report.heads_in_place


class _PerHeadValue(nn.Module):
    """Attention whose heads each own a learned value: a relative-position bias table added to
    the scores (Swin's, BEiT's: ``table[index]``, one column per head), given to attention as
    its mask (BEiT's fused path), its rows first viewed as a grid and resized (Hugging Face's
    BEiT), or a temperature per head (XCiT, EdgeNeXt). The adversarial
    ways read the table's columns in another order than the heads', or add a constant per
    head (ALiBi's slopes) as the mask."""

    def __init__(self, how: str, heads: int = 2, dim: int = 2, n: int = 5) -> None:
        super().__init__()
        self.how, self.h, self.d = how, heads, dim
        self.qkv, self.o = nn.Linear(8, 3 * heads * dim), nn.Linear(heads * dim, 8)
        if how == "temperature":
            self.temperature = nn.Parameter(torch.rand(heads, 1, 1) + 0.5)
        else:
            self.table = nn.Parameter(torch.randn(2 * n - 1, heads))
            index = torch.arange(n)[:, None] - torch.arange(n)[None] + n - 1
            self.register_buffer("index", index)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.h, self.d).permute(2, 0, 3, 1, 4)
        if self.how != "temperature":
            table = self.table.flip(-1) if self.how == "reversed" else self.table
            if self.how == "resized":  # Hugging Face's BEiT: its rows a grid, resized, flattened
                grid = table.reshape(3, 3, -1).permute(2, 0, 1)[None]
                grid = nn.functional.interpolate(grid, size=(3, 3), mode="bilinear")
                table = grid[0].permute(1, 2, 0).reshape(9, -1)
            bias = table[self.index.view(-1)].view(n, n, -1).permute(2, 0, 1)[None]
        if self.how in ("mask", "slopes"):
            if self.how == "slopes":
                slopes = torch.arange(1, self.h + 1, dtype=x.dtype)[:, None, None]
                bias = slopes * torch.arange(n, dtype=x.dtype)
            y = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        else:
            scores = q @ k.transpose(-1, -2)
            if self.how == "temperature":
                scores = scores * self.temperature
            else:
                scores = scores + bias
            y = scores.softmax(-1) @ v
        return self.o(y.transpose(1, 2).reshape(b, n, self.h * self.d))


@pytest.mark.parametrize("how", ["table", "mask", "resized", "temperature"])
def test_a_value_per_head_moves_with_its_head(how):
    # before: the parameter's axis of one value per head met the heads where they stand (and
    # a mask per head held them), so the heads stayed in place. Now that axis is the heads'
    # own space: the heads move as blocks, each carrying its column of the table. Resized,
    # the table's grid rows were "heads" of their own, moved as blocks though the gather
    # reads each row where it stands: verification caught it and every head stayed in place
    model = model_(lambda: _PerHeadValue(how)).double()
    x = x_(2, 5, 8).double()
    spec, report = trace_with_report(model, x, channel_dim=-1)
    assert report.verification.ok and not report.heads_in_place
    assert list(spec.blocks) == ["qkv.heads"] and spec.blocks["qkv.heads"].count == 2
    key = "temperature" if how == "temperature" else "table"
    axes = ("qkv.head", None, None) if how == "temperature" else (None, "qkv.head")
    assert spec[key].axes == axes and spec.spaces["qkv.head"].blocks == "qkv.heads"
    # the heads moved: the function is unchanged; the values per head put back alone change it
    _heads_move_on_the_network(model, spec, x, "qkv.heads", (key,))
    for basis in ("complete", "linear"):
        assert_equivariant(nfc.NFLinear(spec, 1, 2, basis=basis).double(), spec, trials=2)


@pytest.mark.parametrize("how", ["reversed", "slopes"])
def test_values_per_head_read_otherwise_keep_the_heads_in_place(how):
    # the table's columns in reverse (head i reads column h - 1 - i: moving head i would move
    # another column), a constant per head given as attention's mask: the heads stay, each
    # head's values still permute on their own
    spec, report = trace_with_report(
        model_(lambda: _PerHeadValue(how, heads=3)), x_(2, 5, 8), channel_dim=-1
    )
    assert report.verification.ok and not spec.blocks
    assert len(set(per_head(spec, spec["o.weight"].axes[1]))) == 3
    if how == "reversed":
        assert spec["table"].axes == (None, None)


class _MeanCorrelation(nn.Module):
    """Autoformer's auto-correlation, in short: queries times keys per head and feature (the
    queries first), averaged over the heads and the features into one weight per position,
    which scales every head's values."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(8, 8) for _ in range(4))

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = (f(x).view(b, n, 2, 4) for f in (self.q, self.k, self.v))
        corr = torch.fft.irfft(torch.fft.rfft(q, dim=1) * torch.fft.rfft(k, dim=1).conj(), dim=1)
        weight = corr.mean(2).mean(2).softmax(-1)  # (b, n): over the heads, then the features
        return self.o((v * weight[:, :, None, None]).reshape(b, n, c))


def test_keys_whose_queries_are_read_across_heads_keep_their_heads_with_the_queries():
    # the queries' split falls (their product is averaged over the heads); the keys' holds.
    # Its heads must not move as blocks alone: the queries' rows would stay where they are.
    # A stacked weight's fallen split may join a moving family (its chunks label no weight),
    # an attention split's may not (found on neuralforecast's Autoformer, which failed
    # verification and was read with every head in place)
    model = model_(_MeanCorrelation).double()
    x = x_(2, 6, 8).double()
    spec, report = trace_with_report(model, x, channel_dim=-1)
    assert report.verification.ok and not report.heads_in_place
    assert not any(name.startswith("k.") for name in spec.blocks)
    assert_equivariant(nfc.NFLinear(spec, 1, 2).double(), spec, trials=2)


class _Generated(nn.Module):
    """A hypernetwork's layer: a code from the features' mean, a Linear's outputs viewed as a
    ``(5, 6)`` matrix applied to the features (``bmm`` or ``einsum``), its 5 rows the features
    a last Linear reads; ``identity``: PointNet's T-Net, the generated ``(6, 6)`` matrix plus
    the identity."""

    def __init__(self, how: str = "bmm", identity: bool = False) -> None:
        super().__init__()
        rows = 6 if identity else 5
        self.how, self.identity, self.rows = how, identity, rows
        self.enc, self.coder = nn.Linear(6, 6), nn.Linear(6, 4)
        self.gen, self.out = nn.Linear(4, rows * 6), nn.Linear(rows, 2)

    def forward(self, x):  # (B, N, 6)
        h = torch.relu(self.enc(x))
        w = self.gen(torch.relu(self.coder(h.mean(1))))
        if self.identity:
            w = w + torch.eye(6).flatten().view(1, 36).repeat(x.shape[0], 1)
        w = w.view(-1, self.rows, 6)
        y = (
            torch.bmm(h, w.transpose(1, 2))
            if self.how == "bmm"
            else torch.einsum("bnj,boj->bno", h, w)
        )
        return self.out(torch.relu(y)).mean(1)


@pytest.mark.parametrize("how", ["bmm", "einsum"])
def test_a_generated_weights_rows_move_with_the_layer_that_reads_them(how):
    # before: the generated rows fixed (a layer read their heads), the last Linear's columns too
    model, x = model_(lambda: _Generated(how)).double(), x_(2, 7, 6).double()
    spec, report = trace_with_report(model, x, channel_dim=-1)
    assert report.verification.ok and not report.broken
    rows = spec["out.weight"].axes[1]
    assert spec["gen.weight"].view == (5, 6, 4)
    assert spec["gen.weight"].axes == (rows, "enc", "coder") and spec.spaces[rows].size == 5
    perm = _moving(spec, spec.spaces[rows].blocks, torch.Generator().manual_seed(0))
    moved = copy.deepcopy(model)
    moved.load_state_dict(perm.apply_state_dict(model.state_dict()))
    torch.testing.assert_close(moved(x), model(x))
    moved.out.load_state_dict(model.out.state_dict())  # the reading layer left as it was
    assert (moved(x) - model(x)).abs().max() > 1e-3
    for basis in ("complete", "linear"):
        assert_equivariant(nfc.NFLinear(spec, 1, 2, basis=basis).double(), spec, trials=2)


def test_a_generated_matrix_plus_the_identity_keeps_its_rows():
    # the identity's diagonal would need the rows and the columns moved together: the rows
    # stay, without verification too (not a reading the verification had to undo)
    model, x = model_(lambda: _Generated(identity=True)).double(), x_(2, 7, 6).double()
    spec = nfc.trace(model, x, channel_dim=-1, verify=False)
    assert spec["gen.weight"].axes[0] is None and spec["out.weight"].axes == ("out", None)
    assert not spec.blocks
    assert trace_with_report(model, x, channel_dim=-1)[1].verification.ok


class _FusedRotary(nn.Module):
    """EVA-02's attention (timm): one fused ``qkv`` projection viewed as ``(3, heads, dim)``
    and unbound, RoPE on the queries and keys after a prefix token they pass through (pairs
    interleaved, or ``rotate_half``; the sines and cosines a buffer, as timm's
    ``RotaryEmbeddingCat`` gives them), the bias a concatenation with the keys' zero
    buffer."""

    def __init__(self, interleaved: bool) -> None:
        super().__init__()
        self.interleaved = interleaved
        self.qkv, self.proj = nn.Linear(12, 36, bias=False), nn.Linear(12, 12)
        self.q_bias, self.v_bias = nn.Parameter(torch.randn(12)), nn.Parameter(torch.randn(12))
        self.register_buffer("k_bias", torch.zeros(12), persistent=False)
        angles = torch.arange(8.0)[:, None] / 10000 ** (torch.arange(0, 4, 2) / 4)
        pairs = angles.repeat_interleave(2, -1) if interleaved else angles.repeat(1, 2)
        self.register_buffer("rope", torch.cat((pairs.sin(), pairs.cos()), -1))

    def rotate(self, t):
        sin, cos = self.rope[: t.shape[2]].tensor_split(2, -1)
        if self.interleaved:
            turned = torch.stack((-t[..., 1::2], t[..., ::2]), -1).reshape(t.shape)
        else:
            turned = torch.cat((-t[..., 2:], t[..., :2]), -1)
        return t * cos + turned * sin

    def forward(self, x):
        b, n, c = x.shape
        bias = torch.cat((self.q_bias, self.k_bias, self.v_bias))
        qkv = nn.functional.linear(x, self.qkv.weight, bias)
        q, k, v = qkv.reshape(b, n, 3, 3, 4).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = (torch.cat((t[:, :, :1], self.rotate(t[:, :, 1:])), 2) for t in (q, k))
        y = nn.functional.scaled_dot_product_attention(q, k, v)
        return x + self.proj(y.transpose(1, 2).reshape(b, n, c))


@pytest.mark.parametrize("interleaved", [True, False])
def test_a_fused_projection_under_rotary_keeps_its_values_read_alike(interleaved):
    # before (interleaved pairs): the queries' and keys' heads fell back to one permutation
    # of their dims, and the values, read through the queries' labels, took that reading at
    # the output projection while their own rows did not: a SymmetryError for every EVA-02
    model = model_(lambda: _FusedRotary(interleaved)).double()
    x = x_(2, 5, 12).double()
    spec, report = trace_with_report(model, x, channel_dim=-1)
    assert report.verification.ok
    # the values read alike by qkv's rows, the bias and proj's columns
    values = spec["proj.weight"].axes[1]
    assert spec["v_bias"].axes[0] == values
    rows = spec["qkv.weight"].axes[0]
    assert (rows[-1] if interleaved else tuple(rows[-3:])) == values
    if interleaved:  # and the heads move as blocks, each head's values inside its block
        (heads,) = spec.blocks.values()
        assert heads.count == 3 and spec.spaces[values].blocks == heads.name
        perm = _moving(spec, heads.name, torch.Generator().manual_seed(0))
        moved = copy.deepcopy(model)
        moved.load_state_dict(perm.apply_state_dict(model.state_dict()))
        torch.testing.assert_close(moved(x), model(x))
    else:  # (the keys' zero bias, a constant, ties their heads in place): a space per head
        assert not spec.blocks and len(set(values)) == 3
    # named after the projection that made them, not after the keys' zero bias, which the
    # concatenation made first (before: "cat.const.head", "cat.const.heads", "cat.const")
    assert all(name.startswith(("in", "qkv")) for name in [*spec.spaces, *spec.blocks])
    assert_equivariant(nfc.NFLinear(spec, 1, 2).double(), spec, trials=2)
