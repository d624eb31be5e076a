"""nfncompile.frontend.stacked: a parameter with an axis per member, expert or head.

Every case is checked against the real network (the report's verification draws random
elements of the derived group, float64), and the larger groups once more by hand: members'
units moved member by member leave the function as it is, and undoing one member's move in
one layer only changes it. Where the members are read across (their units summed, their
outputs kept apart), the reading falls back to one permutation for every member's units, as
before; where each member reads its own data, the members are blocks that stay in place.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import nfncompile as nfc
from nfncompile.frontend.tracing import trace_with_report
from nfncompile.spec import Inner, Permutation
from nfncompile.testing import assert_equivariant
from tests.frontend.helpers import model_, x_


class _Stacked(nn.Module):
    """One layer of ``members`` linear maps: ``x @ weight + bias``, weight ``(members, in,
    out)`` (EDAC's and SAC-N's ``VectorizedLinear``)."""

    def __init__(self, i: int, o: int, members: int, how: str = "matmul") -> None:
        super().__init__()
        self.how = how
        self.weight = nn.Parameter(torch.randn(members, i, o) / math.sqrt(i))
        self.bias = nn.Parameter(torch.randn(members, 1, o) / 4)

    def forward(self, x):
        if self.how == "baddbmm":  # REDQ's
            return torch.baddbmm(self.bias, x, self.weight)
        if self.how == "einsum":
            return self.bias + torch.einsum("ebi,eio->ebo", x, self.weight)
        return x @ self.weight + self.bias


class _Critic(nn.Module):
    """An ensemble of 3 critics ``5 -> 8 -> 8 -> 1`` with stacked weights (each layer's
    product ``how``: ``matmul``, ``baddbmm``, ``einsum``); the input repeated or expanded for
    every member; ``reduce`` their outputs (``"mean"``, ``"min"``) or keep them apart
    (``"none"``), or ``"mixed"``: the first layer's units averaged over the members, then one
    shared head."""

    def __init__(self, reduce: str = "mean", members: int = 3, how: str = "matmul") -> None:
        super().__init__()
        self.reduce, self.members, self.how = reduce, members, how
        self.net = nn.Sequential(
            _Stacked(5, 8, members, how), nn.ReLU(), _Stacked(8, 8, members, how), nn.ReLU(),
            _Stacked(8, 1, members, how),
        )  # fmt: skip
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        if self.how == "matmul":
            x = x.unsqueeze(0).repeat_interleave(self.members, dim=0)
        else:  # the input expanded for every member
            x = x.expand(self.members, -1, -1)
        if self.reduce == "mixed":
            return self.head(self.net[1](self.net[0](x)).mean(0))
        y = self.net(x).squeeze(-1)
        if self.reduce == "mean":
            return y.mean(0)
        return y.min(0).values if self.reduce == "min" else y


def _one_member(spec, space: str, member: int = 0):
    """The element that moves only ``member``'s units of block space ``space`` (rolled by
    one), every other member's and every other space's in place: one that no single
    permutation for every member's units makes."""
    count, k = spec.block_shape(space)
    perm = torch.arange(count * k)
    perm[member * k : (member + 1) * k] = perm[member * k : (member + 1) * k].roll(1)
    return Permutation(spec, {space: perm})


def _traced(factory, *shape: int) -> tuple:
    """``(model, x, spec)``: ``factory()``'s model in float64 on a seeded input of ``shape``,
    traced with its features last; the report's verification holds and nothing broke."""
    model, x = model_(factory).double(), x_(*shape).double()
    spec, report = trace_with_report(model, x, channel_dim=-1)
    assert report.verification.ok and not report.broken
    return model, x, spec


def _moves_one_member(model, x, spec, space: str, member: int, reader: str) -> None:
    """Moving only ``member``'s units of ``space`` leaves the function as it is; leaving
    ``reader`` (a weight that reads them) unmoved then changes it."""
    moved = _one_member(spec, space, member).apply_state_dict(model.state_dict())
    torch.testing.assert_close(torch.func.functional_call(model, moved, (x,)), model(x))
    moved[reader] = model.state_dict()[reader]
    assert (torch.func.functional_call(model, moved, (x,)) - model(x)).abs().max() > 1e-3


