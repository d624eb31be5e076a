"""Reports of experiment runs: ``results.json``, a markdown table and PNG plots.

Every task returns a :class:`Results` (the task name, one metrics dict per model, free-form
extra information); :func:`write_results` stores it as ``DIR/results.json``::

    {"task": "generalization", "metrics": {"nfn_hnp": {"kendall_tau": 0.91, ...}, ...}, ...}

and :func:`markdown_table` renders the metrics as the table ``nfncompile run`` prints.

Examples
--------
>>> r = Results("demo", {"a": {"acc": 0.5, "n": 3}, "b": {"acc": 0.25}})
>>> print(markdown_table(r))
| model | acc | n |
|---|---|---|
| a | 0.5000 | 3 |
| b | 0.2500 | - |
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Results",
    "write_results",
    "read_results",
    "markdown_table",
    "scatter_panels",
    "image_grid",
    "bar_chart",
    "aggregate",
    "learning_curves",
    "confusion_matrix",
    "density_curves",
]


@dataclass
class Results:
    """What a task run measured.

    Parameters
    ----------
    task : str
        The task name (``generalization``, ``inr_classification``, ...).
    metrics : dict
        ``model name -> {metric name -> number}``.
    info : dict
        Anything else worth keeping (sizes, timings, the config used): JSON-serialisable.
    plots : list of str
        Paths of the PNGs written (relative to the output directory).
    std : dict
        ``model name -> {metric name -> standard deviation over seeds}`` when the metrics are
        means over several model seeds (:func:`aggregate`); empty for one run.
    """

    task: str
    metrics: dict
    info: dict = field(default_factory=dict)
    plots: list = field(default_factory=list)
    std: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The JSON form: ``task``, ``metrics``, ``std`` (when aggregated), ``info``, ``plots``."""
        out = {"task": self.task, "metrics": _jsonable(self.metrics)}
        if self.std:
            out["std"] = _jsonable(self.std)
        out.update({"info": _jsonable(self.info), "plots": list(self.plots)})
        return out


def aggregate(runs: Mapping[int, Results]) -> Results:
    """One :class:`Results` from runs with different model seeds: the mean of every numeric
    metric, its standard deviation (``ddof=1``) in :attr:`Results.std`, and each run's metrics
    and info in ``info["seeds"]``. Integer metrics that agree (parameter counts) stay as they
    are; metrics missing or non-finite in a run are averaged over the others.

    Examples
    --------
    >>> a = Results("t", {"m": {"tau": 0.5, "params": 10}})
    >>> b = Results("t", {"m": {"tau": 0.7, "params": 10}})
    >>> r = aggregate({0: a, 1: b})
    >>> r.metrics["m"]["tau"], round(r.std["m"]["tau"], 4), r.metrics["m"]["params"]
    (0.6, 0.1414, 10)
    >>> print(markdown_table(r))
    | model | tau | params |
    |---|---|---|
    | m | 0.6000 ± 0.1414 | 10 |
    """
    if not runs:
        raise ValueError("aggregate: no runs")
    first = next(iter(runs.values()))
    metrics: dict = {}
    std: dict = {}
    for model in first.metrics:
        names: list[str] = []
        for r in runs.values():
            names.extend(k for k in r.metrics.get(model, {}) if k not in names)
        row, srow = {}, {}
        for name in names:
            values = [r.metrics.get(model, {}).get(name) for r in runs.values()]
            numbers = [
                float(v)
                for v in values
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            ]
            if not numbers:
                row[name] = None
            elif (
                all(isinstance(v, int) and not isinstance(v, bool) for v in values)
                and len(set(values)) == 1
            ):
                row[name] = values[0]
            else:
                row[name] = float(np.mean(numbers))
                srow[name] = float(np.std(numbers, ddof=1)) if len(numbers) > 1 else 0.0
        metrics[model], std[model] = row, srow
    info = {
        "seeds": {
            str(seed): {"metrics": r.metrics, "info": r.info, "plots": r.plots}
            for seed, r in runs.items()
        }
    }
    return Results(first.task, metrics, info, plots=[], std=std)


def _jsonable(x: Any) -> Any:
    """Plain JSON data: numpy / torch scalars to Python numbers, NaN to ``None``."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and callable(x.item) and getattr(x, "ndim", 0) == 0:
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if isinstance(x, os.PathLike):
        return str(x)
    return repr(x)


def write_results(results: Results, out_dir: str | os.PathLike) -> Path:
    """Write ``out_dir/results.json`` and return its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    path.write_text(json.dumps(results.to_dict(), indent=2) + "\n")
    return path


