"""NFLinear: equivariance (both bases, both modes, block spaces), the linear basis's relations and
transfer between specs, sizes and the memory check, errors, compilation, devices, initialisation."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import fx

from nfncompile.architectures import catalogue as _architectures
from nfncompile.backend import plan as plan_module
from nfncompile.errors import ConfigError, FeatureMismatchError, SpecError
from nfncompile.features import WeightSpaceFeatures
from nfncompile.frontend.tracing import trace
from nfncompile.nn import NFLinear, NFPool
from nfncompile.nn.linear import AUTO_COMPLETE_MAX_PARAMS
from tests.backend.specs import BLOCK_SPECS, SPECS, mlp_spec
from tests.nn.helpers import (
    block_space_specs,
    check_equivariant,
    rand_feats,
    randomise,
    weight_space_specs,
)

MODES = ("np", "hnp")
BASES = ("complete", "linear")


@pytest.mark.parametrize("specs", [weight_space_specs, block_space_specs], ids=["chains", "blocks"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), mode=st.sampled_from(MODES), basis=st.sampled_from(BASES))
def test_nflinear_equivariant_random_specs(specs, data, mode, basis):
    """Random chains (square, composite, fixed and viewed axes) and random grouped-conv chains
    (block spaces, shared block permutations, inside-block axes)."""
    spec = data.draw(specs())
    layer = NFLinear(spec, 2, 3, mode=mode, basis=basis)
    check_equivariant(layer, spec, mode, data.draw(st.integers(0, 2**16)))
    assert layer.num_params == sum(p.numel() for p in layer.parameters())


@pytest.mark.parametrize("specs", [weight_space_specs, block_space_specs], ids=["chains", "blocks"])
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), mode=st.sampled_from(MODES))
def test_kinds_through_a_channel_equivariant_random_specs(specs, data, mode):
    """Every keyed mix's kinds through the width channel (``CHANNEL_GAIN = 0``), on random
    chains and grouped-conv chains: kept indices of spaces, of block permutations and inside
    blocks."""
    spec = data.draw(specs())
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plan_module, "CHANNEL_GAIN", 0)
        layer = NFLinear(spec, 2, 3, mode=mode, basis="linear")
    assert all(m.shared.channel for m in layer.plan.mixes if m.shared is not None)
    check_equivariant(layer, spec, mode, data.draw(st.integers(0, 2**16)))
    assert layer.num_params == sum(p.numel() for p in layer.parameters())


# ---- hand-written catalogue shapes -------------------------------------------------------------


@pytest.mark.parametrize("basis", BASES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(SPECS))
def test_nflinear_equivariant_catalogue_shapes(name, mode, basis):
    """Hand-written shapes, block spaces included (grouped and depthwise convs: permutations of
    whole blocks and inside every block, drawn by spec.sample_permutation)."""
    spec = SPECS[name]
    assert check_equivariant(NFLinear(spec, 2, 3, mode=mode, basis=basis), spec, mode)


@pytest.mark.parametrize("name", BLOCK_SPECS)
def test_block_permutations_move_blocks_and_insides(name):
    """The draws used above do move whole blocks and neurons inside blocks (np); fixed blocks
    stay in place while the neurons inside them still move."""
    spec = SPECS[name]
    gen = torch.Generator().manual_seed(0)
    moved_blocks = moved_inside = False
    for _ in range(10):
        perm = spec.sample_permutation(gen, mode="np")
        for s, p in perm.perms.items():
            shape = spec.block_shape(s)
            if shape is None:
                continue
            count, k = shape
            grid = p.reshape(count, k)
            moved_blocks |= not torch.equal(grid[:, 0] // k, torch.arange(count))
            moved_inside |= k > 1 and not torch.equal(grid % k, torch.arange(k).expand(count, k))
    fixed = any(b.fixed for b in spec.blocks.values())
    assert moved_blocks != fixed and (moved_inside or name == "depthwise_multiplier")


def test_grouped_layer_is_not_equivariant_to_the_ungrouped_group():
    """The block basis uses the block structure: reading c1 of the grouped spec as a plain space
    (a permutation across blocks) breaks the layer's equivariance."""
    spec = SPECS["grouped"]
    layer = NFLinear(spec, 2, 2, basis="complete").double()
    gen = torch.Generator().manual_seed(0)
    randomise(layer, gen)
    x = rand_feats(spec, 2, 2, gen)
    cross = torch.tensor([0, 2, 1, 3])  # swaps neurons of different blocks of c1 and c2
    moved = {}
    for n, v in x.items():
        p = spec[n]
        for i, a in enumerate(p.axes):
            if a in ("c1", "c2"):
                v = v.index_select(2 + i, cross)
        moved[n] = v
    y, y_moved = layer(x), layer(moved)
    assert not torch.allclose(y_moved["fc.weight"], y["fc.weight"].index_select(3, cross))


