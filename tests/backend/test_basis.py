"""The orbit basis against a brute-force oracle.

For tiny spaces the group's orbits on (output index, input index) pairs are enumerated
explicitly: connected components of the graph whose edges are the moves of every generator
(adjacent transpositions of each permutable space). The basis must have exactly one free
parameter per orbit, and the layer's materialised linear maps must span the invariants.
"""

from __future__ import annotations

import networkx as nx
import pytest
import torch

from nfncompile.backend.basis import (
    block_refs,
    count_terms,
    enumerate_basis,
    num_basis_dims,
    set_partitions,
)
from nfncompile.backend.plan import build_plan
from nfncompile.nn import NFLinear
from nfncompile.spec import Permutation, WeightSpaceSpec

MODES = ("np", "hnp")


def make_spec(spaces: dict, params: dict) -> WeightSpaceSpec:
    return WeightSpaceSpec.from_dict(
        {
            "spaces": {k: {"size": n, "role": r} for k, (n, r) in spaces.items()},
            "params": params,
        }
    )


def mlp_spec(widths: tuple, bias: bool = True) -> WeightSpaceSpec:
    names = ["in"] + [f"h{i}" for i in range(1, len(widths) - 1)] + ["out"]
    roles = ["input"] + ["hidden"] * (len(widths) - 2) + ["output"]
    spaces = {n: (w, r) for n, w, r in zip(names, widths, roles)}
    params = {}
    for i in range(1, len(widths)):
        params[f"l{i}.weight"] = {
            "shape": [widths[i], widths[i - 1]],
            "axes": [names[i], names[i - 1]],
        }
        if bias:
            params[f"l{i}.bias"] = {"shape": [widths[i]], "axes": [names[i]]}
    return make_spec(spaces, params)


SPECS = {
    "mlp": mlp_spec((2, 3, 3, 2)),
    "cnn": make_spec(
        {"in": (1, "input"), "c1": (2, "hidden"), "c2": (3, "hidden"), "out": (2, "output")},
        {
            "conv1.weight": {"shape": [2, 1, 2, 2], "axes": ["c1", "in", None, None]},
            "conv1.bias": {"shape": [2], "axes": ["c1"]},
            "conv2.weight": {"shape": [3, 2, 2, 1], "axes": ["c2", "c1", None, None]},
            "fc.weight": {"shape": [2, 3], "axes": ["out", "c2"]},
            "fc.bias": {"shape": [2], "axes": ["out"]},
        },
    ),
    "residual": make_spec(
        {"in": (2, "input"), "h": (3, "hidden"), "out": (2, "output")},
        {
            "embed.weight": {"shape": [3, 2], "axes": ["h", "in"]},
            "block.weight": {"shape": [3, 3], "axes": ["h", "h"]},
            "block.bias": {"shape": [3], "axes": ["h"]},
            "head.weight": {"shape": [2, 3], "axes": ["out", "h"]},
        },
    ),
    "concat": make_spec(
        {"in": (2, "input"), "a": (2, "hidden"), "b": (3, "hidden"), "out": (2, "output")},
        {
            "la.weight": {"shape": [2, 2], "axes": ["a", "in"]},
            "lb.weight": {"shape": [3, 2], "axes": ["b", "in"]},
            "head.weight": {"shape": [2, 6], "axes": ["out", ["a", 1, "b"]]},
        },
    ),
    "depthwise": make_spec(
        {"in": (2, "input"), "c": (3, "hidden"), "out": (2, "output")},
        {
            "pw.weight": {"shape": [3, 2, 1, 1], "axes": ["c", "in", None, None]},
            "dw.weight": {"shape": [3, 1, 2, 2], "axes": ["c", None, None, None]},
            "dw.bias": {"shape": [3], "axes": ["c"]},
            "fc.weight": {"shape": [2, 3], "axes": ["out", "c"]},
        },
    ),
    "flatten": make_spec(
        {"in": (1, "input"), "c": (2, "hidden"), "out": (2, "output")},
        {
            "conv.weight": {"shape": [2, 1, 2, 1], "axes": ["c", "in", None, None]},
            "fc.weight": {"shape": [2, 6], "view": [2, 2, 3], "axes": ["out", "c", None]},
        },
    ),
    "square_composite": make_spec(
        {"in": (2, "input"), "h": (2, "hidden")},
        {
            "w": {"shape": [4, 2], "axes": [["h", "h"], "in"]},
            "u": {"shape": [2, 2], "axes": ["h", "h"]},
        },
    ),
}


