"""Tests of :mod:`nfncompile.zoo.cnn`: the batched CNN trainer records what the weights do."""

from __future__ import annotations

import torch

from nfncompile.zoo import load_zoo
from nfncompile.zoo.data import load_digits_tensors


def test_cnn_weights_reproduce_recorded_test_accuracy(cnn_dir, cnn_config):
    zoo = load_zoo(cnn_dir)
    images, labels = load_digits_tensors()
    _, test = cnn_config.split()
    for i, row in enumerate(zoo.metadata):
        net = zoo.model(i)
        with torch.no_grad():
            correct = int((net(images[test]).argmax(1) == labels[test]).sum())
        recorded = round(row["test_accuracy"] * len(test))
        # the zoo computed it with batched matmuls, small_cnn with conv2d: rounding may differ
        assert abs(correct - recorded) <= 1, (i, correct, recorded)
