"""Permutation augmentation shared by the tasks: an ``eval`` section's ``augment`` fields and the
``augment`` callable they turn into for :func:`~nfncompile.experiments.train.fit`.

Two groups can be sampled. ``hnp`` permutes hidden neurons only: the network computes the same
function, so any target (a label, an accuracy) is unchanged; that is how the paper's "MLP +
augmentation" baseline tries to learn the symmetry. ``np`` also permutes the input and output
neurons; the function changes (its classes come out in another order) and the target is kept,
so it is a regulariser: it asks a model that can tell output neurons apart (an MLP, an NFN-HNP)
to predict as if it could not, which is what an NFN-NP builds in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ...errors import ConfigError, FieldError
from ...features import WeightSpaceFeatures
from ...spec import WeightSpaceSpec

__all__ = ["AugmentEval", "permutation_augment", "augment_for"]


@dataclass(frozen=True)
class AugmentEval:
    """The ``augment`` fields of an ``eval`` section (a base of the tasks' eval dataclasses).

    Examples
    --------
    >>> AugmentEval(augment=("mlp",), augment_mode="hnp").augment
    ('mlp',)
    """

    augment: tuple[str, ...] = field(
        default=(), metadata={"help": "models trained with random permutation augmentation"}
    )
    augment_mode: Literal["np", "hnp"] = field(
        default="hnp",
        metadata={
            "help": "group the augmentation samples from: hnp (hidden neurons only; the "
            "function is unchanged) or np (input/output neurons too: a regulariser, the "
            "target is kept although the function changes)"
        },
    )

    def __post_init__(self) -> None:
        if len(set(self.augment)) != len(self.augment):
            raise FieldError("augment", "names a model twice")

    def check(self, models: Any, source: str) -> None:
        """Raise :class:`ConfigError` when ``augment`` names a model the experiment lacks
        (called by :func:`~nfncompile.experiments.load_experiment`, before anything runs)."""
        unknown = [m for m in self.augment if m not in models]
        if unknown:
            raise ConfigError(
                f"{source}: eval.augment: no model {unknown[0]!r}; models: {', '.join(models)}"
            )


def permutation_augment(spec: WeightSpaceSpec, mode: str = "np") -> Callable:
    """An ``augment`` for :func:`~nfncompile.experiments.train.fit`: a fresh random group element of
    ``spec`` (in ``mode``) applied to each network of the batch; targets unchanged."""

    def augment(batch: Any, generator: torch.Generator) -> Any:
        inputs, targets = batch
        parts = []
        for b in range(inputs.batch_size):
            one = WeightSpaceFeatures({k: v[b : b + 1] for k, v in inputs.items()})
            parts.append(spec.sample_permutation(generator, mode=mode).apply(one))
        return WeightSpaceFeatures({k: torch.cat([p[k] for p in parts]) for k in inputs}), targets

    return augment


def augment_for(ev: AugmentEval, name: str, spec: WeightSpaceSpec) -> Callable | None:
    """The ``augment`` callable for model ``name`` (``None`` when it trains unaugmented)."""
    return permutation_augment(spec, ev.augment_mode) if name in ev.augment else None
