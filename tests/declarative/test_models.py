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


# --------------------------------------------------------------------------------------------
# NFN.to_spec: one NFN for several architectures
# --------------------------------------------------------------------------------------------

LINEAR = {**LIN, "basis": "linear"}


def _traced_resnet(depth: int):
    from nfncompile.architectures import FACTORIES
    from nfncompile.frontend import trace

    torch.manual_seed(0)
    model = FACTORIES["resnet_cifar"](depth=depth, width=4)
    return trace(model, torch.randn(2, 3, 8, 8), verify=False)


@pytest.mark.parametrize("mode", ["np", "hnp"])
def test_nfn_for_resnet20_reads_resnet32_weights(mode):
    """A whole equivariant NFN (layers, activations, norm, dropout) built for ResNet-20 applies to
    ResNet-32 with no new weights, and is equivariant on both."""
    r20, r32 = _traced_resnet(20), _traced_resnet(32)
    torch.manual_seed(0)
    net = build(
        nfn(
            LINEAR,
            {"type": "activation"},
            {"type": "norm"},
            {"type": "dropout", "p": 0.1},
            {"type": "nf_linear", "channels": 2, "basis": "linear"},
            mode=mode,
        ),
        spec=r20,
    )
    deeper = net.to_spec(r32)
    assert isinstance(deeper, NFN) and deeper.spec == r32.with_mode(mode)
    assert {id(p) for p in deeper.parameters()} <= {id(p) for p in net.parameters()}
    assert deeper.layers[2] is net.layers[2]  # the norm: shared as it is
    assert deeper.config.nfn.weight_space is None and deeper.config.nfn.layers == (
        net.config.nfn.layers
    )
    assert_equivariant(net, r20, mode=mode)
    assert_equivariant(deeper, r32, mode=mode)
    # one set of weights: training the deeper NFN changes the first one's output
    x = feats(r20)
    net.eval()
    before = net(x)["fc.weight"].clone()
    loss = sum(v.square().sum() for v in deeper(feats(r32)).values())
    loss.backward()
    with torch.no_grad():
        for p in deeper.parameters():
            p -= 0.1 * p.grad
    assert not torch.allclose(net(x)["fc.weight"], before)


def test_nfn_moved_to_its_own_space_computes_the_same():
    """to_spec of the NFN's own weight space: the same function, weight for weight; and in hnp,
    with the io encoding made again, an MLP of depth 4 to one of depth 6."""
    from nfncompile.testing import mlp_spec

    shallow, deep = mlp_spec([4, 8, 8, 8, 2]), mlp_spec([4, 8, 8, 8, 8, 8, 2])
    torch.manual_seed(0)
    net = build(
        nfn(
            LINEAR,
            {"type": "io_encoding", "num_freqs": 2},
            {"type": "activation", "fn": "gelu"},
            {"type": "nf_linear", "channels": 3, "basis": "linear"},
            mode="hnp",
        ),
        spec=shallow,
    ).eval()
    same = net.to_spec(shallow)
    x = feats(shallow)
    for name, y in net(x).items():
        torch.testing.assert_close(same(x)[name], y, rtol=0, atol=0)
    deeper = net.to_spec(deep)
    assert deeper.layers[1] is not net.layers[1] and deeper.layers[1].spec == deep.with_mode("hnp")
    assert_equivariant(deeper, deep, mode="hnp")


def test_nfn_to_spec_names_what_cannot_move():
    from nfncompile.testing import mlp_spec

    deep = mlp_spec([2, 3, 3, 3, 2])
    pooled = build(nfn(LINEAR, POOL, HEAD), spec=MLP_SPEC)
    with pytest.raises(ConfigError, match="only an NFN with output: weight_space moves"):
        pooled.to_spec(deep)
    complete = build(nfn(LINEAR, {"type": "nf_linear", "channels": 1}, mode="np"), spec=MLP_SPEC)
    with pytest.raises(
        ConfigError, match=r"layers\[1\] \(NFLinear\): NFLinear.to_spec needs basis='linear'"
    ):
        complete.to_spec(deep)
    hnp = build(nfn(LINEAR, {**LINEAR, "channels": 1}, mode="hnp"), spec=MLP_SPEC)
    with pytest.raises(ConfigError, match=r"layers\[0\] \(NFLinear\): .* needs \d+ relations"):
        hnp.to_spec(mlp_spec([2, 3, 3, 3, 3, 2]))
