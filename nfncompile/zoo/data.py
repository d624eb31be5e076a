"""The embedded data set: scikit-learn's 8x8 handwritten digits, as torch tensors.

Everything nfncompile trains offline (model zoos, INR zoos, task targets) is generated from
:func:`sklearn.datasets.load_digits`: 1797 grey 8x8 images of the digits 0-9, shipped inside
scikit-learn, so nothing is downloaded. (The file scikit-learn ships is read directly when it
is where scikit-learn keeps it, which spares every zoo worker the import of scikit-learn.)

Examples
--------
>>> images, labels = load_digits_tensors()
>>> images.shape, images.dtype, labels.shape, labels.dtype
(torch.Size([1797, 1, 8, 8]), torch.float32, torch.Size([1797]), torch.int64)
>>> float(images.min()), float(images.max())
(0.0, 1.0)
>>> train, test = split_indices(10, (0.8, 0.2), seed=0)
>>> len(train), len(test)
(8, 2)
>>> pixel_grid(2)
tensor([[-1., -1.],
        [ 1., -1.],
        [-1.,  1.],
        [ 1.,  1.]])
"""

from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError

__all__ = [
    "NUM_DIGITS",
    "NUM_CLASSES",
    "IMAGE_SIZE",
    "load_digits_tensors",
    "split_indices",
    "pixel_grid",
    "dilate",
    "FOOTPRINTS",
    "psnr",
]

#: Number of images in the digits data set.
NUM_DIGITS = 1797
#: Number of classes (the digits 0-9).
NUM_CLASSES = 10
#: Side of the square images.
IMAGE_SIZE = 8


