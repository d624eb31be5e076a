"""Helpers shared by the front-end tests: seeded inputs and models, space summaries."""

from __future__ import annotations

import textwrap

import torch
from torch import nn
from torch.nn.attention.flex_attention import flex_attention as _flex

from nfncompile.spec import is_counter


def x_(*shape: int, seed: int = 0) -> torch.Tensor:
    """A seeded standard-normal tensor of ``shape``."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def model_(factory, seed: int = 0) -> nn.Module:
    """``factory()`` under a forked, seeded global RNG (the caller's RNG is untouched)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return factory()


def spaces_(spec) -> list:
    """``(name, size, role)`` of every space, in spec order."""
    return [(s.name, s.size, s.role) for s in spec.spaces.values()]


def per_head(spec, label) -> tuple:
    """An axis label read head by head: a block space of ``n`` blocks (attention heads that
    move together) counts as ``n`` pieces ``"<space>[i]"``, any other space as itself."""
    out: list = []
    for name in label if isinstance(label, tuple) else (label,):
        space = spec.spaces[name] if isinstance(name, str) else None
        if space is None or space.blocks is None:
            out.append(name)
        else:
            out += [f"{name}[{i}]" for i in range(spec.blocks[space.blocks].count)]
    return tuple(out)


def head_size(spec, piece: str) -> int:
    """The neurons of one :func:`per_head` piece: a block of a block space, or a space."""
    name, _, block = piece.partition("[")
    space = spec.spaces[name]
    return space.size // spec.blocks[space.blocks].count if block else space.size


def float_keys(model: nn.Module) -> list:
    """The state_dict keys a traced spec lists (integer counters skipped)."""
    return [k for k, v in model.state_dict().items() if not is_counter(v)]


class TwoLinear(nn.Module):
    """``a = Linear(4, 6)``, ``b = Linear(6, 3)``; subclasses write a forward that does
    something to ``a``'s 6 outputs (input ``(batch, 4)``), the way ``how`` names."""

    def __init__(self, how: str = "") -> None:
        super().__init__()
        self.how = how
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


class CatSplit(nn.Module):
    """A concat of two layers read by one, split and chunked: composite axes."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(4, 5)
        self.c, self.d = nn.Linear(11, 7), nn.Linear(3, 2)

    def forward(self, x):
        h = torch.cat([torch.relu(self.a(x)), torch.tanh(self.b(x))], dim=1)
        p, q = self.c(h).split([3, 4], dim=1)
        r, t = torch.chunk(q, 2, dim=1)
        return self.d(p) + r * t.sum(1, keepdim=True)


#: a module file defining ``make()``: a model reading ``(batch, sequence, features)`` through a
#: learned positional table (5 x 4), then a token MLP 4 -> 6 -> 3
TOKENS_MODULE = textwrap.dedent(
    """\
    import torch

    class Tokens(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pos = torch.nn.Parameter(torch.randn(5, 4))
            self.a, self.b = torch.nn.Linear(4, 6), torch.nn.Linear(6, 3)

        def forward(self, x):
            return self.b(torch.relu(self.a(x + self.pos)))

    def make():
        return Tokens()
    """
)


def attend(q, k, v, **kwargs):
    """``flex_attention`` called from a helper of another module than the forward's (as
    vit-pytorch's ``nd_attention``)."""
    return _flex(q, k, v, **kwargs)


class LoopedExperts(nn.Module):
    """``experts`` two-layer experts as ``(experts, hidden, d)`` and ``(experts, d, hidden)``
    weights, run on the tokens routed to them by a loop over the experts the routing picked
    (``index.unique().tolist()``: data-dependent), as Mixtral's reference code runs them.
    ``forward(x, index, weight)``: ``x`` of ``(tokens, d)``, the routing's ``(tokens, k)``
    indices and weights."""

    def __init__(self, experts: int, d: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(experts, hidden, d) / d**0.5)
        self.w2 = nn.Parameter(torch.randn(experts, d, hidden) / hidden**0.5)

    def forward(self, x, index, weight):
        out = torch.zeros_like(x)
        for e in index.unique().tolist():
            token, k = torch.where(index == e)
            h = torch.relu(x[token] @ self.w1[e].T) @ self.w2[e].T
            out.index_add_(0, token, h * weight[token, k, None])
        return out
