"""Predict winning-ticket masks from an initialisation.

For each source architecture (a digits MLP and a digits CNN by default) an NFN with a
weight-space output reads the weights of a *fresh, untrained* network and scores every weight;
the top ``density`` (5%) of the scores form a sparse mask, the masked network is trained from
that same initialisation, and its test accuracy is compared with

``random``
    a uniformly random mask of the same sparsity (same initialisation, same training);
``magnitude``
    one-shot magnitude pruning after training, rewound to the initialisation (the lottery-
    ticket recipe of Frankle & Carbin with a single round instead of iterative rounds: train
    the dense net, keep the largest trained weights, reset the survivors to their initial
    values, retrain);
``init_magnitude``
    the largest weights of the initialisation itself (a training-free baseline);
``dense``
    the unpruned network (an upper bound).

How the mask-NFN is trained (a differentiable relaxation that runs in minutes on a CPU):
*meta-learned against the magnitude-pruning masks as targets*. Many initialisations are
trained dense; each one's one-shot magnitude mask is the target for its initialisation, and
the NFN is trained with per-weight binary cross-entropy on its logits (sigmoid scores). At test
time the mask is the top-k of the scores, so no training run is needed to find a ticket. This
is a supervised surrogate for the paper's objective, not an unrolled inner training loop.

Every mask prunes only weight matrices and kernels (biases stay). ``scope`` says how magnitude
pruning allocates the kept weights (``global``: the largest trained weights of the whole net;
``layer``: ``density`` of every layer). Every other mask (NFN, random, init_magnitude) keeps, in
each layer, the mean number of weights magnitude pruning kept there on the training inits, so
all masks have the same per-layer sparsity and differ only in *which* weights they keep (with
``scope: global`` a ``random_uniform`` row adds the plain uniform random mask). All networks of
one architecture train with the same seeded minibatches, batched with :mod:`nfncompile.experiments.tasks.population`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ...declarative import WeightSpaceConfig, resolve_weight_space
from ...errors import ConfigError, FieldError
from ...features import WeightSpaceFeatures
from ...zoo.data import load_digits_tensors, split_indices
from .context import RunContext
from .datasets import FeatureStore, ParamScale
from .models import count_parameters, predictions
from .population import accuracy_population, init_population, maskable, train_population
from .report import Results, bar_chart, density_curves
from .task import Task

__all__ = [
    "SourceNet",
    "SourceTraining",
    "WinningTicketsEval",
    "select_mask",
    "select_budget",
    "layer_budgets",
    "run",
    "TASK",
]


@dataclass(frozen=True)
class SourceTraining:
    """How the source networks (dense and masked) are trained: AdamW, seeded minibatches."""

    epochs: int = field(default=30, metadata={"min": 1})
    batch_size: int = field(default=128, metadata={"min": 1})
    lr: float = field(default=1e-2, metadata={"min": 0.0})
    weight_decay: float = field(default=0.0, metadata={"min": 0.0})


@dataclass(frozen=True)
class SourceNet:
    """A source architecture whose initialisations the NFN prunes."""

    model: str = field(metadata={"help": "a factory of nfncompile.architectures (mlp, small_cnn)"})
    kwargs: dict[str, Any] = field(default_factory=dict, metadata={"help": "factory arguments"})
    input_shape: tuple[int, ...] = field(
        default=(2, 1, 8, 8), metadata={"min": 1, "help": "example input (batch first)"}
    )
    flatten: bool = field(default=False, metadata={"help": "feed flattened 64-pixel images"})
    inits: tuple[int, int, int] = field(
        default=(96, 16, 8),
        metadata={"min": 1, "help": "initialisations for NFN training / validation / test"},
    )
    train: SourceTraining = field(default_factory=SourceTraining)


def _default_sources() -> dict:
    return {
        "mlp": SourceNet(
            "mlp",
            {"in_features": 64, "hidden": [64, 64], "out_features": 10},
            input_shape=(2, 64),
            flatten=True,
        ),
        "cnn": SourceNet("small_cnn", {"channels": 16}, inits=(48, 8, 8)),
    }


@dataclass(frozen=True)
class WinningTicketsEval:
    """``eval`` section of a winning-ticket experiment."""

    density: float = field(
        default=0.05, metadata={"min": 0.0, "max": 1.0, "help": "fraction of weights kept"}
    )
    scope: Literal["global", "layer"] = field(
        default="global", metadata={"help": "rank weights over the whole net or per layer"}
    )
    sources: dict[str, SourceNet] = field(
        default_factory=_default_sources, metadata={"help": "name -> source architecture"}
    )
    data_split: tuple[float, float] = field(
        default=(0.8, 0.2), metadata={"min": 0, "help": "digits train / test fractions"}
    )
    threads: int | None = field(
        default=None,
        metadata={"min": 1, "help": "torch threads while training source nets (null: keep)"},
    )
    curve_densities: tuple[float, ...] = field(
        default=(),
        metadata={
            "min": 0.0,
            "max": 1.0,
            "help": "more densities for the accuracy-vs-density figure: every mask kind is "
            "also selected (the NFNs from the same scores) and trained at these",
        },
    )

    def __post_init__(self) -> None:
        if not 0 < self.density < 1:
            raise FieldError("density", f"expected a number in (0, 1), got {self.density}")
        for i, d in enumerate(self.curve_densities):
            if not 0 < d < 1:
                raise FieldError(f"curve_densities[{i}]", f"expected a number in (0, 1), got {d}")
        if not self.sources:
            raise FieldError("sources", "expected at least one source architecture")


def select_mask(
    scores: dict[str, torch.Tensor], density: float, scope: str
) -> dict[str, torch.Tensor]:
    """0/1 masks keeping the top ``density`` of ``scores`` (``name -> (N, *shape)``).

    ``scope="layer"``: ``round(density * numel)`` per tensor (at least 1); ``"global"``: the
    top ``round(density * total)`` over all tensors of a network together.

    Examples
    --------
    >>> s = {"a": torch.tensor([[1.0, 5.0, 2.0, 0.0]]), "b": torch.tensor([[4.0, 3.0]])}
    >>> select_mask(s, 0.34, "global")
    {'a': tensor([[0., 1., 0., 0.]]), 'b': tensor([[1., 0.]])}
    >>> select_mask(s, 0.34, "layer")
    {'a': tensor([[0., 1., 0., 0.]]), 'b': tensor([[1., 0.]])}
    """
    names = list(scores)
    flat = [scores[k].reshape(scores[k].shape[0], -1) for k in names]
    if scope == "layer":
        out = {}
        for k, f in zip(names, flat):
            keep = max(1, round(density * f.shape[1]))
            idx = f.topk(keep, dim=1).indices
            out[k] = torch.zeros_like(f).scatter_(1, idx, 1.0).reshape(scores[k].shape)
        return out
    cat = torch.cat(flat, dim=1)
    keep = max(1, round(density * cat.shape[1]))
    idx = cat.topk(keep, dim=1).indices
    mask = torch.zeros_like(cat).scatter_(1, idx, 1.0)
    out, start = {}, 0
    for k, f in zip(names, flat):
        out[k] = mask[:, start : start + f.shape[1]].reshape(scores[k].shape)
        start += f.shape[1]
    return out


def select_budget(
    scores: dict[str, torch.Tensor], budgets: dict[str, int]
) -> dict[str, torch.Tensor]:
    """0/1 masks keeping the top ``budgets[name]`` entries of each tensor of ``scores``.

    Examples
    --------
    >>> select_budget({"a": torch.tensor([[1.0, 5.0, 2.0]])}, {"a": 2})
    {'a': tensor([[0., 1., 1.]])}
    """
    out = {}
    for k, s in scores.items():
        flat = s.reshape(s.shape[0], -1)
        idx = flat.topk(budgets[k], dim=1).indices
        out[k] = torch.zeros_like(flat).scatter_(1, idx, 1.0).reshape(s.shape)
    return out


def layer_budgets(masks: dict[str, torch.Tensor]) -> dict[str, int]:
    """Per-layer kept counts of a population of masks (rounded means), at least 1 per layer,
    summing to the (rounded) mean total."""
    means = {k: float(v.reshape(v.shape[0], -1).sum(1).mean()) for k, v in masks.items()}
    total = round(sum(means.values()))
    budgets = {k: max(1, int(m)) for k, m in means.items()}
    # hand the remaining units to the layers with the largest remainders
    order = sorted(means, key=lambda k: budgets[k] - means[k])
    i = 0
    while sum(budgets.values()) < total:
        budgets[order[i % len(order)]] += 1
        i += 1
    while sum(budgets.values()) > max(total, len(budgets)):  # the minimum of 1 overshot
        budgets[max(budgets, key=lambda k: budgets[k] - means[k])] -= 1
    return budgets


def _flat(masks: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.reshape(v.shape[0], -1) for v in masks.values()], dim=1)


def _overlap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Mean fraction of ``a``'s kept weights that ``b`` keeps too."""
    fa, fb = _flat(a), _flat(b)
    return float(((fa * fb).sum(1) / fa.sum(1).clamp_min(1)).mean())


