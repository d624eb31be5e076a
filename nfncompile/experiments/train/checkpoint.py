"""The checkpoint format of :func:`~nfncompile.experiments.train.fit`: safetensors files and a
readable state, written atomically, read without unpickling anything.

With ``checkpoint_dir``, every epoch writes

``last.safetensors``
    model weights (``model.<key>``), AdamW state tensors (``optim.state.<i>.<name>``), the
    best weights so far when they differ from the current ones (``best.<key>``), and in its
    metadata the JSON training state and the optimizer's non-tensor state (param_groups).
    It is self-contained: resuming (:func:`resume`) reads only this file.
``best.safetensors``
    the selected model's weights under plain ``state_dict`` keys (see :func:`load_best`).
``state.json``
    a readable copy of the training state: epoch, best epoch and score, history, the
    shuffling generator's state as a list of ints, the config.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import ConfigError
from ...files import atomic_write, sigint_replaced
from .collate import model_device
from .config import TrainConfig

__all__ = [
    "CHECKPOINT_FORMAT",
    "LAST",
    "BEST",
    "STATE",
    "cpu_copy",
    "write_checkpoint",
    "resume",
    "load_best",
    "read_state",
]

#: Written into every checkpoint; bumped when the layout changes.
CHECKPOINT_FORMAT = "nfncompile.train/1"
LAST, BEST, STATE = "last.safetensors", "best.safetensors", "state.json"
#: Config fields that must match when a run resumes (the others may change, e.g. ``epochs``).
_RESUME_FIXED = ("batch_size", "lr", "weight_decay", "seed", "grad_clip", "schedule")


def cpu_copy(t: torch.Tensor) -> torch.Tensor:
    """A private contiguous CPU copy: safetensors refuses tensors that share memory."""
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
                tensors[f"optim.state.{idx}.{k}"] = cpu_copy(v)
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


def write_checkpoint(
    ckdir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict,
    best_state: dict | None,
    best_changed: bool,
) -> None:
    """Write ``last.safetensors`` and ``state.json`` (and ``best.safetensors`` if it changed)."""
    from safetensors.torch import save

    weights = {k: cpu_copy(v) for k, v in model.state_dict().items()}
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
    with _sigint_deferred():  # Ctrl-C between the two would leave state.json an epoch behind
        atomic_write(ckdir / LAST, save(tensors, metadata=meta))
        atomic_write(ckdir / STATE, _readable_json(state).encode())


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold a SIGINT that arrives inside the block until it ends, then deliver it to the
    handler that was installed (in the main thread; elsewhere signals cannot be handled)."""
    caught: list = []
    try:
        with sigint_replaced(lambda signum, frame: caught.append(frame)) as previous:
            yield
    finally:  # the handler is back: deliver what was held
        if caught and callable(previous):
            previous(signal.SIGINT, caught[0])
        elif caught and previous == signal.SIG_DFL:
            signal.raise_signal(signal.SIGINT)


def read_last(path: Path) -> tuple[dict, dict, dict]:
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
    >>> from nfncompile.experiments.train import TrainConfig, fit
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
        model.load_state_dict(load_file(str(path), device=str(model_device(model))))
    except RuntimeError as e:
        raise ConfigError(f"{path}: the checkpoint does not fit this model: {e}") from None
    return model


def read_state(checkpoint_dir: str | os.PathLike) -> dict:
    """The training state (epoch, best epoch/score, history, ...) of a checkpoint dir."""
    path = Path(checkpoint_dir) / LAST
    if not path.exists():
        raise ConfigError(f"{path}: no such checkpoint")
    return read_last(path)[1]


def resume(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    device: torch.device,
) -> tuple[dict, dict | None]:
    """Load ``last.safetensors`` into ``model`` and ``optimizer``: ``(state, best weights)``.

    Raises
    ------
    ConfigError
        When the checkpoint was written with another batch size, lr, weight decay, seed or
        gradient clip, or does not fit ``model``.
    """
    tensors, state, opt_meta = read_last(path)
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
        best = {k: cpu_copy(v) for k, v in model.state_dict().items()}
    return state, best or None
