"""Tests of nfncompile.declarative.models: the NFN, StatNN and FlatMLP modules built from specs."""

from __future__ import annotations

import pytest
import torch

from nfncompile.declarative.builder import build
from nfncompile.declarative.models import NFN, FlatMLP, StatNN
from nfncompile.errors import ConfigError, FeatureMismatchError
from nfncompile.features import WeightSpaceFeatures
from nfncompile.testing import assert_equivariant, assert_invariant
from tests.declarative.helpers import HEAD, LIN, MLP_SPEC, POOL, feats, nfn


def test_build_nfn_invariant_hnp_with_io_encoding():
    torch.manual_seed(0)
    net = build(
        nfn(
            {**LIN, "io_embed": True},
            {"type": "activation", "fn": "gelu"},
            {"type": "norm"},
            {"type": "io_encoding", "num_freqs": 2},
            {"type": "dropout", "p": 0.1},
            {"type": "nf_linear", "channels": 5},
            POOL,
            HEAD,
        ),
        spec=MLP_SPEC,
    )
    assert isinstance(net, NFN)
    assert (net.mode, net.output, net.out_features, net.out_channels) == (
        "hnp",
        "invariant",
        3,
        None,
    )
    assert net.spec == MLP_SPEC.with_mode("hnp") and net.config.nfn.layers[0].io_embed
    assert net(feats(MLP_SPEC)).shape == (3, 3)
    assert_invariant(net, MLP_SPEC, mode="hnp")


def test_build_nfn_weight_space_output_np():
    torch.manual_seed(0)
    net = build(
        nfn(LIN, {"type": "activation"}, {"type": "nf_linear", "channels": 2}, mode="np"),
        spec=MLP_SPEC,
    )
    assert (net.output, net.out_channels, net.out_features) == ("weight_space", 2, None)
    y = net(feats(MLP_SPEC))
    assert isinstance(y, WeightSpaceFeatures) and y.channels == 2
    assert {k: tuple(v.shape[2:]) for k, v in y.items()} == {
        p.name: p.shape for p in MLP_SPEC.params
    }
    assert_equivariant(net, MLP_SPEC, mode="np")


@pytest.mark.parametrize("mode", ["np", "hnp"])
def test_build_nfn_with_weight_value_encodings(mode):
    torch.manual_seed(0)
    net = build(
        nfn(
            {"type": "threshold_features", "num_thresholds": 4, "low": -1, "high": 1},
            {"type": "fourier_features", "kind": "gaussian", "num_freqs": 6, "scale": 0.5},
            LIN,
            {"type": "activation"},
            {"type": "nf_linear", "channels": 2},
            mode=mode,
        ),
        spec=MLP_SPEC,
    )
    threshold, fourier, first = net.layers[0], net.layers[1], net.layers[2]
    assert (threshold.out_channels, fourier.in_channels, fourier.out_channels) == (5, 5, 17)
    assert first.in_channels == 17 and net.out_channels == 2
    assert_equivariant(net, MLP_SPEC, mode=mode)


def test_bad_encoding_arguments_name_the_layer():
    bad = nfn({"type": "fourier_features", "min_freq": 0.0}, LIN)
    with pytest.raises(ConfigError, match=r"nfn.layers\[0\]: fourier_features: .*min_freq"):
        build(bad, spec=MLP_SPEC)


def test_nfn_in_channels_are_checked_at_forward():
    net = build(nfn(LIN, POOL, HEAD, in_channels=2), spec=MLP_SPEC)
    assert net(feats(MLP_SPEC, channels=2)).shape == (3, 3)
    with pytest.raises(FeatureMismatchError, match=r"NFN\(in_channels=2\) got features with 1"):
        net(feats(MLP_SPEC, channels=1))


def test_build_stat_nn():
    net = build(
        {"stat_nn": {"quantiles": [0.5], "head": {"hidden": [4], "out_features": 2}}},
        spec=MLP_SPEC,
    )
    assert isinstance(net, StatNN) and net.mode is None and net.output == "invariant"
    assert net.stats.num_features == len(MLP_SPEC.params) * 3
    assert net(feats(MLP_SPEC)).shape == (3, 2)


def test_build_flat_mlp_both_outputs():
    net = build({"mlp": {"hidden": [8], "out_features": 4, "dropout": 0.5}}, spec=MLP_SPEC)
    assert isinstance(net, FlatMLP) and net(feats(MLP_SPEC)).shape == (3, 4)
    total = sum(p.numel for p in MLP_SPEC.params)
    assert net.net[0].in_features == total and isinstance(net.net[2], torch.nn.Dropout)

    net = build(
        {"mlp": {"hidden": [8], "output": "weight_space", "out_channels": 2, "in_channels": 3}},
        spec=MLP_SPEC,
    )
    assert net.net[0].in_features == 3 * total and net.net[-1].out_features == 2 * total
    y = net(feats(MLP_SPEC, channels=3))
    assert y.channels == 2 and list(y) == list(MLP_SPEC.names)
    assert all(y[p.name].shape == (3, 2, *p.shape) for p in MLP_SPEC.params)
    with pytest.raises(FeatureMismatchError, match="FlatMLP"):
        net(WeightSpaceFeatures({"l1.weight": torch.zeros(3, 3, 3, 2)}))
