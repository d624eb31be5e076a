"""What the tasks read from a model zoo (:mod:`nfncompile.zoo`), in one place.

The weight-space spec of a zoo is *traced* from its architecture
(:func:`nfncompile.frontend.trace` on the zoo's example input, through
:func:`nfncompile.declarative.resolve_weight_space`), never written by hand: the tasks exercise
the compiler end to end.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ...declarative import WeightSpaceConfig, resolve_weight_space
from ...features import WeightSpaceFeatures
from ...spec import WeightSpaceSpec

__all__ = [
    "zoo_spec",
    "zoo_size",
    "zoo_column",
    "zoo_features",
    "zoo_model",
    "zoo_images",
]


def zoo_model(zoo: Any) -> nn.Module:
    """A fresh network of the zoo's architecture (its weights are not used)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return zoo.config.build()


def zoo_spec(zoo: Any) -> WeightSpaceSpec:
    """The traced (and numerically verified) weight-space spec of the zoo's architecture.

    Resolved like a YAML ``weight_space: {model: ...}`` section, so it shares the declarative
    stage's trace cache.
    """
    config = zoo.config
    return resolve_weight_space(
        WeightSpaceConfig(
            model=config.architecture,
            kwargs=config.architecture_kwargs,
            input_shape=config.input_shape,
        )
    )


def zoo_size(zoo: Any) -> int:
    """Number of networks in the zoo."""
    return len(zoo)


def zoo_column(zoo: Any, name: str) -> np.ndarray:
    """One metadata column for every network, as an array."""
    return np.asarray(zoo.column(name))


def zoo_features(zoo: Any, spec: WeightSpaceSpec, rows: torch.Tensor) -> WeightSpaceFeatures:
    """``(len(rows), 1, *shape)`` features of the networks ``rows``, in ``spec``'s order."""
    return zoo.features(spec, rows)


def zoo_images(zoo: Any, rows: torch.Tensor) -> torch.Tensor:
    """``(len(rows), 8, 8)`` the digit images the INRs ``rows`` were fitted to, in the zoo's
    ``pixel_range`` (what the SIRENs draw)."""
    from ...zoo.data import load_digits_tensors

    images, _ = load_digits_tensors()
    idx = torch.as_tensor(zoo.column("image_index", rows), dtype=torch.long)
    return zoo.config.pixels(images[idx, 0])
