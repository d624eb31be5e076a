"""The paper's weight-space tasks, end to end: ``nfncompile run SPEC.yaml --out DIR [--quick]``.

Each task trains every model its experiment spec lists (NFNs and baselines) in one run and
writes ``DIR/results.json`` (``{"task": ..., "metrics": {model: {metric: value}}}``), PNG plots,
and prints a markdown table.

=================== ========================================================================
task                what it measures
=================== ========================================================================
generalization      Kendall's tau of predicted vs. true test accuracy of held-out CNNs
inr_classification  test accuracy of classifying SIRENs (fit to digit images) by digit
inr_editing         test MSE of edited SIRENs vs. the dilated images
winning_tickets     accuracy of sparse nets trained from NFN-predicted masks vs. baselines
=================== ========================================================================

The experiment schema is :class:`~nfncompile.experiments.tasks.common.ExperimentConfig`; each task adds its
own ``eval`` section. New tasks register with :func:`register_task`.

Examples
--------
>>> sorted(task_names())
['generalization', 'inr_classification', 'inr_editing', 'winning_tickets']
>>> get_task("generalization").eval_config.__name__
'GeneralizationEval'
"""

from __future__ import annotations

import argparse
import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import ConfigError

__all__ = [
    "Task",
    "register_task",
    "get_task",
    "task_names",
    "run_experiment",
    "add_run_arguments",
    "run_command",
]


@dataclass(frozen=True)
class Task:
    """A registered task.

    Attributes
    ----------
    name : str
        What an experiment spec's ``task:`` names.
    eval_config : type
        Frozen dataclass of the spec's ``eval`` section.
    run : callable
        ``run(ctx: RunContext) -> Results``.
    help : str
        One line.
    """

    name: str
    eval_config: type
    run: Callable[[Any], Any]
    help: str = ""


_TASKS: dict[str, Task] = {}
#: Built-in tasks, imported on first use (each module registers its task).
_BUILTIN = ("generalization", "inr_classification", "inr_editing", "winning_tickets")


def _import_builtin(name: str) -> None:
    """Import a built-in task's module (it registers itself)."""
    if name == "generalization":
        from . import generalization  # noqa: F401
    elif name == "inr_classification":
        from . import inr_classification  # noqa: F401
    elif name == "inr_editing":
        from . import inr_editing  # noqa: F401
    else:
        from . import winning_tickets  # noqa: F401


def register_task(task: Task) -> Task:
    """Make ``task`` available to experiment specs (replacing one of the same name)."""
    if not isinstance(task, Task):
        raise TypeError(f"expected a Task, got {type(task).__name__}")
    _TASKS[task.name] = task
    return task


def task_names() -> list[str]:
    """Names of every task (built-in and registered)."""
    return list(dict.fromkeys([*_BUILTIN, *_TASKS]))


def get_task(name: str) -> Task:
    """The task called ``name``.

    Raises
    ------
    ConfigError
        For an unknown name (with the nearest valid one).
    """
    if name not in _TASKS and name in _BUILTIN:
        _import_builtin(name)
    if name not in _TASKS:
        near = difflib.get_close_matches(str(name), task_names(), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError(f"unknown task {name!r}{hint}; valid tasks: {', '.join(task_names())}")
    return _TASKS[name]


def run_experiment(
    spec_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    quick: bool = False,
    device: str | None = None,
    progress: bool = False,
    echo: bool = True,
    threads: int | None = None,
) -> Any:
    """Run an experiment spec: train and evaluate every model, write results and plots.

    Parameters
    ----------
    spec_path : path
        The experiment YAML (``specs/experiments/*.yaml``).
    out_dir : path
        Output directory: ``results.json``, ``results.md``, PNGs, ``checkpoints/``.
    quick : bool
        Apply the spec's ``quick`` overrides (a small, fast version of the run).
    device : str, optional
        ``cpu``, ``cuda``, ``cuda:N`` or ``auto``; replaces ``train.device``.
    progress : bool
        Show progress bars.
    echo : bool
        Print the markdown table on stdout.
    threads : int, optional
        torch CPU threads for the run (replaces the spec's ``threads``).

    Returns
    -------
    Results
    """
    from .common import RunContext, load_experiment
    from .report import markdown_table, write_results

    cfg, ev, source, base_dir = load_experiment(spec_path, quick=quick)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(
        config=cfg,
        eval=ev,
        source=source,
        base_dir=base_dir,
        out_dir=out,
        quick=quick,
        device=device,
        progress=progress,
    )
    task = get_task(cfg.task)
    ctx.log(f"{source}: task {task.name}{' (quick)' if quick else ''}, out {out}")
    import torch

    old_threads = torch.get_num_threads()
    n_threads = threads if threads is not None else cfg.threads
    if n_threads is not None:
        torch.set_num_threads(n_threads)
    try:
        results = task.run(ctx)
    finally:
        torch.set_num_threads(old_threads)
    results.info.setdefault("spec", str(spec_path))
    results.info.setdefault("quick", quick)
    write_results(results, out)
    table = markdown_table(results)
    title = f"## {task.name}" + (" (quick)" if quick else "")
    text = f"{title}\n\n{cfg.description.strip()}\n\n{table}\n" if cfg.description else ""
    text = text or f"{title}\n\n{table}\n"
    (out / "results.md").write_text(text)
    if echo:
        print(text)
    return results


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``nfncompile run``."""
    parser.add_argument("spec", help="experiment spec YAML (specs/experiments/*.yaml)")
    parser.add_argument("--out", required=True, help="output directory (results.json, plots)")
    parser.add_argument(
        "--quick", action="store_true", help="apply the spec's quick overrides (small, fast run)"
    )
    parser.add_argument(
        "--device", default=None, help="auto, cpu, cuda or cuda:N (replaces train.device)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (replaces the spec's)"
    )
    parser.add_argument("--progress", action="store_true", help="show progress bars")


def run_command(args: argparse.Namespace) -> int:
    """Handler of ``nfncompile run``: returns the exit code."""
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be a positive int, got {args.threads}")
    run_experiment(
        args.spec,
        args.out,
        quick=args.quick,
        device=args.device,
        progress=args.progress,
        threads=args.threads,
    )
    return 0
