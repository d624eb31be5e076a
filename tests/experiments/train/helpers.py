"""Data, models and callbacks shared by the training tests."""

from __future__ import annotations

import torch
from torch import nn

from nfncompile.experiments.train import TrainConfig
from nfncompile.features import WeightSpaceFeatures

mse = nn.functional.mse_loss


CFG = TrainConfig(epochs=6, batch_size=8, lr=1e-2, device="cpu")


def regression(n: int, seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0]) + 0.1 * torch.randn(n, generator=g)
    return list(zip(x, y))


TRAIN, VAL = regression(48, 0), regression(16, 1)


class Net(nn.Module):
    def __init__(self, seed: int = 0, n_in: int = 4, hidden: int = 16) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(
            nn.Linear(n_in, hidden), nn.ReLU(), nn.Dropout(0.2), nn.Linear(hidden, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def neg_mse(out: torch.Tensor, target: torch.Tensor) -> float:
    return -mse(out, target).item()


def jitter(batch: tuple, generator: torch.Generator) -> tuple:
    x, y = batch
    return x + 0.05 * torch.randn(x.shape, generator=generator), y


def weights_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def without_seconds(history: tuple) -> list:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def scripted(values: list):
    """A metric_fn returning ``values`` in turn (one call per validation)."""
    it = iter(values)
    return lambda out, target: next(it)


class FeatureNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(9, 1)

    def forward(self, feats: WeightSpaceFeatures) -> torch.Tensor:
        if not isinstance(feats, WeightSpaceFeatures):
            raise TypeError(type(feats).__name__)
        return self.lin(feats.flatten()).squeeze(-1)


def weight_items(n: int, seed: int, as_features: bool) -> list:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        sd = {"w": torch.randn(2, 3, generator=g), "b": torch.randn(3, generator=g)}
        y = sd["w"].sum() - sd["b"].sum()
        out.append((WeightSpaceFeatures.from_state_dicts(None, [sd]) if as_features else sd, y))
    return out
