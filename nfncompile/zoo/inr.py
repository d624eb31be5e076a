"""Fitting one shard of the INR zoo: a SIREN per digit image, every model of the shard at once.

Full-batch Adam (:class:`~.optim.BatchedOptimizer`) on the 64 pixels of each model's image,
the SIRENs stacked into one ``(models, P)`` tensor (:class:`~.stack.ParamStack`) and rendered
as batched matrix products; each model's PSNR is recorded.
"""

from __future__ import annotations

import math

import torch

from .config import INRZooConfig
from .data import load_digits_tensors, pixel_grid, psnr
from .optim import BatchedOptimizer
from .stack import ParamStack
from .store import shard_seed

__all__ = ["make_inr_shard"]


def _siren_render(
    p: dict[str, torch.Tensor], coords: torch.Tensor, depth: int, w0: float
) -> torch.Tensor:
    """``(k, P)`` pixel values of ``k`` SIRENs at ``coords`` ``(P, 2)``."""
    k = p["out.weight"].shape[0]
    h = coords.unsqueeze(0).expand(k, -1, -1)
    for i in range(depth):
        w, b = p[f"hidden.{i}.weight"], p[f"hidden.{i}.bias"]
        h = torch.sin(w0 * torch.baddbmm(b[:, None], h, w.transpose(1, 2)))
    out = torch.baddbmm(p["out.bias"][:, None], h, p["out.weight"].transpose(1, 2))
    return out.squeeze(-1)


def make_inr_shard(config: INRZooConfig, index: int) -> tuple[dict, list[dict]]:
    """Fit the SIRENs of shard ``index``: ``(key -> stacked weights, one metadata row each)``."""
    g = torch.Generator().manual_seed(shard_seed(config.seed, "inr", index))
    first = index * config.models_per_shard
    k = min(config.models_per_shard, config.num_models - first)
    ids = torch.arange(first, first + k)
    image_index = ids // config.views_per_image
    images, labels = load_digits_tensors()
    target = config.pixels(images[image_index].reshape(k, -1))
    coords = pixel_grid(8)
    flat = ParamStack(config.param_shapes)
    depth = len(config.hidden)
    theta = torch.empty(k, flat.size)
    widths = (2, *config.hidden, 1)
    for i in range(depth + 1):
        prefix = "out" if i == depth else f"hidden.{i}"
        fan_in = widths[i]
        w_bound = 1.0 / fan_in if i == 0 else math.sqrt(6.0 / fan_in) / config.w0
        b_bound = 1.0 / math.sqrt(fan_in)
        if config.phase_bias and i < depth:  # a sine layer: w0 * b uniform over a period
            b_bound = math.pi / config.w0
        for suffix, bound in (("weight", w_bound), ("bias", b_bound)):
            sl = flat.slices[f"{prefix}.{suffix}"]
            theta[:, sl] = (torch.rand(k, sl.stop - sl.start, generator=g) * 2 - 1) * bound
    lr = torch.full((k,), config.learning_rate, dtype=torch.float64)
    optimizer = BatchedOptimizer(k, flat.size, lr, 0.0)
    alive = torch.ones(k, dtype=torch.bool)
    for _ in range(config.steps):
        params = {n: v.detach().requires_grad_(True) for n, v in flat.views(theta).items()}
        pred = _siren_render(params, coords, depth, config.w0)
        loss = (pred - target).pow(2).mean(1)
        grads = torch.autograd.grad(loss.sum(), list(params.values()))
        optimizer.tick()
        with torch.no_grad():
            grad = flat.flatten(grads)
            alive &= torch.isfinite(loss)
            grad = torch.where(alive[:, None], grad, 0.0)
            optimizer.step(theta, slice(0, k), grad, alive, adam=True)
    with torch.no_grad():
        pred = _siren_render(flat.views(theta), coords, depth, config.w0)
        mse = (pred - target).pow(2).mean(1)
        low, high = config.pixel_range
        quality = psnr(pred, target, peak=high - low)
    rows = []
    for j in range(k):
        rows.append(
            {
                "id": first + j,
                "shard": index,
                "image_index": int(image_index[j]),
                "label": int(labels[image_index[j]]),
                "view": int(ids[j] % config.views_per_image),
                "steps": config.steps,
                "learning_rate": config.learning_rate,
                "mse": float(mse[j]),
                "psnr": float(quality[j]),
            }
        )
    return flat.stacked(theta), rows
