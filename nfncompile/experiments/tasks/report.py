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
    """

    task: str
    metrics: dict
    info: dict = field(default_factory=dict)
    plots: list = field(default_factory=list)

    def to_dict(self) -> dict:
        """The JSON form: ``task``, ``metrics``, ``info``, ``plots``."""
        return {
            "task": self.task,
            "metrics": _jsonable(self.metrics),
            "info": _jsonable(self.info),
            "plots": list(self.plots),
        }


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
    table = results.metrics if isinstance(results, Results) else results["metrics"]
    if metrics is None:
        metrics = []
        for row in table.values():
            metrics.extend(k for k in row if k not in metrics)
    lines = [
        "| model | " + " | ".join(metrics) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    for name, row in table.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(row.get(m)) for m in metrics) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# plots (matplotlib, Agg backend: no display needed)
# --------------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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
    fig.tight_layout()
    p = Path(path)
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p


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
    fig.tight_layout()
    p = Path(path)
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p


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
    fig.tight_layout()
    p = Path(path)
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p
