"""``torch.vmap`` over stacked weights (an ensemble) is traced as the loop it computes."""

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

import nfncompile as nfc
from nfncompile.frontend.fx import trace_module
from nfncompile.frontend.tracing import trace_with_report
from nfncompile.spec import Inner, Permutation
from nfncompile.testing import assert_equivariant

from .helpers import model_, x_


def _member() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))


class _Ensemble(nn.Module):
    """PyTorch's model-ensembling recipe: the members' weights stacked
    (``stack_module_state``), one member's module on the meta device run on each member's
    weights by ``functional_call`` under ``vmap``. ``how``: ``"torch"`` calls ``torch.vmap``,
    ``"imported"`` the name ``vmap`` imported from ``torch.func``, ``"out_dims"`` maps the
    members to the last dim of a tuple of outputs."""

    def __init__(self, how: str = "torch", members: int = 3) -> None:
        super().__init__()
        self.how = how
        nets = [_member() for _ in range(members)]
        params, _ = stack_module_state(nets)
        self.names = list(params)
        self.stacked = nn.ParameterList([nn.Parameter(params[k]) for k in self.names])
        self.base = [copy.deepcopy(nets[0]).to("meta")]  # (not a submodule: no state)

    def forward(self, x):
        def one(weights, x):
            y = functional_call(self.base[0], dict(zip(self.names, weights)), (x,))
            return (y, y.sum(-1)) if self.how == "out_dims" else y

        weights = tuple(self.stacked)
        if self.how == "torch":
            return torch.vmap(one, in_dims=(0, None))(weights, x)
        if self.how == "imported":
            return vmap(one, in_dims=(0, None))(weights, x)
        y, total = vmap(one, in_dims=(0, None), out_dims=(-1, 0))(weights, x)
        return y.mean(-1) + total.sum(0)[:, None]


@pytest.mark.parametrize("how", ["torch", "imported", "out_dims"])
def test_an_ensemble_under_vmap_is_traced_as_its_loop(how):
    # before: refused ("Got in_dim=0 for an input but the input is of type _WritableProxy")
    model = model_(lambda: _Ensemble(how))
    x = x_(5, 4)
    spec, report = trace_with_report(model, x)
    assert report.verification.ok and not report.graph_differs and not report.probes
    # the members differ by their weights alone: each member's hidden units permute on their
    # own (a block per member) and the members move as blocks (with the outputs they stack
    # into, where those are outputs). Before: the hidden units one space across the members,
    # the members fixed
    first, second = spec["stacked.0"].axes, spec["stacked.2"].axes
    hidden = Inner("stacked.0", 0)
    assert first[1:] == (hidden, "in") and second[2] == hidden and second[0] == first[0]
    assert spec.block_shape("stacked.0") == (3, 6)
    assert spec.spaces[first[0]].blocks == spec.spaces["stacked.0"].blocks
    assert trace_with_report(model, x, seed=3)[1].verification.ok  # other random draws
    # member 1's units alone moved: the function is unchanged
    perm = torch.arange(18)
    perm[6:12] = perm[6:12].roll(1)
    moved = Permutation(spec, {"stacked.0": perm}).apply_state_dict(model.state_dict())
    torch.testing.assert_close(functional_call(model, moved, (x,)), model(x))
    gm = trace_module(model, x)
    torch.testing.assert_close(gm(x), model(x))


def test_vmap_without_traced_values_is_torchs_own():
    from nfncompile.frontend.vmap import vmap_as_loop

    w, x = x_(3, 4, 2), x_(5, 4, seed=1)
    loop = vmap_as_loop(lambda w, x: (x @ w).relu(), in_dims=(0, None), out_dims=1)(w, x)
    torch.testing.assert_close(loop, torch.vmap(lambda w, x: (x @ w).relu(), (0, None), 1)(w, x))


class _Mismatched(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 4, 2))
        self.v = nn.Parameter(torch.randn(2, 4, 2))

    def forward(self, x):
        return torch.vmap(lambda w, v: x @ w + x @ v)(self.w, self.v)


def test_vmap_over_dims_of_different_sizes_is_named():
    with pytest.raises(nfc.TraceError, match=r"the mapped dims have sizes \[2, 3\]"):
        nfc.trace(model_(_Mismatched), x_(5, 4), verify=False)


class _OwnInputs(_Ensemble):
    """The ensemble with each member reading its own input (``in_dims=(0, 0)``)."""

    def forward(self, x):
        def one(weights, x):
            return functional_call(self.base[0], dict(zip(self.names, weights)), (x,))

        return torch.vmap(one, in_dims=(0, 0))(tuple(self.stacked), x).sum(0)


def test_members_mapped_over_their_own_inputs_stay_in_place():
    # a mapped input that is data (PyTorch's recipe with a minibatch per model): the members
    # differ by more than their weights, so they stay, as fixed blocks, and each member's
    # hidden units still permute on their own. Before: one permutation for every member's
    # hidden units, the members fixed
    model, x = model_(_OwnInputs).double(), x_(3, 5, 4).double()
    spec, report = trace_with_report(model, x, channel_dim=-1)
    assert report.verification.ok
    members, hidden = spec["stacked.0"].axes[0], Inner("stacked.0", 0)
    assert spec["stacked.0"].axes == (members, hidden, "in")
    assert spec["stacked.2"].axes == (members, "out", hidden)
    (name,) = spec.blocks
    assert spec.blocks[name].fixed and spec.spaces["stacked.0"].blocks == name
    assert spec.block_shape("stacked.0") == (3, 6)
    # member 1's units alone moved: the function is unchanged
    perm = torch.arange(18)
    perm[6:12] = perm[6:12].roll(1)
    moved = Permutation(spec, {"stacked.0": perm}).apply_state_dict(model.state_dict())
    torch.testing.assert_close(functional_call(model, moved, (x,)), model(x))
    # members 0 and 1 exchanged whole (each still reads its own minibatch): not a symmetry
    whole = torch.arange(18).reshape(3, 6)[[1, 0, 2]].flatten()
    swap = Permutation(spec, {members: torch.tensor([1, 0, 2]), "stacked.0": whole})
    moved = swap.apply_state_dict(model.state_dict())
    assert (functional_call(model, moved, (x,)) - model(x)).abs().max() > 1e-3
    for mode in ("np", "hnp"):
        s = spec.with_mode(mode)
        assert_equivariant(nfc.NFLinear(s, 1, 2).double(), s, trials=2)
