"""torch.nn's attention: ``nn.MultiheadAttention`` inside ``nn.TransformerEncoder`` layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.attention.flex_attention as flex
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import AuxRequest, create_block_mask, flex_attention

import nfncompile as nfc
from nfncompile.frontend.tracing import trace_with_report
from nfncompile.spec import Inner
from tests.frontend import helpers
from tests.frontend.helpers import model_, per_head, spaces_, x_


class Encoder(nn.Module):
    """Tokens -> two ``nn.TransformerEncoderLayer`` s (batch first) -> mean -> head; with
    ``causal`` a causal attention mask."""

    def __init__(self, causal: bool = False) -> None:
        super().__init__()
        self.causal = causal
        self.emb = nn.Linear(6, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1]) if self.causal else None
        return self.head(self.enc(self.emb(x), mask=mask).mean(1))


@pytest.mark.parametrize("causal", [False, True])
def test_a_transformer_encoder_keeps_its_stream_mlp_and_head_spaces(causal):
    # before: nn.TransformerEncoder (a torch.nn module with weights and no rule) was one
    # call, probed not equivariant (its weights do not move), and only `out` was left
    spec, report = nfc.trace_with_report(model_(lambda: Encoder(causal)), x_(2, 5, 6))
    tokens = [] if causal else [("in", 5, "input")]  # no positional encoding: tokens permute
    heads = [(f"enc.layers.{i}.self_attn/{h}", 16, "hidden") for i in (0, 1) for h in range(2)]
    assert spaces_(spec) == [
        *tokens, ("emb", 16, "hidden"), *heads[:2], ("enc.layers.0.linear1", 32, "hidden"),
        *heads[2:], ("enc.layers.1.linear1", 32, "hidden"), ("out", 3, "output"),
    ]  # fmt: skip
    # the projection's rows: queries and keys alike, then the values with the output
    # projection's columns that read them; each a block space of 2 heads of 8, the heads
    # moved together
    attn = "enc.layers.0.self_attn"
    qk, v = f"{attn}/0", f"{attn}/1"
    assert spec[f"{attn}.in_proj_weight"].axes == ((qk, qk, v), "emb")
    assert spec[f"{attn}.in_proj_bias"].axes == ((qk, qk, v),)
    assert spec[f"{attn}.out_proj.weight"].axes == ("emb", v)  # the residual stream
    assert spec.spaces[qk].blocks == spec.spaces[v].blocks == f"{attn}.heads"
    assert spec.block_shape(qk) == spec.block_shape(v) == (2, 8)
    assert spec["enc.layers.1.linear2.weight"].axes == ("emb", "enc.layers.1.linear1")
    assert report.verification.ok and not report.leaf_calls
    reasons = {b.reason for b in report.broken}
    assert reasons == ({"attention mask depends on position"} if causal else set())


@pytest.mark.parametrize("average", [True, False])
def test_attention_weights_returned_move_with_the_positions(average):
    class Weights(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            y, w = self.attn(x, x, x, need_weights=True, average_attn_weights=average)
            return self.fc(y), w

    # the tokens (dim 1 of the input) permute: the weights' rows and columns with them
    spec, report = nfc.trace_with_report(model_(Weights), x_(2, 5, 8))
    assert spec.spaces["in"].size == 5 and report.verification.ok
    assert spec["attn.out_proj.weight"].axes[0] == spec["fc.weight"].axes[1] == "attn.out_proj"
    # the heads move as blocks, unless the weights are returned per head (heads in place)
    assert bool(spec.blocks) == average


class SelfAttention(nn.Module):
    """timm's and Hugging Face's attention: q, k, v projections, heads by a reshape,
    ``F.scaled_dot_product_attention``, an output projection."""

    def __init__(self, causal: bool = False) -> None:
        super().__init__()
        self.causal = causal
        self.q, self.k, self.v, self.o = (nn.Linear(8, 8) for _ in range(4))

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = (p(x).view(b, n, 2, 4).transpose(1, 2) for p in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.o(y.transpose(1, 2).reshape(b, n, 8))


@pytest.mark.parametrize("causal", [False, True])
def test_scaled_dot_product_attention_ties_queries_with_keys_and_values_with_the_output(causal):
    # before: probed, "labels passed through": q's, k's and v's dims all one space
    spec, report = nfc.trace_with_report(model_(lambda: SelfAttention(causal)), x_(2, 5, 8))
    qk, v = spec["q.weight"].axes[0], spec["v.weight"].axes[0]
    assert spec["k.weight"].axes[0] == qk and spec["o.weight"].axes[1] == v and qk != v
    assert not report.probes and report.verification.ok
    assert ("in" in spec.spaces) == (not causal)  # the 5 tokens permute unless masked


class BiasedAttention(nn.Module):
    """T5's attention: a learned bias per head and relative position, added to the scores
    as the mask of ``scaled_dot_product_attention``."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.out, self.head = nn.Linear(8, 24), nn.Linear(8, 8), nn.Linear(8, 2)
        self.bias = nn.Embedding(5, 2)  # (relative position bucket, head)

    def forward(self, x):  # (batch, features, tokens)
        x = x.transpose(1, 2)
        b, n, _ = x.shape
        q, k, v = (t.reshape(b, n, 2, 4).transpose(1, 2) for t in self.qkv(x).chunk(3, -1))
        pos = torch.arange(n)
        buckets = (pos[None, :] - pos[:, None]).clamp(-2, 2) + 2
        bias = self.bias(buckets).permute(2, 0, 1)[None]  # (1, heads, n, n)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.head((x + self.out(y.transpose(1, 2).reshape(b, n, 8))).mean(1))


