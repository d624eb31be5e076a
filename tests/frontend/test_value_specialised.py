"""Forwards that branch on their data, traced with the example's values fixed: mixtures of
experts that run only the experts their router chose.

Published mixtures of experts loop over the experts the tokens picked: over
``index.unique().tolist()``, over the rows of ``expert_mask.sum(...).nonzero()`` (Hugging Face's
eager experts, and every transformers 4 MoE with a ``ModuleList`` indexed by the row), or over
all experts with ``if counts[i] == 0: continue`` (DeepSeek-V3's reference code). fx refuses
each, so the experts were kept as one call and probed: one permutation for every expert's
units, or none. :class:`~nfncompile.frontend.fx.ValueSpecialisingTracer` traces them with the
example's values fixed: the loop is unrolled over the experts the example ran, each reading
its own weights (a stacked weight's member ``e`` its own slice), and each expert's units
permute on their own. Every case is checked against the real network on other inputs (the
report's verification, which routes them elsewhere), and the larger group once more by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nfncompile as nfc
from nfncompile.frontend import fx
from nfncompile.frontend.fx import trace_module
from nfncompile.frontend.tracing import VALUE_TRIALS, trace_with_report
from nfncompile.spec import Inner, Permutation
from nfncompile.testing import assert_equivariant
from tests.frontend.helpers import LoopedExperts, model_, x_

D, H, E = 6, 4, 3  # stream, each expert's units, experts


class Unique(LoopedExperts):
    """Stacked experts run on the tokens of each expert ``index.unique()`` lists."""

    def __init__(self) -> None:
        super().__init__(E, D, H)


class EagerHF(nn.Module):
    """Hugging Face's eager experts (transformers 5): the rows of ``expert_hit`` in turn, the
    padding expert skipped, gate and up one stacked projection."""

    def __init__(self) -> None:
        super().__init__()
        self.num_experts = E
        self.gate_up_proj = nn.Parameter(torch.randn(E, 2 * H, D) / D**0.5)
        self.down_proj = nn.Parameter(torch.randn(E, D, H) / H**0.5)

    def forward(self, x, index, weight):
        out = torch.zeros_like(x)
        with torch.no_grad():
            mask = F.one_hot(index, num_classes=self.num_experts + 1).permute(2, 1, 0)
            hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()
        for e in hit:
            e = e[0]
            if e == self.num_experts:
                continue
            k, token = torch.where(mask[e])
            gate, up = F.linear(x[token], self.gate_up_proj[e]).chunk(2, dim=-1)
            h = F.linear(F.silu(gate) * up, self.down_proj[e]) * weight[token, k, None]
            out.index_add_(0, token, h)
        return out


class _MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w1, self.w3 = nn.Linear(D, H, bias=False), nn.Linear(D, H, bias=False)
        self.w2 = nn.Linear(H, D, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class ModuleListHF(nn.Module):
    """transformers 4's sparse MoE block: a ``ModuleList`` of experts indexed by the rows of
    ``expert_hit`` (a tensor)."""

    def __init__(self) -> None:
        super().__init__()
        self.experts = nn.ModuleList([_MLP() for _ in range(E)])

    def forward(self, x, index, weight):
        out = torch.zeros_like(x)
        mask = F.one_hot(index, num_classes=E).permute(2, 1, 0)
        for e in torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero():
            k, token = torch.where(mask[e].squeeze(0))
            out.index_add_(
                0, token, self.experts[e](x[None, token].reshape(-1, D)) * weight[token, k, None]
            )
        return out


class Named(nn.Module):
    """Switch Transformers' and NLLB-MoE's experts: a ``ModuleDict`` read by a name made from
    the routing's row, ``self.experts[f"expert_{e[0]}"]``."""

    def __init__(self) -> None:
        super().__init__()
        self.experts = nn.ModuleDict({f"expert_{e}": _MLP() for e in range(E)})

    def forward(self, x, index, weight):
        out = torch.zeros_like(x)
        mask = F.one_hot(index, num_classes=E).permute(2, 1, 0)
        for e in torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero():
            k, token = torch.where(mask[e].squeeze(0))
            h = self.experts[f"expert_{e[0]}"](x[token]) * weight[token, k, None]
            out.index_add_(0, token, h)
        return out


