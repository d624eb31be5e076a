"""Code generation: the generated graph lints, runs one GEMM per mix, never permutes a broadcast
before concatenating, keeps outputs channels-last in memory, and owns exactly the plan's
weights."""

from __future__ import annotations

import collections

import pytest
import torch
from torch import fx

from nfncompile.backend.codegen import generate, placeholder_names
from nfncompile.backend.fused import channel_mix, tile_sum
from nfncompile.backend.plan import build_plan
from tests.backend.specs import SPECS, mlp_spec

BASES = ("complete", "linear")


def _gemms(gm: fx.GraphModule) -> list:
    return [
        n for n in gm.graph.nodes if n.op == "call_function" and n.target in (channel_mix, tile_sum)
    ]


@pytest.mark.parametrize("basis", BASES)
@pytest.mark.parametrize("name", sorted(SPECS))
def test_graph_lints_and_owns_exactly_the_plans_weights(name, basis):
    plan = build_plan(SPECS[name], "np", 2, 3, basis=basis)
    gm = generate(plan)
    gm.graph.lint()
    for mode in ("np", "hnp"):  # generate runs no dead-code pass: every node is used
        nodes = generate(build_plan(SPECS[name], mode, 2, 3, basis=basis)).graph.nodes
        assert [n.name for n in nodes if not n.users and n.op != "output"] == []
    params = dict(gm.named_parameters())
    assert sum(p.numel() for p in params.values()) == plan.num_params
    if basis == "complete":
        want = {f"mix{i}" for i in range(len(plan.mixes))}
        want |= {f"bias{g}" for g, grp in enumerate(plan.groups) if grp.bias}
        assert set(params) == want
        for i, m in enumerate(plan.mixes):
            assert params[f"mix{i}"].shape == (m.out_channels, m.in_channels)
    else:
        assert set(params) == {f"w{r}" for r in range(len(plan.relations))}
        for r, rel in enumerate(plan.relations):
            assert params[f"w{r}"].shape == rel.shape(2, 3, plan.width)
    assert all(name.startswith("delta") for name, _ in gm.named_buffers())


@pytest.mark.parametrize("name", sorted(SPECS))
def test_one_gemm_per_mix(name):
    """Complete basis: each mix is one channel-mixing GEMM (a pointwise mix joins its tile's
    broadcast sum inside a tile_sum)."""
    plan = build_plan(SPECS[name], "hnp", 2, 2)
    assert len(_gemms(generate(plan))) == len(plan.mixes)


def test_linear_gemms_per_layer_and_kind():
    """Linear basis: one GEMM per layer of each mix, plus one per mix that averages other
    layers' tiles (two for the invariant channel: into it and out of it)."""
    plan = build_plan(mlp_spec((3, 4, 4, 2)), "np", 2, 2, basis="linear")
    want = sum(len(m.local) for m in plan.mixes)
    want += sum((1 if m.key else 2) for m in plan.mixes if m.shared is not None)
    assert len(_gemms(generate(plan))) == want


def _ancestors(node: fx.Node) -> set:
    seen, todo = set(), [node]
    while todo:
        n = todo.pop()
        for a in n.all_input_nodes:
            if a not in seen:
                seen.add(a)
                todo.append(a)
    return seen


@pytest.mark.parametrize("basis", BASES)
@pytest.mark.parametrize("name", ["cnn", "residual", "grouped", "concat"])
def test_no_permute_between_a_broadcast_and_a_concatenation(name, basis):
    """Broadcasts happen only at placement, and the only permute after a placement is the
    output tile's own (a view back to the parameter's axis order)."""
    gm = generate(build_plan(SPECS[name], "np", 2, 2, basis=basis))
    for n in gm.graph.nodes:
        if n.op == "call_method" and n.target == "permute" and not n.name.endswith("_native"):
            placed = [a for a in _ancestors(n) if a.name.endswith(("_place", "_full", "_delta"))]
            assert not placed, (n.name, [a.name for a in placed])
        if n.op == "call_function" and n.target is torch.cat and n.args[1] == -1:
            for a in n.args[0]:
                if isinstance(a, fx.Node) and a.op == "call_method" and a.target == "permute":
                    assert not any(x.name.endswith("_place") for x in _ancestors(a)), a.name


