"""The orbit basis against a brute-force oracle (tests/backend/specs.py).

For tiny spaces the group's orbits on (output index, input index) pairs are enumerated
explicitly. The basis must have exactly one free parameter per orbit, and the layer's
materialised linear maps must span the equivariant maps and commute with every generator. Block
spaces (grouped and depthwise convs: the wreath product S_k wr S_g) are checked the same way.
"""

from __future__ import annotations

import pytest
import torch

from nfncompile.backend.basis import (
    count_terms,
    couplings,
    enumerate_basis,
    num_basis_dims,
    set_partitions,
    tile_sides,
)
from nfncompile.backend.tiles import tile_refs
from nfncompile.nn import NFLinear
from nfncompile.spec import WeightSpaceSpec
from tests.backend.specs import BLOCK_SPECS, SPECS, Oracle, mlp_spec

MODES = ("np", "hnp")


def _group(name: str, mode: str) -> str:
    """The group the layer is complete for: the spec's own, except a block permutation shared
    with an input/output space in hnp or declared fixed (the layer also moves those blocks)."""
    return (
        "layer" if (name == "input_blocks" and mode == "hnp") or name == "fixed_blocks" else "group"
    )


# ---- counts ----------------------------------------------------------------------------------


def test_set_partitions_are_bell_numbers():
    assert [len(list(set_partitions(n))) for n in range(7)] == [1, 1, 2, 5, 15, 52, 203]
    # at most k blocks: Stirling numbers of the second kind summed
    assert len(list(set_partitions(4, 2))) == 1 + 7
    assert len(list(set_partitions(3, 0))) == 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(SPECS))
def test_term_counts_equal_orbit_counts(name, mode):
    spec = SPECS[name]
    oracle = Oracle(spec, mode, _group(name, mode))
    counts = count_terms(spec, mode, bias=True)
    tiles = {t.name: t for t in tile_refs(spec, mode)}
    for q in tiles.values():
        for p in tiles.values():
            expected = oracle.pair_orbits(p.name, q.name)
            got = counts.get((p.name, q.name), 0) * p.fixed_size * q.fixed_size
            assert got == expected, (p.name, q.name)
        assert counts[("bias", q.name)] * q.fixed_size == oracle.orbits(q.name), q.name


def test_mlp_2332_dimensions():
    """DESIGN.md section 5: 68 NP and 123 HNP affine dimensions on a 2-3-3-2 MLP."""
    spec = SPECS["mlp"]
    for mode, want in (("np", 68), ("hnp", 123)):
        assert sum(Oracle(spec, mode).dimensions()) == want
        assert num_basis_dims(spec, mode, bias=True) == want


def test_small_space_limits_partitions():
    """A space of size 1 allows only one class: fewer terms than for a large space."""
    big = mlp_spec((3, 3, 3), bias=False)
    small = mlp_spec((3, 1, 3), bias=False)
    assert len(enumerate_basis(small, "np")) < len(enumerate_basis(big, "np"))
    assert num_basis_dims(small, "np") == Oracle(small, "np").dimensions()[0]


def test_term_str_and_kinds():
    spec = SPECS["residual"]
    terms = [t for t in enumerate_basis(spec, "np") if t.inp.name == t.out.name == "block.weight"]
    # [h, h] -> [h, h]: partitions of 4 h-dims into <= 3 classes: B(4) - 1 = 14
    assert len(terms) == 14
    t = terms[0]
    assert str(t) == "block.weight -> block.weight: P[h:0, h:0] Q[h:0, h:0]"
    assert t.kind(0) == "kept"
    mean_t = next(x for x in terms if x.in_assign == (0, 1) and x.out_assign == (2, 2))
    assert (mean_t.kind(0), mean_t.kind(2)) == ("mean", "broadcast")


def test_counts_are_consistent():
    for spec in SPECS.values():
        for mode in MODES:
            terms = enumerate_basis(spec, mode, bias=True)
            assert sum(count_terms(spec, mode, bias=True).values()) == len(terms)
            assert num_basis_dims(spec, mode, bias=True, in_channels=2, out_channels=3) == sum(
                t.num_params(2, 3) for t in terms
            )


# ---- block spaces: nested partitions -------------------------------------------------------------


def test_grouped_weight_sides_are_nested_partitions():
    """[c2, c1 inside the block of axis 0]: dims (block, c2 inside, c1 inside). Inner classes
    may be linked only inside a linked block class: 2 (block mean: all mean, or block kept) x
    ... = 1 + 4 = 5 sides."""
    spec = SPECS["grouped"]
    conv2 = next(t for t in tile_refs(spec, "np") if t.name == "conv2.weight")
    assert [str(d) for d in conv2.dims] == ["g", "c2'@0", "c1'@0", "2"]
    sides = tile_sides(conv2)
    assert len(sides) == 5
    assert {s.label() for s in sides if not s.linked[0]} == {"conv2.weight[g*, c2'*, c1'*, -]"}