class Counted(nn.Module):
    """DeepSeek-V3's reference MoE: every expert in turn, those no token chose skipped."""

    def __init__(self) -> None:
        super().__init__()
        self.experts = nn.ModuleList([_MLP() for _ in range(E)])

    def forward(self, x, index, weight):
        y = torch.zeros_like(x)
        counts = torch.bincount(index.flatten(), minlength=E).tolist()
        for i in range(E):
            if counts[i] == 0:
                continue
            token, k = torch.where(index == i)
            y[token] += self.experts[i](x[token]) * weight[token, k, None]
        return y


class Routed(nn.Module):
    """A residual block around ``experts``, top-2 routed."""

    def __init__(self, experts: nn.Module) -> None:
        super().__init__()
        self.inp, self.router, self.out = (
            nn.Linear(5, D),
            nn.Linear(D, E, bias=False),
            nn.Linear(D, 2),
        )
        self.experts = experts

    def forward(self, x):
        h = self.inp(x)
        weight, index = torch.topk(torch.softmax(self.router(h), -1), 2)
        return self.out(h + self.experts(h, index, weight))


def _traced(kind) -> tuple:
    model, x = model_(lambda: Routed(kind()).double()), x_(12, 5).double()
    spec, report = trace_with_report(model, x)
    assert report.verification.ok and not report.leaf_calls
    assert "in " in report.values_fixed and "values fixed" in str(report)
    assert report.verification.joint.trials >= VALUE_TRIALS  # other inputs route elsewhere
    return model, x, spec


@torch.no_grad()
def _changes(model, x, state) -> float:
    return float((torch.func.functional_call(model, state, (x,)) - model(x)).abs().max())


def _equivariant_layers(spec) -> None:
    for mode in ("np", "hnp"):
        for basis in ("complete", "linear"):
            s = spec.with_mode(mode)
            assert_equivariant(nfc.NFLinear(s, 1, 2, basis=basis).double(), s, trials=2)


@pytest.mark.parametrize("kind", [Unique, EagerHF])
def test_stacked_experts_picked_by_the_data_permute_their_units_on_their_own(kind):
    # before: kept as one call; Unique's experts shared one permutation, EagerHF's were fixed
    model, x, spec = _traced(kind)
    first, second = ("w1", "w2") if kind is Unique else ("gate_up_proj", "down_proj")
    space = f"experts.{first}"
    heads, inner = spec[space].axes[0], Inner(space, 0)
    rows = inner if kind is Unique else (inner, inner)  # gate and up: the two halves
    assert spec[space].axes == (heads, rows, "inp")
    assert spec[f"experts.{second}"].axes == (heads, "inp", inner)
    assert spec.block_shape(space) == (E, H)
    assert spec.blocks[spec.spaces[space].blocks].fixed  # the router reads the experts' ids
    state = model.state_dict()
    for expert in range(E):  # one expert's units moved alone: the function is as it was
        perm = torch.arange(E * H)
        perm[expert * H : (expert + 1) * H] = perm[expert * H : (expert + 1) * H].roll(1)
        moved = Permutation(spec, {space: perm}).apply_state_dict(state)
        assert _changes(model, x, moved) < 1e-12
        moved[f"experts.{second}"] = state[f"experts.{second}"]  # the layer reading them not
        assert _changes(model, x, moved) > 1e-3
    _equivariant_layers(spec)


