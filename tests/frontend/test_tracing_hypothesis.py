"""Random architectures: tracing derives a group that verification confirms."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nfncompile as nfc
from nfncompile.frontend.verification import verify
from nfncompile.spec import is_counter
from tests.frontend.strategies import RandomNet, random_models

SETTINGS = settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)


def _check(model: torch.nn.Module, x: torch.Tensor) -> nfc.WeightSpaceSpec:
    spec, report = nfc.trace_with_report(model, x)  # raises SymmetryError if it does not hold
    assert report.verification.ok
    # an independent check: other seed, every space on its own (with the derived action on
    # the input and output: a grouped conv reading the input repeats the input space, which
    # verify's default, channels x positions, cannot guess)
    again = verify(model, spec, x, seed=1, trials=1, io=report.derivation.io)
    assert again.ok, str(again)
    assert list(spec.names) == [k for k, v in model.state_dict().items() if not is_counter(v)]
    assert nfc.WeightSpaceSpec.from_yaml(spec.to_yaml()) == spec
    roles = [s.role for s in spec.spaces.values()]
    assert roles == sorted(roles, key=["input", "hidden", "output"].index)
    return spec


@SETTINGS
@given(random_models(kinds=("mlp",)))
def test_random_mlps(model_and_input):
    _check(*model_and_input)


@SETTINGS
@given(random_models(kinds=("cnn",), max_depth=3, max_width=5))
def test_random_cnns(model_and_input):
    _check(*model_and_input)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=5), st.integers(1, 4))
def test_plain_mlp_spaces_match_the_layer_widths(widths, in_features):
    # plain Linear + ReLU stacks: exactly one hidden space per hidden layer, of its width
    blocks = [("plain", w, "relu", 1) for w in widths]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = RandomNet("mlp", in_features, 3, blocks)
    spec = _check(model, torch.randn(2, in_features))
    sizes = [(s.size, s.role) for s in spec.spaces.values()]
    assert sizes == [(in_features, "input"), *((w, "hidden") for w in widths), (3, "output")]
