"""nfncompile.frontend.rules.elementwise and reduce: position-dependent ops fix the channels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nfncompile.frontend.tracing import trace_with_report
from tests.frontend.helpers import TwoLinear, model_, x_


class Arange(TwoLinear):
    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h * torch.arange(6, dtype=h.dtype))


class Roll(TwoLinear):
    def forward(self, x):
        return self.b(torch.roll(torch.relu(self.a(x)), 1, dims=1))


class FlipLR(TwoLinear):
    def forward(self, x):
        return self.b(torch.fliplr(torch.relu(self.a(x))))


@pytest.mark.parametrize(
    "cls, op", [(Arange, "operator.mul"), (Roll, "torch.roll"), (FlipLR, "torch.fliplr")]
)
def test_channel_position_dependent_ops_fix_the_channels(cls, op):
    spec, report = trace_with_report(model_(cls), x_(5, 4))
    assert spec["a.weight"].axes == (None, "in")
    assert spec["b.weight"].axes == ("out", None)
    assert [s.name for s in spec.spaces.values()] == ["in", "out"]
    assert len(report.broken) == 1 and report.broken[0].op.startswith(op)
    assert report.broken[0].count == 6
    assert report.verification.ok
    assert op in str(report)


class _Gated(nn.Module):
    """S4's output projection: a 1x1 conv to ``2H`` channels, then ``nn.GLU(dim=-2)``."""

    def __init__(self, functional: bool) -> None:
        super().__init__()
        self.functional = functional
        self.a, self.proj, self.b = nn.Conv1d(3, 4, 1), nn.Conv1d(4, 8, 1), nn.Conv1d(4, 2, 1)

    def forward(self, x):
        h = torch.relu(self.a(x))
        g = F.glu(self.proj(h), dim=1) if self.functional else nn.GLU(dim=-2)(self.proj(h))
        return self.b(h + g)


@pytest.mark.parametrize("functional", [False, True])
def test_glu_ties_each_unit_to_its_gate(functional):
    # no rule: probed, every channel permuted freely failed, and the projection and the
    # residual stream were fixed
    spec, report = trace_with_report(model_(lambda: _Gated(functional)), x_(2, 3, 5))
    assert spec["proj.weight"].axes[:2] == (("a", "a"), "a") and spec["b.weight"].axes[1] == "a"
    assert report.verification.ok and not report.probes