def test_equivariance_check_detects_a_broken_layer():
    """The checker is not vacuous: an NP layer is not HNP-equivariant with io_embed, and an
    HNP layer (which mixes input neurons freely) is not NP-equivariant."""
    spec = SPECS["mlp"]
    with pytest.raises(AssertionError):
        check_equivariant(NFLinear(spec, 2, 2, mode="np", io_embed=True), spec, "np")
    with pytest.raises(AssertionError):
        check_equivariant(NFLinear(spec, 2, 2, mode="hnp"), spec, "np")


@pytest.mark.parametrize("basis", BASES)
@pytest.mark.parametrize("name", ["mlp", "cnn", "concat"])
def test_io_embed_is_hnp_equivariant(name, basis):
    spec = SPECS[name]
    layer = NFLinear(spec, 2, 2, mode="hnp", io_embed=True, basis=basis)
    plain = NFLinear(spec, 2, 2, mode="hnp", basis=basis)
    assert len(list(layer.parameters())) > len(list(plain.parameters()))
    check_equivariant(layer, spec, "hnp")
    # an NP layer with io_embed is still HNP-equivariant
    check_equivariant(NFLinear(spec, 2, 2, mode="np", io_embed=True, basis=basis), spec, "hnp")


CATALOGUE_NAMES = sorted(_architectures.CATALOGUE)
#: Entries whose traced spec has block spaces (grouped convs, attention heads: the
#: wreath-product basis).
BLOCK_SPACES = {"regnet_x", "resnext_block", "vit"}


@pytest.mark.parametrize("name", CATALOGUE_NAMES)
def test_traced_catalogue(name):
    """Every catalogue entry traces to a spec on which NFLinear is equivariant, in both modes
    and with both bases."""
    torch.manual_seed(0)
    arch = _architectures.CATALOGUE[name]
    spec = trace(arch.factory(), torch.randn(arch.input_shape))
    assert bool(spec.blocks) == (name in BLOCK_SPACES)
    for mode in MODES:
        for basis in BASES:
            layer = NFLinear(spec, 1, 2, mode=mode, basis=basis)
            assert check_equivariant(layer, spec, mode), (mode, basis)


@pytest.mark.parametrize("name", CATALOGUE_NAMES)
def test_traced_catalogue_kinds_through_a_channel(name, monkeypatch):
    """With every mix's terms between kinds of tensors through the width channel (the default
    takes it where one weight per pair of kinds would cost over ``CHANNEL_GAIN`` times more),
    the linear basis is still equivariant on every catalogue entry, in both modes."""
    monkeypatch.setattr(plan_module, "CHANNEL_GAIN", 0)
    torch.manual_seed(0)
    arch = _architectures.CATALOGUE[name]
    spec = trace(arch.factory(), torch.randn(arch.input_shape))
    for mode in MODES:
        layer = NFLinear(spec, 2, 3, mode=mode, basis="linear")
        keyed = [m.shared for m in layer.plan.mixes if m.shared is not None and m.key]
        assert keyed and all(sh.channel for sh in keyed)
        assert check_equivariant(layer, spec, mode), mode


