"""Tests of :mod:`nfncompile.experiments.tasks.population`."""

from __future__ import annotations

import torch


def test_population_training_matches_torch_adam():
    """The batched, vmapped trainer computes what torch.optim.Adam does, net by net."""
    from nfncompile.architectures import small_cnn
    from nfncompile.experiments.tasks.population import init_population, train_population

    torch.manual_seed(0)
    x, y = torch.randn(24, 1, 8, 8), torch.randint(0, 10, (24,))
    factory = lambda: small_cnn(channels=3)  # noqa: E731
    params = init_population(factory, 2, seed=5)
    mask = {k: (torch.rand(v.shape) < 0.5).float() for k, v in params.items()}
    got = train_population(
        factory(), params, (x, y), epochs=2, batch_size=8, lr=1e-2, seed=3, masks=mask
    )
    order = []
    gen = torch.Generator().manual_seed(3)
    for _ in range(2):
        perm = torch.randperm(24, generator=gen)
        order += [perm[i : i + 8] for i in range(0, 24, 8)]
    for b in range(2):
        net = factory()
        net.load_state_dict({k: v[b] * mask[k][b] for k, v in params.items()})
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        for idx in order:
            loss = torch.nn.functional.cross_entropy(
                torch.func.functional_call(
                    net, {k: p * mask[k][b] for k, p in net.named_parameters()}, (x[idx],)
                ),
                y[idx],
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                for k, p in net.named_parameters():
                    p.mul_(mask[k][b])
        for k, p in net.named_parameters():
            torch.testing.assert_close(got[k][b], p.detach(), atol=1e-5, rtol=1e-4)
