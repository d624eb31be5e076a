"""Tests of nfncompile.testing: the public equivariance / invariance checks."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from nfncompile.errors import SpecError, StateDictMismatchError
from nfncompile.features import WeightSpaceFeatures
from nfncompile.nn import IOEncoding, NFActivation, NFLinear, NFNorm, NFPool
from nfncompile.nn.stats import StatFeatures
from nfncompile.spec import WeightSpaceSpec
from nfncompile.testing import (
    assert_equivariant,
    assert_invariant,
    default_mode,
    mlp_spec,
    random_features,
)

from .nn.test_pointwise import CNN  # a conv spec with fixed axes, a composite axis and a view

MLP = mlp_spec([3, 4, 2, 2])


class AddPositional(nn.Module):
    """Adds ``scale * arange`` to one param: breaks every permutation of that param's axes."""

    def __init__(self, name: str, scale: float = 1.0, mode: str | None = None) -> None:
        super().__init__()
        self.name, self.scale = name, scale
        if mode is not None:
            self.mode = mode

    def forward(self, feats: WeightSpaceFeatures) -> WeightSpaceFeatures:
        t = feats[self.name]
        pos = torch.arange(t[0, 0].numel(), dtype=t.dtype).reshape(t.shape[2:])
        return WeightSpaceFeatures({**feats, self.name: t + self.scale * pos})


class FlipAxis(nn.Module):
    """Reverses one axis of one param."""

    def __init__(self, name: str, axis: int) -> None:
        super().__init__()
        self.name, self.axis = name, axis

    def forward(self, feats: WeightSpaceFeatures) -> WeightSpaceFeatures:
        return WeightSpaceFeatures({**feats, self.name: feats[self.name].flip(2 + self.axis)})


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# random_features / default_mode
# ---------------------------------------------------------------------------------------------


def test_random_features_shapes_dtype_and_seeding():
    a = random_features(MLP, 3, 5, gen(1))
    assert list(a) == list(MLP.names)
    for p in MLP.params:
        assert a[p.name].shape == (5, 3, *p.shape)
        assert a[p.name].dtype == torch.float64
    b = random_features(MLP, 3, 5, gen(1))
    c = random_features(MLP, 3, 5, gen(2))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
        assert not torch.equal(a[k], c[k])
    assert random_features(MLP, 1, 1, gen(), dtype=torch.float32).dtype == torch.float32


def test_default_mode():
    assert default_mode(NFActivation(), MLP) == "np"  # no mode attribute: the spec's
    assert default_mode(NFActivation(), MLP.with_mode("hnp")) == "hnp"
    np_mod, hnp_mod = AddPositional("l1.bias", mode="np"), AddPositional("l1.bias", mode="hnp")
    assert default_mode(np_mod, MLP.with_mode("hnp")) == "np"
    assert default_mode(nn.Sequential(np_mod, NFNorm(1)), MLP) == "np"
    assert default_mode(nn.Sequential(np_mod, nn.Sequential(hnp_mod)), MLP) == "hnp"


# ---------------------------------------------------------------------------------------------
# assert_equivariant
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["np", "hnp"])
def test_passes_on_equivariant_modules(mode):
    norm = NFNorm(3)
    with torch.no_grad():
        norm.weight.normal_(generator=gen(3))
        norm.bias.normal_(generator=gen(4))
    net = nn.Sequential(NFActivation("gelu"), norm, NFActivation("tanh"))
    err = assert_equivariant(net, MLP, mode=mode, in_channels=3, trials=4, seed=5)
    assert 0.0 <= err < 1e-12


def test_leaves_the_module_untouched():
    norm = NFNorm(2).train()
    assert_equivariant(norm, MLP, in_channels=2)
    assert norm.weight.dtype == torch.float32 and norm.training


