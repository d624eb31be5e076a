"""Running an experiment spec end to end: :func:`load_experiment` and :func:`run_experiment`
(what ``nfncompile run SPEC.yaml --out DIR [--quick]`` does).

Each task trains every model its experiment spec lists (NFNs and baselines) in one run and
writes ``DIR/results.json`` (``{"task": ..., "metrics": {model: {metric: value}}}``), PNG plots,
and prints a markdown table. The spec's schema is
:class:`~nfncompile.experiments.tasks.config.ExperimentConfig`; each task adds its own ``eval``
section; the tasks are those of :mod:`.registry`.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..declarative import parse
from ..errors import ConfigError
from ..files import load_yaml
from .registry import Task, get_task, task_names
from .tasks.config import ExperimentConfig, deep_merge, set_overrides
from .tasks.context import RunContext
from .tasks.report import aggregate, learning_curves, markdown_table, write_results
from .train import TrainConfig

__all__ = ["load_experiment", "run_experiment"]


def run_experiment(
    spec_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    quick: bool = False,
    device: str | None = None,
    progress: bool | None = None,
    echo: bool = True,
    threads: int | None = None,
    overrides: Sequence[str] = (),
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
    progress : bool or None
        Progress of every long step (``None``: the process setting, a bar on a terminal and
        a line every 30 s in a log; ``False``: none).
    echo : bool
        Print the markdown table on stdout.
    threads : int, optional
        torch CPU threads for the run (replaces the spec's ``threads``).
    overrides : sequence of str
        ``KEY=VALUE`` replacements of spec values (``--set``; see :func:`load_experiment`),
        recorded in the results' ``info``.

    Returns
    -------
    Results
    """
    cfg, ev, source, base_dir = load_experiment(spec_path, quick=quick, overrides=overrides)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    task = get_task(cfg.task)

    def context(out_dir: Path, model_seed: int | None) -> RunContext:
        return RunContext(
            config=cfg,
            eval=ev,
            source=source,
            base_dir=base_dir,
            out_dir=out_dir,
            quick=quick,
            device=device,
            progress=progress,
            model_seed=model_seed,
        )

    first = context(out, None)
    first.log(f"{source}: task {task.name}{' (quick)' if quick else ''}, out {out}")
    old_threads = torch.get_num_threads()
    n_threads = threads if threads is not None else cfg.threads
    if n_threads is not None:
        torch.set_num_threads(n_threads)
    histories: dict = {}
    try:
        if cfg.seeds is None:
            results = task.run(first)
            histories[cfg.seed] = first.histories
        else:
            runs = {}
            for seed in cfg.seeds:
                ctx = context(out / f"seed{seed}", seed)
                ctx.out_dir.mkdir(parents=True, exist_ok=True)
                first.log(f"model seed {seed} ({len(runs) + 1} of {len(cfg.seeds)})")
                t0 = time.perf_counter()
                runs[seed] = task.run(ctx)
                runs[seed].info["seconds"] = time.perf_counter() - t0
                histories[seed] = ctx.histories
                write_results(runs[seed], ctx.out_dir)
            results = aggregate(runs)
            first_seed = f"seed{cfg.seeds[0]}"
            results.plots = [f"{first_seed}/{p}" for p in runs[cfg.seeds[0]].plots]
    finally:
        torch.set_num_threads(old_threads)
    if any(histories.values()):
        curves = learning_curves(out / "learning_curves.png", histories)
        results.plots.append(curves.name)
    results.info.setdefault("spec", str(spec_path))
    results.info.setdefault("quick", quick)
    results.info["overrides"] = list(overrides)
    results.info["model_seeds"] = list(cfg.seeds) if cfg.seeds is not None else None
    write_results(results, out)
    table = markdown_table(results)
    title = f"## {task.name}" + (" (quick)" if quick else "")
    changed = "With " + " ".join(f"`--set {o}`" for o in overrides) + "." if overrides else ""
    parts = [title, cfg.description.strip(), changed, _seeds_line(cfg), table, _plots_line(results)]
    text = "\n\n".join(p for p in parts if p) + "\n"
    (out / "results.md").write_text(text)
    if echo:
        print(text)
    return results


def _seeds_line(cfg: ExperimentConfig) -> str:
    if cfg.seeds is None:
        return ""
    return (
        f"Mean ± std over {len(cfg.seeds)} model seeds {list(cfg.seeds)} (the zoo and its "
        f"split fixed by seed {cfg.seed})."
    )


def _plots_line(results: Any) -> str:
    if not results.plots:
        return ""
    return "Plots: " + ", ".join(f"[{Path(p).name}]({p})" for p in results.plots)


def load_experiment(
    path: str | os.PathLike, *, quick: bool = False, overrides: Sequence[str] = ()
) -> tuple[ExperimentConfig, Any, str, Path]:
    """Read and validate an experiment spec.

    Both the file and its ``quick`` form are validated, whichever is asked for, so a mistake
    in the ``quick`` section is reported before a long run.

    Parameters
    ----------
    path : path
        The experiment YAML.
    quick : bool
        Apply the ``quick`` overrides.
    overrides : sequence of str
        ``KEY=VALUE`` assignments (``nfncompile run --set``, :func:`set_overrides`), applied to
        the spec and, after its quick overrides, to its quick form.

    Returns
    -------
    config : ExperimentConfig
    eval : dataclass
        The task's parsed ``eval`` section.
    source : str
    base_dir : Path

    Raises
    ------
    ConfigError
        Path-qualified (``specs/experiments/x.yaml: train.lr: expected a number >= 0, ...``).
    """
    data, source = load_yaml(path)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping with keys task, models, ...")
    if overrides:
        data = set_overrides(data, overrides)
        source = f"{source} (with --set {' '.join(overrides)})"
    full = parse(ExperimentConfig, data, source=source)
    task = _task(full.task, source)
    _check_model_train(full, source)
    full_eval = _parse_eval(task, full, source)
    cfg, ev = full, full_eval
    if full.quick is not None:
        merged = deep_merge({k: v for k, v in data.items() if k != "quick"}, full.quick)
        merged.pop("quick", None)
        merged = set_overrides(merged, overrides)
        qsource = f"{source} (with its quick overrides)"
        qcfg = parse(ExperimentConfig, merged, source=qsource)
        _check_model_train(qcfg, qsource)
        if qcfg.task != full.task:
            raise ConfigError(f"{source}: quick.task: the quick form cannot change the task")
        qev = _parse_eval(task, qcfg, qsource)
        if quick:
            cfg, ev = qcfg, qev
    elif quick:
        raise ConfigError(f"{source}: quick: --quick given, but the spec has no quick: section")
    return cfg, ev, source, Path(path).parent


def _parse_eval(task: Task, cfg: ExperimentConfig, source: str) -> Any:
    """The task's ``eval`` section, checked against the rest of the experiment (its ``check``
    method, where the eval dataclass has one) before anything runs."""
    ev = parse(task.eval_config, cfg.eval, source=source, path="eval")
    check = getattr(ev, "check", None)
    if check is not None:
        check(cfg.models, source)
    return ev


def _check_model_train(cfg: ExperimentConfig, source: str) -> None:
    base = dataclasses.asdict(cfg.train)
    for name, override in cfg.model_train.items():
        parse(TrainConfig, {**base, **override}, source=source, path=f"model_train.{name}")


def _task(name: str, source: str) -> Task:
    """The registered task ``name``; a path-qualified ConfigError listing the valid ones."""
    names = task_names()
    if name not in names:
        near = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError(f"{source}: task: expected one of {', '.join(names)}, got {name!r}{hint}")
    return get_task(name)
