"""The batched optimiser: Adam or SGD with momentum over a stack of models at once.

A stack of ``k`` models is one ``(k, P)`` parameter tensor (see :class:`~.stack.ParamStack`);
each model has its own optimiser state, and one call updates a range of rows in place. The
zoo trainers (:mod:`.cnn`, :mod:`.inr`, a learning rate per model) and the population trainer
of the winning-ticket task (one learning rate) use it; weight decay, gradient clipping and
masks are the caller's.

Examples
--------
>>> import torch
>>> theta = torch.zeros(2, 3)
>>> opt = BatchedOptimizer(2, 3, lr=torch.tensor([0.1, 0.01]))
>>> opt.tick()
>>> opt.step(theta, slice(0, 2), torch.ones(2, 3), adam=True)
>>> theta[:, 0]  # Adam's first step moves every weight by about the learning rate
tensor([-0.1000, -0.0100])
"""

from __future__ import annotations

import torch

__all__ = ["BatchedOptimizer"]


class BatchedOptimizer:
    """Adam or SGD with momentum for a stack of models.

    Models are updated in contiguous row ranges (``rows``) that share an optimizer; every model
    has taken the same number of steps ``t`` when it is updated (models that stopped training
    are simply no longer passed). The update of a model that is not ``alive`` is zero.

    Parameters
    ----------
    models, size : int
        The stack is ``(models, size)``.
    lr : Tensor or float
        ``(models,)`` learning rates (any float dtype; used in float32), or one for all. With
        one rate the step is ``torch.optim``'s (Adam: ``addcdiv`` by ``lr / (1 - 0.9**t)``);
        with one per model each model's update is scaled by its own rate.
    momentum : float
        SGD's momentum (Adam uses the betas 0.9 and 0.999).
    """

    def __init__(
        self, models: int, size: int, lr: torch.Tensor | float, momentum: float = 0.0
    ) -> None:
        self.m = torch.zeros(models, size)
        self.v = torch.zeros(models, size)
        self.lr = float(lr) if isinstance(lr, (int, float)) else lr.float()[:, None]
        self.momentum = momentum
        self.t = 0

    def tick(self) -> None:
        """Begin a step: every row range updated until the next tick shares its count ``t``."""
        self.t += 1

    @torch.no_grad()
    def step(
        self,
        theta: torch.Tensor,
        rows: slice,
        grad: torch.Tensor,
        alive: torch.Tensor | None = None,
        adam: bool = True,
    ) -> None:
        """Update ``theta[rows]`` in place from ``grad`` (already zero where not alive).

        ``alive`` is a ``(models,)`` bool mask over the whole stack (``None``: every model).
        """
        m = self.m[rows]
        if adam:
            v = self.v[rows]
            m.mul_(0.9).add_(grad, alpha=0.1)
            v.mul_(0.999).addcmul_(grad, grad, value=0.001)
            denom = (v / (1 - 0.999**self.t)).sqrt_().add_(1e-8)
        else:
            m.mul_(self.momentum).add_(grad)
        live = None if alive is None else alive[rows, None]
        if isinstance(self.lr, float):  # one rate: torch.optim's fused step
            direction = m if live is None else m * live
            if adam:
                theta[rows].addcdiv_(direction, denom, value=-self.lr / (1 - 0.9**self.t))
            else:
                theta[rows].add_(direction, alpha=-self.lr)
            return
        if adam:
            update = (m / (1 - 0.9**self.t)).div_(denom)
        else:
            update = m.clone()
        update.mul_(self.lr[rows] if live is None else self.lr[rows] * live)
        theta[rows] -= update