def read_results(path: str | os.PathLike) -> dict:
    """Read a ``results.json`` (or the one in a run directory)."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    return json.loads(p.read_text())


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return "-"
        return f"{v:.4f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"
    return str(v)


def markdown_table(results: Results | Mapping, metrics: Sequence[str] | None = None) -> str:
    """A markdown table with one row per model and one column per metric.

    Parameters
    ----------
    results : Results or mapping
        A :class:`Results` or the dict form read from ``results.json``.
    metrics : sequence of str, optional
        Columns in order (default: every metric, in first-seen order).
    """
    if isinstance(results, Results):
        table, spread = results.metrics, results.std
    else:
        table, spread = results["metrics"], results.get("std") or {}
    if metrics is None:
        metrics = []
        for row in table.values():
            metrics.extend(k for k in row if k not in metrics)
    lines = [
        "| model | " + " | ".join(metrics) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    for name, row in table.items():
        cells = []
        for m in metrics:
            cell = _fmt(row.get(m))
            sd = spread.get(name, {}).get(m)
            if sd is not None and cell != "-":
                cell = f"{cell} ± {_fmt(float(sd))}"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# plots (matplotlib, Agg backend: no display needed)
# --------------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Lay out, write and close ``fig``; the path written."""
    fig.tight_layout()
    p = Path(path)
    fig.savefig(p, dpi=dpi)
    _pyplot().close(fig)
    return p


def scatter_panels(
    path: str | os.PathLike,
    panels: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    xlabel: str,
    ylabel: str,
    titles: Mapping[str, str] | None = None,
    diagonal: bool = True,
) -> Path:
    """One scatter panel per entry ``name -> (x, y)``, side by side, saved as a PNG.

    Parameters
    ----------
    path : path
        Where to write the PNG.
    panels : mapping
        ``name -> (x values, y values)``.
    xlabel, ylabel : str
        Axis labels (shared).
    titles : mapping, optional
        Panel titles (default: the names).
    diagonal : bool
        Draw the ``y = x`` line.
    """
    plt = _pyplot()
    n = max(len(panels), 1)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.2), squeeze=False)
    lo = min((float(np.min(np.r_[x, y])) for x, y in panels.values()), default=0.0)
    hi = max((float(np.max(np.r_[x, y])) for x, y in panels.values()), default=1.0)
    pad = 0.02 * (hi - lo or 1.0)
    for ax, (name, (x, y)) in zip(axes[0], panels.items()):
        ax.scatter(x, y, s=6, alpha=0.6)
        if diagonal:
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=0.8)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_title((titles or {}).get(name, name), fontsize=9)
        ax.set_xlabel(xlabel)
    axes[0][0].set_ylabel(ylabel)
    return _save(fig, path)


def image_grid(
    path: str | os.PathLike,
    rows: Mapping[str, np.ndarray],
    *,
    vmin: float | None = None,
    vmax: float | None = None,
) -> Path:
    """A grid of greyscale images: one row per entry ``label -> (N, H, W)`` array."""
    plt = _pyplot()
    n_rows = len(rows)
    n_cols = max((len(v) for v in rows.values()), default=1)
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(1.1 * n_cols + 1.2, 1.1 * n_rows), squeeze=False
    )
    for r, (label, images) in enumerate(rows.items()):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(images):
                ax.imshow(np.asarray(images[c]), cmap="gray", vmin=vmin, vmax=vmax)
            else:
                ax.axis("off")
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    return _save(fig, path)


def bar_chart(
    path: str | os.PathLike,
    groups: Mapping[str, Mapping[str, tuple[float, float]]],
    *,
    ylabel: str,
) -> Path:
    """Grouped bars with error bars: ``group -> {bar label -> (mean, std)}``, one panel."""
    plt = _pyplot()
    labels: list[str] = []
    for g in groups.values():
        labels.extend(k for k in g if k not in labels)
    fig, ax = plt.subplots(figsize=(1.2 + 1.6 * max(len(groups), 1), 3.2))
    width = 0.8 / max(len(labels), 1)
    for i, label in enumerate(labels):
        xs, ms, ss = [], [], []
        for j, g in enumerate(groups.values()):
            if label in g:
                xs.append(j + (i - (len(labels) - 1) / 2) * width)
                ms.append(g[label][0])
                ss.append(g[label][1])
        ax.bar(xs, ms, width, yerr=ss, label=label, capsize=2)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(list(groups))
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    return _save(fig, path)


