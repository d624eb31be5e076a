"""Tests of :mod:`nfncompile.zoo.reader`: loading a zoo, its rows, weights and features."""

from __future__ import annotations

import json

import pytest
import torch

import nfncompile as nfc
from nfncompile.errors import ZooError
from nfncompile.features import WeightSpaceFeatures
from nfncompile.zoo import load_zoo, shard_name
from tests.zoo.helpers import copy_zoo


def test_cnn_zoo_end_to_end(cnn_dir, cnn_config):
    zoo = load_zoo(cnn_dir)
    assert len(zoo) == 32 and zoo.kind == "cnn" and zoo.config == cnn_config
    assert [row["id"] for row in zoo.metadata] == list(range(32))
    row = zoo.metadata[5]
    assert row["shard"] == 0 and row["activation"] in ("relu", "tanh")
    assert cnn_config.learning_rate[0] <= row["learning_rate"] <= cnn_config.learning_rate[1]
    assert cnn_config.steps[0] <= row["steps"] <= cnn_config.steps[1]
    accuracies = zoo.column("test_accuracy")
    assert len(set(accuracies)) > 5 and min(accuracies) < 0.3 < max(accuracies)
    # the traced spec reads the stored weights by key
    spec = nfc.trace(cnn_config.build(), torch.zeros(cnn_config.input_shape))
    feats = zoo.features(spec, [3, 0, 17])
    assert feats.batch_size == 3 and tuple(feats) == spec.names
    again = WeightSpaceFeatures.from_state_dicts(spec, zoo.state_dicts([3, 0, 17]))
    assert all(torch.equal(feats[k], again[k]) for k in spec.names)
    assert torch.equal(feats["fc.bias"][1, 0], zoo.state_dicts(0)[0]["fc.bias"])
    manifest = json.loads((cnn_dir / "manifest.json").read_text())
    assert manifest["complete"] and manifest["seed"] == cnn_config.seed
    assert set(manifest["shards"]) == {shard_name(i) for i in range(4)}
    assert manifest["summary"]["test_accuracy"]["max"] == max(accuracies)


def test_missing_zoo_and_missing_shard(tmp_path, inr_dir):
    with pytest.raises(ZooError, match="no zoo here"):
        load_zoo(tmp_path)
    out = copy_zoo(inr_dir, tmp_path / "inr")
    (out / shard_name(2)).unlink()
    with pytest.raises(ZooError, match=f"{shard_name(2)}.*missing"):
        load_zoo(out)


def test_indices_and_columns(inr_dir):
    zoo = load_zoo(inr_dir)
    assert len(zoo.state_dicts()) == 40
    assert zoo.column("image_index", slice(5, 8)) == [2, 3, 3]  # two views per image
    assert zoo.column("label", torch.tensor([24, 2])) == [2, 1]
    last = zoo.arrays(-1)["out.bias"]
    assert torch.equal(last, zoo.arrays([39])["out.bias"])
    with pytest.raises(ZooError, match="out of range"):
        zoo.arrays([40])
    with pytest.raises(ZooError, match="no column 'accuracy'"):
        zoo.column("accuracy")
