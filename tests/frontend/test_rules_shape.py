"""nfncompile.frontend.rules.shape: concat, split, chunk, indexing and reshapes."""

from __future__ import annotations

import pytest
import torch

import nfncompile as nfc
from nfncompile.frontend.tracing import trace_with_report
from tests.frontend.helpers import CatSplit, TwoLinear, model_, x_


def test_cat_split_chunk_give_composite_axes():
    spec, report = trace_with_report(model_(CatSplit), x_(3, 4))
    # c's 7 outputs: [0:3] feed d, [3:5] are added to d's output, [5:7] are summed
    assert spec["c.weight"].axes == (("c/0", "out", "c/1"), ("a", "b"))
    assert [spec.spaces[n].size for n in ("a", "b", "c/0", "c/1", "out")] == [6, 5, 3, 2, 2]
    assert spec["d.weight"].axes == ("out", "c/0")
    assert report.verification.ok


class FirstChannelSpecial(TwoLinear):
    """Uses h[:, 0] specially: that neuron is fixed, the other 5 still permute."""

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h) + h[:, 0].unsqueeze(1)


class BroadcastFirst(FirstChannelSpecial):
    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h + h[:, :1] * 2)


@pytest.mark.parametrize("cls", [FirstChannelSpecial, BroadcastFirst])
def test_position_dependent_indexing_fixes_one_neuron(cls):
    spec, report = trace_with_report(model_(cls), x_(5, 4))
    # neuron 0 of a's output is fixed (an int piece), the other 5 form a space
    assert spec["a.weight"].axes == ((1, "a"), "in")
    assert spec.spaces["a"].size == 5
    assert [b.neurons for b in report.broken] == [["a[0:1]"]]
    assert report.verification.ok
    # the hand-written spec that ignores the special neuron is caught by verify
    wrong = nfc.WeightSpaceSpec.from_dict(_relabel(spec.to_dict(), (1, "a"), "a6", 6))
    bad = nfc.verify(model_(cls), wrong, x_(5, 4))
    assert not bad.ok and "a6" in bad.failed


def _relabel(d: dict, old, new: str, size: int) -> dict:
    d["spaces"] = {k: v for k, v in d["spaces"].items() if k != "a"}
    d["spaces"][new] = {"size": size, "role": "hidden"}
    old = list(old) if isinstance(old, tuple) else old
    for p in d["params"].values():
        p["axes"] = [new if a == old else a for a in p["axes"]]
    return d
