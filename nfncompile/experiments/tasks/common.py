"""What every task shares: the experiment schema, loading with ``--quick``, zoos, models, data.

An experiment spec is a YAML file::

    task: generalization              # a registered task (nfncompile.experiments.tasks.TASKS)
    seed: 0
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

Model specs follow :mod:`nfncompile.declarative.config`; their ``weight_space`` may be left out, since the
task passes the zoo's weight-space spec to :func:`~nfncompile.declarative.builder.build`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...declarative import ModelConfig, build_model, parse
from ...declarative import load as load_model_config
from ...errors import ConfigError, FieldError
from ...features import WeightSpaceFeatures
from ...files import load_yaml as _load_yaml
from ...spec import WeightSpaceSpec
from ..train import FitResult, TrainConfig, fit, predict

__all__ = [
    "ZooRef",
    "ExperimentConfig",
    "RunContext",
    "load_experiment",
    "deep_merge",
    "FeatureStore",
    "ParamScale",
    "permutation_augment",
    "batched_forward",
    "predictions",
    "count_parameters",
]


# --------------------------------------------------------------------------------------------
# schema
# --------------------------------------------------------------------------------------------


def _task_names() -> tuple:
    from . import task_names

    return tuple(task_names())


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

    task: str = field(metadata={"choices": _task_names, "help": "which task to run"})
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


@dataclass
class RunContext:
    """Everything a task's ``run`` needs.

    Attributes
    ----------
    config : ExperimentConfig
        With ``--quick`` overrides already applied.
    eval : dataclass
        The task's parsed ``eval`` section.
    source : str
        The experiment file (for error messages).
    base_dir : Path
        The experiment file's directory (relative model / zoo spec paths start there).
    out_dir : Path
        Where results, plots and checkpoints go.
    quick : bool
        Whether ``--quick`` was given.
    device : str or None
        ``--device``; replaces ``train.device`` of every model when given.
    progress : bool
        Show progress bars.
    """

    config: ExperimentConfig
    eval: Any
    source: str
    base_dir: Path
    out_dir: Path
    quick: bool = False
    device: str | None = None
    progress: bool = False
    _t0: float = field(default_factory=time.perf_counter)

    def log(self, message: str) -> None:
        """A progress line on stderr, with the time since the run started."""
        print(f"[{time.perf_counter() - self._t0:7.1f}s] {message}", file=sys.stderr, flush=True)

    # ---- training -------------------------------------------------------------------------

    def train_config(self, name: str | None = None, **replace: Any) -> TrainConfig:
        """The TrainConfig for model ``name``: ``train``, then ``model_train[name]``,
        then ``replace``, then ``--device``."""
        cfg = self.config.train
        if name is not None and name in self.config.model_train:
            data = {**dataclasses.asdict(cfg), **self.config.model_train[name]}
            cfg = parse(TrainConfig, data, source=self.source, path=f"model_train.{name}")
        if replace:
            cfg = dataclasses.replace(cfg, **replace)
        if self.device is not None:
            cfg = dataclasses.replace(cfg, device=self.device)
        return cfg

    def fit(self, name: str, model: nn.Module, train: Any, val: Any, **kwargs: Any) -> FitResult:
        """:func:`nfncompile.experiments.train.fit` with the model's config and a checkpoint directory
        ``out/checkpoints/<name>`` (so a rerun resumes)."""
        config = kwargs.pop("config", None) or self.train_config(name)
        t0 = time.perf_counter()
        result = fit(
            model,
            train,
            val,
            config=config,
            checkpoint_dir=self.out_dir / "checkpoints" / name,
            progress=self.progress,
            **kwargs,
        )
        self.log(
            f"{name}: trained {result.epochs_completed} epochs in {time.perf_counter() - t0:.1f}s"
            f" (best epoch {result.best_epoch}, score {_short(result.best_score)})"
        )
        return result

    # ---- models ---------------------------------------------------------------------------

    def model_config(self, name: str) -> tuple[ModelConfig, str, Path]:
        """``(config, source, base_dir)`` of model ``name`` (reading its file if it is a path)."""
        entry = self.config.models[name]
        if isinstance(entry, str):
            path = self.base_dir / entry
            if not path.exists():
                raise ConfigError(f"{self.source}: models.{name}: no such model spec {entry!r}")
            return load_model_config(path), str(path), path.parent
        return entry, f"{self.source}: models.{name}", self.base_dir

    def build(self, name: str, spec: WeightSpaceSpec, seed_offset: int = 0) -> nn.Module:
        """Build model ``name`` for ``spec``, its initialisation seeded."""
        cfg, source, base = self.model_config(name)
        torch.manual_seed(self.config.seed * 1000 + seed_offset + _stable_hash(name))
        return build_model(cfg, spec=spec, base_dir=base, source=source)

    # ---- zoo ------------------------------------------------------------------------------

    def zoo(self) -> Any:
        """Load the experiment's zoo, generating (or finishing) it first when needed.

        Raises
        ------
        ConfigError
            When the directory holds a zoo made from another config than the spec asks for.
        """
        from ... import zoo as zoo_mod

        ref = self.config.zoo
        if ref is None:
            raise ConfigError(f"{self.source}: zoo: task {self.config.task!r} needs a zoo")
        zdir = Path(ref.dir)
        spec_path = self.base_dir / ref.spec
        data, zsource = _load_yaml(spec_path) if spec_path.exists() else (None, str(spec_path))
        if data is None:
            raise ConfigError(f"{self.source}: zoo.spec: no such file {str(spec_path)!r}")
        if ref.overrides:
            data = deep_merge(data, ref.overrides)
        wanted = zoo_mod.config_from_dict(data, source=zsource, quick=ref.quick)
        manifest = zdir / "manifest.json"
        complete = manifest.exists() and bool(_read_json(manifest).get("complete"))
        if not complete:
            if not ref.generate:
                raise ConfigError(
                    f"{self.source}: zoo.dir: {zdir} holds no finished zoo and zoo.generate "
                    "is false"
                )
            workers = ref.workers or _cpu_count()
            self.log(f"generating zoo {zdir} from {spec_path} ({workers} workers)")
            t0 = time.perf_counter()
            report = zoo_mod.generate_zoo(
                wanted,
                zdir,
                workers=workers,
                progress=self.progress,
                spec=str(spec_path),
                quick=ref.quick,
            )
            self.log(f"zoo generated in {time.perf_counter() - t0:.1f}s: {report}")
        zoo = zoo_mod.load_zoo(zdir)
        if zoo.config != wanted:
            raise ConfigError(
                f"{self.source}: zoo.dir: {zdir} holds a zoo made from another config than "
                f"{ref.spec} (with the experiment's zoo overrides) describes; delete it or "
                "point zoo.dir elsewhere"
            )
        return zoo


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _short(x: Any) -> str:
    return "-" if x is None else f"{x:.4g}"


def _stable_hash(name: str) -> int:
    return sum((i + 1) * ord(c) for i, c in enumerate(name)) % 997


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------


def load_experiment(
    path: str | os.PathLike, *, quick: bool = False
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
    from . import get_task

    data, source = _load_yaml(path)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping with keys task, models, ...")
    full = parse(ExperimentConfig, data, source=source)
    _check_model_train(full, source)
    task = get_task(full.task)
    full_eval = parse(task.eval_config, full.eval, source=source, path="eval")
    cfg, ev = full, full_eval
    if full.quick is not None:
        merged = deep_merge({k: v for k, v in data.items() if k != "quick"}, full.quick)
        merged.pop("quick", None)
        qsource = f"{source} (with its quick overrides)"
        qcfg = parse(ExperimentConfig, merged, source=qsource)
        _check_model_train(qcfg, qsource)
        if qcfg.task != full.task:
            raise ConfigError(f"{source}: quick.task: the quick form cannot change the task")
        qev = parse(task.eval_config, qcfg.eval, source=qsource, path="eval")
        if quick:
            cfg, ev = qcfg, qev
    elif quick:
        raise ConfigError(f"{source}: quick: --quick given, but the spec has no quick: section")
    return cfg, ev, source, Path(path).parent


def _check_model_train(cfg: ExperimentConfig, source: str) -> None:
    base = dataclasses.asdict(cfg.train)
    for name, override in cfg.model_train.items():
        parse(TrainConfig, {**base, **override}, source=source, path=f"model_train.{name}")


# --------------------------------------------------------------------------------------------
# data plumbing
# --------------------------------------------------------------------------------------------


class ParamScale:
    """Per-parameter scalar scales: features are divided by the std of each parameter tensor.

    One scalar per parameter (computed on the training networks) keeps every symmetry: it
    rescales all entries of a tensor alike. It puts SIREN layers (first-layer weights ~0.5,
    later ones ~0.01) on one footing.

    Parameters
    ----------
    features : WeightSpaceFeatures
        The training networks (``C = 1``).
    """

    def __init__(self, features: WeightSpaceFeatures, eps: float = 1e-8) -> None:
        self.scale = {k: float(v.std()) + eps for k, v in features.items()}

    def normalize(self, features: WeightSpaceFeatures) -> WeightSpaceFeatures:
        return WeightSpaceFeatures({k: v / self.scale[k] for k, v in features.items()})

    def denormalize(self, features: WeightSpaceFeatures) -> WeightSpaceFeatures:
        return WeightSpaceFeatures({k: v * self.scale[k] for k, v in features.items()})


@dataclass(frozen=True)
class ZooSplit:
    """The first ``n`` networks of a zoo split by seed, features normalised on the train part.

    Attributes
    ----------
    n : int
        How many networks are used.
    train, val, test : torch.Tensor
        Row indices of each part.
    scale : ParamScale
        Per-parameter scales fitted on ``train``.
    features : WeightSpaceFeatures
        Every used network's weights, normalised by ``scale``.
    """

    n: int
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    scale: ParamScale
    features: WeightSpaceFeatures


def split_zoo(
    ctx: RunContext,
    zoo: Any,
    spec: WeightSpaceSpec,
    max_networks: int | None,
    fractions: Sequence[float],
) -> ZooSplit:
    """Take the first ``max_networks`` networks (all by default), split them with the
    experiment's seed and normalise their weights with scales fitted on the train part."""
    from ...zoo.data import split_indices
    from .zoo_access import zoo_features, zoo_size

    n = zoo_size(zoo) if max_networks is None else min(zoo_size(zoo), max_networks)
    rows = torch.arange(n)
    tr, va, te = (rows[i] for i in split_indices(n, fractions, seed=ctx.config.seed))
    feats = zoo_features(zoo, spec, rows)
    scale = ParamScale(feats.map(lambda t: t[tr]))
    return ZooSplit(n, tr, va, te, scale, scale.normalize(feats))


