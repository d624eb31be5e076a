"""nfncompile.frontend.report: the symmetry report's text and the failure message."""

from __future__ import annotations

from nfncompile.frontend.tracing import trace_with_report
from tests.frontend.helpers import CatSplit, model_, x_


def test_report_lists_spaces_params_and_what_broke():
    spec, report = trace_with_report(model_(CatSplit), x_(3, 4))
    text = str(report)
    for name in spec.spaces:
        assert f"  {name}: size" in text
    assert "c.weight[0]" in text and "symmetry broken by: nothing" in text
    assert report.spec is spec and report.spaces is report.derivation.spaces
