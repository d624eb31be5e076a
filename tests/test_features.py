"""Unit tests of :mod:`nfncompile.features`: matching by key, batching, the state_dict round
trip, the dtype rules and the errors."""

from __future__ import annotations

import pytest
import torch

from nfncompile.errors import FeatureMismatchError, StateDictMismatchError
from nfncompile.features import WeightSpaceFeatures
from nfncompile.testing import mlp_spec

SPEC = mlp_spec([3, 4, 2])  # l1.weight, l1.bias, l2.weight, l2.bias


def state_dict(seed: int, dtype: torch.dtype = torch.float32) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {p.name: torch.randn(p.shape, generator=gen, dtype=dtype) for p in SPEC.params}


# --------------------------------------------------------------------------------------------
# by-key matching and batching
# --------------------------------------------------------------------------------------------


def test_entries_are_matched_by_key_not_order():
    sds = [state_dict(0), state_dict(1)]
    shuffled = [dict(reversed(list(sd.items()))) for sd in sds]
    feats = WeightSpaceFeatures.from_state_dicts(SPEC, shuffled)
    assert tuple(feats) == SPEC.names  # the spec's order, whatever the state_dict's
    for b, sd in enumerate(sds):
        for k, v in sd.items():
            torch.testing.assert_close(feats[k][b, 0], v)


def test_without_a_spec_the_first_state_dict_orders_the_keys():
    sds = [state_dict(0), dict(reversed(list(state_dict(1).items())))]
    feats = WeightSpaceFeatures.from_state_dicts(None, sds)
    assert tuple(feats) == tuple(sds[0])
    torch.testing.assert_close(feats["l2.bias"][1, 0], sds[1]["l2.bias"])


def test_batch_and_channel_dims():
    feats = WeightSpaceFeatures.from_state_dicts(SPEC, [state_dict(i) for i in range(5)])
    assert (feats.batch_size, feats.channels, len(feats)) == (5, 1, 4)
    for p in SPEC.params:
        assert feats[p.name].shape == (5, 1, *p.shape)


def test_collate_concatenates_features_and_stacks_state_dicts():
    a = WeightSpaceFeatures.from_state_dicts(SPEC, [state_dict(0), state_dict(1)])
    b = WeightSpaceFeatures.from_state_dicts(SPEC, [state_dict(2)])
    both = WeightSpaceFeatures.collate([a, b])
    assert both.batch_size == 3
    torch.testing.assert_close(both["l1.weight"][2], b["l1.weight"][0])
    stacked = WeightSpaceFeatures.collate([state_dict(0), state_dict(1), state_dict(2)])
    for k in SPEC.names:
        torch.testing.assert_close(stacked[k], both[k])


def test_bookkeeping_counters_are_skipped():
    sds = [{**state_dict(i), "bn.num_batches_tracked": torch.tensor(7)} for i in range(2)]
    assert tuple(WeightSpaceFeatures.from_state_dicts(None, sds)) == SPEC.names
    assert tuple(WeightSpaceFeatures.from_state_dicts(SPEC, sds)) == SPEC.names


def test_a_real_batchnorm_state_dict():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    net(torch.randn(5, 3))  # bumps num_batches_tracked to 1
    feats = WeightSpaceFeatures.from_state_dicts(None, [net.state_dict()])
    assert "1.num_batches_tracked" not in feats
    assert set(feats) == {"0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                          "1.running_var"}  # fmt: skip


# --------------------------------------------------------------------------------------------
# round trip
# --------------------------------------------------------------------------------------------


def test_to_state_dicts_round_trip_loads_into_the_model():
    nets = [torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)) for _ in range(3)]
    feats = WeightSpaceFeatures.from_state_dicts(None, [n.state_dict() for n in nets])
    back = feats.to_state_dicts()
    assert len(back) == 3
    for net, sd in zip(nets, back):
        fresh = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
        fresh.load_state_dict(sd)
        x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(fresh(x), net(x))


def test_to_state_dicts_needs_one_channel():
    feats = WeightSpaceFeatures({"w": torch.zeros(2, 3, 4)})
    with pytest.raises(FeatureMismatchError, match="needs 1 channel, these features have 3"):
        feats.to_state_dicts()


