"""Tests of :mod:`nfncompile.experiments.tasks.report`: results.json and the markdown table."""

from __future__ import annotations

import math

import torch


def test_markdown_table_and_results_json(tmp_path):
    from nfncompile.experiments.tasks.report import (
        Results,
        markdown_table,
        read_results,
        write_results,
    )

    r = Results("t", {"a": {"x": 0.5, "n": 2}, "b": {"x": math.nan}}, {"k": torch.tensor(1.5)})
    write_results(r, tmp_path)
    data = read_results(tmp_path)
    assert data == {
        "task": "t",
        "metrics": {"a": {"x": 0.5, "n": 2}, "b": {"x": None}},
        "info": {"k": 1.5},
        "plots": [],
    }
    assert markdown_table(data).splitlines()[2:] == ["| a | 0.5000 | 2 |", "| b | - | - |"]