def test_fails_and_names_the_worst_parameter():
    # l2.weight is flipped along h1 (error O(1)); l1.weight gets a tiny positional shift
    bad = nn.Sequential(FlipAxis("l2.weight", axis=1), AddPositional("l1.weight", scale=1e-3))
    with pytest.raises(AssertionError) as info:
        assert_equivariant(bad, MLP, mode="np")
    msg = str(info.value)
    assert "Sequential is not np-equivariant (trial 1 of 3" in msg
    assert "worst param 'l2.weight'" in msg
    assert "permuted spaces: [" in msg and "'h1'" in msg
    err = float(re.search(r"max abs error ([0-9.e+-]+)", msg).group(1))
    assert err > 1e-2
    assert "Mismatched elements" in msg  # torch.testing's report of that param follows


def test_worst_parameter_is_the_one_with_the_largest_error():
    bad = nn.Sequential(AddPositional("l1.bias", 1e-3), AddPositional("l3.weight", 10.0))
    with pytest.raises(
        AssertionError, match=r"worst param 'l3\.weight' with max abs error 1\.\d+e\+01"
    ):
        assert_equivariant(bad, MLP, mode="np")
    bad = nn.Sequential(AddPositional("l1.bias", 10.0), AddPositional("l3.weight", 1e-3))
    with pytest.raises(AssertionError, match=r"worst param 'l1\.bias'"):
        assert_equivariant(bad, MLP, mode="np")


def test_mode_selects_the_group():
    # a position-dependent change on l1.weight's `in` axis only: fine when `in` is fixed
    class InAxisOnly(nn.Module):
        def forward(self, feats):
            t = feats["l1.weight"]
            pos = torch.arange(3, dtype=t.dtype)
            return WeightSpaceFeatures({**feats, "l1.weight": t * pos})

    assert assert_equivariant(InAxisOnly(), MLP, mode="hnp") == 0.0
    with pytest.raises(AssertionError, match=r"not np-equivariant.*'in'"):
        assert_equivariant(InAxisOnly(), MLP, mode="np", trials=5)
    # the default follows the spec's mode, then the module's own `mode`
    assert assert_equivariant(InAxisOnly(), MLP.with_mode("hnp")) == 0.0
    mod = InAxisOnly()
    mod.mode = "hnp"
    assert assert_equivariant(mod, MLP) == 0.0
    with pytest.raises(SpecError, match="unknown mode 'xnp'"):
        assert_equivariant(mod, MLP, mode="xnp")


@pytest.mark.parametrize("seed", range(6))
def test_identity_draws_are_redrawn(seed):
    # h2 has 2 neurons: half of all draws leave it alone; one trial must still move it
    spec = WeightSpaceSpec.from_dict(
        {
            "spaces": {"h": {"size": 2, "role": "hidden"}},
            "params": {"b": {"shape": [2], "axes": ["h"]}},
        }
    )
    with pytest.raises(AssertionError, match=r"permuted spaces: \['h'\]"):
        assert_equivariant(AddPositional("b"), spec, trials=1, seed=seed)


def test_trivial_group_passes_every_module():
    spec = WeightSpaceSpec.from_dict(
        {
            "spaces": {"a": {"size": 1, "role": "hidden"}, "x": {"size": 3, "role": "input"}},
            "params": {"w": {"shape": [1, 3], "axes": ["a", "x"]}},
        }
    )
    assert assert_equivariant(AddPositional("w"), spec, mode="hnp") == 0.0


def test_tolerances_are_applied():
    tiny = AddPositional("l2.bias", scale=1e-10)
    assert assert_equivariant(tiny, MLP, mode="np") <= 2e-10
    with pytest.raises(AssertionError, match="atol=1e-12, rtol=0"):
        assert_equivariant(tiny, MLP, mode="np", atol=1e-12, rtol=0)


def test_given_features_are_used():
    x = random_features(MLP, 4, 3, gen(6), dtype=torch.float32)
    seen = []

    class Record(nn.Module):
        def forward(self, feats):
            seen.append(feats)
            return feats

    assert assert_equivariant(Record(), MLP, features=x, trials=1) == 0.0
    assert seen[0].dtype == torch.float64 and seen[0].channels == 4 and seen[0].batch_size == 3
    torch.testing.assert_close(seen[0]["l1.weight"], x["l1.weight"].double())
    with pytest.raises(StateDictMismatchError, match=r"missing keys: l3\.bias"):
        assert_equivariant(Record(), MLP, features={k: x[k] for k in list(x)[:-1]})


