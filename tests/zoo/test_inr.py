"""Tests of :mod:`nfncompile.zoo.inr`: the batched SIREN fits render their images."""

from __future__ import annotations

import pytest
import torch

import nfncompile as nfc
from nfncompile.zoo import load_zoo
from nfncompile.zoo.data import load_digits_tensors, pixel_grid, psnr


def test_inr_zoo_renders_its_images_with_the_recorded_psnr(inr_dir, inr_config):
    zoo = load_zoo(inr_dir)
    assert len(zoo) == 40 and zoo.kind == "inr"
    images, labels = load_digits_tensors()
    assert zoo.column("image_index") == list(range(40))
    assert zoo.column("label") == labels[:40].tolist()
    grid = pixel_grid(8)
    for i, row in enumerate(zoo.metadata):
        with torch.no_grad():
            rendered = zoo.model(i)(grid).reshape(1, 64)
        target = images[row["image_index"]].reshape(1, 64)
        assert float(psnr(rendered, target)) == pytest.approx(row["psnr"], abs=1e-3)
    spec = nfc.trace(inr_config.build(), torch.zeros(inr_config.input_shape))
    assert zoo.features(spec).batch_size == 40
