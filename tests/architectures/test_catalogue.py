"""Tests of the architecture catalogue: every entry builds, runs, traces, and is seeded."""

from __future__ import annotations

import math

import pytest
import torch
import torch.fx
from torch import nn

from nfncompile.architectures import catalogue as A
from nfncompile.errors import ConfigError
from nfncompile.nn.activations import ACTIVATIONS

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

    gm = torch.fx.symbolic_trace(model)
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


def _count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize("depth", [8, 20, 56])
def test_resnet_conv_count(depth):
    n = (depth - 2) // 6
    model = A.resnet_cifar(depth, width=4)
    # stem + 2 per block + 2 downsample shortcuts (stage 2 and 3 change shape)
    assert _count(model, nn.Conv2d) == 1 + 6 * n + 2
    assert _count(model, nn.Linear) == 1
    # depth counts the stem conv, 2 convs per block and the linear layer
    assert _count(model, nn.Conv2d) - 2 + _count(model, nn.Linear) == depth
    assert _count(model, A.BasicBlock) == 3 * n


def test_resnet56_runs():
    torch.manual_seed(0)
    model = A.resnet_cifar(56, width=4)
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize("depth", [0, 7, 21, 22, 19.0, "20"])
def test_resnet_bad_depth(depth):
    with pytest.raises(ConfigError, match=r"depth must be 6n \+ 2"):
        A.resnet_cifar(depth)


def test_resnet_downsample_only_when_shape_changes():
    model = A.resnet_cifar(14, width=4)
    with_ds = [n for n, m in model.named_modules() if isinstance(m, A.BasicBlock) and m.downsample]
    assert with_ds == ["layer2.0", "layer3.0"]


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_mlp_activations(name):
    torch.manual_seed(0)
    model = A.mlp(3, (4,), 2, activation=name)
    assert model(torch.randn(5, 3)).shape == (5, 2)
    torch.fx.symbolic_trace(model)


def test_unknown_activation():
    with pytest.raises(ConfigError, match="valid activations: relu, gelu"):
        A.mlp(activation="swishy")
    with pytest.raises(ConfigError, match="unknown activation"):
        A.small_cnn(activation="nope")


def test_siren_init_and_forward():
    torch.manual_seed(0)
    w0 = 30.0
    model = A.siren(2, (64, 64), 1, w0=w0)
    first, second = model.hidden
    assert first.weight.abs().max() <= 1 / 2
    bound = math.sqrt(6 / 64) / w0
    assert second.weight.abs().max() <= bound
    assert model.out.weight.abs().max() <= bound
    # the spread is close to uniform on the bound (not, e.g., PyTorch's default init)
    assert second.weight.abs().max() > 0.9 * bound
    x = torch.randn(7, 2)
    expected = model.out(torch.sin(w0 * second(torch.sin(w0 * first(x)))))
    torch.testing.assert_close(model(x), expected)


def test_siren_needs_hidden_layer():
    with pytest.raises(ConfigError, match="at least one hidden"):
        A.siren(hidden=())


def test_lenet_flattens_spatial_positions():
    model = A.lenet(in_channels=3, image_size=16, channels=(4, 8))
    assert model.fc1.in_features == 8 * 4 * 4
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 10)
    with pytest.raises(ConfigError, match="divisible"):
        A.lenet(image_size=10)


def test_small_cnn_structure():
    model = A.small_cnn(channels=5)
    for conv in (model.conv1, model.conv2, model.conv3):
        assert conv.kernel_size == (3, 3) and conv.stride == (2, 2) and conv.out_channels == 5
    assert model.fc.in_features == 5


def test_densenet_concatenates():
    model = A.densenet_block(in_channels=6, growth=3, layers=4)
    assert [layer.conv.in_channels for layer in model.block] == [6, 9, 12, 15]
    assert model.transition.in_channels == 18
    graph = torch.fx.symbolic_trace(model).graph
    assert sum(n.target is torch.cat for n in graph.nodes) == 4


def test_mobilenetv2_block_structure():
    model = A.mobilenetv2_block(in_channels=4, expand=3)
    assert model.block.depthwise.groups == 12 and model.block.use_residual
    x = torch.randn(2, 3, 8, 8)
    assert model(x).shape == (2, 10)
    strided = A.mobilenetv2_block(in_channels=4, stride=2)
    assert not strided.block.use_residual and strided(x).shape == (2, 10)
    assert not A.mobilenetv2_block(in_channels=4, out_channels=6).block.use_residual
    with pytest.raises(ConfigError, match="stride"):
        A.mobilenetv2_block(stride=3)


def test_se_gate_scales_channels():
    torch.manual_seed(0)
    se = A.SqueezeExcite(8, 4)
    x = torch.randn(2, 8, 3, 3)
    gate = torch.sigmoid(se.up(torch.relu(se.down(x.mean((2, 3))))))
    torch.testing.assert_close(se(x), x * gate[:, :, None, None])
    with pytest.raises(ConfigError, match="must divide"):
        A.se_block(channels=6, reduction=4)


def test_unet_16x16_and_skips():
    model = A.unet(in_channels=2, base=4, out_channels=3)
    assert model(torch.zeros(1, 2, 16, 16)).shape == (1, 3, 16, 16)
    assert _count(model, nn.ConvTranspose2d) == 2
    assert model.dec2.conv1.in_channels == 16 and model.dec1.conv1.in_channels == 8


def test_vgg_cfg():
    model = A.vgg(in_channels=1, cfg=(4, 4, "M", 8, "M", 8), image_size=8)
    assert _count(model, nn.Conv2d) == 4 and _count(model, nn.MaxPool2d) == 2
    assert model.classifier.fc1.in_features == 8 * 2 * 2
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ConfigError, match="cfg\\[1\\]"):
        A.vgg(cfg=(4, "X"))
    with pytest.raises(ConfigError, match="cannot max-pool"):
        A.vgg(cfg=(4, "M", "M", "M", "M"), image_size=8)


@pytest.mark.parametrize(
    ("factory", "kwargs"),
    [
        (A.mlp, {"in_features": 0}),
        (A.mlp, {"hidden": (4, -1)}),
        (A.small_cnn, {"channels": True}),
        (A.unet, {"base": 2.5}),
        (A.densenet_block, {"growth": 0}),
    ],
)
def test_bad_sizes(factory, kwargs):
    with pytest.raises(ConfigError, match="must be a positive int"):
        factory(**kwargs)


def test_architecture_is_frozen():
    arch = A.get("mlp")
    with pytest.raises(AttributeError):
        arch.name = "other"
