"""Experts run by ``grouped_mm`` over the tokens sorted by expert (Hugging Face's default
experts implementation since transformers 5): each expert's hidden units permute on their own.

The routing sorts the token-expert pairs by expert and cuts them into groups at cumulative
counts (``offs``); ``grouped_mm`` multiplies group ``e`` by expert ``e``'s matrix, so each row
of its output holds its group's expert's units (:func:`nfncompile.frontend.stacked.grouped`).
The experts stay in place: fixed blocks. Every case is checked against the real network (the
report's verification, in float32, where the CPU's ``grouped_mm`` runs), and the larger group
once more by hand: one expert's units moved leave the function as it is, and leaving the layer
that reads them unmoved changes it.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nfncompile as nfc
from nfncompile.frontend import stacked
from nfncompile.frontend.tracing import trace_with_report
from nfncompile.spec import Inner, Permutation
from nfncompile.testing import assert_equivariant
from tests.frontend.helpers import model_, x_

pytestmark = pytest.mark.skipif(not hasattr(F, "grouped_mm"), reason="torch without grouped_mm")


class _Experts(nn.Module):
    """A residual block whose MLP is ``E`` gated experts, top-``k`` routed, run as Hugging
    Face's ``grouped_mm_experts_forward`` runs them.

    ``gate``: ``"chunk"`` (gate and up as the two halves of one projection: Mixtral, Qwen-MoE,
    DeepSeek, OLMoE) or ``"interleaved"`` (``[..., ::2]`` and ``[..., 1::2]``: GPT-OSS);
    ``bias``: a bias per expert, gathered at the sorted expert ids (GPT-OSS); ``offsets``:
    ``"same"`` for both products, or ``"other"`` (the second product's groups cut elsewhere).
    The ids are sorted and counted per expert by ``histc``, as Hugging Face's forward does.
    """

    def __init__(
        self, gate: str = "chunk", bias: bool = False, offsets: str = "same", experts: int = 4
    ) -> None:
        super().__init__()
        self.gate, self.bias, self.offsets, self.experts, self.k = gate, bias, offsets, experts, 2
        d, i = 8, 4  # the CPU's grouped_mm wants rows of a multiple of 16 bytes
        self.inp, self.router, self.out = nn.Linear(3, d), nn.Linear(d, experts), nn.Linear(d, 2)
        self.gate_up = nn.Parameter(torch.randn(experts, 2 * i, d) / math.sqrt(d))
        self.down = nn.Parameter(torch.randn(experts, d, i) / math.sqrt(i))
        if bias:
            self.gate_up_bias = nn.Parameter(torch.randn(experts, 2 * i) / 4)
            self.down_bias = nn.Parameter(torch.randn(experts, d) / 4)

    def forward(self, x):
        h = self.inp(x)
        weights, chosen = self.router(h).softmax(-1).topk(self.k, dim=-1)
        ids, perm = torch.sort(chosen.reshape(-1))
        rows = h[perm // self.k]
        counts = torch.histc(ids.float(), bins=self.experts, min=0, max=self.experts - 1)
        offs = counts.cumsum(0, dtype=torch.int32)
        y = F.grouped_mm(rows, self.gate_up.transpose(-2, -1), offs=offs)
        if self.bias:
            y = y + self.gate_up_bias[ids]
        if self.gate == "chunk":
            g, u = y.chunk(2, dim=-1)
            y = F.silu(g) * u
        else:
            g, u = y[..., ::2], y[..., 1::2]
            y = g * torch.sigmoid(g) * (u + 1)
        if self.offsets == "other":  # every row in the last group
            offs = torch.full_like(offs, rows.shape[0])
        y = F.grouped_mm(y, self.down.transpose(-2, -1), offs=offs)
        if self.bias:
            y = y + self.down_bias[ids]
        y = y * weights.reshape(-1)[perm].unsqueeze(-1)
        inverse = torch.empty_like(perm)
        inverse[perm] = torch.arange(perm.numel())
        return self.out(h + y[inverse].view(x.shape[0], self.k, -1).sum(1))


def _traced(**kw) -> tuple:
    model, x = model_(lambda: _Experts(**kw)), x_(7, 3)
    spec, report = trace_with_report(model, x)
    assert report.verification.ok and not report.probes
    return model, x, spec


def _one_expert(spec, space: str, expert: int) -> Permutation:
    """Only ``expert``'s units of block space ``space`` moved (rolled by one)."""
    count, k = spec.block_shape(space)
    perm = torch.arange(count * k)
    perm[expert * k : (expert + 1) * k] = perm[expert * k : (expert + 1) * k].roll(1)
    return Permutation(spec, {space: perm})


def _equivariant_layers(spec) -> None:
    for mode in ("np", "hnp"):
        for basis in ("complete", "linear"):
            s = spec.with_mode(mode)
            assert_equivariant(nfc.NFLinear(s, 1, 2, basis=basis).double(), s, trials=2)


@pytest.mark.parametrize(
    "gate, bias", [("chunk", False), ("chunk", True), ("interleaved", False), ("interleaved", True)]
)
def test_each_experts_units_permute_on_their_own(gate, bias):
    # before: grouped_mm fixed the experts' dim and gave every expert's units one space
    model, x, spec = _traced(gate=gate, bias=bias)
    heads, inner = spec["gate_up"].axes[0], Inner("gate_up", 0)
    if gate == "chunk":  # gate and up: the two halves of each expert's rows
        assert spec["gate_up"].axes == (heads, (inner, inner), "inp")
    else:  # interleaved: each unit two rows in a row, the view's unlabelled dim
        assert spec["gate_up"].axes == (heads, inner, None, "inp")
        assert spec["gate_up"].view == (4, 4, 2, 8)
    assert spec["down"].axes == (heads, "inp", inner)
    if bias:  # read at the sorted ids: each row its group's expert's bias
        assert spec["gate_up_bias"].axes[:2] == (heads, spec["gate_up"].axes[1])
        assert spec["down_bias"].axes == (heads, "inp")
    assert spec.block_shape("gate_up") == (4, 4)
    assert spec.blocks[spec.spaces["gate_up"].blocks].fixed
    assert spec["router.weight"].axes == (None, "inp")  # the routing reads the experts' ids
    for expert in range(4):
        moved = _one_expert(spec, "gate_up", expert).apply_state_dict(model.state_dict())
        torch.testing.assert_close(torch.func.functional_call(model, moved, (x,)), model(x))
    # the expert that takes most tokens, its units moved in gate_up but not in down
    expert = int(torch.bincount(model.router(model.inp(x)).topk(2).indices.flatten()).argmax())
    moved = _one_expert(spec, "gate_up", expert).apply_state_dict(model.state_dict())
    moved["down"] = model.state_dict()["down"]
    assert (torch.func.functional_call(model, moved, (x,)) - model(x)).abs().max() > 1e-3
    _equivariant_layers(spec)


@pytest.mark.parametrize("bias", [False, True])
def test_groups_cut_elsewhere_keep_one_permutation_for_every_experts_units(bias):
    # the second product's groups are not the first's: a row's units meet another expert's
    # matrix, so no expert's units move alone
    *_, spec = _traced(offsets="other", bias=bias)
    assert spec.spaces["gate_up"].blocks is None and spec.spaces["gate_up"].size == 4
    assert spec["down"].axes == (None, "inp", "gate_up")
    _equivariant_layers(spec)


class _FixedGroups(nn.Module):
    """Two experts at constant offsets (rows 0-2 and 3-6), the hidden rows ``how`` between
    the two products: ``"kept"``, ``"scaled"`` (times themselves, or by a weight per row), or
    reordered or mixed across rows (``"flipped"``, ``"indexed"``, ``"sorted"``, ``"mixed"``:
    added to their own flip)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.inp, self.out = nn.Linear(3, 8), nn.Linear(8, 2)
        self.w1 = nn.Parameter(torch.randn(2, 8, 8) / 3)
        self.w2 = nn.Parameter(torch.randn(2, 8, 8) / 3)

    def forward(self, x):
        h = self.inp(x)
        offs = torch.tensor([3, 7], dtype=torch.int32)
        y = F.grouped_mm(h, self.w1, offs=offs).relu()
        if self.how == "scaled":
            y = y * y * x[:, :1].sigmoid()
        elif self.how == "flipped":
            y = y.flip(0)
        elif self.how == "indexed":
            y = y[torch.tensor([6, 5, 4, 3, 2, 1, 0])]
        elif self.how == "sorted":
            y = y[h[:, 0].argsort()]
        elif self.how == "mixed":
            y = y + y.flip(0)
        return self.out(F.grouped_mm(y, self.w2, offs=offs))


@pytest.mark.parametrize("how", ["kept", "scaled"])
def test_rows_kept_in_their_groups_keep_each_experts_units(how):
    # the constant offsets are read twice (a get_attr per use): one grouping all the same
    model, x = model_(lambda: _FixedGroups(how)), x_(7, 3)
    spec, report = trace_with_report(model, x)
    assert report.verification.ok
    heads, inner = spec["w1"].axes[0], Inner("w1", 0)
    assert spec["w1"].axes == (heads, "inp", inner) and spec["w2"].axes == (heads, inner, "w2")
    assert spec.block_shape("w1") == (2, 8)
    moved = _one_expert(spec, "w1", 1).apply_state_dict(model.state_dict())
    torch.testing.assert_close(torch.func.functional_call(model, moved, (x,)), model(x))
    _equivariant_layers(spec)


@pytest.mark.parametrize("how", ["flipped", "indexed", "sorted", "mixed"])
def test_rows_moved_out_of_their_groups_share_one_permutation(how):
    # a row that meets another group's matrix (or is added to another group's row) holds
    # units that are not that expert's: every expert's units one permutation
    model, x = model_(lambda: _FixedGroups(how)), x_(7, 3)
    spec, report = trace_with_report(model, x)
    assert report.verification.ok
    assert not spec.blocks and spec.spaces["w1"].size == 8
    assert spec["w1"].axes[::2] == (None, "w1") and spec["w2"].axes == (None, "w1", "w2")
    _equivariant_layers(spec)


@pytest.mark.parametrize(
    "how, found",
    [("histc", True), ("histc to E", True), ("bincount", True), ("histc from 1", False),
     ("descending", False), ("unsorted", False)],
)  # fmt: skip
def test_offsets_name_the_sorted_ids_they_count(how, found):
    # a bias read at ids gives each row its group's expert's entry only where the groups are
    # those ids' counts per expert, in ascending order
    class Route(nn.Module):
        def forward(self, chosen, x, w):
            ids, _ = torch.sort(chosen, descending=how == "descending")
            ids = chosen if how == "unsorted" else ids
            if how == "bincount":
                counts = torch.bincount(ids, minlength=4)
            else:
                lo, hi = int(how == "histc from 1"), 3 + int(how == "histc to E")
                counts = torch.histc(ids.float(), bins=4, min=lo, max=hi)
            return F.grouped_mm(x, w, offs=counts.cumsum(0).int()), ids

    gm = torch.fx.symbolic_trace(Route())
    (ids,) = next(n for n in gm.graph.nodes if n.op == "output").args[0][1:]
    assert list(stacked.expert_ids(gm)) == ([ids] if found else [])


class _SeparateGateUp(nn.Module):
    """torchtitan's grouped experts: the token-expert pairs ordered by ``argsort``, counted by
    ``histc(max=E)`` (bins of width 1), the gate ``w1`` and up ``w3`` two products of the same
    rows and offsets, ``w2`` after them, the outputs scattered back onto their tokens."""

    def __init__(self, experts: int = 4, d: int = 8, hidden: int = 8) -> None:
        super().__init__()
        self.experts, self.k = experts, 2
        self.inp, self.out = nn.Linear(3, d), nn.Linear(d, 2)
        self.router = nn.Linear(d, experts, bias=False)
        self.w1 = nn.Parameter(torch.randn(experts, hidden, d) / math.sqrt(d))
        self.w3 = nn.Parameter(torch.randn(experts, hidden, d) / math.sqrt(d))
        self.w2 = nn.Parameter(torch.randn(experts, d, hidden) / math.sqrt(hidden))

    def forward(self, x):
        h = self.inp(x)
        scores, chosen = torch.topk(self.router(h).sigmoid(), k=self.k, dim=1)
        counts = torch.histc(chosen.view(-1).float(), bins=self.experts, min=0, max=self.experts)
        order = torch.argsort(chosen.view(-1), stable=True)
        tokens = order // self.k
        rows, offs = h[tokens], torch.cumsum(counts, dim=0, dtype=torch.int32)
        y = F.silu(torch._grouped_mm(rows, self.w1.transpose(-2, -1), offs=offs))
        y = y * torch._grouped_mm(rows, self.w3.transpose(-2, -1), offs=offs)
        y = torch._grouped_mm(y, self.w2.transpose(-2, -1), offs=offs)
        y = y * scores.view(-1)[order].unsqueeze(-1)
        index = tokens.unsqueeze(-1).expand(-1, h.shape[1])
        return self.out(h + torch.zeros_like(h).scatter_add(0, index, y))


def test_two_products_of_the_same_groups_meet_expert_by_expert():
    # the gate's and the up's units of expert e are the same units: both splits' experts are
    # the groups' (before this, two splits whose heads nothing tied fell back together)
    model, x = model_(_SeparateGateUp), x_(7, 3)
    spec, report = trace_with_report(model, x)
    assert report.verification.ok
    heads, inner = spec["w1"].axes[0], Inner("w1", 0)
    assert spec["w1"].axes == spec["w3"].axes == (heads, inner, "inp")
    assert spec["w2"].axes == (heads, "inp", inner)
    assert spec.block_shape("w1") == (4, 8) and spec.blocks[spec.spaces["w1"].blocks].fixed
    moved = _one_expert(spec, "w1", 2).apply_state_dict(model.state_dict())
    torch.testing.assert_close(torch.func.functional_call(model, moved, (x,)), model(x))
    _equivariant_layers(spec)


def test_a_model_whose_kernel_refuses_its_dtype_is_told_so():
    # grouped_mm on a CPU takes float32, bfloat16 and float16: a float64 model fails its own
    # forward, and the error says to check the dtype (it said to check the input's shape)
    from nfncompile.errors import TraceError

    with pytest.raises(TraceError, match="some kernels take only some dtypes"):
        trace_with_report(model_(_Experts).double(), x_(7, 3).double())
    with pytest.raises(TraceError, match="the shape the model expects"):
        trace_with_report(model_(_Experts), x_(7, 5))
