"""Tests of :mod:`nfncompile.experiments.train.config`: TrainConfig and devices."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from nfncompile.errors import ConfigError
from nfncompile.experiments.train import TrainConfig, resolve_device


def test_config_fields_carry_help_and_min():
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata["help"], f.name
        if f.name != "device":
            assert "min" in f.metadata, f.name
    assert TrainConfig(lr=1).lr == 1.0 and isinstance(TrainConfig(lr=1).lr, float)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"epochs": 0}, "epochs: must be >= 1"),
        ({"batch_size": 2.0}, "batch_size: expected an int"),
        ({"lr": 0.0}, "lr: must be > 0"),
        ({"weight_decay": -1.0}, "weight_decay: must be >= 0"),
        ({"grad_clip": 0}, "grad_clip: must be > 0"),
        ({"patience": 0}, "patience: must be >= 1"),
        ({"val_every": True}, "val_every: expected an int"),
        ({"lr": float("nan")}, "lr: expected a finite number"),
        ({"device": "tpu"}, "unknown device 'tpu'; valid: auto, cpu, cuda"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**kwargs)


def test_resolve_device():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cuda", local_rank=3) == torch.device("cuda", 3)
    assert resolve_device("cpu") == torch.device("cpu")