@pytest.mark.parametrize(
    "name, mode, basis",
    [
        (n, *combo)
        for n, combo in zip(
            CATALOGUE_NAMES, itertools.cycle(itertools.product(MODES, ("auto", "linear")))
        )
    ],
)
def test_fused_and_plain_tile_ops_are_one_map(name, mode, basis, monkeypatch):
    """Below ``fused.FUSE_MIN`` elements a tile's operations are plain torch ops, above it
    custom autograd functions; every catalogue entry's layer (the modes, the default and the
    linear basis in turn) is the same map either way, values and the gradients of inputs and
    weights (float64), and the threshold decides which path runs."""
    from nfncompile.backend import fused

    torch.manual_seed(0)
    arch = _architectures.CATALOGUE[name]
    spec = trace(arch.factory(), torch.randn(arch.input_shape), verify=False)
    gen = torch.Generator().manual_seed(1)
    calls, apply, default = [], fused._TileSum.apply, fused.FUSE_MIN
    monkeypatch.setattr(fused._TileSum, "apply", lambda *a: calls.append(1) or apply(*a))
    layer = NFLinear(spec, 2, 3, mode=mode, basis=basis).double()
    randomise(layer, gen)
    x = {k: v.requires_grad_() for k, v in rand_feats(spec, 2, 2, gen).items()}
    inputs = [*x.values(), *layer.parameters()]
    runs = []
    for fuse_min in (default, 0):
        monkeypatch.setattr(fused, "FUSE_MIN", fuse_min)
        calls.clear()
        y = layer(WeightSpaceFeatures(x))
        out = torch.cat([y[k].flatten() for k in y])
        seed = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
        runs.append((out, torch.autograd.grad(out, inputs, seed.double()), len(calls)))
    (y_small, g_small, n_small), (y_fused, g_fused, n_fused) = runs
    torch.testing.assert_close(y_small, y_fused)
    torch.testing.assert_close(g_small, g_fused)
    largest = max(math.prod(p.shape) for p in spec.params) * 2 * 2
    assert n_small == 0 or largest >= default
    assert n_fused > 0 or "tile_sum" not in layer.code


# ---- outputs, attributes, autograd -------------------------------------------------------------


def test_attributes_and_code():
    spec = SPECS["cnn"]
    layer = NFLinear(spec, 2, 3, mode="hnp")
    assert (layer.in_channels, layer.out_channels, layer.mode, layer.spec) == (2, 3, "hnp", spec)
    assert isinstance(layer.graph_module, fx.GraphModule)
    assert layer.code.lstrip().startswith("def forward(self, conv1_weight, conv1_bias")
    assert "channel_mix" in layer.code and "mean" in layer.code
    assert layer.num_terms == len(layer.terms())
    assert layer.num_params == sum(p.numel() for p in layer.parameters())
    assert str(layer.plan).startswith("Plan(mode='hnp', basis='complete', in_channels=2")
    assert repr(layer).startswith("NFLinear(in_channels=2, out_channels=3, mode='hnp'")
    assert "basis='complete'" in repr(layer)


def test_forward_output_and_gradients():
    spec = SPECS["residual"]
    gen = torch.Generator().manual_seed(0)
    layer = NFLinear(spec, 2, 4).double()
    x = WeightSpaceFeatures(rand_feats(spec, 2, 5, gen))
    y = layer(x)
    assert isinstance(y, WeightSpaceFeatures)
    assert {n: tuple(v.shape) for n, v in y.items()} == {
        n: (5, 4, *spec[n].shape) for n in spec.names
    }
    sum(v.square().sum() for v in y.values()).backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_linear_in_the_input():
    spec = SPECS["concat"]
    gen = torch.Generator().manual_seed(1)
    layer = NFLinear(spec, 2, 2, bias=False).double()
    randomise(layer, gen)
    a, b = rand_feats(spec, 2, 2, gen), rand_feats(spec, 2, 2, gen)
    ya, yb = layer(a), layer(b)
    yab = layer({k: 2 * a[k] - 3 * b[k] for k in a})
    for k in spec.names:
        torch.testing.assert_close(yab[k], 2 * ya[k] - 3 * yb[k])


@pytest.mark.parametrize("basis", [*BASES, "channel"])
@pytest.mark.parametrize("mode", MODES)
def test_init_keeps_unit_scale_through_depth(mode, basis, monkeypatch):
    """Eight layers at 16 channels keep unit scale; ``channel``: the linear basis with every
    keyed mix's kinds through the width channel."""
    if basis == "channel":
        monkeypatch.setattr(plan_module, "CHANNEL_GAIN", 0)
        basis = "linear"
    for spec in (
        mlp_spec((4, 8, 8, 8, 3)),
        mlp_spec((8, 128, 128, 4)),
        SPECS["cnn"],
        SPECS["residual"],
    ):
        gen = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        width = 16
        layers = [
            NFLinear(spec, 1 if i == 0 else width, width, mode=mode, basis=basis) for i in range(8)
        ]
        x = {k: v.float() for k, v in rand_feats(spec, 1, 32, gen).items()}
        for layer in layers:
            x = {k: torch.relu(v) for k, v in layer(x).items()}
        std = torch.cat([v.flatten() for v in x.values()]).std().item()
        assert 1 / 3 < std < 3, std


