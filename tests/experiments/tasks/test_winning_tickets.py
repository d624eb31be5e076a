"""Tests of :mod:`nfncompile.experiments.tasks.winning_tickets`: mask selection and budgets."""

from __future__ import annotations

import torch


def test_select_mask_density_and_scope():
    from nfncompile.experiments.tasks.winning_tickets import select_mask

    g = torch.Generator().manual_seed(0)
    scores = {"a": torch.rand(3, 10, 10, generator=g), "b": torch.rand(3, 4, 5, generator=g) + 1}
    glob = select_mask(scores, 0.1, "global")
    assert [int(v) for v in (glob["a"].flatten(1).sum(1) + glob["b"].flatten(1).sum(1))] == [12] * 3
    assert torch.all(glob["b"].flatten(1).sum(1) == 12)  # b's scores are all larger
    layer = select_mask(scores, 0.1, "layer")
    assert torch.all(layer["a"].flatten(1).sum(1) == 10)
    assert torch.all(layer["b"].flatten(1).sum(1) == 2)
    kept = scores["a"][layer["a"].bool()].reshape(3, -1).min(1).values
    dropped = scores["a"].masked_fill(layer["a"].bool(), -1).flatten(1).max(1).values
    assert torch.all(kept > dropped)


def test_layer_budgets_follow_the_target_masks():
    from nfncompile.experiments.tasks.winning_tickets import layer_budgets, select_budget

    masks = {"a": torch.zeros(2, 10), "b": torch.zeros(2, 4)}
    masks["a"][0, :3] = 1
    masks["a"][1, :4] = 1
    masks["b"][:, 0] = 1
    budgets = layer_budgets(masks)
    assert budgets == {"a": 3, "b": 1}  # mean total 4.5 rounds (half to even) to 4
    masks["b"][:, 1:] = 1  # b keeps everything: 3.5 + 4 = 7.5 -> 8, a's half unit goes up
    assert layer_budgets(masks) == {"a": 4, "b": 4}
    picked = select_budget({"a": torch.arange(10.0)[None], "b": torch.arange(4.0)[None]}, budgets)
    assert picked["a"][0, -budgets["a"] :].sum() == budgets["a"]
