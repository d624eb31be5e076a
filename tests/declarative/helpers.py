"""Shared by the tests of nfncompile.declarative: example spec files and small spec builders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nfncompile.declarative.builder import build
from nfncompile.errors import ConfigError
from nfncompile.features import WeightSpaceFeatures
from nfncompile.spec import WeightSpaceSpec
from nfncompile.testing import mlp_spec, random_features

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "specs"
EXAMPLES = sorted((SPECS / "nfn").glob("*.yaml"))

MLP_SPEC = mlp_spec([2, 3, 3, 2])


def feats(spec: WeightSpaceSpec, channels: int = 1, batch: int = 3) -> WeightSpaceFeatures:
    g = torch.Generator().manual_seed(0)
    return random_features(spec, channels, batch, generator=g, dtype=torch.float32)


def nfn(*layers: dict, mode: str = "hnp", **extra: object) -> dict:
    return {"nfn": {"mode": mode, "layers": list(layers), **extra}}


def error(data: object, **kw: object) -> str:
    with pytest.raises(ConfigError) as info:
        build(data, **kw)
    return str(info.value)


LIN = {"type": "nf_linear", "channels": 4}
POOL = {"type": "nf_pool"}
HEAD = {"type": "mlp", "hidden": [8], "out_features": 3}
