"""Train many small networks of one architecture at once, optionally under fixed masks.

The networks' parameters are stacked along a leading dim and trained together with
:func:`torch.func.vmap` over :func:`torch.func.functional_call` and the zoo's batched Adam
(:class:`~nfncompile.zoo.BatchedOptimizer`), so a population of 64 digit MLPs trains in one
batched pass instead of 64 Python loops. The winning ticket task uses it for the dense runs
(magnitude-pruning targets) and for every masked run.

Examples
--------
>>> import torch
>>> from nfncompile.architectures import mlp
>>> net = mlp(4, (8,), 3)
>>> params = init_population(lambda: mlp(4, (8,), 3), 2, seed=0)
>>> params["fc1.weight"].shape
torch.Size([2, 8, 4])
>>> x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
>>> trained = train_population(net, params, (x, y), epochs=2, batch_size=16, lr=1e-2, seed=0)
>>> accuracy_population(net, trained, (x, y)).shape
torch.Size([2])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from ...progress import progress as progress_bar
from ...zoo import BatchedOptimizer, ParamStack

__all__ = [
    "init_population",
    "train_population",
    "accuracy_population",
    "maskable",
]

Params = dict[str, torch.Tensor]


def init_population(factory: Callable[[], nn.Module], n: int, *, seed: int) -> Params:
    """Stack the state_dicts of ``n`` fresh networks, network ``i`` seeded ``seed + i``."""
    sds = []
    for i in range(n):
        torch.manual_seed(seed + i)
        sds.append({k: v.detach().clone() for k, v in factory().state_dict().items()})
    return {k: torch.stack([sd[k] for sd in sds]) for k in sds[0]}


def maskable(name: str, tensor: torch.Tensor, leading: int = 1) -> bool:
    """Whether a parameter is pruned: weight matrices and kernels (2+ dims), not biases."""
    return tensor.dim() - leading >= 2


def _full_masks(params: Params, masks: Mapping[str, torch.Tensor] | None) -> Params:
    masks = masks or {}
    return {k: masks[k] if k in masks else torch.ones_like(v) for k, v in params.items()}


def train_population(
    net: nn.Module,
    params: Params,
    data: tuple[torch.Tensor, torch.Tensor],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    masks: Mapping[str, torch.Tensor] | None = None,
    weight_decay: float = 0.0,
    desc: str = "population",
    progress: bool | None = None,
) -> Params:
    """Train a population with Adam(W) on cross-entropy; masked entries stay zero.

    Parameters
    ----------
    net : nn.Module
        A module of the architecture (its own parameters are not used).
    params : dict
        ``name -> (N, *shape)`` initial parameters of the ``N`` networks.
    data : (Tensor, Tensor)
        Inputs and integer labels; every network sees the same seeded minibatches.
    epochs, batch_size : int
        Passes over ``data`` and minibatch size.
    lr, weight_decay : float
        AdamW step size and decoupled weight decay.
    seed : int
        Seeds the minibatch order.
    masks : dict, optional
        ``name -> (N, *shape)`` 0/1 masks; the forward pass uses ``params * masks``.
    desc, progress
        How progress over epochs is reported (:func:`nfncompile.progress.progress`).

    Returns
    -------
    dict
        The trained (masked) parameters.
    """
    x, y = data
    m = _full_masks(params, masks)
    stack = ParamStack({k: tuple(v.shape[1:]) for k, v in params.items()})
    count = next(iter(params.values())).shape[0]
    theta = stack.flatten(v * m[k] for k, v in params.items())
    mask = stack.flatten(m.values())
    optimizer = BatchedOptimizer(count, stack.size, lr)

    # vmap for the batched forward pass, plain autograd for the backward pass: the networks
    # are independent, so the gradient of the summed losses is every network's own gradient
    # (several times faster on CPU than vmap(grad(...)) through convolutions).
    fwd = vmap(lambda prm, xb: functional_call(net, prm, (xb,)), in_dims=(0, None))
    gen = torch.Generator().manual_seed(seed)
    n = len(x)
    with progress_bar(epochs, f"{desc} ({count} nets)", "epoch", enabled=progress) as bar:
        for _ in range(epochs):
            order = torch.randperm(n, generator=gen)
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                leaves = {k: v.detach().requires_grad_(True) for k, v in stack.views(theta).items()}
                logits = fwd({k: leaves[k] * m[k] for k in leaves}, x[idx])
                yb = y[idx].repeat(count)
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), yb) * count
                grads = torch.autograd.grad(loss, list(leaves.values()))
                optimizer.tick()
                with torch.no_grad():
                    if weight_decay:
                        theta.mul_(1 - lr * weight_decay)
                    optimizer.step(theta, slice(0, count), stack.flatten(grads), adam=True)
                    theta.mul_(mask)
            bar.update()
    return stack.stacked(theta)


@torch.no_grad()
def accuracy_population(
    net: nn.Module,
    params: Params,
    data: tuple[torch.Tensor, torch.Tensor],
    masks: Mapping[str, torch.Tensor] | None = None,
    chunk: int = 1024,
) -> torch.Tensor:
    """``(N,)`` accuracy of every network of the population on ``data``."""
    x, y = data
    m = _full_masks(params, masks)
    eff = {k: v * m[k] for k, v in params.items()}
    fwd = vmap(lambda prm, xb: functional_call(net, prm, (xb,)), in_dims=(0, None))
    correct = torch.zeros(next(iter(eff.values())).shape[0])
    for start in range(0, len(x), chunk):
        logits = fwd(eff, x[start : start + chunk])
        correct += (logits.argmax(-1) == y[start : start + chunk]).float().sum(1)
    return correct / max(len(x), 1)