@pytest.mark.parametrize(
    "reduce, how", [("mean", "matmul"), ("min", "matmul"), ("mean", "baddbmm"), ("mean", "einsum")]
)
def test_an_ensembles_stacked_weights_give_each_member_its_own_units(reduce, how):
    # before: the members' axis a space, their units one permutation for every member (with
    # baddbmm and einsum the expanded input fixed the members too)
    model, x, spec = _traced(lambda: _Critic(reduce, how=how), 4, 5)
    h0, h2, heads = Inner("net.0", 0), Inner("net.2", 0), "net.0.head"
    assert spec["net.0.weight"].axes == (heads, "in", h0)
    assert spec["net.0.bias"].axes == (heads, None, h0)
    assert spec["net.2.weight"].axes == (heads, h0, h2)
    assert spec["net.4.weight"].axes == (heads, h2, None)
    assert spec.block_shape("net.0") == spec.block_shape("net.2") == (3, 8)
    assert spec.spaces["net.0.head"].blocks == spec.spaces["net.0"].blocks
    # the next layer's rows left in place: that member reads its units unmoved (under a
    # min, a member that is the least for some input)
    member = int(model.net(x.expand(3, -1, -1)).squeeze(-1).argmin(0)[0])
    _moves_one_member(model, x, spec, "net.0", member, "net.2.weight")
    _moves_one_member(model, x, spec, "net.2", member, "net.4.weight")
    for mode in ("np", "hnp"):
        for basis in ("complete", "linear"):
            s = spec.with_mode(mode)
            assert_equivariant(nfc.NFLinear(s, 1, 2, basis=basis).double(), s, trials=2)


def test_members_whose_outputs_stay_apart_are_the_output_neurons():
    # each member's output an output neuron: the members are the output space (moving as
    # blocks in np, in place in hnp) and each member's units still permute on their own.
    # Before: the members the outputs, their units one permutation for every member
    model, x, spec = _traced(lambda: _Critic("none"), 4, 5)
    h0 = Inner("net.0", 0)
    assert spec["net.0.weight"].axes == ("out", "in", h0)
    assert spec["net.2.weight"].axes == ("out", h0, Inner("net.2", 0))
    assert spec.spaces["out"].blocks == spec.spaces["net.0"].blocks
    assert not spec.with_mode("hnp").blocks[spec.spaces["out"].blocks].permutable
    _moves_one_member(model, x, spec, "net.0", 2, "net.2.weight")
    for mode in ("np", "hnp"):
        s = spec.with_mode(mode)
        assert_equivariant(nfc.NFLinear(s, 1, 2).double(), s, trials=2)


def test_units_averaged_over_the_members_share_one_permutation():
    # the first layer's units averaged over the members before a shared head: unit j of
    # every member meets the head's column j, so one permutation moves every member's
    _, _, spec = _traced(lambda: _Critic("mixed"), 4, 5)
    assert not spec.blocks
    members, _, units = spec["net.0.weight"].axes
    assert spec["head.weight"].axes == ("out", units) and spec.spaces[units].size == 8
    assert spec["net.0.bias"].axes == (members, None, units)
    assert_equivariant(nfc.NFLinear(spec, 1, 2).double(), spec, trials=2)


class _OwnData(nn.Module):
    """Stacked weights, each member reading its own slice of the input ``(members, B, 5)``."""

    def __init__(self, how: str = "matmul") -> None:
        super().__init__()
        self.l1, self.l2 = _Stacked(5, 6, 3, how), _Stacked(6, 2, 3, how)

    def forward(self, x):
        return self.l2(torch.relu(self.l1(x))).sum(0)


@pytest.mark.parametrize("how", ["matmul", "baddbmm", "einsum"])
def test_members_reading_their_own_data_stay_in_place(how):
    # member e reads x[e]: the members cannot move, so they are fixed blocks, and inside
    # them each member's units still permute on their own. Before: one permutation for
    # every member's units, the members' axis fixed
    model, x, spec = _traced(lambda: _OwnData(how), 3, 4, 5)
    (name,) = spec.blocks
    members, h1 = spec["l1.weight"].axes[0], Inner("l1", 0)
    assert spec.blocks[name].fixed and not spec.blocks[name].permutable
    assert spec.spaces[members].blocks == spec.spaces["l1"].blocks == name
    assert spec.block_shape("l1") == (3, 6)
    assert spec["l1.weight"].axes == (members, "in", h1)
    assert spec["l2.weight"].axes == (members, h1, "out")
    _moves_one_member(model, x, spec, "l1", 1, "l2.weight")
    # whole members exchanged (their data stays where it is): not a symmetry
    swap = Permutation(
        spec,
        {
            members: torch.tensor([1, 0, 2]),
            "l1": torch.arange(18).reshape(3, 6)[[1, 0, 2]].flatten(),
        },
    )
    moved = swap.apply_state_dict(model.state_dict())
    assert (torch.func.functional_call(model, moved, (x,)) - model(x)).abs().max() > 1e-3
    for mode in ("np", "hnp"):
        for basis in ("complete", "linear"):
            s = spec.with_mode(mode)
            assert_equivariant(nfc.NFLinear(s, 1, 2, basis=basis).double(), s, trials=2)


