"""Classify implicit neural representations: which digit does a SIREN draw?

The INR zoo holds SIRENs fitted to the digit images (one or more views each); the label is
the digit. Every model of
the experiment maps SIREN weights to 10 logits and trains with cross-entropy, selecting the
epoch with the best validation accuracy. Models named in ``eval.augment`` train with
permutation augmentation: each training network is replaced by a random element of the weight
space's symmetry group applied to it (``spec.sample_permutation(g).apply(feats)``), which
leaves the function it computes, and so its label, unchanged. That is how the paper's "MLP +
augmentation" baseline tries to learn the symmetry instead of building it in.

The report gives test accuracy (and loss) per model and their confusion matrices on the test
INRs. The zoo is split by image (``image_index``): every view of an image is in one split.
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
from .report import Results, confusion_matrix
from .task import Task
from .zoo_access import zoo_column, zoo_spec

__all__ = ["INRClassificationEval", "run", "TASK"]


@dataclass(frozen=True)
class INRClassificationEval(AugmentEval):
    """``eval`` section of an INR classification experiment."""

    label: str = field(default="label", metadata={"help": "zoo metadata column with the class"})
    split: tuple[float, float, float] = field(
        default=(0.7, 0.1, 0.2), metadata={"min": 0, "help": "train / val / test fractions"}
    )
    max_networks: int | None = field(
        default=None, metadata={"min": 10, "help": "use only this many zoo networks (null: all)"}
    )
    batch_size: int = field(default=256, metadata={"min": 1, "help": "prediction batch size"})


def _loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(outputs, targets.long())


def _accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    return float((outputs.argmax(-1) == targets.long()).float().mean())


def run(ctx: RunContext) -> Results:
    """Train and evaluate every model of the experiment on the INR zoo."""
    ev: INRClassificationEval = ctx.eval
    zoo = ctx.zoo()
    spec = zoo_spec(zoo)
    split = split_zoo(ctx, zoo, spec, ev.max_networks, ev.split, group_by="image_index")
    n, tr, va, te = split.n, split.train, split.val, split.test
    labels = torch.as_tensor(zoo_column(zoo, ev.label)[:n], dtype=torch.long)
    median_psnr = float(np.median(zoo_column(zoo, "psnr")[:n]))
    store = FeatureStore(split.features, labels)
    ctx.log(
        f"zoo: {n} INRs ({len(tr)} train / {len(va)} val / {len(te)} test, split by image), "
        f"{sum(p.numel for p in spec.params)} weights each, {int(labels.max()) + 1} classes, "
        f"median PSNR {median_psnr:.1f} dB"
    )
    metrics, info = {}, {"models": {}}
    confusion = {}
    for name in ctx.config.models:
        model = ctx.build(name, spec)
        augment = augment_for(ev, name, spec)
        result = ctx.fit(
            name,
            model,
            store.subset(tr),
            store.subset(va),
            loss_fn=_loss,
            metric_fn=_accuracy,
            higher_is_better=True,
            collate_fn=store.collate,
            augment=augment,
        )
        out, tgt = predictions(model, store, store.subset(te), ev.batch_size)
        out, tgt = out.float().cpu(), tgt.cpu()
        confusion[name] = (tgt.numpy(), out.argmax(-1).numpy())
        metrics[name] = {
            "test_accuracy": _accuracy(out, tgt),
            "test_loss": float(_loss(out, tgt)),
            "val_accuracy": result.best_score,
            "params": count_parameters(model),
        }
        info["models"][name] = {
            "best_epoch": result.best_epoch,
            "epochs": result.epochs_completed,
            "augmented": augment is not None,
            "train_seconds": result.train_seconds,
        }
    plot = confusion_matrix(
        ctx.out_dir / "inr_classification_confusion.png", confusion, int(labels.max()) + 1
    )
    info.update(
        {
            "networks": n,
            "train": len(tr),
            "val": len(va),
            "test": len(te),
            "median_psnr": median_psnr,
        }
    )
    return Results("inr_classification", metrics, info, plots=[plot.name])


#: This task, as :mod:`nfncompile.experiments.registry` lists it.
TASK = Task(
    "inr_classification",
    INRClassificationEval,
    run,
    "test accuracy of classifying SIRENs (fit to digit images) by digit",
)
