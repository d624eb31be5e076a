"""Tests of :mod:`nfncompile.zoo.optim`: the batched optimiser is torch's, model by model."""

from __future__ import annotations

import pytest
import torch

from nfncompile.zoo import BatchedOptimizer


@pytest.mark.parametrize("adam", [True, False])
@pytest.mark.parametrize("per_model", [True, False])
def test_each_row_follows_torch_optim_with_its_own_learning_rate(adam, per_model):
    g = torch.Generator().manual_seed(0)
    k, p, steps = 3, 5, 6
    lr = (
        torch.tensor([1e-1, 1e-2, 3e-3], dtype=torch.float64)
        if per_model
        else torch.full((3,), 0.05)
    )
    theta = torch.randn(k, p, generator=g)
    grads = [torch.randn(k, p, generator=g) for _ in range(steps)]
    start = theta.clone()
    opt = BatchedOptimizer(k, p, lr if per_model else 0.05, momentum=0.9)
    alive = torch.ones(k, dtype=torch.bool)
    for grad in grads:
        opt.tick()
        opt.step(theta, slice(0, k), grad, alive, adam=adam)
    for i in range(k):
        w = torch.nn.Parameter(start[i].clone())
        if adam:
            ref = torch.optim.Adam([w], lr=float(lr[i]))
        else:
            ref = torch.optim.SGD([w], lr=float(lr[i]), momentum=0.9)
        for grad in grads:
            w.grad = grad[i].clone()
            ref.step()
        torch.testing.assert_close(theta[i], w.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("lr", [torch.full((4,), 0.1), 0.1])
def test_only_the_given_rows_of_live_models_move(lr):
    theta = torch.zeros(4, 2)
    opt = BatchedOptimizer(4, 2, lr)
    alive = torch.tensor([True, False, True, True])
    opt.tick()
    opt.step(theta, slice(0, 3), torch.ones(3, 2), alive, adam=True)
    moved = (theta != 0).all(1).tolist()
    assert moved == [True, False, True, False]
    # without an alive mask every model of the range moves; rows share the step count
    opt.step(theta, slice(3, 4), torch.ones(1, 2), adam=True)
    torch.testing.assert_close(theta[3], theta[0])