class FeatureStore:
    """All networks' features and targets in memory; datasets are lists of indices.

    ``fit`` and ``predict`` batch with :meth:`collate`, which gathers rows at once (much
    faster than concatenating one-network items).

    Parameters
    ----------
    features : WeightSpaceFeatures
        ``(N, C, *shape)`` per parameter.
    targets : Tensor
        ``(N, ...)``.

    Examples
    --------
    >>> import torch
    >>> store = FeatureStore(WeightSpaceFeatures({"w": torch.zeros(5, 1, 2)}), torch.arange(5))
    >>> inputs, targets = store.collate(store.subset(torch.tensor([1, 3])))
    >>> inputs["w"].shape, targets.tolist()
    (torch.Size([2, 1, 2]), [1, 3])
    """

    def __init__(self, features: WeightSpaceFeatures, targets: torch.Tensor) -> None:
        if features.batch_size != len(targets):
            raise ConfigError(
                f"FeatureStore: {features.batch_size} networks but {len(targets)} targets"
            )
        self.features = features
        self.targets = targets

    def subset(self, indices: torch.Tensor | Sequence[int]) -> list[int]:
        """A dataset (a list of row indices) for ``fit`` / ``predict``."""
        return [int(i) for i in indices]

    def collate(self, rows: Sequence[int]) -> tuple[WeightSpaceFeatures, torch.Tensor]:
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        return (
            WeightSpaceFeatures({k: v.index_select(0, idx) for k, v in self.features.items()}),
            self.targets.index_select(0, idx),
        )


