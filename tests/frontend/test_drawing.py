"""nfncompile.frontend.drawing: the picture of the symmetry graph."""

from __future__ import annotations

import pytest

from nfncompile.frontend.drawing import draw_symmetry_graph
from nfncompile.frontend.tracing import trace_with_report
from tests.frontend.helpers import CatSplit, model_, x_


def test_drawing_from_a_report_or_a_bare_graph(tmp_path):
    pytest.importorskip("matplotlib")
    _, report = trace_with_report(model_(CatSplit), x_(3, 4))
    path = tmp_path / "graph.png"
    draw_symmetry_graph(report, path)
    assert path.stat().st_size > 1000
    draw_symmetry_graph(report.graph)  # from a bare graph too
    draw_symmetry_graph(report.derivation)
    import matplotlib.pyplot as plt

    plt.close("all")