# --------------------------------------------------------------------------------------------
# dtype rules
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", [torch.float64, torch.float16, torch.bfloat16])
def test_other_float_dtypes_are_cast_to_the_default_dtype(source):
    sds = [state_dict(0, source), state_dict(1, source)]
    feats = WeightSpaceFeatures.from_state_dicts(SPEC, sds)
    assert feats.dtype == torch.get_default_dtype() == torch.float32
    torch.testing.assert_close(feats["l1.weight"][1, 0], sds[1]["l1.weight"].float())


def test_mixed_float_dtypes_within_and_across_state_dicts():
    sds = [state_dict(0, torch.float64), {**state_dict(1), "l2.bias": torch.zeros(2).half()}]
    feats = WeightSpaceFeatures.from_state_dicts(SPEC, sds)
    assert {v.dtype for v in feats.values()} == {torch.float32}


def test_the_target_dtype_is_chosen_with_dtype():
    sds = [state_dict(0, torch.float64)]
    feats = WeightSpaceFeatures.from_state_dicts(SPEC, sds, dtype=torch.float64)
    assert feats.dtype == torch.float64
    torch.testing.assert_close(feats["l1.bias"][0, 0], sds[0]["l1.bias"], rtol=0, atol=0)


def test_the_default_dtype_follows_torch():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        feats = WeightSpaceFeatures.from_state_dicts(SPEC, [state_dict(0)])
    finally:
        torch.set_default_dtype(previous)
    assert feats.dtype == torch.float64


def test_features_from_float64_weights_run_through_a_float32_layer():
    """The issue's case: float64 weights (say from JAX) used to fail inside the layer."""
    from nfncompile.nn import NFLinear

    layer = NFLinear(SPEC, 1, 2, mode="hnp")
    out = layer(WeightSpaceFeatures.from_state_dicts(SPEC, [state_dict(0, torch.float64)]))
    assert out.dtype == torch.float32 and out.channels == 2


def test_constructor_keeps_a_shared_dtype_and_casts_a_mix():
    x64 = torch.zeros(2, 1, 3, dtype=torch.float64)
    assert WeightSpaceFeatures({"a": x64, "b": x64}).dtype == torch.float64
    mixed = WeightSpaceFeatures({"a": x64, "b": torch.zeros(2, 1, 3, dtype=torch.float16)})
    assert {v.dtype for v in mixed.values()} == {torch.get_default_dtype()}
    chosen = WeightSpaceFeatures({"a": x64, "b": x64.half()}, dtype=torch.float64)
    assert {v.dtype for v in chosen.values()} == {torch.float64}


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
def test_integer_weights_name_the_key_and_dtype(dtype):
    sds = [state_dict(0), {**state_dict(1), "l1.weight": torch.ones(4, 3, dtype=dtype)}]
    for spec in (SPEC, None):
        with pytest.raises(FeatureMismatchError) as err:
            WeightSpaceFeatures.from_state_dicts(spec, sds)
        msg = str(err.value)
        assert "state_dicts[1]['l1.weight']" in msg and str(dtype) in msg and "[4, 3]" in msg


def test_an_integer_scalar_that_the_spec_names_is_an_error():
    spec = mlp_spec([1, 1])
    sd = {"l1.weight": torch.ones(1, 1), "l1.bias": torch.tensor([1])}
    with pytest.raises(FeatureMismatchError, match=r"\['l1.bias'\]: torch.int64"):
        WeightSpaceFeatures.from_state_dicts(spec, [sd])


def test_constructor_rejects_integer_and_complex_tensors():
    with pytest.raises(FeatureMismatchError, match=r"'w': torch.int64 tensor of shape \[1, 1, 2\]"):
        WeightSpaceFeatures({"w": torch.zeros(1, 1, 2, dtype=torch.int64)})
    with pytest.raises(FeatureMismatchError, match=r"'w': torch.complex64"):
        WeightSpaceFeatures({"w": torch.zeros(1, 1, 2, dtype=torch.complex64)})


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_a_non_floating_target_dtype_is_an_error(dtype):
    with pytest.raises(FeatureMismatchError, match="must be a floating dtype"):
        WeightSpaceFeatures.from_state_dicts(SPEC, [state_dict(0)], dtype=dtype)
    with pytest.raises(FeatureMismatchError, match="must be a floating dtype"):
        WeightSpaceFeatures({"w": torch.zeros(1, 1, 2)}, dtype=dtype)


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