# ---- bad input ---------------------------------------------------------------------------------


def test_wrong_keys_and_shapes_listed_at_once():
    spec = SPECS["mlp"]
    layer = NFLinear(spec, 2, 2)
    x = rand_feats(spec, 2, 1, torch.Generator().manual_seed(0))
    del x["l1.bias"]
    x["extra"] = torch.zeros(1, 2, 3)
    x["l2.weight"] = torch.zeros(1, 2, 4, 4)
    with pytest.raises(FeatureMismatchError) as err:
        layer(x)
    msg = str(err.value)
    assert "missing keys: l1.bias" in msg
    assert "unexpected keys: extra" in msg
    assert "l2.weight: expected (B, C, 3, 3), got (1, 2, 4, 4)" in msg


def test_wrong_channel_count():
    spec = SPECS["mlp"]
    x = rand_feats(spec, 3, 1, torch.Generator().manual_seed(0))
    with pytest.raises(FeatureMismatchError, match=r"expected C_in=2, got 3"):
        NFLinear(spec, 2, 2)(x)


def test_not_a_mapping():
    with pytest.raises(FeatureMismatchError, match="got Tensor"):
        NFLinear(SPECS["mlp"], 1, 1)(torch.zeros(3))


def test_unknown_mode_and_bad_channels():
    spec = SPECS["mlp"]
    with pytest.raises(SpecError, match="unknown mode 'nph'; valid modes: np, hnp"):
        NFLinear(spec, 1, 1, mode="nph")
    with pytest.raises(ConfigError, match="out_channels must be a positive int, got 0"):
        NFLinear(spec, 1, 0)
    with pytest.raises(ConfigError, match="unknown basis 'full'; valid: auto, complete, linear"):
        NFLinear(spec, 1, 1, basis="full")
    with pytest.raises(ConfigError, match="width must be a positive int"):
        NFLinear(spec, 1, 1, basis="linear", width=0)


# ---- compilation, autocast, devices ------------------------------------------------------------


# dynamo imports parts of torch that warn about their own deprecations (version dependent)
@pytest.mark.filterwarnings("ignore::DeprecationWarning:torch")
@pytest.mark.parametrize("basis", BASES)
@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_torch_compile(backend, basis):
    spec = SPECS["concat"]
    gen = torch.Generator().manual_seed(0)
    layer = NFLinear(spec, 2, 3, mode="hnp", basis=basis).double()
    randomise(layer, gen)
    x = rand_feats(spec, 2, 4, gen)
    expected = layer(x)
    torch._dynamo.reset()
    got = torch.compile(layer, backend=backend, fullgraph=True)(x)
    for k in spec.names:
        torch.testing.assert_close(got[k], expected[k])


def test_autocast_bfloat16_cpu():
    spec = SPECS["cnn"]
    gen = torch.Generator().manual_seed(0)
    layer = NFLinear(spec, 2, 3)
    x = {k: v.float() for k, v in rand_feats(spec, 2, 4, gen).items()}
    expected = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = layer(x)
    for k in spec.names:
        assert got[k].shape == expected[k].shape
        torch.testing.assert_close(got[k].float(), expected[k], atol=0.1, rtol=0.05)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("basis", BASES)
def test_cuda_matches_cpu(basis):
    spec = SPECS["grouped"]
    gen = torch.Generator().manual_seed(0)
    layer = NFLinear(spec, 2, 3, mode="hnp", basis=basis).double()
    x = rand_feats(spec, 2, 4, gen)
    expected = layer(x)
    got = layer.cuda()({k: v.cuda() for k, v in x.items()})
    for k in spec.names:
        torch.testing.assert_close(got[k].cpu(), expected[k])
    pooled = NFPool(spec, "hnp")({k: v.cuda() for k, v in x.items()})
    assert pooled.is_cuda