@pytest.mark.parametrize("basis", BASES)
def test_outputs_are_channels_last_in_memory(basis):
    """A stack of layers stays channels-last: each output is a permuted view of a tensor whose
    channels are its innermost dim (for tiles without fixed dims)."""
    spec = SPECS["residual"]
    gm = generate(build_plan(spec, "np", 2, 3, basis=basis))
    x = [torch.randn(4, 2, *spec[n].shape) for n in spec.names]
    for y in gm(*x):
        assert y.movedim(1, -1).is_contiguous()


def test_placeholder_names_are_identifiers_and_unique():
    names = placeholder_names(("conv1.weight", "conv1_weight", "0.bias", "a-b"))
    assert names == ["conv1_weight", "conv1_weight_2", "p_0_bias", "a_b"]
    assert all(n.isidentifier() for n in names)


def test_code_reads_as_the_plan():
    """The generated code names its steps after the plan: tiles in and out, reductions, mixes."""
    plan = build_plan(mlp_spec((2, 3, 1)), "np", 1, 2)
    code = generate(plan).code
    assert code.lstrip().startswith("def forward(self, l1_weight, l1_bias, l2_weight, l2_bias)")
    siblings = collections.Counter(r.source for r in plan.reductions)
    for i, r in enumerate(plan.reductions):
        # a reduction that keeps every index is the tile itself: no step of its own; one of
        # several means of one source is an entry of that source's means call
        if r.source is not None and siblings[r.source] > 1:
            assert f"r{r.source}_means = " in code and f"_r{i} " not in code
            continue
        assert (f"_r{i} " in code) == (
            not all(r.side.linked) or any(len(c) > 1 for c in r.side.classes)
        )
    assert "mix0" in code and "_native" in code and "_cl" in code


def _dense_spec():
    """Two layers' outputs concatenated into a norm and a conv, then a third piece: composite
    tensors of 2 and 3 tiles, one kind per tensor."""
    from tests.backend.specs import make_spec

    return make_spec(
        {"in": (2, "input"), "a": (3, "hidden"), "b": (2, "hidden"), "c": (2, "hidden")},
        {
            "conv0.weight": {"shape": [3, 2, 3, 3], "axes": ["a", "in", None, None]},
            "l1.norm.weight": {"shape": [3], "axes": ["a"]},
            "l1.norm.bias": {"shape": [3], "axes": ["a"]},
            "l1.conv.weight": {"shape": [2, 3, 1, 1], "axes": ["b", "a", None, None]},
            "l2.norm.weight": {"shape": [5], "axes": [["a", "b"]]},
            "l2.norm.bias": {"shape": [5], "axes": [["a", "b"]]},
            "l2.conv.weight": {"shape": [2, 5, 1, 1], "axes": ["c", ["a", "b"], None, None]},
            "out.norm.weight": {"shape": [7], "axes": [["a", "b", "c"]]},
            "out.conv.weight": {"shape": [3, 7], "axes": ["a", ["a", "b", "c"]]},
        },
    )


def _run(gm: fx.GraphModule, xs: list) -> tuple:
    ys = gm(*xs)
    seeds = [
        torch.randn(y.shape, generator=torch.Generator().manual_seed(2), dtype=y.dtype) for y in ys
    ]
    params = [p for _, p in sorted(gm.named_parameters())]
    return ys, torch.autograd.grad(ys, xs + params, seeds)


def _same_weights(gm: fx.GraphModule, other: fx.GraphModule, plan, seed: int) -> list:
    """Random weights for ``gm`` (float64), loaded into ``other`` too; random features."""
    gen = torch.Generator().manual_seed(seed)
    for p in gm.parameters():
        with torch.no_grad():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
    other.load_state_dict(gm.state_dict())
    return [
        torch.randn(2, 2, *plan.spec[n].shape, generator=gen, dtype=torch.float64).requires_grad_()
        for n in plan.spec.names
    ]


