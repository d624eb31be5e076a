"""Tests of ``channel_dim``: which dim of a model's inputs holds the input neurons."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nfncompile as nfc
from nfncompile.errors import ConfigError
from nfncompile.frontend.channel_dims import channel_dim_of
from tests.frontend.helpers import model_, spaces_, x_


class _Tokens(nn.Module):
    """Reads ``(batch, sequence, features)``: a learned positional table, then a token MLP."""

    def __init__(self, length: int = 5, features: int = 4) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(length, features))
        self.a = nn.Linear(features, 6)
        self.b = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x + self.pos)))


class _Conditioned(nn.Module):
    """Two inputs: integer token ids (an embedding) and ``(batch, sequence, features)``."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 4)
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 2)

    def forward(self, ids: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(self.embed(ids) + x)))


def test_default_reads_dim_1_as_the_input_neurons():
    # the convention the option exists for: dim 1 of (batch, sequence, features) is the sequence
    spec = nfc.trace(model_(_Tokens), x_(2, 5, 4))
    assert spaces_(spec)[0] == ("in", 5, "input")
    assert spec["pos"].axes == ("in", None) and spec["a.weight"].axes[1] is None


@pytest.mark.parametrize("channel_dim", [-1, 2])
def test_last_dim_holds_the_features(channel_dim):
    spec = nfc.trace(model_(_Tokens), x_(2, 5, 4), channel_dim=channel_dim)
    assert spaces_(spec) == [("in", 4, "input"), ("a", 6, "hidden"), ("out", 3, "output")]
    assert spec["pos"].axes == (None, "in")  # its rows are positions
    assert spec["a.weight"].axes == ("a", "in")


def test_the_derived_group_holds_on_the_function():
    # every space moves: the model's input along its last dim, the output along its last dim
    model = model_(_Tokens).double()
    spec = nfc.trace(model, x_(2, 5, 4), channel_dim=-1)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 4, generator=gen, dtype=torch.float64)
    for _ in range(3):
        perm = spec.sample_permutation(gen, mode="np")
        moved = model_(_Tokens).double()
        moved.load_state_dict(perm.apply_state_dict(model.state_dict()))
        expected = model(x)[..., perm.perms["out"]]
        torch.testing.assert_close(moved(x[..., perm.perms["in"]]), expected)
    # and the group is not trivial: the input's and hidden spaces were drawn moved
    assert not torch.equal(perm.perms["a"], torch.arange(6))


def test_verify_reads_the_same_dim():
    model = model_(_Tokens)
    spec = nfc.trace(model, x_(2, 5, 4), channel_dim=-1)
    assert nfc.verify(model, spec, x_(2, 5, 4), channel_dim=-1).ok
    # read at dim 1, the input and output permutations land on the sequence: the check fails
    assert not nfc.verify(model, spec, x_(2, 5, 4)).ok


def test_one_entry_per_input_with_none_for_no_neurons():
    ids = torch.randint(0, 7, (2, 5), generator=torch.Generator().manual_seed(0))
    spec = nfc.trace(model_(_Conditioned), (ids, x_(2, 5, 4)), channel_dim=(None, -1))
    assert spaces_(spec)[0] == ("in", 4, "input")
    assert spec["embed.weight"].axes == (None, "in")  # the table's columns add to x's features
    assert spec["a.weight"].axes[1] == "in"
    # an int applies to the integer ids too, where it is ignored (a dim they do not have, too)
    assert nfc.trace(model_(_Conditioned), (ids, x_(2, 5, 4)), channel_dim=-1) == spec
    assert nfc.trace(model_(_Conditioned), (ids, x_(2, 5, 4)), channel_dim=2) == spec


@pytest.mark.parametrize(
    ("channel_dim", "message"),
    [
        (3, "channel_dim=3 does not fit input 'x' of shape (2, 5, 4): give a dim in -3..2"),
        (-4, "channel_dim=-4 does not fit input 'x' of shape (2, 5, 4)"),
        ((1, 2), "channel_dim (1, 2) has 2 entries, but the model has 1 tensor inputs ('x')"),
        ("x", "channel_dim must be an int"),
        (True, "channel_dim must be an int"),
        (1.0, "channel_dim must be an int"),
    ],
)
def test_bad_channel_dims_are_named(channel_dim, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        nfc.trace(model_(_Tokens), x_(2, 5, 4), channel_dim=channel_dim)


def test_too_few_entries_name_the_input():
    ids = torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ConfigError, match=r"has 1 entries, but the model has more tensor inputs"):
        nfc.trace(model_(_Conditioned), (ids, x_(2, 5, 4)), channel_dim=(None,))


def test_channel_dim_of_one_dimensional_and_none():
    assert channel_dim_of(-1, 0, (7,)) == 0 and channel_dim_of(1, 0, (7,)) == 0
    assert channel_dim_of(None, 3, (2, 5)) is None
    assert channel_dim_of((None, -2), 1, (2, 5, 4)) == 1