def learning_curves(
    path: str | os.PathLike,
    histories: Mapping[Any, Mapping[str, Sequence[Mapping[str, Any]]]],
    *,
    metric: str = "validation metric",
) -> Path:
    """Loss and validation metric per epoch, one row of two panels per trained model.

    Parameters
    ----------
    path : path
        Where to write the PNG.
    histories : mapping
        ``seed -> {model -> fit history}`` (the records of
        :attr:`~nfncompile.experiments.train.FitResult.history`: ``epoch``, ``train_loss``,
        ``val_loss``, ``val_metric``); each seed is one line.
    metric : str
        The label of the validation metric.
    """
    plt = _pyplot()
    models: list[str] = []
    for per_model in histories.values():
        models.extend(m for m in per_model if m not in models)
    fig, axes = plt.subplots(
        max(len(models), 1), 2, figsize=(7.5, 2.2 * max(len(models), 1)), squeeze=False
    )
    for row, model in zip(axes, models):
        for i, (seed, per_model) in enumerate(histories.items()):
            hist = per_model.get(model)
            if not hist:
                continue
            color = f"C{i % 10}"
            ep = [r["epoch"] for r in hist]
            row[0].plot(ep, [r["train_loss"] for r in hist], color=color, label=f"seed {seed}")
            val = [(r["epoch"], r["val_loss"]) for r in hist if r.get("val_loss") is not None]
            if val:
                row[0].plot(*zip(*val), color=color, ls="--")
            met = [(r["epoch"], r["val_metric"]) for r in hist if r.get("val_metric") is not None]
            if met:
                row[1].plot(*zip(*met), color=color)
        row[0].set_title(f"{model}: loss (train -, val --)", fontsize=8)
        row[1].set_title(f"{model}: {metric}", fontsize=8)
        row[0].legend(fontsize=6)
        for ax in row:
            ax.set_xlabel("epoch", fontsize=7)
            ax.tick_params(labelsize=6)
    return _save(fig, path, dpi=100)


def confusion_matrix(
    path: str | os.PathLike,
    panels: Mapping[str, tuple[np.ndarray, np.ndarray]],
    num_classes: int,
) -> Path:
    """Row-normalised confusion matrices, one panel per entry ``name -> (true, predicted)``."""
    plt = _pyplot()
    n = max(len(panels), 1)
    fig, axes = plt.subplots(1, n, figsize=(2.8 * n, 2.9), squeeze=False)
    for ax, (name, (true, pred)) in zip(axes[0], panels.items()):
        counts = np.zeros((num_classes, num_classes))
        np.add.at(counts, (np.asarray(true, dtype=int), np.asarray(pred, dtype=int)), 1)
        rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
        acc = float(np.trace(counts) / max(counts.sum(), 1))
        ax.set_title(f"{name} (acc {acc:.3f})", fontsize=8)
        ax.set_xlabel("predicted", fontsize=7)
        ax.set_xticks(range(num_classes))
        ax.set_yticks(range(num_classes))
        ax.tick_params(labelsize=6)
    axes[0][0].set_ylabel("true", fontsize=7)
    return _save(fig, path)


def density_curves(
    path: str | os.PathLike,
    curves: Mapping[str, Mapping[float, Mapping[str, tuple[float, float]]]],
    order: Sequence[str] = (),
) -> Path:
    """Accuracy vs. density, one panel per group and one line (mean, std bars) per kind.

    ``curves``: ``group -> {density -> {kind -> (mean, std)}}``; a kind present at one
    density only (the dense network) is drawn as a horizontal line.
    """
    plt = _pyplot()
    n = max(len(curves), 1)
    fig, axes = plt.subplots(1, n, figsize=(4.0 * n, 3.2), squeeze=False)
    for ax, (group, by_density) in zip(axes[0], curves.items()):
        densities = sorted(by_density)
        kinds: list[str] = [k for k in order if any(k in c for c in by_density.values())]
        for c in by_density.values():
            kinds.extend(k for k in c if k not in kinds)
        for i, kind in enumerate(kinds):
            points = [(d, *by_density[d][kind]) for d in densities if kind in by_density[d]]
            if len(points) == 1 and len(densities) > 1:
                ax.axhline(points[0][1], color="k", ls=":", lw=0.8, label=kind)
                continue
            xs, ms, ss = zip(*points)
            ax.errorbar(xs, ms, yerr=ss, marker="o", ms=3, capsize=2, color=f"C{i}", label=kind)
        ax.set_xscale("log")
        ax.set_xlabel("density (fraction of weights kept)")
        ax.set_title(group, fontsize=9)
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("test accuracy")
    return _save(fig, path)
