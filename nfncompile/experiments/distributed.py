"""Data-parallel helpers: what :func:`nfncompile.experiments.train.fit` needs to run under ``torchrun``.

Launched by ``torchrun --nproc_per_node N script.py`` (or ``python -m torch.distributed.run``),
each process finds ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` in its environment.
:func:`distributed_context` turns them into an initialised process group (``gloo`` on CPU,
``nccl`` on CUDA) and destroys it on exit; every other helper here is a no-op in a plain
single-process run, so training code calls them unconditionally.

Batches of :class:`~nfncompile.features.WeightSpaceFeatures` go through
``DistributedDataParallel`` unchanged: DDP only moves (and so only needs to understand) its
inputs when it was given ``device_ids``, and :func:`~nfncompile.experiments.train.fit` moves every batch to
the model's device itself before the forward call, so DDP never has to look inside the
``Mapping`` subclass.

Examples
--------
>>> info = dist_info()  # a plain run: one process
>>> info
DistInfo(rank=0, world_size=1, local_rank=0)
>>> info.is_main, info.is_distributed
(True, False)
>>> with distributed_context() as info:  # initialises nothing when WORLD_SIZE is unset or 1
...     info.world_size
1
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..errors import ConfigError

__all__ = [
    "DistInfo",
    "dist_info",
    "distributed_context",
    "is_distributed",
    "all_reduce",
    "all_gather_strided",
    "broadcast_buffers",
    "barrier",
    "shard_indices",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in a data-parallel job.

    Parameters
    ----------
    rank : int
        Global index of this process, ``0 <= rank < world_size``.
    world_size : int
        Number of processes.
    local_rank : int
        Index on this machine (which GPU to use).

    Examples
    --------
    >>> DistInfo(rank=1, world_size=2, local_rank=1).is_main
    False
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size or self.local_rank < 0:
            raise ConfigError(
                f"invalid distributed setup rank={self.rank}, world_size={self.world_size}, "
                f"local_rank={self.local_rank}: need 0 <= rank < world_size and local_rank >= 0"
            )

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the process that writes files and shows progress)."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """Whether there is more than one process."""
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None


def is_distributed() -> bool:
    """Whether a process group with more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def dist_info() -> DistInfo:
    """This process's :class:`DistInfo`: from the process group if one is initialised, else
    from the ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` environment (defaults: one process)."""
    local = _env_int("LOCAL_RANK", 0)
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local)
    return DistInfo(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), local)


@contextmanager
def distributed_context(backend: str | None = None) -> Iterator[DistInfo]:
    """Initialise the process group described by the environment, destroy it on exit.

    Does nothing in a single-process run (``WORLD_SIZE`` unset or 1) or when a process group
    is already initialised (then whoever created it destroys it).

    Parameters
    ----------
    backend : str, optional
        ``"gloo"`` or ``"nccl"``; default ``nccl`` when CUDA is available, else ``gloo``. With
        ``nccl`` the current CUDA device is set to ``LOCAL_RANK``.

    Yields
    ------
    DistInfo

    Examples
    --------
    >>> with distributed_context() as info:
    ...     info.rank
    0
    """
    info = dist_info()
    created = False
    if info.is_distributed and not dist.is_initialized():
        if not dist.is_available():
            raise ConfigError(
                f"WORLD_SIZE={info.world_size} but this torch build has no torch.distributed"
            )
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
        created = True
    try:
        yield dist_info()
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


_OPS = ("sum", "max", "min")


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Reduce ``tensor`` over all processes in place (``op``: sum, max or min); returns it.

    Unchanged in a single-process run.

    Examples
    --------
    >>> all_reduce(torch.tensor([1.0, 2.0]))
    tensor([1., 2.])
    """
    if op not in _OPS:
        raise ConfigError(f"unknown reduction {op!r}; valid: {', '.join(_OPS)}")
    if is_distributed():
        reduce_op = getattr(dist.ReduceOp, op.upper())
        _settled([tensor], dist.all_reduce, tensor, op=reduce_op)
    return tensor


def shard_indices(n: int, rank: int, world_size: int) -> list[int]:
    """The strided share ``rank, rank + world_size, ...`` of ``range(n)`` (no padding).

    Examples
    --------
    >>> shard_indices(7, 1, 3)
    [1, 4]
    """
    return list(range(rank, n, world_size))


def all_gather_strided(tensor: torch.Tensor, total: int) -> torch.Tensor:
    """Reassemble, on every process, a tensor sharded by :func:`shard_indices`.

    Parameters
    ----------
    tensor : Tensor
        This process's rows: row ``j`` belongs to item ``rank + j * world_size``. Shards may
        differ in length by one; every other dim and the dtype must agree across processes.
    total : int
        Number of items over all shards.

    Returns
    -------
    Tensor
        ``(total, *tensor.shape[1:])`` in the original item order (``tensor`` itself in one
        process).
    """
    if not is_distributed():
        return tensor
    world = dist.get_world_size()
    per_rank = -(-total // world)
    is_bool = tensor.dtype == torch.bool
    t = tensor.to(torch.uint8) if is_bool else tensor
    padded = t.new_zeros((per_rank, *t.shape[1:]))
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in range(world)]
    padded = padded.contiguous()
    _settled([padded, *parts], dist.all_gather, parts, padded)
    # parts[r][j] is item r + j * world: stack to (per_rank, world, ...) and read row-major
    out = torch.stack(parts, dim=1).reshape(per_rank * world, *t.shape[1:])[:total]
    return out.bool() if is_bool else out


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (e.g. batch-norm running stats) to every process."""
    if is_distributed():
        for b in module.buffers():
            data = b.data
            _settled([data], dist.broadcast, data, src=0)


def barrier() -> None:
    """Wait for every process (no-op in one process)."""
    if is_distributed():
        dist.barrier()


def _settled(
    tensors: Sequence[torch.Tensor], collective: Callable[..., object], *args: Any, **kwargs: Any
) -> None:
    """Run a blocking ``collective(*args, **kwargs)`` on ``tensors``; return once the backend
    has let go of them.

    A gloo collective returns when its work completes, but the gloo worker thread drops its
    reference to the tensors only afterwards, and for tensors Python created that needs the GIL.
    The process group outlives ``destroy_process_group`` once DDP has used it (a torch
    limitation), so its worker threads live until the process exits: if the last collective's
    tensors are still held when CPython finalizes, the worker thread is killed inside a C++
    destructor and the process aborts (``terminate called without an active exception``,
    SIGABRT) after its work is done. While the backend holds a tensor, the tensor's Python
    reference count is one higher, so waiting for the counts to come back closes that window.
    """
    before = _refcounts(tensors)
    collective(*args, **kwargs)
    deadline = time.monotonic() + 10.0
    while _refcounts(tensors) != before and time.monotonic() < deadline:
        time.sleep(1e-4)  # releases the GIL the worker thread is waiting for


def _refcounts(tensors: Sequence[torch.Tensor]) -> list[int]:
    """Python reference counts of ``tensors`` (counted the same way on every call)."""
    return [sys.getrefcount(t) for t in tensors]
