"""What the tasks read from a model zoo (:mod:`nfncompile.zoo.generate`), in one place.

The weight-space spec of a zoo is *traced* from its architecture
(:func:`nfncompile.frontend.trace` on the zoo's example input), never written by hand: the
tasks exercise the compiler end to end.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

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

_SPECS: dict = {}


def zoo_model(zoo: Any) -> nn.Module:
    """A fresh network of the zoo's architecture (its weights are not used)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return zoo.config.build()


def zoo_spec(zoo: Any) -> WeightSpaceSpec:
    """The traced (and numerically verified) weight-space spec of the zoo's architecture."""
    from ...frontend.tracing import trace

    key = repr(zoo.config)
    if key not in _SPECS:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = zoo.config.build()
            example = torch.randn(zoo.config.input_shape)
            _SPECS[key] = trace(net, example)
    return _SPECS[key]


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
    """``(len(rows), 8, 8)`` the digit images the INRs ``rows`` were fitted to (in [0, 1])."""
    from ...zoo.data import load_digits_tensors

    images, _ = load_digits_tensors()
    idx = torch.as_tensor(zoo.column("image_index", rows), dtype=torch.long)
    return images[idx, 0]
