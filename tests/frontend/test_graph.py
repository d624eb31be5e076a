"""nfncompile.frontend.graph: the symmetry graph's size does not grow with width."""

from __future__ import annotations

from torch import nn

import nfncompile as nfc
from nfncompile.frontend import build_symmetry_graph
from nfncompile.frontend.fx import trace_module
from tests.frontend.helpers import model_, x_


def _wide(c: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, c, 1), nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c, 1, groups=c),
        nn.Conv2d(c, c, 1), nn.Dropout(0.1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Identity(), nn.Linear(c, 5),
    )  # fmt: skip


def test_graph_size_does_not_grow_with_width():
    sizes = []
    for c in (16, 2048):
        model = model_(lambda c=c: _wide(c))
        gm = trace_module(model, x_(1, 3, 2, 2), fake=False)
        g = build_symmetry_graph(gm, model)
        runs = [n for n in g.nodes if n[0] == "run"]
        sizes.append((len(runs), g.number_of_nodes(), g.number_of_edges()))
        spec = nfc.trace(model, x_(1, 3, 2, 2), fake=False, trials=1)
        assert [s.size for s in spec.spaces.values()] == [3, c, c, 5]
    assert sizes[0] == sizes[1]
    assert sizes[0][0] == 4  # in, conv 0, conv 4, linear 10: a handful of runs
