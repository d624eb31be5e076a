"""Fixed dims in the linear basis: folded into channels up to ``max_fold``, exchanged beyond.

The model here has an auxiliary head that only its training forward runs (as GoogLeNet's and
Inception-v3's), so the eval-mode trace finds no symmetry for the head's axes: folded, its
``(400, 300)`` weight alone would be ``(C * 120000)**2`` weights per relation.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from nfncompile.backend.tiles import MAX_FOLD, SMALL_FOLD, fold_limit, tile_refs
from nfncompile.errors import ConfigError
from nfncompile.frontend.tracing import trace
from nfncompile.nn import NFLinear, NFPool
from nfncompile.spec import WeightSpaceSpec
from tests.nn.helpers import (
    block_space_specs,
    check_equivariant,
    check_invariant,
    rand_feats,
    randomise,
    weight_space_specs,
)


class AuxNet(nn.Module):
    """A trunk, and an auxiliary classifier on its hidden features in training only."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 48), nn.Linear(48, 5)
        self.aux1, self.aux2 = nn.Linear(48, 300), nn.Linear(300, 400)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        out = self.fc2(h)
        if self.training:
            return out, self.aux2(torch.relu(self.aux1(h)))
        return out


@pytest.fixture(scope="module")
def aux_spec():
    torch.manual_seed(0)
    return trace(AuxNet(), torch.randn(4, 6))


def test_the_front_end_leaves_the_unused_head_fixed(aux_spec):
    """The premise: the head's axes have no space (the eval forward never reads them)."""
    assert aux_spec["aux2.weight"].axes == (None, None)
    assert aux_spec["aux1.weight"].axes == (None, None)


def test_large_fixed_dims_are_exchanged_largest_first():
    spec = WeightSpaceSpec.from_dict(
        {
            "spaces": {"i": {"size": 3, "role": "input"}, "h": {"size": 4, "role": "hidden"}},
            "params": {
                "w": {"shape": [4, 3, 20, 7], "axes": ["h", "i", None, None]},
                "v": {"shape": [3], "axes": ["i"]},
                "s": {"shape": [3, 16], "axes": [None, None]},
            },
        }
    )
    # hnp: i is fixed too; w folds 3 * 20 * 7 = 420 > 64: the space i goes first (as np
    # would move it, linked with v's), then the larger of the two kernel-like dims
    w, v, _ = tile_refs(spec, "hnp", max_fold=64)
    assert [str(d) for d in w.dims] == ["h", "i", "w#2:2", "7"] and w.fixed_size == 7
    assert [str(d) for d in v.dims] == ["3"]  # v alone folds 3 <= 64: unchanged
    # above 16, a tile also folds at most the square root of its entries: sqrt(4*3*20*7) = 40,
    # so at max_fold=140 the 140 left once i goes are still too many ...
    assert [str(d) for d in tile_refs(spec, "hnp", max_fold=140)[0].dims] == [
        "h",
        "i",
        "w#2:2",
        "7",
    ]
    # ... and a small tile of 3 x 16 fixed entries (a channel shuffle's) keeps 3 (48 > 16, 6)
    s = tile_refs(spec, "np", max_fold=64)[2]
    assert [str(d) for d in s.dims] == ["3", "s#1:1"] and s.fixed_size == 3
    # at max_fold=2 everything fixed goes, v's i under the same name as w's
    w, v, _ = tile_refs(spec, "hnp", max_fold=2)
    assert [str(d) for d in w.dims] == ["h", "i", "w#2:2", "w#3:3"] and w.fixed_size == 1
    assert [str(d) for d in v.dims] == ["i"] and v.dims[0].factor == w.dims[1].factor
    # no max_fold: everything fixed stays folded
    assert tile_refs(spec, "hnp")[0].fixed_size == 420