class _OwnDataAveraged(nn.Module):
    """Each member reads its own slice of the input; their units averaged before one head."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.head = _Stacked(5, 6, 3), nn.Linear(6, 2)

    def forward(self, x):
        return self.head(torch.relu(self.l1(x)).mean(0))


def test_members_reading_their_own_data_read_across_are_fixed():
    # their own data keeps the members in place, and the average gives every member's units
    # one permutation: no blocks, the members' axis fixed (as before fixed blocks), and the
    # report says where and why (it said nothing before)
    model, x = model_(_OwnDataAveraged).double(), x_(3, 4, 5).double()
    spec, report = trace_with_report(model, x, channel_dim=-1)
    assert report.verification.ok and not spec.blocks
    (broken,) = report.broken
    assert broken.node == "matmul" and broken.count == 3 and "its own data" in broken.reason
    assert broken.neurons == ["l1.bias.d0", "l1.weight.d0"]
    assert spec["l1.weight"].axes == (None, "in", "l1")
    assert spec["head.weight"].axes == ("out", "l1")
    assert_equivariant(nfc.NFLinear(spec, 1, 2).double(), spec, trials=2)


class _EinsumAttention(nn.Module):
    """XLNet's and Transformer-XL's attention: projections stored ``(d_model, heads,
    d_head)`` and read by ``einsum``, a bias per head ``(heads, d_head)`` added to the
    queries (``r_w_bias``), a segment term (``seg_embed`` of shape ``(2, heads, d_head)``
    with its own bias per head), the output projected back by ``einsum`` too."""

    def __init__(self, d: int = 8, heads: int = 2, dh: int = 3) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (
            nn.Parameter(torch.randn(d, heads, dh) / d**0.5) for _ in range(4)
        )
        self.r_w_bias, self.r_s_bias = (nn.Parameter(torch.randn(heads, dh) / 4) for _ in "ws")
        self.seg_embed = nn.Parameter(torch.randn(2, heads, dh) / 4)
        self.norm = nn.LayerNorm(d)

    def forward(self, x):  # x: (length, batch, d)
        q, k, v = (torch.einsum("ibh,hnd->ibnd", x, w) for w in (self.q, self.k, self.v))
        scores = torch.einsum("ibnd,jbnd->bnij", q + self.r_w_bias, k)
        # XLNet's segment term: its segments' dim (s) is no per-head dims
        seg = torch.einsum("ibnd,snd->bnis", q + self.r_s_bias, self.seg_embed)
        scores = scores + seg.sum(-1, keepdim=True)
        y = torch.einsum("bnij,jbnd->ibnd", scores.softmax(-1), v)
        return self.norm(x + torch.einsum("ibnd,hnd->ibh", y, self.o))


def test_projections_stored_per_head_give_each_head_its_own_features():
    # before: the heads a space, and each of q/k's and v's features one permutation for
    # every head
    model, x, spec = _traced(_EinsumAttention, 5, 2, 8)
    (qk, v), heads = ((spec["q"].axes[2].space, spec["v"].axes[2].space), spec["q"].axes[1])
    (stream,) = spec["norm.weight"].axes  # the residual stream: the input's features
    assert spec["q"].axes == spec["k"].axes == (stream, heads, Inner(qk, 1))
    assert spec["v"].axes == spec["o"].axes == (stream, heads, Inner(v, 1))
    assert spec["r_w_bias"].axes == spec["r_s_bias"].axes == (heads, Inner(qk, 0))
    segments, *rest = spec["seg_embed"].axes  # the segments, summed here, are free
    assert rest == [heads, Inner(qk, 1)] and spec.spaces[segments].blocks is None
    assert spec.block_shape(qk) == spec.block_shape(v) == (2, 3)
    _moves_one_member(model, x, spec, v, 1, "o")
    _moves_one_member(model, x, spec, qk, 0, "r_w_bias")
    for basis in ("complete", "linear"):
        assert_equivariant(nfc.NFLinear(spec, 1, 2, basis=basis).double(), spec, trials=2)


class _BiasPerHead(nn.Module):
    """Attention whose queries, viewed ``(B, T, heads, d_head)``, get a bias per head
    ``(heads, d_head)`` (Transformer-XL's ``r_w_bias`` on a fused projection)."""

    def __init__(self, first: bool = False) -> None:
        super().__init__()
        self.first = first  # the bias first in the sum
        self.q, self.k, self.v, self.o = (nn.Linear(4, 4) for _ in range(4))
        self.rwb = nn.Parameter(torch.randn(2, 2))

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = (f(x).view(b, t, 2, 2) for f in (self.q, self.k, self.v))
        q = self.rwb + q if self.first else q + self.rwb
        q, k, v = (q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        y = (q @ k.transpose(-1, -2)).softmax(-1) @ v
        return self.o(y.transpose(1, 2).reshape(b, t, c))


@pytest.mark.parametrize("first", [False, True])
def test_a_bias_per_head_keeps_each_heads_queries_their_own(first):
    # before: the bias read every head's query features as one space, q's heads shared it
    model, x, spec = _traced(lambda: _BiasPerHead(first), 2, 3, 4)
    assert spec["rwb"].axes == ("q.head", Inner("q", 0))
    assert spec.block_shape("q") == spec.block_shape("v") == (2, 2)
    _moves_one_member(model, x, spec, "q", 1, "rwb")
    assert_equivariant(nfc.NFLinear(spec, 1, 2).double(), spec, trials=2)
