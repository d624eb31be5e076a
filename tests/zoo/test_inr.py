"""Tests of :mod:`nfncompile.zoo.inr`: the batched SIREN fits render their images."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import nfncompile as nfc
from nfncompile.zoo import load_zoo
from nfncompile.zoo.data import load_digits_tensors, pixel_grid, psnr
from nfncompile.zoo.inr import make_inr_shard


def test_inr_zoo_renders_its_images_with_the_recorded_psnr(inr_dir, inr_config):
    zoo = load_zoo(inr_dir)
    assert len(zoo) == 40 and zoo.kind == "inr"
    assert inr_config.views_per_image == 2 and inr_config.pixel_range == (-1.0, 1.0)
    images, labels = load_digits_tensors()
    assert zoo.column("image_index") == [i // 2 for i in range(40)]
    assert zoo.column("view") == [i % 2 for i in range(40)]
    assert zoo.column("label") == labels[torch.arange(40) // 2].tolist()
    grid = pixel_grid(8)
    for i, row in enumerate(zoo.metadata):
        with torch.no_grad():
            rendered = zoo.model(i)(grid).reshape(1, 64)
        target = images[row["image_index"]].reshape(1, 64) * 2 - 1  # pixel_range [-1, 1]
        assert float(psnr(rendered, target, peak=2.0)) == pytest.approx(row["psnr"], abs=1e-3)
    spec = nfc.trace(inr_config.build(), torch.zeros(inr_config.input_shape))
    assert zoo.features(spec).batch_size == 40


def test_views_of_one_image_start_from_independent_inits_with_phase_biases(inr_config):
    config = dataclasses.replace(inr_config, steps=1, learning_rate=1e-12)
    tensors, rows = make_inr_shard(config, 0)
    assert [r["image_index"] for r in rows[:4]] == [0, 0, 1, 1]
    bias = tensors["hidden.0.bias"]
    assert not torch.allclose(bias[0], bias[1])  # two views of image 0 differ
    # phases: w0 * b within (-pi, pi) and spread over it
    phase = bias * config.w0
    assert float(phase.abs().max()) <= torch.pi + 1e-4
    assert float(phase.abs().max()) > 2.5
    plain = make_inr_shard(dataclasses.replace(config, phase_bias=False), 0)[0]
    assert float((plain["hidden.0.bias"] * config.w0).abs().max()) > 2 * torch.pi