def test_large_spaces_are_cheap():
    """Sizes do not enter the basis: a wide MLP compiles the same plan as a narrow one."""
    narrow, wide = mlp_spec((3, 4, 4, 2)), mlp_spec((300, 400, 400, 20))
    a, b = NFLinear(narrow, 2, 2), NFLinear(wide, 2, 2)
    assert a.num_terms == b.num_terms and a.num_params == b.num_params
    x = rand_feats(wide, 2, 2, torch.Generator().manual_seed(0))
    out = b.double()(x)
    assert math.isfinite(sum(v.sum().item() for v in out.values()))


# ---- the two bases: default, sizes, memory ---------------------------------------------------


def test_auto_basis_is_complete_for_small_weight_spaces_and_linear_for_large():
    small = NFLinear(mlp_spec((3, 4, 4, 2)), 4, 4)
    assert small.basis == "complete" and small.num_params <= AUTO_COMPLETE_MAX_PARAMS
    deep = mlp_spec((8,) * 40)
    big = NFLinear(deep, 64, 64)
    assert big.basis == "linear" and "basis='linear'" in repr(big)
    assert NFLinear(deep, 64, 64, basis="linear").num_params == big.num_params


def test_complete_basis_too_large_for_memory_is_refused_before_allocating():
    spec = mlp_spec((8,) * 6)
    with pytest.raises(ConfigError) as err:
        NFLinear(spec, 10**5, 10**5, basis="complete")
    msg = str(err.value)
    assert "GiB in float32" in msg and "GiB to train" in msg
    assert "use basis='linear'" in msg and "weights)" in msg


def test_linear_basis_size_does_not_grow_with_depth():
    """Relation-indexed weights: an MLP of depth 4 and one of depth 16 (np) have the same
    relations, hence the same weights; the complete basis grows quadratically."""
    shallow, deep = mlp_spec((6,) * 5), mlp_spec((6,) * 17)
    a = NFLinear(shallow, 4, 4, basis="linear")
    b = NFLinear(deep, 4, 4, basis="linear")
    assert a.num_params == b.num_params
    assert {r.key for r in a.plan.relations} == {r.key for r in b.plan.relations}
    ca, cb = NFLinear(shallow, 4, 4, basis="complete"), NFLinear(deep, 4, 4, basis="complete")
    assert cb.num_params > 10 * ca.num_params


