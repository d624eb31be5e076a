"""The experiment spec: one task, one zoo, every model it compares, training and evaluation.

An experiment spec is a YAML file::

    task: generalization              # a registered task (nfncompile.experiments.registry)
    seed: 0                           # seeds the split (and, without seeds:, the models)
    seeds: [0, 1, 2]                  # model seeds: one run each, tables give mean +- std
    zoo:                              # the model zoo the task reads (generated when missing)
      spec: ../zoos/digits_cnn.yaml   # zoo spec, relative to this file
      dir: zoos/digits_cnn            # zoo directory, relative to the working directory
    models:                           # every model compared in the one run
      nfn_hnp: ../nfn/small_cnn_hnp.yaml      # a model spec file (relative to this file) ...
      stat_nn: {stat_nn: {head: {hidden: [64], out_features: 1}}}   # ... or one inline
    train: {epochs: 30, batch_size: 32, lr: 1e-3}    # nfncompile.experiments.train.TrainConfig
    model_train: {mlp: {lr: 1e-4}}    # per-model TrainConfig overrides (optional)
    eval: {...}                       # the task's own settings (see each task's EvalConfig)
    quick: {train: {epochs: 2}, ...}  # overrides applied by --quick (deep-merged)

Model specs follow :mod:`nfncompile.declarative`; their ``weight_space`` may be left out, since
the task passes the zoo's weight-space spec to :func:`~nfncompile.declarative.build_model`.
:func:`~nfncompile.experiments.runner.load_experiment` reads a spec (and checks its task name
against the registry).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...declarative import ModelConfig
from ...errors import ConfigError, FieldError
from ...files import loads_yaml
from ..train import TrainConfig

__all__ = ["ZooRef", "ExperimentConfig", "deep_merge", "set_overrides"]


@dataclass(frozen=True)
class ZooRef:
    """The model zoo a task reads: its spec and its directory (generated when missing)."""

    spec: str = field(metadata={"help": "zoo spec YAML, relative to the experiment file"})
    dir: str = field(
        metadata={"help": "zoo directory (relative paths start at the working directory)"}
    )
    quick: bool = field(
        default=False, metadata={"help": "use the zoo spec's own quick: form (a tiny zoo)"}
    )
    overrides: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "zoo spec keys replaced before generation (e.g. num_models)"},
    )
    generate: bool = field(
        default=True, metadata={"help": "generate the zoo from its spec when dir has none"}
    )
    workers: int | None = field(
        default=None, metadata={"min": 1, "help": "zoo generation processes (null: all CPUs)"}
    )


@dataclass(frozen=True)
class ExperimentConfig:
    """An experiment: one task, one zoo, every model it compares, training and evaluation."""

    task: str = field(metadata={"help": "which task to run (a registered task's name)"})
    models: dict[str, ModelConfig | str] = field(
        metadata={"help": "name -> model spec (inline, or a YAML path relative to this file)"}
    )
    zoo: ZooRef | None = field(default=None, metadata={"help": "the model zoo the task reads"})
    train: TrainConfig = field(
        default_factory=TrainConfig, metadata={"help": "nfncompile.experiments.train.TrainConfig"}
    )
    model_train: dict[str, dict[str, Any]] = field(
        default_factory=dict,
        metadata={"help": "per-model TrainConfig keys that replace those of train"},
    )
    eval: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "the task's own settings (its EvalConfig)"}
    )
    seed: int = field(default=0, metadata={"min": 0, "help": "seeds splits and model inits"})
    seeds: tuple[int, ...] | None = field(
        default=None,
        metadata={
            "min": 0,
            "help": "model seeds: train and evaluate every model once per seed (the zoo and "
            "split stay those of seed) and report mean +- std; null: one run",
        },
    )
    threads: int | None = field(
        default=None,
        metadata={"min": 1, "help": "torch CPU threads for the run (null: torch's default)"},
    )
    description: str = field(default="", metadata={"help": "free text, printed with the table"})
    quick: dict[str, Any] | None = field(
        default=None, metadata={"help": "overrides deep-merged into this file by --quick"}
    )

    def __post_init__(self) -> None:
        if not self.models:
            raise FieldError("models", "expected at least one model")
        if self.seeds is not None:
            if not self.seeds:
                raise FieldError("seeds", "expected at least one seed (or null for one run)")
            if len(set(self.seeds)) != len(self.seeds):
                raise FieldError("seeds", f"names a seed twice: {list(self.seeds)}")
        unknown = sorted(set(self.model_train) - set(self.models))
        if unknown:
            raise FieldError(
                f"model_train.{unknown[0]}",
                f"no such model; models: {', '.join(self.models)}",
            )


def deep_merge(base: Any, override: Any) -> Any:
    """``override`` merged into ``base``: mappings recursively, anything else replaced.

    Examples
    --------
    >>> deep_merge({"a": {"x": 1, "y": 2}, "b": [1]}, {"a": {"y": 3}, "b": [2]})
    {'a': {'x': 1, 'y': 3}, 'b': [2]}
    """
    if isinstance(base, Mapping) and isinstance(override, Mapping):
        out = dict(base)
        for k, v in override.items():
            out[k] = deep_merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    return copy.deepcopy(override)


def set_overrides(data: Any, overrides: Sequence[str]) -> Any:
    """``data`` with each ``KEY=VALUE`` of ``overrides`` assigned (``nfncompile run --set``).

    ``KEY`` is a dotted path into the spec (mapping keys, or list indices from 0); ``VALUE``
    is read as YAML (``60``, ``1e-3``, ``[nfn_hnp]``, ``null``, ``{epochs: 2}``). Missing
    mapping keys are created, so a new section can be set; whether the result is a valid spec
    is checked afterwards, like any spec, with the key's path in the message.

    Raises
    ------
    ConfigError
        Naming the override, when it is not ``KEY=VALUE``, its value is not YAML, or its path
        runs through a value that is not a mapping or a list, or past a list's end.

    Examples
    --------
    >>> spec = {"train": {"epochs": 60}, "models": {"a": {"layers": [{"channels": 16}]}}}
    >>> set_overrides(spec, ["train.epochs=30", "models.a.layers.0.channels=8"])
    {'train': {'epochs': 30}, 'models': {'a': {'layers': [{'channels': 8}]}}}
    >>> set_overrides(spec, ["train.epochs"])
    Traceback (most recent call last):
    ...
    nfncompile.errors.ConfigError: --set 'train.epochs': expected KEY=VALUE, KEY a dotted path such as train.epochs or models.nfn_hnp.nfn.layers.1.channels
    """
    out = copy.deepcopy(data)
    for item in overrides:
        key, sep, text = item.partition("=")
        keys = key.strip().split(".")
        if not sep or not all(k.strip() for k in keys):
            raise ConfigError(
                f"--set {item!r}: expected KEY=VALUE, KEY a dotted path such as train.epochs "
                "or models.nfn_hnp.nfn.layers.1.channels"
            )
        value = loads_yaml(text, source=f"--set {item!r}")
        node = out
        for depth, k in enumerate(keys):
            last = depth == len(keys) - 1
            where = ".".join(keys[: depth + 1])
            if isinstance(node, dict):
                if last:
                    node[k] = value
                else:
                    node = node.setdefault(k, {})
            elif isinstance(node, list):
                if not k.isdigit() or int(k) >= len(node):
                    raise ConfigError(
                        f"--set {item!r}: {where}: a list of {len(node)} items; "
                        f"expected an index 0-{len(node) - 1}"
                    )
                if last:
                    node[int(k)] = value
                else:
                    node = node[int(k)]
            else:
                raise ConfigError(
                    f"--set {item!r}: {'.'.join(keys[:depth]) or 'the spec'} is "
                    f"{node!r}, not a mapping or a list"
                )
    return out
