"""Code generation: the generated graph lints, runs one GEMM per mix, never permutes a broadcast
before concatenating, keeps outputs channels-last in memory, and owns exactly the plan's
weights."""

from __future__ import annotations

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
    for i, r in enumerate(plan.reductions):
        # a reduction that keeps every index is the tile itself: no step of its own
        assert (f"_r{i} " in code) == (
            not all(r.side.linked) or any(len(c) > 1 for c in r.side.classes)
        )
    assert "mix0" in code and "_native" in code and "_cl" in code
