"""The fused plan: its structure on known small specs, shared reductions, mix grouping, term
accounting, and the linear basis's relations."""

from __future__ import annotations

import itertools

import pytest

from nfncompile.backend.basis import enumerate_basis, num_basis_dims
from nfncompile.backend.plan import build_plan, complete_num_params
from tests.backend.specs import SPECS, mlp_spec

MODES = ("np", "hnp")


def test_mlp_plan_structure():
    """2-3-3-2 MLP, np: 4 reductions per weight (keep/mean x keep/mean), 2 per bias; the
    global means of all 6 tiles share one mix (the coupling of the empty key)."""
    plan = build_plan(mlp_spec((2, 3, 3, 2)), "np", 2, 2)
    assert len(plan.reductions) == 3 * 4 + 3 * 2
    assert len(plan.groups) == 3 * 4 + 3 * 2
    keys = [m.key_str() for m in plan.mixes]
    assert sorted(keys) == sorted(
        ["()", "(in)", "(h1)", "(h1, in)", "(h2)", "(h1, h2)", "(out)", "(h2, out)"]
    )
    empty = plan.mixes[keys.index("()")]
    assert len(empty.groups) == 6 and len(empty.inputs) == 6
    assert plan.num_terms == 68 and plan.num_params == num_basis_dims(
        mlp_spec((2, 3, 3, 2)), "np", bias=True, in_channels=2, out_channels=2
    )
    text = str(plan)
    assert text.splitlines()[0] == (
        "Plan(mode='np', basis='complete', in_channels=2, out_channels=2, terms=68, params=260)"
    )
    assert "r3 = l1.weight[h1*, in*] mean (h1) mean (in) from r1" in text


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_term_has_one_place(name, mode):
    """Each distinct reduction is computed once; each (column, row) pair of a mix is one basis
    term and each bias one more: together exactly the enumerated basis."""
    spec = SPECS[name]
    plan = build_plan(spec, mode, 2, 3)
    keys = [(r.tile.name, r.side.classes, r.side.linked) for r in plan.reductions]
    assert len(set(keys)) == len(keys)
    for i, r in enumerate(plan.reductions):
        if r.source is not None:
            src = plan.reductions[r.source]
            assert r.source < i and src.tile == r.tile and src.side.classes == r.side.classes
            assert all(s or not k for s, k in zip(src.side.linked, r.side.linked))
    pairs = sum(len(m.inputs) * len(m.groups) for m in plan.mixes)
    biases = sum(g.bias for g in plan.groups)
    assert pairs + biases == plan.num_terms == len(enumerate_basis(spec, mode, bias=True))
    assert plan.num_params == complete_num_params(spec, mode, 2, 3)
    for mi, m in enumerate(plan.mixes):
        assert all(plan.groups[g].mix == mi for g in m.groups)
        rows = [plan.groups[g].rows for g in m.groups]
        assert rows[0][0] == 0 and rows[-1][1] == m.out_channels
        assert all(a[1] == b[0] for a, b in itertools.pairwise(rows))


def test_a_space_of_one_neuron_splits_the_empty_coupling():
    """With a 1-neuron space h1, an invariant read from it and a broadcast into it would be two
    classes of one value: not a term. The rows that broadcast over h1 read only the invariant
    of l2.bias (no h1 dim); l2.bias's row reads every tile's."""
    spec = mlp_spec((3, 1, 3))
    plan = build_plan(spec, "np", 1, 1)
    empty = [m for m in plan.mixes if not m.key]
    assert sorted((len(m.inputs), len(m.groups)) for m in empty) == [(1, 3), (4, 1)]
    assert plan.num_params == num_basis_dims(spec, "np", bias=True)
    without = build_plan(mlp_spec((3, 1, 3), bias=False), "np", 1, 1, bias=False)
    assert not [m for m in without.mixes if not m.key]  # every invariant pair is a kept one


def test_plans_are_deterministic():
    spec = SPECS["grouped"]
    assert str(build_plan(spec, "np", 2, 2)) == str(build_plan(spec, "np", 2, 2))
    a = build_plan(spec, "hnp", 2, 2, basis="linear")
    assert str(a) == str(build_plan(spec, "hnp", 2, 2, basis="linear"))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(SPECS))
def test_linear_plan_relations(name, mode):
    """The linear basis: relations are unique and named without positions; locals split each
    mix's columns by layer; every column is in one kind; terms between different tiles keep
    at most one index."""
    spec = SPECS[name]
    plan = build_plan(spec, mode, 2, 3, basis="linear")
    keys = [r.key for r in plan.relations]
    assert len(set(keys)) == len(keys)
    for space in spec.spaces:
        assert all(f"{space}." not in k for k in keys if space not in ("in", "out"))
    for m in plan.mixes:
        cols = sorted(j for loc in m.local for j in loc.cols)
        assert len(cols) == len(set(cols))
        for loc in m.local:
            assert {plan.reductions[m.inputs[j][0]].tile.module for j in loc.cols} == {loc.module}
        if m.shared is not None:
            assert sorted(j for ks in m.shared.col_kinds for j in ks) == list(range(len(m.inputs)))
        if len(m.key) >= 2:
            tiles = {plan.reductions[r].tile for r, _ in m.inputs}
            tiles |= {plan.groups[g].tile for g in m.groups}
            assert len(tiles) == 1 and m.shared is None


def test_linear_relations_are_shared_across_depth():
    """Two MLPs of different depth, np: the same vocabulary of relations."""
    a = build_plan(mlp_spec((4, 5, 5, 3)), "np", 2, 2, basis="linear")
    b = build_plan(mlp_spec((4, 5, 5, 5, 5, 3)), "np", 2, 2, basis="linear")
    assert [r.key for r in a.relations] == [r.key for r in b.relations]
    assert a.num_params == b.num_params
    assert "self: weight[s0,s1]{+0|+1} -> weight[s0,s1]{+0|+1} [0,1]" in {
        r.key for r in a.relations
    }
