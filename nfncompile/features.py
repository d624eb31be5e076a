"""Batched weight-space features: what NF-Layers read and write.

:class:`WeightSpaceFeatures` maps each parameter name to a ``(B, C, *param shape)`` tensor:
``B`` networks, ``C`` channels per weight. It is built from state_dicts *by key* (the order
of a state_dict never matters), converts back, collates in a DataLoader and moves devices.

Dtypes
------
Features are floating point, one dtype for every tensor.
:meth:`WeightSpaceFeatures.from_state_dicts` casts every entry to ``dtype``, by default
``torch.get_default_dtype()`` (float32 unless changed), the dtype NF-Layers are built with:
weights saved in float64 (numpy, JAX) or bfloat16 are read as float32, and pass
``dtype=torch.float64`` for layers built in float64. The constructor keeps the tensors'
dtype when they share one (a layer's float64 output stays float64) and otherwise casts to
``dtype`` or the default dtype. Integer and boolean tensors are not weights: they raise
:class:`~nfncompile.errors.FeatureMismatchError` naming the key and dtype, except 0-dim
integer bookkeeping counters (``num_batches_tracked``) in a state_dict, which are skipped.

Examples
--------
>>> import torch
>>> net = torch.nn.Linear(3, 2)
>>> feats = WeightSpaceFeatures.from_state_dicts(None, [net.state_dict(), net.state_dict()])
>>> feats
WeightSpaceFeatures(B=2, C=1, weight=(2, 1, 2, 3), bias=(2, 1, 2))
>>> feats.to_state_dicts()[0]["weight"].shape
torch.Size([2, 3])
>>> WeightSpaceFeatures.from_state_dicts(None, [net.double().state_dict()]).dtype
torch.float32
>>> WeightSpaceFeatures.from_state_dicts(None, [{"w": torch.ones(2, dtype=torch.int64)}])
Traceback (most recent call last):
...
nfncompile.errors.FeatureMismatchError: state_dicts[0]['w']: torch.int64 tensor of shape [2] is not a weight: features are floating point (cast it with .float() if it holds weights; only 0-dim integer counters such as num_batches_tracked are skipped)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

from .errors import FeatureMismatchError
from .spec import WeightSpaceSpec

__all__ = ["WeightSpaceFeatures", "as_features"]


def _is_bookkeeping(value: Any) -> bool:
    """A 0-dim integer tensor such as BatchNorm's ``num_batches_tracked``, or an empty one
    (a parameter of shape ``(0, dim)``): not a weight."""
    if not isinstance(value, torch.Tensor):
        return False
    integer = not (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool)
    return value.numel() == 0 or (value.dim() == 0 and integer)


def _check_float(where: str, value: Any) -> None:
    """Raise :class:`FeatureMismatchError` unless ``value`` is a real floating tensor."""
    if not isinstance(value, torch.Tensor):
        raise FeatureMismatchError(f"{where}: expected a tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise FeatureMismatchError(
            f"{where}: {value.dtype} tensor of shape {list(value.shape)} is not a weight: "
            "features are floating point (cast it with .float() if it holds weights; only "
            "0-dim integer counters such as num_batches_tracked are skipped)"
        )


class WeightSpaceFeatures(Mapping):
    """An immutable mapping ``param name -> (B, C, *shape)`` tensor.

    Parameters
    ----------
    data : mapping str -> Tensor
        Every tensor must share ``B`` and ``C`` (its first two dims) and be floating point.
    dtype : torch.dtype, optional
        Cast every tensor to it. By default tensors that share one dtype keep it, and a mix
        of float dtypes is cast to ``torch.get_default_dtype()``.

    Raises
    ------
    FeatureMismatchError
        When tensors have fewer than 2 dims, disagree on batch or channel size, or are not
        floating point (integer, boolean, complex): the message names the key and dtype.

    Examples
    --------
    >>> f = WeightSpaceFeatures({"w": torch.zeros(1, 1, 2, dtype=torch.float64),
    ...                          "b": torch.zeros(1, 1, 1, dtype=torch.float16)})
    >>> f.dtype == torch.get_default_dtype(), f.to(torch.float64).dtype
    (True, torch.float64)
    """

    __slots__ = ("_data",)

    def __init__(
        self, data: Mapping[str, torch.Tensor], *, dtype: torch.dtype | None = None
    ) -> None:
        data = dict(data)
        if not data:
            raise FeatureMismatchError("WeightSpaceFeatures needs at least one tensor")
        lead = None
        for k, v in data.items():
            if not isinstance(v, torch.Tensor) or v.dim() < 2:
                got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
                raise FeatureMismatchError(f"{k}: expected a (B, C, *shape) tensor, got {got}")
            _check_float(repr(k), v)
            if lead is None:
                lead = (k, tuple(v.shape[:2]))
            elif tuple(v.shape[:2]) != lead[1]:
                raise FeatureMismatchError(
                    f"{k}: batch/channel dims {tuple(v.shape[:2])} differ from {lead[0]}'s {lead[1]}"
                )
        if dtype is None and len({v.dtype for v in data.values()}) > 1:
            dtype = torch.get_default_dtype()
        if dtype is not None:
            if not dtype.is_floating_point:
                raise FeatureMismatchError(f"dtype must be a floating dtype, got {dtype}")
            data = {k: v.to(dtype) for k, v in data.items()}
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
        *,
        dtype: torch.dtype | None = None,
    ) -> WeightSpaceFeatures:
        """Stack state_dicts into features with ``C = 1``, matching entries by key.

        Parameters
        ----------
        spec : WeightSpaceSpec or None
            When given, every state_dict is checked against it (all mismatches reported at
            once) and the features follow the spec's param order. Without one, the features
            follow the first state_dict's keys, skipping 0-dim integer counters.
        state_dicts : sequence of mapping
            One per network.
        dtype : torch.dtype, optional
            What every entry is cast to; default ``torch.get_default_dtype()`` (float32
            unless changed), the dtype NF-Layers are built with.

        Raises
        ------
        StateDictMismatchError
            When a state_dict does not match ``spec`` (missing, unexpected, mis-shaped keys).
        FeatureMismatchError
            When state_dicts disagree on their keys (without a spec), or an entry that should
            be a weight is an integer, boolean or complex tensor.

        Examples
        --------
        >>> sds = [{"b": torch.zeros(3, dtype=torch.float64), "w": torch.ones(3, 2)}] * 2
        >>> WeightSpaceFeatures.from_state_dicts(None, sds, dtype=torch.float64)
        WeightSpaceFeatures(B=2, C=1, b=(2, 1, 3), w=(2, 1, 3, 2))
        """
        if not state_dicts:
            raise FeatureMismatchError("from_state_dicts needs at least one state_dict")
        dtype = torch.get_default_dtype() if dtype is None else dtype
        if not dtype.is_floating_point:
            raise FeatureMismatchError(f"dtype must be a floating dtype, got {dtype}")
        if spec is not None:
            for i, sd in enumerate(state_dicts):
                try:
                    spec.check_state_dict(sd)
                except Exception as e:
                    raise type(e)(f"state_dicts[{i}]: {e}") from None
            names = spec.names
        else:
            names = tuple(k for k, v in state_dicts[0].items() if not _is_bookkeeping(v))
            for i, sd in enumerate(state_dicts[1:], 1):
                if {k for k, v in sd.items() if not _is_bookkeeping(v)} != set(names):
                    raise FeatureMismatchError(
                        f"state_dicts[{i}] has keys {sorted(sd)}, state_dicts[0] has {sorted(names)}"
                    )
        for i, sd in enumerate(state_dicts):
            for k in names:
                _check_float(f"state_dicts[{i}][{k!r}]", sd[k])
        return cls(
            {k: torch.stack([sd[k].to(dtype) for sd in state_dicts]).unsqueeze(1) for k in names}
        )

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


def as_features(x: Any, who: str) -> WeightSpaceFeatures:
    """``x`` as :class:`WeightSpaceFeatures`: itself, or a plain mapping of ``(B, C, ...)``
    tensors wrapped; anything else is a :class:`FeatureMismatchError` naming ``who``.

    >>> as_features({"w": torch.zeros(1, 2, 3)}, "NFLinear").channels
    2
    """
    if isinstance(x, WeightSpaceFeatures):
        return x
    if isinstance(x, Mapping):
        return WeightSpaceFeatures(x)
    raise FeatureMismatchError(
        f"{who} expects WeightSpaceFeatures (a mapping name -> (B, C, *shape) tensor), "
        f"got {type(x).__name__}"
    )
