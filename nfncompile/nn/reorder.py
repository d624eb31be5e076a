"""Features of parameters whose stored positions are a fixed reordering of their labels'
(:attr:`~nfncompile.spec.ParamSpec.order`: a layer that reads channels after a channel
shuffle), put in label order for the generated code and back.

A reordering is a permutation, so its gradient is the inverse permutation: one gather each way
(``index_select``'s own backward scatters into a zeroed tensor, twice the work). The index
tensors are made once per layer and move with it (buffers left out of the state_dict).

Examples
--------
>>> from nfncompile.spec import WeightSpaceSpec
>>> spec = WeightSpaceSpec.from_yaml('''
... spaces: {a: {size: 2, role: input}, b: {size: 2, role: output}}
... params: {w: {shape: [4], axes: [[a, b]], order: {0: [0, 2, 1, 3]}}}
... ''')
>>> r = Reorders(spec)
>>> r.to_labels("w", torch.tensor([[[10.0, 11.0, 12.0, 13.0]]])).tolist()
[[[10.0, 12.0, 11.0, 13.0]]]
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..backend.fused import _memory_order
from ..spec import WeightSpaceSpec

__all__ = ["Reorders", "permuted"]


def _gather(x: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """``x.index_select(dim, index)``, in ``x``'s own memory order (the generated layer's
    outputs are channels-last): the dims before ``dim`` in memory as rows, those after it as
    contiguous runs copied whole; where none come after it, a ``gather`` of a broadcast
    index, which on CPU is 3.6x faster than ``index_select`` along the innermost dim."""
    order = _memory_order(x)
    y = x.permute(order).contiguous()
    k = order.index(dim)
    rows, n = math.prod(y.shape[:k]), y.shape[k]
    runs = math.prod(y.shape[k + 1 :])
    if runs > 1:
        out = y.view(rows, n, runs).index_select(1, index)
    else:
        out = torch.gather(y.view(rows, n), 1, index.view(1, n).expand(rows, n))
    back = [0] * len(order)
    for i, d in enumerate(order):
        back[d] = i
    return out.view(y.shape).permute(back)


class _Permuted(torch.autograd.Function):
    """``x.index_select(dim, index)`` for a permutation ``index``; backward by ``inverse``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int, index: torch.Tensor, inverse: torch.Tensor):
        ctx.dim, ctx.inverse = dim, inverse
        return _gather(x, dim, index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _gather(grad, ctx.dim, ctx.inverse), None, None, None


def permuted(x: torch.Tensor, dim: int, index: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """``x`` with dim ``dim``'s position ``p`` taken from ``index[p]`` (``inverse`` being
    ``index``'s inverse permutation), differentiable by the inverse gather."""
    return _Permuted.apply(x, dim, index, inverse)


class Reorders(nn.Module):
    """The reordered axes of ``spec``'s parameters, as index buffers.

    :meth:`to_labels` and :meth:`to_stored` take and return features in the stored shape
    ``(B, C, *shape)``.
    """

    def __init__(self, spec: WeightSpaceSpec) -> None:
        super().__init__()
        self.spec = spec
        self.axes: dict = {}  # name -> [(axis, buffer name)]
        for p in spec.params:
            for axis, positions in p.order:
                order = torch.tensor(positions)  # stored p holds labelled order[p]
                key = f"order_{len(self._buffers) // 2}"
                self.register_buffer(f"{key}_in", torch.argsort(order), persistent=False)
                self.register_buffer(f"{key}_out", order, persistent=False)
                self.axes.setdefault(p.name, []).append((axis, key))

    def _moved(self, name: str, x: torch.Tensor, to_labels: bool) -> torch.Tensor:
        p = self.spec[name]
        lead = x.shape[:2]
        y = x.reshape(*lead, *p.labelled_shape)
        for axis, key in self.axes[name]:
            there, back = getattr(self, f"{key}_in"), getattr(self, f"{key}_out")
            if not to_labels:
                there, back = back, there
            y = permuted(y, 2 + axis, there, back)
        return y.reshape(x.shape)

    def to_labels(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Features of ``name`` in label order (``x`` itself when no axis is reordered)."""
        return self._moved(name, x, True) if name in self.axes else x

    def to_stored(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`to_labels`."""
        return self._moved(name, x, False) if name in self.axes else x
