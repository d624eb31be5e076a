"""Generic training: :func:`fit` a model (an NFN or any ``nn.Module``) and :func:`predict` with it.

:func:`fit` trains with AdamW, selects the epoch that scores best on a validation split, writes
resumable checkpoints, and runs unchanged under ``torchrun --nproc_per_node N`` (PyTorch DDP).

Data
----
A dataset is any ``torch.utils.data.Dataset`` or sequence whose items are ``(inputs, target)``
pairs. ``inputs`` (and ``target``) may be tensors, numbers, or weight-space items: a
:class:`~nfncompile.features.WeightSpaceFeatures` (usually ``B = 1``) or a plain state_dict,
which :func:`collate` batches with :meth:`WeightSpaceFeatures.collate` semantics (any
``Mapping`` item counts as a weight-space item). Everything else goes through torch's
``default_collate``. A custom ``collate_fn`` must return ``(inputs, targets)``.

Randomness
----------
Everything is seeded by ``TrainConfig.seed``. The training order comes from a
``torch.Generator`` (its state is checkpointed); under DDP from a ``DistributedSampler``
seeded with it and ``set_epoch``. At the start of epoch ``e`` the global torch RNG (dropout)
and the generator handed to ``augment`` are re-seeded from ``(seed, e, rank)``, so a resumed
run draws exactly what an uninterrupted one would (``fit`` therefore leaves the global RNG
re-seeded).

Checkpoints
-----------
With ``checkpoint_dir``, every epoch writes (atomically: temp file + ``os.replace``)

``last.safetensors``
    model weights (``model.<key>``), AdamW state tensors (``optim.state.<i>.<name>``), the
    best weights so far when they differ from the current ones (``best.<key>``), and in its
    metadata the JSON training state and the optimizer's non-tensor state (param_groups).
    It is self-contained: resuming reads only this file.
``best.safetensors``
    the selected model's weights under plain ``state_dict`` keys (see :func:`load_best`).
``state.json``
    a readable copy of the training state: epoch, best epoch and score, history, the
    shuffling generator's state as a list of ints, the config.

Calling :func:`fit` again with the same ``checkpoint_dir`` resumes after the last completed
epoch (a finished run returns at once). Nothing is ever unpickled.

Examples
--------
>>> import torch
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> x = torch.randn(64, 3)
>>> data = [(xi, xi.sum(0, keepdim=True)) for xi in x]
>>> model = torch.nn.Linear(3, 1)
>>> result = fit(model, data[:48], data[48:], loss_fn=torch.nn.functional.mse_loss,
...              config=TrainConfig(epochs=30, batch_size=16, lr=0.05), progress=False)
>>> result.epochs_completed, result.history[-1]["val_loss"] < 0.01
(30, True)
>>> predict(model, data[48:], batch_size=8).shape
torch.Size([16, 1])
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, default_collate
from torch.utils.data.distributed import DistributedSampler

from ..errors import ConfigError
from ..features import WeightSpaceFeatures
from ..files import atomic_write
from .distributed import (
    DistInfo,
    all_gather_strided,
    all_reduce,
    barrier,
    broadcast_buffers,
    dist_info,
    distributed_context,
    is_distributed,
    shard_indices,
)

__all__ = [
    "TrainConfig",
    "FitResult",
    "fit",
    "predict",
    "collate",
    "resolve_device",
    "load_best",
    "read_state",
]

#: Written into every checkpoint; bumped when the layout changes.
CHECKPOINT_FORMAT = "nfncompile.train/1"
LAST, BEST, STATE = "last.safetensors", "best.safetensors", "state.json"
#: Config fields that must match when a run resumes (the others may change, e.g. ``epochs``).
_RESUME_FIXED = ("batch_size", "lr", "weight_decay", "seed", "grad_clip")


# --------------------------------------------------------------------------------------------
# Config and result
# --------------------------------------------------------------------------------------------


def _field(default: Any, help: str, **meta: Any) -> Any:
    return field(default=default, metadata={"help": help, **meta})


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of :func:`fit`.

    Every field carries ``metadata["help"]`` (and ``"min"`` for numbers), which
    ``nfncompile.declarative.validate.parse`` uses to read it from YAML.

    Parameters
    ----------
    epochs : int
        Passes over the training data.
    batch_size : int
        Examples per optimizer step *per process* (the global batch under DDP is
        ``batch_size * world_size``).
    lr : float
        AdamW learning rate (> 0).
    weight_decay : float
        AdamW decoupled weight decay.
    seed : int
        Seeds shuffling, augmentation and dropout.
    grad_clip : float or None
        Max global gradient norm; ``None`` disables clipping.
    val_every : int
        Validate every this many epochs (and always after the last one).
    patience : int or None
        Stop after this many validations without improvement; ``None`` never stops early.
    device : str
        ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``. Under
        DDP ``"auto"`` / ``"cuda"`` mean ``cuda:LOCAL_RANK``.

    Raises
    ------
    ConfigError
        When a value has the wrong type or is out of range.

    Examples
    --------
    >>> TrainConfig(epochs=10, lr=1e-2)
    TrainConfig(epochs=10, batch_size=64, lr=0.01, weight_decay=0.01, seed=0, grad_clip=1.0, val_every=1, patience=None, device='auto')
    >>> TrainConfig.__dataclass_fields__["lr"].metadata["min"]
    0.0
    """

    epochs: int = _field(50, "passes over the training data", min=1)
    batch_size: int = _field(64, "examples per optimizer step, per process", min=1)
    lr: float = _field(1e-3, "AdamW learning rate (must be > 0)", min=0.0)
    weight_decay: float = _field(1e-2, "AdamW decoupled weight decay", min=0.0)
    seed: int = _field(0, "seed of shuffling, augmentation and dropout", min=0)
    grad_clip: float | None = _field(
        1.0, "max global gradient norm; null disables clipping (must be > 0)", min=0.0
    )
    val_every: int = _field(1, "validate every N epochs (and after the last)", min=1)
    patience: int | None = _field(
        None, "stop after N validations without improvement; null never stops early", min=1
    )
    device: str = _field("auto", "auto (cuda if available, else cpu), cpu, cuda or cuda:N")

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "seed", "val_every", "patience"):
            v = getattr(self, name)
            if v is None and name == "patience":
                continue
            if not isinstance(v, int) or isinstance(v, bool):
                raise ConfigError(f"TrainConfig.{name}: expected an int, got {v!r}")
            lo = self.__dataclass_fields__[name].metadata["min"]
            if v < lo:
                raise ConfigError(f"TrainConfig.{name}: must be >= {lo}, got {v}")
        for name in ("lr", "weight_decay", "grad_clip"):
            v = getattr(self, name)
            if v is None and name == "grad_clip":
                continue
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise ConfigError(f"TrainConfig.{name}: expected a finite number, got {v!r}")
            object.__setattr__(self, name, float(v))
            strict = name != "weight_decay"
            if v < 0 or (strict and v == 0):
                raise ConfigError(
                    f"TrainConfig.{name}: must be {'> 0' if strict else '>= 0'}, got {v}"
                )
        resolve_device(self.device)  # validates


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """The ``torch.device`` a :attr:`TrainConfig.device` string names.

    ``"auto"`` is ``cuda:local_rank`` when CUDA is available, else ``cpu``; ``"cuda"`` is
    ``cuda:local_rank``.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("cuda:1").index
    1
    """
    if not isinstance(device, str):
        raise ConfigError(f"TrainConfig.device: expected a string, got {device!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        return torch.device("cuda", local_rank)
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(
            f"TrainConfig.device: unknown device {device!r}; valid: auto, cpu, cuda, cuda:N"
        ) from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(
            f"TrainConfig.device: unsupported device {device!r}; valid: auto, cpu, cuda, cuda:N"
        )
    return dev


@dataclass(frozen=True, eq=False)
class FitResult:
    """What :func:`fit` returns. The model itself ends up holding :attr:`best_state`.

    Attributes
    ----------
    history : tuple of dict
        One record per completed epoch: ``epoch`` (1-based), ``train_loss``, ``lr``,
        ``seconds``, and on validated epochs ``val_loss`` and ``val_metric`` (else ``None``).
    best_epoch : int or None
        The selected epoch (the last one when there is no validation data; ``None`` if no
        validation score was finite).
    best_score : float or None
        Its validation metric (or loss, without ``metric_fn``).
    epochs_completed : int
        Completed epochs, counting those of a resumed run.
    stopped_early : bool
        Whether ``patience`` ended training.
    resumed_from : int
        Completed epochs found in ``checkpoint_dir`` (0: a fresh start).
    best_state : dict
        The selected weights, on the CPU.
    """

    history: tuple
    best_epoch: int | None
    best_score: float | None
    epochs_completed: int
    stopped_early: bool
    resumed_from: int
    best_state: dict = field(repr=False)

    @property
    def best_record(self) -> dict | None:
        """The history record of :attr:`best_epoch`."""
        for r in self.history:
            if r["epoch"] == self.best_epoch:
                return r
        return None


# --------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------


def _collate_part(parts: list) -> Any:
    if isinstance(parts[0], Mapping):
        return WeightSpaceFeatures.collate(parts)
    return default_collate(parts)


def collate(items: Sequence[Any]) -> Any:
    """Default ``collate_fn``: batch ``(inputs, target)`` pairs (or bare inputs).

    A 2-tuple (or 2-list) item is a pair; each side is batched separately. ``Mapping`` items
    (``WeightSpaceFeatures`` or state_dicts) are concatenated / stacked into
    :class:`WeightSpaceFeatures`; anything else goes through ``default_collate``.

    Examples
    --------
    >>> import torch
    >>> sd = {"w": torch.zeros(2, 3), "b": torch.zeros(2)}
    >>> inputs, targets = collate([(sd, 1.0), (sd, 0.0)])
    >>> inputs
    WeightSpaceFeatures(B=2, C=1, w=(2, 1, 2, 3), b=(2, 1, 2))
    >>> targets
    tensor([1., 0.], dtype=torch.float64)
    """
    if not items:
        raise ConfigError("collate got an empty batch")
    first = items[0]
    if isinstance(first, (tuple, list)) and len(first) == 2:
        return (_collate_part([it[0] for it in items]), _collate_part([it[1] for it in items]))
    return _collate_part(list(items))


def _split(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    return batch, None


def _tree_map(fn: Callable[[torch.Tensor], torch.Tensor], obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, WeightSpaceFeatures):
        return WeightSpaceFeatures({k: fn(v) for k, v in obj.items()})
    if isinstance(obj, Mapping):
        return {k: _tree_map(fn, v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_tree_map(fn, v) for v in obj)
    return obj


def _to_device(obj: Any, device: torch.device) -> Any:
    return _tree_map(lambda t: t.to(device, non_blocking=True), obj)


def _batch_len(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.shape[0] if obj.dim() else 1
    if isinstance(obj, WeightSpaceFeatures):
        return obj.batch_size
    values = obj.values() if isinstance(obj, Mapping) else obj
    if isinstance(values, (tuple, list)) or isinstance(obj, Mapping):
        for v in values:
            return _batch_len(v)
    raise ConfigError(f"cannot tell the batch size of a {type(obj).__name__}")


def _cat(parts: list) -> Any:
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat([p.reshape(1) if p.dim() == 0 else p for p in parts])
    if isinstance(first, WeightSpaceFeatures):
        return WeightSpaceFeatures({k: torch.cat([p[k] for p in parts]) for k in first})
    if isinstance(first, Mapping):
        return {k: _cat([p[k] for p in parts]) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(_cat(list(col)) for col in zip(*parts))
    if first is None:
        return None
    raise ConfigError(
        f"cannot concatenate model outputs / targets of type {type(first).__name__}; "
        "expected tensors, WeightSpaceFeatures, or dicts / tuples of them"
    )


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _evaluate(
    model: nn.Module,
    data: Any,
    batch_size: int,
    collate_fn: Callable | None,
    device: torch.device,
) -> tuple[Any, Any]:
    """``(outputs, targets)`` over all of ``data`` in order; sharded across DDP processes."""
    n = len(data)
    if n == 0:
        raise ConfigError("cannot evaluate on an empty dataset")
    info = dist_info()
    shard = is_distributed() and n >= info.world_size
    sampler = shard_indices(n, info.rank, info.world_size) if shard else range(n)
    loader = DataLoader(
        data,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate_fn or collate,
        generator=torch.Generator(),  # keeps DataLoader from drawing on the global RNG
    )
    was_training = model.training
    model.eval()
    outs, tgts = [], []
    try:
        with torch.no_grad():
            for batch in loader:
                inputs, targets = _split(batch)
                outs.append(model(_to_device(inputs, device)))
                tgts.append(_to_device(targets, device))
    finally:
        model.train(was_training)
    outputs, targets = _cat(outs), _cat(tgts)
    if shard:
        outputs = _tree_map(lambda t: all_gather_strided(t, n), outputs)
        targets = _tree_map(lambda t: all_gather_strided(t, n), targets)
    return outputs, targets


def predict(
    model: nn.Module,
    data: Any,
    *,
    batch_size: int = 256,
    collate_fn: Callable | None = None,
    return_targets: bool = False,
) -> Any:
    """Run ``model`` (in eval mode, without gradients) over ``data``, in order.

    Parameters
    ----------
    model : nn.Module
        Runs on the device of its parameters.
    data : Dataset or sequence
        ``(inputs, target)`` pairs or bare inputs (see :func:`collate`).
    batch_size : int
    collate_fn : callable, optional
        Default :func:`collate`.
    return_targets : bool
        Also return the batched targets.

    Returns
    -------
    outputs, or (outputs, targets)
        The model's outputs concatenated along the batch dim (tensors, WeightSpaceFeatures,
        or dicts / tuples of them). Under DDP every process gets all of them, each process
        having computed its share.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Linear(2, 1)
    >>> predict(model, [torch.zeros(2)] * 5, batch_size=2).shape
    torch.Size([5, 1])
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(f"predict: batch_size must be a positive int, got {batch_size!r}")
    outputs, targets = _evaluate(model, data, batch_size, collate_fn, _model_device(model))
    return (outputs, targets) if return_targets else outputs


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def _cpu(t: torch.Tensor) -> torch.Tensor:
    # a private contiguous copy: safetensors refuses tensors that share memory
    return t.detach().to("cpu", copy=True).contiguous()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=_json_default, sort_keys=True)


def _readable_json(state: Mapping) -> str:
    """One top-level key per line, one history record per line (RNG state on one line)."""
    lines = []
    for k, v in sorted(state.items()):
        if k == "history" and v:
            body = ",\n".join(f"  {_dumps(r)}" for r in v)
            lines.append(f' "{k}": [\n{body}\n ]')
        else:
            lines.append(f" {json.dumps(k)}: {_dumps(v)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def _flatten_optimizer(state_dict: Mapping) -> tuple[dict, dict]:
    """AdamW's ``state_dict`` as (safetensors tensors, JSON-able rest)."""
    tensors: dict = {}
    extra: dict = {}
    for idx, entry in state_dict["state"].items():
        for k, v in entry.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.state.{idx}.{k}"] = _cpu(v)
            else:
                extra.setdefault(str(idx), {})[k] = v
    return tensors, {"param_groups": state_dict["param_groups"], "state": extra}


def _unflatten_optimizer(tensors: Mapping, meta: Mapping, template: Mapping) -> dict:
    state: dict = {}
    for key, v in tensors.items():
        if key.startswith("optim.state."):
            idx, name = key[len("optim.state.") :].split(".", 1)
            state.setdefault(int(idx), {})[name] = v
    for idx, entry in meta["state"].items():
        state.setdefault(int(idx), {}).update(entry)
    saved, fresh = meta["param_groups"], template["param_groups"]
    if len(saved) != len(fresh):
        raise ConfigError(
            f"checkpoint has {len(saved)} optimizer param groups, the optimizer has {len(fresh)}"
        )
    groups = []
    for s, f in zip(saved, fresh):
        groups.append(
            {
                k: tuple(v) if isinstance(f.get(k), tuple) and isinstance(v, list) else v
                for k, v in s.items()
            }
        )
    return {"state": state, "param_groups": groups}


def _write_checkpoint(
    ckdir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict,
    best_state: dict | None,
    best_changed: bool,
) -> None:
    from safetensors.torch import save

    weights = {k: _cpu(v) for k, v in model.state_dict().items()}
    if best_changed and best_state is not None:
        meta = {"format": CHECKPOINT_FORMAT, "epoch": str(state["best_epoch"])}
        atomic_write(ckdir / BEST, save(dict(best_state), metadata=meta))
    tensors = {f"model.{k}": v for k, v in weights.items()}
    best_separate = best_state is not None and state["best_epoch"] != state["epoch"]
    if best_separate:
        tensors.update({f"best.{k}": v for k, v in best_state.items()})
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    tensors.update(opt_tensors)
    text = _dumps(state)
    meta = {"format": CHECKPOINT_FORMAT, "state": text, "optimizer": _dumps(opt_meta)}
    atomic_write(ckdir / LAST, save(tensors, metadata=meta))
    atomic_write(ckdir / STATE, _readable_json(state).encode())


def _read_last(path: Path) -> tuple[dict, dict, dict]:
    """(tensors, training state, optimizer meta) of a ``last.safetensors``."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except Exception as e:
        raise ConfigError(f"{path}: not a readable checkpoint ({e})") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(
            f"{path}: checkpoint format {meta.get('format')!r}, expected {CHECKPOINT_FORMAT!r}"
        )
    return tensors, json.loads(meta["state"]), json.loads(meta["optimizer"])


def _prefixed(tensors: Mapping, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def load_best(checkpoint_dir: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Load ``checkpoint_dir/best.safetensors`` into ``model`` (strict) and return it.

    Examples
    --------
    >>> import tempfile, torch
    >>> d = tempfile.mkdtemp()
    >>> data = [(torch.ones(2), torch.ones(1))] * 4
    >>> _ = fit(torch.nn.Linear(2, 1), data, data, loss_fn=torch.nn.functional.mse_loss,
    ...         config=TrainConfig(epochs=2), checkpoint_dir=d, progress=False)
    >>> load_best(d, torch.nn.Linear(2, 1))
    Linear(in_features=2, out_features=1, bias=True)
    """
    from safetensors.torch import load_file

    path = Path(checkpoint_dir) / BEST
    if not path.exists():
        raise ConfigError(f"{path}: no such checkpoint")
    try:
        model.load_state_dict(load_file(str(path), device=str(_model_device(model))))
    except RuntimeError as e:
        raise ConfigError(f"{path}: the checkpoint does not fit this model: {e}") from None
    return model


def read_state(checkpoint_dir: str | os.PathLike) -> dict:
    """The training state (epoch, best epoch/score, history, ...) of a checkpoint dir."""
    path = Path(checkpoint_dir) / LAST
    if not path.exists():
        raise ConfigError(f"{path}: no such checkpoint")
    return _read_last(path)[1]


# --------------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------------


def _derive_seed(*parts: int) -> int:
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h * 6364136223846793005 + int(p) + 1442695040888963407) % 2**64
    return h % 2**63


def _is_better(score: float, best: float | None, higher: bool) -> bool:
    if not math.isfinite(score):
        return False
    if best is None:
        return True
    return score > best if higher else score < best


def _show_progress(progress: bool, info: DistInfo) -> bool:
    stream = sys.stderr
    return bool(progress and info.is_main and hasattr(stream, "isatty") and stream.isatty())


def fit(
    model: nn.Module,
    train_data: Any,
    val_data: Any | None,
    *,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    metric_fn: Callable[[Any, Any], Any] | None = None,
    higher_is_better: bool = True,
    config: TrainConfig | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    collate_fn: Callable | None = None,
    augment: Callable[[Any, torch.Generator], Any] | None = None,
    progress: bool = True,
    restore_best: bool = True,
    ddp_kwargs: Mapping[str, Any] | None = None,
) -> FitResult:
    """Train ``model`` with AdamW; keep the weights that validate best.

    Parameters
    ----------
    model : nn.Module
        Moved to the config's device and trained in place. It receives the batched inputs
        (e.g. a :class:`WeightSpaceFeatures`) as its one argument.
    train_data, val_data : Dataset or sequence of (inputs, target)
        See :func:`collate`. ``val_data=None`` trains without selection (the last epoch
        wins and ``patience`` must be ``None``).
    loss_fn : callable
        ``loss_fn(outputs, targets) -> scalar tensor``, a *mean* over the batch. On the
        validation split it is called once on all outputs and targets.
    metric_fn : callable, optional
        ``metric_fn(outputs, targets) -> float`` over the whole validation split (so rank
        metrics such as Kendall's tau work). Selects the best epoch; without it the
        validation loss does (lower is better).
    higher_is_better : bool
        Direction of ``metric_fn``.
    config : TrainConfig, optional
        Default ``TrainConfig()``.
    checkpoint_dir : path, optional
        Where to write / resume checkpoints (see the module docstring). Under DDP only rank 0
        writes; every rank reads it when resuming, so it must be on a shared filesystem.
    collate_fn : callable, optional
        Returns ``(inputs, targets)``; default :func:`collate`.
    augment : callable, optional
        ``augment((inputs, targets), generator) -> (inputs, targets)``, applied to each
        training batch on the CPU before it moves to the device, e.g. a random permutation
        from ``spec.sample_permutation(generator)``. ``generator`` is a seeded CPU
        ``torch.Generator`` (re-seeded each epoch from seed, epoch and rank).
    progress : bool
        Show a tqdm bar (only on rank 0, only when stderr is a terminal).
    restore_best : bool
        Load the selected weights into ``model`` at the end (else it keeps the last ones).
    ddp_kwargs : mapping, optional
        Extra ``DistributedDataParallel`` arguments, e.g. ``find_unused_parameters=True``.

    Returns
    -------
    FitResult

    Raises
    ------
    ConfigError
        Bad config, empty data, items that are not pairs, or a checkpoint that does not match
        (another seed / lr / batch size, or another model).

    Notes
    -----
    Under ``torchrun`` (``WORLD_SIZE > 1``) ``fit`` initialises the process group if nobody
    has (``gloo`` on CPU, ``nccl`` on CUDA) and destroys it when it returns; wrap several
    calls in :func:`~nfncompile.experiments.distributed.distributed_context` to keep one group. The model
    is wrapped in ``DistributedDataParallel`` (``device_ids=None`` on CPU); each rank reads its
    ``DistributedSampler`` share of ``train_data`` and a strided share of ``val_data``;
    losses are all-reduced and validation outputs all-gathered, so every rank makes the same
    selection and early-stopping decisions and ends with identical weights.
    :class:`WeightSpaceFeatures` batches need no special handling: ``fit`` moves them to the
    device itself, and DDP leaves inputs alone unless it must move them.
    """
    config = TrainConfig() if config is None else config
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"fit: config must be a TrainConfig, got {type(config).__name__}")
    if val_data is None and config.patience is not None:
        raise ConfigError("TrainConfig.patience needs val_data (early stopping validates)")
    env = dist_info()
    device = resolve_device(config.device, env.local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    with distributed_context(backend) as info:
        return _fit(
            model,
            train_data,
            val_data,
            loss_fn=loss_fn,
            metric_fn=metric_fn,
            higher_is_better=higher_is_better,
            config=config,
            device=device,
            info=info,
            checkpoint_dir=checkpoint_dir,
            collate_fn=collate_fn or collate,
            augment=augment,
            progress=progress,
            restore_best=restore_best,
            ddp_kwargs=dict(ddp_kwargs or {}),
        )


def _fresh_state(config: TrainConfig, info: DistInfo) -> dict:
    return {
        "epoch": 0,
        "best_epoch": None,
        "best_score": None,
        "bad_validations": 0,
        "stopped_early": False,
        "history": [],
        "rng": {"shuffle": None},
        "config": dataclasses.asdict(config),
        "world_size": info.world_size,
    }


def _resume(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    device: torch.device,
) -> tuple[dict, dict | None]:
    tensors, state, opt_meta = _read_last(path)
    saved = state["config"]
    diff = [
        f"{k}: {saved.get(k)!r} -> {getattr(config, k)!r}"
        for k in _RESUME_FIXED
        if saved.get(k) != getattr(config, k)
    ]
    if diff:
        raise ConfigError(
            f"{path.parent}: cannot resume with a different config ({'; '.join(diff)}); "
            "restore those values or use a new checkpoint_dir"
        )
    try:
        model.load_state_dict({k: v.to(device) for k, v in _prefixed(tensors, "model.").items()})
    except RuntimeError as e:
        raise ConfigError(f"{path}: the checkpoint does not fit this model: {e}") from None
    optimizer.load_state_dict(_unflatten_optimizer(tensors, opt_meta, optimizer.state_dict()))
    best = _prefixed(tensors, "best.")
    if not best and state["best_epoch"] is not None:  # best == the current weights
        best = {k: _cpu(v) for k, v in model.state_dict().items()}
    return state, best or None


def _fit(
    model: nn.Module,
    train_data: Any,
    val_data: Any | None,
    *,
    loss_fn: Callable,
    metric_fn: Callable | None,
    higher_is_better: bool,
    config: TrainConfig,
    device: torch.device,
    info: DistInfo,
    checkpoint_dir: str | os.PathLike | None,
    collate_fn: Callable,
    augment: Callable | None,
    progress: bool,
    restore_best: bool,
    ddp_kwargs: dict,
) -> FitResult:
    from tqdm import tqdm

    if len(train_data) == 0:
        raise ConfigError("fit: train_data is empty")
    if val_data is not None and len(val_data) == 0:
        raise ConfigError("fit: val_data is empty (pass None to train without validation)")
    torch.manual_seed(_derive_seed(config.seed, 0, info.rank))
    model.to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    shuffle_gen = torch.Generator().manual_seed(config.seed)

    state, best_state = _fresh_state(config, info), None
    ckdir = None if checkpoint_dir is None else Path(checkpoint_dir)
    if ckdir is not None and (ckdir / LAST).exists():
        state, best_state = _resume(ckdir / LAST, model, optimizer, config, device)
        if state["rng"]["shuffle"] is not None:
            shuffle_gen.set_state(torch.tensor(state["rng"]["shuffle"], dtype=torch.uint8))
    resumed_from = state["epoch"]
    if info.is_distributed:  # every rank must have found the same checkpoint
        seen = torch.tensor([resumed_from, -resumed_from], device=device)
        all_reduce(seen, op="max")
        if seen[0].item() != -seen[1].item():
            raise ConfigError(
                f"{ckdir}: ranks found different checkpoints; checkpoint_dir must be on a "
                "filesystem every rank shares"
            )
    if ckdir is not None and info.is_main:
        ckdir.mkdir(parents=True, exist_ok=True)

    sampler = None
    if info.is_distributed:
        sampler = DistributedSampler(
            train_data, info.world_size, info.rank, shuffle=True, seed=config.seed
        )
    loader = DataLoader(
        train_data,
        batch_size=config.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        collate_fn=collate_fn,
        generator=shuffle_gen,
    )
    net: nn.Module = model
    if info.is_distributed:
        ids = [device.index] if device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids, **ddp_kwargs)

    steps = len(loader)
    bar = tqdm(
        total=config.epochs * steps,
        initial=min(state["epoch"], config.epochs) * steps,
        disable=not _show_progress(progress, info),
        desc="fit",
        unit="step",
        dynamic_ncols=True,
    )
    try:
        for epoch in range(state["epoch"] + 1, config.epochs + 1):
            if state["stopped_early"]:
                break
            t0 = time.perf_counter()
            torch.manual_seed(_derive_seed(config.seed, epoch, info.rank))
            aug_gen = torch.Generator().manual_seed(_derive_seed(config.seed, epoch, info.rank, 1))
            if sampler is not None:
                sampler.set_epoch(epoch)
            net.train()
            totals = torch.zeros(2, dtype=torch.float64, device=device)
            for batch in loader:
                if augment is not None:
                    batch = augment(batch, aug_gen)
                inputs, targets = _split(batch)
                if targets is None:
                    raise ConfigError(
                        "fit: training batches must be (inputs, targets) pairs; got a "
                        f"{type(batch).__name__}"
                    )
                inputs, targets = _to_device(inputs, device), _to_device(targets, device)
                loss = loss_fn(net(inputs), targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                n = _batch_len(targets)
                totals[0] += loss.detach().double() * n
                totals[1] += n
                bar.update(1)
            all_reduce(totals)
            record = {
                "epoch": epoch,
                "train_loss": (totals[0] / totals[1]).item(),
                "val_loss": None,
                "val_metric": None,
                "lr": optimizer.param_groups[0]["lr"],
            }
            best_changed = False
            if val_data is None:
                state["best_epoch"], best_state, best_changed = epoch, None, True
            elif epoch % config.val_every == 0 or epoch == config.epochs:
                broadcast_buffers(model)
                outputs, targets = _evaluate(model, val_data, config.batch_size, collate_fn, device)
                with torch.no_grad():
                    record["val_loss"] = float(loss_fn(outputs, targets))
                    if metric_fn is not None:
                        record["val_metric"] = float(metric_fn(outputs, targets))
                if metric_fn is not None:
                    score, higher = record["val_metric"], higher_is_better
                else:
                    score, higher = record["val_loss"], False
                if _is_better(score, state["best_score"], higher):
                    state["best_epoch"], state["best_score"] = epoch, score
                    state["bad_validations"] = 0
                    best_state = {k: _cpu(v) for k, v in model.state_dict().items()}
                    best_changed = True
                else:
                    state["bad_validations"] += 1
                    if config.patience is not None and state["bad_validations"] >= config.patience:
                        state["stopped_early"] = True
            record["seconds"] = time.perf_counter() - t0
            state["history"].append(record)
            state["epoch"] = epoch
            state["rng"]["shuffle"] = shuffle_gen.get_state().tolist()
            state["config"] = dataclasses.asdict(config)
            state["world_size"] = info.world_size
            if ckdir is not None and info.is_main:
                current = {k: _cpu(v) for k, v in model.state_dict().items()}
                _write_checkpoint(
                    ckdir,
                    model,
                    optimizer,
                    state,
                    current if val_data is None else best_state,
                    best_changed,
                )
            post = {"loss": f"{record['train_loss']:.4g}"}
            if record["val_loss"] is not None:
                post["val"] = f"{record['val_metric'] if metric_fn else record['val_loss']:.4g}"
            bar.set_postfix(post, refresh=False)
    finally:
        bar.close()
    barrier()  # rank 0's last checkpoint is on disk before any rank moves on (e.g. to resume)

    if val_data is None and state["epoch"] > 0:
        state["best_epoch"] = state["epoch"]
    if best_state is None:  # no validation: the final weights are the selection
        best_state = {k: _cpu(v) for k, v in model.state_dict().items()}
    elif restore_best:
        model.load_state_dict({k: v.to(device) for k, v in best_state.items()})
    return FitResult(
        history=tuple(state["history"]),
        best_epoch=state["best_epoch"],
        best_score=state["best_score"],
        epochs_completed=state["epoch"],
        stopped_early=state["stopped_early"],
        resumed_from=resumed_from,
        best_state=best_state,
    )
