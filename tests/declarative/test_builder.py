"""Tests of nfncompile.declarative.builder: load/build from paths, mappings and ModelConfigs."""

from __future__ import annotations

import pytest
import torch

import nfncompile as nfc
from nfncompile.declarative.builder import build, load
from nfncompile.declarative.config import ModelConfig, NFLinearLayer
from nfncompile.errors import ConfigError
from nfncompile.features import WeightSpaceFeatures
from tests.declarative.helpers import EXAMPLES, HEAD, LIN, MLP_SPEC, POOL, nfn


def test_build_accepts_a_model_config_and_is_exported():
    cfg = load(nfn(LIN, POOL, HEAD))
    assert isinstance(cfg.nfn.layers[0], NFLinearLayer)
    net = nfc.build(cfg, spec=MLP_SPEC)
    assert net.config is cfg
    with pytest.raises(ConfigError, match="expect a YAML path, a mapping or a ModelConfig"):
        build(3)


def _zoo(cfg: ModelConfig, n: int) -> list[dict]:
    from nfncompile.architectures.catalogue import CATALOGUE

    ws = cfg.body.weight_space
    models = []
    for seed in range(n):
        torch.manual_seed(seed)
        models.append(CATALOGUE[ws.model].factory(**ws.kwargs).state_dict())
    return models


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_build_every_example_and_run_forward(path):
    cfg = load(path)
    torch.manual_seed(0)
    net = build(path)
    assert net.config == cfg
    x = WeightSpaceFeatures.from_state_dicts(net.spec, _zoo(cfg, 3))
    with torch.no_grad():
        y = net.eval()(x)
    if net.output == "invariant":
        assert y.shape == (3, net.out_features)
    else:
        assert isinstance(y, WeightSpaceFeatures) and y.channels == net.out_channels
        assert {k: v.shape[2:] for k, v in y.items()} == {k: v.shape[2:] for k, v in x.items()}
    assert torch.isfinite(y if isinstance(y, torch.Tensor) else y.flatten()).all()


def test_nf_linear_basis_and_width_reach_the_layer():
    cfg = load(nfn({"type": "nf_linear", "channels": 4, "basis": "linear", "width": 8}, POOL, HEAD))
    net = nfc.build(cfg, spec=MLP_SPEC)
    layer = next(m for m in net.modules() if isinstance(m, nfc.NFLinear))
    assert (layer.basis, layer.width) == ("linear", 8)
    auto = nfc.build(load(nfn(LIN, POOL, HEAD)), spec=MLP_SPEC)
    assert next(m for m in auto.modules() if isinstance(m, nfc.NFLinear)).basis == "complete"
    with pytest.raises(ConfigError, match=r"basis: expected one of"):
        load(nfn({"type": "nf_linear", "channels": 4, "basis": "full"}, POOL, HEAD))
