"""Tests of :mod:`nfncompile.experiments.tasks.inr_editing`: batched SIREN rendering."""

from __future__ import annotations

import torch


def test_render_matches_the_siren_and_is_permutation_invariant():
    """Batched functional rendering equals each SIREN's own forward, and a hidden-neuron
    permutation (what permutation augmentation applies) leaves the rendering unchanged."""
    from nfncompile.architectures import siren
    from nfncompile.experiments.tasks.augment import permutation_augment
    from nfncompile.experiments.tasks.datasets import ParamScale
    from nfncompile.experiments.tasks.inr_editing import render
    from nfncompile.features import WeightSpaceFeatures
    from nfncompile.frontend.tracing import trace
    from nfncompile.zoo.data import pixel_grid

    torch.manual_seed(0)
    nets = [siren(2, (8, 8), 1) for _ in range(3)]
    spec = trace(nets[0], torch.randn(2, 2))
    feats = WeightSpaceFeatures.from_state_dicts(spec, [n.state_dict() for n in nets])
    scale = ParamScale(feats)
    grid = pixel_grid(8)
    pix = render(nets[0], scale, scale.normalize(feats), grid)
    for b, net in enumerate(nets):
        torch.testing.assert_close(pix[b], net(grid).reshape(-1))
    augment = permutation_augment(spec, "hnp")
    moved, _ = augment((feats, torch.zeros(3)), torch.Generator().manual_seed(1))
    assert not torch.equal(moved["hidden.0.weight"], feats["hidden.0.weight"])
    torch.testing.assert_close(
        render(nets[0], scale, scale.normalize(moved), grid), pix, atol=1e-5, rtol=1e-5
    )
