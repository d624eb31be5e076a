"""NFPool: invariance (random specs, hand-written shapes, block spaces, the traced catalogue),
feature counts, errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nfncompile.architectures import catalogue as _architectures
from nfncompile.errors import ConfigError, FeatureMismatchError, SpecError
from nfncompile.frontend.tracing import trace
from nfncompile.nn import NFPool
from tests.backend.specs import SPECS
from tests.nn.helpers import block_space_specs, check_invariant, rand_feats, weight_space_specs

MODES = ("np", "hnp")


@pytest.mark.parametrize("specs", [weight_space_specs, block_space_specs], ids=["chains", "blocks"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), mode=st.sampled_from(MODES))
def test_nfpool_invariant_random_specs(specs, data, mode):
    spec = data.draw(specs())
    check_invariant(
        NFPool(spec, mode, in_channels=2), spec, mode, 2, data.draw(st.integers(0, 2**16))
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(SPECS))
def test_nfpool_invariant_catalogue_shapes(name, mode):
    check_invariant(NFPool(spec := SPECS[name], mode), spec, mode, 2)


@pytest.mark.parametrize("name", sorted(_architectures.CATALOGUE))
def test_traced_catalogue(name):
    torch.manual_seed(0)
    arch = _architectures.CATALOGUE[name]
    spec = trace(arch.factory(), torch.randn(arch.input_shape))
    for mode in MODES:
        check_invariant(NFPool(spec, mode), spec, mode, 1)


def test_pool_feature_counts():
    spec = SPECS["cnn"]
    # np: one mean per tile, times the kernel positions of the conv weights
    assert NFPool(spec, "np").features_per_channel == 4 + 1 + 2 + 1 + 1
    # hnp: conv1 keeps `in` (1), fc keeps `out` (2)
    assert NFPool(spec, "hnp").features_per_channel == 4 + 1 + 2 + 2 + 2


def test_pool_reads_block_axes_as_blocks_and_insides():
    """A grouped weight is averaged over its blocks and inside them; in hnp with the blocks
    shared with the input, the input's positions inside a block stay features."""
    spec = SPECS["grouped"]
    assert NFPool(spec, "np").features_per_channel == 1 + 2 + 1 + 1
    blocks = SPECS["input_blocks"]
    # gconv.weight [h, in inside the block]: the in positions (2) are fixed in hnp
    assert NFPool(blocks, "hnp").features_per_channel == 2 + 1 + 2
    x = rand_feats(blocks, 1, 2, torch.Generator().manual_seed(0))
    pool = NFPool(blocks, "hnp")
    torch.testing.assert_close(
        pool(x)[:, :2], x["gconv.weight"].mean(dim=2).flatten(1), msg="means over h only"
    )


def test_pool_errors():
    spec = SPECS["mlp"]
    x = rand_feats(spec, 3, 1, torch.Generator().manual_seed(0))
    with pytest.raises(FeatureMismatchError, match=r"expected C_in=2, got 3"):
        NFPool(spec, in_channels=2)(x)
    with pytest.raises(SpecError, match="valid modes"):
        NFPool(spec, mode="x")
    with pytest.raises(ConfigError, match="needs in_channels"):
        _ = NFPool(spec).num_features
    assert (
        NFPool(spec, "hnp", in_channels=3).num_features
        == 3 * NFPool(spec, "hnp").features_per_channel
    )
