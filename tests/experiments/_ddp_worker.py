"""One process of the DDP test (tests/test_distributed.py launches two with torch.distributed.run).

Usage: ``python -m torch.distributed.run --nproc_per_node 2 ... tests/experiments/_ddp_worker.py OUTDIR``

Trains a small model over :class:`WeightSpaceFeatures` of a tiny MLP's weights on seeded
synthetic data with :func:`nfncompile.experiments.train.fit`, then writes per rank:

``OUTDIR/rank{r}.safetensors``
    final weights (``model.<key>``) and the distributed :func:`predict` outputs (``preds``).
``OUTDIR/rank{r}.json``
    the training-set indices this rank read, in order, and the fit history.

It calls ``fit`` twice on one checkpoint dir: ``EPOCHS`` epochs, then ``EPOCHS + 1`` (which
resumes and trains one more epoch), all inside one :func:`distributed_context`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from nfncompile.experiments.distributed import distributed_context
from nfncompile.experiments.train import TrainConfig, fit, predict
from nfncompile.features import WeightSpaceFeatures

N_TRAIN, N_VAL, EPOCHS, BATCH = 40, 11, 3, 5


class Recorder(torch.utils.data.Dataset):
    """A dataset that remembers which indices this process read."""

    def __init__(self, items: list) -> None:
        self.items = items
        self.seen: list[int] = []

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple:
        self.seen.append(int(i))
        return self.items[i]


class FlatNet(nn.Module):
    """Reads WeightSpaceFeatures (and refuses anything else, to prove DDP passes them through)."""

    def __init__(self, n_in: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_in, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 1))

    def forward(self, feats: WeightSpaceFeatures) -> torch.Tensor:
        if not isinstance(feats, WeightSpaceFeatures):
            raise TypeError(f"expected WeightSpaceFeatures, got {type(feats).__name__}")
        return self.net(feats.flatten()).squeeze(-1)


def make_items(n: int, seed: int, as_features: bool) -> list:
    """Weights of a 2-3-1 MLP and a target computed from them."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n):
        sd = {
            "0.weight": torch.randn(3, 2, generator=g),
            "0.bias": torch.randn(3, generator=g),
            "2.weight": torch.randn(1, 3, generator=g),
            "2.bias": torch.randn(1, generator=g),
        }
        y = (sd["2.weight"] @ torch.tanh(sd["0.weight"].sum(1) + sd["0.bias"])).squeeze()
        x = WeightSpaceFeatures.from_state_dicts(None, [sd]) if as_features else sd
        items.append((x, y))
    return items


def noise(batch: tuple, generator: torch.Generator) -> tuple:
    inputs, targets = batch
    return inputs.map(lambda t: t + 0.01 * torch.randn(t.shape, generator=generator)), targets


def main(out: Path) -> None:
    with distributed_context() as info:
        torch.manual_seed(1000 + info.rank)  # different inits: DDP must sync rank 0's
        model = FlatNet(13)
        train = Recorder(make_items(N_TRAIN, 0, as_features=True))
        val = make_items(N_VAL, 1, as_features=False)  # plain state_dicts; odd size
        kwargs = dict(
            loss_fn=nn.functional.mse_loss,
            metric_fn=lambda o, t: -nn.functional.mse_loss(o, t),
            checkpoint_dir=out / "ckpt",
            augment=noise,
        )
        config = TrainConfig(epochs=EPOCHS, batch_size=BATCH, lr=1e-2, device="cpu")
        first = fit(model, train, val, config=config, **kwargs)
        # a second call on the same checkpoint_dir resumes (every rank reads rank 0's files)
        config = TrainConfig(epochs=EPOCHS + 1, batch_size=BATCH, lr=1e-2, device="cpu")
        result = fit(model, train, val, config=config, **kwargs)
        preds = predict(model, val, batch_size=4)
        tensors = {f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}
        save_file({**tensors, "preds": preds}, str(out / f"rank{info.rank}.safetensors"))
        record = {
            "seen": train.seen,
            "history": list(result.history),
            "first_epochs": first.epochs_completed,
            "resumed_from": result.resumed_from,
            "best_epoch": result.best_epoch,
        }
        (out / f"rank{info.rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
