"""Small helpers for the models a task trains and the networks it reads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap

from ..train import predict
from .datasets import FeatureStore

__all__ = ["batched_forward", "predictions", "count_parameters"]


def batched_forward(net: nn.Module, params: Mapping[str, torch.Tensor], x: torch.Tensor) -> Any:
    """Run ``net`` with a batch of parameter sets ``name -> (B, *shape)`` on one input ``x``.

    Returns ``(B, *net(x).shape)``; differentiable in ``params`` (``torch.func.vmap`` over
    ``torch.func.functional_call``).
    """
    return vmap(lambda p: functional_call(net, p, (x,)), in_dims=(0,))(dict(params))


def predictions(model: nn.Module, store: FeatureStore, rows: Sequence[int], batch_size: int) -> Any:
    """``(outputs, targets)`` of ``model`` on ``rows`` of ``store``, in order."""
    return predict(
        model, rows, batch_size=batch_size, collate_fn=store.collate, return_targets=True
    )


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