class _MaskLoss:
    """BCE of the NFN's per-weight logits (prunable params only) against target masks."""

    def __init__(self, names: list[str], budgets: dict[str, int]) -> None:
        self.names, self.budgets = names, budgets

    def logits(self, outputs: WeightSpaceFeatures) -> torch.Tensor:
        return torch.cat([outputs[k][:, 0].reshape(outputs.batch_size, -1) for k in self.names], 1)

    def __call__(self, outputs: WeightSpaceFeatures, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(self.logits(outputs), targets)

    def overlap(self, outputs: WeightSpaceFeatures, targets: torch.Tensor) -> float:
        """Validation metric: fraction of the predicted ticket inside the target ticket."""
        scores = {k: outputs[k][:, 0].float() for k in self.names}
        pred = _flat(select_budget(scores, self.budgets))
        return float(((pred * targets).sum(1) / pred.sum(1).clamp_min(1)).mean())


def _factory(src: SourceNet, where: str) -> Callable[[], nn.Module]:
    from ...architectures import FACTORIES

    if src.model not in FACTORIES:
        raise ConfigError(
            f"{where}.model: unknown factory {src.model!r}; valid: {', '.join(FACTORIES)}"
        )
    factory = FACTORIES[src.model]
    try:
        factory(**src.kwargs)
    except (TypeError, ConfigError) as e:
        raise ConfigError(f"{where}.kwargs: {src.model} rejected {src.kwargs}: {e}") from None
    return lambda: factory(**src.kwargs)


class _Threads:
    def __init__(self, n: int | None) -> None:
        self.n, self.old = n, torch.get_num_threads()

    def __enter__(self) -> None:
        if self.n is not None:
            torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.old)


