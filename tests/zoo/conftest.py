"""The quick zoos of ``specs/zoos`` (32 CNNs in 4 shards, 40 SIRENs in 4 shards), generated once
per session and copied where a test damages them."""

from __future__ import annotations

from pathlib import Path

import pytest

from nfncompile.zoo import CNNZooConfig, INRZooConfig, generate_zoo, load_zoo_config
from tests.zoo.helpers import CNN_SPEC, INR_SPEC


@pytest.fixture(scope="session")
def cnn_config() -> CNNZooConfig:
    return load_zoo_config(CNN_SPEC, quick=True)


@pytest.fixture(scope="session")
def inr_config() -> INRZooConfig:
    return load_zoo_config(INR_SPEC, quick=True)


@pytest.fixture(scope="session")
def cnn_dir(tmp_path_factory, cnn_config) -> Path:
    out = tmp_path_factory.mktemp("zoo") / "cnn"
    report = generate_zoo(cnn_config, out, progress=False, spec=str(CNN_SPEC), quick=True)
    assert report.complete and report.made == (0, 1, 2, 3)
    return out


@pytest.fixture(scope="session")
def inr_dir(tmp_path_factory, inr_config) -> Path:
    out = tmp_path_factory.mktemp("zoo") / "inr"
    assert generate_zoo(inr_config, out, progress=False).complete
    return out
