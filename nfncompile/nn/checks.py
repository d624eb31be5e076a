"""What every NF module checks about the features it is given: a mapping of
``(B, C, *shape)`` tensors that matches the weight-space spec, and positive channel counts.

Examples
--------
>>> import torch
>>> from nfncompile.testing import mlp_spec
>>> spec = mlp_spec([2, 1])
>>> check_features(spec, {"l1.weight": torch.zeros(3, 4, 1, 2)}, 4, "NFLinear")
Traceback (most recent call last):
...
nfncompile.errors.FeatureMismatchError: NFLinear: features do not match the weight-space spec:
  missing keys: l1.bias
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..errors import ConfigError, FeatureMismatchError
from ..features import as_features
from ..spec import WeightSpaceSpec
from ..spec.weight_space import mismatch_lines

__all__ = ["check_features", "check_channels", "as_features"]


def check_features(
    spec: WeightSpaceSpec, features: Mapping, channels: int | None, what: str
) -> None:
    """Raise :class:`FeatureMismatchError` unless ``features`` has every param of ``spec`` as a
    ``(B, channels, *shape)`` tensor; every wrong key and shape is listed at once."""
    if not isinstance(features, Mapping):
        raise FeatureMismatchError(
            f"{what} expects WeightSpaceFeatures (a mapping name -> tensor), "
            f"got {type(features).__name__}"
        )
    missing = [n for n in spec.names if n not in features]
    unexpected = [k for k in features if k not in spec]
    misshaped, batch, chans = [], set(), set()
    for n in spec.names:
        if n not in features:
            continue
        v = features[n]
        want = spec[n].shape
        if (
            not isinstance(v, torch.Tensor)
            or v.dim() != 2 + len(want)
            or tuple(v.shape[2:]) != want
        ):
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            misshaped.append(f"{n}: expected (B, C, {', '.join(map(str, want))}), got {got}")
            continue
        batch.add(v.shape[0])
        chans.add(v.shape[1])
    lines = mismatch_lines(missing, unexpected, misshaped)
    if len(batch) > 1:
        lines.append(f"batch sizes differ: {sorted(batch)}")
    if channels is not None and chans and chans != {channels}:
        lines.append(f"expected C_in={channels}, got {', '.join(map(str, sorted(chans)))}")
    if lines:
        raise FeatureMismatchError(
            f"{what}: features do not match the weight-space spec:\n  " + "\n  ".join(lines)
        )


def check_channels(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive int, got {value!r}")
    return value
