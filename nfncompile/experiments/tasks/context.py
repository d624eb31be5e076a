"""What a task's ``run`` receives: :class:`RunContext` (config, output directory, logging,
training, model building and the zoo)."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...declarative import ModelConfig, build_model, parse
from ...declarative import load as load_model_config
from ...errors import ConfigError, Interrupted
from ...files import load_yaml
from ...spec import WeightSpaceSpec
from ...zoo import config_from_dict, default_workers, generate_zoo, load_zoo
from ..train import FitResult, TrainConfig, fit, read_state
from .config import ExperimentConfig, deep_merge

__all__ = ["RunContext"]


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
    progress : bool or None
        Progress of zoo generation and training (``None``: the process setting, see
        :mod:`nfncompile.progress`; ``False``: none).
    model_seed : int or None
        One of the spec's ``seeds`` (seeds model inits and ``train.seed``); ``None``: the
        spec's ``seed`` seeds model inits and ``train.seed`` is kept.
    histories : dict
        ``fit`` name -> its per-epoch history (for the learning curves), filled by :meth:`fit`.
    """

    config: ExperimentConfig
    eval: Any
    source: str
    base_dir: Path
    out_dir: Path
    quick: bool = False
    device: str | None = None
    progress: bool | None = None
    model_seed: int | None = None
    histories: dict = field(default_factory=dict)
    _t0: float = field(default_factory=time.perf_counter)

    def log(self, message: str) -> None:
        """A progress line on stderr, with the time since the run started."""
        print(f"[{time.perf_counter() - self._t0:7.1f}s] {message}", file=sys.stderr, flush=True)

    # ---- training -------------------------------------------------------------------------

    def train_config(self, name: str | None = None, **replace: Any) -> TrainConfig:
        """The TrainConfig for model ``name``: ``train``, then ``model_train[name]``,
        then ``replace``, then the model seed, then ``--device``."""
        cfg = self.config.train
        if name is not None and name in self.config.model_train:
            data = {**dataclasses.asdict(cfg), **self.config.model_train[name]}
            cfg = parse(TrainConfig, data, source=self.source, path=f"model_train.{name}")
        if replace:
            cfg = dataclasses.replace(cfg, **replace)
        if self.model_seed is not None:
            cfg = dataclasses.replace(cfg, seed=self.model_seed)
        if self.device is not None:
            cfg = dataclasses.replace(cfg, device=self.device)
        return cfg

    def fit(self, name: str, model: nn.Module, train: Any, val: Any, **kwargs: Any) -> FitResult:
        """:func:`nfncompile.experiments.train.fit` with the model's config and a checkpoint directory
        ``out/checkpoints/<name>`` (so a rerun resumes)."""
        config = kwargs.pop("config", None) or self.train_config(name)
        ckdir = self.out_dir / "checkpoints" / name
        self._stamp_checkpoints(name, ckdir)
        t0 = time.perf_counter()
        try:
            result = fit(
                model,
                train,
                val,
                config=config,
                checkpoint_dir=ckdir,
                progress=self.progress,
                desc=name,
                **kwargs,
            )
        except KeyboardInterrupt:
            epoch = _checkpointed_epoch(ckdir)
            raise Interrupted(
                f"{name}: stopped during epoch {epoch + 1} of {config.epochs} "
                f"({epoch} epochs and every model trained before it are checkpointed in "
                f"{self.out_dir / 'checkpoints'})"
            ) from None
        self.histories[name] = [dict(r) for r in result.history]
        seconds = time.perf_counter() - t0
        best = f"best epoch {result.best_epoch}, score {_short(result.best_score)}"
        start, end = result.resumed_from, result.epochs_completed
        if start == 0:
            self.log(f"{name}: trained {end} epochs in {seconds:.1f}s ({best})")
        elif start >= end:
            self.log(f"{name}: already trained ({end} epochs, read from {ckdir}; {best})")
        else:
            self.log(
                f"{name}: resumed at epoch {start}, trained epochs {start + 1}-{end} in "
                f"{seconds:.1f}s ({best})"
            )
        return result

    def _stamp_checkpoints(self, name: str, ckdir: Path) -> None:
        """Record in ``ckdir/spec.json`` what the checkpoints were trained for (the model's
        spec and the task's ``eval``), and refuse to resume checkpoints of another one:
        ``fit`` itself only checks the optimiser settings and the weights' shapes, which a
        changed spec (``--set``, an edited file) can leave equal."""
        stamp: dict[str, Any] = {"eval": dataclasses.asdict(self.eval)}
        if name in self.config.models:
            stamp["model"] = dataclasses.asdict(self.model_config(name)[0])
        stamp = json.loads(json.dumps(stamp, default=str))
        path = ckdir / "spec.json"
        if path.exists():
            old = json.loads(path.read_text())
            where = _first_difference(old, stamp)
            if where is not None:
                raise ConfigError(
                    f"{ckdir}: these checkpoints were trained for another spec ({where} "
                    f"differs: {_at(old, where)!r} then, {_at(stamp, where)!r} now); "
                    "use another --out, or delete the folder to retrain"
                )
        elif not (ckdir / "last.safetensors").exists():
            ckdir.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(stamp, indent=1) + "\n")

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
        seed = self.config.seed if self.model_seed is None else self.model_seed
        torch.manual_seed(seed * 1000 + seed_offset + _stable_hash(name))
        return build_model(cfg, spec=spec, base_dir=base, source=source)

    # ---- zoo ------------------------------------------------------------------------------

    def zoo(self) -> Any:
        """Load the experiment's zoo, generating (or finishing) it first when needed.

        Raises
        ------
        ConfigError
            When the directory holds a zoo made from another config than the spec asks for.
        """
        ref = self.config.zoo
        if ref is None:
            raise ConfigError(f"{self.source}: zoo: task {self.config.task!r} needs a zoo")
        zdir = Path(ref.dir)
        spec_path = self.base_dir / ref.spec
        data, zsource = load_yaml(spec_path) if spec_path.exists() else (None, str(spec_path))
        if data is None:
            raise ConfigError(f"{self.source}: zoo.spec: no such file {str(spec_path)!r}")
        if ref.overrides:
            data = deep_merge(data, ref.overrides)
        wanted = config_from_dict(data, source=zsource, quick=ref.quick)
        manifest = zdir / "manifest.json"
        complete = manifest.exists() and bool(_read_json(manifest).get("complete"))
        if not complete:
            if not ref.generate:
                raise ConfigError(
                    f"{self.source}: zoo.dir: {zdir} holds no finished zoo and zoo.generate "
                    "is false"
                )
            workers = ref.workers or default_workers()
            self.log(f"generating zoo {zdir} from {spec_path} ({workers} workers)")
            t0 = time.perf_counter()
            report = generate_zoo(
                wanted,
                zdir,
                workers=workers,
                progress=self.progress,
                spec=str(spec_path),
                quick=ref.quick,
            )
            self.log(f"zoo generated in {time.perf_counter() - t0:.1f}s: {report}")
        zoo = load_zoo(zdir)
        if zoo.config != wanted:
            raise ConfigError(
                f"{self.source}: zoo.dir: {zdir} holds a zoo made from another config than "
                f"{ref.spec} (with the experiment's zoo overrides) describes; delete it or "
                "point zoo.dir elsewhere"
            )
        return zoo


def _checkpointed_epoch(ckdir: Path) -> int:
    """Epochs the checkpoint in ``ckdir`` holds (0 when there is none or it is unreadable)."""
    try:
        return int(read_state(ckdir)["epoch"])
    except Exception:
        return 0


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _short(x: Any) -> str:
    return "-" if x is None else f"{x:.4g}"


def _stable_hash(name: str) -> int:
    return sum((i + 1) * ord(c) for i, c in enumerate(name)) % 997


def _first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """The dotted path of the first place two JSON values differ (``None`` when equal)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            sub = f"{path}.{k}" if path else k
            if k not in a or k not in b:
                return sub
            found = _first_difference(a[k], b[k], sub)
            if found is not None:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            found = _first_difference(x, y, f"{path}.{i}" if path else str(i))
            if found is not None:
                return found
        return None
    return None if a == b else path or "the spec"


def _at(value: Any, path: str) -> Any:
    for k in path.split("."):
        if isinstance(value, dict):
            value = value.get(k)
        elif isinstance(value, list) and k.isdigit() and int(k) < len(value):
            value = value[int(k)]
        else:
            return None
    return value
