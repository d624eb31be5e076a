"""Tests of :mod:`nfncompile.zoo.config`: the zoo specs and their errors."""

from __future__ import annotations

import pytest

from nfncompile.errors import ConfigError
from nfncompile.zoo.config import CNNZooConfig, INRZooConfig, config_from_dict, load_zoo_config
from tests.zoo.helpers import CNN_SPEC, INR_SPEC


def test_specs_parse_full_and_quick():
    full = load_zoo_config(CNN_SPEC)
    assert isinstance(full, CNNZooConfig) and full.num_models >= 1000
    assert 8 <= full.channels <= 16
    quick = load_zoo_config(CNN_SPEC, quick=True)
    assert quick.num_models == 32 and quick.num_shards == 4 and quick.out != full.out
    inr = load_zoo_config(INR_SPEC)
    assert isinstance(inr, INRZooConfig) and inr.num_models == 17970
    assert load_zoo_config(INR_SPEC, quick=True).num_models == 40


@pytest.mark.parametrize(
    "data, match",
    [
        ({"type": "cnn", "num_model": 3}, "num_model: unknown key .*did you mean 'num_models'"),
        ({"type": "cnn", "learning_rate": [0.1, 0.01]}, "learning_rate: expected .*low <= high"),
        ({"type": "cnn", "weight_decay": [0.0, 0.1]}, "weight_decay: expected positive"),
        ({"type": "cnn", "activations": ["relu", "swish"]}, r"activations\[1\]"),
        ({"type": "mlp"}, "type: unknown type 'mlp'; valid types: cnn, inr"),
        ({"type": "inr", "quick": {"steps": 0}}, "steps: .*positive.*quick"),
        ({"type": "inr", "quick": {"type": "cnn"}}, "quick.type"),
        ({"type": "inr", "pixel_range": [1.0, -1.0]}, r"pixel_range: .*low < high"),
        ({"type": "inr", "fits_per_image": 2}, "fits_per_image: unknown key"),
    ],
)
def test_config_errors_name_the_key(data, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict(data, source="z.yaml")