@pytest.mark.filterwarnings("ignore:`torch.jit.script(_method)?` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("gain", [plan_module.CHANNEL_GAIN, 0], ids=["default", "channel"])
def test_linear_basis_is_a_restriction_of_the_complete_one(gain, monkeypatch):
    """Every linear-basis map is a complete-basis map: the complete layer fits it exactly
    (also with the kinds meeting through a channel: a factored weight of the same terms)."""
    from tests.backend.test_parity import fit

    monkeypatch.setattr(plan_module, "CHANNEL_GAIN", gain)
    spec = SPECS["residual"]
    feats = {k: v for k, v in rand_feats(spec, 2, 6, torch.Generator().manual_seed(3)).items()}
    lin = NFLinear(spec, 2, 2, basis="linear").double()
    randomise(lin, torch.Generator().manual_seed(4))
    target = torch.cat([v.flatten() for v in lin(feats).values()]).detach()
    assert fit(NFLinear(spec, 2, 2, basis="complete").double(), spec, feats, target) < 1e-10


# ---- one layer for several architectures -------------------------------------------------------


def _traced(name: str, **kwargs):
    from nfncompile.architectures import FACTORIES

    torch.manual_seed(0)
    model = FACTORIES[name](**kwargs)
    return trace(model, torch.randn(2, 3, 8, 8), verify=False)


@pytest.mark.parametrize("mode", MODES)
def test_resnet20_layer_reads_resnet32_weights(mode):
    """One linear-basis layer built for ResNet-20 applies to ResNet-32 with no new weights, and
    is equivariant on both."""
    r20, r32 = (
        _traced("resnet_cifar", depth=20, width=4),
        _traced("resnet_cifar", depth=32, width=4),
    )
    assert len(r32.params) > len(r20.params)
    layer = NFLinear(r20, 2, 3, mode=mode, basis="linear")
    deeper = layer.to_spec(r32)
    assert {id(p) for p in deeper.parameters()} <= {id(p) for p in layer.parameters()}
    assert deeper.spec is r32 and deeper.basis == "linear"
    assert check_equivariant(layer, r20, mode)
    assert check_equivariant(deeper, r32, mode)
    # the shared weights are one: a change to the first layer shows in the second
    x = rand_feats(r32, 2, 1, torch.Generator().manual_seed(0))
    deeper = deeper.double()
    before = deeper(x)["fc.weight"].clone()
    with torch.no_grad():
        for p in layer.parameters():
            p.mul_(2)
    assert not torch.allclose(deeper(x)["fc.weight"], before)


def test_many_kinds_meet_through_a_channel():
    """A ResNet-20's hidden spaces are shared by a dozen kinds of tensors (convs, norms'
    weights, biases and statistics): at 16 channels one weight per pair of kinds costs more
    than ``CHANNEL_GAIN`` times a channel of ``width`` features per neuron, so the default
    routes them through it. Smaller, still equivariant, named by kind (ResNet-32 reads it)."""
    r20, r32 = (
        _traced("resnet_cifar", depth=20, width=4),
        _traced("resnet_cifar", depth=32, width=4),
    )
    layer = NFLinear(r20, 16, 16, mode="hnp", basis="linear", width=16)
    keyed = [m.shared for m in layer.plan.mixes if m.shared is not None and m.key]
    assert any(sh.channel for sh in keyed)
    roles = {r.role for r in layer.plan.relations}
    assert {"chan_in", "chan_out"} <= roles
    assert all(r.key.startswith("channel ") for r in layer.plan.relations if "chan" in r.role)
    assert " through the channel" in str(layer.plan) and "channel width 16" in str(layer.plan)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plan_module, "CHANNEL_GAIN", math.inf)
        pairs = NFLinear(r20, 16, 16, mode="hnp", basis="linear", width=16)
    assert "chan_in" not in {r.role for r in pairs.plan.relations}
    assert layer.num_params < pairs.num_params / 1.5
    assert check_equivariant(layer, r20, "hnp")
    deeper = layer.to_spec(r32)
    assert deeper.num_params == layer.num_params
    assert check_equivariant(deeper, r32, "hnp")


@pytest.mark.parametrize("mode", MODES)
def test_a_shufflenet_layer_reads_a_deeper_shufflenet(mode):
    """ShuffleNetV2 with 2 units per stage to one with (4, 8, 4): the deeper one's channel
    shuffles interleave more pieces, in other orders; its layer reads them in label order."""
    shallow, deep = (
        _traced("shufflenetv2", stages_out_channels=(8, 16, 32, 64, 64), stages_repeats=r)
        for r in ((2, 2, 2), (4, 8, 4))
    )
    assert shallow.ordered and deep.ordered
    layer = NFLinear(shallow, 2, 2, mode=mode, basis="linear")
    deeper = layer.to_spec(deep)
    assert deeper.reorders is not None and deeper.reorders.spec is deep
    assert check_equivariant(layer, shallow, mode)
    assert check_equivariant(deeper, deep, mode)


def test_mlp_depth_3_layer_reads_depth_5():
    shallow, deep = mlp_spec((4, 8, 8, 2)), mlp_spec((4, 8, 8, 8, 8, 2))
    layer = NFLinear(shallow, 2, 2, mode="np", basis="linear")
    deeper = layer.to_spec(deep)
    assert check_equivariant(layer, shallow, "np")
    assert check_equivariant(deeper, deep, "np")


def test_to_spec_names_missing_relations():
    """In hnp a depth-3 MLP has no hidden-to-hidden weight next to another: a depth-5 one needs
    relations the layer lacks, and says which."""
    layer = NFLinear(mlp_spec((4, 8, 8, 2)), 2, 2, mode="hnp", basis="linear")
    with pytest.raises(ConfigError, match=r"needs \d+ relations this layer has no weights for: "):
        layer.to_spec(mlp_spec((4, 8, 8, 8, 8, 2)))
    with pytest.raises(ConfigError, match="to_spec needs basis='linear'"):
        NFLinear(SPECS["mlp"], 1, 1, basis="complete").to_spec(SPECS["mlp"])
    with pytest.raises(ConfigError, match="per-term weights exist only with basis='complete'"):
        layer.terms()