def _run_source(ctx: RunContext, sname: str, src: SourceNet, metrics: dict, info: dict) -> dict:
    ev: WinningTicketsEval = ctx.eval
    where = f"{ctx.source}: eval.sources.{sname}"
    factory = _factory(src, where)
    spec = resolve_weight_space(
        WeightSpaceConfig(model=src.model, kwargs=dict(src.kwargs), input_shape=src.input_shape),
        source=ctx.source,
        path=f"eval.sources.{sname}",
    )
    images, labels = load_digits_tensors()
    x = images.reshape(len(images), -1) if src.flatten else images
    tr, te = split_indices(len(x), ev.data_split, seed=ctx.config.seed)
    train_data, test_data = (x[tr], labels[tr]), (x[te], labels[te])
    n_tr, n_va, n_te = src.inits
    n = n_tr + n_va + n_te
    net = factory()
    t = src.train

    def train(params: dict, masks: dict | None, seed: int) -> dict:
        with _Threads(ev.threads):
            return train_population(
                net,
                params,
                train_data,
                epochs=t.epochs,
                batch_size=t.batch_size,
                lr=t.lr,
                weight_decay=t.weight_decay,
                seed=seed,
                masks=masks,
            )

    def accuracy(params: dict, masks: dict | None) -> torch.Tensor:
        with _Threads(ev.threads):
            return accuracy_population(net, params, test_data, masks)

    init = init_population(factory, n, seed=ctx.config.seed * 100_003 + 17)
    prunable = [k for k, v in init.items() if maskable(k, v)]
    ctx.log(f"{sname}: training {n} dense {src.model} nets ({n_tr}/{n_va}/{n_te} inits)")
    dense = train(init, None, seed=1)
    test = slice(n_tr + n_va, n)
    sub = lambda d: {k: v[test] for k, v in d.items()}  # noqa: E731

    def baseline_masks(density: float) -> tuple[dict, dict]:
        """The magnitude masks of every init at ``density``, their per-layer budgets (from the
        training inits) and the baseline masks of the test inits with those budgets."""
        imp = select_mask({k: dense[k].abs() for k in prunable}, density, ev.scope)
        # every other mask gets the per-layer allocation magnitude pruning found on the
        # training inits, so the comparison is about *which* weights of each layer are kept
        budgets = layer_budgets({k: v[:n_tr] for k, v in imp.items()})
        masks = {
            "magnitude": sub(imp),
            "init_magnitude": select_budget({k: init[k][test].abs() for k in prunable}, budgets),
        }
        gen = torch.Generator().manual_seed(ctx.config.seed + 7)
        masks["random"] = select_budget(
            {k: torch.rand(init[k][test].shape, generator=gen) for k in prunable}, budgets
        )
        if ev.scope == "global":  # also the plain uniform random mask
            masks["random_uniform"] = select_mask(
                {k: torch.rand(init[k][test].shape, generator=gen) for k in prunable},
                density,
                "global",
            )
        return imp, budgets, masks

    def trained_accuracy(masks_te: dict) -> dict:
        """Test accuracy of every test init trained under each mask: ``mask -> (n_te,)``."""
        names = list(masks_te)
        stacked_masks = {k: torch.cat([masks_te[m][k] for m in names]) for k in prunable}
        stacked_init = {k: torch.cat([v[test]] * len(names)) for k, v in init.items()}
        trained = train(stacked_init, stacked_masks, seed=2)
        acc = accuracy(trained, stacked_masks).reshape(len(names), n_te)
        return {m: acc[i] for i, m in enumerate(names)}

    imp, budgets, masks_te = baseline_masks(ev.density)
    results = {"dense": accuracy(sub(dense), None)}

    # ---- the mask-NFNs: meta-learned against the magnitude masks ----------------------------
    feats = WeightSpaceFeatures.from_state_dicts(
        spec, [{k: v[i] for k, v in init.items()} for i in range(n)]
    )
    scale = ParamScale(feats.map(lambda v: v[:n_tr]))
    store = FeatureStore(scale.normalize(feats), _flat(imp))
    loss = _MaskLoss(prunable, budgets)
    rows = torch.arange(n)
    scores = {}
    for name in ctx.config.models:
        model = ctx.build(name, spec)
        if getattr(model, "output", "weight_space") != "weight_space":
            raise ConfigError(
                f"{ctx.source}: models.{name}: winning_tickets needs a weight-space output "
                "(an nfn without nf_pool, or an mlp with output: weight_space)"
            )
        result = ctx.fit(
            f"{name}@{sname}",
            model,
            store.subset(rows[:n_tr]),
            store.subset(rows[n_tr : n_tr + n_va]),
            loss_fn=loss,
            metric_fn=loss.overlap,
            higher_is_better=True,
            collate_fn=store.collate,
        )
        out, _ = predictions(model, store, store.subset(rows[test]), 256)
        out = out.to("cpu")
        scores[name] = {k: out[k][:, 0].float() for k in prunable}
        masks_te[name] = select_budget(scores[name], budgets)
        info.setdefault("models", {})[f"{name}@{sname}"] = {
            "best_epoch": result.best_epoch,
            "val_overlap": result.best_score,
            "params": count_parameters(model),
        }
    ctx.log(f"{sname}: training {len(masks_te)} x {n_te} masked nets")
    results.update(trained_accuracy(masks_te))
    for m, a in results.items():
        row = metrics.setdefault(m, {})
        row[f"{sname}_accuracy"] = float(a.mean())
        row[f"{sname}_std"] = float(a.std()) if len(a) > 1 else 0.0
        if m in masks_te:
            row[f"{sname}_overlap_magnitude"] = _overlap(masks_te[m], masks_te["magnitude"])
    summary = lambda accs: {  # noqa: E731
        m: (float(a.mean()), float(a.std()) if len(a) > 1 else 0.0) for m, a in accs.items()
    }
    curve = {ev.density: summary(results)}
    for density in ev.curve_densities:
        if density == ev.density:
            continue
        _, budgets_d, masks_d = baseline_masks(density)
        for name in scores:
            masks_d[name] = select_budget(scores[name], budgets_d)
        ctx.log(f"{sname}: density {density}: training {len(masks_d)} x {n_te} masked nets")
        curve[density] = summary(trained_accuracy(masks_d))
    info.setdefault("sources", {})[sname] = {
        "model": src.model,
        "kwargs": dict(src.kwargs),
        "prunable_weights": sum(init[k][0].numel() for k in prunable),
        "kept_weights": round(float(_flat(masks_te["magnitude"]).sum(1).mean())),
        "layer_budgets": budgets,
        "inits": list(src.inits),
        "accuracy_by_density": {str(d): c for d, c in sorted(curve.items())},
    }
    return dict(sorted(curve.items()))