def _digits_file() -> Path | None:
    """scikit-learn's ``digits.csv.gz``, located without importing scikit-learn (slow)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    return path if path.is_file() else None


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    path = _digits_file()
    if path is not None:
        # what load_digits does, minus importing scikit-learn (seconds, in every worker)
        table = np.loadtxt(path, delimiter=",")
        pixels, target = table[:, :-1], table[:, -1]
    else:  # pragma: no cover - a scikit-learn that stores the file elsewhere
        from sklearn.datasets import load_digits

        bunch = load_digits()
        pixels, target = bunch.data, bunch.target
    images = (pixels.astype(np.float32) / np.float32(16.0)).reshape(-1, 1, 8, 8)
    labels = target.astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """The 1797 digits as ``(images, labels)``.

    The file is parsed once per process (cached); every call returns fresh tensors, so a
    caller may modify them in place.

    Returns
    -------
    images : Tensor
        ``float32``, shape ``(1797, 1, 8, 8)``, values in ``[0, 1]`` (the raw 0-16 grey
        levels divided by 16).
    labels : Tensor
        ``int64``, shape ``(1797,)``, values 0-9.

    Examples
    --------
    >>> images, labels = load_digits_tensors()
    >>> labels[:10].tolist()
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    """
    images, labels = _digits_arrays()
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.copy())


def split_indices(n: int, fractions: Sequence[float], seed: int) -> list[torch.Tensor]:
    """Split ``range(n)`` into disjoint random parts, deterministically by ``seed``.

    Parameters
    ----------
    n : int
        Number of items.
    fractions : sequence of float
        The size of each part as a fraction of ``n``, each in ``(0, 1]``, summing to at most 1.
        When they sum to 1 every item is assigned (sizes are rounded by largest remainder);
        otherwise each part has ``floor(fraction * n)`` items and the rest are left out.
    seed : int
        Seeds the shuffle: the same arguments always give the same parts.

    Returns
    -------
    list of LongTensor
        One sorted index tensor per fraction.

    Raises
    ------
    ConfigError
        When ``n`` is negative or the fractions are empty, out of range or sum above 1.

    Examples
    --------
    >>> [p.tolist() for p in split_indices(6, (0.5, 0.5), seed=1)]
    [[1, 2, 5], [0, 3, 4]]
    >>> split_indices(6, (0.5, 0.7), seed=1)
    Traceback (most recent call last):
    ...
    nfncompile.errors.ConfigError: split_indices: fractions (0.5, 0.7) sum to 1.2 > 1
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ConfigError(f"split_indices: n must be a non-negative int, got {n!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"split_indices: seed must be an int, got {seed!r}")
    fractions = tuple(fractions)
    if not fractions:
        raise ConfigError("split_indices: fractions must not be empty")
    for i, f in enumerate(fractions):
        if not isinstance(f, (int, float)) or isinstance(f, bool) or not 0 < f <= 1:
            raise ConfigError(f"split_indices: fractions[{i}] must be in (0, 1], got {f!r}")
    total = math.fsum(fractions)
    if total > 1 + 1e-9:
        raise ConfigError(f"split_indices: fractions {fractions} sum to {total:g} > 1")
    exact = [f * n for f in fractions]
    sizes = [math.floor(x) for x in exact]
    if abs(total - 1) <= 1e-9:
        # largest remainder: hand the leftover items to the parts that lost the most
        order = sorted(range(len(sizes)), key=lambda i: (sizes[i] - exact[i], i))
        for i in order[: n - sum(sizes)]:
            sizes[i] += 1
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    parts, start = [], 0
    for size in sizes:
        parts.append(perm[start : start + size].sort().values)
        start += size
    return parts


def pixel_grid(size: int = IMAGE_SIZE) -> torch.Tensor:
    """Pixel-centre coordinates of a ``size x size`` image, for SIRENs.

    Parameters
    ----------
    size : int
        Side of the square image (at least 2).

    Returns
    -------
    Tensor
        ``float32``, shape ``(size * size, 2)``, values in ``[-1, 1]``. Row ``r * size + c``
        holds ``(x, y)`` for pixel row ``r`` and column ``c`` (``x`` follows the column), so it
        lines up with ``image.reshape(-1)``.

    Examples
    --------
    >>> grid = pixel_grid(8)
    >>> grid.shape
    torch.Size([64, 2])
    >>> grid[1].tolist()  # row 0, column 1
    [-0.7142857313156128, -1.0]
    """
    if not isinstance(size, int) or isinstance(size, bool) or size < 2:
        raise ConfigError(f"pixel_grid: size must be an int >= 2, got {size!r}")
    axis = torch.linspace(-1.0, 1.0, size)
    rows, cols = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([cols.reshape(-1), rows.reshape(-1)], dim=1)


#: Structuring elements of :func:`dilate`.
FOOTPRINTS = ("square", "cross")


def dilate(images: torch.Tensor, size: int = 3, footprint: str = "square") -> torch.Tensor:
    """Grey-scale morphological dilation with a flat structuring element.

    Every pixel becomes the maximum over its neighbourhood (clipped at the border), like
    ``scipy.ndimage.grey_dilation``. ``footprint="square"`` is the ``size x size`` square;
    ``"cross"`` is the plus sign of the pixel's row and column within ``size // 2`` (for
    ``size = 3`` the pixel and its four neighbours), a milder dilation that thickens strokes
    without filling an 8x8 digit. The INR-editing task uses it to make targets.

    Parameters
    ----------
    images : Tensor
        Shape ``(..., H, W)``, floating point.
    size : int
        Odd side of the structuring element.
    footprint : {"square", "cross"}

    Returns
    -------
    Tensor
        Same shape and dtype as ``images``.

    Examples
    --------
    >>> x = torch.zeros(1, 1, 4, 4)
    >>> x[0, 0, 1, 1] = 1.0
    >>> dilate(x)[0, 0]
    tensor([[1., 1., 1., 0.],
            [1., 1., 1., 0.],
            [1., 1., 1., 0.],
            [0., 0., 0., 0.]])
    >>> dilate(x, footprint="cross")[0, 0]
    tensor([[0., 1., 0., 0.],
            [1., 1., 1., 0.],
            [0., 1., 0., 0.],
            [0., 0., 0., 0.]])
    """
    if not isinstance(size, int) or isinstance(size, bool) or size < 1 or size % 2 == 0:
        raise ConfigError(f"dilate: size must be a positive odd int, got {size!r}")
    if footprint not in FOOTPRINTS:
        raise ConfigError(
            f"dilate: unknown footprint {footprint!r}; valid: {', '.join(FOOTPRINTS)}"
        )
    if not isinstance(images, torch.Tensor) or images.dim() < 2:
        raise ConfigError("dilate: images must be a tensor of shape (..., H, W)")
    if not images.is_floating_point():
        raise ConfigError(f"dilate: images must be floating point, got {images.dtype}")
    lead, (h, w) = images.shape[:-2], images.shape[-2:]
    flat = images.reshape(-1, 1, h, w)
    r = size // 2
    if footprint == "square":
        out = F.max_pool2d(flat, size, stride=1, padding=r)
    else:
        rows = F.max_pool2d(flat, (1, size), stride=1, padding=(0, r))
        cols = F.max_pool2d(flat, (size, 1), stride=1, padding=(r, 0))
        out = torch.maximum(rows, cols)
    return out.reshape(*lead, h, w)


def psnr(prediction: torch.Tensor, target: torch.Tensor, peak: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, over the last dims after the first.

    Parameters
    ----------
    prediction, target : Tensor
        Shape ``(B, ...)``; the mean squared error is taken per item of the batch.
    peak : float
        The largest possible value (1 for images in ``[0, 1]``).

    Returns
    -------
    Tensor
        Shape ``(B,)``: ``10 * log10(peak**2 / mse)``.

    Examples
    --------
    >>> psnr(torch.zeros(1, 4), torch.full((1, 4), 0.1))
    tensor([20.])
    """
    mse = (prediction - target).pow(2).reshape(prediction.shape[0], -1).mean(1)
    return 10.0 * torch.log10(peak**2 / mse)