def permutation_augment(spec: WeightSpaceSpec, mode: str = "np") -> Callable:
    """An ``augment`` for :func:`~nfncompile.experiments.train.fit`: a fresh random group element of
    ``spec`` (in ``mode``) applied to each network of the batch; targets unchanged."""

    def augment(batch: Any, generator: torch.Generator) -> Any:
        inputs, targets = batch
        parts = []
        for b in range(inputs.batch_size):
            one = WeightSpaceFeatures({k: v[b : b + 1] for k, v in inputs.items()})
            parts.append(spec.sample_permutation(generator, mode=mode).apply(one))
        return WeightSpaceFeatures({k: torch.cat([p[k] for p in parts]) for k in inputs}), targets

    return augment


def batched_forward(net: nn.Module, params: Mapping[str, torch.Tensor], x: torch.Tensor) -> Any:
    """Run ``net`` with a batch of parameter sets ``name -> (B, *shape)`` on one input ``x``.

    Returns ``(B, *net(x).shape)``; differentiable in ``params`` (``torch.func.vmap`` over
    ``torch.func.functional_call``).
    """
    from torch.func import functional_call, vmap

    return vmap(lambda p: functional_call(net, p, (x,)), in_dims=(0,))(dict(params))


def predictions(model: nn.Module, store: FeatureStore, rows: Sequence[int], batch_size: int) -> Any:
    """``(outputs, targets)`` of ``model`` on ``rows`` of ``store``, in order."""
    return predict(
        model, rows, batch_size=batch_size, collate_fn=store.collate, return_targets=True
    )


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
