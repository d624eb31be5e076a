"""The pointwise modules of nfncompile.nn: NFActivation (activation.py), NFNorm (norm.py),
NFDropout (dropout.py), IOEncoding (encoding.py), and their composition."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nfncompile as nfc
from nfncompile.errors import ConfigError, FeatureMismatchError, SpecError
from nfncompile.features import WeightSpaceFeatures
from nfncompile.nn import IOEncoding, NFActivation, NFDropout, NFNorm
from nfncompile.nn.activations import ACTIVATIONS
from nfncompile.nn.encoding import sinusoidal_encoding
from nfncompile.spec import WeightSpaceSpec
from nfncompile.testing import assert_equivariant, mlp_spec, random_features

MLP = mlp_spec([3, 4, 5, 2])

# conv kernels (fixed axes), a composite axis with an input-space piece (a skip connection
# concatenating the raw input) and a param with a view (flattened spatial positions).
CNN = WeightSpaceSpec.from_dict(
    {
        "spaces": {
            "in": {"size": 2, "role": "input"},
            "c1": {"size": 3, "role": "hidden"},
            "c2": {"size": 3, "role": "hidden"},
            "out": {"size": 4, "role": "output"},
        },
        "params": {
            "conv1.weight": {"shape": [3, 2, 3, 3], "axes": ["c1", "in", None, None]},
            "conv1.bias": {"shape": [3], "axes": ["c1"]},
            "conv2.weight": {"shape": [3, 3, 3, 3], "axes": ["c2", "c1", None, None]},
            "skip.weight": {"shape": [4, 7], "axes": ["out", ["c2", 2, "in"]]},
            "head.weight": {"shape": [4, 6], "view": [4, 3, 2], "axes": ["out", "c2", None]},
        },
    }
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# NFActivation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_by_name_matches_torch(name):
    x = random_features(MLP, 2, 3, gen())
    ref = {
        "relu": torch.relu,
        "gelu": nn.GELU(),
        "tanh": torch.tanh,
        "sigmoid": torch.sigmoid,
        "silu": nn.SiLU(),
        "leaky_relu": nn.LeakyReLU(),
        "elu": nn.ELU(),
        "softplus": nn.Softplus(),
        "hardswish": nn.Hardswish(),
        "relu6": nn.ReLU6(),
        "sin": torch.sin,
    }[name]
    y = NFActivation(name)(x)
    assert isinstance(y, WeightSpaceFeatures)
    assert list(y) == list(x)
    for k in x:
        torch.testing.assert_close(y[k], ref(x[k]))
    assert_equivariant(NFActivation(name), MLP, mode="np", in_channels=2)


def test_activation_callable_module_and_kwargs():
    x = random_features(MLP, 1, 2, gen(1))
    y = NFActivation(torch.sin)(x)
    torch.testing.assert_close(y["l2.weight"], torch.sin(x["l2.weight"]))
    act = NFActivation(nn.Hardtanh(-0.5, 0.5))
    assert isinstance(act.fn, nn.Module) and "fn" in dict(act.named_children())
    torch.testing.assert_close(act(x)["l1.bias"], x["l1.bias"].clamp(-0.5, 0.5))
    leaky = NFActivation("leaky_relu", negative_slope=0.2)
    torch.testing.assert_close(
        leaky(x)["l3.weight"], F.leaky_relu(x["l3.weight"], negative_slope=0.2)
    )
    assert repr(leaky) == "NFActivation('leaky_relu', negative_slope=0.2)"
    assert_equivariant(leaky, CNN, mode="np", in_channels=3)


def test_activation_errors():
    with pytest.raises(
        ConfigError, match=r"'rellu'.*did you mean 'relu'.*valid activations: relu, gelu"
    ):
        NFActivation("rellu")
    with pytest.raises(ConfigError, match="softplus"):
        NFActivation("swish")
    with pytest.raises(ConfigError, match="bad keyword"):
        NFActivation("relu", slope=2.0)
    with pytest.raises(ConfigError, match="only taken with an activation name"):
        NFActivation(torch.sin, slope=2.0)
    with pytest.raises(ConfigError, match="callable"):
        NFActivation(3)
    with pytest.raises(FeatureMismatchError, match="got Tensor"):
        NFActivation()(torch.zeros(2, 3))


def test_activation_accepts_plain_mapping():
    x = dict(random_features(MLP, 1, 2, gen(2)))
    y = NFActivation("relu")(x)
    assert isinstance(y, WeightSpaceFeatures)
    torch.testing.assert_close(y["l1.weight"], x["l1.weight"].relu())


# ---------------------------------------------------------------------------------------------
# NFNorm
# ---------------------------------------------------------------------------------------------


def test_norm_normalises_over_channels_with_affine():
    x = random_features(CNN, 5, 3, gen(3)).map(lambda t: 3 * t + 1)
    norm = NFNorm(5).double()
    with torch.no_grad():
        norm.weight.copy_(torch.randn(5, generator=gen(4), dtype=torch.float64))
        norm.bias.copy_(torch.randn(5, generator=gen(5), dtype=torch.float64))
    y = norm(x)
    for k, t in x.items():
        mean = t.mean(1, keepdim=True)
        var = t.var(1, keepdim=True, correction=0)
        shape = (1, 5) + (1,) * (t.dim() - 2)
        ref = (t - mean) / torch.sqrt(var + 1e-5) * norm.weight.view(shape) + norm.bias.view(shape)
        torch.testing.assert_close(y[k], ref)
    ln = nn.LayerNorm(5).double()
    ln.load_state_dict(norm.state_dict())
    t = x["conv1.weight"]
    torch.testing.assert_close(y["conv1.weight"], ln(t.movedim(1, -1)).movedim(-1, 1))


def test_norm_without_affine_has_unit_statistics():
    norm = NFNorm(8, affine=False)
    assert list(norm.parameters()) == []
    y = norm(random_features(MLP, 8, 2, gen(6)))
    for t in y.values():
        torch.testing.assert_close(t.mean(1), torch.zeros_like(t.mean(1)))
        torch.testing.assert_close(
            t.var(1, correction=0), torch.full_like(t[:, 0], 1.0), atol=1e-4, rtol=0
        )


@pytest.mark.parametrize("mode", ["np", "hnp"])
def test_norm_is_equivariant(mode):
    norm = NFNorm(4)
    with torch.no_grad():
        norm.weight.normal_(generator=gen(7))
        norm.bias.normal_(generator=gen(8))
    assert_equivariant(norm, CNN, mode=mode, in_channels=4)
    assert_equivariant(norm, MLP, mode=mode, in_channels=4)


def test_norm_errors():
    with pytest.raises(FeatureMismatchError, match=r"NFNorm\(4\) got features with 3 channels"):
        NFNorm(4)(random_features(MLP, 3, 1, gen()))
    with pytest.raises(ConfigError, match="positive int"):
        NFNorm(0)
    assert "4, eps=1e-05, affine=True" in repr(NFNorm(4))


# ---------------------------------------------------------------------------------------------
# NFDropout
# ---------------------------------------------------------------------------------------------


def test_dropout_eval_is_identity_and_train_drops():
    x = random_features(MLP, 4, 8, gen(9))
    drop = NFDropout(0.25)
    drop.eval()
    y = drop(x)
    for k in x:
        assert y[k] is x[k]
    drop.train()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        y = drop(x)
    kept = torch.cat([(v != 0).flatten() for v in y.values()]).double().mean().item()
    assert 0.65 < kept < 0.85
    for k in x:
        mask = y[k] != 0
        torch.testing.assert_close(y[k][mask], x[k][mask] / 0.75)
    assert NFDropout(0.0)(x) is x


def test_dropout_errors_and_equivariance():
    for p in (1.0, -0.1, "0.5"):
        with pytest.raises(ConfigError, match=r"\[0, 1\)"):
            NFDropout(p)
    # assert_equivariant runs a copy in eval mode, where dropout is exactly equivariant
    assert_equivariant(NFDropout(0.5), MLP, mode="np")


# ---------------------------------------------------------------------------------------------
# IOEncoding
# ---------------------------------------------------------------------------------------------


def test_sinusoidal_encoding_values():
    enc = sinusoidal_encoding(5, max_freq=6.0, num_freqs=3, dtype=torch.float64)
    x = torch.linspace(-1, 1, 5, dtype=torch.float64)
    freqs = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    ang = torch.pi * x[:, None] * freqs
    torch.testing.assert_close(enc, torch.cat([ang.sin(), ang.cos(), x[:, None]], 1))


def test_io_encoding_values_mlp():
    enc = IOEncoding(MLP, channels=2, max_freq=8, num_freqs=3)
    d = 7
    assert enc.roles == ("input", "output")
    assert enc.out_channels == 2 + 2 * d
    x = random_features(MLP, 2, 3, gen(10))
    y = enc(x)
    pe_in = sinusoidal_encoding(3, 8, 3, dtype=torch.float64)  # (3, d)
    pe_out = sinusoidal_encoding(2, 8, 3, dtype=torch.float64)
    for k in x:
        assert y[k].shape == (3, enc.out_channels, *MLP[k].shape)
        torch.testing.assert_close(y[k][:, :2], x[k])  # incoming channels untouched
    # l1.weight [h1, in]: input block varies along `in`, constant along h1; output block zero
    w1 = y["l1.weight"]
    torch.testing.assert_close(w1[:, 2 : 2 + d], pe_in.T[None, :, None, :].expand(3, d, 4, 3))
    assert torch.count_nonzero(w1[:, 2 + d :]) == 0
    # l3.weight [out, h2] and l3.bias [out]: output block only
    torch.testing.assert_close(
        y["l3.weight"][:, 2 + d :], pe_out.T[None, :, :, None].expand(3, d, 2, 5)
    )
    torch.testing.assert_close(y["l3.bias"][:, 2 + d :], pe_out.T[None].expand(3, d, 2))
    assert torch.count_nonzero(y["l3.weight"][:, 2 : 2 + d]) == 0
    # hidden-only params get all-zero encodings
    for k in ("l1.bias", "l2.weight", "l2.bias"):
        assert torch.count_nonzero(y[k][:, 2:]) == 0


def test_io_encoding_composite_view_and_fixed_axes():
    enc = IOEncoding(CNN, channels=1, num_freqs=2)
    d = 5
    y = enc(random_features(CNN, 1, 2, gen(11)))
    pe_in = sinusoidal_encoding(2, 10.0, 2, dtype=torch.float64)
    pe_out = sinusoidal_encoding(4, 10.0, 2, dtype=torch.float64)
    # conv1.weight [c1, in, k, k]: input block along axis `in`, broadcast over the kernel
    torch.testing.assert_close(
        y["conv1.weight"][:, 1 : 1 + d],
        pe_in.T[None, :, None, :, None, None].expand(2, d, 3, 2, 3, 3),
    )
    # skip.weight [out, (c2 | 2 fixed | in)]: input block only on the last 2 columns
    skip_in = y["skip.weight"][:, 1 : 1 + d]
    assert torch.count_nonzero(skip_in[..., :5]) == 0
    torch.testing.assert_close(skip_in[..., 5:], pe_in.T[None, :, None, :].expand(2, d, 4, 2))
    torch.testing.assert_close(
        y["skip.weight"][:, 1 + d :], pe_out.T[None, :, :, None].expand(2, d, 4, 7)
    )
    # head.weight shape [4, 6] with view [4, 3, 2]: the output encoding follows the first axis
    head = y["head.weight"]
    assert head.shape == (2, 1 + 2 * d, 4, 6)
    torch.testing.assert_close(head[:, 1 + d :], pe_out.T[None, :, :, None].expand(2, d, 4, 6))


def test_io_encoding_two_axes_of_one_role_add_up():
    spec = WeightSpaceSpec.from_dict(
        {
            "spaces": {"in": {"size": 3, "role": "input"}, "h": {"size": 2, "role": "hidden"}},
            "params": {
                "gram": {"shape": [3, 3], "axes": ["in", "in"]},
                "b": {"shape": [2], "axes": ["h"]},
            },
        }
    )
    enc = IOEncoding(spec, channels=1, num_freqs=1)
    assert enc.roles == ("input",) and enc.out_channels == 1 + 3
    pe = sinusoidal_encoding(3, 10.0, 1, dtype=torch.float64).T
    got = enc(random_features(spec, 1, 1, gen()))["gram"][0, 1:]
    torch.testing.assert_close(got, pe[:, :, None] + pe[:, None, :])


def test_io_encoding_of_pieces_inside_blocks_and_spans():
    # an input space read inside blocks (a grouped conv on the raw input: its column i under
    # row r is input neuron block(r) * 2 + i) and through a span (each neuron 2 positions);
    # before, the first failed to broadcast and the second raised a KeyError on the piece
    spec = WeightSpaceSpec.from_dict(
        {
            "blocks": {"g": {"count": 2}},
            "spaces": {
                "in": {"size": 4, "role": "input", "blocks": "g"},
                "h": {"size": 6, "role": "hidden", "blocks": "g"},
            },
            "params": {
                "gconv.weight": {"shape": [6, 2], "axes": ["h", {"space": "in", "block_of": 0}]},
                "mix.weight": {"shape": [6, 9], "axes": ["h", [{"space": "in", "span": 2}, 1]]},
            },
        }
    )
    enc = IOEncoding(spec, channels=1, num_freqs=1)
    pe = sinusoidal_encoding(4, 10.0, 1, dtype=torch.float64).T  # (3, 4)
    y = enc(random_features(spec, 1, 1, gen()))
    rows = torch.arange(6) // 3  # the block each row of h is in
    want = torch.stack([pe[:, rows * 2], pe[:, rows * 2 + 1]], -1)  # (3, 6, 2)
    torch.testing.assert_close(y["gconv.weight"][0, 1:], want)
    spans = torch.cat([pe.repeat_interleave(2, dim=1), torch.zeros(3, 1, dtype=pe.dtype)], 1)
    torch.testing.assert_close(y["mix.weight"][0, 1:], spans[:, None, :].expand(3, 6, 9))
    assert assert_equivariant(enc, spec, in_channels=1) == 0.0  # hnp: the input stays


@pytest.mark.parametrize("spec", [MLP, CNN], ids=["mlp", "cnn"])
def test_io_encoding_is_hnp_but_not_np_equivariant(spec):
    enc = IOEncoding(spec, channels=2, num_freqs=3)
    assert assert_equivariant(enc, spec, in_channels=2) == 0.0  # default mode: enc.mode == "hnp"
    with pytest.raises(
        AssertionError, match=r"not np-equivariant .*permuted spaces: \[.*'(in|out)'"
    ):
        assert_equivariant(enc, spec, mode="np", in_channels=2, trials=5)


def test_io_encoding_errors():
    hidden_only = WeightSpaceSpec.from_dict(
        {
            "spaces": {"h": {"size": 2, "role": "hidden"}},
            "params": {"b": {"shape": [2], "axes": ["h"]}},
        }
    )
    with pytest.raises(SpecError, match=r"no parameter axis .* input- or output-role.*h/hidden"):
        IOEncoding(hidden_only, 1)
    enc = IOEncoding(MLP, channels=2)
    with pytest.raises(FeatureMismatchError, match="got features with 3 channels"):
        enc(random_features(MLP, 3, 1, gen()))
    feats = dict(random_features(MLP, 2, 1, gen()))
    del feats["l2.bias"]
    with pytest.raises(FeatureMismatchError, match=r"missing keys: l2\.bias"):
        enc(feats)
    for bad in ({"channels": 0}, {"channels": 1, "num_freqs": 0}, {"channels": 1, "max_freq": 0}):
        with pytest.raises(ConfigError):
            IOEncoding(MLP, **bad)


# ---------------------------------------------------------------------------------------------
# composition
# ---------------------------------------------------------------------------------------------


def test_sequential_of_pointwise_modules():
    enc = IOEncoding(MLP, channels=1, num_freqs=2)
    net = nn.Sequential(
        enc, NFNorm(enc.out_channels), NFActivation("gelu"), NFDropout(0.1), NFActivation("tanh")
    )
    x = random_features(MLP, 1, 2, gen(12))
    y = net.double().eval()(x)
    assert isinstance(y, WeightSpaceFeatures)
    assert list(y) == list(MLP.names) and y.channels == enc.out_channels
    assert_equivariant(net, MLP)  # "hnp", from IOEncoding.mode
    with pytest.raises(AssertionError, match="Sequential is not np-equivariant"):
        assert_equivariant(net, MLP, mode="np")


def test_lazy_exports():
    assert nfc.NFActivation is NFActivation
    assert nfc.NFNorm is NFNorm
    assert nfc.NFDropout is NFDropout
    assert nfc.IOEncoding is IOEncoding
