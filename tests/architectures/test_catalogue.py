"""Tests of the architecture catalogue: every entry builds, runs, traces, and is seeded."""

from __future__ import annotations

import pytest
import torch
import torch.fx
from torch import nn

from nfncompile import architectures as A
from nfncompile.errors import ConfigError
from nfncompile.frontend.fx import LeafFallbackTracer

# Expected output shape of each catalogue entry on its example input.
EXPECTED_OUT = {
    "mlp": (2, 10),
    "siren": (2, 1),
    "lenet": (2, 10),
    "small_cnn": (2, 10),
    "resnet8": (2, 10),
    "resnet20": (2, 10),
    "densenet_block": (2, 10),
    "mobilenetv2_block": (2, 10),
    "se_block": (2, 10),
    "unet": (2, 1, 8, 8),
    "vgg": (2, 10),
    "efficientnet_block": (2, 10),
    "tf_efficientnet": (2, 10),
    "resnext_block": (2, 10),
    "regnet_x": (2, 10),
    "convnext_block": (2, 10),
    "sk_block": (2, 10),
    "std_conv_block": (2, 10),
    "blurpool_cnn": (2, 10),
    "s2d_stem": (2, 10),
    "vit": (2, 10),
    "resnet18": (2, 10),
    "resnet50": (2, 10),
    "mobilenetv2": (2, 10),
    "densenet121": (2, 10),
    "shufflenetv2": (2, 10),
}


def test_expected_covers_catalogue():
    assert set(EXPECTED_OUT) == set(A.CATALOGUE) == set(A.names())


@pytest.mark.parametrize("name", list(A.CATALOGUE))
def test_entry_builds_runs_and_traces(name):
    arch = A.get(name)
    assert arch.name == name and arch.description
    torch.manual_seed(0)
    model = arch.factory()
    assert isinstance(model, nn.Module)
    x = arch.example_input(torch.Generator().manual_seed(1))
    assert tuple(x.shape) == arch.input_shape
    y = model(x)
    assert tuple(y.shape) == EXPECTED_OUT[name]
    assert torch.isfinite(y).all()

    # the front end's tracer: tf_efficientnet's same-padding convs are kept as one call each
    model.eval()  # stochastic depth is random in training
    gm = torch.fx.GraphModule(model, LeafFallbackTracer().trace(model))
    torch.testing.assert_close(gm(x), model(x))


@pytest.mark.parametrize("name", list(A.CATALOGUE))
def test_entry_deterministic_under_seed(name):
    arch = A.get(name)
    torch.manual_seed(3)
    sd1 = arch.factory().state_dict()
    torch.manual_seed(3)
    sd2 = arch.factory().state_dict()
    torch.manual_seed(4)
    sd3 = arch.factory().state_dict()
    assert list(sd1) == list(sd2)
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert any(not torch.equal(sd1[k], sd3[k]) for k in sd1 if sd1[k].is_floating_point())


def test_get_unknown_lists_valid_names():
    with pytest.raises(ConfigError, match=r"did you mean 'small_cnn'.*valid names: mlp, siren"):
        A.get("small_cnnn")
    with pytest.raises(ConfigError, match="unknown architecture"):
        A.get(["not", "hashable"])


def test_readable_state_dict_keys():
    assert list(A.small_cnn().state_dict()) == [
        f"{m}.{p}" for m in ("conv1", "conv2", "conv3", "fc") for p in ("weight", "bias")
    ]
    assert list(A.mlp(4, (5, 6), 3).state_dict()) == [
        f"fc{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")
    ]
    keys = A.resnet20().state_dict()
    assert "layer2.0.downsample.0.weight" in keys and "fc.weight" in keys


def test_unknown_activation():
    with pytest.raises(ConfigError, match="valid activations: relu, gelu"):
        A.mlp(activation="swishy")
    with pytest.raises(ConfigError, match="unknown activation"):
        A.small_cnn(activation="nope")


def test_architecture_is_frozen():
    arch = A.get("mlp")
    with pytest.raises(AttributeError):
        arch.name = "other"
