"""Tests of :mod:`nfncompile.zoo.data`: the embedded digits, splits, pixel grids and dilation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import grey_dilation

from nfncompile.errors import ConfigError
from nfncompile.zoo.data import (
    NUM_DIGITS,
    dilate,
    load_digits_tensors,
    pixel_grid,
    psnr,
    split_indices,
)


def test_digits_shapes_range_and_labels():
    images, labels = load_digits_tensors()
    assert images.shape == (NUM_DIGITS, 1, 8, 8) and images.dtype == torch.float32
    assert labels.shape == (NUM_DIGITS,) and labels.dtype == torch.int64
    assert images.min() == 0 and images.max() == 1
    # the raw data are grey levels 0..16
    assert torch.equal(images * 16, (images * 16).round())
    assert torch.equal(torch.bincount(labels) > 170, torch.ones(10, dtype=torch.bool))


def test_digits_calls_return_independent_tensors():
    images, labels = load_digits_tensors()
    images.zero_()
    labels.fill_(-1)
    again, labels2 = load_digits_tensors()
    assert again.max() == 1 and labels2.min() == 0


@pytest.mark.parametrize("n", [0, 1, 7, 1797])
def test_split_partitions_everything_when_fractions_sum_to_one(n):
    parts = split_indices(n, (0.6, 0.3, 0.1), seed=3)
    everything = torch.cat(parts).sort().values
    assert torch.equal(everything, torch.arange(n))
    for part, frac in zip(parts, (0.6, 0.3, 0.1)):
        assert abs(len(part) - frac * n) < 1
        assert torch.equal(part, part.sort().values)


def test_split_is_deterministic_by_seed():
    a = split_indices(100, (0.5, 0.5), seed=0)
    b = split_indices(100, (0.5, 0.5), seed=0)
    c = split_indices(100, (0.5, 0.5), seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_split_leaves_rest_out_when_fractions_sum_below_one():
    train, test = split_indices(10, (0.25, 0.25), seed=0)
    assert len(train) == 2 and len(test) == 2
    assert not set(train.tolist()) & set(test.tolist())


@pytest.mark.parametrize(
    "n, fractions, match",
    [
        (10, (), "must not be empty"),
        (10, (0.0, 1.0), r"fractions\[0\]"),
        (10, (0.7, 0.7), "sum to 1.4 > 1"),
        (-1, (1.0,), "non-negative"),
        (10, (1.5,), r"fractions\[0\]"),
    ],
)
def test_split_rejects_bad_arguments(n, fractions, match):
    with pytest.raises(ConfigError, match=match):
        split_indices(n, fractions, seed=0)


def test_pixel_grid_lines_up_with_flattened_images():
    grid = pixel_grid(8)
    assert grid.shape == (64, 2) and grid.dtype == torch.float32
    assert grid.min() == -1 and grid.max() == 1
    image = torch.arange(64.0).reshape(8, 8)
    flat = image.reshape(-1)
    for r, c in [(0, 0), (0, 7), (3, 5), (7, 0)]:
        x, y = grid[r * 8 + c].tolist()
        assert x == pytest.approx(-1 + 2 * c / 7) and y == pytest.approx(-1 + 2 * r / 7)
        assert flat[r * 8 + c] == image[r, c]
    with pytest.raises(ConfigError, match="size"):
        pixel_grid(1)


@pytest.mark.parametrize("size", [3, 5])
def test_dilate_matches_scipy_grey_dilation(size):
    images, _ = load_digits_tensors()
    batch = images[:50]
    ours = dilate(batch, size)
    expected = np.stack([grey_dilation(im[0].numpy(), size=(size, size)) for im in batch])[:, None]
    assert ours.shape == batch.shape
    assert torch.equal(ours, torch.from_numpy(expected))
    assert (ours >= batch).all() and (ours > batch).any()


@pytest.mark.parametrize("size", [3, 5])
def test_cross_dilation_matches_scipy_with_a_plus_footprint(size):
    images, _ = load_digits_tensors()
    batch = images[:50]
    plus = np.zeros((size, size), dtype=bool)
    plus[size // 2, :] = plus[:, size // 2] = True
    expected = np.stack([grey_dilation(im[0].numpy(), footprint=plus) for im in batch])[:, None]
    ours = dilate(batch, size, footprint="cross")
    assert torch.equal(ours, torch.from_numpy(expected))
    assert (ours <= dilate(batch, size)).all() and (ours < dilate(batch, size)).any()


def test_dilate_keeps_leading_dims_and_checks_its_arguments():
    x = torch.rand(2, 3, 8, 8)
    assert dilate(x).shape == x.shape
    assert torch.equal(dilate(x, 1), x)
    with pytest.raises(ConfigError, match="odd"):
        dilate(x, 2)
    with pytest.raises(ConfigError, match="floating"):
        dilate(torch.zeros(8, 8, dtype=torch.long))
    with pytest.raises(ConfigError, match="unknown footprint 'disk'; valid: square, cross"):
        dilate(x, 3, footprint="disk")


def test_psnr():
    target = torch.zeros(2, 64)
    pred = torch.stack([torch.full((64,), 0.1), torch.full((64,), 0.01)])
    assert torch.allclose(psnr(pred, target), torch.tensor([20.0, 40.0]))


def test_digits_are_those_of_sklearn_load_digits():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images, labels = load_digits_tensors()
    assert torch.equal(images[:, 0] * 16, torch.from_numpy(bunch.images).float())
    assert torch.equal(labels, torch.from_numpy(bunch.target).long())