def test_tiles_on_the_same_spaces_have_the_same_sides_of_their_own():
    """Sides depend only on a tile's factors and ties, and are enumerated once for tiles that
    share them (a norm's weight and bias): the same classes, links and keys, each side on its
    own tile."""
    from nfncompile.backend.basis import _side_shapes

    spec = mlp_spec([3, 4, 2])
    tiles = {t.name: t for t in tile_refs(spec, "np")}
    weight, bias = tiles["l1.bias"], tiles["l2.bias"]  # h1 and out: different spaces
    _side_shapes.cache_clear()
    a, b = tile_sides(weight), tile_sides(weight)
    assert _side_shapes.cache_info().hits == 1
    assert a == b and all(s.tile is weight for s in a)
    other = tile_sides(bias)
    assert [s.key for s in other] != [s.key for s in a]  # another space: its own keys
    assert all(s.tile is bias for s in other)
    norm = WeightSpaceSpec.from_dict(
        {
            "spaces": {"in": {"size": 2, "role": "input"}, "h": {"size": 3, "role": "hidden"}},
            "params": {
                "fc.weight": {"shape": [3, 2], "axes": ["h", "in"]},
                "norm.weight": {"shape": [3], "axes": ["h"]},
                "norm.bias": {"shape": [3], "axes": ["h"]},
            },
        }
    )
    nw, nb = (t for t in tile_refs(norm, "np") if t.name.startswith("norm"))
    sw, sb = tile_sides(nw), tile_sides(nb)
    assert [(s.classes, s.linked, s.key, s.orderings) for s in sw] == [
        (s.classes, s.linked, s.key, s.orderings) for s in sb
    ]
    assert all(s.tile is nw for s in sw) and all(s.tile is nb for s in sb)
    assert not set(sw) & set(sb)  # distinct sides: each tile's own


def test_depthwise_blocks_have_no_inner_dim():
    """Blocks of one neuron: the space moves by its block permutation alone."""
    spec = SPECS["depthwise_multiplier"]
    tiles = {t.name: t for t in tile_refs(spec, "np")}
    assert [str(d) for d in tiles["pw.weight"].dims] == ["g", "in"]
    assert [str(d) for d in tiles["dw.weight"].dims] == ["g", "d'@0", "1", "2"]


def test_blocks_shared_with_an_input_space_in_hnp():
    """hnp keeps the blocks of `in` (and so of `h`) in place; the layer is built for the larger
    group that moves them: sound (hnp's group is a subgroup) and complete for that group, but
    not complete for hnp's own (fewer dimensions than its orbits)."""
    spec = SPECS["input_blocks"]
    true = sum(Oracle(spec, "hnp", "group").dimensions())
    larger = sum(Oracle(spec, "hnp", "layer").dimensions())
    assert num_basis_dims(spec, "hnp", bias=True) == larger < true


def test_couplings_are_built_from_sides_not_pairs():
    """The terms between tensors that share no space all sit in the coupling of the empty key:
    one column per invariant of each tile, one row per broadcast pattern of each tile."""
    spec = mlp_spec((2, 3, 3, 3, 3, 2))
    tiles = tile_refs(spec, "np")
    cps, biases = couplings(tiles)
    empty = [c for c in cps if not c.key]
    assert len(empty) == 1
    assert len(empty[0].cols) == len(empty[0].rows) == len(tiles) == len(biases)
    assert sum(c.num_terms for c in cps) == len(enumerate_basis(spec, "np"))


# ---- the basis spans the invariants ------------------------------------------------------------


def layer_matrices(spec: WeightSpaceSpec, mode: str) -> tuple:
    """Materialise every basis element of a 1-channel complete NFLinear as a matrix (or
    vector)."""
    layer = NFLinear(spec, 1, 1, mode=mode, basis="complete").double()
    n_in = sum(p.numel for p in spec.params)
    eye = torch.eye(n_in, dtype=torch.float64)
    feats, start = {}, 0
    for p in spec.params:
        feats[p.name] = eye[:, start : start + p.numel].reshape(n_in, 1, *p.shape)
        start += p.numel
    zero = {k: torch.zeros_like(v[:1]) for k, v in feats.items()}
    params = list(layer.parameters())
    mats, vecs = [], []
    for term, loc in layer.terms():
        w = layer.term_weight(loc)
        for idx in range(w.numel()):
            with torch.no_grad():
                for q in params:
                    q.zero_()
                w[torch.unravel_index(torch.tensor(idx), w.shape)] = 1.0
            if term.is_bias:
                out = layer(zero)
                vecs.append(torch.cat([out[n].flatten() for n in spec.names]))
            else:
                out = layer(feats)
                # rows: input unit vectors; columns: outputs -> transpose for M @ x
                m = torch.cat([out[n].reshape(n_in, -1) for n in spec.names], dim=1).T
                mats.append(m)
    return mats, vecs


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(SPECS))
def test_basis_spans_equivariant_maps(name, mode):
    spec = SPECS[name]
    oracle = Oracle(spec, mode, _group(name, mode))
    mats, vecs = layer_matrices(spec, mode)
    n_lin, n_bias = oracle.dimensions()
    assert len(mats) == n_lin and len(vecs) == n_bias
    assert torch.linalg.matrix_rank(torch.stack([m.flatten() for m in mats])) == n_lin
    assert torch.linalg.matrix_rank(torch.stack(vecs)) == n_bias
    for g in oracle.matrices():
        for m in mats:
            torch.testing.assert_close(g @ m, m @ g)
        for v in vecs:
            torch.testing.assert_close(g @ v, v)


@pytest.mark.parametrize("name", BLOCK_SPECS)
def test_block_oracle_is_not_vacuous(name):
    """Reading a block space as an ordinary space (and a position inside a block as fixed)
    gives another group and another count, each matching its own oracle: the block structure is
    what the basis counts."""
    spec = SPECS[name]
    plain = WeightSpaceSpec.from_dict(
        {
            "spaces": {s.name: {"size": s.size, "role": s.role} for s in spec.spaces.values()},
            "params": {
                p.name: {
                    "shape": list(p.shape),
                    "axes": [a if isinstance(a, str) or a is None else None for a in p.axes],
                    **({"view": list(p.view)} if p.view else {}),
                }
                for p in spec.params
            },
        }
    )
    assert num_basis_dims(plain, "np", bias=True) != num_basis_dims(spec, "np", bias=True)
    assert sum(Oracle(plain, "np").dimensions()) == num_basis_dims(plain, "np", bias=True)