# ---- the oracle ------------------------------------------------------------------------------


class Oracle:
    """Element-level group action of a spec in a mode, from its generators."""

    def __init__(self, spec: WeightSpaceSpec, mode: str) -> None:
        self.spec, self.mode = spec, mode
        self.offsets, total = {}, 0
        for p in spec.params:
            self.offsets[p.name] = total
            total += p.numel
        self.total = total
        self.moves = []  # one position map per generator: element id -> new element id
        for s in spec.permutable_spaces(mode):
            n = spec.spaces[s].size
            for k in range(n - 1):
                perm = torch.arange(n)
                perm[k], perm[k + 1] = k + 1, k
                self.moves.append(self.position_map(Permutation(spec, {s: perm})))
        self.blocks = {}
        for r in block_refs(spec, mode):
            p = spec[r.param]
            ids = torch.arange(p.numel).reshape(p.labelled_shape) + self.offsets[p.name]
            idx = tuple(slice(s, s + n) for s, n in zip(r.starts, r.shape))
            self.blocks[r.name] = ids[idx].flatten().tolist()

    def position_map(self, perm: Permutation) -> list:
        f = [0] * self.total
        for p in self.spec.params:
            ids = torch.arange(p.numel) + self.offsets[p.name]
            moved = perm.apply_tensor(p.name, ids.reshape(p.shape)).flatten()
            for pos, e in zip(ids.tolist(), moved.tolist()):
                f[e] = pos
        return f

    def pair_orbits(self, p_block: str, q_block: str) -> int:
        g = nx.Graph()
        ps, qs = self.blocks[p_block], self.blocks[q_block]
        g.add_nodes_from((q, p) for q in qs for p in ps)
        for f in self.moves:
            g.add_edges_from(((q, p), (f[q], f[p])) for q in qs for p in ps)
        return nx.number_connected_components(g)

    def orbits(self, q_block: str) -> int:
        g = nx.Graph()
        qs = self.blocks[q_block]
        g.add_nodes_from(qs)
        for f in self.moves:
            g.add_edges_from((q, f[q]) for q in qs)
        return nx.number_connected_components(g)

    def matrices(self) -> list:
        """The generators as permutation matrices on the flat weight space."""
        out = []
        for f in self.moves:
            m = torch.zeros(self.total, self.total, dtype=torch.float64)
            m[torch.tensor(f), torch.arange(self.total)] = 1.0
            out.append(m)
        return out


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
    oracle = Oracle(spec, mode)
    counts = count_terms(spec, mode, bias=True)
    refs = {r.name: r for r in block_refs(spec, mode)}
    for q in refs.values():
        for p in refs.values():
            expected = oracle.pair_orbits(p.name, q.name)
            got = counts.get((p.name, q.name), 0) * p.fixed_size * q.fixed_size
            assert got == expected, (p.name, q.name)
        assert counts[("bias", q.name)] * q.fixed_size == oracle.orbits(q.name), q.name


def test_mlp_2332_dimensions():
    """DESIGN.md section 5: 68 NP and 123 HNP affine dimensions on a 2-3-3-2 MLP."""
    spec = SPECS["mlp"]
    for mode, want in (("np", 68), ("hnp", 123)):
        oracle = Oracle(spec, mode)
        names = list(oracle.blocks)
        orbits = sum(oracle.pair_orbits(p, q) for p in names for q in names)
        orbits += sum(oracle.orbits(q) for q in names)
        assert orbits == want
        assert num_basis_dims(spec, mode, bias=True) == want


def test_small_space_limits_partitions():
    """A space of size 1 allows only one block: fewer terms than for a large space."""
    big = mlp_spec((3, 3, 3), bias=False)
    small = mlp_spec((3, 1, 3), bias=False)
    n_big = len(enumerate_basis(big, "np"))
    n_small = len(enumerate_basis(small, "np"))
    assert n_small < n_big
    oracle = Oracle(small, "np")
    total = sum(oracle.pair_orbits(p, q) for p in oracle.blocks for q in oracle.blocks)
    assert num_basis_dims(small, "np") == total


