"""Trace a small transformer that reads token features, and build an NF-Layer over its weights.

A sequence model's input is ``(batch, sequence, features)``: its neurons are the last dim, so
``channel_dim=-1`` tells the tracer (the default, dim 1, is a CNN's channels). The fused
``qkv`` projection is viewed as ``(3, heads, head_dim)`` and taken apart, so each head's q and
k features share a space (attention reads their product, head by head) while its v features
have their own: every head's features permute on their own, and the heads themselves move
as blocks (head i of q, k and v together), one block permutation per attention layer. The
sequence positions stay fixed (they are not the channel dim).

Run: python examples/07_trace_a_transformer.py
Same from the shell, for a model in your own file:
    nfncompile trace my_file.py:make_lm --input-shape 2,6,12 --channel-dim -1
"""

import torch
from torch import nn

import nfncompile as nfc
from nfncompile.testing import assert_equivariant


class Block(nn.Module):
    """Pre-norm self-attention with a fused qkv projection, then a GELU MLP."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q @ k.transpose(-2, -1) / (c // self.heads) ** 0.5).softmax(-1)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))
        return x + self.fc2(nn.functional.gelu(self.fc1(self.norm2(x))))


class TokenClassifier(nn.Module):
    """Token features in, a class per sequence out (mean over tokens)."""

    def __init__(self, features: int = 12, dim: int = 16, classes: int = 5) -> None:
        super().__init__()
        self.embed = nn.Linear(features, dim)
        self.blocks = nn.Sequential(Block(dim), Block(dim))
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.embed(x)).mean(1))


torch.manual_seed(0)
model = TokenClassifier()
x = torch.randn(2, 6, 12)  # (batch, sequence, features)
spec, report = nfc.trace_with_report(model, x, channel_dim=-1)
print(report)

print("input space (the features):", spec.spaces["in"].size)
qk, _, v = spec["blocks.0.qkv.weight"].axes[0]  # q's rows, k's, v's: 2 heads each
heads = spec.blocks[spec.spaces[v].blocks]
print(
    f"block 0: q/k features {qk!r}, v features {v!r}, {heads.count} heads moved by {heads.name!r}"
)
print("heads x features per head:", spec.block_shape(qk), spec.block_shape(v))

# An NF-Layer over this weight space, checked equivariant on random group elements
layer = nfc.NFLinear(spec, 1, 4, basis="linear")
print(layer)
error = assert_equivariant(layer, spec, trials=2)
print(f"NFLinear equivariant to {error:.1e}")