def test_empty_inputs():
    with pytest.raises(FeatureMismatchError, match="at least one state_dict"):
        WeightSpaceFeatures.from_state_dicts(SPEC, [])
    with pytest.raises(FeatureMismatchError, match="at least one tensor"):
        WeightSpaceFeatures({})


def test_spec_mismatch_names_the_state_dict_and_every_key():
    bad = state_dict(1)
    del bad["l1.bias"]
    bad["extra"] = torch.zeros(1)
    bad["l2.weight"] = torch.zeros(3, 3)
    with pytest.raises(StateDictMismatchError) as err:
        WeightSpaceFeatures.from_state_dicts(SPEC, [state_dict(0), bad])
    msg = str(err.value)
    assert msg.startswith("state_dicts[1]: ")
    for fragment in (
        "missing keys: l1.bias",
        "unexpected keys: extra",
        "l2.weight: expected [2, 4]",
    ):
        assert fragment in msg, msg


@pytest.mark.parametrize(
    ("rename", "hint"),
    [
        (lambda sd: {"module." + k: v for k, v in sd.items()}, "prefix 'module.' ("),
        (lambda sd: {"_orig_mod." + k: v for k, v in sd.items()}, "k.removeprefix('_orig_mod.')"),
        (lambda sd: {"state_dict": sd, "epoch": 3}, "pass state_dict['state_dict']"),
        (lambda sd: {k.removeprefix("l"): v for k, v in sd.items()}, "carries the prefix 'l'"),
    ],
)
def test_a_checkpoints_keys_renamed_one_way_are_named(rename, hint):
    # published checkpoints: DistributedDataParallel's `module.`, torch.compile's
    # `_orig_mod.`, the weights nested in a dict beside the epoch, a spec of a wrapper
    with pytest.raises(StateDictMismatchError) as err:
        WeightSpaceFeatures.from_state_dicts(SPEC, [rename(state_dict(0))])
    assert hint in str(err.value) and "missing keys: l1.weight" in str(err.value)


def test_a_key_missing_alone_gets_no_hint():
    bad = state_dict(0)
    del bad["l1.bias"]
    with pytest.raises(StateDictMismatchError) as err:
        WeightSpaceFeatures.from_state_dicts(SPEC, [bad])
    assert "prefix" not in str(err.value) and "nested" not in str(err.value)


def test_different_keys_without_a_spec():
    other = state_dict(1)
    other["more"] = torch.zeros(2)
    with pytest.raises(FeatureMismatchError, match=r"state_dicts\[1\] has keys .*'more'"):
        WeightSpaceFeatures.from_state_dicts(None, [state_dict(0), other])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"w": torch.zeros(3)}, r"w: expected a \(B, C, \*shape\) tensor, got \(3,\)"),
        ({"w": [1.0, 2.0]}, r"w: expected a \(B, C, \*shape\) tensor, got list"),
        ({"w": torch.zeros(2, 1, 3), "b": torch.zeros(3, 1)}, r"b: batch/channel dims \(3, 1\) differ from w's \(2, 1\)"),
    ],
)  # fmt: skip
def test_constructor_errors(data, message):
    with pytest.raises(FeatureMismatchError, match=message):
        WeightSpaceFeatures(data)


def test_missing_feature_lists_the_features():
    feats = WeightSpaceFeatures({"w": torch.zeros(1, 1, 2)})
    with pytest.raises(KeyError, match="no feature 'v'; features: w"):
        feats["v"]


def test_adding_features_with_other_keys():
    a = WeightSpaceFeatures({"w": torch.ones(1, 1, 2)})
    torch.testing.assert_close((a + a)["w"], torch.full((1, 1, 2), 2.0))
    with pytest.raises(FeatureMismatchError, match=r"cannot add features with keys \['v'\]"):
        a + WeightSpaceFeatures({"v": torch.ones(1, 1, 2)})


def test_map_to_and_flatten():
    feats = WeightSpaceFeatures.from_state_dicts(SPEC, [state_dict(0), state_dict(1)])
    doubled = feats.map(lambda t: 2 * t)
    torch.testing.assert_close(doubled["l1.bias"], 2 * feats["l1.bias"])
    assert feats.to(torch.float64).dtype == torch.float64
    flat = feats.flatten()
    assert flat.shape == (2, sum(p.numel for p in SPEC.params))
    torch.testing.assert_close(flat[1, :12], feats["l1.weight"][1].flatten())