def _assert_same_map(a: fx.GraphModule, b: fx.GraphModule, xs: list) -> None:
    """Values and every gradient (features and weights) equal."""
    (y1, g1), (y2, g2) = _run(a, xs), _run(b, xs)
    torch.testing.assert_close(y1, y2)
    torch.testing.assert_close(g1, g2)


@pytest.mark.parametrize("mode", ["np", "hnp"])
def test_local_terms_by_kind_are_the_dense_grid(mode, monkeypatch):
    """Linear basis: a layer whose composite tensors repeat kinds mixes its local terms as
    ``E x + D x`` (module weights on the kinds' sums, self - module on each tile); that is the
    map of the dense grid of relation weights, values and gradients (float64)."""
    from nfncompile.backend import codegen

    plan = build_plan(_dense_spec(), mode, 2, 3, basis="linear")
    by_kind = generate(plan).double()
    assert any(n.target is codegen.total for n in by_kind.graph.nodes)  # the path is taken
    monkeypatch.setattr(codegen._Relations, "by_kind", lambda *a: False)
    dense = generate(plan).double()
    assert not any(n.target is codegen.total for n in dense.graph.nodes)
    gen = torch.Generator().manual_seed(0)
    for name, p in sorted(by_kind.named_parameters()):
        with torch.no_grad():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
            dict(dense.named_parameters())[name].copy_(p)
    xs = [
        torch.randn(2, 2, *plan.spec[n].shape, generator=gen, dtype=torch.float64).requires_grad_()
        for n in plan.spec.names
    ]
    (y1, g1), (y2, g2) = _run(by_kind, xs), _run(dense, xs)
    torch.testing.assert_close(y1, y2)
    torch.testing.assert_close(g1, g2)


def _dense_block(layers: int):
    """A DenseNet block of ``layers`` layers: each normalises and convolves the concatenation
    of the stem's and every earlier layer's outputs (``layers * (layers + 1) / 2`` pieces)."""
    from tests.backend.specs import make_spec

    spaces = {"in": (2, "input"), **{f"s{i}": (2, "hidden") for i in range(layers + 1)}}
    params = {"stem.weight": {"shape": [2, 2, 3, 3], "axes": ["s0", "in", None, None]}}
    for i in range(1, layers + 1):
        pieces = [f"s{j}" for j in range(i)]
        axis = pieces if len(pieces) > 1 else pieces[0]
        params[f"l{i}.norm.weight"] = {"shape": [2 * i], "axes": [axis]}
        params[f"l{i}.norm.bias"] = {"shape": [2 * i], "axes": [axis]}
        params[f"l{i}.conv.weight"] = {
            "shape": [2, 2 * i, 1, 1],
            "axes": [f"s{i}", axis, None, None],
        }
    return make_spec(spaces, params)


def test_composite_tensors_cost_a_few_nodes_per_tile():
    """The linear layer's graph grows with its tiles, not with tiles squared: a few calls per
    tile (main had 12-14; 5.4-6.5 before a grid's means were one call per tensor and its tiles
    read by reference), and doubling a dense block's depth (about 4x the tiles) keeps the
    arguments per tile (the dense weight grids of composite tensors grew them by 19%)."""
    from torch.utils._pytree import tree_leaves

    per_tile = []
    for layers in (8, 16):
        plan = build_plan(_dense_block(layers), "np", 2, 2, basis="linear")
        calls = [n for n in generate(plan).graph.nodes if n.op == "call_function"]
        leaves = sum(len(tree_leaves((n.args, n.kwargs))) for n in calls)
        per_tile.append((len(calls) / len(plan.tiles), leaves / len(plan.tiles)))
    (n8, a8), (n16, a16) = per_tile
    assert max(n8, n16) <= 4.5 and a16 <= 1.05 * a8, per_tile


