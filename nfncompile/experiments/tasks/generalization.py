"""Predict generalization: regress a CNN's test accuracy from its weights.

The CNN zoo holds small CNNs trained on the digits with varied hyperparameters, each with its
test accuracy. Every model of the experiment (NFN-HNP, NFN-NP, StatNN, an MLP on the flattened
weights, ...) maps weights to one logit; training minimises binary cross-entropy against the
accuracy (a soft target in [0, 1]) and selects the epoch with the best validation Kendall's
tau. The report gives Kendall's tau (:func:`scipy.stats.kendalltau`), R^2 and RMSE on the
held-out test CNNs, and a scatter plot of predicted vs. true accuracy, one panel per model.

Weights are divided by one scalar per parameter tensor (its std over the training CNNs), which
keeps every permutation symmetry. Models named in ``eval.augment`` train on randomly permuted
copies of the CNNs (:mod:`.augment`); with ``augment_mode: np`` that includes the order of the
classes, a regulariser for models that could tell the classes apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .augment import AugmentEval, augment_for
from .context import RunContext
from .datasets import FeatureStore, split_zoo
from .models import count_parameters, predictions
from .report import Results, scatter_panels
from .task import Task
from .zoo_access import zoo_column, zoo_spec

__all__ = ["GeneralizationEval", "run", "kendall_tau", "TASK"]


@dataclass(frozen=True)
class GeneralizationEval(AugmentEval):
    """``eval`` section of a generalization experiment."""

    target: str = field(
        default="test_accuracy", metadata={"help": "zoo metadata column to predict"}
    )
    split: tuple[float, float, float] = field(
        default=(0.7, 0.1, 0.2), metadata={"min": 0, "help": "train / val / test fractions"}
    )
    max_networks: int | None = field(
        default=None, metadata={"min": 3, "help": "use only this many zoo networks (null: all)"}
    )
    batch_size: int = field(default=256, metadata={"min": 1, "help": "prediction batch size"})


def kendall_tau(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Kendall's tau-b of two 1-D score vectors (NaN when one is constant)."""
    from scipy.stats import kendalltau

    p = np.asarray(pred.detach().cpu().reshape(-1), dtype=np.float64)
    t = np.asarray(target.detach().cpu().reshape(-1), dtype=np.float64)
    if len(p) < 2 or np.all(p == p[0]) or np.all(t == t[0]):
        return float("nan")
    return float(kendalltau(p, t).statistic)


def _loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(outputs.reshape(-1), targets.reshape(-1).float())


def _metric(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    return kendall_tau(outputs, targets)


def run(ctx: RunContext) -> Results:
    """Train and evaluate every model of the experiment on the CNN zoo."""
    ev: GeneralizationEval = ctx.eval
    zoo = ctx.zoo()
    spec = zoo_spec(zoo)
    split = split_zoo(ctx, zoo, spec, ev.max_networks, ev.split)
    n, tr, va, te = split.n, split.train, split.val, split.test
    targets = torch.as_tensor(zoo_column(zoo, ev.target)[:n], dtype=torch.float32)
    store = FeatureStore(split.features, targets)
    ctx.log(
        f"zoo: {n} networks ({len(tr)} train / {len(va)} val / {len(te)} test), "
        f"{sum(p.numel for p in spec.params)} weights each; target {ev.target} "
        f"in [{float(targets.min()):.3f}, {float(targets.max()):.3f}]"
    )
    metrics, panels, info = {}, {}, {"models": {}}
    true_te = targets[te].numpy()
    for name in ctx.config.models:
        model = ctx.build(name, spec)
        result = ctx.fit(
            name,
            model,
            store.subset(tr),
            store.subset(va),
            loss_fn=_loss,
            metric_fn=_metric,
            higher_is_better=True,
            collate_fn=store.collate,
            augment=augment_for(ev, name, spec),
        )
        out, tgt = predictions(model, store, store.subset(te), ev.batch_size)
        pred = torch.sigmoid(out.reshape(-1).float().cpu())
        tgt = tgt.reshape(-1).float().cpu()
        resid = pred - tgt
        ss_tot = float(((tgt - tgt.mean()) ** 2).sum())
        metrics[name] = {
            "kendall_tau": kendall_tau(pred, tgt),
            "r2": 1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else float("nan"),
            "rmse": float(resid.pow(2).mean().sqrt()),
            "val_kendall_tau": result.best_score,
            "params": count_parameters(model),
        }
        info["models"][name] = {
            "best_epoch": result.best_epoch,
            "epochs": result.epochs_completed,
            "train_seconds": result.train_seconds,
            "augmented": name in ev.augment,
        }
        panels[name] = (true_te, pred.numpy())
    plot = scatter_panels(
        ctx.out_dir / "generalization_scatter.png",
        panels,
        xlabel="true test accuracy",
        ylabel="predicted",
        titles={k: f"{k} (tau={metrics[k]['kendall_tau']:.3f})" for k in panels},
    )
    info.update(
        {"networks": n, "train": len(tr), "val": len(va), "test": len(te), "target": ev.target}
    )
    return Results("generalization", metrics, info, plots=[plot.name])


#: This task, as :mod:`nfncompile.experiments.registry` lists it.
TASK = Task(
    "generalization",
    GeneralizationEval,
    run,
    "Kendall's tau of predicted vs. true test accuracy of held-out CNNs",
)
