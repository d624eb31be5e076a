"""Small PyTorch models the examples and the hand-written specs in specs/weight_spaces/ refer to.

Each factory returns an ``nn.Module`` whose ``state_dict`` has exactly the keys and shapes of
one spec, so ``nfncompile verify`` can check the spec against it, e.g.::

    nfncompile verify examples/my_models.py:concat_mlp --spec specs/weight_spaces/concat_mlp.yaml \\
        --input-shape 2,4

``FlaxMLP`` and ``FlaxGroupedCNN`` compute what the Flax networks of ``flax_mlp.yaml`` and
``flax_grouped_cnn.yaml`` compute, from parameters stored in Flax's layout (kernels
``[in, out]`` and ``[kh, kw, in_per_group, out]``) under Flax's names. ``PerHeadAttention``
is attention whose heads' block spaces interleave along one projection;
``MultiQueryAttention`` is attention whose query heads each read a copy of one key head's
features.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn


class ConcatMLP(nn.Module):
    """``specs/weight_spaces/concat_mlp.yaml``: skip connections by concatenation."""

    def __init__(self, inputs: int = 4, hidden: int = 8, outputs: int = 3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(inputs, hidden)
        self.fc2 = nn.Linear(hidden + inputs, hidden)  # reads cat([h1, x])
        self.fc3 = nn.Linear(hidden + 2, outputs)  # reads cat([h2, mean(x), norm(x)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h1 = torch.relu(self.fc1(x))
        h2 = torch.relu(self.fc2(torch.cat([h1, x], dim=1)))
        stats = torch.stack([x.mean(1), x.norm(dim=1)], dim=1)  # unchanged by permuting x
        return self.fc3(torch.cat([h2, stats], dim=1))


class ResidualMLP(nn.Module):
    """A residual MLP (examples/04): every tensor added into the stream shares one space."""

    def __init__(self, inputs: int = 4, width: int = 8, outputs: int = 3) -> None:
        super().__init__()
        self.fc_in = nn.Linear(inputs, width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)  # its output is added to the stream
        self.fc_out = nn.Linear(width, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc_in(x)
        h = h + self.fc2(torch.relu(self.fc1(h)))
        return self.fc_out(torch.relu(h))


class _Dense(nn.Module):
    """A Flax ``nn.Dense``: ``x @ kernel + bias`` with ``kernel`` of shape ``[in, out]``."""

    def __init__(self, inputs: int, outputs: int) -> None:
        super().__init__()
        bound = inputs**-0.5
        self.kernel = nn.Parameter(torch.empty(inputs, outputs).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(outputs).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.kernel + self.bias


class _Conv(nn.Module):
    """A Flax ``nn.Conv`` (SAME padding): ``kernel`` of shape ``[kh, kw, in // groups, out]``."""

    def __init__(self, inputs: int, outputs: int, size: int, groups: int = 1) -> None:
        super().__init__()
        bound = (inputs // groups * size * size) ** -0.5
        shape = (size, size, inputs // groups, outputs)
        self.kernel = nn.Parameter(torch.empty(shape).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(outputs).uniform_(-bound, bound))
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W), PyTorch's layout
        weight = self.kernel.permute(3, 2, 0, 1)  # HWIO -> OIHW
        return F.conv2d(x, weight, self.bias, padding="same", groups=self.groups)


class FlaxMLP(nn.Module):
    """``specs/weight_spaces/flax_mlp.yaml``: a 4-16-16-3 tanh MLP in Flax's layout."""

    def __init__(self, widths: tuple[int, ...] = (4, 16, 16, 3)) -> None:
        super().__init__()
        for i, (a, b) in enumerate(itertools.pairwise(widths)):
            self.add_module(f"Dense_{i}", _Dense(a, b))
        self.depth = len(widths) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.depth):
            x = getattr(self, f"Dense_{i}")(x)
            if i < self.depth - 1:
                x = torch.tanh(x)
        return x


class FlaxGroupedCNN(nn.Module):
    """``specs/weight_spaces/flax_grouped_cnn.yaml``: 1x1 conv, a 3x3 conv in 2 groups, mean,
    dense."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv_0 = _Conv(3, 4, 1)
        self.Conv_1 = _Conv(4, 6, 3, groups=2)
        self.Dense_0 = _Dense(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.Conv_1(torch.relu(self.Conv_0(x))))
        return self.Dense_0(h.mean((2, 3)))


class PerHeadAttention(nn.Module):
    """``specs/weight_spaces/per_head_attention.yaml``: self-attention over a sequence of
    4-feature tokens (input ``(batch, 4, tokens)``), 3 heads of 2, one projection laid out per head (GPT-NeoX's: each head's
    queries, keys and values in turn), then an output projection and a mean over tokens."""

    heads, dim = 3, 2

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(4, 3 * self.heads * self.dim)
        self.dense = nn.Linear(self.heads * self.dim, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2)  # (batch, 4 channels, tokens) -> (batch, tokens, 4)
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, self.heads, 3, self.dim).unbind(3)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        y = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.dense(y.transpose(1, 2).reshape(b, n, -1)).mean(1)


class MultiQueryAttention(nn.Module):
    """``specs/weight_spaces/multi_query_attention.yaml``: self-attention over a sequence of
    4-feature tokens (input ``(batch, 4, tokens)``), 3 query heads of 2 and one key and value
    head, fused as ``[q | k | v]`` (GPTBigCode's), then an output projection and a mean over
    tokens."""

    heads, dim = 3, 2

    def __init__(self) -> None:
        super().__init__()
        self.c_attn = nn.Linear(4, (self.heads + 2) * self.dim)
        self.c_proj = nn.Linear(self.heads * self.dim, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2)  # (batch, 4 channels, tokens) -> (batch, tokens, 4)
        b, n, _ = x.shape
        q, k, v = self.c_attn(x).split([self.heads * self.dim, self.dim, self.dim], dim=-1)
        q = q.view(b, n, self.heads, self.dim).transpose(1, 2)
        y = nn.functional.scaled_dot_product_attention(q, k[:, None], v[:, None])
        return self.c_proj(y.transpose(1, 2).reshape(b, n, -1)).mean(1)


class EnsembleOwnData(nn.Module):
    """An ensemble of 3 MLPs ``4 -> 5 -> 2`` with stacked weights ``(members, in, out)`` (PETS'
    and mbrl-lib's ``EnsembleLinearLayer``), each member reading its own minibatch: the input
    is ``(batch, 4 features, 3 members)``; the output the members' mean."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(3, 4, 5) / 2)
        self.b1 = nn.Parameter(torch.randn(3, 1, 5) / 4)
        self.w2 = nn.Parameter(torch.randn(3, 5, 2) / 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(x.permute(2, 0, 1) @ self.w1 + self.b1)  # member e reads x[..., e]
        return (h @ self.w2).mean(0)


class ChannelShuffle(nn.Module):
    """A ShuffleNetV2 unit: a 1x1 stem conv ``3 -> 4`` whose first 2 channels pass through
    and last 2 go through a 1x1 conv, concatenated and shuffled (the two halves interleaved),
    then a 1x1 head conv; input ``(batch, 3, height, width)``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(2, 2, 1)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = torch.relu(self.stem(x)).chunk(2, dim=1)
        out = torch.cat([x1, torch.relu(self.b(x2))], 1)
        n, c, h, w = out.shape
        out = out.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.head(out).mean((2, 3))


def concat_mlp() -> ConcatMLP:
    return ConcatMLP()


def residual_mlp() -> ResidualMLP:
    return ResidualMLP()


def flax_mlp() -> FlaxMLP:
    return FlaxMLP()


def flax_grouped_cnn() -> FlaxGroupedCNN:
    return FlaxGroupedCNN()


def per_head_attention() -> PerHeadAttention:
    return PerHeadAttention()


def multi_query_attention() -> MultiQueryAttention:
    return MultiQueryAttention()


def ensemble_own_data() -> EnsembleOwnData:
    return EnsembleOwnData()


def channel_shuffle() -> ChannelShuffle:
    return ChannelShuffle()