@pytest.mark.parametrize("basis", BASES)
@pytest.mark.parametrize("name", sorted(SPECS))
def test_a_tiles_means_in_one_pass_are_its_means(name, basis, monkeypatch):
    """The means of one source (a tile or a reduction of it) are one ``fused.means`` call; with its one-pass
    chunked path forced on these small tiles the layer is the same map (values and gradients,
    float64) as with each mean on its own."""
    from nfncompile.backend import codegen, fused

    plan = build_plan(SPECS[name], "np", 2, 3, basis=basis)
    monkeypatch.setattr(codegen, "means", lambda x, sets: tuple(fused.mean(x, d) for d in sets))
    separate = generate(plan).double()
    monkeypatch.undo()
    joint = generate(plan).double()
    calls = [n for n in joint.graph.nodes if n.target is fused.means]
    # (the means of a grid's tiles are fused.grid_means calls over the whole tensor instead)
    tiles = collections.defaultdict(list)
    for t in plan.tiles:
        tiles[t.param].append(t)
    on_grid = {p for p, ts in tiles.items() if codegen._grid(ts) is not None}
    per_source = collections.Counter(
        r.source
        for r in plan.reductions
        if r.source is not None and plan.reductions[r.source].tile.param not in on_grid
    )
    assert len(calls) == sum(1 for n in per_source.values() if n > 1) > 0
    xs = _same_weights(separate, joint, plan, 0)
    monkeypatch.setattr(fused, "FUSE_MIN", 0)
    monkeypatch.setattr(fused, "CHUNK_MIN", 1)
    monkeypatch.setattr(fused, "CHUNK_BYTES", 64)
    passes = []
    chunked = fused._chunked_sums
    monkeypatch.setattr(fused, "_chunked_sums", lambda *a: passes.append(1) or chunked(*a))
    _assert_same_map(joint, separate, xs)
    assert len(passes) >= len(calls)  # the chunked path ran


@pytest.mark.parametrize("basis", BASES)
@pytest.mark.parametrize("mode", ["np", "hnp"])
@pytest.mark.parametrize("kind", ["dense", "block"])
def test_composite_tensors_on_a_grid_are_their_tiles(kind, mode, basis, monkeypatch):
    """A composite tensor cut only along permutable dims is read as one view with a view per
    tile, and written by one ``fused.packed_tensor_sum`` (whose GEMM covers the whole tensor in
    the linear basis): the same map, values and gradients (float64), as a copy and a ``tile_sum``
    or ``tile_add`` per tile and a concatenation."""
    from nfncompile.backend import codegen, fused

    spec = _dense_spec() if kind == "dense" else _dense_block(4)
    plan = build_plan(spec, mode, 2, 3, basis=basis)
    whole = generate(plan).double()

    def count(gm, target):
        return sum(n.target is target for n in gm.graph.nodes)

    # tiles are the parts of one split of the whole tensor's view (whose backward is one
    # concatenation, not a full-size zero-filled gradient per tile) ...
    splits = [n for n in whole.graph.nodes if n.target is torch.split]
    assert any(n.args[0].target is fused.tile_in for n in splits)
    # ... not copies (every composite tensor here is on a grid); in the linear basis a dense
    # block's outputs are not concatenated back either (the dense spec's square tile (a, a)
    # has a transposed term of its own, so that tensor keeps a tile_sum per tile)
    assert not any(n.kwargs.get("copy") for n in whole.graph.nodes if n.target is fused.tile_in)
    if basis == "linear" and kind == "block":
        assert not any(n.target in (torch.cat, fused.tensor_add) for n in whole.graph.nodes)
    # the tiles' means: one fused.grid_means per tensor and set of dims, none per tile; the
    # means of those means: one fused.each_mean per grid_means call and set of dims
    assert count(whole, fused.grid_means) > 0
    grid_calls = {n for n in whole.graph.nodes if n.target is fused.grid_means}
    each = [n for n in whole.graph.nodes if n.target is fused.each_mean]
    assert each and all(n.args[0] in grid_calls for n in each)
    assert len({(n.args[0], n.args[1]) for n in each}) == len(each)
    reads = [a for n in whole.graph.nodes if n.target is fused.mean for a in n.args[:1]]
    assert not any(type(a) is tuple and a[0] in grid_calls for a in reads)
    sums = [n for n in whole.graph.nodes if n.target is fused.packed_tensor_sum]
    assert any(n.args[1] is None for n in sums)  # tiles without a GEMM (norms)
    # the linear basis's one weight for every tile of a conv: one GEMM for the tensor
    assert any(n.args[1] is not None for n in sums) == (basis == "linear")
    monkeypatch.setattr(codegen, "_grid", lambda tiles: None)
    tiles = generate(plan).double()
    assert count(tiles, fused.packed_tensor_sum) == 0
    _assert_same_map(whole, tiles, _same_weights(tiles, whole, plan, 0))