def test_term_str_and_kinds():
    spec = SPECS["residual"]
    terms = [t for t in enumerate_basis(spec, "np") if t.inp.name == t.out.name == "block.weight"]
    # [h, h] -> [h, h]: partitions of 4 h-axes into <= 3 blocks: B(4) - 1 = 14
    assert len(terms) == 14
    t = terms[0]
    assert str(t) == "block.weight -> block.weight: P[h:0, h:0] Q[h:0, h:0]"
    assert t.kind(0) == "kept"
    mean_t = next(x for x in terms if x.in_assign == (0, 1) and x.out_assign == (2, 2))
    assert (mean_t.kind(0), mean_t.kind(2)) == ("mean", "broadcast")


# ---- the basis spans the invariants ------------------------------------------------------------


def layer_matrices(spec: WeightSpaceSpec, mode: str) -> tuple:
    """Materialise every basis element of a 1-channel NFLinear as a matrix (or vector)."""
    layer = NFLinear(spec, 1, 1, mode=mode).double()
    n_in = sum(p.numel for p in spec.params)
    eye = torch.eye(n_in, dtype=torch.float64)
    feats, start = {}, 0
    for p in spec.params:
        feats[p.name] = eye[:, start : start + p.numel].reshape(n_in, 1, *p.shape)
        start += p.numel
    zero = {k: torch.zeros_like(v[:1]) for k, v in feats.items()}
    params = list(layer.parameters())
    mats, vecs = [], []
    for ti, term in enumerate(layer.plan.terms):
        w = layer.term_weight(ti)
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
@pytest.mark.parametrize(
    "name", ["mlp", "cnn", "residual", "concat", "depthwise", "flatten", "square_composite"]
)
def test_basis_spans_equivariant_maps(name, mode):
    spec = SPECS[name]
    oracle = Oracle(spec, mode)
    mats, vecs = layer_matrices(spec, mode)
    names = list(oracle.blocks)
    n_lin = sum(oracle.pair_orbits(p, q) for p in names for q in names)
    n_bias = sum(oracle.orbits(q) for q in names)
    assert len(mats) == n_lin and len(vecs) == n_bias
    assert torch.linalg.matrix_rank(torch.stack([m.flatten() for m in mats])) == n_lin
    assert torch.linalg.matrix_rank(torch.stack(vecs)) == n_bias
    gens = oracle.matrices()
    for g in gens:
        for m in mats:
            torch.testing.assert_close(g @ m, m @ g)
        for v in vecs:
            torch.testing.assert_close(g @ v, v)


def test_plan_shares_reductions_and_mixes():
    spec = mlp_spec((2, 3, 3, 2))
    plan = build_plan(spec, "np", 2, 2)
    # each distinct reduction once: 4 per weight (keep/mean x keep/mean), 2 per bias
    assert len(plan.reductions) == 3 * 4 + 3 * 2
    keys = {(r.block.name, r.groups, r.kept) for r in plan.reductions}
    assert len(keys) == len(plan.reductions)
    # every term lands in exactly one group contribution or bias slot
    seen = sorted(c.term for g in plan.groups for c in g.contributions)
    seen += [t for g in plan.groups for t in g.bias_terms]
    assert sorted(seen) == list(range(len(plan.terms)))
    # the global-mean groups of all 6 outputs share one matmul
    assert max(len(m.groups) for m in plan.mixes) == 6
    assert (
        sum(g.in_channels * g.out_channels for g in plan.groups)
        + sum(g.out_channels for g in plan.groups if g.bias_terms)
        == plan.num_params
    )
    text = str(plan)
    assert text.splitlines()[0] == (
        "Plan(mode='np', in_channels=2, out_channels=2, terms=68, params=260)"
    )
    assert "r3 = l1.weight[h1, in] mean (h1) mean (in) from r1" in text


def test_counts_are_consistent():
    for spec in SPECS.values():
        for mode in MODES:
            terms = enumerate_basis(spec, mode, bias=True)
            assert sum(count_terms(spec, mode, bias=True).values()) == len(terms)
            assert num_basis_dims(spec, mode, bias=True, in_channels=2, out_channels=3) == sum(
                t.num_params(2, 3) for t in terms
            )
