"""Tests of the argument checks every architecture factory shares."""

from __future__ import annotations

import pytest

from nfncompile import architectures as A
from nfncompile.errors import ConfigError


@pytest.mark.parametrize(
    ("factory", "kwargs"),
    [
        (A.mlp, {"in_features": 0}),
        (A.mlp, {"hidden": (4, -1)}),
        (A.small_cnn, {"channels": True}),
        (A.unet, {"base": 2.5}),
        (A.densenet_block, {"growth": 0}),
    ],
)
def test_bad_sizes(factory, kwargs):
    with pytest.raises(ConfigError, match="must be a positive int"):
        factory(**kwargs)
