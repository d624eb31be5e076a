"""Reordered axes (``ParamSpec.order``): a layer that reads two spaces interleaved position by
position after a channel shuffle, its stored positions a fixed reordering of its labels'."""

from __future__ import annotations

import pytest
import torch

import nfncompile as nfc
from nfncompile.errors import SpecError
from nfncompile.nn import IOEncoding
from nfncompile.nn.encoding import sinusoidal_encoding
from nfncompile.nn.reorder import Reorders
from nfncompile.testing import random_features

SHUFFLED = """\
spaces:
  in:  {size: 2, role: input}
  a:   {size: 2, role: hidden}
  b:   {size: 3, role: hidden}
  out: {size: 2, role: output}
params:
  l.weight:    {shape: [2, 2], axes: [a, in]}
  r.weight:    {shape: [3, 2], axes: [b, in]}
  head.weight: {shape: [2, 5, 3], axes: [out, [a, b], null], order: {1: [0, 2, 1, 3, 4]}}
"""


def spec() -> nfc.WeightSpaceSpec:
    return nfc.WeightSpaceSpec.from_yaml(SHUFFLED)


def test_round_trip_and_repr():
    s = spec()
    assert s.to_yaml() == SHUFFLED and nfc.WeightSpaceSpec.from_yaml(s.to_yaml()) == s
    assert s["head.weight"].order == ((1, (0, 2, 1, 3, 4)),) and s.ordered
    assert "order={1: (0, 2, 1, 3, 4)}" in repr(s["head.weight"])
    # an order that keeps every position is no order
    same = nfc.ParamSpec("w", (2, 3), ("out", ("a", 1)), order={1: [0, 1, 2]})
    assert same.order == () and same == nfc.ParamSpec("w", (2, 3), ("out", ("a", 1)))


def test_labelled_layout_is_the_stored_one_reordered():
    p = spec()["head.weight"]
    x = torch.arange(2 * 5 * 3).reshape(1, 2, 5, 3)
    lab = p.to_labelled(x, 1)
    # stored column k holds labelled position order[k]: stored a0 b0 a1 b1 b2, labelled
    # a0 a1 b0 b1 b2
    assert lab[0, 0, :, 0].tolist() == [0, 6, 3, 9, 12]
    assert torch.equal(p.from_labelled(lab, 1), x)
    reorders = Reorders(spec())
    y = torch.arange(2 * 5 * 3.0).reshape(1, 1, 2, 5, 3).requires_grad_()
    there = reorders.to_labels("head.weight", y)
    assert torch.equal(there.reshape(1, 1, 2, 5, 3), p.to_labelled(y.detach(), 2))
    assert torch.equal(reorders.to_stored("head.weight", there), y)
    # the gradient of a reordering is the inverse reordering
    there.backward(torch.arange(30.0).reshape(1, 1, 2, 5, 3))
    assert torch.equal(y.grad, p.from_labelled(torch.arange(30.0).reshape(1, 1, 2, 5, 3), 2))


def test_a_permutation_moves_each_stored_position_with_its_neuron():
    s = spec()
    perm = nfc.Permutation(s, {"a": torch.tensor([1, 0]), "b": torch.tensor([2, 0, 1])})
    w = torch.randn(2, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    got = perm.apply_tensor("head.weight", w)
    # stored positions 0, 2 are a0, a1; 1, 3, 4 are b0, b1, b2 (order [0, 2, 1, 3, 4])
    a_at, b_at = [0, 2], [1, 3, 4]
    for j, src in enumerate([1, 0]):  # new a_j is old a_{perm[j]}
        torch.testing.assert_close(got[:, a_at[j]], w[:, a_at[src]])
    for j, src in enumerate([2, 0, 1]):
        torch.testing.assert_close(got[:, b_at[j]], w[:, b_at[src]])


@pytest.mark.parametrize(
    ("order", "message"),
    [
        ("{1: [0, 2, 2, 1, 3]}", "order of axis 1 must be a permutation of 0..4"),
        ("{3: [0, 1]}", "order names axis 3, but it has 3 labelled axes"),
        ("[0, 2, 1, 3, 4]", "params.head.weight.order: expected a mapping axis index"),
        ("{1: 3}", "params.head.weight.order: expected a mapping axis index"),
        ("{x: [0, 1]}", "params.head.weight.order: expected a mapping axis index"),
    ],
)
def test_malformed_orders_are_named(order, message):
    with pytest.raises(SpecError, match=message.replace("[", r"\[").replace(".", r"\.")):
        nfc.WeightSpaceSpec.from_yaml(SHUFFLED.replace("{1: [0, 2, 1, 3, 4]}", order))


def test_io_encoding_follows_the_stored_order():
    enc = IOEncoding(spec(), channels=1, num_freqs=1)
    y = enc(random_features(spec(), 1, 1, torch.Generator().manual_seed(3)))["head.weight"]
    pe_out = sinusoidal_encoding(2, 10.0, 1, dtype=torch.float64).T  # (3, 2)
    torch.testing.assert_close(y[0, 4:], pe_out[:, :, None, None].expand(3, 2, 5, 3))
    # no input space on the reordered axis: its input encoding is zero everywhere
    assert torch.count_nonzero(y[0, 1:4]) == 0


def test_layers_are_equivariant_on_a_reordered_spec():
    s = spec()
    gen = torch.Generator().manual_seed(4)
    for basis in ("complete", "linear"):
        layer = nfc.NFLinear(s, 2, 3, basis=basis).double()
        x = random_features(s, 2, 2, gen)
        perm = s.sample_permutation(gen)
        torch.testing.assert_close(layer(perm.apply(x)), perm.apply(layer(x)))
