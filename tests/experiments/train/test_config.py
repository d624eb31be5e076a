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
        if f.name not in ("device", "schedule"):  # strings
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
    assert resolve_device("cpu") == torch.device("cpu")


def test_cuda_is_resolved_per_rank(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert resolve_device("cuda", local_rank=3) == torch.device("cuda", 3)
    assert resolve_device("cuda:2") == torch.device("cuda", 2)


@pytest.mark.parametrize(
    ("build", "count", "device", "message"),
    [
        (None, 0, "cuda", "is a CPU-only build; use cpu or auto"),
        ("12.4", 0, "cuda", "no CUDA device is visible"),
        ("12.4", 2, "cuda:2", r"only 2 CUDA device\(s\) are visible \(cuda:0..cuda:1\)"),
    ],
)
def test_a_cuda_device_this_machine_cannot_use(monkeypatch, build, count, device, message):
    monkeypatch.setattr(torch.version, "cuda", build)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    with pytest.raises(ConfigError, match=message):
        resolve_device(device)
    with pytest.raises(ConfigError, match=message):
        TrainConfig(device=device)