def run(ctx: RunContext) -> Results:
    """Train the mask-NFNs for every source architecture and compare the tickets."""
    ev: WinningTicketsEval = ctx.eval
    metrics: dict = {}
    info: dict = {"density": ev.density, "scope": ev.scope}
    curves = {}
    for sname, src in ev.sources.items():
        curves[sname] = _run_source(ctx, sname, src, metrics, info)
    order = ["dense", "magnitude", *ctx.config.models, "random", "random_uniform", "init_magnitude"]
    metrics = {k: metrics[k] for k in order if k in metrics}
    groups = {
        g: {k: c[ev.density][k] for k in order if k in c[ev.density]} for g, c in curves.items()
    }
    plots = [
        bar_chart(ctx.out_dir / "winning_tickets_accuracy.png", groups, ylabel="test accuracy")
    ]
    if ev.curve_densities:
        plots.append(density_curves(ctx.out_dir / "winning_tickets_density.png", curves, order))
    info["note"] = (
        "magnitude = one-shot magnitude pruning after training, rewound to the init "
        "(IMP with one round); NFNs meta-learned against those masks (BCE)"
    )
    return Results("winning_tickets", metrics, info, plots=[p.name for p in plots])


#: This task, as :mod:`nfncompile.experiments.registry` lists it.
TASK = Task(
    "winning_tickets",
    WinningTicketsEval,
    run,
    "accuracy of sparse nets trained from NFN-predicted masks vs. random / magnitude",
)
