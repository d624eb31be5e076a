"""Hypothesis strategies for random source architectures (MLPs and CNNs).

:func:`random_models` draws ``(model, example_input)`` pairs: a :class:`RandomNet` of random
depth and widths whose blocks mix plain layers, residual adds, channel concatenation, gated
(GLU-style ``chunk``) layers and channel slices, with random activations and optional
normalisation. Other test modules import it to get random traced specs::

    from tests.frontend.strategies import random_models

    @given(random_models())
    def test_something(model_and_input):
        model, x = model_and_input
        spec = nfc.trace(model, x)

Every draw is deterministic: the model's weights come from a seed hypothesis draws, under
:func:`torch.random.fork_rng` (the global RNG is left untouched).
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st
from torch import nn

__all__ = ["ACTIVATIONS", "PATTERNS", "RandomNet", "block_specs", "random_models"]


class _Sin(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(3.0 * x)


#: name -> activation module factory
ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": lambda: nn.LeakyReLU(0.1),
    "elu": nn.ELU,
    "relu6": nn.ReLU6,
    "sin": _Sin,
}

#: block patterns: ``plain`` x -> act(norm(f(x))); ``residual`` x + act(f(x)) (same width);
#: ``concat`` cat([x, act(f(x))]); ``glu`` a, b = chunk(f(x), 2); act(a) * b;
#: ``slice`` act(f(x[:, :k])).
PATTERNS = ("plain", "residual", "concat", "glu", "slice")


class RandomNet(nn.Module):
    """An MLP (``kind="mlp"``, Linear layers) or CNN (``kind="cnn"``, 3x3 convs, global
    average pool and a linear head) built from a list of ``(pattern, width, activation, k[,
    groups])`` blocks (``k``: the slice length of a ``slice`` block; ``groups``: the conv's
    groups when they divide its input and output channels, else 1). ``norm`` is ``False``,
    ``True`` / ``"batch"`` (LayerNorm for MLPs, BatchNorm for CNNs) or ``"group"`` (CNNs:
    GroupNorm with the block's groups).

    Examples
    --------
    >>> net = RandomNet("mlp", 3, 2, [("residual", 4, "relu", 1), ("concat", 2, "tanh", 1)])
    >>> net(torch.zeros(5, 3)).shape
    torch.Size([5, 2])
    """

    def __init__(self, kind: str, in_ch: int, out: int, blocks: list, norm: bool | str = False):
        super().__init__()
        self.kind = kind
        self.patterns = [b[0] for b in blocks]
        self.slices = []
        self.layers = nn.ModuleList()
        self.norms = nn.ModuleList()
        self.acts = nn.ModuleList()
        w = in_ch
        for pattern, width, act, k, *groups in blocks:
            k = max(1, min(k, w))
            fan_in = k if pattern == "slice" else w
            fan_out = {"residual": w, "glu": 2 * width}.get(pattern, width)
            g = groups[0] if groups else 1
            self.layers.append(self._layer(fan_in, fan_out, g))
            self.norms.append(self._norm(fan_out, norm, g) if norm else nn.Identity())
            self.acts.append(ACTIVATIONS[act]())
            self.slices.append(k)
            w = {"residual": w, "concat": w + width}.get(pattern, width)
        self.head = nn.Linear(w, out)

    def _layer(self, i: int, o: int, g: int) -> nn.Module:
        if self.kind == "mlp":
            return nn.Linear(i, o)
        return nn.Conv2d(i, o, 3, padding=1, groups=g if i % g == 0 and o % g == 0 else 1)

    def _norm(self, c: int, norm: bool | str, g: int) -> nn.Module:
        if self.kind == "mlp":
            return nn.LayerNorm(c)
        return nn.GroupNorm(g if c % g == 0 else 1, c) if norm == "group" else nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for pattern, k, f, norm, act in zip(
            self.patterns, self.slices, self.layers, self.norms, self.acts
        ):
            if pattern == "plain":
                x = act(norm(f(x)))
            elif pattern == "residual":
                x = x + act(norm(f(x)))
            elif pattern == "concat":
                x = torch.cat([x, act(norm(f(x)))], dim=1)
            elif pattern == "glu":
                a, b = torch.chunk(norm(f(x)), 2, dim=1)
                x = act(a) * b
            else:
                x = act(norm(f(x[:, :k])))
        if self.kind == "cnn":
            x = x.mean((2, 3))
        return self.head(x)


def block_specs(max_depth: int = 4, max_width: int = 6) -> st.SearchStrategy:
    """Lists of ``(pattern, width, activation, k, groups)`` blocks."""
    block = st.tuples(
        st.sampled_from(PATTERNS),
        st.integers(1, max_width),
        st.sampled_from(sorted(ACTIVATIONS)),
        st.integers(1, max_width),
        st.integers(1, 3),
    )
    return st.lists(block, min_size=1, max_size=max_depth)


@st.composite
def random_models(
    draw: st.DrawFn,
    kinds: tuple = ("mlp", "cnn"),
    max_depth: int = 4,
    max_width: int = 6,
) -> tuple:
    """``(model, example_input)``: a random :class:`RandomNet` in eval mode and a float32
    example batch of 2 (``(2, C)`` for MLPs, ``(2, C, 5, 5)`` for CNNs)."""
    kind = draw(st.sampled_from(kinds))
    in_ch = draw(st.integers(1, 4))
    out = draw(st.integers(1, 4))
    blocks = draw(block_specs(max_depth, max_width))
    norm = draw(st.sampled_from([False, "batch", "group"]))
    seed = draw(st.integers(0, 2**31 - 1))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = RandomNet(kind, in_ch, out, blocks, norm).eval()
        shape = (2, in_ch) if kind == "mlp" else (2, in_ch, 5, 5)
        x = torch.randn(shape)
    return model, x
