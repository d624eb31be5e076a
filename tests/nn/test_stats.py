"""Tests of nfncompile.nn.stats: the StatNN baseline features."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

import nfncompile as nfc
from nfncompile.errors import ConfigError, FeatureMismatchError, SpecError
from nfncompile.features import WeightSpaceFeatures
from nfncompile.nn import stats as stats_mod
from nfncompile.nn.stats import StatFeatures, quantiles_by_sort
from nfncompile.spec import WeightSpaceSpec
from nfncompile.testing import assert_invariant, mlp_spec, random_features

MLP = mlp_spec([3, 4, 5, 1])

CNN = WeightSpaceSpec.from_dict(
    {
        "spaces": {
            "in": {"size": 2, "role": "input"},
            "c1": {"size": 3, "role": "hidden"},
            "out": {"size": 4, "role": "output"},
        },
        "params": {
            "conv1.weight": {"shape": [3, 2, 3, 3], "axes": ["c1", "in", None, None]},
            "conv1.bias": {"shape": [3], "axes": ["c1"]},
            "fc.weight": {"shape": [4, 7], "axes": ["out", ["c1", 2, "in"]]},
            "head.weight": {"shape": [4, 6], "view": [4, 3, 2], "axes": ["out", "c1", None]},
        },
    }
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_values_match_numpy_and_scipy():
    qs = (0.0, 0.1, 0.25, 0.5, 0.9, 1.0)
    stats = StatFeatures(CNN, quantiles=qs, in_channels=3)
    x = random_features(CNN, 3, 4, gen(1))
    out = stats(x)
    S = 2 + len(qs)
    assert out.shape == (4, stats.num_features) == (4, 4 * 3 * S)
    assert out.dtype == torch.float64
    got = out.reshape(4, len(CNN.params), 3, S).numpy()
    for pi, name in enumerate(CNN.names):
        arr = x[name].reshape(4, 3, -1).numpy()
        for b in range(4):
            for c in range(3):
                v = arr[b, c]
                ref = [np.mean(v), np.var(v), *np.quantile(v, qs)]
                np.testing.assert_allclose(got[b, pi, c], ref, rtol=1e-12, atol=1e-12)
                # independent reference: scipy's describe (unbiased variance) and
                # mquantiles with alphap = betap = 1 (the linear / type-7 rule)
                d = scipy.stats.describe(v)
                n = v.size
                np.testing.assert_allclose(got[b, pi, c, 1] * n / (n - 1), d.variance, rtol=1e-12)
                np.testing.assert_allclose(got[b, pi, c, 0], d.mean, rtol=1e-12)
                mq = scipy.stats.mstats.mquantiles(v, prob=qs, alphap=1, betap=1)
                np.testing.assert_allclose(got[b, pi, c, 2:], mq, rtol=1e-12, atol=1e-12)


def test_layout_param_major_then_channel_then_stat():
    spec = WeightSpaceSpec.from_dict(
        {
            "spaces": {"a": {"size": 2, "role": "input"}},
            "params": {"p": {"shape": [2], "axes": ["a"]}, "q": {"shape": [2], "axes": ["a"]}},
        }
    )
    x = WeightSpaceFeatures(
        {
            "p": torch.tensor([[[0.0, 2.0], [10.0, 10.0]]]),
            "q": torch.tensor([[[-1.0, 1.0], [4.0, 8.0]]]),
        }
    )
    out = StatFeatures(spec, quantiles=(0.5,), in_channels=2)(x)
    expected = torch.tensor([[1, 1, 1, 10, 0, 10, 0, 1, 0, 6, 4, 6]], dtype=torch.float32)
    torch.testing.assert_close(out, expected)
    assert StatFeatures(quantiles=(0.5,)).stat_names == ("mean", "var", "q0.5")


@pytest.mark.parametrize("spec", [MLP, CNN], ids=["mlp", "cnn"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_invariant_under_np_permutations(spec, seed):
    stats = StatFeatures(spec, in_channels=2)
    assert stats.mode == "np"
    err = assert_invariant(stats, spec, mode="np", in_channels=2, batch=3, trials=4, seed=seed)
    assert err < 1e-12


def test_position_sensitive_statistic_would_be_caught():
    # control for the invariance test: the first entry of each param is not invariant
    class FirstEntry(torch.nn.Module):
        def forward(self, feats):
            return torch.cat([v.flatten(2)[..., 0] for v in feats.values()], 1)

    with pytest.raises(AssertionError, match="FirstEntry is not np-invariant"):
        assert_invariant(FirstEntry(), MLP, mode="np")


def test_without_spec_follows_feature_order():
    x = random_features(MLP, 1, 2, gen(3))
    reordered = WeightSpaceFeatures({k: x[k] for k in reversed(list(x))})
    a = StatFeatures()(reordered)
    b = StatFeatures(MLP)(reordered)  # with a spec: the spec's order
    S = 7
    assert a.shape == b.shape == (2, len(MLP.params) * S)
    torch.testing.assert_close(a[:, :S], b[:, -S:])
    torch.testing.assert_close(StatFeatures()(x), b)
    # a plain mapping is accepted too
    torch.testing.assert_close(StatFeatures()(dict(x)), b)


def test_num_features_and_errors():
    stats = StatFeatures(MLP, in_channels=3)
    assert stats.num_features == 6 * 3 * 7
    assert stats.num_features_for(2, 5) == 2 * 5 * 7
    assert StatFeatures(MLP, quantiles=()).num_features == 6 * 2
    with pytest.raises(SpecError, match="needs a spec"):
        StatFeatures().num_features  # noqa: B018
    with pytest.raises(ConfigError, match=r"\[0, 1\], got \[1.5\]"):
        StatFeatures(quantiles=(0.5, 1.5))
    with pytest.raises(ConfigError, match="in_channels"):
        StatFeatures(in_channels=0)
    with pytest.raises(FeatureMismatchError, match="got features with 1 channels"):
        stats(random_features(MLP, 1, 2, gen()))
    x = dict(random_features(MLP, 3, 2, gen()))
    x.pop("l3.bias")
    x["extra"] = torch.zeros(2, 3, 4)
    with pytest.raises(
        FeatureMismatchError, match=r"missing: \['l3.bias'\], unexpected: \['extra'\]"
    ):
        stats(x)


def test_single_entry_param_has_zero_variance_without_warnings():
    x = random_features(MLP, 1, 2, gen(4), dtype=torch.float32)
    out = StatFeatures(MLP)(x).reshape(2, 6, 7)
    assert out.dtype == torch.float32
    last_bias = out[:, 5]  # l3.bias: one entry
    torch.testing.assert_close(last_bias[:, 1], torch.zeros(2))
    for j in (0, 2, 3, 4, 5, 6):
        torch.testing.assert_close(last_bias[:, j], x["l3.bias"][:, 0, 0])


@pytest.mark.parametrize("n", [1, 2, 7, 10])
def test_quantiles_by_sort_matches_torch_quantile(n):
    x = torch.randn(3, 2, n, generator=gen(n), dtype=torch.float64)
    q = torch.tensor([0.0, 0.13, 0.25, 0.5, 0.77, 1.0], dtype=torch.float64)
    torch.testing.assert_close(quantiles_by_sort(x, q), torch.quantile(x, q, dim=-1))


def test_large_parameter_falls_back_to_sorting(monkeypatch):
    x = random_features(CNN, 2, 2, gen(5))
    expected = StatFeatures(CNN, in_channels=2)(x)
    monkeypatch.setattr(stats_mod, "_QUANTILE_MAX_NUMEL", 2)  # every CNN param is longer

    def refuse(*args, **kwargs):
        raise AssertionError("torch.quantile must not be called past the limit")

    monkeypatch.setattr(stats_mod.torch, "quantile", refuse)
    torch.testing.assert_close(StatFeatures(CNN, in_channels=2)(x), expected)


def test_lazy_export():
    assert nfc.StatFeatures is StatFeatures
