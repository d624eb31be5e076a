"""Tests of nfncompile.nn.fourier: Fourier and threshold features of weight values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nfncompile.errors import ConfigError, FeatureMismatchError
from nfncompile.features import WeightSpaceFeatures
from nfncompile.nn import FourierFeatures, NFLinear, NFPool, ThresholdFeatures
from nfncompile.testing import assert_equivariant, assert_invariant, random_features
from tests.nn.test_pointwise import CNN, MLP

# the same specs as the pointwise modules' tests: conv kernels (fixed axes), a composite axis
# and a parameter with a view
ENCODINGS = {
    "sinusoidal": lambda c: FourierFeatures(c, num_freqs=3, min_freq=0.5, max_freq=16.0),
    "gaussian": lambda c: FourierFeatures(c, num_freqs=4, kind="gaussian", scale=1.0, seed=3),
    "threshold": lambda c: ThresholdFeatures(c, num_thresholds=5, low=-2.0, high=2.0),
    "sinusoidal_only": lambda c: FourierFeatures(c, num_freqs=2, keep_input=False),
}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("mode", ["np", "hnp"])
@pytest.mark.parametrize("spec", [MLP, CNN], ids=["mlp", "cnn"])
@pytest.mark.parametrize("kind", sorted(ENCODINGS))
def test_encodings_are_equivariant_in_both_modes(kind, spec, mode):
    enc = ENCODINGS[kind](2)
    err = assert_equivariant(enc, spec, mode=mode, in_channels=2, seed=11)
    assert err < 1e-12


@pytest.mark.parametrize("mode", ["np", "hnp"])
def test_encoding_then_nf_layers_then_pool_is_invariant(mode):
    thresholds = ThresholdFeatures(1, num_thresholds=4)
    fourier = FourierFeatures(thresholds.out_channels, num_freqs=2)
    torch.manual_seed(0)
    model = nn.Sequential(
        thresholds,
        fourier,
        NFLinear(CNN, fourier.out_channels, 3, mode=mode),
        NFPool(CNN, mode=mode, in_channels=3),
    )
    assert_invariant(model, CNN, mode=mode, seed=5)


def test_sinusoidal_channels_are_sines_then_cosines_of_each_frequency():
    x = random_features(MLP, 2, batch=3, generator=gen(1))
    enc = FourierFeatures(2, num_freqs=3, min_freq=0.25, max_freq=4.0)
    assert torch.allclose(enc.frequencies, torch.tensor([0.25, 1.0, 4.0]))
    name = MLP.names[0]
    w, y = x[name], enc(x)[name]
    assert y.shape[1] == enc.out_channels == 2 + 2 * 2 * 3
    torch.testing.assert_close(y[:, :2], w)
    # sines: channel c, frequency k at 2 + c * 3 + k; cosines 6 channels later
    for c in range(2):
        for k, f in enumerate(enc.frequencies.double()):
            torch.testing.assert_close(y[:, 2 + c * 3 + k], torch.sin(f * w[:, c]))
            torch.testing.assert_close(y[:, 8 + c * 3 + k], torch.cos(f * w[:, c]))


def test_gaussian_matches_the_reference_transform_on_its_projection():
    enc = FourierFeatures(2, num_freqs=5, kind="gaussian", scale=2.0, seed=7, keep_input=False)
    again = FourierFeatures(2, num_freqs=5, kind="gaussian", scale=2.0, seed=7)
    torch.testing.assert_close(enc.projection, again.projection)  # seeded
    assert enc.projection.shape == (2, 5)
    x = torch.randn(4, 2, 3, 5, generator=gen(2))
    z = 2 * math.pi * torch.einsum("bcij,ck->bkij", x, enc.projection)
    y = enc({"w": x})["w"]
    torch.testing.assert_close(y, torch.cat([z.sin(), z.cos()], dim=1))
    assert "projection" in enc.state_dict()


def test_threshold_features_average_to_the_fraction_above_each_threshold():
    # with a tiny width the soft indicators are hard: their mean is an empirical survival fn
    x = torch.linspace(-1.95, 1.95, 40).view(1, 1, 40)
    enc = ThresholdFeatures(1, num_thresholds=5, low=-1.0, high=1.0, width=1e-4)
    frac = enc({"w": x})["w"][0, 1:].mean(-1)
    expected = torch.tensor([(x > t).float().mean() for t in [-1.0, -0.5, 0.0, 0.5, 1.0]])
    torch.testing.assert_close(frac, expected)


def test_float64_in_float64_out():
    x = {"w": torch.randn(2, 1, 3, dtype=torch.float64, generator=gen(3))}
    for make in ENCODINGS.values():
        assert make(1)(x)["w"].dtype == torch.float64


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: FourierFeatures(1, kind="laplace"), "unknown kind 'laplace'; valid: sinusoidal"),
        (lambda: FourierFeatures(0), "in_channels must be a positive int"),
        (lambda: FourierFeatures(1, num_freqs=0), "num_freqs must be a positive int"),
        (lambda: FourierFeatures(1, min_freq=4.0, max_freq=2.0), "must not exceed max_freq"),
        (lambda: FourierFeatures(1, min_freq=0.0), "min_freq must be a positive number"),
        (lambda: FourierFeatures(1, kind="gaussian", scale=-1.0), "scale must be a positive"),
        (lambda: ThresholdFeatures(1, width=0.0), "width must be a positive number"),
        (lambda: ThresholdFeatures(1, low=1.0, high=0.0), "low (1.0) must not exceed high"),
        (lambda: ThresholdFeatures(1, num_thresholds=True), "num_thresholds must be a positive"),
    ],
)
def test_bad_arguments_raise_config_error_naming_them(make, message):
    with pytest.raises(ConfigError) as e:
        make()
    assert message in str(e.value)


def test_wrong_channel_count_names_the_parameter():
    enc = FourierFeatures(2)
    with pytest.raises(FeatureMismatchError, match=r"parameter 'w' has shape \(1, 3, 4\)"):
        enc({"w": torch.zeros(1, 3, 4)})
    with pytest.raises(FeatureMismatchError, match="expects WeightSpaceFeatures"):
        enc(torch.zeros(1, 2, 4))


def test_output_is_weight_space_features_with_the_same_names():
    x = random_features(CNN, 1, batch=2, generator=gen(4))
    out = ThresholdFeatures(1, num_thresholds=3)(x)
    assert isinstance(out, WeightSpaceFeatures)
    assert list(out) == list(x)
    assert out.channels == 4
