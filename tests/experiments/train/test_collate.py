"""Tests of :mod:`nfncompile.experiments.train.collate`: batching weight-space items."""

from __future__ import annotations

from nfncompile.experiments.train import collate
from nfncompile.features import WeightSpaceFeatures
from tests.experiments.train.helpers import weight_items


def test_collate_batches_weight_space_items():
    for as_features in (True, False):
        inputs, targets = collate(weight_items(5, 0, as_features))
        assert isinstance(inputs, WeightSpaceFeatures) and inputs.batch_size == 5
        assert inputs["w"].shape == (5, 1, 2, 3) and targets.shape == (5,)