@pytest.mark.parametrize("kind", [ModuleListHF, Counted, Named])
def test_experts_in_a_module_list_picked_by_the_data_are_spaces_of_their_own(kind):
    # before: kept as one call, probed: one permutation for every expert's units
    model, x, spec = _traced(kind)
    state = model.state_dict()
    for e in range(E):
        expert = f"experts.experts.{'expert_' if kind is Named else ''}{e}"
        unit = f"{expert}.w1"
        assert spec[f"{unit}.weight"].axes == (unit, "inp")
        assert spec[f"{expert}.w3.weight"].axes == (unit, "inp")
        assert spec[f"{expert}.w2.weight"].axes == ("inp", unit)
        assert spec.spaces[unit].size == H
        moved = Permutation(spec, {unit: torch.arange(H).roll(1)}).apply_state_dict(state)
        assert _changes(model, x, moved) < 1e-12  # one expert's units moved alone
        moved[f"{expert}.w2.weight"] = state[f"{expert}.w2.weight"]
        assert _changes(model, x, moved) > 1e-3
    _equivariant_layers(spec)


def test_a_model_whose_own_forward_loops_over_the_picked_experts():
    # the root module cannot be kept as one call: fx's refusal was a TraceError
    class Flat(Unique):
        def __init__(self) -> None:
            super().__init__()
            self.inp, self.router = nn.Linear(5, D), nn.Linear(D, E, bias=False)

        def forward(self, x):
            h = self.inp(x)
            weight, index = torch.topk(torch.softmax(self.router(h), -1), 2)
            return h + super().forward(h, index, weight)

    model, x = model_(lambda: Flat().double()), x_(12, 5).double()
    spec, report = trace_with_report(model, x)
    assert report.verification.ok and report.values_fixed
    assert spec.block_shape("w1") == (E, H)
    with pytest.raises(nfc.TraceError, match="cannot be iterated"):
        trace_module(model, x, values=False)