def test_a_relation_has_no_more_weights_than_its_tile_has_entries():
    """A ResNet stem's 7x7 kernel folds 49 entries: one relation of its (64, 3, 7, 7) tile has
    ``(C * 49)**2`` weights, 65 times the tile's 9,408 entries at 16 channels. The fold limit
    counts the layer's channels: at 16 -> 16 one kernel dim is exchanged (fold 7); with one
    channel, or a 3x3 kernel (at most :data:`SMALL_FOLD` always folds), nothing is."""
    spec = WeightSpaceSpec.from_dict(
        {
            "spaces": {"i": {"size": 3, "role": "input"}, "h": {"size": 64, "role": "hidden"}},
            "params": {
                "stem": {"shape": [64, 3, 7, 7], "axes": ["h", "i", None, None]},
                "conv": {"shape": [64, 64, 3, 3], "axes": ["h", "h", None, None]},
            },
        }
    )
    stem, conv = tile_refs(spec, "np", MAX_FOLD)
    assert stem.fixed_size == 49 and conv.fixed_size == 9
    stem, conv = tile_refs(spec, "np", MAX_FOLD, channels=16 * 16)
    assert [str(d) for d in stem.dims] == ["h", "i", "stem#2:2", "7"] and conv.fixed_size == 9
    assert fold_limit(64 * 3 * 49, MAX_FOLD, 16 * 16) == SMALL_FOLD
    layer = NFLinear(spec, 16, 16, basis="linear")
    assert [t.fixed_size for t in layer.plan.tiles] == [7, 9]
    cap = max(math.prod(t.shape) for t in layer.plan.tiles)
    assert all(
        math.prod(r.shape(16, 16, layer.width)) <= cap
        for r in layer.plan.relations
        if r.role in ("self", "module", "other")
    )
    assert check_equivariant(layer, spec, "np")
    # a layer of one channel in and out folds the whole kernel, as before
    assert NFLinear(spec, 1, 1, basis="linear").plan.tiles[0].fixed_size == 49


def test_linear_layer_on_an_unused_head_is_small_and_equivariant(aux_spec):
    layer = NFLinear(aux_spec, 2, 3, basis="linear")
    assert layer.max_fold == MAX_FOLD and "max_fold" not in repr(layer)
    model_params = sum(p.numel for p in aux_spec.params)
    assert layer.num_params < model_params
    for mode in ("np", "hnp"):
        assert check_equivariant(
            NFLinear(aux_spec, 2, 3, mode=mode, basis="linear"), aux_spec, mode
        )


def test_exchanged_dims_are_a_symmetry_of_the_layer(aux_spec):
    """The layer is equivariant to the larger group too: permuting the rows of the head's
    (exchanged) output axis permutes the layer's output there and nowhere else."""
    layer = NFLinear(aux_spec, 2, 2, basis="linear").double()
    gen = torch.Generator().manual_seed(0)
    randomise(layer, gen)
    x = rand_feats(aux_spec, 2, 2, gen)
    perm = torch.randperm(400, generator=gen)
    moved = dict(x)
    moved["aux2.weight"] = x["aux2.weight"][:, :, perm]
    y, y_moved = layer(x), layer(moved)
    for name in aux_spec.names:
        want = y[name][:, :, perm] if name == "aux2.weight" else y[name]
        torch.testing.assert_close(y_moved[name], want)
    # and the positions are no longer told apart: the head's output is not all equal rows
    assert not torch.allclose(y["aux2.weight"][:, :, 0], y["aux2.weight"][:, :, 1])


def test_folding_everything_is_refused_before_allocating(aux_spec):
    """max_fold=None folds the head: far more than memory holds, refused with the tensors
    named, before any weight is allocated."""
    with pytest.raises(ConfigError) as err:
        NFLinear(aux_spec, 2, 2, basis="linear", max_fold=None)
    msg = str(err.value)
    assert "the linear basis" in msg and "GiB to train" in msg
    assert "'aux2.weight' (400, 300) folds 120,000" in msg and "max_fold=None" in msg
    with pytest.raises(ConfigError, match="max_fold must be"):
        NFLinear(aux_spec, 2, 2, basis="linear", max_fold=0)


def test_pool_max_fold_averages_large_fixed_dims(aux_spec):
    full, small = NFPool(aux_spec, "np", 2), NFPool(aux_spec, "np", 2, max_fold=16)
    assert full.features_per_channel > 120_000
    assert small.features_per_channel < 100 and "max_fold=16" in repr(small)
    check_invariant(small, aux_spec, "np", 2)


@pytest.mark.parametrize("specs", [weight_space_specs, block_space_specs], ids=["chains", "blocks"])
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), mode=st.sampled_from(("np", "hnp")))
def test_every_fixed_dim_exchanged_stays_equivariant(specs, data, mode):
    """max_fold=1 exchanges every fixed dim (kernel dims, composite pieces, hnp's input and
    output spaces, block dims that do not move): still exactly equivariant on random chains."""
    spec = data.draw(specs())
    layer = NFLinear(spec, 2, 3, mode=mode, basis="linear", max_fold=1)
    assert all(t.fixed_size == 1 for t in layer.plan.tiles)
    check_equivariant(layer, spec, mode, data.draw(st.integers(0, 2**16)))
