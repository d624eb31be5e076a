"""Running a model over a dataset: :func:`predict`, and the validation pass of
:func:`~nfncompile.experiments.train.fit` (sharded across DDP processes, gathered on all)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ...errors import ConfigError
from ..distributed import all_gather_strided, dist_info, is_distributed, shard_indices
from .collate import collate, concat, model_device, split_pair, to_device, tree_map

__all__ = ["outputs_and_targets", "predict"]


def outputs_and_targets(
    model: nn.Module,
    data: Any,
    batch_size: int,
    collate_fn: Callable | None,
    device: torch.device,
) -> tuple[Any, Any]:
    """``(outputs, targets)`` over all of ``data`` in order; sharded across DDP processes."""
    n = len(data)
    if n == 0:
        raise ConfigError("cannot evaluate on an empty dataset")
    info = dist_info()
    shard = is_distributed() and n >= info.world_size
    sampler = shard_indices(n, info.rank, info.world_size) if shard else range(n)
    loader = DataLoader(
        data,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate_fn or collate,
        generator=torch.Generator(),  # keeps DataLoader from drawing on the global RNG
    )
    was_training = model.training
    model.eval()
    outs, tgts = [], []
    try:
        with torch.no_grad():
            for batch in loader:
                inputs, targets = split_pair(batch)
                outs.append(model(to_device(inputs, device)))
                tgts.append(to_device(targets, device))
    finally:
        model.train(was_training)
    outputs, targets = concat(outs), concat(tgts)
    if shard:
        outputs = tree_map(lambda t: all_gather_strided(t, n), outputs)
        targets = tree_map(lambda t: all_gather_strided(t, n), targets)
    return outputs, targets


def predict(
    model: nn.Module,
    data: Any,
    *,
    batch_size: int = 256,
    collate_fn: Callable | None = None,
    return_targets: bool = False,
) -> Any:
    """Run ``model`` (in eval mode, without gradients) over ``data``, in order.

    Parameters
    ----------
    model : nn.Module
        Runs on the device of its parameters.
    data : Dataset or sequence
        ``(inputs, target)`` pairs or bare inputs (see :func:`collate`).
    batch_size : int
    collate_fn : callable, optional
        Default :func:`collate`.
    return_targets : bool
        Also return the batched targets.

    Returns
    -------
    outputs, or (outputs, targets)
        The model's outputs concatenated along the batch dim (tensors, WeightSpaceFeatures,
        or dicts / tuples of them). Under DDP every process gets all of them, each process
        having computed its share.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Linear(2, 1)
    >>> predict(model, [torch.zeros(2)] * 5, batch_size=2).shape
    torch.Size([5, 1])
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(f"predict: batch_size must be a positive int, got {batch_size!r}")
    outputs, targets = outputs_and_targets(model, data, batch_size, collate_fn, model_device(model))
    return (outputs, targets) if return_targets else outputs