class Branching(nn.Module):
    """A head that reverses its features where the first token's first feature is positive: a
    branch on float data, which other inputs take the other way."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(D, D)

    def forward(self, h):
        y = self.fc(h)
        if h[0, 0] < 0:
            return y
        return y.flip(-1)


def test_a_branch_on_float_data_is_still_kept_as_one_call():
    # a question of the data's values (here: the example's way has no flip, and fc's outputs
    # would permute) is not the routing's choice of experts: the trace does not fix it
    def make():
        return nn.Sequential(nn.Linear(5, D), Branching(), nn.Linear(D, 2)).double()

    model, x = model_(make), x_(12, 5).double()
    spec, report = trace_with_report(model, x)
    assert report.verification.ok and not report.values_fixed
    assert [leaf.kind for leaf in report.leaf_calls] == ["Branching"]
    assert spec["1.fc.weight"].axes == (None, None)  # the probe finds the head reads positions


class Skewed(Routed):
    """A router whose bias prefers experts 0 and 1: at an example near zero no token picks
    expert 2, which inputs of a normal size do pick."""

    def __init__(self, experts: nn.Module) -> None:
        super().__init__(experts)
        with torch.no_grad():
            self.inp.bias.zero_()
            self.router.weight.mul_(4)
        self.router.bias = nn.Parameter(torch.tensor([1.0, 1.0, 0.0]))

    def forward(self, x):
        h = self.inp(x)
        weight, index = torch.topk(torch.softmax(self.router(h) + self.router.bias, -1), 2)
        return self.out(h + self.experts(h, index, weight))


@pytest.mark.parametrize("kind", [Unique, Counted])
def test_an_expert_the_example_never_ran_keeps_the_experts_one_call(kind):
    # the graph at the example's values has no expert 2: a stacked weight's member it never
    # picked would be read by nothing (Unique), and a module list's expert 2 is missing from
    # what the graph computes on inputs that pick it (Counted); either way the traces that read
    # no values stand
    model, x = model_(lambda: Skewed(kind()).double()), 1e-3 * x_(12, 5).double()
    assert 2 not in model.router(model.inp(x)).add(model.router.bias).topk(2).indices
    _, report = trace_with_report(model, x)
    assert report.verification.ok and not report.values_fixed
    assert [leaf.kind for leaf in report.leaf_calls] == [kind.__name__]
    why = (
        "picked 2 of the 3 members of experts.w1 (0, 1)"
        if kind is Unique
        else "ran nothing that reads experts.experts.2.w1.weight, experts.experts.2.w2.weight"
    )
    assert why in report.values_refused and "not traced with the example" in str(report)


class GroupGate(nn.Module):
    """DeepSeek-V3's reference gate: sigmoid scores with a bias, the best 2 of 4 groups kept
    (a ``dtype=bool`` mask scattered at the groups' top-k), top-2 of the rest; its weights
    are the unbiased scores there, normalised."""

    def __init__(self, experts: int = 8) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(experts, D) / D**0.5)
        self.bias = nn.Parameter(torch.randn(experts) / 10)

    def forward(self, x):
        scores = F.linear(x, self.weight).sigmoid()
        original = scores
        scores = (scores + self.bias).view(x.size(0), 4, -1)
        groups = scores.topk(2, dim=-1)[0].sum(dim=-1).topk(2, dim=-1)[1]
        mask = scores.new_ones(x.size(0), 4, dtype=bool).scatter_(1, groups, False)
        scores = scores.masked_fill_(mask.unsqueeze(-1), float("-inf")).flatten(1)
        index = torch.topk(scores, 2, dim=-1)[1]
        weight = original.gather(1, index)
        return weight / weight.sum(dim=-1, keepdim=True), index


class DeepSeekMoE(nn.Module):
    """DeepSeek-V3's reference MoE: 8 routed experts run by counts, and a shared one."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = GroupGate()
        self.experts = nn.ModuleList([_MLP() for _ in range(8)])
        self.shared = _MLP()

    def forward(self, x):
        weight, index = self.gate(x)
        y = torch.zeros_like(x)
        counts = torch.bincount(index.flatten(), minlength=8).tolist()
        for i in range(8):
            if counts[i] == 0:
                continue
            token, k = torch.where(index == i)
            y[token] += self.experts[i](x[token]) * weight[token, k, None]
        return y + self.shared(x)


def test_deepseek_v3s_group_limited_gate_routes_to_experts_of_their_own():
    # the gate's bool mask (``new_ones(..., dtype=bool)``: a Python type fx keeps as a graph
    # constant) left every value after it unknown, and the block was kept as one call, whose
    # probe fixed the residual stream too
    def make():
        return nn.Sequential(nn.Linear(5, D), DeepSeekMoE(), nn.Linear(D, 2)).double()

    model, x = model_(make), x_(64, 5).double()
    spec, report = trace_with_report(model, x)
    assert report.verification.ok and report.values_fixed and not report.leaf_calls
    for e in range(8):
        assert spec[f"1.experts.{e}.w1.weight"].axes == (f"1.experts.{e}.w1", "0")
    assert spec["1.shared.w1.weight"].axes == ("1.shared.w1", "0")
    assert spec["1.gate.weight"].axes == (None, "0")


class Tokens(Skewed):
    """Skewed, reading token ids: the ids 0 to 9 embed near zero (their tokens never pick
    expert 2), the others at a normal size."""

    def __init__(self, experts: nn.Module) -> None:
        super().__init__(experts)
        self.inp = nn.Embedding(32, D)
        with torch.no_grad():
            self.inp.weight[:10] *= 1e-3


def test_an_expert_the_examples_token_ids_never_ran_keeps_the_experts_one_call():
    # random draws do not change token ids, so only what the graph reads can tell: expert 2's
    # weights, which other ids run, are read by nothing in the graph at the example's values
    model, ids = model_(lambda: Tokens(Counted()).double()), torch.arange(10)
    assert 2 not in model.router(model.inp(ids)).add(model.router.bias).topk(2).indices
    assert 2 in model.router(model.inp(ids + 10)).add(model.router.bias).topk(2).indices
    _, report = trace_with_report(model, ids, channel_dim=None)
    assert report.verification.ok and not report.values_fixed
    assert "ran nothing that reads experts.experts.2.w1.weight" in report.values_refused


class Capped(Counted):
    """Experts that take at most 8 tokens each (a capacity, as Switch Transformers' and
    GShard's): the example's counts decide which experts drop tokens."""

    def forward(self, x, index, weight):
        y = torch.zeros_like(x)
        for i in range(E):
            token, k = torch.where(index == i)
            if len(token) > 8:
                token, k = token[:8], k[:8]
            y[token] += self.experts[i](x[token]) * weight[token, k, None]
        return y


def test_a_capacity_the_example_fills_otherwise_keeps_the_experts_one_call():
    # every expert runs, but which drop tokens is the example's: on random inputs the graph
    # at its values does not compute the model's output
    model, x = model_(lambda: Routed(Capped()).double()), x_(12, 5).double()
    counts = torch.bincount(model.router(model.inp(x)).topk(2).indices.flatten(), minlength=E)
    assert (counts > 8).any() and (counts > 0).all()
    _, report = trace_with_report(model, x)
    assert report.verification.ok and not report.values_fixed
    assert [leaf.kind for leaf in report.leaf_calls] == ["Capped"]
    assert "random inputs" in report.values_refused


def test_without_values_the_experts_stay_one_call():
    model, x = model_(lambda: Routed(EagerHF()).double()), x_(12, 5).double()
    gm = trace_module(model, x, values=False)
    assert gm.meta["nfn_values"] == ""
    assert [n.target for n in gm.graph.nodes if n.op == "call_module"] == [
        "inp",
        "router",
        "experts",
        "out",
    ]


class NeighbourLoop(nn.Module):
    """Message passing over each of 8 tokens' 3 nearest neighbours among learned anchors,
    written as a loop over the neighbours the weights pick: unrolled, it grows with the
    tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.randn(8, 2))
        self.msg = nn.Linear(D, D)

    def forward(self, h):
        near = torch.cdist(self.anchor, self.anchor).topk(3, largest=False).indices
        out = torch.zeros_like(h)
        for i, row in enumerate(near.tolist()):
            for j in row:
                out[:, i] = out[:, i] + self.msg(h[:, j])
        return out


def test_a_loop_unrolled_past_the_node_limit_is_kept_as_one_call(monkeypatch):
    # 8 tokens' 24 neighbours unroll to about 150 nodes: under a limit of 100 the loop's
    # module is kept as one call, as without values; under the default one it is read op by op
    def make():
        return nn.Sequential(nn.Linear(5, D), NeighbourLoop(), nn.Linear(D, 2)).double()

    model, x = model_(make), x_(2, 8, 5).double()
    spec, report = trace_with_report(model, x, channel_dim=-1)
    assert report.values_fixed and not report.leaf_calls
    # the neighbours the graph holds were read off the anchors' positions: those are fixed
    # (else the anchors moved freely, and the verification failed)
    assert spec["1.anchor"].axes[0] is None and "read_at_example" in str(report)
    monkeypatch.setattr(fx, "VALUE_NODES", 100)
    monkeypatch.setattr(fx, "VALUE_NODES_PER_NODE", 0)
    _, report = trace_with_report(model, x, channel_dim=-1)
    assert [leaf.kind for leaf in report.leaf_calls] == ["NeighbourLoop"]
    assert not report.values_fixed


class _SessionGraph(nn.Module):
    """RecBole's SR-GNN: each session's item graph built in NumPy from the ids."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.lin, self.out = nn.Embedding(10, 4), nn.Linear(4, 6), nn.Linear(6, 1)

    def forward(self, items):
        graphs = []
        for session in items.cpu().numpy():
            a = np.zeros((len(session), len(session)))
            for i in range(len(session) - 1):
                a[i, i + 1] = 1.0
            graphs.append(a / np.maximum(a.sum(0, keepdims=True), 1))
        a = torch.tensor(np.array(graphs), dtype=torch.float32)
        return self.out(torch.relu(self.lin(a @ self.emb(items)))).sum(1)


def test_ids_read_as_a_numpy_array_are_the_examples():
    # before: "Proxy object cannot be iterated" (the NumPy array was no whole numbers)
    spec, report = trace_with_report(
        model_(_SessionGraph), torch.tensor([[1, 2, 3, 0], [4, 5, 6, 7]])
    )
    assert spec.spaces["emb"].size == 4 and spec.spaces["lin"].size == 6
    assert report.verification.ok and report.values_fixed
