"""A stack of models as one flat ``(models, P)`` tensor: where each named parameter lives.

The vectorised trainers keep every model of a shard in one row of a flat tensor, so that one
optimiser update (:class:`~.optim.BatchedOptimizer`) moves them all; :class:`ParamStack` maps
state_dict keys to column ranges and back.

Examples
--------
>>> import torch
>>> stack = ParamStack({"w": (2, 3), "b": (2,)})
>>> stack.size, stack.slices["b"]
(8, slice(6, 8, None))
>>> theta = torch.arange(16.0).reshape(2, 8)
>>> stack.views(theta)["w"].shape
torch.Size([2, 2, 3])
>>> torch.equal(stack.flatten(stack.views(theta).values()), theta)
True
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

__all__ = ["ParamStack"]


class ParamStack:
    """Offsets of named parameters inside a flat ``(models, P)`` tensor.

    Parameters
    ----------
    shapes : dict
        State_dict key -> shape of one model, in the stack's column order.
    """

    def __init__(self, shapes: dict[str, tuple[int, ...]]) -> None:
        self.shapes = shapes
        self.slices: dict[str, slice] = {}
        start = 0
        for name, shape in shapes.items():
            n = math.prod(shape)
            self.slices[name] = slice(start, start + n)
            start += n
        self.size = start

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Key -> ``(models, *shape)`` views into ``flat``."""
        k = flat.shape[0]
        return {n: flat[:, s].reshape(k, *self.shapes[n]) for n, s in self.slices.items()}

    def stacked(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Key -> ``(models, *shape)`` contiguous copies (what a shard stores)."""
        return {n: v.contiguous().clone() for n, v in self.views(flat).items()}

    def flatten(self, tensors: Iterable[torch.Tensor]) -> torch.Tensor:
        """The ``(models, P)`` tensor of per-key ``(models, *shape)`` tensors in stack order."""
        return torch.cat([x.flatten(1) for x in tensors], 1)
