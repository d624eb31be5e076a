"""nfncompile.frontend.rules.scatter: writes at positions an index tensor gives (a graph
network's message passing)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nfncompile as nfc
from nfncompile.frontend.tracing import trace_with_report
from nfncompile.testing import assert_equivariant
from tests.frontend.helpers import model_, x_

EDGES = torch.tensor([[0, 1, 2, 3, 4, 0], [1, 2, 3, 4, 0, 2]])


def _aggregate(how: str, h: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Each edge's source features summed (or reduced) into its target node."""
    src, dst = edges
    if how == "index_add_":  # GraphSAGE written by hand
        return torch.zeros_like(h).index_add_(0, dst, h[src])
    if how == "index_add":
        return torch.index_add(torch.zeros_like(h), 0, dst, h[src])
    if how == "index_select":  # the usual form of a source-node read
        return torch.zeros_like(h).index_add_(0, dst, h.index_select(0, src))
    if how == "take_along_dim":
        return torch.zeros_like(h).index_add_(0, dst, torch.take_along_dim(h, src[:, None], 0))
    if how == "index_put":
        return torch.zeros_like(h).index_put((dst,), h[src], accumulate=True)
    index = dst[:, None].expand(-1, h.shape[1])
    if how == "scatter_add_":  # GIN
        return h.new_zeros(h.shape).scatter_add_(0, index, h[src])
    if how == "scatter_reduce":
        return torch.zeros_like(h).scatter_reduce(0, index, h[src], "amax", include_self=False)
    if how == "index_copy":
        return h.index_copy(0, torch.tensor([4, 3, 2, 1, 0]), h.flip(0))
    if how == "index_fill":
        return h.index_fill(0, dst[:2], 0.0)
    # an index that differs along the features: they meet positions
    index = torch.stack([dst, dst.roll(1), dst.roll(2), dst, dst.roll(1), dst.roll(3)], dim=1)
    return torch.zeros_like(h).scatter_add(0, index, h[src])


class _Layer(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.b = nn.Linear(3, 6), nn.Linear(2 * 6, 2)

    def forward(self, x, edges):
        h = torch.relu(self.a(x))
        return self.b(torch.cat([h, _aggregate(self.how, h, edges)], dim=1))


@pytest.mark.parametrize(
    "how",
    [
        "index_add_",
        "index_add",
        "index_select",
        "take_along_dim",
        "index_put",
        "scatter_add_",
        "scatter_reduce",
        "index_copy",
        "index_fill",
    ],
)
def test_features_written_at_node_positions_stay_free(how):
    # before: no rule; the probe cannot run on integer indices, so the features were fixed
    spec, report = trace_with_report(
        model_(lambda: _Layer(how)), (x_(5, 3), EDGES), channel_dim=(1, None)
    )
    assert report.verification.ok and not report.broken and not report.probes
    assert spec["b.weight"].axes[1] == ("a", "a") and spec.spaces["a"].size == 6
    assert_equivariant(nfc.NFLinear(spec, 1, 2).double(), spec, trials=2)


def test_an_index_that_differs_along_the_features_fixes_them():
    spec, report = trace_with_report(
        model_(lambda: _Layer("mixed")), (x_(5, 3), EDGES), channel_dim=(1, None)
    )
    assert report.verification.ok and spec["a.weight"].axes[0] is None
    assert any(b.reason == "writes at positions a tensor gives" for b in report.broken)
