"""Batched weight-space features: what NF-Layers read and write.

:class:`WeightSpaceFeatures` maps each parameter name to a ``(B, C, *param shape)`` tensor:
``B`` networks, ``C`` channels per weight. It is built from state_dicts *by key* (the order
of a state_dict never matters), converts back, collates in a DataLoader and moves devices.

Examples
--------
>>> import torch
>>> net = torch.nn.Linear(3, 2)
>>> feats = WeightSpaceFeatures.from_state_dicts(None, [net.state_dict(), net.state_dict()])
>>> feats
WeightSpaceFeatures(B=2, C=1, weight=(2, 1, 2, 3), bias=(2, 1, 2))
>>> feats.to_state_dicts()[0]["weight"].shape
torch.Size([2, 3])
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

from .errors import FeatureMismatchError
from .spec import WeightSpaceSpec, is_counter

__all__ = ["WeightSpaceFeatures"]


class WeightSpaceFeatures(Mapping):
    """An immutable mapping ``param name -> (B, C, *shape)`` tensor.

    Parameters
    ----------
    data : mapping str -> Tensor
        Every tensor must share ``B`` and ``C`` (its first two dims).

    Raises
    ------
    FeatureMismatchError
        When tensors have fewer than 2 dims or disagree on batch or channel size.
    """

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, torch.Tensor]) -> None:
        data = dict(data)
        if not data:
            raise FeatureMismatchError("WeightSpaceFeatures needs at least one tensor")
        lead = None
        for k, v in data.items():
            if not isinstance(v, torch.Tensor) or v.dim() < 2:
                got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
                raise FeatureMismatchError(f"{k}: expected a (B, C, *shape) tensor, got {got}")
            if lead is None:
                lead = (k, tuple(v.shape[:2]))
            elif tuple(v.shape[:2]) != lead[1]:
                raise FeatureMismatchError(
                    f"{k}: batch/channel dims {tuple(v.shape[:2])} differ from {lead[0]}'s {lead[1]}"
                )
        self._data = data

    # ---- mapping --------------------------------------------------------------------------

    def __getitem__(self, name: str) -> torch.Tensor:
        try:
            return self._data[name]
        except KeyError:
            raise KeyError(f"no feature {name!r}; features: {', '.join(self._data)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}={tuple(v.shape)}" for k, v in self._data.items())
        return f"WeightSpaceFeatures(B={self.batch_size}, C={self.channels}, {shapes})"

    @property
    def batch_size(self) -> int:
        """``B``: how many networks."""
        return next(iter(self._data.values())).shape[0]

    @property
    def channels(self) -> int:
        """``C``: channels per weight."""
        return next(iter(self._data.values())).shape[1]

    @property
    def device(self) -> torch.device:
        return next(iter(self._data.values())).device

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self._data.values())).dtype

    # ---- construction ---------------------------------------------------------------------

    @classmethod
    def from_state_dicts(
        cls,
        spec: WeightSpaceSpec | None,
        state_dicts: Sequence[Mapping[str, torch.Tensor]],
    ) -> WeightSpaceFeatures:
        """Stack state_dicts into features with ``C = 1``, matching entries by key.

        Parameters
        ----------
        spec : WeightSpaceSpec or None
            When given, every state_dict is checked against it (all mismatches reported at
            once) and the features follow the spec's param order.
        state_dicts : sequence of mapping
            One per network.
        """
        if not state_dicts:
            raise FeatureMismatchError("from_state_dicts needs at least one state_dict")
        if spec is not None:
            for i, sd in enumerate(state_dicts):
                try:
                    spec.check_state_dict(sd)
                except Exception as e:
                    raise type(e)(f"state_dicts[{i}]: {e}") from None
            names = spec.names
        else:
            names = tuple(k for k, v in state_dicts[0].items() if not is_counter(v))
            for i, sd in enumerate(state_dicts[1:], 1):
                if {k for k, v in sd.items() if not is_counter(v)} != set(names):
                    raise FeatureMismatchError(
                        f"state_dicts[{i}] has keys {sorted(sd)}, state_dicts[0] has {sorted(names)}"
                    )
        return cls({k: torch.stack([sd[k] for sd in state_dicts]).unsqueeze(1) for k in names})

    def to_state_dicts(self) -> list[dict]:
        """Split back into one state_dict per network (needs ``C == 1``)."""
        if self.channels != 1:
            raise FeatureMismatchError(
                f"to_state_dicts needs 1 channel, these features have {self.channels}"
            )
        return [{k: v[b, 0] for k, v in self._data.items()} for b in range(self.batch_size)]

    @staticmethod
    def collate(batch: Sequence[WeightSpaceFeatures | Mapping[str, torch.Tensor]]) -> Any:
        """``collate_fn`` for a DataLoader: concatenate features along the batch dim.

        Items may be :class:`WeightSpaceFeatures` (concatenated) or plain state_dicts
        (stacked with ``C = 1``).
        """
        first = batch[0]
        if isinstance(first, WeightSpaceFeatures):
            return WeightSpaceFeatures({k: torch.cat([b[k] for b in batch]) for k in first})
        return WeightSpaceFeatures.from_state_dicts(None, list(batch))

    # ---- transforms -----------------------------------------------------------------------

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> WeightSpaceFeatures:
        """Apply ``fn`` to every tensor."""
        return WeightSpaceFeatures({k: fn(v) for k, v in self._data.items()})

    def to(self, *args: Any, **kwargs: Any) -> WeightSpaceFeatures:
        """Like :meth:`torch.Tensor.to` (device and/or dtype), for every tensor."""
        return self.map(lambda t: t.to(*args, **kwargs))

    def __add__(self, other: WeightSpaceFeatures) -> WeightSpaceFeatures:
        if set(other) != set(self):
            raise FeatureMismatchError(
                f"cannot add features with keys {sorted(other)} to {sorted(self)}"
            )
        return WeightSpaceFeatures({k: v + other[k] for k, v in self._data.items()})

    def flatten(self) -> torch.Tensor:
        """``(B, C * total params)``: every tensor flattened and concatenated."""
        return torch.cat([v.flatten(1) for v in self._data.values()], dim=1)
