"""Tests of :mod:`nfncompile.experiments.tasks.augment`: which neurons each augmentation group
moves, on the CNN the generalization zoo holds."""

from __future__ import annotations

import pytest
import torch

import nfncompile as nfc
from nfncompile.architectures import FACTORIES
from nfncompile.errors import FieldError
from nfncompile.experiments.tasks.augment import AugmentEval, augment_for, permutation_augment
from nfncompile.features import WeightSpaceFeatures


@pytest.fixture(scope="module")
def cnn():
    model = FACTORIES["small_cnn"](in_channels=1, channels=8).double()
    spec = nfc.trace(model, torch.randn(2, 1, 8, 8, dtype=torch.float64), verify=False)
    g = torch.Generator().manual_seed(0)
    feats = WeightSpaceFeatures(
        {
            p.name: torch.randn((4, 1, *p.shape), generator=g, dtype=torch.float64)
            for p in spec.params
        }
    )
    return spec, feats


def _rows_sorted(w: torch.Tensor) -> torch.Tensor:
    """Each output row's entries sorted: equal for two tensors whose rows match up to columns."""
    return w.sort(dim=-1).values


def test_hnp_keeps_the_classes_in_place_and_np_moves_them(cnn):
    spec, feats = cnn
    targets = torch.arange(4.0)
    g = torch.Generator().manual_seed(1)
    moved = 0
    for _ in range(5):
        out, tgt = permutation_augment(spec, "hnp")((feats, targets), g)
        torch.testing.assert_close(tgt, targets)
        # hidden neurons are permuted (the fc columns move) but class i stays row i
        torch.testing.assert_close(_rows_sorted(out["fc.weight"]), _rows_sorted(feats["fc.weight"]))
        torch.testing.assert_close(out["fc.bias"], feats["fc.bias"])
        assert not torch.equal(out["fc.weight"], feats["fc.weight"])
        out, _ = permutation_augment(spec, "np")((feats, targets), g)
        moved += not torch.equal(out["fc.bias"], feats["fc.bias"])
        # np permutes the classes; every network's bias entries are still its own
        torch.testing.assert_close(out["fc.bias"].sort(-1).values, feats["fc.bias"].sort(-1).values)
    assert moved == 5


def test_each_network_of_a_batch_gets_its_own_element(cnn):
    spec, feats = cnn
    same = WeightSpaceFeatures({k: v[:1].expand_as(v).clone() for k, v in feats.items()})
    out, _ = permutation_augment(spec, "hnp")((same, torch.zeros(4)), torch.Generator())
    assert len({tuple(out["conv1.bias"][b].reshape(-1).tolist()) for b in range(4)}) > 1


def test_augment_fields():
    ev = AugmentEval(augment=("nfn_hnp",), augment_mode="np")
    assert augment_for(ev, "nfn_np", None) is None
    assert callable(augment_for(ev, "nfn_hnp", None))
    with pytest.raises(FieldError, match="names a model twice"):
        AugmentEval(augment=("a", "a"))