@pytest.mark.parametrize("mode", ["np", "hnp"])
def test_runs_of_a_tuples_entries_are_named_once(mode, monkeypatch):
    """Linear basis, a dense block: a variadic call reads consecutive entries of one tuple as
    one run ``(tuple, start, stop)`` (no ``(x, i), (x, i + 1)`` left in the code), and the
    layer is the same map, values and gradients (float64), as with every entry named."""
    import re

    from nfncompile.backend import codegen

    plan = build_plan(_dense_block(5), mode, 2, 3, basis="linear")
    runs = generate(plan).double()
    named = re.findall(r"\((\w+), (\d+)\), \((\w+), (\d+)\)", runs.code)
    assert not [m for m in named if m[0] == m[2] and int(m[1]) + 1 == int(m[3])]
    assert re.search(r"\(\w+, \d+, \d+\)", runs.code)  # the dense block has runs
    monkeypatch.setattr(codegen, "_runs", tuple)
    monkeypatch.setattr(codegen, "_row_runs", lambda rows: rows)
    one_by_one = generate(plan).double()
    assert len(one_by_one.code) > len(runs.code)
    _assert_same_map(runs, one_by_one, _same_weights(one_by_one, runs, plan, 0))


def _two_cut_spec():
    """Two concatenations meeting in one weight: ``mix.weight`` is cut along both axes (its
    rows the pieces ``c``, ``d``, its columns ``a``, ``b``), one of them square on a space
    (``ab``: rows and columns ``a`` and ``b`` again, whose diagonal tiles keep their own
    path), and kernel dims folded into the channels."""
    from tests.backend.specs import make_spec

    return make_spec(
        {
            "in": (2, "input"),
            "a": (3, "hidden"),
            "b": (2, "hidden"),
            "c": (2, "hidden"),
            "d": (3, "hidden"),
            "out": (2, "output"),
        },
        {
            "la.weight": {"shape": [3, 2], "axes": ["a", "in"]},
            "lb.weight": {"shape": [2, 2], "axes": ["b", "in"]},
            "mix.weight": {"shape": [5, 5, 3], "axes": [["c", "d"], ["a", "b"], None]},
            "ab.weight": {"shape": [5, 5], "axes": [["a", "b"], ["a", "b"]]},
            "head.weight": {"shape": [2, 5], "axes": ["out", ["c", "d"]]},
        },
    )


@pytest.mark.parametrize("basis", BASES)
@pytest.mark.parametrize("mode", ["np", "hnp"])
def test_a_grid_cut_along_two_dims_is_its_tiles(mode, basis, monkeypatch):
    """A tensor cut along both of its dims (a grid of 2 x 2 tiles, views from a split per
    level) and a square one (diagonal tiles among them): their means from
    ``fused.grid_means`` over the whole tensor, the same map (values and gradients, float64)
    as each tile read on its own."""
    from nfncompile.backend import codegen, fused

    plan = build_plan(_two_cut_spec(), mode, 2, 3, basis=basis)
    whole = generate(plan).double()
    grids = [n.args[1] for n in whole.graph.nodes if n.target is fused.grid_means]
    assert any(len(g) == 2 for g in grids), grids  # both dims of mix.weight
    monkeypatch.setattr(codegen, "_grid", lambda tiles: None)
    tiles = generate(plan).double()
    assert not any(n.target is fused.grid_means for n in tiles.graph.nodes)
    _assert_same_map(whole, tiles, _same_weights(tiles, whole, plan, 3))