def test_a_mask_made_by_the_models_weights_moves_with_the_heads():
    # the bias table's head axis was first left a free space (the derived group did not
    # hold), then fixed with every head in place; it is now the heads' own space: each head
    # moves as a block with its column of the table, and the relative positions stay fixed
    spec, report = trace_with_report(model_(BiasedAttention), x_(2, 8, 5))
    assert spec["bias.weight"].axes == (None, "qkv.head") and report.verification.ok
    assert spec.blocks["qkv.heads"].count == 2 and not report.heads_in_place
    assert spec.spaces["qkv.head"].blocks == "qkv.heads"


class CrossAttention(nn.Module):
    """``nn.MultiheadAttention`` with keys and values of another width (``kdim``, ``vdim``):
    three projection weights (``use_separate_proj_weight``), as WavLM passes them too."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.ctx = nn.Linear(6, 16), nn.Linear(5, 8)
        self.attn = nn.MultiheadAttention(16, 2, kdim=8, vdim=8, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x, c):
        h, m = self.emb(x), torch.relu(self.ctx(c))
        return self.head(h + self.attn(h, m, m, need_weights=False)[0])


def test_separate_projection_weights_give_each_head_its_spaces():
    # before: "attention with separate projections" fixed every projection, and the stream
    spec, report = trace_with_report(
        model_(CrossAttention), (x_(2, 4, 6), x_(2, 7, 5)), channel_dim=-1
    )
    assert report.verification.ok and not report.broken
    q, k, v = (spec[f"attn.{n}_proj_weight"].axes for n in "qkv")
    assert q[1] == spec["emb.weight"].axes[0] and k[1] == v[1] == spec["ctx.weight"].axes[0]
    assert q[0] == k[0] and spec["attn.out_proj.weight"].axes[1] == v[0]
    # each head's features a block of a space, the 2 heads moved together
    assert len(set(per_head(spec, q[0]))) == 2 and len(set(per_head(spec, v[0]))) == 2
    assert spec.spaces[q[0]].blocks == spec.spaces[v[0]].blocks == "attn.heads"


_compiled_flex = torch.compile(flex_attention)  # as models call it


class FlexAttention(nn.Module):
    """Self-attention through ``flex_attention`` (2 heads of 4, or 4 query heads over 2
    key/value heads), with a learned relative-position bias per head as its ``score_mod``, a
    causal ``block_mask``, its log-sum-exp returned and used, called through its module, compiled,
    from a helper of another module, or with its output's shape checked (traced with the
    example's shapes, so flex attention runs on fake tensors)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how, self.heads = how, 4 if how == "gqa" else 2
        kv = 8 if how == "gqa" else 16
        self.q, self.kv, self.o = nn.Linear(8, 8), nn.Linear(8, kv), nn.Linear(8, 8)
        self.rel = nn.Parameter(torch.randn(2, 9))  # (head, relative position + 4)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        b, n, _ = x.shape
        q = self.q(x).view(b, n, self.heads, -1).transpose(1, 2)
        k, v = self.kv(x).view(b, n, 2, 2, -1).permute(2, 0, 3, 1, 4)
        kw = {}
        if self.how == "score_mod":
            kw["score_mod"] = lambda s, _, h, i, j: s + self.rel[h, i - j + 4]
        if self.how == "block_mask":
            kw["block_mask"] = create_block_mask(lambda _, __, i, j: i >= j, None, None, n, n)
        attend = {
            "module": flex.flex_attention,
            "compiled": _compiled_flex,
            "helper": helpers.attend,
        }
        attend = attend.get(self.how, flex_attention)
        if self.how == "lse":
            kw["return_aux"] = AuxRequest(lse=True)
        y = attend(q, k, v, enable_gqa=self.how == "gqa", **kw)
        if self.how == "lse":  # the log-sum-exp per query, added to every feature
            y = y[0] + y[1].lse[..., None]
        if self.how == "checked" and y.shape[-1] != 4:  # plain fx fails: traced with shapes
            raise ValueError("one head's features are 4")
        return self.head((x + self.o(y.transpose(1, 2).reshape(b, n, 8))).mean(1))


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize(
    "how",
    ["plain", "module", "compiled", "helper", "checked", "score_mod", "block_mask", "gqa", "lse"],
)
def test_flex_attention_keeps_each_heads_spaces(how):
    # before: fx traced into flex attention's implementation and the probe of the module it
    # was called in fixed every space it touched
    model = model_(lambda: FlexAttention(how))
    spec, report = trace_with_report(model, x_(2, 5, 8))
    assert report.verification.ok and not report.probes
    assert bool(report.specialised) == (how in ("checked", "block_mask"))  # shapes read
    if how == "gqa":  # each key/value head a block, moved with its two query heads, which
        # permute inside it
        assert spec["kv.weight"].axes[0] == ("q", "kv") and list(spec.blocks) == ["q.heads"]
        qk, v, query = Inner("q", 0), Inner("kv", 1), Inner("q.query", 0)
        assert spec["q.weight"].view == (2, 2, 2, 8)
        assert spec["q.weight"].axes == ("q.head", query, qk, None)
        assert spec["o.weight"].axes == (None, "q.head", Inner("q.query", 1), v)
        assert spec.block_shape("q") == spec.block_shape("kv") == (2, 2)
        assert spec.block_shape("q.query") == (2, 2)
        return
    q = per_head(spec, spec["q.weight"].axes[0])
    k, v = np.split(np.array(per_head(spec, spec["kv.weight"].axes[0])), 2)
    assert len(set(q)) == 2 and q == tuple(k.repeat(len(q) // len(k)))  # a head's q with its k
    o = per_head(spec, spec["o.weight"].axes[1])
    assert o == tuple(v.repeat(len(q) // len(v))) and set(v) != set(k)
    # the heads move together where no mask or score_mod reads them and none is shared
    assert len(spec.blocks) == (how in ("plain", "module", "compiled", "helper", "checked", "lse"))
    # unmasked, the 5 tokens permute; a score_mod reads the head but no neuron
    unmasked = ("plain", "module", "compiled", "helper", "checked", "lse")
    assert ("in" in spec.spaces) == (how in unmasked)
    assert spec["rel"].axes == (None, None)
    assert nfc.trace(model, x_(2, 5, 8)) == spec  # fx's autowrap registry left as it was
