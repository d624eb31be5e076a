"""Edit implicit neural representations: make a SIREN draw its digit dilated.

A model with a weight-space output (an equivariant NFN without ``nf_pool``, or an MLP with
``output: weight_space``) reads a SIREN's weights and outputs a delta of the same shapes; the
edited SIREN is ``weights + gate * delta`` (the gate is one learned scalar that starts at 0,
so training starts from the unedited SIREN). The loss is the MSE between the edited SIREN
rendered on the 8x8 pixel grid (a batched functional forward pass:
:func:`torch.func.functional_call` under :func:`torch.func.vmap`) and the morphologically
dilated image (:func:`nfncompile.zoo.data.dilate`). Training selects the epoch with the lowest
validation MSE.

The report gives the test MSE per model and of the unedited SIRENs (``no_edit``), and a figure
of inputs, targets and each model's edits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

from ...features import WeightSpaceFeatures
from ...zoo.data import dilate, pixel_grid
from .context import RunContext
from .datasets import FeatureStore, ParamScale, split_zoo
from .models import batched_forward, count_parameters, predictions
from .report import Results, image_grid
from .task import Task
from .zoo_access import zoo_column, zoo_images, zoo_model, zoo_spec

__all__ = ["INREditingEval", "ResidualEdit", "render", "run", "TASK"]


@dataclass(frozen=True)
class INREditingEval:
    """``eval`` section of an INR editing experiment."""

    dilation: int = field(
        default=3, metadata={"min": 1, "help": "odd size of the structuring element"}
    )
    footprint: Literal["square", "cross"] = field(
        default="square",
        metadata={"help": "square (size x size) or cross (the pixel's row and column)"},
    )
    split: tuple[float, float, float] = field(
        default=(0.7, 0.1, 0.2), metadata={"min": 0, "help": "train / val / test fractions"}
    )
    max_networks: int | None = field(
        default=None, metadata={"min": 3, "help": "use only this many zoo networks (null: all)"}
    )
    figure_examples: int = field(default=8, metadata={"min": 1, "help": "test INRs drawn"})
    batch_size: int = field(default=256, metadata={"min": 1, "help": "prediction batch size"})


class ResidualEdit(nn.Module):
    """``features + gate * model(features)``: an edit in weight space, starting at identity.

    Parameters
    ----------
    model : nn.Module
        Maps weight-space features to weight-space features of the same shapes (1 channel).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.gate = nn.Parameter(torch.zeros(()))

    def forward(self, features: WeightSpaceFeatures) -> WeightSpaceFeatures:
        delta = self.model(features)
        return WeightSpaceFeatures({k: v + self.gate * delta[k] for k, v in features.items()})


def render(
    net: nn.Module, scale: ParamScale, features: WeightSpaceFeatures, grid: torch.Tensor
) -> torch.Tensor:
    """``(B, P)`` pixel values of the SIRENs whose (normalised, 1-channel) weights are given."""
    raw = scale.denormalize(features)
    params = {k: v[:, 0] for k, v in raw.items()}
    return batched_forward(net, params, grid.to(features.device)).reshape(features.batch_size, -1)


def _loss_fn(net: nn.Module, scale: ParamScale, grid: torch.Tensor) -> Callable:
    def loss(outputs: WeightSpaceFeatures, targets: torch.Tensor) -> torch.Tensor:
        return (render(net, scale, outputs, grid) - targets).pow(2).mean()

    return loss


def run(ctx: RunContext) -> Results:
    """Train every model to edit SIRENs and evaluate the test MSE."""
    ev: INREditingEval = ctx.eval
    zoo = ctx.zoo()
    spec = zoo_spec(zoo)
    net = zoo_model(zoo)
    for p in net.parameters():
        p.requires_grad_(False)
    split = split_zoo(ctx, zoo, spec, ev.max_networks, ev.split, group_by="image_index")
    n, tr, va, te, scale = split.n, split.train, split.val, split.test, split.scale
    images = zoo_images(zoo, torch.arange(n))  # (n, H, W), the images the SIRENs were fitted to
    side = images.shape[-1]
    targets = dilate(images, ev.dilation, ev.footprint).reshape(n, -1)
    grid = pixel_grid(side)
    store = FeatureStore(split.features, targets)
    loss = _loss_fn(net, scale, grid)
    te_feats, te_targets = store.collate(store.subset(te))
    with torch.no_grad():
        before = render(net, scale, te_feats, grid)
    metrics = {
        "no_edit": {
            "test_mse": float((before - te_targets).pow(2).mean()),
            "fit_mse": float((before - images[te].reshape(len(te), -1)).pow(2).mean()),
        }
    }
    ctx.log(
        f"zoo: {n} INRs ({len(tr)} train / {len(va)} val / {len(te)} test); unedited test MSE "
        f"vs dilated {metrics['no_edit']['test_mse']:.4f}, vs original "
        f"{metrics['no_edit']['fit_mse']:.4f}"
    )
    # the figure shows one view each of the first test images
    te_image = zoo_column(zoo, "image_index")[te.numpy()]
    fig = torch.as_tensor(np.sort(np.unique(te_image, return_index=True)[1])[: ev.figure_examples])
    k = len(fig)
    rows_fig = {
        "input": before[fig].reshape(k, side, side).numpy(),
        "target": te_targets[fig].reshape(k, side, side).numpy(),
    }
    info: dict = {"models": {}}
    for name in ctx.config.models:
        inner = ctx.build(name, spec)
        if getattr(inner, "output", "weight_space") != "weight_space":
            from ...errors import ConfigError

            raise ConfigError(
                f"{ctx.source}: models.{name}: inr_editing needs a weight-space output "
                "(an nfn without nf_pool, or an mlp with output: weight_space)"
            )
        model = ResidualEdit(inner)
        result = ctx.fit(
            name,
            model,
            store.subset(tr),
            store.subset(va),
            loss_fn=loss,
            higher_is_better=False,
            collate_fn=store.collate,
        )
        out, tgt = predictions(model, store, store.subset(te), ev.batch_size)
        out = out.to("cpu")
        with torch.no_grad():
            pix = render(net, scale, out, grid)
        metrics[name] = {
            "test_mse": float((pix - tgt.cpu()).pow(2).mean()),
            "val_mse": result.best_score,
            "params": count_parameters(model),
        }
        info["models"][name] = {
            "best_epoch": result.best_epoch,
            "epochs": result.epochs_completed,
            "gate": float(model.gate.detach()),
            "train_seconds": result.train_seconds,
        }
        rows_fig[name] = pix[fig].reshape(k, side, side).numpy()
    low, high = zoo.config.pixel_range
    plot = image_grid(ctx.out_dir / "inr_editing_examples.png", rows_fig, vmin=low, vmax=high)
    info.update(
        {"networks": n, "train": len(tr), "val": len(va), "test": len(te), "dilation": ev.dilation}
    )
    return Results("inr_editing", metrics, info, plots=[plot.name])


#: This task, as :mod:`nfncompile.experiments.registry` lists it.
TASK = Task(
    "inr_editing",
    INREditingEval,
    run,
    "test MSE of SIRENs edited to draw their digit dilated",
)
