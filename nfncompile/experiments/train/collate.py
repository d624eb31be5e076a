"""Batches: collating ``(inputs, target)`` items, weight-space items included, and moving,
measuring and concatenating what comes out of them."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import default_collate

from ...errors import ConfigError
from ...features import WeightSpaceFeatures

__all__ = ["collate", "split_pair", "tree_map", "to_device", "batch_len", "concat", "model_device"]


def _collate_part(parts: list) -> Any:
    if isinstance(parts[0], Mapping):
        return WeightSpaceFeatures.collate(parts)
    return default_collate(parts)


def collate(items: Sequence[Any]) -> Any:
    """Default ``collate_fn``: batch ``(inputs, target)`` pairs (or bare inputs).

    A 2-tuple (or 2-list) item is a pair; each side is batched separately. ``Mapping`` items
    (``WeightSpaceFeatures`` or state_dicts) are concatenated / stacked into
    :class:`WeightSpaceFeatures`; anything else goes through ``default_collate``.

    Examples
    --------
    >>> import torch
    >>> sd = {"w": torch.zeros(2, 3), "b": torch.zeros(2)}
    >>> inputs, targets = collate([(sd, 1.0), (sd, 0.0)])
    >>> inputs
    WeightSpaceFeatures(B=2, C=1, w=(2, 1, 2, 3), b=(2, 1, 2))
    >>> targets
    tensor([1., 0.], dtype=torch.float64)
    """
    if not items:
        raise ConfigError("collate got an empty batch")
    first = items[0]
    if isinstance(first, (tuple, list)) and len(first) == 2:
        return (_collate_part([it[0] for it in items]), _collate_part([it[1] for it in items]))
    return _collate_part(list(items))


def split_pair(batch: Any) -> tuple[Any, Any]:
    """``(inputs, targets)`` of a collated pair, ``(batch, None)`` of bare inputs."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    return batch, None


def tree_map(fn: Callable[[torch.Tensor], torch.Tensor], obj: Any) -> Any:
    """``fn`` applied to every tensor in ``obj`` (tensors, WeightSpaceFeatures, dicts, tuples)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, WeightSpaceFeatures):
        return WeightSpaceFeatures({k: fn(v) for k, v in obj.items()})
    if isinstance(obj, Mapping):
        return {k: tree_map(fn, v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(tree_map(fn, v) for v in obj)
    return obj


def to_device(obj: Any, device: torch.device) -> Any:
    """``obj`` with every tensor moved to ``device``."""
    return tree_map(lambda t: t.to(device, non_blocking=True), obj)


def batch_len(obj: Any) -> int:
    """The batch size of a collated batch (its first tensor's leading dim)."""
    if isinstance(obj, torch.Tensor):
        return obj.shape[0] if obj.dim() else 1
    if isinstance(obj, WeightSpaceFeatures):
        return obj.batch_size
    values = obj.values() if isinstance(obj, Mapping) else obj
    if isinstance(values, (tuple, list)) or isinstance(obj, Mapping):
        for v in values:
            return batch_len(v)
    raise ConfigError(f"cannot tell the batch size of a {type(obj).__name__}")


def concat(parts: list) -> Any:
    """Batches (model outputs or targets) concatenated along the batch dim."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat([p.reshape(1) if p.dim() == 0 else p for p in parts])
    if isinstance(first, WeightSpaceFeatures):
        return WeightSpaceFeatures({k: torch.cat([p[k] for p in parts]) for k in first})
    if isinstance(first, Mapping):
        return {k: concat([p[k] for p in parts]) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(concat(list(col)) for col in zip(*parts))
    if first is None:
        return None
    raise ConfigError(
        f"cannot concatenate model outputs / targets of type {type(first).__name__}; "
        "expected tensors, WeightSpaceFeatures, or dicts / tuples of them"
    )


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer; CPU for an empty model)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")