class _Branchy(nn.Module):
    """Returns a tuple and branches on its input's values: kept as one call."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x):
        return (self.fc(x), x) if x.sum() > 0 else (self.fc(x), -x)


class JoinedTuples(TwoLinear):
    """LED's ``outputs = (attn_output,) + self_outputs[1:]`` on a kept call's tuple."""

    def __init__(self, joined: bool) -> None:
        super().__init__()
        self.joined, self.kept = joined, _Branchy()

    def forward(self, x):
        outs = self.kept(self.a(x))
        outs = (self.b(outs[0]),) + outs[1:] if self.joined else (self.b(outs[0]), outs[1])
        return outs[0] + outs[1].sum(-1, keepdim=True)


def test_tuples_joined_by_plus_join_their_labels():
    # before: operator.add was read as a tensor add: "'tuple' object has no attribute 'shape'"
    joined, report = trace_with_report(model_(lambda: JoinedTuples(True)), x_(5, 4))
    plain, _ = trace_with_report(model_(lambda: JoinedTuples(False)), x_(5, 4))
    assert report.verification.ok and joined.to_dict() == plain.to_dict()


#: ops that had no rule and were probed. A probe's random inputs leave the domain of some
#: (erfinv's (-1, 1)): it returned NaN, and the probe fixed every neuron; others read
#: neurons in runs that a probe cannot describe (``tile``, ``outer``, ``split_with_sizes``)
_RULED = {
    "sgn_erfinv": lambda h, g: torch.sgn(h) * torch.erfinv(g.tanh() * 0.9) + g.tanh().erfinv(),
    "xlogy_logaddexp": lambda h, g: torch.xlogy(h, g.abs()) + torch.logaddexp(h, g),
    "isinf_where": lambda h, g: h.where(~torch.isinf(h), g) + g.isnan(),
    "clone_detach": lambda h, g: torch.clone(h) + torch.detach(g) + h.fmod(2.0).trunc(),
    "special": lambda h, g: torch.special.ndtr(h) + torch.special.logit(g.sigmoid()),
    "tile": lambda h, g: h.tile(1, 2)[:, :6] + torch.tile(g, (1,)),
    "unflatten": lambda h, g: torch.unflatten(h, 1, (2, 3)).flatten(1) + g,
    "outer": lambda h, g: torch.outer(h[0], g[0]).sum(0) + torch.ger(g[1], h[1]).sum(1) + h,
    "split_with_sizes": lambda h, g: torch.cat(h.split_with_sizes([2, 4], 1), 1) + g,
    "hstack": lambda h, g: torch.hstack([h, g])[:, :6] + torch.vstack([g, h])[:5],
}


class _Ruled(TwoLinear):
    """``b(op(relu(a(x)), c(x)))``: ``a`` and ``c`` meet in ``op``."""

    def __init__(self, how: str) -> None:
        super().__init__(how)
        self.c = nn.Linear(4, 6)

    def forward(self, x):
        return self.b(_RULED[self.how](torch.relu(self.a(x)), self.c(x)))


@pytest.mark.parametrize("how", list(_RULED))
def test_ops_that_were_probed_have_a_rule(how):
    spec, report = trace_with_report(model_(lambda: _Ruled(how)), x_(5, 4))
    assert report.verification.ok and not report.probes and not report.broken
    hidden = spec["a.weight"].axes[0]
    assert hidden is not None and spec["b.weight"].axes[1] == hidden
    assert spec["c.weight"].axes[0] == hidden


class _Dropped(TwoLinear):
    """speechbrain's Tacotron2 prenet: dropout on in eval too (``training=True``)."""

    def forward(self, x):
        h = torch.relu(self.a(x))
        if self.how == "on":
            h = F.dropout(h, 0.5, training=True)
        elif self.how == "default":
            h = F.dropout(h, 0.5)  # F.dropout drops unless told otherwise
        elif self.how == "off":
            h = F.dropout(h, 0.5, training=self.training)
        elif self.how == "zero":
            h = F.dropout(h, 0.0, True)
        elif self.how == "alpha":
            h = F.alpha_dropout(h, 0.5)  # alpha dropout does not, unless told
        return self.b(h)


@pytest.mark.parametrize(
    ("how", "free"),
    [("on", False), ("default", False), ("off", True), ("zero", True), ("alpha", True)],
)
def test_dropout_that_drops_makes_its_input_depend_on_position(how, free):
    # before: dropout was elementwise whatever its arguments, and a derived symmetry that
    # an always-on dropout breaks failed its own check (SymmetryError)
    spec, report = trace_with_report(model_(lambda: _Dropped(how)), x_(5, 4))
    assert report.verification.ok
    assert (spec["a.weight"].axes[0] is not None) == free


class QVBias(nn.Module):
    """BEiT's attention (timm, mmpretrain): the qkv bias ``cat((q_bias, zeros_like(v_bias),
    v_bias))``, or ``torch.zeros`` for the keys, applied with ``F.linear``."""

    def __init__(self, keys: str) -> None:
        super().__init__()
        self.keys = keys
        self.inp, self.qkv, self.proj = (
            nn.Linear(3, 8),
            nn.Linear(8, 24, bias=False),
            nn.Linear(8, 2),
        )
        self.q_bias, self.v_bias = nn.Parameter(torch.randn(8)), nn.Parameter(torch.randn(8))

    def forward(self, x):
        h = self.inp(x)
        k_bias = torch.zeros_like(self.v_bias) if self.keys == "zeros_like" else torch.zeros(8)
        qkv = F.linear(h, self.qkv.weight, torch.cat((self.q_bias, k_bias, self.v_bias)))
        q, k, v = qkv.reshape(*h.shape[:2], 3, 8).unbind(2)
        return self.proj((q @ k.transpose(-2, -1)).softmax(-1) @ v)


@pytest.mark.parametrize("keys", ["zeros_like", "zeros"])
def test_a_zero_bias_made_like_another_imposes_nothing(keys):
    # before: zeros_like(v_bias) carried v_bias's labels, tying the keys to the values
    spec, report = trace_with_report(model_(lambda: QVBias(keys)), x_(2, 5, 3), channel_dim=-1)
    rows = spec["qkv.weight"].axes[0]
    assert len(set(rows)) == 2 and rows[0] == rows[1] != rows[2]  # q and k together, v apart
    assert report.verification.ok
