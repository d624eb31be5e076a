"""A task's data: a zoo split by seed, weights scaled per parameter, features kept in memory
(:class:`FeatureStore`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ...errors import ConfigError
from ...features import WeightSpaceFeatures
from ...spec import WeightSpaceSpec
from ...zoo.data import split_indices
from .context import RunContext
from .zoo_access import zoo_column, zoo_features, zoo_size

__all__ = [
    "ParamScale",
    "ZooSplit",
    "split_zoo",
    "split_groups",
    "FeatureStore",
]


class ParamScale:
    """Per-parameter scalar scales: features are divided by the std of each parameter tensor.

    One scalar per parameter (computed on the training networks) keeps every symmetry: it
    rescales all entries of a tensor alike. It puts SIREN layers (first-layer weights ~0.5,
    later ones ~0.01) on one footing.

    Parameters
    ----------
    features : WeightSpaceFeatures
        The training networks (``C = 1``).
    """

    def __init__(self, features: WeightSpaceFeatures, eps: float = 1e-8) -> None:
        self.scale = {k: float(v.std()) + eps for k, v in features.items()}

    def normalize(self, features: WeightSpaceFeatures) -> WeightSpaceFeatures:
        return WeightSpaceFeatures({k: v / self.scale[k] for k, v in features.items()})

    def denormalize(self, features: WeightSpaceFeatures) -> WeightSpaceFeatures:
        return WeightSpaceFeatures({k: v * self.scale[k] for k, v in features.items()})


@dataclass(frozen=True)
class ZooSplit:
    """The first ``n`` networks of a zoo split by seed, features normalised on the train part.

    Attributes
    ----------
    n : int
        How many networks are used.
    train, val, test : torch.Tensor
        Row indices of each part.
    scale : ParamScale
        Per-parameter scales fitted on ``train``.
    features : WeightSpaceFeatures
        Every used network's weights, normalised by ``scale``.
    """

    n: int
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    scale: ParamScale
    features: WeightSpaceFeatures


def split_zoo(
    ctx: RunContext,
    zoo: Any,
    spec: WeightSpaceSpec,
    max_networks: int | None,
    fractions: Sequence[float],
    group_by: str | None = None,
) -> ZooSplit:
    """Take the first ``max_networks`` networks (all by default), split them with the
    experiment's seed and normalise their weights with scales fitted on the train part.

    With ``group_by`` (a metadata column, e.g. ``image_index`` of an INR zoo with several
    views per image) the *groups* are split, so every network of a group lands in one part.
    """
    n = zoo_size(zoo) if max_networks is None else min(zoo_size(zoo), max_networks)
    rows = torch.arange(n)
    if group_by is None:
        tr, va, te = (rows[i] for i in split_indices(n, fractions, seed=ctx.config.seed))
    else:
        groups = torch.as_tensor(zoo_column(zoo, group_by)[:n], dtype=torch.long)
        tr, va, te = split_groups(groups, fractions, seed=ctx.config.seed)
    feats = zoo_features(zoo, spec, rows)
    scale = ParamScale(feats.map(lambda t: t[tr]))
    return ZooSplit(n, tr, va, te, scale, scale.normalize(feats))


def split_groups(
    groups: torch.Tensor, fractions: Sequence[float], seed: int
) -> tuple[torch.Tensor, ...]:
    """Row indices of each part when the distinct values of ``groups`` are split.

    Examples
    --------
    >>> groups = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    >>> parts = split_groups(groups, (0.5, 0.25, 0.25), seed=0)
    >>> sorted(int(groups[p].unique().numel()) for p in parts)
    [1, 1, 2]
    >>> sorted(torch.cat(parts).tolist()) == list(range(8))
    True
    """
    values, inverse = torch.unique(groups, return_inverse=True)
    parts = split_indices(len(values), fractions, seed=seed)
    which = torch.full((len(values),), -1, dtype=torch.long)  # -1: in no part
    for k, part in enumerate(parts):
        which[part] = k
    rows = torch.arange(len(groups))
    return tuple(rows[which[inverse] == k] for k in range(len(parts)))


class FeatureStore:
    """All networks' features and targets in memory; datasets are lists of indices.

    ``fit`` and ``predict`` batch with :meth:`collate`, which gathers rows at once (much
    faster than concatenating one-network items).

    Parameters
    ----------
    features : WeightSpaceFeatures
        ``(N, C, *shape)`` per parameter.
    targets : Tensor
        ``(N, ...)``.

    Examples
    --------
    >>> import torch
    >>> store = FeatureStore(WeightSpaceFeatures({"w": torch.zeros(5, 1, 2)}), torch.arange(5))
    >>> inputs, targets = store.collate(store.subset(torch.tensor([1, 3])))
    >>> inputs["w"].shape, targets.tolist()
    (torch.Size([2, 1, 2]), [1, 3])
    """

    def __init__(self, features: WeightSpaceFeatures, targets: torch.Tensor) -> None:
        if features.batch_size != len(targets):
            raise ConfigError(
                f"FeatureStore: {features.batch_size} networks but {len(targets)} targets"
            )
        self.features = features
        self.targets = targets

    def subset(self, indices: torch.Tensor | Sequence[int]) -> list[int]:
        """A dataset (a list of row indices) for ``fit`` / ``predict``."""
        return [int(i) for i in indices]

    def collate(self, rows: Sequence[int]) -> tuple[WeightSpaceFeatures, torch.Tensor]:
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        return (
            WeightSpaceFeatures({k: v.index_select(0, idx) for k, v in self.features.items()}),
            self.targets.index_select(0, idx),
        )