def test_output_must_be_features_with_the_spec_params():
    class DropsParam(nn.Module):
        def forward(self, feats):
            return WeightSpaceFeatures({k: v for k, v in feats.items() if k != "l2.bias"})

    with pytest.raises(
        AssertionError, match=r"(?s)output features do not match the spec.*missing keys: l2\.bias"
    ):
        assert_equivariant(DropsParam(), MLP)
    with pytest.raises(TypeError, match="use assert_invariant"):
        assert_equivariant(StatFeatures(MLP), MLP)


def test_channel_count_may_change():
    class Double(nn.Module):
        def forward(self, feats):
            return feats.map(lambda t: torch.cat([t, t**2], 1))

    assert assert_equivariant(Double(), MLP, in_channels=2) == 0.0


# ---------------------------------------------------------------------------------------------
# assert_invariant
# ---------------------------------------------------------------------------------------------


def test_invariant_passes_on_stats_and_fails_on_flatten():
    assert assert_invariant(StatFeatures(MLP, in_channels=2), MLP, in_channels=2) < 1e-12

    class Flatten(nn.Module):
        def forward(self, feats):
            return feats.flatten()

    with pytest.raises(AssertionError) as info:
        assert_invariant(Flatten(), MLP, mode="hnp")
    msg = str(info.value)
    assert re.search(r"Flatten is not hnp-invariant \(trial 1 of 3, permuted spaces: \['h", msg)
    assert float(re.search(r"max abs error ([0-9.e+-]+)", msg).group(1)) > 1e-2
    with pytest.raises(TypeError, match="use assert_equivariant"):
        assert_invariant(NFActivation(), MLP)


def test_invariant_detects_nan():
    class NaNOnPermuted(nn.Module):
        def forward(self, feats):
            t = feats["l2.bias"].flatten(1)
            return torch.where(t[:, :1] > t[:, 1:], torch.nan, 0.0)

    with pytest.raises(AssertionError, match="max abs error inf"):
        assert_invariant(NaNOnPermuted(), MLP, mode="np", trials=5)


# ---------------------------------------------------------------------------------------------
# with the generated layers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [MLP, CNN], ids=["mlp", "cnn"])
@pytest.mark.parametrize("mode", ["np", "hnp"])
def test_nf_network_of_generated_layers(spec, mode):
    net = nn.Sequential(
        NFLinear(spec, 1, 4, mode=mode), NFActivation(), NFNorm(4), NFLinear(spec, 4, 4, mode=mode)
    )
    assert default_mode(net, spec) == mode
    assert assert_equivariant(net, spec, seed=7) < 1e-10
    head = nn.Sequential(*net, NFPool(spec, mode=mode, in_channels=4))
    assert assert_invariant(head, spec, seed=8) < 1e-10
    assert assert_invariant(NFPool(spec, mode=mode, in_channels=3), spec, in_channels=3) < 1e-12


@pytest.mark.parametrize("spec", [MLP, CNN], ids=["mlp", "cnn"])
def test_hnp_layers_are_caught_under_np(spec):
    # the hnp layer treats input/output neurons individually: not np-equivariant
    with pytest.raises(AssertionError, match=r"NFLinear is not np-equivariant .*worst param"):
        assert_equivariant(NFLinear(spec, 1, 2, mode="hnp"), spec, mode="np", trials=5)
    with pytest.raises(AssertionError, match="NFPool is not np-invariant"):
        assert_invariant(NFPool(spec, mode="hnp"), spec, mode="np", trials=5)


@pytest.mark.parametrize("spec", [MLP, CNN], ids=["mlp", "cnn"])
def test_io_encoding_into_np_layer_is_hnp_equivariant_only(spec):
    enc = IOEncoding(spec, channels=1, num_freqs=2)
    net = nn.Sequential(enc, NFLinear(spec, enc.out_channels, 3, mode="np"), NFActivation())
    assert default_mode(net, spec) == "hnp"  # IOEncoding.mode outranks NFLinear's "np"
    assert assert_equivariant(net, spec, seed=9) < 1e-10
    with pytest.raises(AssertionError, match="Sequential is not np-equivariant"):
        assert_equivariant(net, spec, mode="np", trials=5)
